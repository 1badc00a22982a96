// kv_cache: golden LagKV trajectories and score cases through the container in every layout and
// dtype, identical results across layouts and dtypes for every policy, the strong exception
// guarantee under failure injection, concurrent layers, and the engine-facing API.
#include <gtest/gtest.h>
#include <lagkv/cache.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/golden.hpp"
#include "support/cache_layouts.hpp"
#include "support/contract_fixture.hpp"
#include "support/plain_cache.hpp"

namespace {

using lagkv::index_t;
using lagkv_test::cache_layout;
using lagkv_test::layout_name;

// ---- Engine-owned memory in every layout ----------------------------------------------------

const cache_layout kLayouts[] = {cache_layout::owned, cache_layout::hsd, cache_layout::shd,
                                 cache_layout::llama, cache_layout::hds, cache_layout::paged};
const lagkv::dtype kDtypes[] = {lagkv::dtype::f32, lagkv::dtype::f16, lagkv::dtype::bf16};

template <class T>
struct cache_under_test {
  lagkv_test::engine_memory<T> mem;
  std::unique_ptr<lagkv::kv_cache<T>> cache;
  cache_under_test(cache_layout id, const lagkv::cache_config& cfg, const lagkv::any_policy& p)
      : mem(id, cfg.layers, cfg.kv_heads, cfg.capacity, cfg.head_dim) {
    cache = id == cache_layout::owned ? std::make_unique<lagkv::kv_cache<T>>(cfg, p)
                                      : std::make_unique<lagkv::kv_cache<T>>(cfg, mem.layers, p);
  }
};

template <class T>
std::vector<T> to_dtype(const lagkv::npy_array& a) {
  std::vector<T> out(static_cast<std::size_t>(a.size()));
  lagkv::visit_dtype(a.type, [&](auto tag) {
    using S = decltype(tag);
    const S* p = a.data<S>();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = lagkv::from_float<T>(lagkv::to_float(p[i]));
  });
  return out;
}

// The golden sets are for the stored dtype; widening fp16 -> fp32 is exact, so it keeps them.
bool golden_applies(lagkv::dtype stored, lagkv::dtype run) {
  return stored == run || (stored == lagkv::dtype::f16 && run == lagkv::dtype::f32);
}

// ---- Golden LagKV cases through the container ----------------------------------------------

using golden_param = std::tuple<std::string, cache_layout, lagkv::dtype>;

std::string golden_param_name(const ::testing::TestParamInfo<golden_param>& info) {
  return std::get<0>(info.param) + "_" + layout_name(std::get<1>(info.param)) + "_" +
         lagkv::dtype_name(std::get<2>(info.param));
}

template <class T>
void run_golden_trajectory(const lagkv_test::golden_case& g, cache_layout layout, lagkv::dtype run_type) {
  const index_t H = g.heads(), S = g.tokens(), D = g.head_dim();
  const auto steps = g.expected["steps"].as_vector<index_t>();
  const auto want_lengths = g.expected["lengths_after_each_step"].as_vector<index_t>();
  const std::vector<T> k = to_dtype<T>(g.k), v = to_dtype<T>(g.v);
  lagkv::cache_config cfg;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.capacity = S;
  cache_under_test<T> c(layout, cfg, lagkv::lagkv_policy(g.params()));
  lagkv_test::plain_config pc;
  pc.sink = g.params().sink;
  pc.lag = g.params().lag;
  pc.ratio = g.params().ratio;
  pc.score_v_ratio = g.params().score_v_ratio;
  lagkv_test::plain_layer<T> plain(pc, H, D);
  const bool exact = golden_applies(g.k.type, run_type);
  index_t first = 0;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const index_t n = steps[i];
    c.cache->append(0, lagkv::kv_input<T>{k.data() + first * D, n, lagkv::kv_layout::hsd(), S},
                    lagkv::kv_input<T>{v.data() + first * D, n, lagkv::kv_layout::hsd(), S});
    if (!exact) plain.append(lagkv_test::rows_of(k.data(), H, S, D, first, n), lagkv_test::rows_of(v.data(), H, S, D, first, n));
    first += n;
    for (index_t h = 0; h < H; ++h) ASSERT_EQ(c.cache->length(0, h), want_lengths[i]) << "step " << i << " head " << h;
  }
  for (index_t h = 0; h < H; ++h) {
    const auto got = c.cache->positions(0, h).to_vector();
    if (exact)
      EXPECT_EQ(got, g.expected["final_positions"][static_cast<std::size_t>(h)].as_vector<index_t>()) << "head " << h;
    else
      EXPECT_EQ(got, plain.positions(h)) << "head " << h;
    // The rows are those of their positions, in every layout.
    const auto keys = c.cache->keys(0, h);
    const auto values = c.cache->values(0, h);
    for (index_t s = 0; s < keys.tokens(); ++s)
      for (index_t ch = 0; ch < D; ++ch) {
        const std::size_t at = static_cast<std::size_t>((h * S + got[static_cast<std::size_t>(s)]) * D + ch);
        ASSERT_EQ(std::memcmp(&keys(s, ch), &k[at], sizeof(T)), 0);
        ASSERT_EQ(std::memcmp(&values(s, ch), &v[at], sizeof(T)), 0);
      }
  }
}

