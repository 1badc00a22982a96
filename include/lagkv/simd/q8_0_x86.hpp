#pragma once
/// \file simd/q8_0_x86.hpp
/// \brief AVX2 (+FMA, F16C) and AVX-512 (F/BW/VL/DQ) q8_0 row kernels, each in its own target
/// region so a generic x86-64 build carries both; simd/q8_0_dispatch.hpp runs the one matching
/// lagkv::simd::active_target() (so LAGKV_SIMD and simd::force() pick these too).
///
/// Dequantisation: 16 (AVX-512) or 8 (AVX2) int8 values are sign-extended to int32 (vpmovsxbd
/// straight from memory) and converted to float (exact), then multiplied by the block's scale
/// (widened by integer ops, see scale_of): exact. The same registers feed the min/max trackers
/// and the standard deviation, in the one-pass form of the fp16/bf16 kernels
/// (simd/x86_avx512.hpp): S1 = sum z and S2 = sum z^2 of z = y - 0.5, accepted only where
/// S1^2/D <= 2 (S2 - S1^2/D), else -1 (the driver redoes the row in two passes);
/// z = fma(x, inv, bias) when |bias| <= 2, else fma(x - lo, inv, -0.5). Rows are read front to
/// back (interleaving rows defeats the hardware prefetcher); per-row partial sums are parked
/// in a small buffer and four rows share one transposing reduction. head_dim is a multiple of
/// 32 (whole q8_0 blocks): no tails.

#include "lagkv/q8_0.hpp"
#include "lagkv/simd/q8_0_scalar.hpp"

#if !defined(LAGKV_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LAGKV_Q8_0_HAVE_X86 1

#include <immintrin.h>

#include <cstdint>
#include <cstring>

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C
// ---------------------------------------------------------------------------------------------
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace lagkv {
namespace simd {
namespace q8 {
namespace avx2 {

/// Values [8k, 8k+8) of a block as floats (exact).
inline __m256 q8(const block_q8_0& b, int k) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * k))));
}
/// [sum a0, sum a1, sum a2, sum a3].
inline __m128 sum4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}
inline void store_n(float* out, __m128 v, index_t n) {
  alignas(16) float tmp[4];
  _mm_store_ps(tmp, v);
  std::memcpy(out, tmp, static_cast<std::size_t>(n) * sizeof(float));
}

/// Rows per batch: the per-row partial sums of a batch fit a small stack buffer.
inline constexpr index_t kRows = 16;

/// One q8_0 block over a batch of rows: its 8 trackers (min and max of 32 channels) and the row
/// partials fill AVX2's 16 registers, so blocks go one at a time and the batch stays in L1.
template <bool kScore, bool kFold, bool kBias>
inline unsigned block_rows(const block_q8_0* const* rows, index_t n, index_t b, const float* lo, const float* inv,
                           const float* bias, float* mn, float* mx, __m256* p1, __m256* p2) {
  const index_t c = b * kQ8BlockValues;
  __m256 tl[4], th[4];
  if (kFold)
    for (int k = 0; k < 4; ++k) {
      tl[k] = _mm256_loadu_ps(mn + c + 8 * k);
      th[k] = _mm256_loadu_ps(mx + c + 8 * k);
    }
  const __m256 neg_half = _mm256_set1_ps(-0.5f);
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const block_q8_0& blk = rows[i][b];
    const __m256 d = _mm256_set1_ps(scale_of(blk, bad));
    __m256 a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps();
    if (kScore && b > 0) {
      a1 = p1[i];
      a2 = p2[i];
    }
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const __m256 v = _mm256_mul_ps(q8(blk, k), d);
      if (kFold) {
        tl[k] = _mm256_min_ps(tl[k], v);
        th[k] = _mm256_max_ps(th[k], v);
      }
      if (kScore) {
        const __m256 w = _mm256_loadu_ps(inv + c + 8 * k);
        const __m256 z = kBias ? _mm256_fmadd_ps(v, w, _mm256_loadu_ps(bias + c + 8 * k))
                               : _mm256_fmadd_ps(_mm256_sub_ps(v, _mm256_loadu_ps(lo + c + 8 * k)), w, neg_half);
        if (k % 2 == 0) {
          a1 = _mm256_add_ps(a1, z);
          a2 = _mm256_fmadd_ps(z, z, a2);
        } else {
          b1 = _mm256_add_ps(b1, z);
          b2 = _mm256_fmadd_ps(z, z, b2);
        }
      }
    }
    if (kScore) {
      p1[i] = _mm256_add_ps(a1, b1);
      p2[i] = _mm256_add_ps(a2, b2);
    }
  }
  if (kFold)
    for (int k = 0; k < 4; ++k) {
      _mm256_storeu_ps(mn + c + 8 * k, tl[k]);
      _mm256_storeu_ps(mx + c + 8 * k, th[k]);
    }
  return bad;
}

