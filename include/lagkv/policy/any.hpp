#pragma once
/// \file policy/any.hpp
/// \brief any_policy: a policy chosen at run time (by name, e.g. from a command line), and
/// make_policy, the factory of the built-in policies.
///
/// any_policy satisfies the policy contract itself, so kv_cache<T, any_policy> works like any
/// other cache. It costs one indirect call per plan (one per append of a layer), per scored
/// chunk, and per head per compaction — plus one per head per append for policies that declare
/// on_append (H2O) — never one per token or per channel; the held policy's loops stay static.

#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/policy/h2o.hpp"
#include "lagkv/policy/l2norm.hpp"
#include "lagkv/policy/lagkv.hpp"
#include "lagkv/policy/policy.hpp"
#include "lagkv/policy/random.hpp"
#include "lagkv/policy/streaming.hpp"

namespace lagkv {

/// \brief A type-erased policy holding any type that satisfies the contract for float, f16
/// and bf16. Default: no_eviction. Copies deep-copy the held policy (its state included).
class any_policy {
 public:
  static constexpr const char* kName = "any";

  any_policy() : any_policy(no_eviction{}) {}

  template <class P, class = std::enable_if_t<
                         std::conjunction_v<std::negation<std::is_same<std::decay_t<P>, any_policy>>, is_policy<P>>>>
  any_policy(P policy)  // NOLINT(google-explicit-constructor): any policy converts, like std::function
      : impl_(std::make_unique<model<P>>(std::move(policy))) {
    static_assert(check_policy<P, float>() && check_policy<P, f16>() && check_policy<P, bf16>());
  }
  any_policy(const any_policy& other) : impl_(other.impl_->clone()) {}
  any_policy(any_policy&&) noexcept = default;
  any_policy& operator=(const any_policy& other) {
    if (this != &other) impl_ = other.impl_->clone();
    return *this;
  }
  any_policy& operator=(any_policy&&) noexcept = default;
  ~any_policy() = default;

  /// The held policy's kName.
  const char* name() const { return impl_->name(); }
  /// The held policy if it is a `P`, else nullptr (like std::function::target).
  template <class P>
  const P* target() const {
    return impl_->type() == typeid(P) ? static_cast<const P*>(impl_->get()) : nullptr;
  }
  template <class P>
  P* target() {
    return impl_->type() == typeid(P) ? static_cast<P*>(impl_->get()) : nullptr;
  }

  // The contract, forwarded.
  void validate(const cache_shape& s) const { impl_->validate(s); }
  void bind(const cache_shape& s, index_t layer) { impl_->bind(s, layer); }
  void validate_append(const layer_info& l, index_t tokens, const append_extras& x) const {
    impl_->validate_append(l, tokens, x);
  }
  bool shares_heads() const { return impl_->shares_heads(); }
  bool scores_tokens() const { return impl_->scores_tokens(); }
  bool wants_appends() const { return impl_->wants_appends(); }
  void plan(const layer_info& l, compress_reason why, layer_plan& out) const noexcept { impl_->plan(l, why, out); }
  template <class T>
  void score(const head_data<T>& h, const compress_plan& p, index_t c, score_t* out) const noexcept {
    impl_->score(h, p, c, out);
  }
  template <class T>
  void score_region(const head_data<T>& h, const compress_plan& p, score_t* out) const noexcept {
    impl_->score_region(h, p, out);
  }
  template <class T>
  void on_append(const head_data<T>& h, index_t first, index_t count, const append_extras& x) noexcept {
    impl_->on_append(h, first, count, x);
  }
  void on_compact(index_t head, const compaction& c) noexcept { impl_->on_compact(head, c); }