template <class T>
void run_golden_score(const lagkv_test::golden_case& g, cache_layout layout, lagkv::dtype run_type) {
  const index_t H = g.heads(), S = g.tokens(), D = g.head_dim();
  const std::vector<T> k = to_dtype<T>(g.k), v = to_dtype<T>(g.v);
  lagkv::cache_config cfg;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.capacity = S;
  cache_under_test<T> c(layout, cfg, lagkv::lagkv_policy(g.params()));
  std::vector<std::vector<index_t>> kept(static_cast<std::size_t>(H));
  std::vector<std::vector<float>> scores(static_cast<std::size_t>(H));
  c.cache->set_observer([&](const lagkv::compress_event& e) {
    for (index_t i = 0; i < e.kept_count; ++i) kept[static_cast<std::size_t>(e.head)].push_back(e.positions[e.kept[i]]);
    scores[static_cast<std::size_t>(e.head)].assign(e.scores, e.scores + e.plan.chunks * e.plan.chunk);
  });
  c.cache->append(0, k.data(), v.data(), S);
  const bool exact = golden_applies(g.k.type, run_type);
  for (index_t h = 0; h < H; ++h) {
    SCOPED_TRACE("head " + std::to_string(h));
    std::vector<index_t> want_kept;
    std::vector<double> want_scores;
    index_t want_len = 0;
    if (exact) {
      want_kept = g.expected["kept"][static_cast<std::size_t>(h)].as_vector<index_t>();
      for (const auto& chunk : g.expected["chunk_scores"][static_cast<std::size_t>(h)].arr)
        for (const auto& x : chunk.arr) want_scores.push_back(x.num);
      want_len = g.expected["cache_len_after"].as_int();
    } else {  // the scalar scorer on the converted data
      const auto r = lagkv::lagkv_score_head(lagkv::view_hsd<const T>(k.data(), H, S, D, h),
                                             lagkv::view_hsd<const T>(v.data(), H, S, D, h), g.params());
      want_kept = r.kept;
      for (const auto& chunk : r.chunk_scores) want_scores.insert(want_scores.end(), chunk.begin(), chunk.end());
      want_len = r.cache_len;
    }
    EXPECT_EQ(kept[static_cast<std::size_t>(h)], want_kept);
    EXPECT_EQ(c.cache->length(0, h), want_len);
    ASSERT_EQ(scores[static_cast<std::size_t>(h)].size(), want_scores.size());
    for (std::size_t i = 0; i < want_scores.size(); ++i)
      ASSERT_NEAR(scores[static_cast<std::size_t>(h)][i], want_scores[i], 1e-5 * std::fabs(want_scores[i])) << i;
  }
}

class GoldenThroughCache : public ::testing::TestWithParam<golden_param> {};

TEST_P(GoldenThroughCache, MatchesInEveryLayoutAndDtype) {
  const std::string name = std::get<0>(GetParam());
  const cache_layout layout = std::get<1>(GetParam());
  const lagkv::dtype run_type = std::get<2>(GetParam());
  const lagkv_test::golden_case g = lagkv_test::load_golden(name);
  lagkv::visit_dtype(run_type, [&](auto tag) {
    using T = decltype(tag);
    if (g.is_trajectory())
      run_golden_trajectory<T>(g, layout, run_type);
    else
      run_golden_score<T>(g, layout, run_type);
  });
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenThroughCache,
                         ::testing::Combine(::testing::ValuesIn(lagkv_test::golden_case_names()),
                                            ::testing::ValuesIn(kLayouts), ::testing::ValuesIn(kDtypes)),
                         golden_param_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenThroughCache);

TEST(GoldenThroughCache, CasesArePresent) {
  EXPECT_GE(lagkv_test::golden_case_names().size(), 6u) << "looked in " << lagkv_test::golden_root();
}

