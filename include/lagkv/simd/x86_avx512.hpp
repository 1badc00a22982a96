#pragma once
/// \file simd/x86_avx512.hpp
/// \brief AVX-512 (F/BW/VL/DQ) row kernels, compiled in a target region so that a generic
/// x86-64 build carries them; dispatch.hpp runs them only where the CPU has them.
///
/// The kernels themselves are x86_kernels_inl.hpp, shared with the AVX2 target; this file supplies
/// the vocabulary they are written in. AVX-512 buys the kernels 32 registers (blocks of 8 rows
/// with 1/range and the bias held in registers), masked tail loads and mask compares. Scoring
/// runs on 256-bit vectors: on Zen 4, where 512-bit operations are double-pumped, the 256-bit
/// kernel was measured 1.3x faster in cache (vcvtph2ps zmm and the zmm reductions cost more than
/// their 256-bit halves); the min/max trackers use 512-bit integer vectors (measured faster).
///
/// Loads: fp32 as is, fp16 through vcvtph2ps (F16C semantics: exact, denormals kept, NaN
/// quieted — what dtype.hpp's to_float does), bf16 as 32-bit lanes split into even channels
/// (lane << 16) and odd channels (lane & 0xffff0000): one exact op per 8 floats, so channels
/// are visited in "even/odd" kernel order (see common.hpp). Tails use masked loads.

#include "lagkv/simd/common.hpp"
#include "lagkv/simd/x86_avx2.hpp"

#if !defined(LAGKV_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LAGKV_SIMD_HAVE_AVX512 1

#include <immintrin.h>

#include <cfloat>
#include <cmath>
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