/// std (or -1) of each row of a batch from its partials: four rows per reduction.
inline void finish_rows(const __m256* p1, const __m256* p2, index_t n, index_t dim, float* out) {
  const float fd = static_cast<float>(dim);
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    auto at = [&](const __m256* p, index_t i) { return p[t + (i < nr ? i : nr - 1)]; };
    const __m128 a = sum4(at(p1, 0), at(p1, 1), at(p1, 2), at(p1, 3));
    const __m128 q = sum4(at(p2, 0), at(p2, 1), at(p2, 2), at(p2, 3));
    const __m128 mean_part = _mm_mul_ps(_mm_mul_ps(a, a), _mm_set1_ps(1.0f / fd));
    const __m128 ss = _mm_sub_ps(q, mean_part);
    const __m128 ok = _mm_cmp_ps(mean_part, _mm_mul_ps(ss, _mm_set1_ps(2.0f)), _CMP_LE_OQ);
    const __m128 sd = _mm_sqrt_ps(_mm_mul_ps(ss, _mm_set1_ps(1.0f / (fd - 1.0f))));
    store_n(out + t, _mm_blendv_ps(_mm_set1_ps(-1.0f), sd, ok), nr);
  }
}

template <bool kScore, bool kFold, bool kBias>
inline unsigned batch(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                      const float* bias, float* out, float* mn, float* mx) {
  __m256 p1[kRows], p2[kRows];
  unsigned bad = 0;
  for (index_t b = 0; b < nb; ++b) bad |= block_rows<kScore, kFold, kBias>(rows, n, b, lo, inv, bias, mn, mx, p1, p2);
  if (kScore) finish_rows(p1, p2, n, nb * kQ8BlockValues, out);
  return bad;
}

inline bool score_rows(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                       const float* bias, float* out, float* mn, float* mx) {
  unsigned bad = 0;
  for (index_t t = 0; t < n; t += kRows) {
    const index_t m = n - t < kRows ? n - t : kRows;
    const block_q8_0* const* r = rows + t;
    if (out == nullptr)
      bad |= batch<false, true, false>(r, m, nb, lo, inv, bias, nullptr, mn, mx);
    else if (mn == nullptr)
      bad |= bias != nullptr ? batch<true, false, true>(r, m, nb, lo, inv, bias, out + t, mn, mx)
                             : batch<true, false, false>(r, m, nb, lo, inv, bias, out + t, mn, mx);
    else
      bad |= bias != nullptr ? batch<true, true, true>(r, m, nb, lo, inv, bias, out + t, mn, mx)
                             : batch<true, true, false>(r, m, nb, lo, inv, bias, out + t, mn, mx);
  }
  return bad != 0;
}

/// sum of (d*q)^2 per row: q^2 summed exactly in int32 (vpmaddwd on sign-extended int16), then
/// scaled by d^2 (exact in float) into a float accumulator per row.
inline void l2_rows(const block_q8_0* const* rows, index_t n, index_t nb, float* out) {
  unsigned bad = 0;  // non-finite results are caught by the driver
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    __m256 acc[4];
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      const block_q8_0* r = rows[t + (i < nr ? i : nr - 1)];
      __m256 a = _mm256_setzero_ps();
      for (index_t b = 0; b < nb; ++b) {
        const __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r[b].qs)));
        const __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r[b].qs + 16)));
        const __m256i qq = _mm256_add_epi32(_mm256_madd_epi16(x0, x0), _mm256_madd_epi16(x1, x1));
        const float d = scale_of(r[b], bad);
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qq), _mm256_set1_ps(d * d), a);
      }
      acc[i] = a;
    }
    store_n(out + t, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(sum4(acc[0], acc[1], acc[2], acc[3]))), nr);
  }
}