// ---- Every layout and every dtype give identical results -------------------------------------

constexpr index_t kH = 2, kQH = 4, kD = 12, kS = 160;

struct policy_named {
  std::string name;
  lagkv_test::plain_config cfg;
};

std::vector<policy_named> layout_policies() {
  std::vector<policy_named> out;
  lagkv_test::plain_config c;
  c.policy = "lagkv", c.sink = 3, c.lag = 8, c.ratio = 0.5, out.push_back({"lagkv", c});
  c = {}, c.policy = "l2norm-chunked", c.sink = 2, c.lag = 8, out.push_back({"l2norm_chunked", c});
  c = {}, c.policy = "l2norm", c.sink = 2, c.window = 4, c.budget = 30, c.interval = 3, out.push_back({"l2norm", c});
  c = {}, c.policy = "h2o", c.sink = 1, c.window = 4, c.budget = 24, out.push_back({"h2o", c});
  c = {}, c.policy = "h2o", c.window = 2, c.budget = 20, c.share_heads = true, c.min_per_head = 6,
  out.push_back({"h2o_adakv", c});
  c = {}, c.policy = "streaming", c.sink = 2, c.window = 10, out.push_back({"streaming", c});
  c = {}, c.policy = "random", c.sink = 0, c.budget = 25, c.seed = 5, out.push_back({"random", c});
  return out;
}

// Values k/8 with |k| < 128: exact in fp32, fp16 and bf16, so every dtype scores identically.
std::vector<float> exact_in_all_dtypes(std::uint32_t seed, index_t heads) {
  auto x = lagkv_test::random_kv(seed, heads, kS, kD);
  for (float& e : x) e = std::clamp(std::round(e * 8.0f), -127.0f, 127.0f) / 8.0f;
  return x;
}

struct kv_result {
  std::vector<std::vector<index_t>> positions;
  std::vector<std::vector<float>> k, v;
};

template <class T>
kv_result run_policy(const lagkv_test::plain_config& pc, cache_layout layout) {
  const auto kf = exact_in_all_dtypes(1, kH), vf = exact_in_all_dtypes(2, kH), q = exact_in_all_dtypes(3, kQH);
  const auto k = lagkv_test::convert<T>(kf), v = lagkv_test::convert<T>(vf);
  lagkv::cache_config cfg;
  cfg.kv_heads = kH;
  cfg.head_dim = kD;
  cfg.capacity = kS;
  cache_under_test<T> c(layout, cfg, pc.make());
  index_t first = 0;
  for (const index_t n : lagkv_test::random_schedule(9, kS)) {
    lagkv::append_extras x;
    x.attention.q_heads = kQH;
    x.attention.queries = q.data() + first * kD;
    x.attention.q_head_stride = kS * kD;
    x.attention.q_token_stride = kD;
    c.cache->append(0, lagkv::kv_input<T>{k.data() + first * kD, n, lagkv::kv_layout::hsd(), kS},
                    lagkv::kv_input<T>{v.data() + first * kD, n, lagkv::kv_layout::hsd(), kS}, x);
    first += n;
  }
  kv_result r;
  for (index_t h = 0; h < kH; ++h) {
    r.positions.push_back(c.cache->positions(0, h).to_vector());
    const auto keys = c.cache->keys(0, h);
    const auto values = c.cache->values(0, h);
    r.k.emplace_back();
    r.v.emplace_back();
    for (index_t s = 0; s < keys.tokens(); ++s)
      for (index_t ch = 0; ch < kD; ++ch) {
        r.k.back().push_back(lagkv::to_float(keys(s, ch)));
        r.v.back().push_back(lagkv::to_float(values(s, ch)));
      }
  }
  return r;
}

using layout_param = std::tuple<policy_named, cache_layout, lagkv::dtype>;

class LayoutsAndDtypes : public ::testing::TestWithParam<layout_param> {};

TEST_P(LayoutsAndDtypes, GiveTheResultOfTheOwnedFp32Cache) {
  const policy_named pol = std::get<0>(GetParam());
  const cache_layout layout = std::get<1>(GetParam());
  const lagkv::dtype type = std::get<2>(GetParam());
  const kv_result want = run_policy<float>(pol.cfg, cache_layout::owned);
  const kv_result got = lagkv::visit_dtype(type, [&](auto tag) { return run_policy<decltype(tag)>(pol.cfg, layout); });
  EXPECT_EQ(got.positions, want.positions);
  EXPECT_EQ(got.k, want.k);
  EXPECT_EQ(got.v, want.v);
  EXPECT_LT(want.positions[0].size(), static_cast<std::size_t>(kS));  // something was evicted
}

