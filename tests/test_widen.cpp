// widen(): every target's conversion against the element-by-element oracle, bit for bit, on
// every 16-bit pattern and on every view shape; as_eigen_rows() maps in place.
#include <gtest/gtest.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "lagkv/widen.hpp"

namespace {

using lagkv::bf16;
using lagkv::f16;
using lagkv::index_t;
using lagkv::kv_view;

std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

template <class T>
T from_bits(std::uint16_t b) {
  T x;
  x.bits = b;
  return x;
}

std::vector<std::string> target_names() {
  std::vector<std::string> names;
  for (auto t : lagkv::simd::available_targets()) names.push_back(lagkv::simd::target_name(t));
  return names;
}

lagkv::simd::target parse(const std::string& name) {
  lagkv::simd::target t{};
  EXPECT_TRUE(lagkv::simd::parse_target(name.c_str(), &t));
  return t;
}

// Compares widen() with reference::widen() bit for bit (NaN payloads included).
template <class T>
void expect_same_as_oracle(const kv_view<const T>& v, index_t ld) {
  std::vector<float> got(static_cast<std::size_t>(v.tokens() * ld + 1), -7.0f), want = got;
  lagkv::widen(v, got.data(), ld);
  lagkv::reference::widen(v, want.data(), ld);
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(bits(got[i]), bits(want[i])) << "element " << i << " (padding between rows must stay untouched)";
}

// ---- Every 16-bit pattern, every target ---------------------------------------------------------

class WidenAllPatterns : public ::testing::TestWithParam<std::string> {};

TEST_P(WidenAllPatterns, F16MatchesTheOracleOnEveryPattern) {
  lagkv::simd::scoped_target use(parse(GetParam()));
  // 65536 patterns as 512 rows of 128, plus one odd row so the vector tail runs too.
  std::vector<f16> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b] = from_bits<f16>(static_cast<std::uint16_t>(b));
  expect_same_as_oracle(kv_view<const f16>(all.data(), 512, 128, 128), 128);
  expect_same_as_oracle(kv_view<const f16>(all.data() + 3, 1, 61, 61), 61);
}

TEST_P(WidenAllPatterns, Bf16MatchesTheOracleOnEveryPattern) {
  lagkv::simd::scoped_target use(parse(GetParam()));
  std::vector<bf16> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b] = from_bits<bf16>(static_cast<std::uint16_t>(b));
  expect_same_as_oracle(kv_view<const bf16>(all.data(), 512, 128, 128), 128);
}