/// The AVX2 target's table (call only where the CPU has AVX2, FMA and F16C).
inline constexpr q8_kernel_set kKernels{&score_rows, &l2_rows};

}  // namespace avx2
}  // namespace q8
}  // namespace simd
}  // namespace lagkv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---------------------------------------------------------------------------------------------
// AVX-512 F/BW/VL/DQ
// ---------------------------------------------------------------------------------------------
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
#pragma GCC diagnostic push
// GCC bug 105593: intrinsics built on _mm512_undefined_* trip -W(maybe-)uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace lagkv {
namespace simd {
namespace q8 {
namespace avx512 {

/// Values [16k, 16k+16) of a block as floats (exact).
inline __m512 q16(const block_q8_0& b, int k) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * k))));
}
/// [sum a0, sum a1, sum a2, sum a3]: fold each to 256 bits, then the AVX2 transposing hadds.
inline __m128 sum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m256 h0 = _mm256_add_ps(_mm512_castps512_ps256(a0), _mm512_extractf32x8_ps(a0, 1));
  const __m256 h1 = _mm256_add_ps(_mm512_castps512_ps256(a1), _mm512_extractf32x8_ps(a1, 1));
  const __m256 h2 = _mm256_add_ps(_mm512_castps512_ps256(a2), _mm512_extractf32x8_ps(a2, 1));
  const __m256 h3 = _mm256_add_ps(_mm512_castps512_ps256(a3), _mm512_extractf32x8_ps(a3, 1));
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h0, h1), _mm256_hadd_ps(h2, h3));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}
inline void store_n(float* out, __m128 v, index_t n) {
  if (n == 4)
    _mm_storeu_ps(out, v);
  else
    _mm_mask_storeu_ps(out, static_cast<__mmask8>((1u << n) - 1u), v);
}

inline constexpr index_t kRows = 16;

/// Blocks [b0, b0+K) of a batch of rows (2K trackers of min and of max, K <= 4: 16 of 32
/// registers), each row front to back; the row's partial sums continue those of earlier groups.
template <int K, bool kScore, bool kFold, bool kBias>
inline unsigned group_rows(const block_q8_0* const* rows, index_t n, index_t b0, const float* lo, const float* inv,
                           const float* bias, float* mn, float* mx, __m512* p1, __m512* p2) {
  const index_t c0 = b0 * kQ8BlockValues;
  __m512 tl[2 * K], th[2 * K];
  if (kFold)
    for (int k = 0; k < 2 * K; ++k) {
      tl[k] = _mm512_loadu_ps(mn + c0 + 16 * k);
      th[k] = _mm512_loadu_ps(mx + c0 + 16 * k);
    }
  const __m512 neg_half = _mm512_set1_ps(-0.5f);
  unsigned bad = 0;
  for (index_t i = 0; i < n; ++i) {
    const block_q8_0* r = rows[i] + b0;
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps();
    if (kScore && b0 > 0) {
      a1 = p1[i];
      a2 = p2[i];
    }
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      const __m512 d = _mm512_set1_ps(scale_of(r[k], bad));
      const __m512 v0 = _mm512_mul_ps(q16(r[k], 0), d);
      const __m512 v1 = _mm512_mul_ps(q16(r[k], 1), d);
      if (kFold) {
        tl[2 * k] = _mm512_min_ps(tl[2 * k], v0);
        th[2 * k] = _mm512_max_ps(th[2 * k], v0);
        tl[2 * k + 1] = _mm512_min_ps(tl[2 * k + 1], v1);
        th[2 * k + 1] = _mm512_max_ps(th[2 * k + 1], v1);
      }
      if (kScore) {
        const index_t c = c0 + 32 * k;
        const __m512 w0 = _mm512_loadu_ps(inv + c), w1 = _mm512_loadu_ps(inv + c + 16);
        const __m512 z0 = kBias ? _mm512_fmadd_ps(v0, w0, _mm512_loadu_ps(bias + c))
                                : _mm512_fmadd_ps(_mm512_sub_ps(v0, _mm512_loadu_ps(lo + c)), w0, neg_half);
        const __m512 z1 = kBias ? _mm512_fmadd_ps(v1, w1, _mm512_loadu_ps(bias + c + 16))
                                : _mm512_fmadd_ps(_mm512_sub_ps(v1, _mm512_loadu_ps(lo + c + 16)), w1, neg_half);
        a1 = _mm512_add_ps(a1, z0);
        b1 = _mm512_add_ps(b1, z1);
        a2 = _mm512_fmadd_ps(z0, z0, a2);
        b2 = _mm512_fmadd_ps(z1, z1, b2);
      }
    }
    if (kScore) {
      p1[i] = _mm512_add_ps(a1, b1);
      p2[i] = _mm512_add_ps(a2, b2);
    }
  }
  if (kFold)
    for (int k = 0; k < 2 * K; ++k) {
      _mm512_storeu_ps(mn + c0 + 16 * k, tl[k]);
      _mm512_storeu_ps(mx + c0 + 16 * k, th[k]);
    }
  return bad;
}

