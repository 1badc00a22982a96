#pragma once
/// \file policy/h2o.hpp
/// \brief H2O, Heavy-Hitter Oracle (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient
/// Generative Inference of Large Language Models", NeurIPS 2023).
///
/// Every slot accumulates the attention probability it receives from every query appended
/// after it (and its own). After an append that leaves a head above its budget, the head
/// keeps its `sink` first slots, its `window` most recent slots and, among the rest, the
/// highest accumulated scores up to the budget (ties keep the older slot). The schedule is the
/// budget schedule of policy/budget.hpp (fixed budget, every-N-steps, ratio, AdaKV sharing).
///
/// Attention comes with each append (append_extras::attention): the engine's own
/// probabilities, their per-slot sums over the appended queries, or its queries, from which
/// reference::attention_probs computes a causal softmax attention in double. GQA: query head j
/// reads KV head j / (q_heads / kv_heads); a KV head's slot receives the sum over the query
/// heads sharing it (gqa_reduce::sum, the default; mean and max are options — with prob_sums,
/// max takes the largest per-head sum rather than the largest probability per query).
/// Defaults: h2o_params has sink 0, window 0 and no budget (set one); a default-constructed
/// h2o_policy uses budget 1024 with window 512, the paper's even split between heavy hitters
/// and recent tokens.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/policy/budget.hpp"
#include "lagkv/policy/policy.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// How a KV head aggregates the attention of the query heads that share it (GQA).
enum class gqa_reduce : std::uint8_t { sum, mean, max };

/// \brief H2O parameters: the budget schedule plus the GQA reduction.
struct h2o_params : budget_params {
  gqa_reduce reduce = gqa_reduce::sum;
};

namespace reference {

/// \brief Causal softmax attention of one query over slots [0, visible) of `keys`:
/// out[s] = exp(l_s - max l) / sum, l_s = (q . k_s) / sqrt(head_dim), all in double.
/// `q` holds head_dim contiguous floats.
template <class T>
void attention_probs(const float* q, kv_view<const T> keys, index_t visible, double* out) noexcept {
  const index_t d = keys.head_dim();
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  double mx = -INFINITY;
  for (index_t s = 0; s < visible; ++s) {
    double dot = 0.0;
    for (index_t c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * static_cast<double>(to_float(keys(s, c)));
    out[s] = dot * inv_sqrt_d;
    mx = std::fmax(mx, out[s]);
  }
  double sum = 0.0;
  for (index_t s = 0; s < visible; ++s) {
    out[s] = std::exp(out[s] - mx);
    sum += out[s];
  }
  for (index_t s = 0; s < visible; ++s) out[s] /= sum;
}

}  // namespace reference

/// \brief The H2O policy (see file comment). Per-slot state: accumulated attention (double).
class h2o_policy : public policy_base {
 public:
  static constexpr const char* kName = "h2o";

  /// \throws lagkv::error when `params` are invalid (e.g. budget < sink + window).
  explicit h2o_policy(const h2o_params& params) : p_(params) { p_.validate(); }
  /// Default: budget 1024, window 512 (half heavy hitters, half recent, as in the paper).
  h2o_policy() {
    p_.budget = 1024;
    p_.window = 512;
  }
  const h2o_params& params() const { return p_; }

  void validate(const cache_shape&) const { p_.validate(); }
  void bind(const cache_shape& s, index_t /*layer*/) {
    kv_heads_ = s.kv_heads;
    capacity_ = s.capacity;
    const auto slots = static_cast<std::size_t>(s.kv_heads * s.capacity);
    acc_.assign(slots, 0.0);
    row_.assign(static_cast<std::size_t>(s.capacity), 0.0);
    agg_.assign(p_.reduce == gqa_reduce::max ? static_cast<std::size_t>(s.capacity) : 0, 0.0);
  }
  bool shares_heads() const { return p_.share_heads; }

  /// Every append must bring attention (probabilities or queries) for its tokens.
  /// `layer.lengths` are the lengths before the append.
  void validate_append(const layer_info& layer, index_t tokens, const append_extras& x) const {
    const attention_input& a = x.attention;
    LAGKV_CHECK(a.probs != nullptr || a.prob_sums != nullptr || a.queries != nullptr,
                "attention: h2o needs attention.probs, attention.prob_sums or attention.queries",
                " for every append (tokens=", tokens, ")");
    LAGKV_CHECK(a.q_heads >= layer.kv_heads && a.q_heads % layer.kv_heads == 0, "attention.q_heads=", a.q_heads,
                ": must be a positive multiple of kv_heads=", layer.kv_heads);
    if (a.probs != nullptr || a.prob_sums != nullptr) {
      index_t longest = 0;
      for (index_t h = 0; h < layer.kv_heads; ++h) longest = std::max(longest, layer.lengths[h] + tokens);
      LAGKV_CHECK(a.row_stride >= longest, "attention.row_stride=", a.row_stride,
                  ": must be >= the longest head after the append = ", longest);
    } else {
      LAGKV_CHECK(tokens <= 1 || a.q_token_stride != 0, "attention.q_token_stride=", a.q_token_stride,
                  ": must be set for an append of tokens=", tokens);
      LAGKV_CHECK(a.q_heads == 1 || a.q_head_stride != 0, "attention.q_head_stride=", a.q_head_stride,
                  ": must be set for q_heads=", a.q_heads);
    }
  }

