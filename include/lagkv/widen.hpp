#pragma once
/// \file widen.hpp
/// \brief Widen cached K/V rows to fp32 for an engine's own attention maths, and map fp32 rows
/// onto Eigen with a compile-time unit inner stride.
///
/// An engine that stores its cache in fp16/bf16 but multiplies in fp32 (the tiny_llm example,
/// most CPU runtimes) converts every row it attends to, every step: that conversion is as hot as
/// the attention itself. `widen` converts a whole view row by row, with F16C where the active
/// SIMD target has it (the same `LAGKV_SIMD` / `simd::force` choice as the scorers); bf16 -> fp32
/// is a 16-bit shift the compiler vectorises; fp32 rows are copied. Every path is exact, so the
/// scalar `reference::widen` is the oracle bit for bit.

#include <cstring>

#include "lagkv/dtype.hpp"
#include "lagkv/eigen.hpp"
#include "lagkv/error.hpp"
#include "lagkv/simd/dispatch.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

namespace reference {

/// \brief out[t * ld + c] = to_float(v(t, c)), element by element (the oracle of `widen`).
template <class T>
void widen(const kv_view<const T>& v, float* out, index_t ld) {
  for (index_t t = 0; t < v.tokens(); ++t)
    for (index_t c = 0; c < v.head_dim(); ++c) out[t * ld + c] = to_float(v(t, c));
}

}  // namespace reference

namespace detail {

inline void widen_span(const float* src, float* dst, index_t n) {
  std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
}

inline void widen_span(const bf16* src, float* dst, index_t n) {
  // bf16 is the top half of an fp32 pattern: a shift, exact for every value including NaN.
  for (index_t i = 0; i < n; ++i) {
    const std::uint32_t u = static_cast<std::uint32_t>(src[i].bits) << 16;
    std::memcpy(dst + i, &u, sizeof u);
  }
}

inline void widen_span_scalar(const f16* src, float* dst, index_t n) {
  for (index_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

#if defined(LAGKV_SIMD_HAVE_AVX2)
// F16C: vcvtph2ps is exact (fp16 -> fp32 always is) and quiets NaN as to_float does.
__attribute__((target("avx2,f16c"))) inline void widen_span_f16c(const f16* src, float* dst, index_t n) {
  index_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  widen_span_scalar(src + i, dst + i, n - i);
}
#endif

inline void widen_span(const f16* src, float* dst, index_t n) {
#if defined(LAGKV_SIMD_HAVE_AVX2)
  // avx2 and avx512 are only "available" on CPUs with F16C (dispatch.hpp checks the bit).
  const simd::target t = simd::active_target();
  if (t == simd::target::avx2 || t == simd::target::avx512) return widen_span_f16c(src, dst, n);
#endif
  widen_span_scalar(src, dst, n);
}

}  // namespace detail

/// \brief Writes `v` as fp32 rows: out[t * ld + c] = v(t, c) for t < v.tokens(), c < v.head_dim().
///
/// Works on every view (strided, transposed, paged); rows with contiguous channels take the
/// vector path. `out` must not overlap the view.
/// \param ld  floats between consecutive output rows, >= v.head_dim().
/// \throws lagkv::error when ld < head_dim or out is null with tokens to write.
template <class T>
void widen(const kv_view<const T>& v, float* out, index_t ld) {
  LAGKV_CHECK(ld >= v.head_dim(), "widen: ld=", ld, ": must be >= head_dim=", v.head_dim());
  LAGKV_CHECK(out != nullptr || v.tokens() == 0, "widen: out is null with tokens=", v.tokens(), " to write");
  if (!v.rows_contiguous()) return reference::widen(v, out, ld);
  for (index_t t = 0; t < v.tokens(); ++t) detail::widen_span(v.row(t), out + t * ld, v.head_dim());
}

/// \brief Contiguous-channel fp32 rows as an Eigen map whose inner stride is a compile-time 1.
///
/// `as_eigen` accepts any strided view, so its inner stride is a run-time value and Eigen will
/// not vectorise products over it (several times slower for a decode-step GEMV). Views with
/// contiguous channels — every layout except the transposed-V one — can use this map instead.
template <class T>
using eigen_row_map =
    Eigen::Map<std::conditional_t<std::is_const_v<T>, const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                                  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>,
               Eigen::Unaligned, Eigen::OuterStride<>>;

/// \throws lagkv::error for a paged view or one whose channels are not contiguous.
template <class T>
eigen_row_map<T> as_eigen_rows(const kv_view<T>& v) {
  static_assert(std::is_same_v<std::remove_const_t<T>, float>, "as_eigen_rows: only fp32 views map onto Eigen matrices");
  LAGKV_CHECK(!v.is_paged(), "as_eigen_rows: a paged view has no single token stride; widen() it instead");
  LAGKV_CHECK(v.rows_contiguous(), "as_eigen_rows: channel_stride=", v.channel_stride(),
              ": channels must be contiguous (use as_eigen for strided channels)");
  return eigen_row_map<T>(v.data(), v.tokens(), v.head_dim(), Eigen::OuterStride<>(v.token_stride()));
}

}  // namespace lagkv