INSTANTIATE_TEST_SUITE_P(Cache, LayoutsAndDtypes,
                         ::testing::Combine(::testing::ValuesIn(layout_policies()), ::testing::ValuesIn(kLayouts),
                                            ::testing::ValuesIn(kDtypes)),
                         [](const ::testing::TestParamInfo<layout_param>& info) {
                           return std::get<0>(info.param).name + "_" + layout_name(std::get<1>(info.param)) + "_" +
                                  lagkv::dtype_name(std::get<2>(info.param));
                         });

// ---- Strong exception guarantee ----------------------------------------------------------------

struct rejecting_policy : lagkv::policy_base {
  static constexpr const char* kName = "rejecting";
  void validate(const lagkv::cache_shape& s) const {
    LAGKV_CHECK(s.head_dim >= 1000, "head_dim=", s.head_dim, ": rejecting_policy needs >= 1000");
  }
  void plan(const lagkv::layer_info&, lagkv::compress_reason, lagkv::layer_plan&) const noexcept {}
  template <class T>
  void score(const lagkv::head_data<T>&, const lagkv::compress_plan&, index_t, lagkv::score_t*) const noexcept {}
};

using lagkv_test::contract_fixture;

struct failure_case {
  std::string name;
  std::string message;  // expected substring of the error
  std::function<void(contract_fixture&)> op;
};

std::vector<failure_case> failure_cases() {
  using F = contract_fixture;
  return {
      {"append_layer_out_of_range", "layer=3: out of range [0, 3)",
       [](F& f) { f.cache.append(3, f.input(30, 1), f.input(30, 1), f.extras(30)); }},
      {"append_negative_layer", "layer=-1: out of range [0, 3)",
       [](F& f) { f.cache.append(-1, f.input(30, 1), f.input(30, 1)); }},
      {"append_capacity_overflow", "tokens=60: capacity overflow at layer=1 head=0 (holds",
       [](F& f) { f.cache.append(1, f.k.data(), f.k.data(), 60); }},
      {"append_token_mismatch", "v.tokens=2: must equal k.tokens=3",
       [](F& f) { f.cache.append(1, f.input(30, 3), f.input(30, 2)); }},
      {"append_null_data", "k.data=nullptr with tokens=1",
       [](F& f) { f.cache.append(1, nullptr, f.k.data(), 1); }},
      {"append_paged_input", "k.layout=paged: inputs must be hsd, shd or hds",
       [](F& f) {
         static const std::int32_t table[1] = {0};
         f.cache.append(1, lagkv::kv_input<float>{f.k.data(), 1, lagkv::kv_layout::paged(table, 4)}, f.input(30, 1));
       }},
      {"append_bad_input_capacity", "k.capacity=2: must be 0 or >= tokens=3",
       [](F& f) {
         f.cache.append(1, lagkv::kv_input<float>{f.k.data(), 3, lagkv::kv_layout::hsd(), 2}, f.input(30, 3));
       }},
      {"h2o_append_without_attention",
       "attention: h2o needs attention.probs, attention.prob_sums or attention.queries",
       [](F& f) { f.cache.append(0, f.input(30, 1), f.input(30, 1)); }},
      {"h2o_append_bad_q_heads", "attention.q_heads=3: must be a positive multiple of kv_heads=2",
       [](F& f) {
         auto x = f.extras(30);
         x.attention.q_heads = 3;
         f.cache.append(0, f.input(30, 1), f.input(30, 1), x);
       }},
      {"h2o_append_short_row_stride", "attention.row_stride=5: must be >= the longest head after the append = 21",
       [](F& f) {
         std::vector<float> probs(100, 0.0f);
         lagkv::append_extras x;
         x.attention.q_heads = contract_fixture::kHeads;
         x.attention.probs = probs.data();
         x.attention.row_stride = 5;
         f.cache.append(0, f.input(30, 1), f.input(30, 1), x);
       }},
      {"h2o_overflow_after_valid_attention", "capacity overflow",
       [](F& f) { f.cache.append(0, f.input(0, 50), f.input(0, 50), f.extras(0)); }},
      {"commit_overflow", "tokens=100: capacity overflow", [](F& f) { f.cache.commit(1, 100); }},
      {"commit_h2o_without_attention", "attention: h2o needs", [](F& f) { f.cache.commit(0, 1); }},
      {"next_keys_overflow", "tokens=64: capacity overflow", [](F& f) { f.cache.next_keys(1, 0, 64); }},
      {"next_values_bad_head", "head=2: out of range [0, 2)", [](F& f) { f.cache.next_values(1, 2, 1); }},
      {"set_policy_on_nonempty_layer", "layer=1: set_policy needs an empty layer",
       [](F& f) { f.cache.set_policy(1, lagkv::make_policy("streaming")); }},
      {"set_policy_rejected_by_validate", "head_dim=8: rejecting_policy needs >= 1000",
       [](F& f) { f.cache.set_policy(2, rejecting_policy{}); }},
      {"compress_bad_layer", "layer=5: out of range [0, 3)", [](F& f) { f.cache.compress(5); }},
      {"keys_bad_head", "head=2: out of range [0, 2)", [](F& f) { (void)f.cache.keys(0, 2); }},
      {"positions_bad_layer", "layer=-2: out of range [0, 3)", [](F& f) { (void)f.cache.positions(-2, 0); }},
      {"clear_bad_layer", "layer=9: out of range [0, 3)", [](F& f) { f.cache.clear(9); }},
  };
}

