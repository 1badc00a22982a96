#pragma once
/// \file simd/x86_avx512.hpp
/// \brief AVX-512 (F/BW/VL/DQ) row kernels, compiled in a target region so that a generic
/// x86-64 build carries them; dispatch.hpp runs them only where the CPU has them.
///
/// Loads: fp32 as is, fp16 through vcvtph2ps (F16C semantics: exact, denormals kept, NaN
/// quieted — what dtype.hpp's to_float does), bf16 as 32-bit lanes split into even channels
/// (lane << 16) and odd channels (lane & 0xffff0000): one exact op per 16 floats, so channels
/// are visited in "even/odd" kernel order (see common.hpp). Tails use masked loads.

#include "lagkv/simd/common.hpp"

#if !defined(LAGKV_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LAGKV_SIMD_HAVE_AVX512 1

#include <immintrin.h>

#include <cfloat>
#include <cstdint>
#include <cstring>
#include <type_traits>

// Everything below up to the pop is compiled for AVX-512; system headers come first (above).
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC diagnostic push
// GCC bug 105593: AVX-512 intrinsics built on _mm512_undefined_* (`__m512 __Y = __Y;`) trip
// -W(maybe-)uninitialized once inlined into our code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace lagkv {
namespace simd {
namespace avx512 {

inline __mmask16 mask16(index_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline __mmask32 mask32(index_t n) { return static_cast<__mmask32>((std::uint64_t{1} << n) - 1u); }

/// One channel group of each storage type: kChannels channels read as kVecs float vectors.
template <class T>
struct group;
template <>
struct group<float> {
  static constexpr index_t kChannels = 16, kVecs = 1;
  static void load(const float* p, __m512* v) { v[0] = _mm512_loadu_ps(p); }
  static void load_partial(const float* p, index_t rem, __m512* v) { v[0] = _mm512_maskz_loadu_ps(mask16(rem), p); }
  static void masks(index_t rem, __mmask16* m) { m[0] = mask16(rem); }
  static void load_pair(const float* row, index_t vi, __m512* v) {
    v[0] = _mm512_loadu_ps(row + vi * 16);
    v[1] = _mm512_loadu_ps(row + vi * 16 + 16);
  }
};
template <>
struct group<f16> {
  static constexpr index_t kChannels = 16, kVecs = 1;
  static void load(const f16* p, __m512* v) {
    v[0] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void load_partial(const f16* p, index_t rem, __m512* v) {
    v[0] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(rem), p));
  }
  static void masks(index_t rem, __mmask16* m) { m[0] = mask16(rem); }
  static void load_pair(const f16* row, index_t vi, __m512* v) {
    const __m512i x = _mm512_loadu_si512(row + vi * 16);
    v[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(x));
    v[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(x, 1));
  }
};
template <>
struct group<bf16> {
  static constexpr index_t kChannels = 32, kVecs = 2;
  static void split(__m512i x, __m512* v) {
    v[0] = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    v[1] = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static void load(const bf16* p, __m512* v) { split(_mm512_loadu_si512(p), v); }
  static void load_pair(const bf16* row, index_t vi, __m512* v) { load(row + vi * 16, v); }  // vi even
  static void load_partial(const bf16* p, index_t rem, __m512* v) { split(_mm512_maskz_loadu_epi16(mask32(rem), p), v); }
  static void masks(index_t rem, __mmask16* m) {
    m[0] = mask16((rem + 1) / 2);  // even channels 0, 2, ... below rem
    m[1] = mask16(rem / 2);
  }
};

/// Sums four vectors at once: lane group q (128 bits) of the result holds the total of a_q in
/// all four of its floats. Two 512->128 folds shared by the four rows, then two in-lane steps:
/// 14 shuffles/adds for four rows instead of four separate 9-step reductions.
inline __m512 reduce4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 b01 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  const __m512 b23 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  const __m512 c = _mm512_add_ps(_mm512_shuffle_f32x4(b01, b23, 0x88), _mm512_shuffle_f32x4(b01, b23, 0xDD));
  const __m512 d = _mm512_add_ps(c, _mm512_permute_ps(c, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm512_add_ps(d, _mm512_permute_ps(d, _MM_SHUFFLE(2, 3, 0, 1)));
}
/// [total0, total1, total2, total3] from reduce4's result.
inline __m128 first_of_lanes(__m512 e) {
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), e));
}
inline void store_n(float* out, __m128 v, index_t n) {
  if (n == 4)
    _mm_storeu_ps(out, v);
  else
    _mm_mask_storeu_ps(out, static_cast<__mmask8>((1u << n) - 1u), v);
}

/// Std of the normalised rows of up to four tokens (nr in 1..4; missing rows repeat the last).
/// Numerics: two passes over the row. Pass 1 forms u = x - lo (exact for most inputs, one
/// rounding otherwise) and the mean of y = u*inv with FMAs; u is parked in ubuf (L1). Pass 2
/// forms y - mean = fma(u, inv, -mean) with a single rounding and sums its squares. Unlike the
/// one-pass sum(y^2) - n*mean^2, nothing cancels, so the absolute error of the std stays
/// O((D/16 + c) * eps * max|y|) whatever the mean.
template <class T>
inline void score4(const T* const* rows, index_t nr, index_t head_dim, const float* lo, const float* inv,
                   float* ubuf, float* out) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const T* r[4];
  for (index_t i = 0; i < 4; ++i) r[i] = rows[i < nr ? i : nr - 1];
  const index_t full = head_dim / C, rem = head_dim % C;
  const index_t kd = (full + (rem ? 1 : 0)) * C;
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (index_t g = 0; g <= full; ++g) {
    if (g == full && rem == 0) break;
    const index_t pos = g * C;
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      __m512 x[V];
      if (g < full)
        G::load(r[i] + pos, x);
      else
        G::load_partial(r[i] + pos, rem, x);  // zeros past the row: u = 0 - 0, weight inv = 0
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m512 u = _mm512_sub_ps(x[k], _mm512_loadu_ps(lo + pos + 16 * k));
        _mm512_store_ps(ubuf + i * kd + pos + 16 * k, u);
        acc[i] = _mm512_fmadd_ps(u, _mm512_loadu_ps(inv + pos + 16 * k), acc[i]);
      }
    }
  }
  const __m512 mean = _mm512_mul_ps(reduce4(acc[0], acc[1], acc[2], acc[3]),
                                    _mm512_set1_ps(1.0f / static_cast<float>(head_dim)));
  const __m512 m[4] = {_mm512_shuffle_f32x4(mean, mean, 0x00), _mm512_shuffle_f32x4(mean, mean, 0x55),
                       _mm512_shuffle_f32x4(mean, mean, 0xAA), _mm512_shuffle_f32x4(mean, mean, 0xFF)};
  __m512 sq[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (index_t g = 0; g < full; ++g) {
    const index_t pos = g * C;
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m512 u = _mm512_load_ps(ubuf + i * kd + pos + 16 * k);
        const __m512 dev = _mm512_fmsub_ps(u, _mm512_loadu_ps(inv + pos + 16 * k), m[i]);
        sq[i] = _mm512_fmadd_ps(dev, dev, sq[i]);
      }
    }
  }
  if (rem) {
    __mmask16 mk[V];
    G::masks(rem, mk);
    const index_t pos = full * C;
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m512 u = _mm512_load_ps(ubuf + i * kd + pos + 16 * k);
        // Padding lanes must add 0, not mean^2.
        const __m512 dev = _mm512_maskz_fmsub_ps(mk[k], u, _mm512_loadu_ps(inv + pos + 16 * k), m[i]);
        sq[i] = _mm512_fmadd_ps(dev, dev, sq[i]);
      }
    }
  }
  const __m128 var = _mm_mul_ps(first_of_lanes(reduce4(sq[0], sq[1], sq[2], sq[3])),
                                _mm_set1_ps(1.0f / static_cast<float>(head_dim - 1)));
  store_n(out, _mm_sqrt_ps(var), nr);
}