INSTANTIATE_TEST_SUITE_P(EveryTarget, WidenAllPatterns, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// ---- Every layout, odd head_dims, unaligned rows, padded output ----------------------------------

enum class layout { hsd, shd, hds, paged, unaligned };

const char* layout_name(layout l) {
  switch (l) {
    case layout::hsd: return "hsd";
    case layout::shd: return "shd";
    case layout::hds: return "hds";
    case layout::paged: return "paged";
    case layout::unaligned: return "unaligned";
  }
  return "?";
}

using shape_param = std::tuple<std::string, layout, index_t>;  // target, layout, head_dim

class WidenViews : public ::testing::TestWithParam<shape_param> {
 protected:
  template <class T>
  void run() {
    const auto& [target, lay, d] = GetParam();
    lagkv::simd::scoped_target use(parse(target));
    const index_t heads = 3, head = 1, cap = 37, tokens = 29, bs = 8;
    std::mt19937 rng(1234 + static_cast<unsigned>(d));
    std::normal_distribution<float> val(0.0f, 3.0f);
    const index_t blocks = 5;  // the paged pool: 5 blocks of bs tokens x heads x d
    std::vector<T> buf(static_cast<std::size_t>(std::max(heads * cap, blocks * bs * heads) * d + 1));
    for (auto& x : buf) x = lagkv::from_float<T>(val(rng));
    std::vector<std::int32_t> table = {4, 0, 3, 1, 2};  // out of order on purpose
    kv_view<const T> v;
    switch (lay) {
      case layout::hsd: v = lagkv::view_hsd<const T>(buf.data(), heads, cap, d, head, tokens); break;
      case layout::shd: v = lagkv::view_shd<const T>(buf.data(), cap, heads, d, head, tokens); break;
      case layout::hds: v = lagkv::view_hds<const T>(buf.data(), heads, d, cap, head, tokens); break;
      case layout::paged: v = lagkv::view_paged<const T>(buf.data(), table.data(), bs, heads, d, head, tokens); break;
      case layout::unaligned: v = kv_view<const T>(buf.data() + 1, tokens, d, d + 1); break;
    }
    expect_same_as_oracle(v, d);
    expect_same_as_oracle(v, d + 3);  // an engine's padded rows
  }
};

TEST_P(WidenViews, Fp32) { run<float>(); }
TEST_P(WidenViews, Fp16) { run<f16>(); }
TEST_P(WidenViews, Bf16) { run<bf16>(); }

INSTANTIATE_TEST_SUITE_P(
    EveryShape, WidenViews,
    ::testing::Combine(::testing::ValuesIn(target_names()),
                       ::testing::Values(layout::hsd, layout::shd, layout::hds, layout::paged, layout::unaligned),
                       ::testing::Values<index_t>(1, 7, 8, 9, 33, 64, 80, 96, 128, 256)),
    [](const ::testing::TestParamInfo<shape_param>& i) {
      return std::get<0>(i.param) + "_" + layout_name(std::get<1>(i.param)) + "_d" + std::to_string(std::get<2>(i.param));
    });

TEST(Widen, RejectsAShortLeadingDimensionNamingIt) {
  std::vector<f16> buf(8);
  std::vector<float> out(8);
  try {
    lagkv::widen(kv_view<const f16>(buf.data(), 2, 4, 4), out.data(), 3);
    FAIL() << "expected lagkv::error";
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "widen: ld=3: must be >= head_dim=4");
  }
  EXPECT_THROW(lagkv::widen(kv_view<const f16>(buf.data(), 2, 4, 4), static_cast<float*>(nullptr), 4), lagkv::error);
  EXPECT_NO_THROW(lagkv::widen(kv_view<const f16>(buf.data(), 0, 4, 4), static_cast<float*>(nullptr), 4));
}

// ---- as_eigen_rows ---------------------------------------------------------------------------

TEST(EigenRows, MapsContiguousChannelsInPlace) {
  const index_t H = 2, D = 5, cap = 6;
  std::vector<float> buf(static_cast<std::size_t>(H * cap * D));
  for (std::size_t i = 0; i < buf.size(); ++i) buf[i] = static_cast<float>(i);
  const auto v = lagkv::view_shd<const float>(buf.data(), cap, H, D, 1, 4);
  const auto m = lagkv::as_eigen_rows(v);
  ASSERT_EQ(m.rows(), 4);
  ASSERT_EQ(m.cols(), D);
  for (index_t t = 0; t < 4; ++t)
    for (index_t c = 0; c < D; ++c) EXPECT_EQ(&m.coeffRef(t, c), &v(t, c));
  const Eigen::VectorXf q = Eigen::VectorXf::LinSpaced(D, 1.0f, 5.0f);
  const Eigen::VectorXf logits = m * q;
  float want = 0.0f;
  for (index_t c = 0; c < D; ++c) want += v(3, c) * q(c);
  EXPECT_EQ(logits(3), want);
}

TEST(EigenRows, RejectsTransposedAndPagedViewsNamingWhy) {
  std::vector<float> buf(64);
  try {
    (void)lagkv::as_eigen_rows(lagkv::view_hds<const float>(buf.data(), 2, 4, 8, 0, 3));
    FAIL() << "expected lagkv::error";
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "as_eigen_rows: channel_stride=8: channels must be contiguous (use as_eigen for strided channels)");
  }
  const std::int32_t table[] = {0};
  EXPECT_THROW((void)lagkv::as_eigen_rows(lagkv::view_paged<const float>(buf.data(), table, 4, 1, 4, 0, 3)),
               lagkv::error);
}

}  // namespace