class StrongGuarantee : public ::testing::TestWithParam<failure_case> {};

TEST_P(StrongGuarantee, FailureLeavesTheCacheByteIdentical) {
  contract_fixture f;
  const auto before = f.snapshot();
  ASSERT_GT(f.cache.compressions(0), 0);
  ASSERT_GT(f.cache.compressions(1), 0);
  try {
    GetParam().op(f);
    ADD_FAILURE() << "no error";
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find(GetParam().message), std::string::npos) << e.what();
  }
  EXPECT_TRUE(f.snapshot() == before);
  // ... and it keeps working afterwards.
  f.cache.append(1, f.input(30, 1), f.input(30, 1));
  EXPECT_EQ(f.cache.tokens_seen(1), 31);
}

INSTANTIATE_TEST_SUITE_P(Cache, StrongGuarantee, ::testing::ValuesIn(failure_cases()),
                         [](const ::testing::TestParamInfo<failure_case>& info) { return info.param.name; });

// ---- Configuration errors ------------------------------------------------------------------

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const lagkv::error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(CacheConfig, InvalidFieldsAreNamedWithTheirValue) {
  auto cfg = contract_fixture::config();
  cfg.layers = 0;
  EXPECT_EQ(error_of([&] { lagkv::kv_cache<float> c(cfg); }), "layers=0: must be >= 1");
  cfg = contract_fixture::config();
  cfg.capacity = -4;
  EXPECT_EQ(error_of([&] { lagkv::kv_cache<float> c(cfg); }), "capacity=-4: must be >= 1");
  cfg = contract_fixture::config();
  cfg.capacity = index_t{1} << 60;
  EXPECT_NE(error_of([&] { lagkv::kv_cache<float> c(cfg); }).find("layers*kv_heads*capacity*head_dim overflows"),
            std::string::npos);
  cfg = contract_fixture::config();
  cfg.skip_layers = {5};
  EXPECT_EQ(error_of([&] { lagkv::kv_cache<float> c(cfg); }), "skip_layers entry=5: out of range [0, 3)");
  cfg = contract_fixture::config();
  EXPECT_EQ(error_of([&] { lagkv::kv_cache<float> c(cfg, std::vector<lagkv::layer_memory<float>>(2)); }),
            "memory.size()=2: must equal layers=3");
  EXPECT_EQ(error_of([&] { lagkv::kv_cache<float> c(cfg, std::vector<lagkv::layer_memory<float>>(3)); }),
            "memory[0]: k and v must not be nullptr");
  std::vector<float> buf(16);
  std::vector<lagkv::layer_memory<float>> mem(3, {buf.data(), buf.data(), lagkv::kv_layout::paged(nullptr, 4),
                                                  lagkv::kv_layout::hsd()});
  EXPECT_EQ(error_of([&] { lagkv::kv_cache<float> c(cfg, mem); }),
            "k_layout.block_table=nullptr: a paged layout needs a block table");
  cfg.head_dim = 1;
  EXPECT_EQ(error_of([&] { lagkv::kv_cache<float> c(cfg, lagkv::make_policy("lagkv")); }), "head_dim=1: must be >= 2");
}

// ---- Threads: different layers concurrently ---------------------------------------------------

