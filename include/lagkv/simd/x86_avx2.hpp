#pragma once
/// \file simd/x86_avx2.hpp
/// \brief AVX2 + FMA + F16C row kernels in a target region (a generic x86-64 build carries
/// them; dispatch.hpp runs them only where the CPU has all three).
///
/// The kernels are x86_kernels_inl.hpp, shared with the AVX-512 target; this file supplies the
/// vocabulary at 8 floats a vector. With 16 registers a scoring block is 4 rows (4 x S1, 4 x S2,
/// the group's 1/range and bias, the loaded row). fp16 via vcvtph2ps, bf16 as even/odd halves of
/// 32-bit lanes. AVX2 has no 16-bit masked load, so a 16-bit tail is copied into a zeroed
/// 32-byte buffer first (fp32 tails use vmaskmov).

#include "lagkv/simd/common.hpp"

#if !defined(LAGKV_NO_SIMD) && (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LAGKV_SIMD_HAVE_AVX2 1

#include <immintrin.h>

#include <cfloat>
#include <cmath>
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

/// [sum a0, sum a1, sum a2, sum a3]: three hadds shared by four rows, then one 256->128 fold.
inline __m128 sum4(const __m256* a) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
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

/// 8-float arithmetic, the part of the kernel vocabularies that does not depend on the mask
/// type: AVX2's vt below, AVX-512's vt (256-bit arithmetic, x86_avx512.hpp) and AVX2's q8_0 vt
/// (q8_0_x86.hpp) derive from it. Defined in this AVX2+FMA region; the AVX-512 region is a
/// superset, so the compilers inline these there too.
struct f32x8_ops {
  using vf = __m256;
  static constexpr index_t kLanes = 8;
  static vf zero() { return _mm256_setzero_ps(); }
  static vf set1(float x) { return _mm256_set1_ps(x); }
  static vf load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vf v) { _mm256_storeu_ps(p, v); }
  static vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
  static vf sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
  static vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
  static vf div(vf a, vf b) { return _mm256_div_ps(a, b); }
  static vf fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
  static vf fmsub(vf a, vf b, vf c) { return _mm256_fmsub_ps(a, b, c); }
  static vf fnmsub(vf a, vf b, vf c) { return _mm256_fnmsub_ps(a, b, c); }  // -(a*b) - c
  static vf abs(vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static float hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
};

/// Float vectors of the kernels (x86_kernels_inl.hpp): 8 lanes, blocks of 4 rows; masks are
/// all-ones lanes.
struct vt : f32x8_ops {
  using vm = __m256;
  static constexpr index_t kRows = 4;
  static vm first_n(index_t n) { return _mm256_castsi256_ps(lane_mask(n)); }
  static vf maskz(vm m, vf v) { return _mm256_and_ps(m, v); }
  static vf keep_first(vf v, index_t n) { return _mm256_and_ps(first_n(n), v); }
  static vm cmp_gt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static vm cmp_lt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static vm cmp_neq(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_OQ); }
  static vm cmp_nle(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_NLE_UQ); }  // true for NaN
  static vm mand(vm a, vm b) { return _mm256_and_ps(a, b); }
  static vm mor(vm a, vm b) { return _mm256_or_ps(a, b); }
  static bool any(vm m) { return _mm256_movemask_ps(m) != 0; }
  /// See avx512::vt::finish_rows.
  static bool finish_rows(const vf* s1, const vf* s2, index_t nr, float inv_d, float inv_d1, float* out) {
    const __m128 a = sum4(s1), q = sum4(s2);
    const __m128 mean_part = _mm_mul_ps(_mm_mul_ps(a, a), _mm_set1_ps(inv_d));
    const __m128 ss = _mm_sub_ps(q, mean_part);
    if (_mm_movemask_ps(_mm_cmp_ps(mean_part, _mm_add_ps(ss, ss), _CMP_LE_OQ)) != 0xf) return false;
    store_n(out, _mm_sqrt_ps(_mm_mul_ps(ss, _mm_set1_ps(inv_d1))), nr);
    return true;
  }
  static void finish_l2(const vf* acc, index_t nr, float* out) {
    store_n(out, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(sum4(acc))), nr);
  }
};

