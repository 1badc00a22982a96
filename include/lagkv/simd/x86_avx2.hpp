#pragma once
/// \file simd/x86_avx2.hpp
/// \brief AVX2 + FMA + F16C row kernels in a target region (a generic x86-64 build carries
/// them; dispatch.hpp runs them only where the CPU has all three).
///
/// Same structure as x86_avx512.hpp at 8 floats a vector: fp16 via vcvtph2ps, bf16 as even/odd
/// halves of 32-bit lanes. AVX2 has no 16-bit masked load, so a 16-bit tail is copied into a
/// zeroed 32-byte buffer first (fp32 tails use vmaskmov).

#include "lagkv/simd/common.hpp"

#if !defined(LAGKV_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LAGKV_SIMD_HAVE_AVX2 1

#include <immintrin.h>

#include <cfloat>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace lagkv {
namespace simd {
namespace avx2 {

/// Lanes [0, n) all-ones.
inline __m256i lane_mask(index_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <class T>
struct group;
template <>
struct group<float> {
  static constexpr index_t kChannels = 8, kVecs = 1;
  static void load(const float* p, __m256* v) { v[0] = _mm256_loadu_ps(p); }
  static void load_partial(const float* p, index_t rem, __m256* v) { v[0] = _mm256_maskload_ps(p, lane_mask(rem)); }
  static void masks(index_t rem, __m256* m) { m[0] = _mm256_castsi256_ps(lane_mask(rem)); }
};
template <>
struct group<f16> {
  static constexpr index_t kChannels = 8, kVecs = 1;
  static void load(const f16* p, __m256* v) { v[0] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static void load_partial(const f16* p, index_t rem, __m256* v) {
    alignas(16) std::uint16_t buf[8] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * 2);
    v[0] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(buf)));
  }
  static void masks(index_t rem, __m256* m) { m[0] = _mm256_castsi256_ps(lane_mask(rem)); }
};
template <>
struct group<bf16> {
  static constexpr index_t kChannels = 16, kVecs = 2;
  static void split(__m256i x, __m256* v) {
    v[0] = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    v[1] = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static void load(const bf16* p, __m256* v) { split(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), v); }
  static void load_partial(const bf16* p, index_t rem, __m256* v) {
    alignas(32) std::uint16_t buf[16] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * 2);
    split(_mm256_load_si256(reinterpret_cast<const __m256i*>(buf)), v);
  }
  static void masks(index_t rem, __m256* m) {
    m[0] = _mm256_castsi256_ps(lane_mask((rem + 1) / 2));
    m[1] = _mm256_castsi256_ps(lane_mask(rem / 2));
  }
};

/// [sum a0, sum a1, sum a2, sum a3]: three hadds shared by four rows, then one 256->128 fold.
inline __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}
inline void store_n(float* out, __m128 v, index_t n) {
  if (n == 4) {
    _mm_storeu_ps(out, v);
  } else {
    alignas(16) float tmp[4];
    _mm_store_ps(tmp, v);
    std::memcpy(out, tmp, static_cast<std::size_t>(n) * sizeof(float));
  }
}

