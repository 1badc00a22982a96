#pragma once
// A small kv_cache that has already compressed, with a snapshot of everything observable: the
// subject of the "a failed call changes nothing" contract (test_cache's StrongGuarantee and
// test_reliability's BadInput share it, so both check the same state).
#include <lagkv/cache.hpp>
#include <lagkv/policy/any.hpp>
#include <lagkv/policy/h2o.hpp>
#include <lagkv/policy/lagkv.hpp>

#include <cstring>
#include <vector>

#include "support/plain_cache.hpp"

namespace lagkv_test {

/// Layer 0: H2O (needs attention with every append), layer 1: LagKV, layer 2: empty with no
/// eviction. Both used layers have compressed already, so the snapshot holds the state a
/// compression leaves behind (compacted rows, H2O scores, LagKV counters), not an empty cache.
struct contract_fixture {
  static constexpr lagkv::index_t kLayers = 3, kHeads = 2, kHeadDim = 8, kCapacity = 64;

  lagkv::kv_cache<float> cache;
  std::vector<float> k, q;

  contract_fixture() : cache(config(), lagkv::any_policy()) {
    using lagkv::index_t;
    lagkv::h2o_params hp;
    hp.budget = 20;
    hp.window = 4;
    cache.set_policy(0, lagkv::h2o_policy(hp));
    lagkv::lagkv_params lp;
    lp.sink = 2;
    lp.lag = 4;
    cache.set_policy(1, lagkv::lagkv_policy(lp));
    k = random_kv(4, kHeads, kCapacity, kHeadDim);
    q = random_kv(5, kHeads, kCapacity, kHeadDim);
    for (index_t l = 0; l < 2; ++l) {
      cache.append(l, input(0, 24), input(0, 24), extras(0));
      for (index_t t = 24; t < 30; ++t) cache.append(l, input(t, 1), input(t, 1), extras(t));
    }
  }

  static lagkv::cache_config config() {
    lagkv::cache_config c;
    c.layers = kLayers;
    c.kv_heads = kHeads;
    c.head_dim = kHeadDim;
    c.capacity = kCapacity;
    return c;
  }
  /// Tokens [first, first + n) of `k`, as an hsd input (V appends reuse it).
  lagkv::kv_input<float> input(lagkv::index_t first, lagkv::index_t n) const {
    return lagkv::kv_input<float>{k.data() + first * kHeadDim, n, lagkv::kv_layout::hsd(), kCapacity};
  }
  /// Queries from token `first` of `q`, one query head per KV head.
  lagkv::append_extras extras(lagkv::index_t first) const {
    lagkv::append_extras x;
    x.attention.q_heads = kHeads;
    x.attention.queries = q.data() + first * kHeadDim;
    x.attention.q_head_stride = kCapacity * kHeadDim;
    x.attention.q_token_stride = kHeadDim;
    return x;
  }

  /// Everything observable: all K/V bytes (used or not), lengths, positions, counters, policy state.
  std::vector<double> snapshot() const {
    using lagkv::index_t;
    std::vector<double> s;
    for (index_t l = 0; l < kLayers; ++l) {
      const auto m = cache.memory(l);
      for (index_t i = 0; i < kHeads * kCapacity * kHeadDim; ++i) s.push_back(m.k[i]), s.push_back(m.v[i]);
      s.push_back(static_cast<double>(cache.tokens_seen(l)));
      s.push_back(static_cast<double>(cache.compressions(l)));
      s.push_back(cache.skipped(l) ? 1.0 : 0.0);
      for (index_t h = 0; h < kHeads; ++h) {
        s.push_back(static_cast<double>(cache.length(l, h)));
        for (index_t p : cache.positions(l, h)) s.push_back(static_cast<double>(p));
      }
    }
    const auto* h2o = cache.policy(0).target<lagkv::h2o_policy>();
    for (index_t h = 0; h < kHeads; ++h) s.insert(s.end(), h2o->accumulated(h), h2o->accumulated(h) + kCapacity);
    const auto* lag = cache.policy(1).target<lagkv::lagkv_policy>();
    for (index_t h = 0; h < kHeads; ++h) s.push_back(static_cast<double>(lag->compressed(h)));
    s.push_back(std::strcmp(cache.policy(2).name(), "none") == 0 ? 1.0 : 0.0);
    return s;
  }
};

}  // namespace lagkv_test
