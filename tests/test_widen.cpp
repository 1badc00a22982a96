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
#include "support/layouts.hpp"
#include "support/targets.hpp"

namespace {

using lagkv::bf16;
using lagkv::f16;
using lagkv::index_t;
using lagkv::kv_view;
using lagkv_test::target_named;
using lagkv_test::target_names;
using lagkv_test::view_layout;

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
  lagkv::simd::scoped_target use(target_named(GetParam()));
  // 65536 patterns as 512 rows of 128, plus one odd row so the vector tail runs too.
  std::vector<f16> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b] = from_bits<f16>(static_cast<std::uint16_t>(b));
  expect_same_as_oracle(kv_view<const f16>(all.data(), 512, 128, 128), 128);
  expect_same_as_oracle(kv_view<const f16>(all.data() + 3, 1, 61, 61), 61);
}

TEST_P(WidenAllPatterns, Bf16MatchesTheOracleOnEveryPattern) {
  lagkv::simd::scoped_target use(target_named(GetParam()));
  std::vector<bf16> all(65536);
  for (std::uint32_t b = 0; b < 65536; ++b) all[b] = from_bits<bf16>(static_cast<std::uint16_t>(b));
  expect_same_as_oracle(kv_view<const bf16>(all.data(), 512, 128, 128), 128);
}

INSTANTIATE_TEST_SUITE_P(EveryTarget, WidenAllPatterns, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });

// ---- Every layout, odd head_dims, unaligned rows, padded output ----------------------------------

using shape_param = std::tuple<std::string, view_layout, index_t>;  // target, layout, head_dim

class WidenViews : public ::testing::TestWithParam<shape_param> {
 protected:
  template <class T>
  void run() {
    const auto& [target, lay, d] = GetParam();
    lagkv::simd::scoped_target use(target_named(target));
    std::mt19937 rng(1234 + static_cast<unsigned>(d));
    std::normal_distribution<float> val(0.0f, 3.0f);
    lagkv_test::head_shape s;  // head 1 of 3, 29 of 37 slots; paged: blocks of 8
    s.capacity = 37, s.tokens = 29, s.head_dim = d, s.block_size = 8;
    s.row_pad = 1;             // unaligned rows, padded too
    const lagkv_test::head_memory<T> m(lay, s, [&](std::size_t) { return lagkv::from_float<T>(val(rng)); });
    const kv_view<const T> v = m.view;
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
                       ::testing::Values(view_layout::hsd, view_layout::shd, view_layout::hds, view_layout::paged,
                                         view_layout::unaligned),
                       ::testing::Values<index_t>(1, 7, 8, 9, 33, 64, 80, 96, 128, 256)),
    [](const ::testing::TestParamInfo<shape_param>& i) {
      return std::get<0>(i.param) + "_" + lagkv_test::layout_name(std::get<1>(i.param)) + "_d" +
             std::to_string(std::get<2>(i.param));
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