  /// Accumulates the attention the new queries give slots [0, first + i] of this head.
  template <class T>
  void on_append(const head_data<T>& head, index_t first, index_t count, const append_extras& x) noexcept {
    const attention_input& a = x.attention;
    double* acc = acc_.data() + head.head * capacity_;
    for (index_t s = first; s < first + count; ++s) acc[s] = 0.0;
    const index_t group = a.q_heads / kv_heads_;
    if (a.probs == nullptr && a.prob_sums != nullptr) {  // one pass over the summed rows
      accumulate_group(acc, a, head.head, group, first + count, [&](index_t j) { return a.prob_sums + j * a.row_stride; });
      return;
    }
    for (index_t i = 0; i < count; ++i) {
      const index_t visible = first + i + 1;
      if (p_.reduce == gqa_reduce::max)
        for (index_t s = 0; s < visible; ++s) agg_[static_cast<std::size_t>(s)] = 0.0;
      for (index_t j = head.head * group; j < (head.head + 1) * group; ++j) {
        double* p = row_.data();
        if (a.probs != nullptr) {
          const float* src = a.probs + (j * count + i) * a.row_stride;
          for (index_t s = 0; s < visible; ++s) p[s] = src[s];
        } else {
          reference::attention_probs<T>(a.queries + j * a.q_head_stride + i * a.q_token_stride, head.keys, visible, p);
        }
        switch (p_.reduce) {
          case gqa_reduce::sum:
            for (index_t s = 0; s < visible; ++s) acc[s] += p[s];
            break;
          case gqa_reduce::mean:
            for (index_t s = 0; s < visible; ++s) acc[s] += p[s] / static_cast<double>(group);
            break;
          case gqa_reduce::max:
            for (index_t s = 0; s < visible; ++s) agg_[static_cast<std::size_t>(s)] = std::fmax(agg_[static_cast<std::size_t>(s)], p[s]);
            break;
        }
      }
      if (p_.reduce == gqa_reduce::max)
        for (index_t s = 0; s < visible; ++s) acc[s] += agg_[static_cast<std::size_t>(s)];
    }
  }

  void plan(const layer_info& layer, compress_reason why, layer_plan& out) const noexcept {
    plan_budget(p_, layer, why, out);
  }

 private:
  // acc[s] += reduce over the group's query heads j of row(j)[s], s < visible.
  template <class Row>
  void accumulate_group(double* acc, const attention_input&, index_t kv_head, index_t group, index_t visible,
                        Row&& row) noexcept {
    if (p_.reduce == gqa_reduce::max)
      for (index_t s = 0; s < visible; ++s) agg_[static_cast<std::size_t>(s)] = 0.0;
    double* agg = agg_.data();
    for (index_t j = kv_head * group; j < (kv_head + 1) * group; ++j) {
      const float* p = row(j);
      switch (p_.reduce) {  // outside the slot loop, so each loop vectorises
        case gqa_reduce::sum:
          for (index_t s = 0; s < visible; ++s) acc[s] += static_cast<double>(p[s]);
          break;
        case gqa_reduce::mean:
          for (index_t s = 0; s < visible; ++s) acc[s] += static_cast<double>(p[s]) / static_cast<double>(group);
          break;
        case gqa_reduce::max:
          for (index_t s = 0; s < visible; ++s) agg[s] = std::fmax(agg[s], static_cast<double>(p[s]));
          break;
      }
    }
    if (p_.reduce == gqa_reduce::max)
      for (index_t s = 0; s < visible; ++s) acc[s] += agg_[static_cast<std::size_t>(s)];
  }

 public:
  template <class T>
  void score(const head_data<T>& head, const compress_plan& plan, index_t c, score_t* out) const noexcept {
    const double* acc = acc_.data() + head.head * capacity_ + plan.begin + c * plan.chunk;
    for (index_t i = 0; i < plan.chunk; ++i) out[i] = static_cast<score_t>(acc[i]);
  }
  void on_compact(index_t head, const compaction& c) noexcept { c.apply(acc_.data() + head * capacity_); }

  /// Accumulated attention of the slots of `head` (valid for the head's current length).
  const double* accumulated(index_t head) const { return acc_.data() + head * capacity_; }

 private:
  h2o_params p_;
  index_t kv_heads_ = 1;
  index_t capacity_ = 0;
  std::vector<double> acc_;  // [kv_heads, capacity]
  std::vector<double> row_;  // [capacity] scratch: one query's probabilities
  std::vector<double> agg_;  // [capacity] scratch: max over the group (gqa_reduce::max)
};

}  // namespace lagkv