/// See avx512::score4 for the numerics (two passes, u parked in ubuf, fma(u, inv, -mean)).
template <class T>
inline void score4(const T* const* rows, index_t nr, index_t head_dim, const float* lo, const float* inv,
                   float* ubuf, float* out) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const T* r[4];
  for (index_t i = 0; i < 4; ++i) r[i] = rows[i < nr ? i : nr - 1];
  const index_t full = head_dim / C, rem = head_dim % C;
  const index_t kd = (full + (rem ? 1 : 0)) * C;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (index_t g = 0; g <= full; ++g) {
    if (g == full && rem == 0) break;
    const index_t pos = g * C;
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      __m256 x[V];
      if (g < full)
        G::load(r[i] + pos, x);
      else
        G::load_partial(r[i] + pos, rem, x);
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m256 u = _mm256_sub_ps(x[k], _mm256_loadu_ps(lo + pos + 8 * k));
        _mm256_store_ps(ubuf + i * kd + pos + 8 * k, u);
        acc[i] = _mm256_fmadd_ps(u, _mm256_loadu_ps(inv + pos + 8 * k), acc[i]);
      }
    }
  }
  const __m128 mean4 = _mm_mul_ps(reduce4(acc[0], acc[1], acc[2], acc[3]), _mm_set1_ps(1.0f / static_cast<float>(head_dim)));
  const __m256 mean = _mm256_castps128_ps256(mean4);
  const __m256 m[4] = {_mm256_permutevar8x32_ps(mean, _mm256_set1_epi32(0)),
                       _mm256_permutevar8x32_ps(mean, _mm256_set1_epi32(1)),
                       _mm256_permutevar8x32_ps(mean, _mm256_set1_epi32(2)),
                       _mm256_permutevar8x32_ps(mean, _mm256_set1_epi32(3))};
  __m256 sq[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (index_t g = 0; g < full; ++g) {
    const index_t pos = g * C;
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m256 u = _mm256_load_ps(ubuf + i * kd + pos + 8 * k);
        const __m256 dev = _mm256_fmsub_ps(u, _mm256_loadu_ps(inv + pos + 8 * k), m[i]);
        sq[i] = _mm256_fmadd_ps(dev, dev, sq[i]);
      }
    }
  }
  if (rem) {
    __m256 mk[V];
    G::masks(rem, mk);
    const index_t pos = full * C;
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m256 u = _mm256_load_ps(ubuf + i * kd + pos + 8 * k);
        const __m256 dev = _mm256_and_ps(mk[k], _mm256_fmsub_ps(u, _mm256_loadu_ps(inv + pos + 8 * k), m[i]));
        sq[i] = _mm256_fmadd_ps(dev, dev, sq[i]);
      }
    }
  }
  const __m128 var = _mm_mul_ps(reduce4(sq[0], sq[1], sq[2], sq[3]), _mm_set1_ps(1.0f / static_cast<float>(head_dim - 1)));
  store_n(out, _mm_sqrt_ps(var), nr);
}

/// One pass, S1 = sum z and S2 = sum z^2 with z = y - 0.5; see avx512::score4_onepass for the
/// conditioning test and the bias form. Returns false when the batch must be redone by score4.
template <class T, bool kBias>
inline bool score4_onepass(const T* const* rows, index_t nr, index_t head_dim, const float* lo, const float* inv,
                           const float* bias, float* out) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const T* r[4];
  for (index_t i = 0; i < 4; ++i) r[i] = rows[i < nr ? i : nr - 1];
  const index_t full = head_dim / C, rem = head_dim % C;
  const __m256 neg_half = _mm256_set1_ps(-0.5f);
  // Each row front to back (see avx512::score4_onepass), two chains per row.
  __m256 s1[4], s2[4];
