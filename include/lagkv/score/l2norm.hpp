#pragma once
/// \file score/l2norm.hpp
/// \brief L2-norm scoring (Devoto et al. 2024, "A Simple and Effective L2 Norm-Based Strategy for
/// KV Cache Compression"), scalar reference: score = -||k||_2, so the lowest-norm keys rank first.
/// Values play no part (the authors' l2_kv.py default score_v_ratio = 0).

#include <cmath>

#include "lagkv/dtype.hpp"
#include "lagkv/view.hpp"

namespace lagkv {
namespace reference {

/// out[t] = -||k[t]||_2 for every token of `keys`, accumulated in double.
template <class T>
void l2norm_scores(kv_view<const T> keys, float* out) {
  for (index_t t = 0; t < keys.tokens(); ++t) {
    double ss = 0.0;
    for (index_t c = 0; c < keys.head_dim(); ++c) {
      const double x = to_float(keys(t, c));
      ss += x * x;
    }
    out[t] = static_cast<float>(-std::sqrt(ss));
  }
}

}  // namespace reference
}  // namespace lagkv