 private:
  struct concept_t {
    virtual ~concept_t() = default;
    virtual std::unique_ptr<concept_t> clone() const = 0;
    virtual const char* name() const = 0;
    virtual const std::type_info& type() const = 0;
    virtual void* get() = 0;
    virtual const void* get() const = 0;
    virtual void validate(const cache_shape&) const = 0;
    virtual void bind(const cache_shape&, index_t) = 0;
    virtual void validate_append(const layer_info&, index_t, const append_extras&) const = 0;
    virtual bool shares_heads() const = 0;
    virtual bool scores_tokens() const = 0;
    virtual bool wants_appends() const = 0;
    virtual void plan(const layer_info&, compress_reason, layer_plan&) const noexcept = 0;
    virtual void score(const head_data<float>&, const compress_plan&, index_t, score_t*) const noexcept = 0;
    virtual void score(const head_data<f16>&, const compress_plan&, index_t, score_t*) const noexcept = 0;
    virtual void score(const head_data<bf16>&, const compress_plan&, index_t, score_t*) const noexcept = 0;
    virtual void score_region(const head_data<float>&, const compress_plan&, score_t*) const noexcept = 0;
    virtual void score_region(const head_data<f16>&, const compress_plan&, score_t*) const noexcept = 0;
    virtual void score_region(const head_data<bf16>&, const compress_plan&, score_t*) const noexcept = 0;
    virtual void on_append(const head_data<float>&, index_t, index_t, const append_extras&) noexcept = 0;
    virtual void on_append(const head_data<f16>&, index_t, index_t, const append_extras&) noexcept = 0;
    virtual void on_append(const head_data<bf16>&, index_t, index_t, const append_extras&) noexcept = 0;
    virtual void on_compact(index_t, const compaction&) noexcept = 0;
  };

  template <class P>
  struct model final : concept_t {
    explicit model(P p) : policy(std::move(p)) {}
    std::unique_ptr<concept_t> clone() const override { return std::make_unique<model>(policy); }
    const char* name() const override { return P::kName; }
    const std::type_info& type() const override { return typeid(P); }
    void* get() override { return &policy; }
    const void* get() const override { return &policy; }
    void validate(const cache_shape& s) const override { policy_ops::validate(policy, s); }
    void bind(const cache_shape& s, index_t layer) override { policy_ops::bind(policy, s, layer); }
    void validate_append(const layer_info& l, index_t t, const append_extras& x) const override {
      policy_ops::validate_append(policy, l, t, x);
    }
    bool shares_heads() const override { return policy_ops::shares_heads(policy); }
    bool scores_tokens() const override { return policy_ops::scores_tokens(policy); }
    bool wants_appends() const override {
      return policy_traits::has_on_append<P, float>::value || policy_traits::has_on_append<P, f16>::value ||
             policy_traits::has_on_append<P, bf16>::value;
    }
    void plan(const layer_info& l, compress_reason why, layer_plan& out) const noexcept override {
      policy.plan(l, why, out);
    }
    void score(const head_data<float>& h, const compress_plan& p, index_t c, score_t* o) const noexcept override {
      policy.score(h, p, c, o);
    }
    void score(const head_data<f16>& h, const compress_plan& p, index_t c, score_t* o) const noexcept override {
      policy.score(h, p, c, o);
    }
    void score(const head_data<bf16>& h, const compress_plan& p, index_t c, score_t* o) const noexcept override {
      policy.score(h, p, c, o);
    }
    void score_region(const head_data<float>& h, const compress_plan& p, score_t* o) const noexcept override {
      policy_ops::score_region<float>(policy, h, p, o);
    }
    void score_region(const head_data<f16>& h, const compress_plan& p, score_t* o) const noexcept override {
      policy_ops::score_region<f16>(policy, h, p, o);
    }
    void score_region(const head_data<bf16>& h, const compress_plan& p, score_t* o) const noexcept override {
      policy_ops::score_region<bf16>(policy, h, p, o);
    }
    void on_append(const head_data<float>& h, index_t f, index_t n, const append_extras& x) noexcept override {
      policy_ops::on_append<float>(policy, h, f, n, x);
    }
    void on_append(const head_data<f16>& h, index_t f, index_t n, const append_extras& x) noexcept override {
      policy_ops::on_append<f16>(policy, h, f, n, x);
    }
    void on_append(const head_data<bf16>& h, index_t f, index_t n, const append_extras& x) noexcept override {
      policy_ops::on_append<bf16>(policy, h, f, n, x);
    }
    void on_compact(index_t head, const compaction& c) noexcept override { policy_ops::on_compact(policy, head, c); }

