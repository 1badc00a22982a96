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
/// multiple of 32 (whole q8_0 blocks): no tails. The kernels are written once, in
/// simd/q8_0_x86_kernels_inl.hpp; each target region below supplies the vocabulary (vector type,
/// lanes, blocks per group, loads, conversions, reductions) and includes it.
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
#include "lagkv/simd/x86_avx2.hpp"

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

/// The vocabulary of q8_0_x86_kernels_inl.hpp: 8 lanes (4 vectors per q8_0 block); the
/// arithmetic is the fp32/fp16/bf16 kernels' (simd/x86_avx2.hpp).
struct vt : lagkv::simd::avx2::f32x8_ops {
  using vm = __m256;  // all-ones lanes
  /// Rows per batch: the per-row partial sums of a batch fit a small stack buffer.
  static constexpr index_t kRows = 16;
  /// One q8_0 block at a time: its 8 trackers (min and max of 32 channels) and the row partials
  /// fill AVX2's 16 registers, so the batch stays in L1.
  static constexpr int kGroup = 1;
  static vf vmin(vf a, vf b) { return _mm256_min_ps(a, b); }
  static vf vmax(vf a, vf b) { return _mm256_max_ps(a, b); }
  /// Values [8j, 8j+8) of a block as floats (exact).
  static vf values(const block_q8_0& b, int j) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b.qs + 8 * j))));
  }
  /// A block's scale as a broadcast float (F16C: exact, like to_float); flags Inf/NaN into `bad`.
  static vf scale(const block_q8_0& b, unsigned& bad) {
    const unsigned bits = b.d.bits;
    bad |= scale_bad(bits);
    return _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits))));
  }
  /// Per lane, an exact int32 sum of q^2 over 4 of the block's values, as float.
  static vf q_squares(const block_q8_0& b) {
    const __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs)));
    const __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16)));
    return _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_madd_epi16(x0, x0), _mm256_madd_epi16(x1, x1)));
  }
  /// d^2 broadcast (exact; Inf/NaN propagate).
  static vf d_squared(const block_q8_0& b) {
    const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(b.d.bits));
    return _mm256_broadcastss_ps(_mm_mul_ss(d, d));
  }
  static vf recip_or_zero(vf range) {
    const vm pos = _mm256_cmp_ps(range, _mm256_setzero_ps(), _CMP_GT_OQ);
    return _mm256_and_ps(pos, _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_blendv_ps(_mm256_set1_ps(1.0f), range, pos)));
  }
  static vm beyond_two(vf v) {  // |v| > 2, or NaN
    const vf abs = _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)));
    return _mm256_cmp_ps(abs, _mm256_set1_ps(2.0f), _CMP_NLE_UQ);
  }
  static vm no_lanes() { return _mm256_setzero_ps(); }
  static vm mor(vm a, vm b) { return _mm256_or_ps(a, b); }
  static bool any(vm m) { return _mm256_movemask_ps(m) != 0; }
  /// [sum a0, sum a1, sum a2, sum a3].
  static __m128 sum4(vf a0, vf a1, vf a2, vf a3) {
    const vf a[4] = {a0, a1, a2, a3};
    return lagkv::simd::avx2::sum4(a);
  }
  static void store_n(float* out, __m128 v, index_t n) { lagkv::simd::avx2::store_n(out, v, n); }
};

// The kernels: score_rows, l2_rows, ref_stats (and their helpers).
#define LAGKV_SIMD_Q8_0_X86_KERNELS_INL 1
#include "lagkv/simd/q8_0_x86_kernels_inl.hpp"
#undef LAGKV_SIMD_Q8_0_X86_KERNELS_INL

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

/// The vocabulary of q8_0_x86_kernels_inl.hpp: 16 lanes (2 vectors per q8_0 block).
struct vt {
  using vf = __m512;
  using vm = __mmask16;
  static constexpr index_t kLanes = 16;
  static constexpr index_t kRows = 16;
  /// Up to 4 blocks at a time: 2 * 4 trackers of min and of max use 16 of the 32 registers.
  static constexpr int kGroup = 4;
  static vf zero() { return _mm512_setzero_ps(); }
  static vf set1(float x) { return _mm512_set1_ps(x); }
  static vf load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, vf v) { _mm512_storeu_ps(p, v); }
  static vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
  static vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
  static vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
  static vf vmin(vf a, vf b) { return _mm512_min_ps(a, b); }
  static vf vmax(vf a, vf b) { return _mm512_max_ps(a, b); }
  static vf fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
  static vf fnmsub(vf a, vf b, vf c) { return _mm512_fnmsub_ps(a, b, c); }  // -(a*b) - c
  /// Values [16j, 16j+16) of a block as floats (exact).
  static vf values(const block_q8_0& b, int j) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b.qs + 16 * j))));
  }
  /// A block's scale as a broadcast float (F16C: exact, like to_float); flags Inf/NaN into `bad`.
  static vf scale(const block_q8_0& b, unsigned& bad) {
    const unsigned bits = b.d.bits;
    bad |= scale_bad(bits);
    return _mm512_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(static_cast<int>(bits))));
  }
  /// Per lane, an exact int32 sum of q^2 over 2 of the block's values, as float.
  static vf q_squares(const block_q8_0& b) {
    const __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)));
    return _mm512_cvtepi32_ps(_mm512_madd_epi16(x, x));
  }
  /// d^2 broadcast (exact; Inf/NaN propagate).
  static vf d_squared(const block_q8_0& b) {
    const __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128(b.d.bits));
    return _mm512_broadcastss_ps(_mm_mul_ss(d, d));
  }
  static vf recip_or_zero(vf range) {
    return _mm512_maskz_div_ps(_mm512_cmp_ps_mask(range, _mm512_setzero_ps(), _CMP_GT_OQ), _mm512_set1_ps(1.0f), range);
  }
  static vm beyond_two(vf v) {  // |v| > 2, or NaN
    return _mm512_cmp_ps_mask(_mm512_abs_ps(v), _mm512_set1_ps(2.0f), _CMP_NLE_UQ);
  }
  static vm no_lanes() { return 0; }
  static vm mor(vm a, vm b) { return static_cast<vm>(a | b); }
  static bool any(vm m) { return m != 0; }
  /// [sum a0, sum a1, sum a2, sum a3]: fold each to 256 bits, then the AVX2 transposing hadds.
  static __m128 sum4(vf a0, vf a1, vf a2, vf a3) {
    const __m256 h0 = _mm256_add_ps(_mm512_castps512_ps256(a0), _mm512_extractf32x8_ps(a0, 1));
    const __m256 h1 = _mm256_add_ps(_mm512_castps512_ps256(a1), _mm512_extractf32x8_ps(a1, 1));
    const __m256 h2 = _mm256_add_ps(_mm512_castps512_ps256(a2), _mm512_extractf32x8_ps(a2, 1));
    const __m256 h3 = _mm256_add_ps(_mm512_castps512_ps256(a3), _mm512_extractf32x8_ps(a3, 1));
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h0, h1), _mm256_hadd_ps(h2, h3));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  }
  static void store_n(float* out, __m128 v, index_t n) {
    if (n == 4)
      _mm_storeu_ps(out, v);
    else
      _mm_mask_storeu_ps(out, static_cast<__mmask8>((1u << n) - 1u), v);
  }
};

// The kernels: score_rows, l2_rows, ref_stats (and their helpers).
#define LAGKV_SIMD_Q8_0_X86_KERNELS_INL 1
#include "lagkv/simd/q8_0_x86_kernels_inl.hpp"
#undef LAGKV_SIMD_Q8_0_X86_KERNELS_INL

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