/// The fast path: one pass over four rows accumulating S1 = sum z and S2 = sum z^2 of
/// z = y - 0.5 (the reference mid-range; shifting every channel by the same constant leaves the
/// variance unchanged and centres in-range data on 0). var = (S2 - S1^2/D) / (D - 1) cancels
/// only when the row's mean is large against its spread, so a row is accepted only when
/// S1^2/D <= 2 * (S2 - S1^2/D); the relative error of var is then <= ~7 * (D/16 + 5) eps. A batch
/// with a row that fails (or is NaN) is redone by the two-pass score4. `bias` (or nullptr):
/// z = fma(x, inv, bias) with bias = -lo*inv - 0.5, used by the driver only where every |bias| <= 2
/// so the folded offset cannot swamp z; else z = fma(x - lo, inv, -0.5).
/// Returns false when the batch must be redone.
template <class T, bool kBias>
inline bool score4_onepass(const T* const* rows, index_t nr, index_t head_dim, const float* lo, const float* inv,
                           const float* bias, float* out) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const T* r[4];
  for (index_t i = 0; i < 4; ++i) r[i] = rows[i < nr ? i : nr - 1];
  const index_t full = head_dim / C, rem = head_dim % C;
  const __m512 neg_half = _mm512_set1_ps(-0.5f);
  // Rows are read one after the other, each front to back: interleaving the four rows' addresses
  // defeats the hardware prefetcher from DRAM. Two chains per row (even / odd vectors) hide the
  // FMA latency within a row; the four rows' chains are independent for the out-of-order core.
  __m512 s1[4], s2[4];
  const index_t nvec = full * V;  // full vectors of a row, in kernel order
