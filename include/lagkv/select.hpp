#pragma once
/// \file select.hpp
/// \brief The "select" step: top-k of a score array with a fully deterministic order.
///
/// Higher score wins; equal scores keep the lower index; NaN ranks below every number (so a
/// poisoned token is the first to go, and two NaNs fall back to index order). The kept indices
/// come back ascending, i.e. in original token order, which is what compaction needs.

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "lagkv/error.hpp"

namespace lagkv {

/// True when (score_a, a) ranks strictly before (score_b, b).
template <class S>
inline bool ranks_before(S score_a, index_t a, S score_b, index_t b) {
  const bool nan_a = std::isnan(score_a), nan_b = std::isnan(score_b);
  if (nan_a || nan_b) return nan_a == nan_b ? a < b : nan_b;
  if (score_a != score_b) return score_a > score_b;
  return a < b;
}

/// \brief Writes to `kept[0..k)` the indices of the k best of `scores[0..n)`, ascending.
/// `scratch` is resized to n (reuse it across calls to avoid allocations).
template <class S>
void select_top_k(const S* scores, index_t n, index_t k, index_t* kept, std::vector<index_t>& scratch) {
  LAGKV_CHECK(k >= 0 && k <= n, "k=", k, ": must be in [0, n=", n, "]");
  scratch.resize(static_cast<std::size_t>(n));
  std::iota(scratch.begin(), scratch.end(), index_t{0});
  auto better = [scores](index_t a, index_t b) { return ranks_before(scores[a], a, scores[b], b); };
  if (k < n) std::nth_element(scratch.begin(), scratch.begin() + k, scratch.end(), better);
  std::sort(scratch.begin(), scratch.begin() + k);
  std::copy(scratch.begin(), scratch.begin() + k, kept);
}

/// Convenience form returning a vector.
template <class S>
std::vector<index_t> select_top_k(const S* scores, index_t n, index_t k) {
  std::vector<index_t> kept(static_cast<std::size_t>(k)), scratch;
  select_top_k(scores, n, k, kept.data(), scratch);
  return kept;
}

}  // namespace lagkv
