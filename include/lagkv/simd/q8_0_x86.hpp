#pragma once
/// \file simd/q8_0_x86.hpp
/// \brief AVX2 (+FMA, F16C) and AVX-512 (F/BW/VL/DQ) q8_0 row kernels, each in its own target
/// region so a generic x86-64 build carries both; simd/q8_0_dispatch.hpp runs the one matching
/// lagkv::simd::active_target() (so LAGKV_SIMD and simd::force() pick these too).
///
/// Dequantisation: 16 (AVX-512) or 8 (AVX2) int8 values are sign-extended to int32 (vpmovsxbd
/// straight from memory) and converted to float (exact), then multiplied by the block's scale:
/// exact. The scale is widened by the scalar F16C conversion (vcvtph2ps on one lane: exact, like
/// to_float) and broadcast; Inf/NaN scales are flagged branch-free by an integer carry trick
/// (see scale_bad). The same registers feed the min/max trackers and the standard deviation,
/// in the one-pass form of the fp16/bf16 kernels: S1 = sum z and S2 = sum z^2 of z = y - 0.5,
/// accepted only where S1^2/D <= 2 (S2 - S1^2/D), else -1 (the driver redoes the row in two
/// passes); z = fma(x, inv, bias) when |bias| <= 2, else fma(x - lo, inv, -0.5). Rows are read
/// front to back (interleaving rows defeats the hardware prefetcher); per-row partial sums are
/// parked in a small buffer and four rows share one transposing reduction. head_dim is a
/// multiple of 32 (whole q8_0 blocks): no tails.
///
/// Measured on Zen 4 (bench/RESULTS.md "q8_0"): per 16 values the LagKV kernel issues 8 vector
/// ops (sign-extend, convert, scale, min, max, normalise, S1, S2), four of them on the FP add
/// pipes (convert, min, max, add); it is compute-bound, far below the DRAM stream on one core.
/// Kept: the branch-free F16C scale (the integer widening of scale_of had two branches and ~12
/// scalar ops per block: L2-norm 2x faster in cache, LagKV ~10 %), the vectorised ref_stats.
/// Tried and not kept (no gain measured): the 1.5*2^23 magic-number conversion folded into one
/// FMA with the scale (moves the convert off the add pipes); gathering a batch's scales and
/// converting them 16 at a time (store-forwarding stall); inv and bias held in registers over
/// blocks of rows with the channel loop outside; two rows interleaved; 4 accumulator pairs
/// per row; S1 summed on the FMA pipes.

#include "lagkv/q8_0.hpp"
#include "lagkv/simd/q8_0_scalar.hpp"

#if !defined(LAGKV_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LAGKV_Q8_0_HAVE_X86 1

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace lagkv {
namespace simd {
namespace q8 {
/// Accumulates a branch-free Inf/NaN flag: (bits & 0x7c00) + 0x400 carries into bit 15 exactly
/// when all five exponent bits are set. Test `acc & 0x8000` once per batch.
inline unsigned scale_bad(unsigned bits) { return (bits & 0x7c00u) + 0x400u; }
inline constexpr unsigned kScaleBadBit = 0x8000u;
}  // namespace q8
}  // namespace simd
}  // namespace lagkv

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

/// A block's scale as a broadcast float (F16C: exact, like to_float); flags Inf/NaN into `bad`.
inline __m256 scale8(const block_q8_0& b, unsigned& bad) {
  const unsigned bits = b.d.bits;
  bad |= scale_bad(bits);
  return _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits))));
}

/// One q8_0 block over a batch of rows: its 8 trackers (min and max of 32 channels) and the row
/// partials fill AVX2's 16 registers, so blocks go one at a time and the batch stays in L1.
template <bool kScore, bool kFold, bool kBias>
inline unsigned block_rows(const block_q8_0* const* rows, index_t n, index_t b, const float* lo, const float* inv,
                           const float* bias, float* mn, float* mx, __m256* p1, __m256* p2) {
  unsigned bad = 0;
  const index_t c = b * kQ8BlockValues;
  __m256 tl[4], th[4];
  if (kFold)
    for (int k = 0; k < 4; ++k) {
      tl[k] = _mm256_loadu_ps(mn + c + 8 * k);
      th[k] = _mm256_loadu_ps(mx + c + 8 * k);
    }
  const __m256 neg_half = _mm256_set1_ps(-0.5f);
  for (index_t i = 0; i < n; ++i) {
    const block_q8_0& blk = rows[i][b];
    const __m256 d = scale8(blk, bad);
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
  return bad & kScaleBadBit;
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
/// A non-finite scale gives a non-finite result, which the driver recomputes with the oracle.
inline void l2_rows(const block_q8_0* const* rows, index_t n, index_t nb, float* out) {
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
        const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(r[b].d.bits));  // exact; Inf/NaN propagate
        a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(qq), _mm256_broadcastss_ps(_mm_mul_ss(d, d)), a);
      }
      acc[i] = a;
    }
    store_n(out + t, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(sum4(acc[0], acc[1], acc[2], acc[3]))), nr);
  }
}