#pragma GCC unroll 4
  for (index_t i = 0; i < 4; ++i) {
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps();
    index_t vi = 0;
    for (; vi + 2 <= nvec; vi += 2) {
      const index_t pos = vi * 16;
      __m512 x[2];
      G::load_pair(r[i], vi, x);
      const __m512 w0 = _mm512_loadu_ps(inv + pos), w1 = _mm512_loadu_ps(inv + pos + 16);
      const __m512 z0 = kBias ? _mm512_fmadd_ps(x[0], w0, _mm512_loadu_ps(bias + pos))
                              : _mm512_fmadd_ps(_mm512_sub_ps(x[0], _mm512_loadu_ps(lo + pos)), w0, neg_half);
      const __m512 z1 = kBias ? _mm512_fmadd_ps(x[1], w1, _mm512_loadu_ps(bias + pos + 16))
                              : _mm512_fmadd_ps(_mm512_sub_ps(x[1], _mm512_loadu_ps(lo + pos + 16)), w1, neg_half);
      a1 = _mm512_add_ps(a1, z0);
      b1 = _mm512_add_ps(b1, z1);
      a2 = _mm512_fmadd_ps(z0, z0, a2);
      b2 = _mm512_fmadd_ps(z1, z1, b2);
    }
    if (vi < nvec) {  // one odd full vector (fp32 / fp16 with an odd count of 16-channel groups)
      const index_t pos = vi * 16;
      __m512 x[V];
      G::load(r[i] + pos / V, x);  // V == 1 here: a bf16 row always has an even count
      const __m512 w = _mm512_loadu_ps(inv + pos);
      const __m512 z = kBias ? _mm512_fmadd_ps(x[0], w, _mm512_loadu_ps(bias + pos))
                             : _mm512_fmadd_ps(_mm512_sub_ps(x[0], _mm512_loadu_ps(lo + pos)), w, neg_half);
      a1 = _mm512_add_ps(a1, z);
      a2 = _mm512_fmadd_ps(z, z, a2);
    }
    if (rem) {
      __mmask16 mk[V];
      G::masks(rem, mk);
      const index_t pos = full * C;
      __m512 x[V];
      G::load_partial(r[i] + pos, rem, x);
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m512 w = _mm512_loadu_ps(inv + pos + 16 * k);
        // Padding lanes would add -0.5: masked to 0.
        const __m512 z =
            kBias ? _mm512_maskz_fmadd_ps(mk[k], x[k], w, _mm512_loadu_ps(bias + pos + 16 * k))
                  : _mm512_maskz_fmadd_ps(mk[k], _mm512_sub_ps(x[k], _mm512_loadu_ps(lo + pos + 16 * k)), w, neg_half);
        a1 = _mm512_add_ps(a1, z);
        a2 = _mm512_fmadd_ps(z, z, a2);
      }
    }
    s1[i] = _mm512_add_ps(a1, b1);
    s2[i] = _mm512_add_ps(a2, b2);
  }
  const __m128 a = first_of_lanes(reduce4(s1[0], s1[1], s1[2], s1[3]));
  const __m128 q = first_of_lanes(reduce4(s2[0], s2[1], s2[2], s2[3]));
  const __m128 mean_part = _mm_mul_ps(_mm_mul_ps(a, a), _mm_set1_ps(1.0f / static_cast<float>(head_dim)));
  const __m128 ss = _mm_sub_ps(q, mean_part);
  // Every lane (the repeated ones too) must be well conditioned; NaN fails the compare.
  if (_mm_movemask_ps(_mm_cmp_ps(mean_part, _mm_mul_ps(ss, _mm_set1_ps(2.0f)), _CMP_LE_OQ)) != 0xf) return false;
  store_n(out, _mm_sqrt_ps(_mm_mul_ps(ss, _mm_set1_ps(1.0f / static_cast<float>(head_dim - 1)))), nr);
  return true;
}

