#pragma once
/// \file policy/streaming.hpp
/// \brief StreamingLLM (Xiao et al., "Efficient Streaming Language Models with Attention Sinks",
/// ICLR 2024): keep the first `sink` tokens and the `window` most recent ones.
///
/// After an append that leaves a head above sink + window slots, the slots between them are
/// evicted (no scores: the policy never calls a scorer). Keeping the original order means an
/// eviction moves the window (O(window * head_dim)); with `interval` = N single-token appends
/// evict only every N-th step, amortising that move over N tokens (prefill chunks always evict).
/// Defaults: sink 4 (the paper's four attention sinks), window 1020, interval 1.

#include "lagkv/error.hpp"
#include "lagkv/policy/budget.hpp"
#include "lagkv/policy/policy.hpp"

namespace lagkv {

/// \brief StreamingLLM parameters.
struct streaming_params {
  index_t sink = 4;
  index_t window = 1020;
  index_t interval = 1;  ///< single-token appends evict at every interval-th append only

  budget_params schedule() const {
    budget_params b;
    b.sink = sink;
    b.window = window;
    b.budget = sink + window;
    b.interval = interval;
    return b;
  }
  /// \throws lagkv::error naming the first invalid parameter.
  void validate() const {
    LAGKV_CHECK(sink >= 0, "sink=", sink, ": must be >= 0");
    LAGKV_CHECK(window >= 0, "window=", window, ": must be >= 0");
    LAGKV_CHECK(sink + window >= 1, "sink + window=", sink + window, ": must be >= 1");
    LAGKV_CHECK(interval >= 1, "interval=", interval, ": must be >= 1");
  }
};

/// \brief The StreamingLLM policy (see file comment).
class streaming_policy : public policy_base {
 public:
  static constexpr const char* kName = "streaming";
  static constexpr bool kScoresTokens = false;

  /// \throws lagkv::error when `params` are invalid.
  explicit streaming_policy(const streaming_params& params = {}) : p_(params) {
    p_.validate();
    schedule_ = p_.schedule();
  }
  const streaming_params& params() const { return p_; }

  void validate(const cache_shape&) const { p_.validate(); }
  void plan(const layer_info& layer, compress_reason why, layer_plan& out) const noexcept {
    plan_budget(schedule_, layer, why, out);
  }
  /// Never called (kScoresTokens is false: every plan keeps 0 of its region).
  template <class T>
  void score(const head_data<T>&, const compress_plan& plan, index_t, score_t* out) const noexcept {
    for (index_t i = 0; i < plan.chunk; ++i) out[i] = 0.0f;
  }

 private:
  streaming_params p_;
  budget_params schedule_;
};

}  // namespace lagkv
