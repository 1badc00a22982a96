// kv_cache's hooks for option (b) of docs/positions.md: rerotate_to_contiguous (re-rotate each
// head's kept keys to start, start+1, ... and renumber) and renumber_positions (renumber only),
// next_position, and their strong exception guarantee.
//
// The re-rotated keys are compared with rotating the original (unrotated) keys freshly at the
// new positions, per component, within tests/test_rope.cpp's bound relative to the norm r of the
// component's rotation pair: (3u + 12 * 2^-24) r (+ 3 * 2^-25 for fp16 subnormals), u the
// storage type's unit roundoff (fp32: 0). Channels past rotary_dim and all values must not
// change at all.
#include <gtest/gtest.h>
#include <lagkv/cache.hpp>
#include <lagkv/policy/lagkv.hpp>
#include <lagkv/policy/streaming.hpp>
#include <lagkv/rope.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "support/cache_layouts.hpp"

namespace {

using lagkv::bf16;
using lagkv::f16;
using lagkv::index_t;
using lagkv_test::cache_layout;
using lagkv_test::layout_name;

constexpr index_t kLayers = 2, kHeads = 2, kDim = 64, kCapacity = 96, kTokens = 60;

lagkv::lagkv_params small_lagkv() {
  lagkv::lagkv_params p;
  p.sink = 4;
  p.lag = 8;
  p.ratio = 0.5;
  return p;
}

template <class T>
double storage_u() {
  if constexpr (std::is_same_v<T, f16>) return 1.0 / (1 << 11);
  if constexpr (std::is_same_v<T, bf16>) return 1.0 / (1 << 8);
  return 0.0;
}
/// tests/test_rope.cpp's shift-vs-fresh bound for one component of a pair of norm r.
template <class T>
double shift_tolerance(double r) {
  const double floor = std::is_same_v<T, f16> ? 3.0 * std::ldexp(1.0, -25) : 0.0;
  return (3.0 * storage_u<T>() + 12.0 / (1 << 24)) * r + floor;
}

index_t partner_of(lagkv::rope_style style, index_t rotary_dim, index_t c) {
  if (style == lagkv::rope_style::neox) return c < rotary_dim / 2 ? c + rotary_dim / 2 : c - rotary_dim / 2;
  return c ^ 1;
}

/// A cache of `kLayers` layers whose keys were rotated at their positions 0..kTokens-1 before
/// the append (as an engine stores them), compressed by LagKV (per-head kept sets) or
/// StreamingLLM (one kept set for all heads: rotated in one call), plus the unrotated keys to
/// rotate freshly.
template <class T>
struct rotated_cache {
  lagkv_test::engine_memory<T> mem;  // blocks of 5 when paged
  std::unique_ptr<lagkv::kv_cache<T>> cache;
  std::vector<T> raw_k, v;  // [H, kTokens, D] per layer (the same input for every layer)