// Integer min/max of raw patterns, 16-bit and 32-bit lanes (see common.hpp).
struct mm16 {
  static __m512i smax(__m512i a, __m512i b) { return _mm512_max_epi16(a, b); }
  static __m512i smin(__m512i a, __m512i b) { return _mm512_min_epi16(a, b); }
  static __m512i umax(__m512i a, __m512i b) { return _mm512_max_epu16(a, b); }
  static __m512i umin(__m512i a, __m512i b) { return _mm512_min_epu16(a, b); }
  static __m512i load_partial(const void* p, index_t rem) { return _mm512_maskz_loadu_epi16(mask32(rem), p); }
  // Resolve (see common.hpp): max = smax >= 0 ? smax : smin; min = umax negative ? umax : umin.
  static __m512i resolve_max(__m512i smax, __m512i smin) {
    return _mm512_mask_blend_epi16(_mm512_cmpge_epi16_mask(smax, _mm512_setzero_si512()), smin, smax);
  }
  static __m512i resolve_min(__m512i umax, __m512i umin) {
    return _mm512_mask_blend_epi16(_mm512_cmplt_epi16_mask(umax, _mm512_setzero_si512()), umin, umax);
  }
  static std::uint64_t nan_lanes(__m512i smax, __m512i umax, unsigned inf, unsigned sign) {
    return _mm512_cmpgt_epi16_mask(smax, _mm512_set1_epi16(static_cast<short>(inf))) |
           _mm512_cmpgt_epu16_mask(umax, _mm512_set1_epi16(static_cast<short>(sign | inf)));
  }
};
struct mm32 {
  static __m512i smax(__m512i a, __m512i b) { return _mm512_max_epi32(a, b); }
  static __m512i smin(__m512i a, __m512i b) { return _mm512_min_epi32(a, b); }
  static __m512i umax(__m512i a, __m512i b) { return _mm512_max_epu32(a, b); }
  static __m512i umin(__m512i a, __m512i b) { return _mm512_min_epu32(a, b); }
  static __m512i load_partial(const void* p, index_t rem) { return _mm512_maskz_loadu_epi32(mask16(rem), p); }
  static __m512i resolve_max(__m512i smax, __m512i smin) {
    return _mm512_mask_blend_epi32(_mm512_cmpge_epi32_mask(smax, _mm512_setzero_si512()), smin, smax);
  }
  static __m512i resolve_min(__m512i umax, __m512i umin) {
    return _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(umax, _mm512_setzero_si512()), umin, umax);
  }
  static std::uint64_t nan_lanes(__m512i smax, __m512i umax, unsigned inf, unsigned sign) {
    return _mm512_cmpgt_epi32_mask(smax, _mm512_set1_epi32(static_cast<int>(inf))) |
           _mm512_cmpgt_epu32_mask(umax, _mm512_set1_epi32(static_cast<int>(sign | inf)));
  }
};

