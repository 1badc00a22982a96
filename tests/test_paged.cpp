// Paged memory that frees whole blocks (paged.hpp).
//
// The plain reference: the same policy on an unpaged token-major copy ([max_tokens, H, D],
// strided views), with the aggregation / selection / gather written out here in the simplest
// form. Scores come from the same scorers on the same rows, so they are bit-identical and every
// kept token's K/V bytes and position must match exactly. An engine simulation hands blocks to
// the table from a shuffled free list as the sequence grows and takes back the ids the layer
// releases; after every step: no id lost or duplicated, the table holds exactly
// ceil(length / block_size) blocks after a compression, released entries read kNoBlock.
#include <gtest/gtest.h>
#include <lagkv/paged.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace {

using lagkv::block_table;
using lagkv::dtype;
using lagkv::head_aggregation;
using lagkv::index_t;

// ---- Policies under test --------------------------------------------------------------------------

enum class pol { lagkv, l2norm, l2chunked, streaming, h2o, random };
const char* pol_name(pol p) {
  switch (p) {
    case pol::lagkv: return "lagkv";
    case pol::l2norm: return "l2norm";
    case pol::l2chunked: return "l2chunked";
    case pol::streaming: return "streaming";
    case pol::h2o: return "h2o";
    case pol::random: return "random";
  }
  return "?";
}

lagkv::any_policy make_policy(pol p) {
  switch (p) {
    case pol::lagkv: {
      lagkv::lagkv_params lp;
      lp.sink = 4;
      lp.lag = 16;
      lp.ratio = 0.5;
      return lagkv::lagkv_policy(lp);
    }
    case pol::l2norm: {
      lagkv::l2norm_params lp;  // budget schedule: every 8th decode step back to 64 slots
      lp.sink = 4;
      lp.window = 8;
      lp.budget = 64;
      lp.interval = 8;
      return lagkv::l2norm_policy(lp);
    }
    case pol::l2chunked: {
      lagkv::l2norm_chunked_params lp;
      lp.sink = 2;
      lp.lag = 12;
      lp.ratio = 0.25;
      return lagkv::l2norm_chunked_policy(lp);
    }
    case pol::streaming: {
      lagkv::streaming_params sp;
      sp.sink = 4;
      sp.window = 37;
      sp.interval = 5;
      return lagkv::streaming_policy(sp);
    }
    case pol::h2o: {  // needs attention with every append: run_steps passes queries
      lagkv::h2o_params hp;
      hp.sink = 4;
      hp.window = 8;
      hp.budget = 64;
      hp.interval = 8;
      return lagkv::h2o_policy(hp);
    }
    case pol::random: {
      lagkv::random_params rp;
      rp.sink = 4;
      rp.window = 8;
      rp.budget = 64;
      rp.interval = 8;
      rp.seed = 3;
      return lagkv::random_policy(rp);
    }
  }
  return {};
}

// ---- The plain reference -----------------------------------------------------------------------------

template <class T, class P = lagkv::any_policy>
struct plain_layer {
  index_t H, D, cap;
  head_aggregation agg;
  std::vector<T> k, v;  // [cap, H, D]
  std::vector<index_t> pos;
  index_t len = 0, seen = 0, appends = 0;
  P policy;
  bool scores;

  plain_layer(index_t heads, index_t dim, index_t capacity, head_aggregation a, P p)
      : H(heads), D(dim), cap(capacity), agg(a), k(static_cast<std::size_t>(capacity * heads * dim)), v(k.size()),
        policy(std::move(p)) {
    const lagkv::cache_shape s{1, H, D, cap};
    lagkv::policy_ops::validate(policy, s);
    lagkv::policy_ops::bind(policy, s, 0);
    scores = lagkv::policy_ops::scores_tokens(policy);
  }

  void append(const T* kin, const T* vin, index_t n, const lagkv::append_extras& extras = {}) {
    std::copy(kin, kin + n * H * D, k.begin() + len * H * D);
    std::copy(vin, vin + n * H * D, v.begin() + len * H * D);
    for (index_t i = 0; i < n; ++i) pos.push_back(seen + i);
    len += n;
    seen += n;
    appends += 1;
    for (index_t h = 0; h < H && lagkv::policy_ops::wants_appends<T>(policy); ++h) {  // H2O: the attention
      lagkv::head_data<T> d;
      d.head = h;
      d.keys = lagkv::view_shd<const T>(k.data(), cap, H, D, h, len);
      d.values = lagkv::view_shd<const T>(v.data(), cap, H, D, h, len);
      d.positions = pos.data();
      lagkv::policy_ops::on_append<T>(policy, d, len - n, n, extras);
    }
    compress(lagkv::compress_reason::append, n);
  }