  rotated_cache(cache_layout id, const lagkv::rope_params& rope, std::uint32_t seed,
                const lagkv::any_policy& policy = lagkv::lagkv_policy(small_lagkv()))
      : mem(id, kLayers, kHeads, kCapacity, kDim, 5) {
    lagkv::cache_config cfg;
    cfg.layers = kLayers;
    cfg.kv_heads = kHeads;
    cfg.head_dim = kDim;
    cfg.capacity = kCapacity;
    cache = id == cache_layout::owned ? std::make_unique<lagkv::kv_cache<T>>(cfg, policy)
                                      : std::make_unique<lagkv::kv_cache<T>>(cfg, mem.layers, policy);
    std::mt19937 gen(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    raw_k.resize(static_cast<std::size_t>(kHeads * kTokens * kDim));
    v.resize(raw_k.size());
    for (auto& x : raw_k) x = lagkv::from_float<T>(dist(gen));
    for (auto& x : v) x = lagkv::from_float<T>(dist(gen));
    std::vector<T> rotated = raw_k;
    std::vector<index_t> pos(static_cast<std::size_t>(kTokens));
    std::iota(pos.begin(), pos.end(), index_t{0});
    for (index_t h = 0; h < kHeads; ++h)
      lagkv::apply_rope(lagkv::view_hsd(rotated.data(), kHeads, kTokens, kDim, h), pos.data(), kTokens, rope);
    for (index_t l = 0; l < kLayers; ++l) cache->append(l, rotated.data(), v.data(), kTokens);
  }

  /// raw key of token p, head h, rotated freshly at position q.
  std::vector<T> fresh(index_t h, index_t p, index_t q, const lagkv::rope_params& rope) const {
    std::vector<T> row(raw_k.begin() + (h * kTokens + p) * kDim, raw_k.begin() + (h * kTokens + p + 1) * kDim);
    lagkv::apply_rope(lagkv::kv_view<T>(row.data(), 1, kDim, kDim), &q, 1, rope, lagkv::rope_isa::scalar);
    return row;
  }
};

template <class T>
std::vector<float> dump(const lagkv::kv_view<const T>& v) {
  std::vector<float> out;
  for (index_t t = 0; t < v.tokens(); ++t)
    for (index_t c = 0; c < v.head_dim(); ++c) out.push_back(lagkv::to_float(v(t, c)));
  return out;
}

/// Everything a failed call must leave alone: keys, values, positions, next_position.
template <class T>
struct snapshot {
  std::vector<std::vector<float>> k, v;
  std::vector<std::vector<index_t>> pos;
  std::vector<index_t> next;
  explicit snapshot(const lagkv::kv_cache<T>& c) {
    for (index_t l = 0; l < kLayers; ++l) {
      next.push_back(c.next_position(l));
      for (index_t h = 0; h < kHeads; ++h) {
        k.push_back(dump<T>(c.keys(l, h)));
        v.push_back(dump<T>(c.values(l, h)));
        pos.push_back(c.positions(l, h).to_vector());
      }
    }
  }
  bool operator==(const snapshot& o) const {
    // Bitwise through float: identical patterns give identical floats (no NaN in these tests).
    return k == o.k && v == o.v && pos == o.pos && next == o.next;
  }
};

// ---- rerotate_to_contiguous against fresh rotation -----------------------------------------------

struct shift_case {
  lagkv::dtype type;
  lagkv::rope_style style;
  index_t rotary_dim;  // 0: head_dim
  cache_layout layout;
  index_t start;
  bool shared = false;  // StreamingLLM: every head holds the same positions
};
std::string case_name(const ::testing::TestParamInfo<shift_case>& info) {
  const shift_case& c = info.param;
  return std::string(lagkv::dtype_name(c.type)) + "_" + lagkv::rope_style_name(c.style) + "_rot" +
         std::to_string(c.rotary_dim == 0 ? kDim : c.rotary_dim) + "_" + layout_name(c.layout) + "_start" +
         std::to_string(c.start) + (c.shared ? "_shared" : "");
}

void PrintTo(const shift_case& c, std::ostream* os) {
  *os << lagkv::dtype_name(c.type) << " " << lagkv::rope_style_name(c.style) << " rotary_dim="
      << (c.rotary_dim == 0 ? kDim : c.rotary_dim) << " " << layout_name(c.layout) << " start=" << c.start
      << (c.shared ? " shared positions" : "");
}

std::vector<shift_case> shift_cases() {
  std::vector<shift_case> out;
  for (lagkv::dtype t : {lagkv::dtype::f32, lagkv::dtype::f16, lagkv::dtype::bf16})
    for (lagkv::rope_style s : {lagkv::rope_style::neox, lagkv::rope_style::interleaved})
      for (index_t rot : {index_t{0}, index_t{24}}) out.push_back({t, s, rot, cache_layout::owned, 5});
  for (cache_layout l : {cache_layout::shd, cache_layout::hds, cache_layout::paged})
    out.push_back({lagkv::dtype::f16, lagkv::rope_style::neox, 0, l, 0});
  out.push_back({lagkv::dtype::f16, lagkv::rope_style::neox, 0, cache_layout::owned, 0, true});
  out.push_back({lagkv::dtype::bf16, lagkv::rope_style::interleaved, 24, cache_layout::paged, 3, true});
  return out;
}

class CacheRerotate : public ::testing::TestWithParam<shift_case> {};

template <class T>
void check_rerotation(const shift_case& sc) {
  lagkv::rope_params rope;
  rope.style = sc.style;
  rope.rotary_dim = sc.rotary_dim;
  rope.base = 500000.0;
  const index_t rot = sc.rotary_dim == 0 ? kDim : sc.rotary_dim;
  lagkv::streaming_params sp;
  sp.sink = 4;
  sp.window = 20;
  rotated_cache<T> rc(sc.layout, rope, 1234,
                      sc.shared ? lagkv::any_policy(lagkv::streaming_policy(sp)) : lagkv::any_policy(lagkv::lagkv_policy(small_lagkv())));
  auto& cache = *rc.cache;
  ASSERT_GT(cache.compressions(0), 0) << "the fixture must have evicted tokens";
  ASSERT_LT(cache.length(0, 0), kTokens);

  std::vector<std::vector<index_t>> before;
  std::vector<std::vector<float>> keys_before, values_before;
  for (index_t h = 0; h < kHeads; ++h) {
    before.push_back(cache.positions(0, h).to_vector());
    keys_before.push_back(dump<T>(cache.keys(0, h)));
    values_before.push_back(dump<T>(cache.values(0, h)));
  }
  const snapshot<T> other_layer_before(cache);
  if (sc.shared)
    EXPECT_EQ(before[0], before[1]) << "StreamingLLM keeps the same tokens in every head";
  else
    EXPECT_NE(before[0], before[1]) << "LagKV should keep different tokens per head here";

  cache.rerotate_to_contiguous(0, rope, sc.start);

  EXPECT_EQ(cache.next_position(0), sc.start + cache.max_length(0));
  EXPECT_EQ(cache.tokens_seen(0), kTokens);
  for (index_t h = 0; h < kHeads; ++h) {
    const auto pos = cache.positions(0, h);
    const index_t n = pos.size();
    ASSERT_EQ(n, static_cast<index_t>(before[static_cast<std::size_t>(h)].size()));
    for (index_t i = 0; i < n; ++i) EXPECT_EQ(pos[i], sc.start + i) << "head " << h << " slot " << i;
    EXPECT_EQ(dump<T>(cache.values(0, h)), values_before[static_cast<std::size_t>(h)]) << "values must not change";
    const auto keys = cache.keys(0, h);
    double worst = 0.0;
    for (index_t i = 0; i < n; ++i) {
      const index_t p = before[static_cast<std::size_t>(h)][static_cast<std::size_t>(i)];
      const std::vector<T> want = rc.fresh(h, p, sc.start + i, rope);
      for (index_t c = 0; c < kDim; ++c) {
        const double got = lagkv::to_float(keys(i, c));
        if (c >= rot) {  // never rotated, never touched
          ASSERT_EQ(got, keys_before[static_cast<std::size_t>(h)][static_cast<std::size_t>(i * kDim + c)]) << i << "," << c;
          continue;
        }
        const double a = lagkv::to_float(want[static_cast<std::size_t>(c)]);
        const double b = lagkv::to_float(want[static_cast<std::size_t>(partner_of(sc.style, rot, c))]);
        const double tol = shift_tolerance<T>(std::hypot(a, b));
        ASSERT_LE(std::fabs(got - a), tol) << "head " << h << " slot " << i << " (position " << p << " -> "
                                           << sc.start + i << ") channel " << c;
        worst = std::max(worst, std::fabs(got - a) / tol);
      }
    }
    ::testing::Test::RecordProperty("worst_error_over_tolerance_head" + std::to_string(h), std::to_string(worst));
  }
  // The other layer is untouched.
  const snapshot<T> after(cache);
  for (index_t h = 0; h < kHeads; ++h) {
    const std::size_t i = static_cast<std::size_t>(kHeads + h);
    EXPECT_EQ(after.k[i], other_layer_before.k[i]);
    EXPECT_EQ(after.pos[i], other_layer_before.pos[i]);
  }
  EXPECT_EQ(after.next[1], kTokens);

  // The next token continues the new numbering, and LagKV keeps compressing the layer.
  std::vector<T> one_k(static_cast<std::size_t>(kHeads * kDim), lagkv::from_float<T>(0.5f)), one_v = one_k;
  const index_t next = cache.next_position(0);
  cache.append(0, one_k.data(), one_v.data(), 1);
  for (index_t h = 0; h < kHeads; ++h) EXPECT_EQ(cache.positions(0, h)[cache.length(0, h) - 1], next);
  EXPECT_EQ(cache.next_position(0), next + 1);
}

TEST_P(CacheRerotate, KeysMatchFreshRotationAtTheNewPositions) {
  const shift_case& sc = GetParam();
  lagkv::visit_dtype(sc.type, [&](auto tag) { check_rerotation<decltype(tag)>(sc); });
}

INSTANTIATE_TEST_SUITE_P(AllDtypesStylesRotary, CacheRerotate, ::testing::ValuesIn(shift_cases()), case_name);

// ---- Kernels, renumber_positions, errors ----------------------------------------------------------

lagkv::rope_params llama_rope() {
  lagkv::rope_params rope;
  rope.style = lagkv::rope_style::neox;
  rope.base = 10000.0;
  return rope;
}

TEST(CacheRerotate, EveryKernelGivesTheScalarKernelsBits) {
  const auto rope = llama_rope();
  rotated_cache<f16> want(cache_layout::owned, rope, 7);
  want.cache->rerotate_to_contiguous(0, rope, 0, lagkv::rope_isa::scalar);
  for (lagkv::rope_isa isa : {lagkv::rope_isa::automatic, lagkv::rope_isa::avx2, lagkv::rope_isa::avx512}) {
    if (!lagkv::rope_isa_available(isa)) continue;
    rotated_cache<f16> got(cache_layout::owned, rope, 7);
    got.cache->rerotate_to_contiguous(0, rope, 0, isa);
    for (index_t h = 0; h < kHeads; ++h)
      EXPECT_EQ(dump<f16>(got.cache->keys(0, h)), dump<f16>(want.cache->keys(0, h))) << lagkv::rope_isa_name(isa);
  }
}

TEST(CacheRenumber, RenumbersWithoutTouchingKeysAndNewTokensContinue) {
  const auto rope = llama_rope();
  rotated_cache<float> rc(cache_layout::owned, rope, 9);
  auto& cache = *rc.cache;
  const snapshot<float> before(cache);
  cache.renumber_positions(0, 2);
  const snapshot<float> after(cache);
  EXPECT_EQ(after.k, before.k);
  EXPECT_EQ(after.v, before.v);
  for (index_t h = 0; h < kHeads; ++h) {
    const auto pos = cache.positions(0, h);
    for (index_t i = 0; i < pos.size(); ++i) EXPECT_EQ(pos[i], 2 + i);
  }
  EXPECT_EQ(cache.next_position(0), 2 + cache.max_length(0));
  EXPECT_EQ(cache.next_position(1), kTokens);
  // Append until LagKV compresses again: positions stay ascending and end at next_position - 1.
  std::vector<float> k(static_cast<std::size_t>(kHeads * 16 * kDim), 0.25f), v = k;
  const index_t compressions = cache.compressions(0), next = cache.next_position(0);
  cache.append(0, k.data(), v.data(), 16);
  EXPECT_GT(cache.compressions(0), compressions);
  EXPECT_EQ(cache.next_position(0), next + 16);
  for (index_t h = 0; h < kHeads; ++h) {
    const auto pos = cache.positions(0, h).to_vector();
    EXPECT_TRUE(std::is_sorted(pos.begin(), pos.end()));
    EXPECT_EQ(pos.back(), next + 15);
  }
  // clear() restarts the numbering at 0.
  cache.clear(0);
  EXPECT_EQ(cache.next_position(0), 0);
}

TEST(CacheRerotate, InvalidCallsThrowNamingTheParameterAndChangeNothing) {
  const auto rope = llama_rope();
  rotated_cache<f16> rc(cache_layout::owned, rope, 11);
  auto& cache = *rc.cache;
  const snapshot<f16> before(cache);
  auto expect_error = [&](auto&& call, const std::string& needle) {
    try {
      call();
      ADD_FAILURE() << "no error; expected one naming " << needle;
    } catch (const lagkv::error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
    EXPECT_TRUE(snapshot<f16>(cache) == before) << "state changed by a failed call naming " << needle;
  };
  expect_error([&] { cache.rerotate_to_contiguous(kLayers, rope); }, "layer=2");
  expect_error([&] { cache.rerotate_to_contiguous(0, rope, -1); }, "start=-1");
  expect_error([&] { cache.renumber_positions(-1); }, "layer=-1");
  expect_error([&] { cache.renumber_positions(0, -3); }, "start=-3");
  const index_t huge = std::numeric_limits<index_t>::max() - 3;
  expect_error([&] { cache.renumber_positions(0, huge); }, "overflows");
  expect_error([&] { cache.rerotate_to_contiguous(0, rope, huge); }, "overflows");
  lagkv::rope_params odd = rope;
  odd.rotary_dim = 7;
  expect_error([&] { cache.rerotate_to_contiguous(0, odd); }, "rotary_dim=7");
  lagkv::rope_params wide = rope;
  wide.rotary_dim = kDim + 2;
  expect_error([&] { cache.rerotate_to_contiguous(0, wide); }, "rotary_dim=66");
  lagkv::rope_params base = rope;
  base.base = -1.0;
  expect_error([&] { cache.rerotate_to_contiguous(0, base); }, "base=-1");
  for (lagkv::rope_isa isa : {lagkv::rope_isa::avx2, lagkv::rope_isa::avx512})
    if (!lagkv::rope_isa_available(isa))
      expect_error([&] { cache.rerotate_to_contiguous(0, rope, 0, isa); }, lagkv::rope_isa_name(isa));
}

}  // namespace