/// std (or -1) of each row of a batch from its partials: four rows per reduction.
inline void finish_rows(const __m512* p1, const __m512* p2, index_t n, index_t dim, float* out) {
  const float fd = static_cast<float>(dim);
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    const index_t i1 = t + (1 < nr ? 1 : nr - 1), i2 = t + (2 < nr ? 2 : nr - 1), i3 = t + (3 < nr ? 3 : nr - 1);
    const __m128 a = sum4(p1[t], p1[i1], p1[i2], p1[i3]);
    const __m128 q = sum4(p2[t], p2[i1], p2[i2], p2[i3]);
    const __m128 mean_part = _mm_mul_ps(_mm_mul_ps(a, a), _mm_set1_ps(1.0f / fd));
    const __m128 ss = _mm_sub_ps(q, mean_part);
    const __m128 ok = _mm_cmp_ps(mean_part, _mm_mul_ps(ss, _mm_set1_ps(2.0f)), _CMP_LE_OQ);
    const __m128 sd = _mm_sqrt_ps(_mm_mul_ps(ss, _mm_set1_ps(1.0f / (fd - 1.0f))));
    store_n(out + t, _mm_blendv_ps(_mm_set1_ps(-1.0f), sd, ok), nr);
  }
}

template <bool kScore, bool kFold, bool kBias>
inline unsigned batch(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                      const float* bias, float* out, float* mn, float* mx) {
  __m512 p1[kRows], p2[kRows];
  unsigned bad = 0;
  for (index_t b0 = 0; b0 < nb; b0 += 4) {
    switch (nb - b0) {
      case 1: bad |= group_rows<1, kScore, kFold, kBias>(rows, n, b0, lo, inv, bias, mn, mx, p1, p2); break;
      case 2: bad |= group_rows<2, kScore, kFold, kBias>(rows, n, b0, lo, inv, bias, mn, mx, p1, p2); break;
      case 3: bad |= group_rows<3, kScore, kFold, kBias>(rows, n, b0, lo, inv, bias, mn, mx, p1, p2); break;
      default: bad |= group_rows<4, kScore, kFold, kBias>(rows, n, b0, lo, inv, bias, mn, mx, p1, p2); break;
    }
  }
  if (kScore) finish_rows(p1, p2, n, nb * kQ8BlockValues, out);
  return bad;
}

inline bool score_rows(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                       const float* bias, float* out, float* mn, float* mx) {
  unsigned bad = 0;
  for (index_t t = 0; t < n; t += kRows) {
    const index_t m = n - t < kRows ? n - t : kRows;
    const block_q8_0* const* r = rows + t;
    if (out == nullptr)
      bad |= batch<false, true, false>(r, m, nb, lo, inv, bias, nullptr, mn, mx);
    else if (mn == nullptr)
      bad |= bias != nullptr ? batch<true, false, true>(r, m, nb, lo, inv, bias, out + t, mn, mx)
                             : batch<true, false, false>(r, m, nb, lo, inv, bias, out + t, mn, mx);
    else
      bad |= bias != nullptr ? batch<true, true, true>(r, m, nb, lo, inv, bias, out + t, mn, mx)
                             : batch<true, true, false>(r, m, nb, lo, inv, bias, out + t, mn, mx);
  }
  return bad != 0;
}

/// See avx2::l2_rows: exact int32 q^2 per block (vpmaddwd), scaled by d^2 in float.
inline void l2_rows(const block_q8_0* const* rows, index_t n, index_t nb, float* out) {
  unsigned bad = 0;  // non-finite results are caught by the driver
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    __m512 acc[4];
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      const block_q8_0* r = rows[t + (i < nr ? i : nr - 1)];
      __m512 a = _mm512_setzero_ps();
      for (index_t b = 0; b < nb; ++b) {
        const __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[b].qs)));
        const float d = scale_of(r[b], bad);
        a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(x, x)), _mm512_set1_ps(d * d), a);
      }
      acc[i] = a;
    }
    store_n(out + t, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(sum4(acc[0], acc[1], acc[2], acc[3]))), nr);
  }
}

/// The AVX-512 target's table (call only where the CPU has AVX-512 F/BW/VL/DQ, FMA and F16C).
inline constexpr q8_kernel_set kKernels{&score_rows, &l2_rows};

}  // namespace avx512
}  // namespace q8
}  // namespace simd
}  // namespace lagkv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

#endif  // x86 with GCC/Clang