  bool compress(lagkv::compress_reason why, index_t last) {
    std::vector<index_t> lengths(static_cast<std::size_t>(H), len);
    std::vector<lagkv::compress_plan> plans(static_cast<std::size_t>(H));
    lagkv::layer_plan out{plans.data(), H, -1};
    lagkv::layer_info info{0, H, D, cap, lengths.data(), seen, appends, last};
    policy.plan(info, why, out);
    const lagkv::compress_plan p = plans[0];
    if (p.empty()) return false;
    const index_t n = p.chunks * p.chunk;
    std::vector<float> total(static_cast<std::size_t>(n)), s(static_cast<std::size_t>(n));
    for (index_t h = 0; h < H && scores; ++h) {
      lagkv::head_data<T> d;
      d.head = h;
      d.keys = lagkv::view_shd<const T>(k.data(), cap, H, D, h, len);
      d.values = lagkv::view_shd<const T>(v.data(), cap, H, D, h, len);
      d.positions = pos.data();
      lagkv::policy_ops::score_region<T>(policy, d, p, s.data());  // the scorer the cache uses
      for (index_t i = 0; i < n; ++i) {
        float& t = total[static_cast<std::size_t>(i)];
        const float x = s[static_cast<std::size_t>(i)];
        if (h == 0)
          t = x;
        else if (agg == head_aggregation::sum)
          t = t + x;
        else
          t = std::isnan(t) || std::isnan(x) ? NAN : std::max(t, x);
      }
    }
    std::vector<index_t> keep_rows;  // the new order of old rows
    for (index_t t = 0; t < p.begin; ++t) keep_rows.push_back(t);
    std::vector<index_t> kept;
    for (index_t c = 0; c < p.chunks; ++c) {
      const index_t first = p.begin + c * p.chunk;
      if (scores) {
        for (index_t i : lagkv::select_top_k(total.data() + c * p.chunk, p.chunk, p.keep)) kept.push_back(first + i);
      } else {
        for (index_t i = 0; i < p.keep; ++i) kept.push_back(first + i);
      }
    }
    keep_rows.insert(keep_rows.end(), kept.begin(), kept.end());
    for (index_t t = p.end(); t < len; ++t) keep_rows.push_back(t);
    std::vector<T> nk(k.size()), nv(v.size());
    std::vector<index_t> npos;
    for (std::size_t i = 0; i < keep_rows.size(); ++i) {
      const index_t src = keep_rows[i];
      std::copy(k.begin() + src * H * D, k.begin() + (src + 1) * H * D, nk.begin() + static_cast<index_t>(i) * H * D);
      std::copy(v.begin() + src * H * D, v.begin() + (src + 1) * H * D, nv.begin() + static_cast<index_t>(i) * H * D);
      npos.push_back(pos[static_cast<std::size_t>(src)]);
    }
    const lagkv::compaction moves{p.begin, p.end(), len, kept.data(), static_cast<index_t>(kept.size())};
    for (index_t h = 0; h < H; ++h) lagkv::policy_ops::on_compact(policy, h, moves);
    k.swap(nk);
    v.swap(nv);
    pos = npos;
    len = static_cast<index_t>(keep_rows.size());
    return true;
  }
};

// ---- The engine side: a pool, a free list, a table -----------------------------------------------

struct engine {
  index_t num_blocks, bs;
  std::vector<std::int32_t> free_ids;   // stack of free block ids
  std::vector<std::int32_t> storage;    // the table's memory
  block_table table;
  index_t handed_out = 0, taken_back = 0;

  engine(index_t blocks, index_t block_size, index_t table_cap, unsigned seed)
      : num_blocks(blocks), bs(block_size), storage(static_cast<std::size_t>(table_cap), 12345) {
    free_ids.resize(static_cast<std::size_t>(blocks));
    std::iota(free_ids.begin(), free_ids.end(), 0);
    std::mt19937 rng(seed);
    std::shuffle(free_ids.begin(), free_ids.end(), rng);
    table.ids = storage.data();
  }
  /// Grows the table to cover `tokens` tokens (what an engine's block manager does before writing).
  void ensure(index_t tokens) {
    while (table.count * bs < tokens) {
      storage[static_cast<std::size_t>(table.count++)] = free_ids.back();
      free_ids.pop_back();
      ++handed_out;
    }
  }
  void give_back(const std::int32_t* ids, index_t n) {
    for (index_t i = 0; i < n; ++i) free_ids.push_back(ids[i]);
    taken_back += n;
  }
  /// Every id is either in the table or free, exactly once.
  ::testing::AssertionResult consistent() const {
    std::vector<int> seen(static_cast<std::size_t>(num_blocks), 0);
    for (index_t i = 0; i < table.count; ++i) ++seen[static_cast<std::size_t>(table.ids[i])];
    for (const auto id : free_ids) ++seen[static_cast<std::size_t>(id)];
    for (index_t b = 0; b < num_blocks; ++b)
      if (seen[static_cast<std::size_t>(b)] != 1)
        return ::testing::AssertionFailure()
               << "block " << b << " seen " << seen[static_cast<std::size_t>(b)] << " times";
    return ::testing::AssertionSuccess();
  }
};

template <class T>
std::vector<T> random_rows(index_t tokens, index_t heads, index_t dim, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<T> x(static_cast<std::size_t>(tokens * heads * dim));
  for (index_t i = 0; i < static_cast<index_t>(x.size()); ++i)
    x[static_cast<std::size_t>(i)] = lagkv::from_float<T>(static_cast<float>(i % dim % 5) - 2.0f + nd(rng));
  return x;
}

