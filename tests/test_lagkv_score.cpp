// The scalar LagKV scorer against the golden cases (checked against the authors' code) and
// the defined behaviour at the edges (constant channels, NaN, parameter validation).
#include <gtest/gtest.h>
#include <lagkv/score/lagkv.hpp>

#include <cmath>
#include <random>

#include "support/golden.hpp"

namespace {

using lagkv::index_t;
using lagkv_test::golden_case;

template <class T>
lagkv::lagkv_head_result score_golden_head(const golden_case& g, index_t h) {
  const auto k = lagkv::view_hsd<const T>(g.k.data<T>(), g.heads(), g.tokens(), g.head_dim(), h);
  const auto v = lagkv::view_hsd<const T>(g.v.data<T>(), g.heads(), g.tokens(), g.head_dim(), h);
  return lagkv::lagkv_score_head(k, v, g.params());
}

class GoldenScore : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenScore, MatchesAuthorsKeptSetsScoresAndLength) {
  const golden_case g = lagkv_test::load_golden(GetParam());
  for (index_t h = 0; h < g.heads(); ++h) {
    SCOPED_TRACE("head " + std::to_string(h));
    const auto r = g.k.type == lagkv::dtype::f16 ? score_golden_head<lagkv::f16>(g, h) : score_golden_head<float>(g, h);
    EXPECT_EQ(r.kept, g.expected["kept"][h].as_vector<index_t>());
    EXPECT_EQ(r.cache_len, g.expected["cache_len_after"].as_int());
    const auto& chunks = g.expected["chunk_scores"][h];
    ASSERT_EQ(r.chunk_scores.size(), chunks.size());
    for (std::size_t c = 0; c < chunks.size(); ++c) {
      const auto want = chunks[c].as_vector<double>();
      ASSERT_EQ(r.chunk_scores[c].size(), want.size());
      for (std::size_t i = 0; i < want.size(); ++i)
        EXPECT_NEAR(r.chunk_scores[c][i], want[i], 1e-5 * std::fabs(want[i])) << "chunk " << c << " token " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, GoldenScore, ::testing::ValuesIn(lagkv_test::golden_case_names("score")),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenScore);

TEST(GoldenScore, GoldenDirectoryIsPresent) {
  // The golden cases are the proof of exact semantics; a missing directory must fail loudly.
  EXPECT_GE(lagkv_test::golden_case_names("score").size(), 4u) << "looked in " << lagkv_test::golden_root();
  EXPECT_GE(lagkv_test::golden_case_names("trajectory").size(), 2u) << "looked in " << lagkv_test::golden_root();
}

TEST(LagkvScore, ConstantReferenceChannelNormalisesToZero) {
  // Channel 0 is constant in the reference chunk: the authors' formula divides by zero there.
  const index_t lag = 4, d = 3;
  std::vector<float> chunk = {1, 5, 2, 9, 1, 4, 3, 2, 7, 0, 8, 1};
  std::vector<float> ref = {2, 0, 1, 2, 1, 3, 2, 2, 5, 2, 3, 0};
  double stds[lag];
  lagkv::reference::lagkv_token_std<float>(lagkv::kv_view<const float>(chunk.data(), lag, d, d),
                                           lagkv::kv_view<const float>(ref.data(), lag, d, d), stds);
  for (index_t t = 0; t < lag; ++t) {
    // Expected by hand: channel 0 -> 0; channel 1 range [0,3]; channel 2 range [0,5].
    const double x1 = (chunk[t * d + 1] - 0.0) / 3.0, x2 = (chunk[t * d + 2] - 0.0) / 5.0;
    const double mean = (0.0 + x1 + x2) / 3.0;
    const double var = (mean * mean + (x1 - mean) * (x1 - mean) + (x2 - mean) * (x2 - mean)) / 2.0;
    EXPECT_TRUE(std::isfinite(stds[t]));
    EXPECT_NEAR(stds[t], std::sqrt(var), 1e-12);
  }
}

TEST(LagkvScore, AllConstantInputIsFiniteAndKeepsTheFirstTokens) {
  lagkv::lagkv_params p;
  p.sink = 2;
  p.lag = 8;
  p.ratio = 0.25;
  std::vector<float> k(40 * 4, 3.0f);
  const lagkv::kv_view<const float> view(k.data(), 40, 4, 4);
  const auto r = lagkv::lagkv_score_head(view, view, p);
  for (const auto& chunk : r.chunk_scores)
    for (float s : chunk) EXPECT_FLOAT_EQ(s, 2.0f / 8.0f);  // uniform softmax, key + value
  // Ties break to the lower index: the first two of each scored chunk.
  EXPECT_EQ(r.kept, (std::vector<index_t>{2, 3, 10, 11, 18, 19}));  // 4 full chunks, 3 scored
}

TEST(LagkvScore, NanTokenRanksLast) {
  lagkv::lagkv_params p;
  p.sink = 0;
  p.lag = 4;
  p.ratio = 0.75;
  p.score_v_ratio = 0.0;
  std::mt19937 rng(7);
  std::normal_distribution<float> n01;
  std::vector<float> k(8 * 5);
  for (auto& x : k) x = n01(rng);
  k[1 * 5 + 2] = NAN;  // token 1 of the scored chunk
  const lagkv::kv_view<const float> view(k.data(), 8, 5, 5);
  const auto r = lagkv::lagkv_score_head(view, lagkv::kv_view<const float>(), p);
  EXPECT_EQ(r.kept, (std::vector<index_t>{0, 2, 3}));
}

TEST(LagkvScore, ShortSequencesAreNotScored) {
  lagkv::lagkv_params p;
  p.sink = 4;
  p.lag = 8;
  std::vector<float> k(19 * 2, 1.0f);  // sink + 1 full chunk + 7: only one chunk, nothing scored
  const lagkv::kv_view<const float> view(k.data(), 19, 2, 2);
  const auto r = lagkv::lagkv_score_head(view, view, p);
  EXPECT_TRUE(r.kept.empty());
  EXPECT_EQ(r.cache_len, 19);
  const auto tiny = lagkv::lagkv_score_head(view.slice(0, 3), view.slice(0, 3), p);
  EXPECT_EQ(tiny.cache_len, 3);
}

TEST(LagkvScore, KeepPerChunkTruncatesLikePython) {
  lagkv::lagkv_params p;
  p.lag = 100;
  p.ratio = 0.29;  // 0.29 * 100 == 28.999999999999996 in binary: Python's int() gives 28
  EXPECT_EQ(p.keep_per_chunk(), 28);
  p.lag = 10;
  p.ratio = 0.7;  // 7.000000000000001 -> 7
  EXPECT_EQ(p.keep_per_chunk(), 7);
}

void expect_error_mentions(const lagkv::lagkv_params& p, const std::string& needle) {
  try {
    p.validate();
    ADD_FAILURE() << "no error for " << needle;
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(LagkvParams, InvalidValuesNameTheParameterAndValue) {
  lagkv::lagkv_params p;
  p.lag = 1;
  expect_error_mentions(p, "lag=1");
  p = {};
  p.ratio = 0.0;
  expect_error_mentions(p, "ratio=0");
  p.ratio = 1.5;
  expect_error_mentions(p, "ratio=1.5");
  p = {};
  p.sink = -3;
  expect_error_mentions(p, "sink=-3");
  p = {};
  p.score_v_ratio = -1;
  expect_error_mentions(p, "score_v_ratio=-1");
  EXPECT_THROW(lagkv::check_lagkv_head_dim(1), lagkv::error);
  EXPECT_NO_THROW(lagkv::check_lagkv_head_dim(2));
  EXPECT_NO_THROW(lagkv::lagkv_params{}.validate());
}

TEST(LagkvParams, HeadDimOneIsRejectedByTheScorer) {
  std::vector<float> k(40, 1.0f);
  const lagkv::kv_view<const float> view(k.data(), 40, 1, 1);
  lagkv::lagkv_params p;
  p.sink = 0;
  p.lag = 4;
  try {
    lagkv::lagkv_score_head(view, view, p);
    ADD_FAILURE();
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "head_dim=1: must be >= 2");
  }
}

}  // namespace
