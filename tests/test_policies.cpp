// Every built-in policy through kv_cache against the plain vector-of-rows model
// (support/plain_cache.hpp) on random append schedules, the invariants every policy keeps, and
// the policy contract itself (traits, any_policy, make_policy, parameter validation).
#include <gtest/gtest.h>
#include <lagkv/cache.hpp>
#include <lagkv/policy/any.hpp>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "support/plain_cache.hpp"

namespace {

using lagkv::index_t;
using lagkv_test::plain_config;

struct policy_case {
  std::string name;
  plain_config cfg;
};

plain_config cfg_of(const std::string& policy) {
  plain_config c;
  c.policy = policy;
  c.sink = 0;
  c.window = 0;
  c.ratio = 0.5;
  return c;
}

std::vector<policy_case> policy_cases() {
  std::vector<policy_case> cases;
  auto add = [&](const std::string& name, plain_config c) { cases.push_back({name, c}); };
  plain_config c;
  c = cfg_of("lagkv"), c.sink = 4, c.lag = 16, c.ratio = 0.5, add("lagkv", c);
  c = cfg_of("lagkv"), c.sink = 0, c.lag = 8, c.ratio = 0.25, c.score_v_ratio = 0.0, add("lagkv_keys_only_no_sink", c);
  c = cfg_of("l2norm-chunked"), c.sink = 2, c.lag = 16, c.ratio = 0.5, add("l2norm_chunked", c);
  c = cfg_of("l2norm"), c.budget = 64, c.sink = 4, c.window = 8, add("l2norm_budget", c);
  c = cfg_of("l2norm"), c.ratio = 0.5, c.sink = 2, c.window = 4, add("l2norm_ratio", c);
  c = cfg_of("l2norm"), c.budget = 48, c.interval = 8, c.sink = 2, c.window = 6, add("l2norm_every_8_steps", c);
  c = cfg_of("l2norm"), c.budget = 40, c.share_heads = true, c.min_per_head = 16, c.sink = 2, c.window = 4,
  add("l2norm_adakv", c);
  c = cfg_of("h2o"), c.budget = 48, c.window = 8, c.sink = 2, add("h2o", c);
  c = cfg_of("h2o"), c.budget = 40, c.window = 4, c.reduce = lagkv::gqa_reduce::max, add("h2o_gqa_max", c);
  c = cfg_of("h2o"), c.budget = 40, c.window = 4, c.reduce = lagkv::gqa_reduce::mean, add("h2o_gqa_mean", c);
  c = cfg_of("h2o"), c.budget = 40, c.window = 4, c.share_heads = true, c.min_per_head = 12, add("h2o_adakv", c);
  c = cfg_of("streaming"), c.sink = 4, c.window = 28, add("streaming", c);
  c = cfg_of("streaming"), c.sink = 1, c.window = 20, c.interval = 5, add("streaming_every_5_steps", c);
  c = cfg_of("random"), c.budget = 50, c.seed = 7, c.sink = 2, c.window = 4, add("random_budget", c);
  c = cfg_of("random"), c.ratio = 0.5, c.seed = 11, add("random_ratio", c);
  c = cfg_of("random"), c.budget = 40, c.share_heads = true, c.min_per_head = 10, c.seed = 3, add("random_adakv", c);
  return cases;
}

constexpr index_t kHeads = 3, kQHeads = 6, kDim = 16, kTokens = 300;

struct run_data {
  std::vector<float> k, v, q;
  std::vector<index_t> steps;
};

run_data make_data(std::uint32_t seed) {
  run_data d;
  d.k = lagkv_test::random_kv(seed, kHeads, kTokens, kDim);
  d.v = lagkv_test::random_kv(seed + 100, kHeads, kTokens, kDim);
  d.q = lagkv_test::random_kv(seed + 200, kQHeads, kTokens, kDim);
  d.steps = lagkv_test::random_schedule(seed, kTokens);
  return d;
}

lagkv::append_extras queries_at(const run_data& d, index_t first) {
  lagkv::append_extras x;
  x.attention.q_heads = kQHeads;
  x.attention.queries = d.q.data() + first * kDim;
  x.attention.q_head_stride = kTokens * kDim;
  x.attention.q_token_stride = kDim;
  return x;
}

lagkv::kv_input<float> slice(const std::vector<float>& x, index_t first, index_t n) {
  return lagkv::kv_input<float>{x.data() + first * kDim, n, lagkv::kv_layout::hsd(), kTokens};
}

class PolicyVsPlain : public ::testing::TestWithParam<std::tuple<policy_case, std::uint32_t>> {};

TEST_P(PolicyVsPlain, SameSlotsPositionsAndRowsAtEveryStep) {
  const auto& [pc, seed] = GetParam();
  const run_data d = make_data(seed);
  lagkv::cache_config cfg;
  cfg.kv_heads = kHeads;
  cfg.head_dim = kDim;
  cfg.capacity = kTokens;
  lagkv::kv_cache<float> cache(cfg, pc.cfg.make());
  lagkv_test::plain_layer<float> plain(pc.cfg, kHeads, kDim);
  index_t first = 0;
  for (std::size_t step = 0; step < d.steps.size(); ++step) {
    const index_t n = d.steps[step];
    cache.append(0, slice(d.k, first, n), slice(d.v, first, n), queries_at(d, first));
    plain.append(lagkv_test::rows_of(d.k.data(), kHeads, kTokens, kDim, first, n),
                 lagkv_test::rows_of(d.v.data(), kHeads, kTokens, kDim, first, n),
                 lagkv_test::queries_of(d.q, kQHeads, kTokens, kDim, first, n));
    first += n;
    for (index_t h = 0; h < kHeads; ++h) {
      ASSERT_EQ(cache.length(0, h), plain.length(h)) << "step " << step << " head " << h;
      ASSERT_EQ(cache.positions(0, h).to_vector(), plain.positions(h)) << "step " << step << " head " << h;
    }
  }
  for (index_t h = 0; h < kHeads; ++h) {
    const auto keys = cache.keys(0, h);
    const auto values = cache.values(0, h);
    const auto& rows = plain.rows(h);
    for (index_t s = 0; s < keys.tokens(); ++s)
      for (index_t c = 0; c < kDim; ++c) {
        ASSERT_EQ(keys(s, c), rows[static_cast<std::size_t>(s)].k[static_cast<std::size_t>(c)]) << "slot " << s;
        ASSERT_EQ(values(s, c), rows[static_cast<std::size_t>(s)].v[static_cast<std::size_t>(c)]) << "slot " << s;
      }
  }
}

class PolicyInvariants : public ::testing::TestWithParam<std::tuple<policy_case, std::uint32_t>> {};

// After every append: positions strictly ascending; the sink and the recent window (LagKV: the
// last lag tokens) are present; each slot's K and V rows are the input rows of its position.
TEST_P(PolicyInvariants, SinksWindowOrderAndRowsMovedTogether) {
  const auto& [pc, seed] = GetParam();
  const run_data d = make_data(seed + 1000);
  lagkv::cache_config cfg;
  cfg.kv_heads = kHeads;
  cfg.head_dim = kDim;
  cfg.capacity = kTokens;
  lagkv::kv_cache<float> cache(cfg, pc.cfg.make());
  const index_t window = pc.cfg.chunked() ? pc.cfg.lag : pc.cfg.window;
  index_t first = 0;
  for (const index_t n : d.steps) {
    cache.append(0, slice(d.k, first, n), slice(d.v, first, n), queries_at(d, first));
    first += n;
    for (index_t h = 0; h < kHeads; ++h) {
      const auto pos = cache.positions(0, h);
      for (index_t i = 1; i < pos.size(); ++i) ASSERT_LT(pos[i - 1], pos[i]);
      for (index_t i = 0; i < std::min(pc.cfg.sink, first); ++i) ASSERT_EQ(pos[i], i) << "sink slot " << i;
      const index_t w = std::min(window, first);
      for (index_t i = 0; i < w; ++i) ASSERT_EQ(pos[pos.size() - w + i], first - w + i) << "window slot " << i;
      const auto keys = cache.keys(0, h);
      const auto values = cache.values(0, h);
      for (index_t s = 0; s < pos.size(); ++s)
        for (index_t c = 0; c < kDim; ++c) {
          const std::size_t at = static_cast<std::size_t>((h * kTokens + pos[s]) * kDim + c);
          ASSERT_EQ(keys(s, c), d.k[at]);
          ASSERT_EQ(values(s, c), d.v[at]);
        }
    }
  }
  EXPECT_EQ(cache.tokens_seen(0), kTokens);
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<policy_case, std::uint32_t>>& info) {
  return std::get<0>(info.param).name + "_seed" + std::to_string(std::get<1>(info.param));
}

INSTANTIATE_TEST_SUITE_P(Policies, PolicyVsPlain,
                         ::testing::Combine(::testing::ValuesIn(policy_cases()), ::testing::Values(1u, 2u, 3u)),
                         case_name);
INSTANTIATE_TEST_SUITE_P(Policies, PolicyInvariants,
                         ::testing::Combine(::testing::ValuesIn(policy_cases()), ::testing::Values(1u, 2u)), case_name);

// ---- Policy-specific behaviour ------------------------------------------------------------

lagkv::cache_config small_config(index_t heads = kHeads, index_t capacity = kTokens) {
  lagkv::cache_config cfg;
  cfg.kv_heads = heads;
  cfg.head_dim = kDim;
  cfg.capacity = capacity;
  return cfg;
}

TEST(LagkvPolicy, ScheduleCompressesAtCompressedPlusTwoLagAndNeverRescores) {
  lagkv::lagkv_params p;
  p.sink = 4;
  p.lag = 8;
  p.ratio = 0.5;
  lagkv::kv_cache<float, lagkv::lagkv_policy> cache(small_config(1, 64), lagkv::lagkv_policy(p));
  const auto k = lagkv_test::random_kv(5, 1, 64, kDim);
  std::vector<index_t> lengths, compressed;
  for (index_t t = 0; t < 40; ++t) {
    cache.append(0, k.data() + t * kDim, k.data() + t * kDim, 1);
    lengths.push_back(cache.length(0, 0));
    compressed.push_back(cache.policy(0).compressed(0));
  }
  // First compression at 4 + 16 = 20 tokens: one chunk scored (8 -> 4): 16 left, compressed = 8.
  EXPECT_EQ(lengths[18], 19);
  EXPECT_EQ(compressed[18], 4);
  EXPECT_EQ(lengths[19], 16);
  EXPECT_EQ(compressed[19], 8);
  // Next at compressed + 16 = 24 slots, i.e. 8 more tokens later; the compressed prefix is not
  // rescored, only the chunk after it.
  EXPECT_EQ(lengths[26], 23);
  EXPECT_EQ(lengths[27], 20);
  EXPECT_EQ(compressed[27], 12);
  EXPECT_EQ(lengths[35], 24);  // ... and at 12 + 16 = 28 slots
  EXPECT_EQ(compressed[39], 16);
  EXPECT_EQ(cache.compressions(0), 3);
}

TEST(LagkvPolicy, ExplicitCompressOfAWholePromptEqualsTheScorer) {
  lagkv::lagkv_params p;
  p.sink = 3;
  p.lag = 8;
  p.ratio = 0.375;
  auto cfg = small_config(2, 61);
  cfg.auto_compress = false;
  lagkv::kv_cache<float> cache(cfg, lagkv::lagkv_policy(p));
  const auto k = lagkv_test::random_kv(8, 2, 61, kDim), v = lagkv_test::random_kv(9, 2, 61, kDim);
  cache.append(0, k.data(), v.data(), 61);
  EXPECT_EQ(cache.length(0, 0), 61);  // nothing until asked
  EXPECT_TRUE(cache.compress(0));
  for (index_t h = 0; h < 2; ++h) {
    const auto r = lagkv::lagkv_score_head(lagkv::view_hsd<const float>(k.data(), 2, 61, kDim, h),
                                           lagkv::view_hsd<const float>(v.data(), 2, 61, kDim, h), p);
    EXPECT_EQ(cache.length(0, h), r.cache_len);
    const auto pos = cache.positions(0, h).to_vector();
    std::vector<index_t> kept(pos.begin() + p.sink, pos.begin() + p.sink + static_cast<index_t>(r.kept.size()));
    EXPECT_EQ(kept, r.kept);
  }
  EXPECT_FALSE(cache.compress(0));  // nothing left to score
}

TEST(BudgetPolicies, RatioModePressesPrefillChunksOnly) {
  lagkv::l2norm_params p;
  p.ratio = 0.5;
  lagkv::kv_cache<float, lagkv::l2norm_policy> cache(small_config(1, 64), lagkv::l2norm_policy(p));
  const auto k = lagkv_test::random_kv(1, 1, 64, kDim);
  cache.append(0, k.data(), k.data(), 20);
  EXPECT_EQ(cache.length(0, 0), 10);
  for (index_t t = 20; t < 30; ++t) cache.append(0, k.data() + t * kDim, k.data() + t * kDim, 1);
  EXPECT_EQ(cache.length(0, 0), 20);  // decode tokens are not pressed
  EXPECT_TRUE(cache.compress(0));     // an explicit call is
  EXPECT_EQ(cache.length(0, 0), 10);
}

TEST(BudgetPolicies, IntervalCompressesEveryNthAppendOnly) {
  lagkv::streaming_params p;
  p.sink = 2;
  p.window = 6;
  p.interval = 4;
  lagkv::kv_cache<float, lagkv::streaming_policy> cache(small_config(1, 64), lagkv::streaming_policy(p));
  const auto k = lagkv_test::random_kv(1, 1, 64, kDim);
  std::vector<index_t> lengths;
  for (index_t t = 0; t < 16; ++t) {
    cache.append(0, k.data() + t * kDim, k.data() + t * kDim, 1);
    lengths.push_back(cache.length(0, 0));
  }
  EXPECT_EQ(lengths, (std::vector<index_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 8, 9, 10, 11, 8}));
  EXPECT_EQ(cache.positions(0, 0).to_vector(), (std::vector<index_t>{0, 1, 10, 11, 12, 13, 14, 15}));
}