#pragma GCC unroll 4
  for (index_t i = 0; i < 4; ++i) {
    __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps();
    for (index_t g = 0; g < full; ++g) {
      const index_t pos = g * C;
      __m256 x[V];
      G::load(r[i] + pos, x);
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m256 w = _mm256_loadu_ps(inv + pos + 8 * k);
        const __m256 z = kBias ? _mm256_fmadd_ps(x[k], w, _mm256_loadu_ps(bias + pos + 8 * k))
                               : _mm256_fmadd_ps(_mm256_sub_ps(x[k], _mm256_loadu_ps(lo + pos + 8 * k)), w, neg_half);
        if ((g * V + k) % 2 == 0) {
          a1 = _mm256_add_ps(a1, z);
          a2 = _mm256_fmadd_ps(z, z, a2);
        } else {
          b1 = _mm256_add_ps(b1, z);
          b2 = _mm256_fmadd_ps(z, z, b2);
        }
      }
    }
    if (rem) {
      const index_t pos = full * C;
      __m256 mk[V], x[V];
      G::masks(rem, mk);
      G::load_partial(r[i] + pos, rem, x);
#pragma GCC unroll 2
      for (index_t k = 0; k < V; ++k) {
        const __m256 w = _mm256_loadu_ps(inv + pos + 8 * k);
        __m256 z = kBias ? _mm256_fmadd_ps(x[k], w, _mm256_loadu_ps(bias + pos + 8 * k))
                         : _mm256_fmadd_ps(_mm256_sub_ps(x[k], _mm256_loadu_ps(lo + pos + 8 * k)), w, neg_half);
        z = _mm256_and_ps(z, mk[k]);  // padding lanes would add -0.5
        a1 = _mm256_add_ps(a1, z);
        a2 = _mm256_fmadd_ps(z, z, a2);
      }
    }
    s1[i] = _mm256_add_ps(a1, b1);
    s2[i] = _mm256_add_ps(a2, b2);
  }
  const __m128 a = reduce4(s1[0], s1[1], s1[2], s1[3]);
  const __m128 q = reduce4(s2[0], s2[1], s2[2], s2[3]);
  const __m128 mean_part = _mm_mul_ps(_mm_mul_ps(a, a), _mm_set1_ps(1.0f / static_cast<float>(head_dim)));
  const __m128 ss = _mm_sub_ps(q, mean_part);
  if (_mm_movemask_ps(_mm_cmp_ps(mean_part, _mm_mul_ps(ss, _mm_set1_ps(2.0f)), _CMP_LE_OQ)) != 0xf) return false;
  store_n(out, _mm_sqrt_ps(_mm_mul_ps(ss, _mm_set1_ps(1.0f / static_cast<float>(head_dim - 1)))), nr);
  return true;
}

struct mm16 {
  static __m256i smax(__m256i a, __m256i b) { return _mm256_max_epi16(a, b); }
  static __m256i smin(__m256i a, __m256i b) { return _mm256_min_epi16(a, b); }
  static __m256i umax(__m256i a, __m256i b) { return _mm256_max_epu16(a, b); }
  static __m256i umin(__m256i a, __m256i b) { return _mm256_min_epu16(a, b); }
  static __m256i load_partial(const void* p, index_t rem) {
    alignas(32) std::uint16_t buf[16] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * 2);
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
  }
  static __m256i resolve_max(__m256i smax, __m256i smin) {
    return _mm256_blendv_epi8(smax, smin, _mm256_cmpgt_epi16(_mm256_setzero_si256(), smax));
  }
  static __m256i resolve_min(__m256i umax, __m256i umin) {
    return _mm256_blendv_epi8(umin, umax, _mm256_cmpgt_epi16(_mm256_setzero_si256(), umax));
  }
  static __m256i nan_lanes(__m256i smax, __m256i umax, unsigned inf, unsigned sign) {
    const __m256i above = _mm256_set1_epi16(static_cast<short>((sign | inf) + 1));  // unsigned umax >= above
    return _mm256_or_si256(_mm256_cmpgt_epi16(smax, _mm256_set1_epi16(static_cast<short>(inf))),
                           _mm256_cmpeq_epi16(_mm256_max_epu16(umax, above), umax));
  }
};
struct mm32 {
  static __m256i smax(__m256i a, __m256i b) { return _mm256_max_epi32(a, b); }
  static __m256i smin(__m256i a, __m256i b) { return _mm256_min_epi32(a, b); }
  static __m256i umax(__m256i a, __m256i b) { return _mm256_max_epu32(a, b); }
  static __m256i umin(__m256i a, __m256i b) { return _mm256_min_epu32(a, b); }
  static __m256i load_partial(const void* p, index_t rem) {
    return _mm256_maskload_epi32(static_cast<const int*>(p), lane_mask(rem));
  }
  static __m256i resolve_max(__m256i smax, __m256i smin) {
    return _mm256_blendv_epi8(smax, smin, _mm256_cmpgt_epi32(_mm256_setzero_si256(), smax));
  }
  static __m256i resolve_min(__m256i umax, __m256i umin) {
    return _mm256_blendv_epi8(umin, umax, _mm256_cmpgt_epi32(_mm256_setzero_si256(), umax));
  }
  static __m256i nan_lanes(__m256i smax, __m256i umax, unsigned inf, unsigned sign) {
    const __m256i above = _mm256_set1_epi32(static_cast<int>((sign | inf) + 1));
    return _mm256_or_si256(_mm256_cmpgt_epi32(smax, _mm256_set1_epi32(static_cast<int>(inf))),
                           _mm256_cmpeq_epi32(_mm256_max_epu32(umax, above), umax));
  }
};

