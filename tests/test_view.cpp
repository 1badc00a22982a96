// Each layout adapter reads the same element as a naive index computation over the layout.
#include <gtest/gtest.h>
#include <lagkv/view.hpp>

#include <numeric>
#include <vector>

namespace {

using lagkv::index_t;

TEST(View, HsdMatchesNaiveIndex) {
  const index_t H = 3, cap = 11, D = 5, used = 7;
  std::vector<float> buf(H * cap * D);
  std::iota(buf.begin(), buf.end(), 0.0f);
  for (index_t h = 0; h < H; ++h) {
    const auto v = lagkv::view_hsd(buf.data(), H, cap, D, h, used);
    ASSERT_EQ(v.tokens(), used);
    for (index_t t = 0; t < used; ++t)
      for (index_t c = 0; c < D; ++c) ASSERT_EQ(&v(t, c), &buf[(h * cap + t) * D + c]);
  }
}

TEST(View, ShdMatchesNaiveIndex) {
  const index_t cap = 9, H = 4, D = 3, used = 9;
  std::vector<lagkv::f16> buf(cap * H * D);
  for (index_t h = 0; h < H; ++h) {
    const auto v = lagkv::view_shd(buf.data(), cap, H, D, h, used);
    for (index_t t = 0; t < used; ++t)
      for (index_t c = 0; c < D; ++c) ASSERT_EQ(&v(t, c), &buf[(t * H + h) * D + c]);
  }
}

TEST(View, TransposedVMatchesNaiveIndex) {
  const index_t H = 2, D = 6, cap = 13, used = 10;
  std::vector<lagkv::bf16> buf(H * D * cap);
  for (index_t h = 0; h < H; ++h) {
    const auto v = lagkv::view_hds(buf.data(), H, D, cap, h, used);
    EXPECT_FALSE(v.rows_contiguous());
    for (index_t t = 0; t < used; ++t)
      for (index_t c = 0; c < D; ++c) ASSERT_EQ(&v(t, c), &buf[(h * D + c) * cap + t]);
  }
}

TEST(View, PagedMatchesNaiveIndexThroughBlockTable) {
  const index_t blocks = 7, bs = 5, H = 3, D = 4, used = 23;  // prime-ish sizes, last block partial
  std::vector<float> pool(blocks * bs * H * D);
  const std::vector<std::int32_t> table = {6, 2, 0, 5, 3};
  for (index_t h = 0; h < H; ++h) {
    const auto v = lagkv::view_paged(pool.data(), table.data(), bs, H, D, h, used);
    EXPECT_TRUE(v.is_paged());
    for (index_t t = 0; t < used; ++t)
      for (index_t c = 0; c < D; ++c)
        ASSERT_EQ(&v(t, c), &pool[((table[t / bs] * bs + t % bs) * H + h) * D + c]) << t << "," << c;
    // A slice keeps addressing through the table from its own first token.
    const auto s = v.slice(7, 9);
    for (index_t t = 0; t < 9; ++t) ASSERT_EQ(&s(t, 1), &v(t + 7, 1));
  }
}

TEST(View, SliceAndConstConversion) {
  std::vector<float> buf(4 * 3);
  const lagkv::kv_view<float> v(buf.data(), 4, 3, 3);
  const lagkv::kv_view<const float> c = v.slice(1, 2);
  EXPECT_EQ(c.tokens(), 2);
  EXPECT_EQ(&c(0, 0), &buf[3]);
  EXPECT_EQ(v.slice(4, 0).tokens(), 0);
}

TEST(View, BadArgumentsNameTheParameter) {
  std::vector<float> buf(12);
  auto what = [](auto&& fn) {
    try {
      fn();
    } catch (const lagkv::error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(what([&] { lagkv::view_hsd(buf.data(), 2, 3, 2, 2, 3); }), "head=2: out of range [0, 2)");
  EXPECT_EQ(what([&] { lagkv::view_hsd(buf.data(), 2, 3, 2, 0, 4); }), "tokens=4: out of range [0, capacity=3]");
  EXPECT_EQ(what([&] { lagkv::kv_view<float>(buf.data(), 2, 0, 1); }), "head_dim=0: must be >= 1");
  EXPECT_EQ(what([&] { lagkv::kv_view<float>(buf.data(), 4, 3, 3).slice(3, 2); }),
            "slice [3, 5) out of range for tokens=4");
}

}  // namespace

#include <lagkv/eigen.hpp>

namespace {

TEST(EigenInterop, MapsStridedAndTransposedViewsWithoutCopying) {
  const lagkv::index_t H = 2, D = 3, cap = 5;
  std::vector<float> buf(H * D * cap);
  std::iota(buf.begin(), buf.end(), 0.0f);
  const auto v = lagkv::view_hds<const float>(buf.data(), H, D, cap, 1, 4);
  const auto m = lagkv::as_eigen(v);
  ASSERT_EQ(m.rows(), 4);
  ASSERT_EQ(m.cols(), 3);
  for (lagkv::index_t t = 0; t < 4; ++t)
    for (lagkv::index_t c = 0; c < D; ++c) EXPECT_EQ(&m.coeffRef(t, c), &v(t, c));
  const Eigen::VectorXf q = Eigen::VectorXf::Ones(3);
  const Eigen::VectorXf logits = m * q;  // what an engine does: K q
  EXPECT_EQ(logits(2), v(2, 0) + v(2, 1) + v(2, 2));
}

TEST(EigenInterop, PagedViewIsRejected) {
  std::vector<float> pool(16);
  const std::int32_t table[] = {0};
  EXPECT_THROW(lagkv::as_eigen(lagkv::view_paged(pool.data(), table, 4, 1, 4, 0, 3)), lagkv::error);
}

}  // namespace