TEST(BudgetPolicies, AdaKvSharesTheLayerBudgetUnevenlyWithAFloorPerHead) {
  lagkv::l2norm_params p;
  p.budget = 10;
  p.share_heads = true;
  p.min_per_head = 4;
  lagkv::kv_cache<float, lagkv::l2norm_policy> cache(small_config(2, 40), lagkv::l2norm_policy(p));
  // Head 0: tiny keys (all kept by norm), head 1: large keys.
  std::vector<float> k(2 * 20 * kDim);
  for (index_t t = 0; t < 20; ++t)
    for (index_t c = 0; c < kDim; ++c) {
      k[static_cast<std::size_t>((0 * 20 + t) * kDim + c)] = 0.01f * static_cast<float>(t + 1);
      k[static_cast<std::size_t>((1 * 20 + t) * kDim + c)] = 10.0f + static_cast<float>(t);
    }
  cache.append(0, k.data(), k.data(), 20);
  EXPECT_EQ(cache.length(0, 0) + cache.length(0, 1), 20);
  EXPECT_EQ(cache.length(0, 1), 4);  // the floor
  EXPECT_EQ(cache.length(0, 0), 16);
  EXPECT_EQ(cache.positions(0, 1).to_vector(), (std::vector<index_t>{0, 1, 2, 3}));  // lowest norms
}