/// See avx512::minmax_block; AVX2 has 16 registers, so two 32-byte slices (8 trackers) at a time.
template <class T, int NS>
inline void minmax_block(const T* const* rows, index_t nr, index_t head_dim, unsigned char* base, std::size_t tracker,
                         index_t g0) {
  using Ops = std::conditional_t<sizeof(T) == 2, mm16, mm32>;
  constexpr index_t per = 32 / static_cast<index_t>(sizeof(T));
  const index_t full = head_dim / per, rem = head_dim % per;
  __m256i a[4][NS];
#pragma GCC unroll 4
  for (int s = 0; s < NS; ++s)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k)
      a[k][s] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + k * tracker + static_cast<std::size_t>(g0 + s) * 32));
  for (index_t i = 0; i < nr; ++i) {
#pragma GCC unroll 2
    for (int s = 0; s < NS; ++s) {
      const index_t g = g0 + s;
      const T* p = rows[i] + g * per;
      const __m256i x = g < full ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : Ops::load_partial(p, rem);
      a[0][s] = Ops::smax(a[0][s], x);
      a[1][s] = Ops::smin(a[1][s], x);
      a[2][s] = Ops::umax(a[2][s], x);
      a[3][s] = Ops::umin(a[3][s], x);
    }
  }
#pragma GCC unroll 4
  for (int s = 0; s < NS; ++s)
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(base + k * tracker + static_cast<std::size_t>(g0 + s) * 32), a[k][s]);
}

template <class T>
inline void minmax_rows(const T* const* rows, index_t nr, index_t head_dim, void* state) {
  constexpr index_t per = 32 / static_cast<index_t>(sizeof(T));
  const index_t slices = (head_dim + per - 1) / per;
  const std::size_t tracker = static_cast<std::size_t>(detail::mm_lanes<T>(head_dim)) * sizeof(T);
  unsigned char* base = static_cast<unsigned char*>(state);
  for (index_t g0 = 0; g0 < slices; g0 += 2) {
    if (slices - g0 >= 2)
      minmax_block<T, 2>(rows, nr, head_dim, base, tracker, g0);
    else
      minmax_block<T, 1>(rows, nr, head_dim, base, tracker, g0);
  }
}