/// See q8_kernel_set::ref_stats: 8 channels per step (d is a multiple of 32).
inline bool ref_stats(const float* mn, const float* mx, index_t d, float* lo, float* inv, float* bias) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
  const __m256 two = _mm256_set1_ps(2.0f), abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 far = zero;
  for (index_t c = 0; c < d; c += 8) {
    const __m256 l = _mm256_loadu_ps(mn + c), range = _mm256_sub_ps(_mm256_loadu_ps(mx + c), l);
    const __m256 pos = _mm256_cmp_ps(range, zero, _CMP_GT_OQ);
    const __m256 r = _mm256_and_ps(pos, _mm256_div_ps(one, _mm256_blendv_ps(one, range, pos)));
    _mm256_storeu_ps(lo + c, l);
    _mm256_storeu_ps(inv + c, r);
    _mm256_storeu_ps(bias + c, _mm256_fnmsub_ps(l, r, half));  // -lo*r - 0.5
    far = _mm256_or_ps(far, _mm256_cmp_ps(_mm256_and_ps(_mm256_fmadd_ps(l, r, half), abs_mask), two, _CMP_NLE_UQ));
  }
  return _mm256_movemask_ps(far) == 0;
}

/// The AVX2 target's table (call only where the CPU has AVX2, FMA and F16C).
inline constexpr q8_kernel_set kKernels{&score_rows, &l2_rows, &ref_stats};

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

/// A block's scale as a broadcast float (F16C: exact, like to_float); flags Inf/NaN into `bad`.
inline __m512 scale16(const block_q8_0& b, unsigned& bad) {
  const unsigned bits = b.d.bits;
  bad |= scale_bad(bits);
  return _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits))));
}

/// Blocks [b0, b0+K) of a batch of rows (2K trackers of min and of max, K <= 4: 16 of 32
/// registers), each row front to back; the row's partial sums continue those of earlier groups.
template <int K, bool kScore, bool kFold, bool kBias>
inline unsigned group_rows(const block_q8_0* const* rows, index_t n, index_t b0, const float* lo, const float* inv,
                           const float* bias, float* mn, float* mx, __m512* p1, __m512* p2) {
  unsigned bad = 0;
  const index_t c0 = b0 * kQ8BlockValues;
  __m512 tl[2 * K], th[2 * K];
  if (kFold)
    for (int k = 0; k < 2 * K; ++k) {
      tl[k] = _mm512_loadu_ps(mn + c0 + 16 * k);
      th[k] = _mm512_loadu_ps(mx + c0 + 16 * k);
    }
  const __m512 neg_half = _mm512_set1_ps(-0.5f);
  for (index_t i = 0; i < n; ++i) {
    const block_q8_0* r = rows[i] + b0;
    __m512 a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps(), b2 = _mm512_setzero_ps();
    if (kScore && b0 > 0) {
      a1 = p1[i];
      a2 = p2[i];
    }
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      const __m512 d = scale16(r[k], bad);
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
  return bad & kScaleBadBit;
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
/// A non-finite scale gives a non-finite result, which the driver recomputes with the oracle.
inline void l2_rows(const block_q8_0* const* rows, index_t n, index_t nb, float* out) {
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    __m512 acc[4];
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      const block_q8_0* r = rows[t + (i < nr ? i : nr - 1)];
      __m512 a = _mm512_setzero_ps();
      for (index_t b = 0; b < nb; ++b) {
        const __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r[b].qs)));
        const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(r[b].d.bits));  // exact; Inf/NaN propagate
        a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_madd_epi16(x, x)), _mm512_broadcastss_ps(_mm_mul_ss(d, d)), a);
      }
      acc[i] = a;
    }
    store_n(out + t, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(sum4(acc[0], acc[1], acc[2], acc[3]))), nr);
  }
}

/// See q8_kernel_set::ref_stats: 16 channels per step (d is a multiple of 32).
inline bool ref_stats(const float* mn, const float* mx, index_t d, float* lo, float* inv, float* bias) {
  const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
  const __m512 two = _mm512_set1_ps(2.0f);
  __mmask16 far = 0;
  for (index_t c = 0; c < d; c += 16) {
    const __m512 l = _mm512_loadu_ps(mn + c), range = _mm512_sub_ps(_mm512_loadu_ps(mx + c), l);
    const __m512 r = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(range, zero, _CMP_GT_OQ), one, range);
    _mm512_storeu_ps(lo + c, l);
    _mm512_storeu_ps(inv + c, r);
    _mm512_storeu_ps(bias + c, _mm512_fnmsub_ps(l, r, half));  // -lo*r - 0.5
    far |= _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_fmadd_ps(l, r, half)), two, _CMP_NLE_UQ);
  }
  return far == 0;
}

/// The AVX-512 target's table (call only where the CPU has AVX-512 F/BW/VL/DQ, FMA and F16C).
inline constexpr q8_kernel_set kKernels{&score_rows, &l2_rows, &ref_stats};

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