inline __mmask8 mask8(index_t n) { return static_cast<__mmask8>((1u << n) - 1u); }
inline __mmask16 mask16(index_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline __mmask32 mask32(index_t n) { return static_cast<__mmask32>((std::uint64_t{1} << n) - 1u); }

/// Sums of eight vectors: lane i of the result is the total of a[i] (hadd tree, then one
/// cross-half add): 9 shuffles/adds for eight rows instead of eight 5-step reductions.
inline __m256 sum8(const __m256* a) {
  const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 lo = _mm256_hadd_ps(h01, h23), hi = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

/// Float vectors of the kernels (x86_kernels_inl.hpp): 8 lanes (the arithmetic is 256-bit, see
/// x86_kernels_inl.hpp, so it is AVX2's f32x8_ops), blocks of 8 rows, AVX-512 lane masks.
struct vt : avx2::f32x8_ops {
  using vm = __mmask8;
  static constexpr index_t kRows = 8;
  static vm first_n(index_t n) { return mask8(n); }
  static vf maskz(vm m, vf v) { return _mm256_maskz_mov_ps(m, v); }
  static vf keep_first(vf v, index_t n) { return _mm256_maskz_mov_ps(mask8(n), v); }
  static vm cmp_gt(vf a, vf b) { return _mm256_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static vm cmp_lt(vf a, vf b) { return _mm256_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static vm cmp_neq(vf a, vf b) { return _mm256_cmp_ps_mask(a, b, _CMP_NEQ_OQ); }
  static vm cmp_nle(vf a, vf b) { return _mm256_cmp_ps_mask(a, b, _CMP_NLE_UQ); }  // true for NaN
  static vm mand(vm a, vm b) { return static_cast<vm>(a & b); }
  static vm mor(vm a, vm b) { return static_cast<vm>(a | b); }
  static bool any(vm m) { return m != 0; }
  /// Std of a block's rows from their S1/S2 accumulators (see score_block); false when some row
  /// (the repeated padding rows too, which copy a real one) is ill-conditioned or NaN.
  static bool finish_rows(const vf* s1, const vf* s2, index_t nr, float inv_d, float inv_d1, float* out) {
    const __m256 a = sum8(s1), q = sum8(s2);
    const __m256 mean_part = _mm256_mul_ps(_mm256_mul_ps(a, a), _mm256_set1_ps(inv_d));
    const __m256 ss = _mm256_sub_ps(q, mean_part);
    if (_mm256_cmp_ps_mask(mean_part, _mm256_add_ps(ss, ss), _CMP_LE_OQ) != 0xff) return false;
    _mm256_mask_storeu_ps(out, mask8(nr), _mm256_sqrt_ps(_mm256_mul_ps(ss, _mm256_set1_ps(inv_d1))));
    return true;
  }
  static void finish_l2(const vf* acc, index_t nr, float* out) {
    _mm256_mask_storeu_ps(out, mask8(nr), _mm256_sub_ps(_mm256_setzero_ps(), _mm256_sqrt_ps(sum8(acc))));
  }
};

/// Integer vectors of the min/max trackers: 512-bit, four slices (12 trackers) in registers.
struct it {
  using vi = __m512i;
  static constexpr index_t kBytes = 64;
  static constexpr int kSlices = 4;
  static vi load(const void* p) { return _mm512_loadu_si512(p); }
  static void store(void* p, vi v) { _mm512_storeu_si512(p, v); }
};

inline void prefetch_l2(const char* p) { _mm_prefetch(p, _MM_HINT_T1); }

/// One load group of each storage type: kChannels channels read as kVecs float vectors.
template <class T>
struct group;
template <>
struct group<float> {
  static constexpr index_t kChannels = 8, kVecs = 1;
  static void load(const float* p, __m256* v) { v[0] = _mm256_loadu_ps(p); }
  static void load_partial(const float* p, index_t rem, __m256* v) { v[0] = _mm256_maskz_loadu_ps(mask8(rem), p); }
  static index_t lanes(index_t rem, index_t /*k*/) { return rem; }
};
template <>
struct group<f16> {
  static constexpr index_t kChannels = 8, kVecs = 1;
  static void load(const f16* p, __m256* v) {
    v[0] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void load_partial(const f16* p, index_t rem, __m256* v) {
    v[0] = _mm256_cvtph_ps(_mm_maskz_loadu_epi16(mask8(rem), p));
  }
  static index_t lanes(index_t rem, index_t /*k*/) { return rem; }
};
template <>
struct group<bf16> {
  static constexpr index_t kChannels = 16, kVecs = 2;
  static void split(__m256i x, __m256* v) {
    v[0] = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    v[1] = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
  }
  static void load(const bf16* p, __m256* v) { split(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), v); }
  static void load_partial(const bf16* p, index_t rem, __m256* v) { split(_mm256_maskz_loadu_epi16(mask16(rem), p), v); }
  static index_t lanes(index_t rem, index_t k) { return k == 0 ? (rem + 1) / 2 : rem / 2; }  // even, odd channels
};

// Integer min/max of raw patterns, 16-bit and 32-bit lanes (see common.hpp).
struct mm16 {
  static __m512i smax(__m512i a, __m512i b) { return _mm512_max_epi16(a, b); }
  static __m512i smin(__m512i a, __m512i b) { return _mm512_min_epi16(a, b); }
  static __m512i umax(__m512i a, __m512i b) { return _mm512_max_epu16(a, b); }
  static __m512i load_partial(const void* p, index_t rem) { return _mm512_maskz_loadu_epi16(mask32(rem), p); }
  // Resolve (see common.hpp): max = smax >= 0 ? smax : smin; min = umax negative ? umax : smin.
  static __m512i resolve_max(__m512i smax, __m512i smin) {
    return _mm512_mask_blend_epi16(_mm512_cmpge_epi16_mask(smax, _mm512_setzero_si512()), smin, smax);
  }
  static __m512i resolve_min(__m512i umax, __m512i smin) {
    return _mm512_mask_blend_epi16(_mm512_cmplt_epi16_mask(umax, _mm512_setzero_si512()), smin, umax);
  }
  /// Some lane below `valid` saw a NaN pattern.
  static bool nan_any(__m512i smax, __m512i umax, unsigned inf, unsigned sign, index_t valid) {
    const __mmask32 nan = _mm512_cmpgt_epi16_mask(smax, _mm512_set1_epi16(static_cast<short>(inf))) |
                          _mm512_cmpgt_epu16_mask(umax, _mm512_set1_epi16(static_cast<short>(sign | inf)));
    return (nan & (valid >= 32 ? ~__mmask32{0} : (valid <= 0 ? __mmask32{0} : mask32(valid)))) != 0;
  }
};
struct mm32 {
  static __m512i smax(__m512i a, __m512i b) { return _mm512_max_epi32(a, b); }
  static __m512i smin(__m512i a, __m512i b) { return _mm512_min_epi32(a, b); }
  static __m512i umax(__m512i a, __m512i b) { return _mm512_max_epu32(a, b); }
  static __m512i load_partial(const void* p, index_t rem) { return _mm512_maskz_loadu_epi32(mask16(rem), p); }
  static __m512i resolve_max(__m512i smax, __m512i smin) {
    return _mm512_mask_blend_epi32(_mm512_cmpge_epi32_mask(smax, _mm512_setzero_si512()), smin, smax);
  }
  static __m512i resolve_min(__m512i umax, __m512i smin) {
    return _mm512_mask_blend_epi32(_mm512_cmplt_epi32_mask(umax, _mm512_setzero_si512()), smin, umax);
  }
  static bool nan_any(__m512i smax, __m512i umax, unsigned inf, unsigned sign, index_t valid) {
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(smax, _mm512_set1_epi32(static_cast<int>(inf))) |
                          _mm512_cmpgt_epu32_mask(umax, _mm512_set1_epi32(static_cast<int>(sign | inf)));
    return (nan & (valid >= 16 ? __mmask16{0xffff} : (valid <= 0 ? __mmask16{0} : mask16(valid)))) != 0;
  }
};

// The kernels: fused_rows, ref_stats, l2_rows, load_to_f32 (and their helpers).
#define LAGKV_SIMD_X86_KERNELS_INL 1
#include "lagkv/simd/x86_kernels_inl.hpp"
#undef LAGKV_SIMD_X86_KERNELS_INL

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
    return {&detail::even_odd_kernel_dim<8>, &detail::even_odd_kernel_channel<8>, &fused_rows<T>, &ref_stats<T>,
            &l2_rows<T>, &load_to_f32<T>};
  else
    return {&detail::natural_kernel_dim<8>, &detail::natural_kernel_channel, &fused_rows<T>, &ref_stats<T>,
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
