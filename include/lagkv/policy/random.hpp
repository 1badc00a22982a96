#pragma once
/// \file policy/random.hpp
/// \brief Random eviction, the baseline every paper compares against, made reproducible.
///
/// A slot's score is a hash of (seed, layer, head, original position) mapped to [0, 1), so the
/// kept set depends only on the seed and the token, never on the append schedule, the layout
/// or the thread that compresses; the schedule is the budget schedule (policy/budget.hpp).
/// Defaults: ratio 0.5, no sink, no window, seed 0.

#include <cstdint>

#include "lagkv/policy/budget.hpp"
#include "lagkv/policy/policy.hpp"

namespace lagkv {

/// \brief Random-eviction parameters.
struct random_params : budget_params {
  std::uint64_t seed = 0;
  random_params() { ratio = 0.5; }
};

/// \brief The random policy (see file comment).
class random_policy : public policy_base {
 public:
  static constexpr const char* kName = "random";

  /// \throws lagkv::error when `params` are invalid.
  explicit random_policy(const random_params& params = {}) : p_(params) { p_.validate(); }
  const random_params& params() const { return p_; }

  /// The score of the token at original `position` of (layer, head): uniform in [0, 1) with
  /// 24 random bits (exact in float), a pure function of its arguments.
  static score_t token_score(std::uint64_t seed, index_t layer, index_t head, index_t position) noexcept {
    std::uint64_t h = mix(seed);
    h = mix(h ^ static_cast<std::uint64_t>(layer));
    h = mix(h ^ static_cast<std::uint64_t>(head));
    h = mix(h ^ static_cast<std::uint64_t>(position));
    return static_cast<score_t>(h >> 40) * (1.0f / 16777216.0f);
  }

  void validate(const cache_shape&) const { p_.validate(); }
  bool shares_heads() const { return p_.share_heads; }
  void plan(const layer_info& layer, compress_reason why, layer_plan& out) const noexcept {
    plan_budget(p_, layer, why, out);
  }
  template <class T>
  void score(const head_data<T>& head, const compress_plan& plan, index_t c, score_t* out) const noexcept {
    const index_t* pos = head.positions + plan.begin + c * plan.chunk;
    for (index_t i = 0; i < plan.chunk; ++i) out[i] = token_score(p_.seed, head.layer, head.head, pos[i]);
  }

 private:
  // splitmix64's finaliser: a bijection with full avalanche, enough for an eviction baseline.
  static std::uint64_t mix(std::uint64_t x) noexcept {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
  }

  random_params p_;
};

}  // namespace lagkv
