#pragma once
/// \file simd/q8_0_scalar.hpp
/// \brief The row kernel q8_0 scoring is built from (q8_kernel_set), and its portable target.
///
/// LagKV scores chunk j against the per-channel min/max of chunk j+1. Walking the chunks from
/// the last one backwards, that reference is finished before chunk j is read, so one kernel
/// reads each q8_0 row once, dequantises it once (d*q, exact in float) and in the same
/// registers both scores it and folds it into chunk j's own min/max (the reference of chunk
/// j-1, next). No dequantised copy of anything is kept. The chunk/sequence logic, fallbacks and
/// softmax live once in simd/q8_0_dispatch.hpp; the x86 targets are in simd/q8_0_x86.hpp.

#include <cmath>
#include <cstdint>
#include <cstring>

#include "lagkv/dtype.hpp"
#include "lagkv/q8_0.hpp"
#include "lagkv/simd/common.hpp"

namespace lagkv {
namespace simd {
namespace q8 {

/// \brief The row kernels of one target. Rows are `nb` = head_dim/32 adjacent q8_0 blocks.
struct q8_kernel_set {
  /// For rows[0..n): when `out` is given, out[t] = unbiased std over channels of
  /// z = (d*q - lo)*inv - 0.5, as fma(d*q, inv, bias) when `bias` (-lo*inv - 0.5, every
  /// |bias| <= 2) is given; a target may use the one-pass form and write -1 where it is
  /// ill-conditioned (the caller redoes those rows in two passes, and sends the chunk of a row
  /// whose mean is beyond kFloatMaxMean to the oracle). When `mn` is given, folds the
  /// values into the per-channel min/max mn/mx (head_dim floats each, updated in place).
  /// Returns true when some row has an Inf/NaN scale (its out[] and mn/mx are then unspecified).
  bool (*score_rows)(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                     const float* bias, float* out, float* mn, float* mx);
  /// out[t] = -sqrt(sum over channels of (d*q)^2), in float (non-finite where a scale is).
  void (*l2_rows)(const block_q8_0* const* rows, index_t n, index_t nb, float* out);
  /// From a finished per-channel min/max (`d` channels, a multiple of 32): lo = mn,
  /// inv = 1/(mx - mn) (0 where the range is 0), bias = -lo*inv - 0.5. Returns whether every
  /// |lo*inv + 0.5| <= 2, i.e. whether score_rows may use the bias form. Runs once per reference
  /// chunk, so the vector targets vectorise it too.
  bool (*ref_stats)(const float* mn, const float* mx, index_t d, float* lo, float* inv, float* bias);
};

/// A block's scale as float, exact (dtype.hpp's to_float), through integer ops for normal
/// numbers so vector targets do not spend vector instructions on it; flags Inf/NaN in `bad`.
inline float scale_of(const block_q8_0& b, unsigned& bad) {
  const std::uint32_t h = b.d.bits, e = h & 0x7c00u;
  if (e == 0 || e == 0x7c00u) {  // zero, denormal, Inf, NaN: the reference conversion
    bad |= static_cast<unsigned>(e == 0x7c00u);
    return to_float(b.d);
  }
  const std::uint32_t u = ((h & 0x8000u) << 16) | (((h & 0x7fffu) << 13) + (112u << 23));
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

namespace scalar {

/// Two passes in double (mean, then squared deviations): the most accurate target. -1 only for
/// a row whose mean is beyond kFloatMaxMean (the float lo/inv put errors of ~|mean| * 2^-24 into
/// its std), so the caller handles it as it does the other targets' rows: by the oracle.
inline bool score_rows(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                       const float* /*bias*/, float* out, float* mn, float* mx) {
  unsigned bad = 0;
  const index_t dim = nb * kQ8BlockValues;
  float x[kQ8BlockValues];
  for (index_t t = 0; t < n; ++t) {
    double sum = 0.0;
    for (index_t b = 0; b < nb; ++b) {
      const block_q8_0& blk = rows[t][b];
      const float d = scale_of(blk, bad);
      for (index_t j = 0; j < kQ8BlockValues; ++j) {
        const index_t c = b * kQ8BlockValues + j;
        x[j] = d * static_cast<float>(blk.qs[j]);
        if (mn != nullptr) {
          mn[c] = x[j] < mn[c] ? x[j] : mn[c];
          mx[c] = x[j] > mx[c] ? x[j] : mx[c];
        }
        if (out != nullptr) sum += (static_cast<double>(x[j]) - lo[c]) * inv[c];
      }
    }
    if (out == nullptr) continue;
    const double mean = sum / static_cast<double>(dim);
    if (std::fabs(mean) > simd::detail::kFloatMaxMean) {
      out[t] = -1.0f;
      continue;
    }
    double ss = 0.0;
    for (index_t c = 0; c < dim; ++c) {
      const double dev =
          (static_cast<double>(dequantize_value(rows[t][c / kQ8BlockValues], c % kQ8BlockValues)) - lo[c]) * inv[c] -
          mean;
      ss += dev * dev;
    }
    out[t] = static_cast<float>(std::sqrt(ss / static_cast<double>(dim - 1)));
  }
  return bad != 0;
}

inline void l2_rows(const block_q8_0* const* rows, index_t n, index_t nb, float* out) {
  for (index_t t = 0; t < n; ++t) {
    double ss = 0.0;
    for (index_t b = 0; b < nb; ++b) {
      const block_q8_0& blk = rows[t][b];
      std::int32_t qq = 0;  // <= 32 * 128^2: exact
      for (index_t j = 0; j < kQ8BlockValues; ++j) qq += blk.qs[j] * blk.qs[j];
      const double d = to_float(blk.d);
      ss += d * d * qq;
    }
    out[t] = static_cast<float>(-std::sqrt(ss));
  }
}

inline bool ref_stats(const float* mn, const float* mx, index_t d, float* lo, float* inv, float* bias) {
  int far = 0;
  for (index_t c = 0; c < d; ++c) {
    const float range = mx[c] - mn[c];
    const float r = range > 0.0f ? 1.0f / range : 0.0f;
    lo[c] = mn[c];
    inv[c] = r;
    bias[c] = -mn[c] * r - 0.5f;
    far |= static_cast<int>(!(std::fabs(mn[c] * r + 0.5f) <= 2.0f));
  }
  return far == 0;
}

/// The portable target's table.
inline constexpr q8_kernel_set kKernels{&score_rows, &l2_rows, &ref_stats};

}  // namespace scalar
}  // namespace q8
}  // namespace simd
}  // namespace lagkv