/// Integer vectors of the min/max trackers: two 32-byte slices (8 trackers) in registers.
struct it {
  using vi = __m256i;
  static constexpr index_t kBytes = 32;
  static constexpr int kSlices = 4;
  static vi load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static void store(void* p, vi v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
};

inline void prefetch_l2(const char* p) { _mm_prefetch(p, _MM_HINT_T1); }

template <class T>
struct group;
template <>
struct group<float> {
  static constexpr index_t kChannels = 8, kVecs = 1;
  static void load(const float* p, __m256* v) { v[0] = _mm256_loadu_ps(p); }
  static void load_partial(const float* p, index_t rem, __m256* v) { v[0] = _mm256_maskload_ps(p, lane_mask(rem)); }
  static index_t lanes(index_t rem, index_t /*k*/) { return rem; }
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
  static void load_partial(const bf16* p, index_t rem, __m256* v) {
    alignas(32) std::uint16_t buf[16] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * 2);
    split(_mm256_load_si256(reinterpret_cast<const __m256i*>(buf)), v);
  }
  static index_t lanes(index_t rem, index_t k) { return k == 0 ? (rem + 1) / 2 : rem / 2; }  // even, odd channels
};

struct mm16 {
  static __m256i smax(__m256i a, __m256i b) { return _mm256_max_epi16(a, b); }
  static __m256i smin(__m256i a, __m256i b) { return _mm256_min_epi16(a, b); }
  static __m256i umax(__m256i a, __m256i b) { return _mm256_max_epu16(a, b); }
  static __m256i load_partial(const void* p, index_t rem) {
    alignas(32) std::uint16_t buf[16] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * 2);
    return _mm256_load_si256(reinterpret_cast<const __m256i*>(buf));
  }
  static __m256i resolve_max(__m256i smax, __m256i smin) {
    return _mm256_blendv_epi8(smax, smin, _mm256_cmpgt_epi16(_mm256_setzero_si256(), smax));
  }
  static __m256i resolve_min(__m256i umax, __m256i smin) {
    return _mm256_blendv_epi8(smin, umax, _mm256_cmpgt_epi16(_mm256_setzero_si256(), umax));
  }
  /// Some lane below `valid` saw a NaN pattern.
  static bool nan_any(__m256i smax, __m256i umax, unsigned inf, unsigned sign, index_t valid) {
    const __m256i above = _mm256_set1_epi16(static_cast<short>((sign | inf) + 1));  // unsigned umax >= above
    const __m256i nan = _mm256_or_si256(_mm256_cmpgt_epi16(smax, _mm256_set1_epi16(static_cast<short>(inf))),
                                        _mm256_cmpeq_epi16(_mm256_max_epu16(umax, above), umax));
    const index_t bytes = valid * 2;
    const unsigned vmask = bytes >= 32 ? 0xffffffffu : (bytes <= 0 ? 0u : (1u << bytes) - 1u);
    return (static_cast<unsigned>(_mm256_movemask_epi8(nan)) & vmask) != 0;
  }
};
struct mm32 {
  static __m256i smax(__m256i a, __m256i b) { return _mm256_max_epi32(a, b); }
  static __m256i smin(__m256i a, __m256i b) { return _mm256_min_epi32(a, b); }
  static __m256i umax(__m256i a, __m256i b) { return _mm256_max_epu32(a, b); }
  static __m256i load_partial(const void* p, index_t rem) {
    return _mm256_maskload_epi32(static_cast<const int*>(p), lane_mask(rem));
  }
  static __m256i resolve_max(__m256i smax, __m256i smin) {
    return _mm256_blendv_epi8(smax, smin, _mm256_cmpgt_epi32(_mm256_setzero_si256(), smax));
  }
  static __m256i resolve_min(__m256i umax, __m256i smin) {
    return _mm256_blendv_epi8(smin, umax, _mm256_cmpgt_epi32(_mm256_setzero_si256(), umax));
  }
  static bool nan_any(__m256i smax, __m256i umax, unsigned inf, unsigned sign, index_t valid) {
    const __m256i above = _mm256_set1_epi32(static_cast<int>((sign | inf) + 1));
    const __m256i nan = _mm256_or_si256(_mm256_cmpgt_epi32(smax, _mm256_set1_epi32(static_cast<int>(inf))),
                                        _mm256_cmpeq_epi32(_mm256_max_epu32(umax, above), umax));
    const index_t bytes = valid * 4;
    const unsigned vmask = bytes >= 32 ? 0xffffffffu : (bytes <= 0 ? 0u : (1u << bytes) - 1u);
    return (static_cast<unsigned>(_mm256_movemask_epi8(nan)) & vmask) != 0;
  }
};

// The kernels: fused_rows, ref_stats, l2_rows, load_to_f32 (and their helpers).
#define LAGKV_SIMD_X86_KERNELS_INL 1
#include "lagkv/simd/x86_kernels_inl.hpp"
#undef LAGKV_SIMD_X86_KERNELS_INL

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