TEST(CacheThreads, LayersAppendAndCompressConcurrently) {
  constexpr index_t L = 4, H = 2, QH = 4, D = 16, S = 400;
  lagkv::cache_config cfg;
  cfg.layers = L;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.capacity = S;
  std::vector<lagkv::any_policy> policies;
  {
    lagkv::policy_spec s;
    s.sink = 4, s.lag = 16;
    policies.push_back(lagkv::make_policy("lagkv", s));
    s = {}, s.budget = 48, s.window = 8;
    policies.push_back(lagkv::make_policy("h2o", s));
    s = {}, s.budget = 40, s.share_heads = true, s.min_per_head = 8;
    policies.push_back(lagkv::make_policy("l2norm", s));
    s = {}, s.budget = 50, s.seed = 3, s.interval = 4;
    policies.push_back(lagkv::make_policy("random", s));
  }
  std::vector<std::vector<lagkv::f16>> k, v;
  std::vector<std::vector<float>> q;
  for (index_t l = 0; l < L; ++l) {
    k.push_back(lagkv_test::convert<lagkv::f16>(lagkv_test::random_kv(static_cast<std::uint32_t>(10 + l), H, S, D)));
    v.push_back(lagkv_test::convert<lagkv::f16>(lagkv_test::random_kv(static_cast<std::uint32_t>(20 + l), H, S, D)));
    q.push_back(lagkv_test::random_kv(static_cast<std::uint32_t>(30 + l), QH, S, D));
  }
  auto drive = [&](lagkv::kv_cache<lagkv::f16>& cache, index_t l) {
    index_t first = 0;
    for (const index_t n : lagkv_test::random_schedule(static_cast<std::uint32_t>(l + 1), S)) {
      lagkv::append_extras x;
      x.attention.q_heads = QH;
      x.attention.queries = q[static_cast<std::size_t>(l)].data() + first * D;
      x.attention.q_head_stride = S * D;
      x.attention.q_token_stride = D;
      cache.append(l, lagkv::kv_input<lagkv::f16>{k[static_cast<std::size_t>(l)].data() + first * D, n,
                                                  lagkv::kv_layout::hsd(), S},
                   lagkv::kv_input<lagkv::f16>{v[static_cast<std::size_t>(l)].data() + first * D, n,
                                               lagkv::kv_layout::hsd(), S},
                   x);
      first += n;
    }
    cache.compress(l);
  };
  lagkv::kv_cache<lagkv::f16> sequential(cfg), parallel(cfg);
  for (index_t l = 0; l < L; ++l) {
    sequential.set_policy(l, policies[static_cast<std::size_t>(l)]);
    parallel.set_policy(l, policies[static_cast<std::size_t>(l)]);
    drive(sequential, l);
  }
  std::vector<std::thread> threads;
  for (index_t l = 0; l < L; ++l) threads.emplace_back([&, l] { drive(parallel, l); });
  for (auto& t : threads) t.join();
  for (index_t l = 0; l < L; ++l) {
    EXPECT_GT(sequential.compressions(l), 0);
    const auto a = sequential.memory(l), b = parallel.memory(l);
    EXPECT_EQ(std::memcmp(a.k, b.k, H * S * D * sizeof(lagkv::f16)), 0) << "layer " << l;
    EXPECT_EQ(std::memcmp(a.v, b.v, H * S * D * sizeof(lagkv::f16)), 0) << "layer " << l;
    for (index_t h = 0; h < H; ++h)
      EXPECT_EQ(sequential.positions(l, h).to_vector(), parallel.positions(l, h).to_vector()) << "layer " << l;
  }
}

// ---- The engine-facing API -------------------------------------------------------------------

lagkv::cache_config api_config() {
  lagkv::cache_config c;
  c.layers = 2;
  c.kv_heads = 2;
  c.head_dim = 8;
  c.capacity = 48;
  return c;
}

