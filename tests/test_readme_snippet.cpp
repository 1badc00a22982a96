// The README's integration snippet, compiled from README.md itself (CMake extracts it into
// readme_snippet.inc), then run: documentation that drifts from the code fails this test.
#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "readme_snippet.inc"

TEST(ReadmeSnippet, CompilesAndCompressesADecodeLoop) {
  auto cache = make_cache();
  std::mt19937 rng(3);
  std::normal_distribution<float> n01;
  const lagkv::index_t H = 2, D = 64, prefill = 700;
  auto fill = [&](std::vector<lagkv::f16>& x) {
    for (auto& e : x) e = lagkv::to_f16(n01(rng));
  };
  std::vector<lagkv::f16> k(H * prefill * D), v(k.size());
  lagkv::index_t attended = 0, last_len = 0;
  auto attend = [&](lagkv::index_t, lagkv::kv_view<const lagkv::f16> keys, lagkv::kv_view<const lagkv::f16> values,
                    lagkv::index_span positions) {
    EXPECT_EQ(keys.tokens(), values.tokens());
    EXPECT_EQ(positions.size(), keys.tokens());
    last_len = keys.tokens();
    ++attended;
  };
  for (lagkv::index_t layer = 0; layer < 4; ++layer) {
    fill(k), fill(v);
    layer_step(cache, layer, k.data(), v.data(), prefill, attend);
  }
  for (int step = 0; step < 300; ++step) {
    std::vector<lagkv::f16> k1(H * D), v1(H * D);
    fill(k1), fill(v1);
    for (lagkv::index_t layer = 0; layer < 4; ++layer) layer_step(cache, layer, k1.data(), v1.data(), 1, attend);
  }
  EXPECT_EQ(attended, (4 + 4 * 300) * H);
  // 1000 tokens seen; LagKV (sink 16, lag 256, ratio .5) must have compressed: fewer slots held.
  EXPECT_LT(last_len, 1000);
  EXPECT_GT(cache.compressions(3), 0);
}
