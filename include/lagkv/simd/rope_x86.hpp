#pragma once
/// \file simd/rope_x86.hpp
/// \brief AVX2 and AVX-512 RoPE row kernels for rows whose channels are adjacent, and the CPU check.
///
/// The kernels sit in target regions (`#pragma GCC target` / `#pragma clang attribute`), so a
/// generic x86-64 build carries them and rope.hpp picks one at run time. Each kernel matches
/// the scalar oracle in simd/rope_scalar.hpp bit for bit on every non-NaN result (a NaN stays a
/// NaN, but which operand's payload survives follows each instruction's operand order):
///  - the same operations per element: one rounded product and one fma (see rope_scalar.hpp);
///  - the same conversions: F16C is exact on widening and rounds to nearest even on narrowing,
///    as lagkv::to_f16 does; bf16 narrowing is the reference's integer rounding, vectorised
///    (AVX512-BF16's VCVTNEPS2BF16 flushes denormals, so it is not used);
///  - tails finish with the scalar kernel itself.
/// Defines LAGKV_DETAIL_ROPE_X86 to 1 where the kernels exist (x86-64 with GCC or clang), else 0.

#if (defined(__x86_64__) || defined(__amd64__)) && (defined(__GNUC__) || defined(__clang__))
#define LAGKV_DETAIL_ROPE_X86 1
#else
#define LAGKV_DETAIL_ROPE_X86 0
#endif

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/simd/rope_scalar.hpp"

#if LAGKV_DETAIL_ROPE_X86
// Every system header comes before the target regions, so nothing of the standard library is
// compiled for AVX2 by accident.
#include <cpuid.h>
#include <immintrin.h>

namespace lagkv {
namespace detail {

/// AVX2 + FMA + F16C, checked once (the OS's YMM state is part of __builtin_cpu_supports).
inline bool rope_cpu_has_avx2() {
  static const bool ok = [] {
    __builtin_cpu_init();
    unsigned a = 0, b = 0, c = 0, d = 0;
    // clang 14's __builtin_cpu_supports does not know "f16c": read CPUID.1:ECX[29] directly.
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & (1u << 29)) != 0;
    return f16c && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

/// AVX-512F on top of the AVX2 set (the kernels use nothing beyond F).
inline bool rope_cpu_has_avx512() {
  static const bool ok = rope_cpu_has_avx2() && __builtin_cpu_supports("avx512f");
  return ok;
}

}  // namespace detail
}  // namespace lagkv

// ---- AVX2 + FMA + F16C --------------------------------------------------------------------
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

namespace lagkv {
namespace detail {
namespace rope_avx2 {

inline __m256 load(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load(const f16* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load(const bf16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline void store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store(f16* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
/// lagkv::to_bf16 on 8 lanes: add 0x7fff plus the kept lsb, keep the top half; NaN -> quiet.
inline void store(bf16* p, __m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256i is_nan =
      _mm256_cmpgt_epi32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800000));
  const __m256i bits = _mm256_blendv_epi8(rounded, quiet, is_nan);
  // packus works per 128-bit lane; qwords 0 and 2 hold lanes 0-3 and 4-7 (all values fit 16 bits).
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(bits, bits), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

/// NeoX pairs (lo[i], hi[i]) for i < n.
template <class T>
void neox(T* lo, T* hi, const float* cos_i, const float* sin_i, index_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  index_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x0 = load(lo + i);
    const __m256 x1 = load(hi + i);
    const __m256 c = _mm256_loadu_ps(cos_i + i);
    const __m256 s = _mm256_loadu_ps(sin_i + i);
    store(lo + i, _mm256_fmadd_ps(x0, c, _mm256_mul_ps(x1, _mm256_xor_ps(s, sign))));
    store(hi + i, _mm256_fmadd_ps(x1, c, _mm256_mul_ps(x0, s)));
  }
  rope_pairs_neox_scalar(lo + i, hi + i, 1, cos_i + i, sin_i + i, n - i);
}

/// Interleaved pairs over `2*half` channels. cc[2i] = cc[2i+1] = cos_i; ss[2i] = -sin_i,
/// ss[2i+1] = +sin_i, so one mul of the pair-swapped row and one fma give both outputs.
template <class T>
void interleaved(T* row, const float* cc, const float* ss, const float* cos_i, const float* sin_i, index_t half) {
  const index_t channels = 2 * half;
  index_t j = 0;
  for (; j + 8 <= channels; j += 8) {
    const __m256 x = load(row + j);
    const __m256 swapped = _mm256_permute_ps(x, 0xB1);  // (x1, x0, x3, x2, ...)
    store(row + j, _mm256_fmadd_ps(x, _mm256_loadu_ps(cc + j), _mm256_mul_ps(swapped, _mm256_loadu_ps(ss + j))));
  }
  rope_pairs_interleaved_scalar(row + j, 1, cos_i + j / 2, sin_i + j / 2, half - j / 2);
}

}  // namespace rope_avx2
}  // namespace detail
}  // namespace lagkv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

// ---- AVX-512F (+ the AVX2 set for the 8-wide step) ---------------------------------------------
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593 in the AVX-512 headers
#endif

namespace lagkv {
namespace detail {
namespace rope_avx512 {

inline __m512 load(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load(const f16* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load(const bf16* p) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

inline void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store(f16* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store(bf16* p, __m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __mmask16 is_nan =
      _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)), _mm512_set1_epi32(0x7f800000));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(is_nan, rounded, quiet)));
}

template <class T>
void neox(T* lo, T* hi, const float* cos_i, const float* sin_i, index_t n) {
  const __m512 sign = _mm512_set1_ps(-0.0f);
  index_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 x0 = load(lo + i);
    const __m512 x1 = load(hi + i);
    const __m512 c = _mm512_loadu_ps(cos_i + i);
    const __m512 s = _mm512_loadu_ps(sin_i + i);
    const __m512 neg_s = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(s), _mm512_castps_si512(sign)));
    store(lo + i, _mm512_fmadd_ps(x0, c, _mm512_mul_ps(x1, neg_s)));
    store(hi + i, _mm512_fmadd_ps(x1, c, _mm512_mul_ps(x0, s)));
  }
  rope_avx2::neox(lo + i, hi + i, cos_i + i, sin_i + i, n - i);  // <= 15 pairs: 8-wide, then scalar
}

template <class T>
void interleaved(T* row, const float* cc, const float* ss, const float* cos_i, const float* sin_i, index_t half) {
  const index_t channels = 2 * half;
  index_t j = 0;
  for (; j + 16 <= channels; j += 16) {
    const __m512 x = load(row + j);
    const __m512 swapped = _mm512_permute_ps(x, 0xB1);
    store(row + j, _mm512_fmadd_ps(x, _mm512_loadu_ps(cc + j), _mm512_mul_ps(swapped, _mm512_loadu_ps(ss + j))));
  }
  rope_avx2::interleaved(row + j, cc + j, ss + j, cos_i + j / 2, sin_i + j / 2, half - j / 2);
}

}  // namespace rope_avx512
}  // namespace detail
}  // namespace lagkv

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif

#endif  // LAGKV_DETAIL_ROPE_X86