TEST(CacheApi, CommitAdoptsRowsTheEngineWroteInPlace) {
  lagkv::lagkv_params p;
  p.sink = 1;
  p.lag = 4;
  const auto k = lagkv_test::random_kv(1, 2, 40, 8), v = lagkv_test::random_kv(2, 2, 40, 8);
  lagkv::kv_cache<float, lagkv::lagkv_policy> appended(api_config(), lagkv::lagkv_policy(p));
  lagkv::kv_cache<float, lagkv::lagkv_policy> committed(api_config(), lagkv::lagkv_policy(p));
  for (index_t t = 0; t < 40; ++t) {
    appended.append(1, lagkv::kv_input<float>{k.data() + t * 8, 1, lagkv::kv_layout::hsd(), 40},
                    lagkv::kv_input<float>{v.data() + t * 8, 1, lagkv::kv_layout::hsd(), 40});
    for (index_t h = 0; h < 2; ++h) {  // e.g. the attention kernel writes the new token itself
      const auto ks = committed.next_keys(1, h, 1), vs = committed.next_values(1, h, 1);
      for (index_t c = 0; c < 8; ++c) {
        ks(0, c) = k[static_cast<std::size_t>((h * 40 + t) * 8 + c)];
        vs(0, c) = v[static_cast<std::size_t>((h * 40 + t) * 8 + c)];
      }
    }
    committed.commit(1, 1);
  }
  for (index_t h = 0; h < 2; ++h) {
    EXPECT_EQ(committed.positions(1, h).to_vector(), appended.positions(1, h).to_vector());
    EXPECT_EQ(std::memcmp(committed.memory(1).k, appended.memory(1).k, 2 * 48 * 8 * sizeof(float)), 0);
  }
  EXPECT_GT(committed.compressions(1), 0);
  EXPECT_EQ(committed.length(0, 0), 0);
}

TEST(CacheApi, DecodeAppendWithoutCompressionWritesOnlyTheNewRows) {
  lagkv::lagkv_params p;
  p.sink = 2;
  p.lag = 8;
  lagkv::kv_cache<float> cache(api_config(), lagkv::lagkv_policy(p));
  const auto k = lagkv_test::random_kv(1, 2, 48, 8);
  cache.append(0, lagkv::kv_input<float>{k.data(), 12, lagkv::kv_layout::hsd(), 48},
               lagkv::kv_input<float>{k.data(), 12, lagkv::kv_layout::hsd(), 48});
  const auto m = cache.memory(0);
  const std::vector<float> before(m.k, m.k + 2 * 48 * 8);
  cache.append(0, lagkv::kv_input<float>{k.data() + 12 * 8, 1, lagkv::kv_layout::hsd(), 48},
               lagkv::kv_input<float>{k.data() + 12 * 8, 1, lagkv::kv_layout::hsd(), 48});
  ASSERT_EQ(cache.compressions(0), 0);
  for (index_t h = 0; h < 2; ++h)
    for (index_t s = 0; s < 48; ++s)
      for (index_t c = 0; c < 8; ++c) {
        const std::size_t i = static_cast<std::size_t>((h * 48 + s) * 8 + c);
        if (s == 12)
          EXPECT_EQ(m.k[i], k[static_cast<std::size_t>((h * 48 + 12) * 8 + c)]);
        else
          EXPECT_EQ(m.k[i], before[i]) << "slot " << s;
      }
}

TEST(CacheApi, ObserverSeesEveryCompressedHeadBeforeTheRowsMove) {
  lagkv::lagkv_params p;
  p.sink = 2;
  p.lag = 4;
  lagkv::kv_cache<float> cache(api_config(), lagkv::lagkv_policy(p));
  std::vector<lagkv::compress_event> events;
  std::vector<std::vector<index_t>> kept_positions;
  cache.set_observer([&](const lagkv::compress_event& e) {
    events.push_back(e);
    kept_positions.emplace_back();
    for (index_t i = 0; i < e.kept_count; ++i) kept_positions.back().push_back(e.positions[e.kept[i]]);
  });
  const auto k = lagkv_test::random_kv(1, 2, 22, 8);
  cache.append(1, k.data(), k.data(), 22);
  ASSERT_EQ(events.size(), 2u);  // one per head
  for (index_t h = 0; h < 2; ++h) {
    const auto& e = events[static_cast<std::size_t>(h)];
    EXPECT_EQ(e.layer, 1);
    EXPECT_EQ(e.head, h);
    EXPECT_EQ(e.plan.begin, 2);
    EXPECT_EQ(e.plan.chunks, 4);  // (22 - 2) / 4 - 1
    EXPECT_EQ(e.length_before, 22);
    EXPECT_EQ(e.length_after, 2 + 4 * 2 + 4);
    EXPECT_EQ(cache.length(1, h), e.length_after);
    const auto pos = cache.positions(1, h).to_vector();
    EXPECT_EQ(std::vector<index_t>(pos.begin() + 2, pos.begin() + 10), kept_positions[static_cast<std::size_t>(h)]);
  }
}