/// Vectorised ref_stats; see avx512::ref_stats.
template <class T>
unsigned ref_stats(const void* state, index_t head_dim, T* max_out, T* min_out, float* lo, float* inv, float* bias) {
  using Ops = std::conditional_t<sizeof(T) == 2, mm16, mm32>;
  using K = detail::key_traits<T>;
  constexpr index_t per = 32 / static_cast<index_t>(sizeof(T));
  const index_t lanes = detail::mm_lanes<T>(head_dim);
  const unsigned char* base = static_cast<const unsigned char*>(state);
  const std::size_t tracker = static_cast<std::size_t>(lanes) * sizeof(T);
  unsigned nan = 0;
  for (index_t off = 0; off < lanes; off += per) {
    const std::size_t b = static_cast<std::size_t>(off) * sizeof(T);
    const __m256i smax = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + b));
    const __m256i smin = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + tracker + b));
    const __m256i umax = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + 2 * tracker + b));
    const __m256i umin = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base + 3 * tracker + b));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(max_out + off), Ops::resolve_max(smax, smin));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(min_out + off), Ops::resolve_min(umax, umin));
    const index_t valid_bytes = (head_dim - off) * static_cast<index_t>(sizeof(T));
    const unsigned vmask = valid_bytes >= 32 ? 0xffffffffu : (valid_bytes <= 0 ? 0u : (1u << valid_bytes) - 1u);
    nan |= static_cast<unsigned>(_mm256_movemask_epi8(Ops::nan_lanes(smax, umax, K::kInf, K::kSign))) & vmask;
  }
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const index_t groups = (head_dim + C - 1) / C, rem = head_dim % C;
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const __m256 fmax = _mm256_set1_ps(FLT_MAX), fmin = _mm256_set1_ps(FLT_MIN), two = _mm256_set1_ps(2.0f);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 all = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  int unsafe = 0, far = 0;
  for (index_t g = 0; g < groups; ++g) {
    __m256 h[V], l[V], mk[V];
    G::load(max_out + g * C, h);  // padded to mm_lanes: whole groups are readable
    G::load(min_out + g * C, l);
    if (g == groups - 1 && rem != 0)
      G::masks(rem, mk);
    else
      for (index_t k = 0; k < V; ++k) mk[k] = all;
    for (index_t k = 0; k < V; ++k) {
      const index_t pos = (g * V + k) * 8;
      const __m256 lv = _mm256_and_ps(mk[k], l[k]);
      const __m256 range = _mm256_sub_ps(h[k], l[k]);
      const __m256 pos_range = _mm256_and_ps(mk[k], _mm256_cmp_ps(range, zero, _CMP_GT_OQ));
      const __m256 r = _mm256_and_ps(pos_range, _mm256_div_ps(one, range));
      _mm256_storeu_ps(lo + pos, lv);
      _mm256_storeu_ps(inv + pos, r);
      _mm256_storeu_ps(bias + pos, _mm256_and_ps(mk[k], _mm256_fnmsub_ps(lv, r, half)));  // -lo*r - 0.5
      const __m256 bad = _mm256_or_ps(
          _mm256_or_ps(_mm256_cmp_ps(range, fmax, _CMP_NLE_UQ), _mm256_cmp_ps(r, fmax, _CMP_GT_OQ)),
          _mm256_and_ps(_mm256_cmp_ps(r, fmin, _CMP_LT_OQ), _mm256_cmp_ps(r, zero, _CMP_NEQ_OQ)));
      unsafe |= _mm256_movemask_ps(_mm256_and_ps(mk[k], bad));
      far |= _mm256_movemask_ps(
          _mm256_and_ps(mk[k], _mm256_cmp_ps(_mm256_and_ps(abs_mask, _mm256_fmadd_ps(lv, r, half)), two, _CMP_NLE_UQ)));
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
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    // Each row front to back (row-major): interleaving the four rows' addresses defeats the
    // hardware prefetcher (measured 2.3x slower from DRAM for fp32 rows).
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      for (index_t g = 0; g < full; ++g) {
        __m256 x[V];
        G::load(r[i] + g * C, x);
#pragma GCC unroll 2
        for (index_t k = 0; k < V; ++k) acc[i] = _mm256_fmadd_ps(x[k], x[k], acc[i]);
      }
      if (rem) {
        __m256 x[V];
        G::load_partial(r[i] + full * C, rem, x);
#pragma GCC unroll 2
        for (index_t k = 0; k < V; ++k) acc[i] = _mm256_fmadd_ps(x[k], x[k], acc[i]);
      }
    }
    const __m128 ss = reduce4(acc[0], acc[1], acc[2], acc[3]);
    store_n(out + t, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(ss)), nr);
  }
}

template <class T>
void load_to_f32(const T* src, index_t n, float* dst) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  for (index_t pos = 0; pos < n; pos += C) {
    __m256 x[V];
    if (n - pos >= C)
      G::load(src + pos, x);
    else
      G::load_partial(src + pos, n - pos, x);
    for (index_t k = 0; k < V; ++k) _mm256_storeu_ps(dst + pos + 8 * k, x[k]);
  }
}