TEST(L2normPolicy, SkipLayersLeavesThemUncompressed) {
  lagkv::l2norm_params p;
  p.budget = 8;
  p.skip_layers = {0};
  auto cfg = small_config(1, 32);
  cfg.layers = 2;
  lagkv::kv_cache<float, lagkv::l2norm_policy> cache(cfg, lagkv::l2norm_policy(p));
  const auto k = lagkv_test::random_kv(1, 1, 32, kDim);
  for (index_t l = 0; l < 2; ++l) cache.append(l, k.data(), k.data(), 20);
  EXPECT_EQ(cache.length(0, 0), 20);
  EXPECT_EQ(cache.length(1, 0), 8);
}

TEST(H2oPolicy, EngineProbabilitiesOrTheirSumsGiveTheSameCacheAsQueries) {
  lagkv::h2o_params p;
  p.budget = 24;
  p.window = 4;
  p.sink = 1;
  const run_data d = make_data(77);
  lagkv::kv_cache<float, lagkv::h2o_policy> from_q(small_config(), lagkv::h2o_policy(p));
  lagkv::kv_cache<float, lagkv::h2o_policy> from_p(small_config(), lagkv::h2o_policy(p));
  lagkv::kv_cache<float, lagkv::h2o_policy> from_sums(small_config(), lagkv::h2o_policy(p));
  index_t first = 0;
  for (const index_t n : d.steps) {
    from_q.append(0, slice(d.k, first, n), slice(d.v, first, n), queries_at(d, first));
    // The engine's side: softmax of its queries over its own cache (as after the append).
    const index_t len_before = from_p.length(0, 0), stride = len_before + n;
    std::vector<float> probs(static_cast<std::size_t>(kQHeads * n * stride), 0.0f);
    std::vector<float> k_after(static_cast<std::size_t>(stride * kDim));
    for (index_t j = 0; j < kQHeads; ++j) {
      const index_t h = j / (kQHeads / kHeads);
      const auto keys = from_p.keys(0, h);
      for (index_t s = 0; s < stride; ++s)
        for (index_t c = 0; c < kDim; ++c)
          k_after[static_cast<std::size_t>(s * kDim + c)] =
              s < len_before ? keys(s, c) : d.k[static_cast<std::size_t>((h * kTokens + first + s - len_before) * kDim + c)];
      std::vector<double> row(static_cast<std::size_t>(stride));
      for (index_t i = 0; i < n; ++i) {
        lagkv::reference::attention_probs<float>(d.q.data() + (j * kTokens + first + i) * kDim,
                                                 lagkv::kv_view<const float>(k_after.data(), stride, kDim, kDim),
                                                 len_before + i + 1, row.data());
        for (index_t s = 0; s <= len_before + i; ++s)
          probs[static_cast<std::size_t>((j * n + i) * stride + s)] = static_cast<float>(row[static_cast<std::size_t>(s)]);
      }
    }
    lagkv::append_extras x;
    x.attention.q_heads = kQHeads;
    x.attention.probs = probs.data();
    x.attention.row_stride = stride;
    from_p.append(0, slice(d.k, first, n), slice(d.v, first, n), x);
    // A fused attention kernel returns per-slot sums over the appended queries instead.
    std::vector<float> sums(static_cast<std::size_t>(kQHeads * stride), 0.0f);
    for (index_t j = 0; j < kQHeads; ++j)
      for (index_t s = 0; s < stride; ++s) {
        double total = 0.0;
        for (index_t i = 0; i < n; ++i) total += probs[static_cast<std::size_t>((j * n + i) * stride + s)];
        sums[static_cast<std::size_t>(j * stride + s)] = static_cast<float>(total);
      }
    lagkv::append_extras xs;
    xs.attention.q_heads = kQHeads;
    xs.attention.prob_sums = sums.data();
    xs.attention.row_stride = stride;
    from_sums.append(0, slice(d.k, first, n), slice(d.v, first, n), xs);
    first += n;
    for (index_t h = 0; h < kHeads; ++h) {
      ASSERT_EQ(from_p.positions(0, h).to_vector(), from_q.positions(0, h).to_vector()) << "after token " << first;
      ASSERT_EQ(from_sums.positions(0, h).to_vector(), from_q.positions(0, h).to_vector()) << "after token " << first;
    }
  }
}