/// Folds `nr` rows into channel slices [g0, g0 + NS) of the min/max state: the 4 x NS trackers
/// stay in registers (every loop over them is unrolled, or GCC keeps the array on the stack) while the rows are read front to back (row-major, so the DRAM stream stays
/// sequential; slice-major order over many rows defeats the hardware prefetcher).
template <class T, int NS>
inline void minmax_block(const T* const* rows, index_t nr, index_t head_dim, unsigned char* base, std::size_t tracker,
                         index_t g0) {
  using Ops = std::conditional_t<sizeof(T) == 2, mm16, mm32>;
  constexpr index_t per = 64 / static_cast<index_t>(sizeof(T));
  const index_t full = head_dim / per, rem = head_dim % per;
  __m512i a[4][NS];
#pragma GCC unroll 4
  for (int s = 0; s < NS; ++s)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) a[k][s] = _mm512_loadu_si512(base + k * tracker + static_cast<std::size_t>(g0 + s) * 64);
  for (index_t i = 0; i < nr; ++i) {
#pragma GCC unroll 4
    for (int s = 0; s < NS; ++s) {
      const index_t g = g0 + s;
      const T* p = rows[i] + g * per;
      const __m512i x = g < full ? _mm512_loadu_si512(p) : Ops::load_partial(p, rem);
      a[0][s] = Ops::smax(a[0][s], x);
      a[1][s] = Ops::smin(a[1][s], x);
      a[2][s] = Ops::umax(a[2][s], x);
      a[3][s] = Ops::umin(a[3][s], x);
    }
  }
#pragma GCC unroll 4
  for (int s = 0; s < NS; ++s)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) _mm512_storeu_si512(base + k * tracker + static_cast<std::size_t>(g0 + s) * 64, a[k][s]);
}

template <class T>
inline void minmax_rows(const T* const* rows, index_t nr, index_t head_dim, void* state) {
  constexpr index_t per = 64 / static_cast<index_t>(sizeof(T));
  const index_t slices = (head_dim + per - 1) / per;
  const std::size_t tracker = static_cast<std::size_t>(detail::mm_lanes<T>(head_dim)) * sizeof(T);
  unsigned char* base = static_cast<unsigned char*>(state);
  for (index_t g0 = 0; g0 < slices; g0 += 4) {
    switch (slices - g0 < 4 ? slices - g0 : 4) {
      case 4: minmax_block<T, 4>(rows, nr, head_dim, base, tracker, g0); break;
      case 3: minmax_block<T, 3>(rows, nr, head_dim, base, tracker, g0); break;
      case 2: minmax_block<T, 2>(rows, nr, head_dim, base, tracker, g0); break;
      case 1: minmax_block<T, 1>(rows, nr, head_dim, base, tracker, g0); break;
      default: break;
    }
  }
}

/// Vectorised ref_stats (see common.hpp's kernel_set): runs once per reference chunk, so it must
/// cost a few instructions per channel, not the ~50 of the portable loop.
template <class T>
unsigned ref_stats(const void* state, index_t head_dim, T* max_out, T* min_out, float* lo, float* inv, float* bias) {
  using Ops = std::conditional_t<sizeof(T) == 2, mm16, mm32>;
  using K = detail::key_traits<T>;
  constexpr index_t per = 64 / static_cast<index_t>(sizeof(T));
  const index_t lanes = detail::mm_lanes<T>(head_dim);
  const unsigned char* base = static_cast<const unsigned char*>(state);
  const std::size_t tracker = static_cast<std::size_t>(lanes) * sizeof(T);
  std::uint64_t nan = 0;
  for (index_t off = 0; off < lanes; off += per) {
    const std::size_t b = static_cast<std::size_t>(off) * sizeof(T);
    const __m512i smax = _mm512_loadu_si512(base + b), smin = _mm512_loadu_si512(base + tracker + b);
    const __m512i umax = _mm512_loadu_si512(base + 2 * tracker + b), umin = _mm512_loadu_si512(base + 3 * tracker + b);
    _mm512_storeu_si512(max_out + off, Ops::resolve_max(smax, smin));
    _mm512_storeu_si512(min_out + off, Ops::resolve_min(umax, umin));
    const index_t valid = head_dim - off;
    const std::uint64_t vmask = valid >= per ? ~std::uint64_t{0} : (valid <= 0 ? 0 : (std::uint64_t{1} << valid) - 1);
    nan |= Ops::nan_lanes(smax, umax, K::kInf, K::kSign) & vmask;
  }
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const index_t groups = (head_dim + C - 1) / C, rem = head_dim % C;
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  const __m512 fmax = _mm512_set1_ps(FLT_MAX), fmin = _mm512_set1_ps(FLT_MIN), two = _mm512_set1_ps(2.0f);
  __mmask16 unsafe = 0, far = 0;
  for (index_t g = 0; g < groups; ++g) {
    __m512 h[V], l[V];
    G::load(max_out + g * C, h);  // the arrays are padded to mm_lanes: whole groups are readable
    G::load(min_out + g * C, l);
    __mmask16 mk[V];
    if (g == groups - 1 && rem != 0)
      G::masks(rem, mk);
    else
      for (index_t k = 0; k < V; ++k) mk[k] = 0xffff;
    for (index_t k = 0; k < V; ++k) {
      const index_t pos = (g * V + k) * 16;
      const __m512 lv = _mm512_maskz_mov_ps(mk[k], l[k]);
      const __m512 range = _mm512_sub_ps(h[k], l[k]);
      const __mmask16 pos_range = mk[k] & _mm512_cmp_ps_mask(range, zero, _CMP_GT_OQ);
      const __m512 r = _mm512_maskz_div_ps(pos_range, one, range);
      _mm512_storeu_ps(lo + pos, lv);
      _mm512_storeu_ps(inv + pos, r);
      _mm512_storeu_ps(bias + pos, _mm512_maskz_mov_ps(mk[k], _mm512_fnmsub_ps(lv, r, half)));  // -lo*r - 0.5
      unsafe |= mk[k] & (_mm512_cmp_ps_mask(range, fmax, _CMP_NLE_UQ) | _mm512_cmp_ps_mask(r, fmax, _CMP_GT_OQ) |
                         (_mm512_cmp_ps_mask(r, fmin, _CMP_LT_OQ) & _mm512_cmp_ps_mask(r, zero, _CMP_NEQ_OQ)));
      far |= mk[k] & _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_fmadd_ps(lv, r, half)), two, _CMP_NLE_UQ);
    }
  }
  return (nan ? detail::kRefPoisoned : 0u) | (unsafe ? detail::kRefUnsafe : 0u) | (far ? detail::kRefFarBias : 0u);
}

