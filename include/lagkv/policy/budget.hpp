#pragma once
/// \file policy/budget.hpp
/// \brief The token-budget schedule shared by the global policies (L2-norm/KnormPress, H2O,
/// StreamingLLM, random): keep `sink` leading slots and `window` recent slots, and the best
/// scored slots between them up to a per-head target.
///
/// Three ways to set the target, one schedule:
///  - fixed budget (`budget` > 0): after an append that leaves a head above `budget` slots,
///    evict down to `budget` (H2O, StreamingLLM, the CLI's `replay --budget`);
///  - every N decode steps to a target size (`interval` = N, kvpress's DecodingPress): a
///    single-token append triggers only when it is the layer's N-th, 2N-th, ... append, so
///    eviction work is amortised over N tokens and the cache needs `budget + N` slots of
///    capacity; multi-token appends (prefill chunks) always trigger;
///  - ratio (`ratio` > 0, kvpress's KnormPress; note kvpress's `compression_ratio` is
///    1 - ratio): a head holding n slots keeps floor(ratio * n). Applied after appends of more
///    than one token (prefill chunks) and on explicit compress() calls, never on single-token
///    decode appends (as kvpress presses only the prefill). Sink and window are always kept,
///    even where that exceeds floor(ratio * n).
/// Head-wise sharing (`share_heads`, AdaKV, Feng et al. 2024): the layer's total
/// (kv_heads * budget, or the sum of the ratio targets) is shared across heads by score; each
/// head keeps at least max(min_per_head, sink + window) slots (or all it holds, if fewer).

#include <cmath>

#include "lagkv/error.hpp"
#include "lagkv/policy/policy.hpp"

namespace lagkv {

/// \brief Budget schedule parameters (defaults: no sink, no window; set budget, or ratio when budget is 0).
struct budget_params {
  index_t sink = 0;           ///< leading slots never evicted
  index_t window = 0;         ///< most recent slots never evicted
  index_t budget = 0;         ///< > 0: slots per head after a compression (budget mode)
  double ratio = 0.0;         ///< budget == 0: fraction of a head's slots kept, in (0, 1]
  index_t interval = 1;       ///< budget mode: single-token appends compress at every interval-th append
  bool share_heads = false;   ///< share the layer's total across heads by score (AdaKV)
  index_t min_per_head = 0;   ///< with share_heads: per-head floor (sink + window always apply)

  /// \throws lagkv::error naming the first invalid parameter and its value.
  void validate() const {
    LAGKV_CHECK(sink >= 0, "sink=", sink, ": must be >= 0");
    LAGKV_CHECK(window >= 0, "window=", window, ": must be >= 0");
    LAGKV_CHECK(budget >= 0, "budget=", budget, ": must be >= 0");
    LAGKV_CHECK(budget > 0 || (std::isfinite(ratio) && ratio > 0.0 && ratio <= 1.0), "ratio=", ratio,
                ": must be in (0, 1] (or set budget > 0)");
    LAGKV_CHECK(budget == 0 || budget >= sink + window, "budget=", budget, ": must be >= sink + window = ",
                sink + window);
    LAGKV_CHECK(interval >= 1, "interval=", interval, ": must be >= 1");
    LAGKV_CHECK(min_per_head >= 0 && (budget == 0 || min_per_head <= budget), "min_per_head=", min_per_head,
                ": must be in [0, budget=", budget, "]");
  }

  /// Slots a head holding `length` keeps after a (non-shared) compression; <= length.
  index_t target(index_t length) const {
    if (budget > 0) return length < budget ? length : budget;
    const auto by_ratio = static_cast<index_t>(std::floor(ratio * static_cast<double>(length)));
    const index_t protect = length < sink + window ? length : sink + window;
    return by_ratio > protect ? by_ratio : protect;
  }
};

/// \brief The budget schedule as a Policy::plan: fills `out` for every head of `layer`.
inline void plan_budget(const budget_params& p, const layer_info& layer, compress_reason why,
                        layer_plan& out) noexcept {
  if (why == compress_reason::append) {
    if (p.budget == 0 && layer.last_append <= 1) return;  // ratio mode presses prefill chunks only
    if (p.budget > 0 && layer.last_append <= 1 && layer.appends % p.interval != 0) return;
  }
  const index_t protect = p.sink + p.window;
  if (!p.share_heads) {
    for (index_t h = 0; h < layer.kv_heads; ++h) {
      const index_t n = layer.lengths[h];
      const index_t t = p.target(n);
      if (t < n) out.heads[h] = compress_plan{p.sink, 1, n - protect, t - protect};
    }
    return;
  }
  index_t held = 0, layer_target = 0;
  for (index_t h = 0; h < layer.kv_heads; ++h) {
    held += layer.lengths[h];
    layer_target += p.budget > 0 ? p.budget : p.target(layer.lengths[h]);
  }
  if (held <= layer_target) return;
  const index_t floor_total = p.min_per_head > protect ? p.min_per_head : protect;
  index_t guaranteed = 0, candidates = 0;
  for (index_t h = 0; h < layer.kv_heads; ++h) {
    const index_t n = layer.lengths[h];
    const index_t region = n > protect ? n - protect : 0;
    index_t g = floor_total - protect;
    if (g > region) g = region;
    guaranteed += (n < protect ? n : protect) + g;
    if (region > 0) {
      out.heads[h] = compress_plan{p.sink, 1, region, g};
      candidates += region - g;
    }
  }
  index_t shared = layer_target - guaranteed;
  if (shared < 0) shared = 0;
  if (shared > candidates) shared = candidates;
  out.shared_keep = shared;
}

}  // namespace lagkv