    P policy;
  };

  std::unique_ptr<concept_t> impl_;
};

/// \brief Parameters for make_policy. Unset fields take the chosen policy's defaults; fields
/// a policy does not use are ignored.
struct policy_spec {
  std::optional<index_t> sink;            ///< lagkv, l2norm-chunked: 16; streaming: 4; others: 0
  std::optional<index_t> lag;             ///< lagkv, l2norm-chunked: 1024
  std::optional<double> ratio;            ///< lagkv, l2norm-chunked: 0.5 per chunk; l2norm, random: 0.5 overall
  std::optional<double> score_v_ratio;    ///< lagkv: 1
  std::optional<index_t> budget;          ///< l2norm, h2o, random: slots per head (takes precedence over ratio)
  std::optional<index_t> window;          ///< l2norm, h2o, random: 0; streaming: 1020
  std::optional<index_t> interval;        ///< budget policies: 1
  std::optional<std::uint64_t> seed;      ///< random: 0
  bool share_heads = false;               ///< l2norm, h2o, random: AdaKV head-wise budget
  index_t min_per_head = 0;               ///< with share_heads
  gqa_reduce reduce = gqa_reduce::sum;    ///< h2o
  std::vector<index_t> skip_layers;       ///< l2norm, l2norm-chunked
};

/// Names make_policy accepts, '|'-separated.
inline const char* policy_names() { return "none|lagkv|l2norm|l2norm-chunked|h2o|streaming|random"; }

namespace detail {
template <class B>
void fill_budget(B& b, const policy_spec& s) {
  b.sink = s.sink.value_or(0);
  b.window = s.window.value_or(0);
  b.budget = s.budget.value_or(0);
  if (s.ratio) b.ratio = *s.ratio;
  b.interval = s.interval.value_or(1);
  b.share_heads = s.share_heads;
  b.min_per_head = s.min_per_head;
}
}  // namespace detail

/// \brief Builds a built-in policy by name. \throws lagkv::error for an unknown name or
/// invalid parameters (the message names the parameter and its value).
inline any_policy make_policy(const std::string& name, const policy_spec& s = {}) {
  if (name == "none") return no_eviction{};
  if (name == "lagkv") {
    lagkv_params p;
    p.sink = s.sink.value_or(p.sink);
    p.lag = s.lag.value_or(p.lag);
    p.ratio = s.ratio.value_or(p.ratio);
    p.score_v_ratio = s.score_v_ratio.value_or(p.score_v_ratio);
    return lagkv_policy(p);
  }
  if (name == "l2norm") {
    l2norm_params p;
    detail::fill_budget(p, s);
    p.skip_layers = s.skip_layers;
    return l2norm_policy(p);
  }
  if (name == "l2norm-chunked") {
    l2norm_chunked_params p;
    p.sink = s.sink.value_or(p.sink);
    p.lag = s.lag.value_or(p.lag);
    p.ratio = s.ratio.value_or(p.ratio);
    p.skip_layers = s.skip_layers;
    return l2norm_chunked_policy(p);
  }
  if (name == "h2o") {
    h2o_params p;
    detail::fill_budget(p, s);
    p.reduce = s.reduce;
    LAGKV_CHECK(p.budget > 0 || s.ratio.has_value(), "budget=", p.budget, ": h2o needs a budget > 0 (or a ratio)");
    return h2o_policy(p);
  }
  if (name == "streaming") {
    streaming_params p;
    p.sink = s.sink.value_or(p.sink);
    p.window = s.window.value_or(p.window);
    p.interval = s.interval.value_or(p.interval);
    return streaming_policy(p);
  }
  if (name == "random") {
    random_params p;
    detail::fill_budget(p, s);
    p.seed = s.seed.value_or(0);
    return random_policy(p);
  }
  detail::throw_error("policy=", name, ": unknown (expected one of ", policy_names(), ")");
}

}  // namespace lagkv