template <class T>
void fused_rows(const T* const* srows, index_t ns, const T* const* mrows, index_t nm, index_t nm_prefetch,
                index_t head_dim,
                const float* lo, const float* inv, const float* bias, void* mm_state, float* out_std, float* ubuf) {
  const index_t n = ns > nm ? ns : nm;
  // 16 scored rows, then the same 16 rows of the min/max stream: the trackers are loaded and
  // stored once per 16 rows, and each stream still advances in lock-step with the other.
  const index_t row_bytes = head_dim * static_cast<index_t>(sizeof(T));
  for (index_t i = 0; i < n; i += 16) {
    for (index_t j = i; j < i + 16 && j < ns; j += 4) {
      // While these rows are scored (arithmetic, from cache), ask DRAM for the next batch of the
      // min/max stream: without it the two phases serialise and the time is their sum. Into L2
      // (T1): measured 0.43x -> 0.65x of the streaming read for the fused pass; T0/NTA (into L1)
      // gain nothing here, and 16 rows ahead beats 32-96.
      for (index_t m = j + 16; m < j + 20 && m < nm_prefetch; ++m)
        for (index_t b = 0; b < row_bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(mrows[m]) + b, _MM_HINT_T1);
      const index_t nr = ns - j < 4 ? ns - j : 4;
      const bool ok = bias != nullptr ? score4_onepass<T, true>(srows + j, nr, head_dim, lo, inv, bias, out_std + j)
                                      : score4_onepass<T, false>(srows + j, nr, head_dim, lo, inv, bias, out_std + j);
      if (!ok) score4<T>(srows + j, nr, head_dim, lo, inv, ubuf, out_std + j);
    }
    if (i < nm) minmax_rows<T>(mrows + i, nm - i < 16 ? nm - i : 16, head_dim, mm_state);
  }
}