TEST(H2oPolicy, AccumulatedScoresMoveWithTheirSlots) {
  lagkv::h2o_params p;
  p.budget = 16;
  p.window = 2;
  const run_data d = make_data(5);
  lagkv::kv_cache<float, lagkv::h2o_policy> cache(small_config(), lagkv::h2o_policy(p));
  lagkv_test::plain_layer<float> plain([&] {
    plain_config c = cfg_of("h2o");
    c.budget = 16;
    c.window = 2;
    return c;
  }(), kHeads, kDim);
  index_t first = 0;
  for (const index_t n : d.steps) {
    cache.append(0, slice(d.k, first, n), slice(d.v, first, n), queries_at(d, first));
    plain.append(lagkv_test::rows_of(d.k.data(), kHeads, kTokens, kDim, first, n),
                 lagkv_test::rows_of(d.v.data(), kHeads, kTokens, kDim, first, n),
                 lagkv_test::queries_of(d.q, kQHeads, kTokens, kDim, first, n));
    first += n;
  }
  for (index_t h = 0; h < kHeads; ++h)
    for (index_t s = 0; s < cache.length(0, h); ++s)
      EXPECT_NEAR(cache.policy(0).accumulated(h)[s], plain.rows(h)[static_cast<std::size_t>(s)].acc, 1e-12);
}