TEST(CacheApi, ClearRestartsALayerAndReplaysIdentically) {
  lagkv::h2o_params p;
  p.budget = 10;
  p.window = 2;
  lagkv::kv_cache<float> cache(api_config(), lagkv::h2o_policy(p));
  const auto k = lagkv_test::random_kv(1, 2, 30, 8), q = lagkv_test::random_kv(2, 2, 30, 8);
  auto run = [&] {
    for (index_t t = 0; t < 30; ++t) {
      lagkv::append_extras x;
      x.attention.q_heads = 2;
      x.attention.queries = q.data() + t * 8;
      x.attention.q_head_stride = 30 * 8;
      cache.append(0, lagkv::kv_input<float>{k.data() + t * 8, 1, lagkv::kv_layout::hsd(), 30},
                   lagkv::kv_input<float>{k.data() + t * 8, 1, lagkv::kv_layout::hsd(), 30}, x);
    }
    return cache.positions(0, 1).to_vector();
  };
  const auto first = run();
  cache.clear();
  EXPECT_EQ(cache.length(0, 1), 0);
  EXPECT_EQ(cache.tokens_seen(0), 0);
  EXPECT_EQ(cache.compressions(0), 0);
  EXPECT_EQ(run(), first);
  EXPECT_EQ(first.size(), 10u);
}

TEST(CacheApi, SkippedLayersAndExplicitCompression) {
  auto cfg = api_config();
  cfg.skip_layers = {0};
  lagkv::policy_spec s;
  s.budget = 6;
  lagkv::kv_cache<float> cache(cfg, lagkv::make_policy("l2norm", s));
  const auto k = lagkv_test::random_kv(1, 2, 20, 8);
  cache.append(0, lagkv::kv_input<float>{k.data(), 10, lagkv::kv_layout::hsd(), 20},
               lagkv::kv_input<float>{k.data(), 10, lagkv::kv_layout::hsd(), 20});
  cache.append(1, lagkv::kv_input<float>{k.data(), 10, lagkv::kv_layout::hsd(), 20},
               lagkv::kv_input<float>{k.data(), 10, lagkv::kv_layout::hsd(), 20});
  EXPECT_TRUE(cache.skipped(0));
  EXPECT_EQ(cache.max_length(0), 10);
  EXPECT_EQ(cache.max_length(1), 6);
  EXPECT_FALSE(cache.compress(0));
  cache.set_skipped(0, false);
  EXPECT_EQ(cache.compress_all(), 1);
  EXPECT_EQ(cache.max_length(0), 6);
}

TEST(CacheApi, InputsMayBeTokenMajorOrTransposed) {
  // The same 6 tokens of 2 heads x 8 channels as [H, S, D], [S, H, D] and [H, D, S].
  const auto hsd = lagkv_test::random_kv(3, 2, 6, 8);
  std::vector<float> shd(hsd.size()), hds(hsd.size());
  for (index_t h = 0; h < 2; ++h)
    for (index_t t = 0; t < 6; ++t)
      for (index_t c = 0; c < 8; ++c) {
        const float x = hsd[static_cast<std::size_t>((h * 6 + t) * 8 + c)];
        shd[static_cast<std::size_t>((t * 2 + h) * 8 + c)] = x;
        hds[static_cast<std::size_t>((h * 8 + c) * 6 + t)] = x;
      }
  lagkv::kv_cache<float> a(api_config()), b(api_config()), c(api_config());
  a.append(0, hsd.data(), hsd.data(), 6);
  b.append(0, lagkv::kv_input<float>{shd.data(), 6, lagkv::kv_layout::shd()},
           lagkv::kv_input<float>{shd.data(), 6, lagkv::kv_layout::shd()});
  c.append(0, lagkv::kv_input<float>{hds.data(), 6, lagkv::kv_layout::hds()},
           lagkv::kv_input<float>{hds.data(), 6, lagkv::kv_layout::hds()});
  for (const auto* other : {&b, &c})
    EXPECT_EQ(std::memcmp(a.memory(0).k, other->memory(0).k, 2 * 48 * 8 * sizeof(float)), 0);
}

TEST(CacheApi, MovedCacheKeepsItsSlots) {
  lagkv::kv_cache<lagkv::bf16> a(api_config());
  const auto k = lagkv_test::convert<lagkv::bf16>(lagkv_test::random_kv(1, 2, 5, 8));
  a.append(1, k.data(), k.data(), 5);
  lagkv::kv_cache<lagkv::bf16> b(std::move(a));
  EXPECT_EQ(b.length(1, 1), 5);
  EXPECT_EQ(b.keys(1, 1)(4, 7).bits, k[static_cast<std::size_t>((1 * 5 + 4) * 8 + 7)].bits);
  EXPECT_TRUE(b.owns_memory());
  EXPECT_STREQ(b.policy(0).name(), "none");
}

}  // namespace
