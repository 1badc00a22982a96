#pragma once
/// \file simd/scalar.hpp
/// \brief The portable target: the same row kernels as the vector targets, in plain C++.
///
/// It runs everywhere (it is what `LAGKV_SIMD=scalar` selects and what a CPU without a vector
/// target gets) and goes through the same sequence driver, fallbacks included. Element maths is
/// float like the vector targets; sums are accumulated in double because a scalar loop gets
/// that for free, so this target is the most accurate of the fast ones.

#include <cmath>

#include "lagkv/dtype.hpp"
#include "lagkv/simd/common.hpp"

namespace lagkv {
namespace simd {
namespace scalar {

template <class T>
void fused_rows(const T* const* srows, index_t ns, const T* const* mrows, index_t nm, index_t /*nm_prefetch*/,
                index_t head_dim,
                const float* lo, const float* inv, const float* /*bias*/, void* mm_state, float* out_std,
                float* ubuf) {
  const double inv_n = 1.0 / static_cast<double>(head_dim);
  const double inv_n1 = 1.0 / static_cast<double>(head_dim - 1);
  for (index_t t = 0; t < ns; ++t) {
    const T* row = srows[t];
    // Two passes over a row held in ubuf: the mean first, then squared deviations from it,
    // which cannot cancel catastrophically (unlike sum(x^2) - n*mean^2).
    double sum = 0.0;
    for (index_t c = 0; c < head_dim; ++c) {
      ubuf[c] = to_float(row[c]) - lo[c];
      sum += static_cast<double>(ubuf[c] * inv[c]);
    }
    const float mean = static_cast<float>(sum * inv_n);
    if (std::fabs(mean) > detail::kFloatMaxMean) {  // far outside the reference: the oracle scores it
      out_std[t] = INFINITY;
      continue;
    }
    double ss = 0.0;
    for (index_t c = 0; c < head_dim; ++c) {
      const float dev = std::fma(ubuf[c], inv[c], -mean);
      ss += static_cast<double>(dev) * dev;
    }
    out_std[t] = static_cast<float>(std::sqrt(ss * inv_n1));
  }
  detail::mm_accumulate<T>(mm_state, head_dim, mrows, nm);
}

template <class T>
void l2_rows(const T* const* rows, index_t n, index_t head_dim, float* out) {
  for (index_t t = 0; t < n; ++t) {
    double ss = 0.0;
    for (index_t c = 0; c < head_dim; ++c) {
      const double x = to_float(rows[t][c]);
      ss += x * x;
    }
    out[t] = static_cast<float>(-std::sqrt(ss));
  }
}

template <class T>
void load_to_f32(const T* src, index_t n, float* dst) {
  for (index_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

inline void softmax(float* s, index_t n, float w, float* out, bool accumulate) {
  float mx = -INFINITY;
  for (index_t i = 0; i < n; ++i) mx = std::fmax(mx, s[i]);  // fmax skips NaN
  double sum = 0.0;
  for (index_t i = 0; i < n; ++i) {
    s[i] = std::exp(s[i] - mx);
    if (!std::isnan(s[i])) sum += s[i];
  }
  const double r = 1.0 / sum;
  for (index_t i = 0; i < n; ++i) {
    const float p = static_cast<float>(s[i] * r);
    out[i] = accumulate ? std::fma(w, p, out[i]) : p;
  }
}

template <class T>
constexpr detail::kernel_set<T> make_kernel_set() {
  return {&detail::natural_kernel_dim<1>, &detail::natural_kernel_channel, &fused_rows<T>,
          &detail::generic_ref_stats<T, &load_to_f32<T>, &detail::natural_kernel_dim<1>>, &l2_rows<T>,
          &load_to_f32<T>};
}

/// The portable target's table.
inline constexpr detail::target_kernels kKernels{target::scalar, make_kernel_set<float>(), make_kernel_set<f16>(),
                                                 make_kernel_set<bf16>(), &softmax};

}  // namespace scalar
}  // namespace simd
}  // namespace lagkv