/// exp(x) for x <= 0 or NaN; the same Cephes evaluation as avx512::exp_nonpositive, with 2^n
/// built in the exponent field (n >= -126 wherever the result is kept).
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
  return _mm256_and_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.33654f), _CMP_NLT_UQ), e);
}

inline void softmax(float* s, index_t n, float w, float* out, bool accumulate) {
  const index_t full = n / 8 * 8;
  __m256 mx = _mm256_set1_ps(-INFINITY);
  for (index_t i = 0; i < full; i += 8) mx = _mm256_max_ps(_mm256_loadu_ps(s + i), mx);  // skips NaN
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  float mxs = _mm_cvtss_f32(m4);
  for (index_t i = full; i < n; ++i) mxs = s[i] > mxs ? s[i] : mxs;  // false for NaN
  const __m256 m = _mm256_set1_ps(mxs);
  __m256d sum0 = _mm256_setzero_pd(), sum1 = _mm256_setzero_pd();
  for (index_t i = 0; i < n; i += 8) {
    alignas(32) float tmp[8];
    const bool part = n - i < 8;
    if (part) {
      for (index_t j = 0; j < 8; ++j) tmp[j] = i + j < n ? s[i + j] : -INFINITY;
    }
    const __m256 e = exp_nonpositive(_mm256_sub_ps(part ? _mm256_load_ps(tmp) : _mm256_loadu_ps(s + i), m));
    const __m256 z = _mm256_max_ps(e, _mm256_setzero_ps());  // drops NaN
    sum0 = _mm256_add_pd(sum0, _mm256_cvtps_pd(_mm256_castps256_ps128(z)));
    sum1 = _mm256_add_pd(sum1, _mm256_cvtps_pd(_mm256_extractf128_ps(z, 1)));
    if (part) {
      _mm256_store_ps(tmp, e);
      std::memcpy(s + i, tmp, static_cast<std::size_t>(n - i) * sizeof(float));
    } else {
      _mm256_storeu_ps(s + i, e);
    }
  }
  const __m256d sd = _mm256_add_pd(sum0, sum1);
  const __m128d s2 = _mm_add_pd(_mm256_castpd256_pd128(sd), _mm256_extractf128_pd(sd, 1));
  const double total = _mm_cvtsd_f64(_mm_add_sd(s2, _mm_unpackhi_pd(s2, s2)));
  const float rcp = static_cast<float>(1.0 / total);
  const __m256 rv = _mm256_set1_ps(rcp), wv = _mm256_set1_ps(w);
  index_t i = 0;
  for (; i < full; i += 8) {
    const __m256 p = _mm256_mul_ps(_mm256_loadu_ps(s + i), rv);
    _mm256_storeu_ps(out + i, accumulate ? _mm256_fmadd_ps(wv, p, _mm256_loadu_ps(out + i)) : p);
  }
  for (; i < n; ++i) {
    const float p = s[i] * rcp;
    out[i] = accumulate ? std::fma(w, p, out[i]) : p;
  }
}

template <class T>
constexpr detail::kernel_set<T> make_kernel_set() {
  if constexpr (std::is_same_v<T, bf16>)
    return {&detail::even_odd_kernel_dim<8>, &detail::even_odd_kernel_channel<8>, &fused_rows<T>, &ref_stats<T>,
            &l2_rows<T>, &load_to_f32<T>};
  else
    return {&detail::natural_kernel_dim<8>, &detail::natural_kernel_channel, &fused_rows<T>, &ref_stats<T>,
            &l2_rows<T>, &load_to_f32<T>};
}

/// The AVX2 target's table (call only where the CPU has AVX2, FMA and F16C).
inline constexpr detail::target_kernels kKernels{target::avx2, make_kernel_set<float>(), make_kernel_set<f16>(),
                                                 make_kernel_set<bf16>(), &softmax};

}  // namespace avx2
}  // namespace simd
}  // namespace lagkv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif  // x86 with GCC/Clang
