// compact_rows / move_rows_down (compact.hpp) against a naive copy, bit for bit, on every layout
// adapter (the contiguous fast path and the generic per-row path), and the checks that leave the
// cache untouched.
#include <gtest/gtest.h>
#include <lagkv/compact.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "support/layouts.hpp"

namespace {

using lagkv::index_t;
using lagkv_test::view_layout;

enum class pattern { all, none, every_other, random_half, tail_only };
const char* pattern_name(pattern p) {
  switch (p) {
    case pattern::all: return "all";
    case pattern::none: return "none";
    case pattern::every_other: return "every_other";
    case pattern::random_half: return "random_half";
    case pattern::tail_only: return "tail_only";
  }
  return "?";
}

constexpr index_t kHeads = 3, kHead = 1, kTokens = 97, kBlock = 7;

/// Memory for kHeads heads of kTokens x d f16 values in layout `l`, each element unique, and the
/// view of head kHead.
struct cache_fixture : lagkv_test::head_memory<lagkv::f16> {
  cache_fixture(view_layout l, index_t d) : head_memory(l, shape(d), [](std::size_t i) {
    lagkv::f16 x;
    x.bits = static_cast<std::uint16_t>(i * 40503u + 7u);
    return x;
  }) {}
  static lagkv_test::head_shape shape(index_t d) {
    lagkv_test::head_shape s;
    s.heads = kHeads, s.head = kHead, s.capacity = kTokens, s.tokens = kTokens, s.head_dim = d, s.block_size = kBlock;
    return s;
  }
  /// Row t of the view, copied out.
  std::vector<std::uint16_t> row(index_t t) const {
    std::vector<std::uint16_t> r(static_cast<std::size_t>(view.head_dim()));
    for (index_t c = 0; c < view.head_dim(); ++c) r[static_cast<std::size_t>(c)] = view(t, c).bits;
    return r;
  }
};

std::vector<index_t> make_kept(pattern p, index_t dst, unsigned seed) {
  std::vector<index_t> kept;
  std::mt19937 rng(seed);
  for (index_t t = dst; t < kTokens; ++t) {
    bool keep = false;
    switch (p) {
      case pattern::all: keep = true; break;
      case pattern::none: keep = false; break;
      case pattern::every_other: keep = t % 2 == 1; break;
      case pattern::random_half: keep = rng() % 2 == 0; break;
      case pattern::tail_only: keep = t >= kTokens - 5; break;
    }
    if (keep) kept.push_back(t);
  }
  return kept;
}

using compact_param = std::tuple<view_layout, index_t, pattern, index_t>;  // layout, head_dim, kept pattern, dst
class Compact : public ::testing::TestWithParam<compact_param> {};

TEST_P(Compact, MovesExactlyTheKeptRowsAndNothingElse) {
  const auto [l, d, p, dst] = GetParam();
  cache_fixture f(l, d);
  const std::vector<index_t> kept = make_kept(p, dst, static_cast<unsigned>(d * 31 + dst));
  // What every row of every head must hold afterwards.
  std::vector<std::vector<std::uint16_t>> want;
  for (index_t t = 0; t < kTokens; ++t) want.push_back(f.row(t));
  for (std::size_t i = 0; i < kept.size(); ++i) want[static_cast<std::size_t>(dst) + i] = f.row(kept[i]);
  const std::vector<lagkv::f16> before = f.mem;
  lagkv::compact_rows(f.view, kept.data(), static_cast<index_t>(kept.size()), dst);
  for (index_t t = 0; t < kTokens; ++t) ASSERT_EQ(f.row(t), want[static_cast<std::size_t>(t)]) << "row " << t;
  // Memory outside head kHead's rows is untouched: mark the head's elements and compare the rest.
  std::vector<bool> in_head(f.mem.size(), false);
  for (index_t t = 0; t < kTokens; ++t)
    for (index_t c = 0; c < d; ++c) in_head[static_cast<std::size_t>(&f.view(t, c) - f.mem.data())] = true;
  for (std::size_t i = 0; i < f.mem.size(); ++i) {
    if (!in_head[i]) {
      ASSERT_EQ(f.mem[i].bits, before[i].bits) << "element " << i << " outside the head changed";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllLayouts, Compact,
    ::testing::Combine(::testing::Values(view_layout::hsd, view_layout::shd, view_layout::hds, view_layout::paged),
                       ::testing::Values(1, 5, 64, 128),
                       ::testing::Values(pattern::all, pattern::none, pattern::every_other, pattern::random_half,
                                         pattern::tail_only),
                       ::testing::Values(0, 3)),
    [](const ::testing::TestParamInfo<compact_param>& info) {
      return std::string(lagkv_test::layout_name(std::get<0>(info.param))) + "_D" +
             std::to_string(std::get<1>(info.param)) + "_" + pattern_name(std::get<2>(info.param)) + "_dst" +
             std::to_string(std::get<3>(info.param));
    });

class CompactChecks : public ::testing::TestWithParam<view_layout> {};

TEST_P(CompactChecks, RejectsBadKeptListsNamingTheIndexAndMovesNothing) {
  cache_fixture f(GetParam(), 16);
  const std::vector<lagkv::f16> before = f.mem;
  const std::vector<std::vector<index_t>> bad = {
      {3, 2},        // not ascending
      {4, 4},        // repeated
      {0, kTokens},  // out of range
      {1, 2},        // kept[0] = 1 < dst = 2 below
  };
  for (std::size_t b = 0; b < bad.size(); ++b) {
    const index_t dst = b == 3 ? 2 : 0;
    try {
      lagkv::compact_rows(f.view, bad[b].data(), static_cast<index_t>(bad[b].size()), dst);
      ADD_FAILURE() << "case " << b << " did not throw";
    } catch (const lagkv::error& e) {
      EXPECT_NE(std::string(e.what()).find("kept["), std::string::npos) << e.what();
    }
    ASSERT_EQ(std::memcmp(f.mem.data(), before.data(), before.size() * sizeof(lagkv::f16)), 0) << "case " << b;
  }
}

TEST_P(CompactChecks, MoveRowsDownMovesTheTail) {
  cache_fixture f(GetParam(), 9);
  std::vector<std::vector<std::uint16_t>> want;
  for (index_t t = 0; t < kTokens; ++t) want.push_back(f.row(t));
  for (index_t i = 0; i < 20; ++i) want[static_cast<std::size_t>(10 + i)] = f.row(50 + i);
  lagkv::move_rows_down(f.view, 50, 10, 20);
  for (index_t t = 0; t < kTokens; ++t) ASSERT_EQ(f.row(t), want[static_cast<std::size_t>(t)]) << "row " << t;
  EXPECT_THROW(lagkv::move_rows_down(f.view, 10, 50, 1), lagkv::error);
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, CompactChecks,
                         ::testing::Values(view_layout::hsd, view_layout::shd, view_layout::hds, view_layout::paged),
                         [](const ::testing::TestParamInfo<view_layout>& info) {
                           return lagkv_test::layout_name(info.param);
                         });

}  // namespace
