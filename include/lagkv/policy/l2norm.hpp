#pragma once
/// \file policy/l2norm.hpp
/// \brief L2-norm eviction (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV
/// Cache Compression", EMNLP 2024): score = -||k||_2, so low-norm keys are kept.
///
/// Two forms:
///  - l2norm_policy: the global top-k of kvpress's KnormPress under the budget schedule
///    (policy/budget.hpp: fixed budget, every-N-steps, ratio, AdaKV sharing), with optional
///    sink and recent window. Defaults: ratio 0.5, no sink, no window.
///  - l2norm_chunked_policy: LagKV's chunk schedule and tail (policy/lagkv.hpp) with the L2
///    score, i.e. the LagKV authors' l2_kv.py (its score_v_ratio 0: values play no part).
///    Defaults: sink 16, lag 1024, ratio 0.5.
/// Both can skip layers: Devoto et al. leave the first two layers uncompressed
/// (`skip_layers = {0, 1}`); the default skips none.

#include <algorithm>
#include <utility>
#include <vector>

#include "lagkv/policy/budget.hpp"
#include "lagkv/policy/lagkv.hpp"
#include "lagkv/policy/policy.hpp"
#include "lagkv/simd/dispatch.hpp"

namespace lagkv {

/// \brief Parameters of the global L2-norm policy.
struct l2norm_params : budget_params {
  std::vector<index_t> skip_layers;  ///< layers never compressed by this policy

  l2norm_params() { ratio = 0.5; }
  /// \throws lagkv::error naming the first invalid parameter.
  void validate() const {
    budget_params::validate();
    for (index_t l : skip_layers) LAGKV_CHECK(l >= 0, "skip_layers entry=", l, ": must be >= 0");
  }
};

namespace detail {
inline bool contains(const std::vector<index_t>& xs, index_t x) { return std::find(xs.begin(), xs.end(), x) != xs.end(); }
}  // namespace detail

/// \brief KnormPress: keep sink, window and the lowest-norm keys of the rest, per the budget.
class l2norm_policy : public policy_base {
 public:
  static constexpr const char* kName = "l2norm";

  /// \throws lagkv::error when `params` are invalid.
  explicit l2norm_policy(const l2norm_params& params = {}) : p_(params) { p_.validate(); }
  const l2norm_params& params() const { return p_; }

  /// Also resolves the SIMD target (a bad LAGKV_SIMD throws here, not in the noexcept phase).
  void validate(const cache_shape&) const {
    p_.validate();
    (void)simd::active_target();
  }
  /// Also reserves the scorer's scratch (it scores at most simd::kL2RowsPerCall rows per call).
  /// \throws std::bad_alloc.
  void bind(const cache_shape& s, index_t layer) {
    scratch_.reserve(s.type, std::min(s.capacity, simd::kL2RowsPerCall), s.head_dim, !s.rows_contiguous);
    skipped_ = detail::contains(p_.skip_layers, layer);
  }
  bool shares_heads() const { return p_.share_heads; }

  void plan(const layer_info& layer, compress_reason why, layer_plan& out) const noexcept {
    if (!skipped_) plan_budget(p_, layer, why, out);
  }
  template <class T>
  void score(const head_data<T>& head, const compress_plan& plan, index_t c, score_t* out) const noexcept {
    dispatch::l2norm_scores<T>(head.keys.slice(plan.begin + c * plan.chunk, plan.chunk), out, scratch_);
  }

 private:
  l2norm_params p_;
  bool skipped_ = false;
  mutable simd::scratch scratch_;  // reserved in bind; one thread at a time (see policy/lagkv.hpp)
};

/// \brief Parameters of the chunked L2-norm policy (LagKV's schedule; score_v_ratio unused).
struct l2norm_chunked_params {
  index_t sink = 16;
  index_t lag = 1024;
  double ratio = 0.5;
  std::vector<index_t> skip_layers;

  lagkv_params schedule() const {
    lagkv_params p;
    p.sink = sink;
    p.lag = lag;
    p.ratio = ratio;
    p.score_v_ratio = 0.0;
    return p;
  }
  /// \throws lagkv::error naming the first invalid parameter.
  void validate() const {
    schedule().validate();
    for (index_t l : skip_layers) LAGKV_CHECK(l >= 0, "skip_layers entry=", l, ": must be >= 0");
  }
};

/// \brief The LagKV authors' l2_kv.py: LagKV's chunk schedule and tail, score -||k||_2.
class l2norm_chunked_policy : public policy_base {
 public:
  static constexpr const char* kName = "l2norm-chunked";

  /// \throws lagkv::error when `params` are invalid.
  explicit l2norm_chunked_policy(const l2norm_chunked_params& params = {}) : p_(params) { p_.validate(); }
  const l2norm_chunked_params& params() const { return p_; }

  /// Also resolves the SIMD target (a bad LAGKV_SIMD throws here, not in the noexcept phase).
  void validate(const cache_shape&) const {
    p_.validate();
    (void)simd::active_target();
  }
  void bind(const cache_shape& s, index_t layer) {
    std::vector<index_t> compressed(static_cast<std::size_t>(s.kv_heads), p_.sink);
    scratch_.reserve(s.type, std::min({p_.lag, s.capacity, simd::kL2RowsPerCall}), s.head_dim, !s.rows_contiguous);
    skipped_ = detail::contains(p_.skip_layers, layer);
    compressed_ = std::move(compressed);
  }

  void plan(const layer_info& layer, compress_reason, layer_plan& out) const noexcept {
    if (skipped_) return;
    const index_t keep = p_.schedule().keep_per_chunk();
    for (index_t h = 0; h < layer.kv_heads; ++h)
      out.heads[h] = lagkv_chunk_plan(layer.lengths[h], compressed_[static_cast<std::size_t>(h)], p_.lag, keep);
  }
  template <class T>
  void score(const head_data<T>& head, const compress_plan& plan, index_t c, score_t* out) const noexcept {
    dispatch::l2norm_scores<T>(head.keys.slice(plan.begin + c * plan.chunk, plan.chunk), out, scratch_);
  }
  void on_compact(index_t head, const compaction& c) noexcept {
    compressed_[static_cast<std::size_t>(head)] = c.begin + c.kept_count;
  }

 private:
  l2norm_chunked_params p_;
  bool skipped_ = false;
  std::vector<index_t> compressed_;  // [kv_heads] sink + compressed prefix
  mutable simd::scratch scratch_;    // reserved in bind; one thread at a time (see policy/lagkv.hpp)
};

}  // namespace lagkv