TEST(RandomPolicy, SameSeedSameCacheOtherSeedOtherCache) {
  auto run = [](std::uint64_t seed) {
    lagkv::random_params p;
    p.budget = 20;
    p.seed = seed;
    lagkv::kv_cache<float> cache(small_config(1, 100), lagkv::random_policy(p));
    const auto k = lagkv_test::random_kv(1, 1, 100, kDim);
    cache.append(0, k.data(), k.data(), 100);
    return cache.positions(0, 0).to_vector();
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
  EXPECT_EQ(lagkv::random_policy::token_score(1, 2, 3, 4), lagkv::random_policy::token_score(1, 2, 3, 4));
  const float s = lagkv::random_policy::token_score(9, 0, 0, 123);
  EXPECT_GE(s, 0.0f);
  EXPECT_LT(s, 1.0f);
}

TEST(StreamingPolicy, NeverScoresAndKeepsSinkPlusWindow) {
  lagkv::kv_cache<float> cache(small_config(1, 64), lagkv::streaming_policy({3, 5, 1}));
  index_t events = 0;
  cache.set_observer([&](const lagkv::compress_event& e) {
    ++events;
    EXPECT_EQ(e.scores, nullptr);
    EXPECT_EQ(e.kept_count, 0);
  });
  const auto k = lagkv_test::random_kv(1, 1, 64, kDim);
  cache.append(0, k.data(), k.data(), 30);
  EXPECT_EQ(events, 1);
  EXPECT_EQ(cache.positions(0, 0).to_vector(), (std::vector<index_t>{0, 1, 2, 25, 26, 27, 28, 29}));
}

// ---- The contract ------------------------------------------------------------------------

// A user policy written against the documented contract: keeps even positions of each chunk
// of 8 once a head holds 16 slots (scores: 1 for even positions).
struct keep_even : lagkv::policy_base {
  static constexpr const char* kName = "keep-even";
  void plan(const lagkv::layer_info& layer, lagkv::compress_reason, lagkv::layer_plan& out) const noexcept {
    for (index_t h = 0; h < layer.kv_heads; ++h)
      if (layer.lengths[h] >= 16) out.heads[h] = lagkv::compress_plan{0, 1, 8, 4};
  }
  template <class T>
  void score(const lagkv::head_data<T>& head, const lagkv::compress_plan& p, index_t c, lagkv::score_t* out) const
      noexcept {
    for (index_t i = 0; i < p.chunk; ++i) out[i] = head.positions[p.begin + c * p.chunk + i] % 2 == 0 ? 1.0f : 0.0f;
  }
};

struct no_score_member {
  static constexpr const char* kName = "broken";
  void plan(const lagkv::layer_info&, lagkv::compress_reason, lagkv::layer_plan&) const {}
};

static_assert(lagkv::is_policy_v<lagkv::lagkv_policy>);
static_assert(lagkv::is_policy_v<lagkv::l2norm_policy, lagkv::f16>);
static_assert(lagkv::is_policy_v<lagkv::l2norm_chunked_policy, lagkv::bf16>);
static_assert(lagkv::is_policy_v<lagkv::h2o_policy>);
static_assert(lagkv::is_policy_v<lagkv::streaming_policy>);
static_assert(lagkv::is_policy_v<lagkv::random_policy>);
static_assert(lagkv::is_policy_v<lagkv::any_policy, lagkv::f16>);
static_assert(lagkv::is_policy_v<keep_even>);
static_assert(!lagkv::is_policy_v<no_score_member>);
static_assert(!lagkv::is_policy_v<int>);
static_assert(lagkv::policy_traits::has_on_append<lagkv::h2o_policy, float>::value);
static_assert(!lagkv::policy_traits::has_on_compact<no_score_member>::value);
static_assert(!lagkv::policy_traits::has_on_append<lagkv::lagkv_policy, float>::value);  // skipped per append
static_assert(lagkv::policy_traits::has_on_compact<lagkv::lagkv_policy>::value);
static_assert(!std::is_constructible_v<lagkv::any_policy, no_score_member>);
#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
static_assert(lagkv::eviction_policy<keep_even>);
static_assert(!lagkv::eviction_policy<no_score_member>);
#endif

TEST(PolicyContract, UserPolicyRunsStaticallyAndThroughAnyPolicy) {
  const auto k = lagkv_test::random_kv(1, 1, 20, kDim);
  lagkv::kv_cache<float, keep_even> direct(small_config(1, 20));
  lagkv::kv_cache<float> erased(small_config(1, 20), keep_even{});
  for (index_t t = 0; t < 20; ++t) {
    direct.append(0, k.data() + t * kDim, k.data() + t * kDim, 1);
    erased.append(0, k.data() + t * kDim, k.data() + t * kDim, 1);
  }
  // At 16 slots the first chunk [0, 8) keeps its 4 even positions (12 left); at 16 again
  // (positions 0,2,4,6,8..19) the chunk holds 0,2,4,6,8,9,10,11 and keeps 0,2,4,6.
  EXPECT_EQ(direct.positions(0, 0).to_vector(), (std::vector<index_t>{0, 2, 4, 6, 12, 13, 14, 15, 16, 17, 18, 19}));
  EXPECT_EQ(erased.positions(0, 0).to_vector(), direct.positions(0, 0).to_vector());
  EXPECT_STREQ(erased.policy(0).name(), "keep-even");
  EXPECT_NE(erased.policy(0).target<keep_even>(), nullptr);
  EXPECT_EQ(erased.policy(0).target<lagkv::lagkv_policy>(), nullptr);
}

TEST(PolicyContract, UserPolicyKeepsEvenPositions) {
  lagkv::kv_cache<float, keep_even> cache(small_config(1, 20));
  const auto k = lagkv_test::random_kv(1, 1, 20, kDim);
  cache.append(0, k.data(), k.data(), 16);
  // Chunk [0, 8) keeps its even positions; 8..15 move down behind them.
  EXPECT_EQ(cache.positions(0, 0).to_vector(), (std::vector<index_t>{0, 2, 4, 6, 8, 9, 10, 11, 12, 13, 14, 15}));
}

// A policy planning past the end of a head breaks the contract: the cache stops with a message
// (inside its noexcept mutation phase) instead of reading or writing out of bounds.
struct overreaching : lagkv::policy_base {
  static constexpr const char* kName = "overreaching";
  void plan(const lagkv::layer_info& layer, lagkv::compress_reason, lagkv::layer_plan& out) const noexcept {
    out.heads[0] = lagkv::compress_plan{0, 2, layer.lengths[0], 1};
  }
  template <class T>
  void score(const lagkv::head_data<T>&, const lagkv::compress_plan&, index_t, lagkv::score_t*) const noexcept {}
};

TEST(PolicyContractDeathTest, PlanOutsideTheHeadTerminatesWithAMessage) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  lagkv::kv_cache<float, overreaching> cache(small_config(1, 8));
  const std::vector<float> k(8 * kDim, 1.0f);
  EXPECT_DEATH(cache.append(0, k.data(), k.data(), 4),
               "policy overreaching: invalid plan for layer=0 head=0 \\(begin=0 chunks=2 chunk=4 keep=1, length=4\\)");
}