template <class T>
void l2_rows(const T* const* rows, index_t n, index_t head_dim, float* out) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const index_t full = head_dim / C, rem = head_dim % C;
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    const T* r[4];
    for (index_t i = 0; i < 4; ++i) r[i] = rows[t + (i < nr ? i : nr - 1)];
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    // Each row front to back (row-major): interleaving the four rows' addresses defeats the
    // hardware prefetcher (measured 2.3x slower from DRAM for fp32 rows).
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      for (index_t g = 0; g < full; ++g) {
        __m512 x[V];
        G::load(r[i] + g * C, x);
#pragma GCC unroll 2
        for (index_t k = 0; k < V; ++k) acc[i] = _mm512_fmadd_ps(x[k], x[k], acc[i]);
      }
      if (rem) {
        __m512 x[V];
        G::load_partial(r[i] + full * C, rem, x);
#pragma GCC unroll 2
        for (index_t k = 0; k < V; ++k) acc[i] = _mm512_fmadd_ps(x[k], x[k], acc[i]);
      }
    }
    const __m128 ss = first_of_lanes(reduce4(acc[0], acc[1], acc[2], acc[3]));
    store_n(out + t, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(ss)), nr);
  }
}

template <class T>
void load_to_f32(const T* src, index_t n, float* dst) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  for (index_t pos = 0; pos < n; pos += C) {
    __m512 x[V];
    if (n - pos >= C)
      G::load(src + pos, x);
    else
      G::load_partial(src + pos, n - pos, x);
    for (index_t k = 0; k < V; ++k) _mm512_storeu_ps(dst + pos + 16 * k, x[k]);
  }
}

/// exp(x) for x <= 0 or NaN (Cephes expf: range reduction by ln2 in two parts, degree-5
/// polynomial; <= 2 ulp). Results that would be denormal (x < -87.34) are flushed to 0.
inline __m512 exp_nonpositive(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-0.693359375f), x);
  r = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  const __m512 e = _mm512_scalef_ps(y, n);
  // NLT_UQ is true for NaN, so NaN survives the flush.
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.33654f), _CMP_NLT_UQ), e);
}

inline void softmax(float* s, index_t n, float w, float* out, bool accumulate) {
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  __m512 mx = neg_inf;
  index_t i = 0;
  // max(x, acc) returns acc when x is NaN: NaN tokens are skipped.
  for (; i + 16 <= n; i += 16) mx = _mm512_max_ps(_mm512_loadu_ps(s + i), mx);
  const __mmask16 tail = mask16(n - i);
  if (i < n) mx = _mm512_max_ps(_mm512_mask_loadu_ps(neg_inf, tail, s + i), mx);
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  // exp(s - max) in place; the normaliser sums in double and max(e, 0) drops NaN.
  __m512d sum0 = _mm512_setzero_pd(), sum1 = _mm512_setzero_pd();
  for (i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? static_cast<__mmask16>(0xffff) : tail;
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + i), m));
    _mm512_mask_storeu_ps(s + i, k, e);
    const __m512 z = _mm512_maskz_max_ps(k, e, _mm512_setzero_ps());
    sum0 = _mm512_add_pd(sum0, _mm512_cvtps_pd(_mm512_castps512_ps256(z)));
    sum1 = _mm512_add_pd(sum1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(z), 1))));
  }
  const __m512 rcp = _mm512_set1_ps(static_cast<float>(1.0 / _mm512_reduce_add_pd(_mm512_add_pd(sum0, sum1))));
  const __m512 wv = _mm512_set1_ps(w);
  for (i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? static_cast<__mmask16>(0xffff) : tail;
    const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + i), rcp);
    const __m512 o = accumulate ? _mm512_fmadd_ps(wv, p, _mm512_maskz_loadu_ps(k, out + i)) : p;
    _mm512_mask_storeu_ps(out + i, k, o);
  }
}

template <class T>
constexpr detail::kernel_set<T> make_kernel_set() {
  if constexpr (std::is_same_v<T, bf16>)
    return {&detail::even_odd_kernel_dim<16>, &detail::even_odd_kernel_channel<16>, &fused_rows<T>, &ref_stats<T>,
            &l2_rows<T>, &load_to_f32<T>};
  else
    return {&detail::natural_kernel_dim<16>, &detail::natural_kernel_channel, &fused_rows<T>, &ref_stats<T>,
            &l2_rows<T>, &load_to_f32<T>};
}

/// The AVX-512 target's table (call only where the CPU has AVX-512 F/BW/VL/DQ).
inline constexpr detail::target_kernels kKernels{target::avx512, make_kernel_set<float>(), make_kernel_set<f16>(),
                                                 make_kernel_set<bf16>(), &softmax};

}  // namespace avx512
}  // namespace simd
}  // namespace lagkv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

#endif  // x86 with GCC/Clang