/// Every held token's K and V rows (all heads) and position against the plain reference.
template <class T, class P1, class P2>
::testing::AssertionResult same_tokens(const lagkv::paged_layer<T, P1>& layer, const block_table& table,
                                       const plain_layer<T, P2>& plain) {
  if (layer.length() != plain.len)
    return ::testing::AssertionFailure() << "length " << layer.length() << " vs plain " << plain.len;
  for (index_t t = 0; t < plain.len; ++t) {
    if (layer.positions()[static_cast<std::size_t>(t)] != plain.pos[static_cast<std::size_t>(t)])
      return ::testing::AssertionFailure()
             << "slot " << t << ": position " << layer.positions()[static_cast<std::size_t>(t)] << " vs plain "
             << plain.pos[static_cast<std::size_t>(t)];
    for (index_t h = 0; h < plain.H; ++h) {
      const T* pk = plain.k.data() + (t * plain.H + h) * plain.D;
      const T* pv = plain.v.data() + (t * plain.H + h) * plain.D;
      if (std::memcmp(layer.keys(table, h).row(t), pk, static_cast<std::size_t>(plain.D) * sizeof(T)) != 0 ||
          std::memcmp(layer.values(table, h).row(t), pv, static_cast<std::size_t>(plain.D) * sizeof(T)) != 0)
        return ::testing::AssertionFailure() << "slot " << t << " head " << h << ": K/V bytes differ";
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- Paged vs plain, step by step ------------------------------------------------------------------

using step_param = std::tuple<dtype, pol, head_aggregation, index_t>;
class PagedVsPlain : public ::testing::TestWithParam<step_param> {};

template <class T>
void run_steps(pol which, head_aggregation agg, index_t bs) {
  const index_t H = 2, D = 32, cap = 400;
  lagkv::paged_config cfg;
  cfg.block_size = bs;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.max_tokens = cap;
  cfg.num_blocks = lagkv::blocks_for(cap, bs) + 9;
  cfg.aggregate = agg;
  std::vector<T> kpool(static_cast<std::size_t>(cfg.num_blocks * bs * H * D)), vpool(kpool.size());
  engine eng(cfg.num_blocks, bs, cfg.num_blocks, 3);
  lagkv::paged_layer<T> layer(cfg, kpool.data(), vpool.data(), make_policy(which));
  plain_layer<T> plain(H, D, cap, agg, make_policy(which));
  std::vector<std::int32_t> reported;
  layer.set_release_callback([&](const std::int32_t* ids, index_t n) {
    reported.insert(reported.end(), ids, ids + n);
    eng.give_back(ids, n);
  });
  std::mt19937 rng(17);
  // A prefill in two chunks, then decode steps, then another chunk, then decode again.
  std::vector<index_t> steps = {150, 53};
  for (int i = 0; i < 70; ++i) steps.push_back(1);
  steps.push_back(37);
  for (int i = 0; i < 25; ++i) steps.push_back(1);
  index_t freed_total = 0, compressions = 0;
  for (std::size_t s = 0; s < steps.size(); ++s) {
    const index_t n = steps[s];
    const auto k = random_rows<T>(n, H, D, rng), v = random_rows<T>(n, H, D, rng);
    // H2O's attention: queries of 2 query heads per KV head (GQA), [q_heads, n, D].
    const auto q = random_rows<float>(n, 2 * H, D, rng);
    lagkv::append_extras extras;
    if (which == pol::h2o) {
      extras.attention.q_heads = 2 * H;
      extras.attention.queries = q.data();
      extras.attention.q_head_stride = n * D;
      extras.attention.q_token_stride = D;
    }
    eng.ensure(layer.length() + n);
    const index_t before = eng.table.count;
    reported.clear();
    const lagkv::paged_result r = layer.append(k.data(), v.data(), n, eng.table, extras);
    plain.append(k.data(), v.data(), n, extras);
    ASSERT_TRUE(same_tokens(layer, eng.table, plain)) << "after step " << s;
    ASSERT_TRUE(eng.consistent()) << "after step " << s;
    EXPECT_EQ(r.blocks_before, before);
    EXPECT_EQ(r.blocks_after, eng.table.count);
    EXPECT_EQ(r.freed, reported) << "callback and result report the same ids";
    if (r.compressed) {
      ++compressions;
      EXPECT_EQ(eng.table.count, lagkv::blocks_for(layer.length(), bs)) << "step " << s;
      EXPECT_EQ(static_cast<index_t>(r.freed.size()), before - eng.table.count) << "step " << s;
      for (index_t i = eng.table.count; i < before; ++i)
        EXPECT_EQ(eng.storage[static_cast<std::size_t>(i)], lagkv::kNoBlock);
      freed_total += static_cast<index_t>(r.freed.size());
    } else {
      EXPECT_TRUE(r.freed.empty());
    }
  }
  EXPECT_GT(compressions, 1) << "the schedule never compressed: the test checks little";
  EXPECT_GT(freed_total, 0);
  EXPECT_EQ(freed_total, eng.taken_back);
  EXPECT_EQ(eng.handed_out - eng.taken_back, eng.table.count);
  EXPECT_EQ(layer.compressions(), compressions);
  // An explicit compress of a settled layer is a no-op or a further eviction, never a mismatch.
  const lagkv::paged_result r = layer.compress(eng.table);
  plain.compress(lagkv::compress_reason::explicit_call, 0);
  EXPECT_TRUE(same_tokens(layer, eng.table, plain));
  EXPECT_EQ(eng.table.count, r.compressed ? lagkv::blocks_for(layer.length(), bs) : r.blocks_before);
}

TEST_P(PagedVsPlain, EveryStepKeepsThePlainTokensAndReleasesEmptiedBlocks) {
  // Plain variables, not structured bindings: lambdas may not capture those before C++20.
  const dtype ty = std::get<0>(GetParam());
  const pol which = std::get<1>(GetParam());
  const head_aggregation agg = std::get<2>(GetParam());
  const index_t bs = std::get<3>(GetParam());
  lagkv::visit_dtype(ty, [&](auto t) { run_steps<decltype(t)>(which, agg, bs); });
}

INSTANTIATE_TEST_SUITE_P(
    All, PagedVsPlain,
    ::testing::Combine(::testing::Values(dtype::f32, dtype::f16, dtype::bf16),
                       ::testing::Values(pol::lagkv, pol::l2norm, pol::l2chunked, pol::streaming, pol::h2o,
                                         pol::random),
                       ::testing::Values(head_aggregation::sum, head_aggregation::max),
                       ::testing::Values(index_t{16}, index_t{7})),
    [](const auto& info) {
      return std::string(lagkv::dtype_name(std::get<0>(info.param))) + "_" + pol_name(std::get<1>(info.param)) + "_" +
             (std::get<2>(info.param) == head_aggregation::sum ? "sum" : "max") + "_bs" +
             std::to_string(std::get<3>(info.param));
    });

// ---- The acceptance test: 32k tokens in 16-token blocks ---------------------------------------

using big_param = std::tuple<dtype, pol>;
class Paged32k : public ::testing::TestWithParam<big_param> {};

template <class T, class P>
void run_32k(P policy, const lagkv::append_extras& extras = {}) {
  const index_t S = 32768, bs = 16, H = 2, D = 32;
  lagkv::paged_config cfg;
  cfg.block_size = bs;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.max_tokens = S;
  cfg.num_blocks = S / bs + 100;  // the pool holds other sequences' blocks too
  std::vector<T> kpool(static_cast<std::size_t>(cfg.num_blocks * bs * H * D)), vpool(kpool.size());
  // The sequence's table: 2048 distinct blocks scattered over the pool.
  std::vector<std::int32_t> all(static_cast<std::size_t>(cfg.num_blocks));
  std::iota(all.begin(), all.end(), 0);
  std::mt19937 rng(5);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<std::int32_t> ids(all.begin(), all.begin() + S / bs);
  const std::vector<std::int32_t> original = ids;
  block_table table{ids.data(), S / bs};
  // Token t's row holds values derived from t, so every kept row can be traced to its token.
  auto value = [](index_t t, index_t i) { return static_cast<float>((t * 131 + i * 7) % 509) / 64.0f - 4.0f; };
  std::vector<T> k(static_cast<std::size_t>(S * H * D)), v(k.size());
  for (index_t t = 0; t < S; ++t)
    for (index_t i = 0; i < H * D; ++i) {
      k[static_cast<std::size_t>(t * H * D + i)] = lagkv::from_float<T>(value(t, i));
      v[static_cast<std::size_t>(t * H * D + i)] = lagkv::from_float<T>(-value(t, i + 3));
    }
  lagkv::paged_layer<T, P> layer(cfg, kpool.data(), vpool.data(), policy);
  std::vector<std::int32_t> freed;
  layer.set_release_callback([&](const std::int32_t* f, index_t n) { freed.insert(freed.end(), f, f + n); });
  layer.append(k.data(), v.data(), S, table, extras);  // one prefill of 32k tokens
  layer.compress(table);                       // and whatever the schedule still has to do
  const index_t kept = layer.length();
  ASSERT_GT(kept, 0);
  ASSERT_LT(kept, S) << "nothing was evicted";
  // At most ceil(kept / 16) + 1 blocks held...
  EXPECT_LE(table.count, (kept + bs - 1) / bs + 1);
  EXPECT_EQ(table.count, (kept + bs - 1) / bs);
  // ...and every other block id has been handed back, exactly once.
  EXPECT_EQ(static_cast<index_t>(freed.size()), S / bs - table.count);
  std::vector<std::int32_t> held(ids.begin(), ids.begin() + table.count);
  EXPECT_TRUE(std::equal(held.begin(), held.end(), original.begin())) << "kept tokens packed into the first blocks";
  std::vector<std::int32_t> together = held;
  together.insert(together.end(), freed.begin(), freed.end());
  std::sort(together.begin(), together.end());
  std::vector<std::int32_t> want = original;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(together, want);
  for (index_t i = table.count; i < S / bs; ++i) EXPECT_EQ(ids[static_cast<std::size_t>(i)], lagkv::kNoBlock);
  // Every kept token is intact: its K/V row (all heads) is the one appended at its position.
  const auto& pos = layer.positions();
  ASSERT_EQ(static_cast<index_t>(pos.size()), kept);
  for (index_t s = 0; s < kept; ++s) {
    const index_t t = pos[static_cast<std::size_t>(s)];
    if (s > 0) {
      ASSERT_LT(pos[static_cast<std::size_t>(s - 1)], t);
    }
    for (index_t h = 0; h < H; ++h) {
      ASSERT_EQ(
          std::memcmp(layer.keys(table, h).row(s), k.data() + (t * H + h) * D, static_cast<std::size_t>(D) * sizeof(T)),
          0)
          << "slot " << s << " head " << h;
      ASSERT_EQ(std::memcmp(layer.values(table, h).row(s), v.data() + (t * H + h) * D,
                            static_cast<std::size_t>(D) * sizeof(T)),
                0)
          << "slot " << s << " head " << h;
    }
  }
}

TEST_P(Paged32k, LayerHoldsAtMostCeilKeptOver16PlusOneBlocksAndHandsBackTheRest) {
  const dtype ty = std::get<0>(GetParam());
  const pol which = std::get<1>(GetParam());
  lagkv::visit_dtype(ty, [&](auto t) {
    using T = decltype(t);
    switch (which) {
      case pol::lagkv: run_32k<T>(lagkv::lagkv_policy());  // the authors' defaults: sink 16, lag 1024, ratio 0.5
        break;
      case pol::l2norm: {
        lagkv::l2norm_params p;  // KnormPress on the prefill: keep half, 16 sinks, 64 recent
        p.sink = 16;
        p.window = 64;
        run_32k<T>(lagkv::l2norm_policy(p));
        break;
      }
      case pol::streaming: {
        lagkv::streaming_params p;
        p.sink = 4;
        p.window = 4092;
        run_32k<T>(lagkv::streaming_policy(p));
        break;
      }
      case pol::l2chunked: run_32k<T>(lagkv::any_policy(lagkv::l2norm_chunked_policy())); break;
      case pol::h2o: {
        lagkv::h2o_params p;  // keep half of the prefill by accumulated attention, 16 sinks, 64 recent
        p.ratio = 0.5;
        p.sink = 16;
        p.window = 64;
        // The prefill's attention as per-slot sums over its queries (2 query heads per KV head):
        // cheap at 32k, unlike queries (O(S^2) attention).
        const index_t q_heads = 4, S = 32768;
        std::vector<float> sums(static_cast<std::size_t>(q_heads * S));
        for (std::size_t i = 0; i < sums.size(); ++i) sums[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.0f;
        lagkv::append_extras x;
        x.attention.q_heads = q_heads;
        x.attention.prob_sums = sums.data();
        x.attention.row_stride = S;
        run_32k<T>(lagkv::h2o_policy(p), x);
        break;
      }
      case pol::random: {
        lagkv::random_params p;  // ratio 0.5 by default
        p.sink = 16;
        p.window = 64;
        p.seed = 7;
        run_32k<T>(lagkv::random_policy(p));
        break;
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(All, Paged32k,
                         ::testing::Combine(::testing::Values(dtype::f32, dtype::f16, dtype::bf16),
                                            ::testing::Values(pol::lagkv, pol::l2norm, pol::streaming, pol::l2chunked,
                                                              pol::h2o, pol::random)),
                         [](const auto& info) {
                           return std::string(lagkv::dtype_name(std::get<0>(info.param))) + "_" +
                                  pol_name(std::get<1>(info.param));
                         });

// ---- Aggregation ----------------------------------------------------------------------------------

/// Four tokens, two heads, L2 scores -||k||: head norms (1,100) (50,50) (60,60) (2,120). Sum keeps
/// {0, 1} (totals -101, -100); max keeps {0, 3} (best heads -1, -2). A NaN in one head evicts.
std::vector<index_t> kept_by(head_aggregation agg, bool nan_in_token0) {
  const index_t H = 2, D = 32, bs = 4;
  const float norms[4][2] = {{1, 100}, {50, 50}, {60, 60}, {2, 120}};
  std::vector<float> k(static_cast<std::size_t>(4 * H * D), 0.0f), v(k.size(), 0.0f);
  for (index_t t = 0; t < 4; ++t)
    for (index_t h = 0; h < H; ++h) k[static_cast<std::size_t>((t * H + h) * D)] = norms[t][h];
  if (nan_in_token0) k[static_cast<std::size_t>((0 * H + 1) * D + 5)] = NAN;
  lagkv::paged_config cfg;
  cfg.num_blocks = 4;
  cfg.block_size = bs;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.max_tokens = 8;
  cfg.aggregate = agg;
  std::vector<float> kp(static_cast<std::size_t>(4 * bs * H * D)), vp(kp.size());
  lagkv::l2norm_params p;
  p.budget = 2;
  lagkv::paged_layer<float, lagkv::l2norm_policy> layer(cfg, kp.data(), vp.data(), lagkv::l2norm_policy(p));
  std::vector<std::int32_t> ids = {3, 1};
  block_table table{ids.data(), 2};
  layer.append(k.data(), v.data(), 4, table);
  return layer.positions();
}

struct aggregation_case {
  const char* name;
  head_aggregation agg;
  bool nan_in_token0;
  std::vector<index_t> kept;
};

class PagedAggregation : public ::testing::TestWithParam<aggregation_case> {};

TEST_P(PagedAggregation, KeepsTheTokensOfItsRule) {
  EXPECT_EQ(kept_by(GetParam().agg, GetParam().nan_in_token0), GetParam().kept);
}

// Sum and max keep different tokens; a NaN in any head evicts the token under both rules.
INSTANTIATE_TEST_SUITE_P(SumAndMax, PagedAggregation,
                         ::testing::Values(aggregation_case{"sum", head_aggregation::sum, false, {0, 1}},
                                           aggregation_case{"max", head_aggregation::max, false, {0, 3}},
                                           aggregation_case{"sum_nan", head_aggregation::sum, true, {1, 2}},
                                           aggregation_case{"max_nan", head_aggregation::max, true, {1, 3}}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- A table shared by the layers of a sequence (vLLM) ------------------------------------------------

TEST(PagedSharedTable, LayersPackThenTheEngineReleasesOnceForTheLongest) {
  const index_t H = 2, D = 32, bs = 8, cap = 256, layers = 3;
  lagkv::paged_config cfg;
  cfg.block_size = bs;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.max_tokens = cap;
  cfg.num_blocks = cap / bs + 4;
  cfg.release_blocks = false;
  engine eng(cfg.num_blocks, bs, cfg.num_blocks, 8);
  std::vector<std::vector<float>> kp(layers), vp(layers);
  std::vector<lagkv::paged_layer<float>> ls;
  std::vector<plain_layer<float>> plain;
  for (index_t l = 0; l < layers; ++l) {
    kp[static_cast<std::size_t>(l)].resize(static_cast<std::size_t>(cfg.num_blocks * bs * H * D));
    vp[static_cast<std::size_t>(l)].resize(kp[static_cast<std::size_t>(l)].size());
    cfg.layer = l;
    ls.emplace_back(cfg, kp[static_cast<std::size_t>(l)].data(), vp[static_cast<std::size_t>(l)].data(),
                    make_policy(pol::lagkv));
    plain.emplace_back(H, D, cap, head_aggregation::sum, make_policy(pol::lagkv));
  }
  std::mt19937 rng(23);
  const index_t n = 150;
  eng.ensure(n);
  for (index_t l = 0; l < layers; ++l) {
    const auto k = random_rows<float>(n, H, D, rng), v = random_rows<float>(n, H, D, rng);
    const lagkv::paged_result r = ls[static_cast<std::size_t>(l)].append(k.data(), v.data(), n, eng.table);
    plain[static_cast<std::size_t>(l)].append(k.data(), v.data(), n);
    EXPECT_TRUE(r.compressed);
    EXPECT_TRUE(r.freed.empty()) << "a shared table is not released by one layer";
    EXPECT_EQ(eng.table.count, lagkv::blocks_for(n, bs));
  }
  index_t longest = 0;
  for (const auto& l : ls) longest = std::max(longest, l.length());
  std::vector<std::int32_t> freed;
  const index_t released = lagkv::release_unused_blocks(eng.table, longest, bs, freed);
  eng.give_back(freed.data(), released);
  EXPECT_EQ(released, lagkv::blocks_for(n, bs) - lagkv::blocks_for(longest, bs));
  EXPECT_GT(released, 0);
  EXPECT_EQ(eng.table.count, lagkv::blocks_for(longest, bs));
  EXPECT_TRUE(eng.consistent());
  for (index_t l = 0; l < layers; ++l)
    EXPECT_TRUE(same_tokens(ls[static_cast<std::size_t>(l)], eng.table, plain[static_cast<std::size_t>(l)]))
        << "layer " << l;
  EXPECT_THROW(lagkv::release_unused_blocks(eng.table, eng.table.count * bs + 1, bs, freed), lagkv::error);
}

// ---- commit(): rows the engine wrote itself ------------------------------------------------------------

TEST(PagedCommit, AdoptsRowsWrittenInPlaceLikeAppend) {
  const index_t H = 2, D = 32, bs = 16, cap = 300;
  lagkv::paged_config cfg;
  cfg.block_size = bs;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.max_tokens = cap;
  cfg.num_blocks = 40;
  std::vector<lagkv::f16> kp(static_cast<std::size_t>(cfg.num_blocks * bs * H * D)), vp(kp.size());
  engine eng(cfg.num_blocks, bs, cfg.num_blocks, 4);
  lagkv::paged_layer<lagkv::f16> layer(cfg, kp.data(), vp.data(), make_policy(pol::lagkv));
  plain_layer<lagkv::f16> plain(H, D, cap, head_aggregation::sum, make_policy(pol::lagkv));
  std::mt19937 rng(29);
  for (index_t n : {100, 1, 1, 60}) {
    const auto k = random_rows<lagkv::f16>(n, H, D, rng), v = random_rows<lagkv::f16>(n, H, D, rng);
    eng.ensure(layer.length() + n);
    for (index_t i = 0; i < n; ++i) {  // the engine's own slot mapping, as reshape_and_cache does
      const index_t t = layer.length() + i;
      const index_t slot = static_cast<index_t>(eng.table.ids[t / bs]) * bs + t % bs;
      std::copy(k.begin() + i * H * D, k.begin() + (i + 1) * H * D, kp.begin() + slot * H * D);
      std::copy(v.begin() + i * H * D, v.begin() + (i + 1) * H * D, vp.begin() + slot * H * D);
    }
    const lagkv::paged_result r = layer.commit(n, eng.table);
    eng.give_back(r.freed.data(), static_cast<index_t>(r.freed.size()));
    plain.append(k.data(), v.data(), n);
    EXPECT_TRUE(same_tokens(layer, eng.table, plain)) << "after " << n;
    EXPECT_TRUE(eng.consistent());
  }
  EXPECT_GT(layer.compressions(), 0);
}

// ---- Errors: named parameters, nothing changed ----------------------------------------------------------

struct error_fixture {
  static constexpr index_t H = 2, D = 32, bs = 4;
  lagkv::paged_config cfg;
  std::vector<float> kp, vp;
  std::vector<std::int32_t> ids;
  block_table table;
  error_fixture() {
    cfg.block_size = bs;
    cfg.kv_heads = H;
    cfg.head_dim = D;
    cfg.max_tokens = 64;
    cfg.num_blocks = 16;
    kp.resize(static_cast<std::size_t>(cfg.num_blocks * bs * H * D));
    vp.resize(kp.size());
    for (std::size_t i = 0; i < kp.size(); ++i) kp[i] = static_cast<float>(i % 101);
    vp = kp;
    ids = {5, 9, 2, 11, 0, 7, 3, 8, 1, 4, 6, 10, 12, 13, 14, 15};
    table = block_table{ids.data(), 16};
  }
};

::testing::AssertionResult throws_naming(const std::function<void()>& fn, const std::string& what) {
  try {
    fn();
  } catch (const lagkv::error& e) {
    if (std::string(e.what()).find(what) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "message \"" << e.what() << "\" lacks \"" << what << "\"";
  }
  return ::testing::AssertionFailure() << "no lagkv::error";
}

enum class bad_config { num_blocks, block_size, kv_heads, head_dim, max_tokens, null_pool, shares_heads, lagkv_dim };
struct config_case {
  bad_config which;
  const char* what;
};

class PagedConfigErrors : public ::testing::TestWithParam<config_case> {};

TEST_P(PagedConfigErrors, NameTheFieldAndItsValue) {
  error_fixture f;
  lagkv::paged_config c = f.cfg;
  float* k = f.kp.data();
  lagkv::any_policy policy = make_policy(pol::lagkv);
  switch (GetParam().which) {
    case bad_config::num_blocks: c.num_blocks = 0; break;
    case bad_config::block_size: c.block_size = 0; break;
    case bad_config::kv_heads: c.kv_heads = -1; break;
    case bad_config::head_dim: c.head_dim = 0; break;
    case bad_config::max_tokens: c.max_tokens = 0; break;
    case bad_config::null_pool: k = nullptr; break;
    case bad_config::shares_heads: {
      lagkv::l2norm_params shared;
      shared.budget = 8;
      shared.share_heads = true;
      policy = lagkv::l2norm_policy(shared);
      break;
    }
    case bad_config::lagkv_dim: c.head_dim = 1; break;  // LagKV's std over channels needs two
  }
  EXPECT_TRUE(throws_naming([&] { lagkv::paged_layer<float> l(c, k, f.vp.data(), policy); }, GetParam().what));
}

INSTANTIATE_TEST_SUITE_P(All, PagedConfigErrors,
                         ::testing::Values(config_case{bad_config::num_blocks, "num_blocks=0"},
                                           config_case{bad_config::block_size, "block_size=0"},
                                           config_case{bad_config::kv_heads, "kv_heads=-1"},
                                           config_case{bad_config::head_dim, "head_dim=0"},
                                           config_case{bad_config::max_tokens, "max_tokens=0"},
                                           config_case{bad_config::null_pool, "k_pool"},
                                           config_case{bad_config::shares_heads, "shares_heads=true"},
                                           config_case{bad_config::lagkv_dim, "head_dim=1"}),
                         [](const auto& info) { return std::string(info.param.what).substr(0, 6) + std::to_string(info.index); });

/// A policy whose plans differ between heads: unusable for a uniform per-layer budget.
struct skewed_policy : lagkv::policy_base {
  static constexpr const char* kName = "skewed";
  void plan(const lagkv::layer_info& l, lagkv::compress_reason, lagkv::layer_plan& out) const noexcept {
    for (index_t h = 0; h < l.kv_heads; ++h)
      if (l.lengths[h] >= 8) out.heads[h] = lagkv::compress_plan{0, 1, 8 - h, 2};
  }
  template <class T>
  void score(const lagkv::head_data<T>&, const lagkv::compress_plan& p, index_t, lagkv::score_t* out) const noexcept {
    for (index_t i = 0; i < p.chunk; ++i) out[i] = static_cast<float>(i);
  }
};

/// Runs `fn` (expected to throw naming `what`) and checks that the layer, table and pools are unchanged.
template <class L>
void expect_unchanged_after(error_fixture& f, L& layer, const std::function<void()>& fn, const std::string& what) {
  const auto kp = f.kp, vp = f.vp;
  const auto ids = f.ids;
  const index_t count = f.table.count, len = layer.length(), seen = layer.tokens_seen();
  const auto pos = layer.positions();
  EXPECT_TRUE(throws_naming(fn, what));
  EXPECT_EQ(f.kp, kp);
  EXPECT_EQ(f.vp, vp);
  EXPECT_EQ(f.ids, ids);
  EXPECT_EQ(f.table.count, count);
  EXPECT_EQ(layer.length(), len);
  EXPECT_EQ(layer.tokens_seen(), seen);
  EXPECT_EQ(layer.positions(), pos);
}

enum class bad_call { too_many, negative, null_rows, short_table, id_out_of_range, repeat_when_compressing,
                      repeat_on_compress };
struct call_case {
  bad_call which;
  const char* what;
};

class PagedCallErrors : public ::testing::TestWithParam<call_case> {};

/// A layer holding 5 tokens under an L2 budget of 6: the next append of 4 compresses.
TEST_P(PagedCallErrors, NameTheParameterAndChangeNothing) {
  error_fixture f;
  lagkv::l2norm_params p;
  p.budget = 6;
  lagkv::paged_layer<float> layer(f.cfg, f.kp.data(), f.vp.data(), lagkv::l2norm_policy(p));
  std::vector<float> rows(static_cast<std::size_t>(64 * f.H * f.D), 1.5f);
  layer.append(rows.data(), rows.data(), 5, f.table);  // 5 <= budget: no compression
  ASSERT_EQ(layer.length(), 5);
  block_table shorter{f.ids.data(), 2};  // covers 8 tokens
  std::function<void()> call = [&] { layer.append(rows.data(), rows.data(), 4, f.table); };
  switch (GetParam().which) {
    case bad_call::too_many: call = [&] { layer.append(rows.data(), rows.data(), 60, f.table); }; break;
    case bad_call::negative: call = [&] { layer.append(rows.data(), rows.data(), -1, f.table); }; break;
    case bad_call::null_rows: call = [&] { layer.append(nullptr, rows.data(), 2, f.table); }; break;
    case bad_call::short_table: call = [&] { layer.append(rows.data(), rows.data(), 4, shorter); }; break;
    case bad_call::id_out_of_range: f.ids[2] = 99; break;
    case bad_call::repeat_when_compressing: f.ids[2] = 5; break;  // repeats ids[0]; this append would move rows
    case bad_call::repeat_on_compress:  // a repeat among the 2 blocks the 5 tokens occupy
      f.ids[1] = 5;
      call = [&] { layer.compress(f.table); };
      break;
  }
  expect_unchanged_after(f, layer, call, GetParam().what);
}

INSTANTIATE_TEST_SUITE_P(All, PagedCallErrors,
                         ::testing::Values(call_case{bad_call::too_many, "exceeds max_tokens=64"},
                                           call_case{bad_call::negative, "tokens=-1"},
                                           call_case{bad_call::null_rows, "k/v=nullptr"},
                                           call_case{bad_call::short_table, "table.count=2"},
                                           call_case{bad_call::id_out_of_range, "table.ids[2]=99"},
                                           call_case{bad_call::repeat_when_compressing, "table.ids[0]=5: block id used twice"},
                                           call_case{bad_call::repeat_on_compress, "used twice"}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

TEST(PagedErrors, ARepeatedIdIsHarmlessUntilRowsMove) {
  error_fixture f;
  lagkv::l2norm_params p;
  p.budget = 6;
  lagkv::paged_layer<float> layer(f.cfg, f.kp.data(), f.vp.data(), lagkv::l2norm_policy(p));
  std::vector<float> rows(static_cast<std::size_t>(16 * f.H * f.D), 1.5f);
  f.ids[3] = 5;  // repeats ids[0], but 5 tokens only occupy blocks 0 and 1 and nothing is evicted
  EXPECT_NO_THROW(layer.append(rows.data(), rows.data(), 5, f.table));
  f.ids[3] = 11;
  const lagkv::paged_result r = layer.append(rows.data(), rows.data(), 4, f.table);
  EXPECT_TRUE(r.compressed);
  EXPECT_EQ(layer.length(), 6);
}

TEST(PagedErrors, PlansThatDifferBetweenHeadsAreRejectedBeforeAnythingMoves) {
  error_fixture f;
  lagkv::paged_layer<float, skewed_policy> layer(f.cfg, f.kp.data(), f.vp.data());
  std::vector<float> rows(static_cast<std::size_t>(16 * f.H * f.D), 2.0f);
  layer.append(rows.data(), rows.data(), 7, f.table);
  expect_unchanged_after(f, layer, [&] { layer.append(rows.data(), rows.data(), 3, f.table); }, "plan of head=1");
  expect_unchanged_after(f, layer, [&] { layer.append(rows.data(), rows.data(), 3, f.table); }, "skewed");
}

// ---- Reset ------------------------------------------------------------------------------------------

TEST(PagedClear, StartsANewSequenceFromPositionZero) {
  error_fixture f;
  lagkv::paged_layer<float> layer(f.cfg, f.kp.data(), f.vp.data(), make_policy(pol::streaming));
  std::vector<float> rows(static_cast<std::size_t>(60 * f.H * f.D), 1.0f);
  layer.append(rows.data(), rows.data(), 50, f.table);
  EXPECT_EQ(layer.length(), 41);  // sink 4 + window 37
  layer.clear();
  EXPECT_EQ(layer.length(), 0);
  EXPECT_EQ(layer.tokens_seen(), 0);
  layer.append(rows.data(), rows.data(), 3, f.table);
  EXPECT_EQ(layer.positions(), (std::vector<index_t>{0, 1, 2}));
}

}  // namespace