TEST(PolicyContract, AnyPolicyCopiesAreDeep) {
  lagkv::any_policy a = lagkv::make_policy("lagkv", {});
  lagkv::any_policy b = a;
  a.bind(lagkv::cache_shape{1, 2, 8, 64}, 0);
  b.bind(lagkv::cache_shape{1, 5, 8, 64}, 0);
  EXPECT_EQ(a.target<lagkv::lagkv_policy>()->compressed(1), 16);
  EXPECT_EQ(b.target<lagkv::lagkv_policy>()->compressed(4), 16);
  EXPECT_NE(a.target<lagkv::lagkv_policy>(), b.target<lagkv::lagkv_policy>());
  EXPECT_STREQ(lagkv::any_policy().name(), "none");
}

TEST(MakePolicy, BuildsEveryNameWithItsDefaults) {
  for (const char* name : {"none", "lagkv", "l2norm", "l2norm-chunked", "streaming", "random"})
    EXPECT_STREQ(lagkv::make_policy(name).name(), name);
  lagkv::policy_spec s;
  s.budget = 32;
  EXPECT_STREQ(lagkv::make_policy("h2o", s).name(), "h2o");
  const auto lag = lagkv::make_policy("lagkv").target<lagkv::lagkv_policy>()->params();
  EXPECT_EQ(lag.sink, 16);
  EXPECT_EQ(lag.lag, 1024);
  EXPECT_EQ(lag.ratio, 0.5);
  EXPECT_EQ(lag.score_v_ratio, 1.0);
  const auto st = lagkv::make_policy("streaming").target<lagkv::streaming_policy>()->params();
  EXPECT_EQ(st.sink, 4);
  EXPECT_EQ(st.window, 1020);
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const lagkv::error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(MakePolicy, ErrorsNameTheParameterAndValue) {
  EXPECT_EQ(error_of([] { lagkv::make_policy("lru"); }),
            "policy=lru: unknown (expected one of none|lagkv|l2norm|l2norm-chunked|h2o|streaming|random)");
  EXPECT_EQ(error_of([] { lagkv::make_policy("h2o"); }), "budget=0: h2o needs a budget > 0 (or a ratio)");
  lagkv::policy_spec s;
  s.budget = 10;
  s.sink = 4;
  s.window = 16;
  EXPECT_EQ(error_of([&] { lagkv::make_policy("l2norm", s); }), "budget=10: must be >= sink + window = 20");
  s = {};
  s.lag = 1;
  EXPECT_EQ(error_of([&] { lagkv::make_policy("lagkv", s); }), "lag=1: must be >= 2");
  s = {};
  s.ratio = 1.5;
  EXPECT_EQ(error_of([&] { lagkv::make_policy("random", s); }), "ratio=1.5: must be in (0, 1] (or set budget > 0)");
  s = {};
  s.budget = 8;
  s.interval = 0;
  EXPECT_EQ(error_of([&] { lagkv::make_policy("l2norm", s); }), "interval=0: must be >= 1");
  s = {};
  s.sink = 0;
  s.window = 0;
  EXPECT_EQ(error_of([&] { lagkv::make_policy("streaming", s); }), "sink + window=0: must be >= 1");
}

TEST(BudgetParams, TargetKeepsSinkAndWindowEvenBelowTheRatio) {
  lagkv::budget_params b;
  b.ratio = 0.1;
  b.sink = 4;
  b.window = 4;
  EXPECT_EQ(b.target(100), 10);
  EXPECT_EQ(b.target(50), 8);
  EXPECT_EQ(b.target(5), 5);
  b.budget = 30;
  EXPECT_EQ(b.target(100), 30);
  EXPECT_EQ(b.target(20), 20);
}

}  // namespace
