// Every compiled SIMD target against the scalar oracle (score/lagkv.hpp, score/l2norm.hpp), on
// random and adversarial data, every layout adapter, unaligned pointers; exhaustive conversion
// checks; the dispatch API; the executors.
//
// Tolerance (scores). A target computes in float what the oracle computes in double. With
// y = (x - lo) * inv the normalised values of a chunk and Y = max(1, max|y|) over its K and V
// tokens, a target's per-token std s has absolute error <= c1 * (D/8 + 8) * eps * Y: per element
// <= 3 eps |y| (x - lo, inv's rounding, the FMA), the mean and the sums add one rounding per
// lane step (D/8 steps at the narrowest 8-lane width) plus the tree, and the one-pass form is
// only used where S1^2/D <= 2 (S2 - S1^2/D), which bounds its cancellation to the same order.
// Softmax maps an absolute error d in s to a relative error <= 2d in p (p_t ~ exp(s_t - max) /
// sum), plus exp (2 ulp), the normaliser (lag/16 float lane steps) and the final products. So
//   |score - oracle| <= eps * (4 * (D/8 + 8) * Y + lag/16 + 12) * |oracle| + FLT_MIN,
// the FLT_MIN absorbing probabilities below the float normal range (flushed by the vector exp).
// Kept sets must be identical wherever the gap between the last kept and the first evicted
// oracle score exceeds twice that tolerance. Observed errors on random data are ~1e-7.
#include <gtest/gtest.h>
#include <lagkv/executor.hpp>
#include <lagkv/simd/dispatch.hpp>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "support/layouts.hpp"
#include "support/targets.hpp"

namespace {

using lagkv::bf16;
using lagkv::dtype;
using lagkv::f16;
using lagkv::index_t;
using lagkv::kv_view;
using lagkv::simd::target;
using lagkv_test::compiled_targets;
using lagkv_test::view_layout;

// ---- Parameters ---------------------------------------------------------------------------------

enum class kind { random, constant_channels, huge, tiny, nan_inf, denormal };
const char* kind_name(kind k) {
  switch (k) {
    case kind::random: return "random";
    case kind::constant_channels: return "constant";
    case kind::huge: return "huge";
    case kind::tiny: return "tiny";
    case kind::nan_inf: return "naninf";
    case kind::denormal: return "denormal";
  }
  return "?";
}

// ---- Data -----------------------------------------------------------------------------------------

/// tokens x d row-major values of a type-appropriate scale, with the adversarial feature of `k`.
/// `lag` tells where chunks start so features land in scored and reference chunks.
template <class T>
std::vector<T> make_data(kind k, index_t tokens, index_t d, index_t lag, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  const bool is_f16 = std::is_same_v<T, f16>;
  // Key-like: per-channel offset and scale, so channels differ in range and centre.
  std::vector<double> off(static_cast<std::size_t>(d)), scale(static_cast<std::size_t>(d));
  for (index_t c = 0; c < d; ++c) {
    off[static_cast<std::size_t>(c)] = 2.0 * nd(rng);
    scale[static_cast<std::size_t>(c)] = std::exp(0.7 * nd(rng));
  }
  double mag = 1.0;
  if (k == kind::huge) mag = is_f16 ? 1e3 : 1e30;
  if (k == kind::tiny) mag = is_f16 ? 1e-6 : 1e-30;
  if (k == kind::denormal) mag = is_f16 ? 2e-7 : (std::is_same_v<T, bf16> ? 1e-39 : 1e-41);
  std::vector<double> x(static_cast<std::size_t>(tokens * d));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t c = 0; c < d; ++c)
      x[static_cast<std::size_t>(t * d + c)] = mag * (off[static_cast<std::size_t>(c)] + scale[static_cast<std::size_t>(c)] * nd(rng));
  auto at = [&](index_t t, index_t c) -> double& { return x[static_cast<std::size_t>(t * d + c)]; };
  if (k == kind::constant_channels) {
    for (index_t c = 0; c < d; c += 3)  // every third channel constant over the whole sequence
      for (index_t t = 0; t < tokens; ++t) at(t, c) = off[static_cast<std::size_t>(c)];
    for (index_t t = lag; t < 2 * lag && t < tokens; ++t) at(t, d - 1) = 1.5;  // constant in chunk 1 only
  }
  if (k == kind::huge && !is_f16 && tokens >= 3 * lag) {
    // Channel 0 of chunk 1 spans beyond FLT_MAX (float range overflows: oracle fallback)...
    for (index_t t = lag; t < 2 * lag; ++t) at(t, 0) = (t % 2 ? 3e38 : -3e38);
    // ...and channel d-1 of chunk 2 is nearly constant while chunk 1 is far from it, so the
    // normalised values of chunk 1 overflow float but not double.
    for (index_t t = 2 * lag; t < 3 * lag; ++t) at(t, d - 1) = 1e-30 * static_cast<double>(t % 3);
    for (index_t t = lag; t < 2 * lag; ++t) at(t, d - 1) = 1e25 * (1.0 + 0.01 * static_cast<double>(t % 7));
  }
  if (k == kind::nan_inf && tokens >= 3 * lag) {
    at(2 % lag, d > 1 ? 1 : 0) = NAN;   // a NaN token in chunk 0
    at(lag + 4 % lag, 0) = INFINITY;    // an Inf token in chunk 1
    at(2 * lag + 3 % lag, d - 1) = NAN;  // chunk 2 poisoned as reference: chunk 1 all NaN
    at(lag - 1, 0) = -INFINITY;          // last token of chunk 0
  }
  std::vector<T> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = lagkv::from_float<T>(static_cast<float>(x[i]));
  return out;
}

/// Y of the tolerance: max(1, max |(x - lo) * inv|) over the finite values of a chunk.
template <class T>
double normalised_max(kv_view<const T> chunk, kv_view<const T> ref) {
  double y = 1.0;
  for (index_t c = 0; c < chunk.head_dim(); ++c) {
    double mn = INFINITY, mx = -INFINITY;
    for (index_t t = 0; t < ref.tokens(); ++t) {
      const double v = lagkv::to_float(ref(t, c));
      mn = std::fmin(mn, v);
      mx = std::fmax(mx, v);
    }
    const double inv = mx > mn ? 1.0 / (mx - mn) : 0.0;
    for (index_t t = 0; t < chunk.tokens(); ++t) {
      const double v = (lagkv::to_float(chunk(t, c)) - mn) * inv;
      if (std::isfinite(v)) y = std::max(y, std::fabs(v));
    }
  }
  return y;
}

double score_tolerance(index_t d, index_t lag, double y) {
  const double eps = std::numeric_limits<float>::epsilon();
  return eps * (4.0 * (static_cast<double>(d) / 8.0 + 8.0) * y + static_cast<double>(lag) / 16.0 + 12.0);
}

::testing::AssertionResult close(float got, float want, double rel) {
  if (std::isnan(want) || std::isnan(got)) {
    if (std::isnan(want) && std::isnan(got)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << " want " << want << " (NaN mismatch)";
  }
  if (got == want) return ::testing::AssertionSuccess();  // infinities included
  const double err = std::fabs(static_cast<double>(got) - want);
  if (err <= rel * std::fabs(static_cast<double>(want)) + FLT_MIN) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << " want " << want << " rel err "
                                       << err / std::fabs(static_cast<double>(want)) << " > tol " << rel;
}

/// Scores `chunks` chunks through the oracle, chunk by chunk.
template <class T>
std::vector<float> oracle_sequence(kv_view<const T> k, kv_view<const T> v, index_t lag, index_t chunks, double w) {
  std::vector<float> out(static_cast<std::size_t>(chunks * lag));
  for (index_t c = 0; c < chunks; ++c)
    lagkv::reference::lagkv_chunk_scores<T>(k.slice(c * lag, lag), k.slice((c + 1) * lag, lag), v.slice(c * lag, lag),
                                            v.slice((c + 1) * lag, lag), w, out.data() + c * lag);
  return out;
}

/// Checks a target's sequence scores against the oracle, chunk by chunk with its own tolerance.
template <class T>
void expect_sequence_matches(kv_view<const T> k, kv_view<const T> v, kv_view<const T> k_oracle,
                             kv_view<const T> v_oracle, index_t lag, index_t chunks, double w) {
  std::vector<float> got(static_cast<std::size_t>(chunks * lag), -1.0f);
  lagkv::dispatch::lagkv_sequence_scores<T>(k, v, lag, chunks, w, got.data());
  const std::vector<float> want = oracle_sequence<T>(k_oracle, v_oracle, lag, chunks, w);
  for (index_t c = 0; c < chunks; ++c) {
    const double y = std::max(normalised_max<T>(k_oracle.slice(c * lag, lag), k_oracle.slice((c + 1) * lag, lag)),
                              normalised_max<T>(v_oracle.slice(c * lag, lag), v_oracle.slice((c + 1) * lag, lag)));
    const double tol = score_tolerance(k.head_dim(), lag, y);
    for (index_t i = 0; i < lag; ++i) {
      const auto j = static_cast<std::size_t>(c * lag + i);
      EXPECT_TRUE(close(got[j], want[j], tol)) << "chunk " << c << " token " << i;
    }
  }
}

std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

/// Scores the sequence once per sweep schedule and expects the same bits (NaN where NaN): the
/// two schedules run the same kernels on the same rows in a different order.
template <class T>
void expect_schedules_agree(kv_view<const T> k, kv_view<const T> v, index_t lag, index_t chunks, double w) {
  using lagkv::simd::sweep_schedule;
  std::vector<float> fwd(static_cast<std::size_t>(chunks * lag), -1.0f), bwd(fwd.size(), -2.0f);
  {
    lagkv::simd::scoped_schedule use(sweep_schedule::forward);
    lagkv::dispatch::lagkv_sequence_scores<T>(k, v, lag, chunks, w, fwd.data());
  }
  {
    lagkv::simd::scoped_schedule use(sweep_schedule::backward);
    lagkv::dispatch::lagkv_sequence_scores<T>(k, v, lag, chunks, w, bwd.data());
  }
  for (std::size_t j = 0; j < fwd.size(); ++j) {
    if (std::isnan(fwd[j]) && std::isnan(bwd[j])) continue;
    EXPECT_EQ(bits_of(fwd[j]), bits_of(bwd[j]))
        << "chunk " << j / static_cast<std::size_t>(lag) << " token " << j % static_cast<std::size_t>(lag)
        << ": forward " << fwd[j] << " backward " << bwd[j];
  }
}

template <class Fn>
decltype(auto) with_dtype(dtype t, Fn&& fn) {
  return lagkv::visit_dtype(t, std::forward<Fn>(fn));
}

std::string param_name(target t, dtype ty) {
  return std::string(lagkv::simd::target_name(t)) + "_" + lagkv::dtype_name(ty);
}

const std::vector<dtype> kDtypes = {dtype::f32, dtype::f16, dtype::bf16};

// ---- Scores vs the oracle: target x dtype x head_dim x data -------------------------------------

using score_param = std::tuple<target, dtype, index_t, kind>;

class SimdScores : public ::testing::TestWithParam<score_param> {};

TEST_P(SimdScores, SequenceMatchesOracleOnBothSchedules) {
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  const index_t d = std::get<2>(GetParam());
  const kind k = std::get<3>(GetParam());
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t lag = d % 2 ? 13 : 37, chunks = 3, tokens = (chunks + 1) * lag;  // odd lags
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    const auto seed = static_cast<unsigned>(d * 31 + static_cast<int>(k));
    const std::vector<T> kd = make_data<T>(k, tokens, d, lag, seed), vd = make_data<T>(k, tokens, d, lag, seed + 7);
    const kv_view<const T> kv(kd.data(), tokens, d, d), vv(vd.data(), tokens, d, d);
    expect_sequence_matches<T>(kv, vv, kv, vv, lag, chunks, 1.0);
    expect_schedules_agree<T>(kv, vv, lag, chunks, 1.0);
  });
}

std::string score_param_name(const ::testing::TestParamInfo<score_param>& info) {
  const auto [tg, ty, d, k] = info.param;
  return param_name(tg, ty) + "_D" + std::to_string(d) + "_" + kind_name(k);
}

INSTANTIATE_TEST_SUITE_P(Random, SimdScores,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()), ::testing::ValuesIn(kDtypes),
                                            ::testing::Values(2, 3, 7, 16, 31, 64, 80, 96, 128, 256),
                                            ::testing::Values(kind::random)),
                         score_param_name);
INSTANTIATE_TEST_SUITE_P(Adversarial, SimdScores,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()), ::testing::ValuesIn(kDtypes),
                                            ::testing::Values(3, 128),
                                            ::testing::Values(kind::constant_channels, kind::huge, kind::tiny,
                                                              kind::nan_inf, kind::denormal)),
                         score_param_name);

// The single-chunk entry point (what a caller scoring one chunk at a time uses).
using chunk_param = std::tuple<target, dtype, kind>;
class SimdChunk : public ::testing::TestWithParam<chunk_param> {};

TEST_P(SimdChunk, MatchesOracleWithAShorterReference) {
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  const kind k = std::get<2>(GetParam());
  const index_t d = 31;
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t lag = 21, ref_len = 17;  // reference shorter than the chunk: allowed by the oracle
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    const auto seed = static_cast<unsigned>(d * 17 + static_cast<int>(k));
    const std::vector<T> kd = make_data<T>(k, 3 * lag, d, lag, seed), vd = make_data<T>(k, 3 * lag, d, lag, seed + 1);
    const kv_view<const T> kv(kd.data(), 3 * lag, d, d), vv(vd.data(), 3 * lag, d, d);
    for (double w : {0.0, 0.5}) {
      std::vector<float> got(static_cast<std::size_t>(lag)), want(static_cast<std::size_t>(lag));
      lagkv::dispatch::lagkv_chunk_scores<T>(kv.slice(lag, lag), kv.slice(2 * lag, ref_len), vv.slice(lag, lag),
                                             vv.slice(2 * lag, ref_len), w, got.data());
      lagkv::reference::lagkv_chunk_scores<T>(kv.slice(lag, lag), kv.slice(2 * lag, ref_len), vv.slice(lag, lag),
                                              vv.slice(2 * lag, ref_len), w, want.data());
      const double y = std::max(normalised_max<T>(kv.slice(lag, lag), kv.slice(2 * lag, ref_len)),
                                normalised_max<T>(vv.slice(lag, lag), vv.slice(2 * lag, ref_len)));
      for (index_t i = 0; i < lag; ++i)
        EXPECT_TRUE(close(got[static_cast<std::size_t>(i)], want[static_cast<std::size_t>(i)], score_tolerance(d, lag, y)))
            << "w=" << w << " token " << i;
    }
  });
}

INSTANTIATE_TEST_SUITE_P(AllTargets, SimdChunk,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()), ::testing::ValuesIn(kDtypes),
                                            ::testing::Values(kind::random, kind::constant_channels, kind::huge,
                                                              kind::tiny, kind::nan_inf, kind::denormal)),
                         [](const ::testing::TestParamInfo<chunk_param>& info) {
                           return param_name(std::get<0>(info.param), std::get<1>(info.param)) + "_" +
                                  kind_name(std::get<2>(info.param));
                         });

// ---- Defined semantics, checked directly -------------------------------------------------------

using target_dtype = std::tuple<target, dtype>;
class SimdSemantics : public ::testing::TestWithParam<target_dtype> {};

TEST_P(SimdSemantics, NanTokenScoresNanAndPoisonedReferenceNansTheChunk) {
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t d = 24, lag = 9, chunks = 3;
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> kd = make_data<T>(kind::nan_inf, (chunks + 1) * lag, d, lag, 5u);
    const kv_view<const T> kv(kd.data(), (chunks + 1) * lag, d, d);
    std::vector<float> got(static_cast<std::size_t>(chunks * lag));
    lagkv::dispatch::lagkv_sequence_scores<T>(kv, {}, lag, chunks, 0.0, got.data());
    // Chunk 0: tokens 2 (NaN) and lag-1 (-Inf) are NaN; the others are a distribution.
    double sum = 0.0;
    for (index_t i = 0; i < lag; ++i) {
      if (i == 2 || i == lag - 1) {
        EXPECT_TRUE(std::isnan(got[static_cast<std::size_t>(i)])) << i;
      } else {
        EXPECT_TRUE(std::isfinite(got[static_cast<std::size_t>(i)])) << i;
        sum += got[static_cast<std::size_t>(i)];
      }
    }
    EXPECT_NEAR(sum, 1.0, 1e-5);
    for (index_t i = 0; i < lag; ++i) EXPECT_TRUE(std::isnan(got[static_cast<std::size_t>(lag + i)])) << "chunk 1 token " << i;
    // Chunk 2 holds the poisoning NaN itself (token 3): only that token is NaN there.
    for (index_t i = 0; i < lag; ++i)
      EXPECT_EQ(std::isnan(got[static_cast<std::size_t>(2 * lag + i)]), i == 3) << "chunk 2 token " << i;
  });
}

TEST_P(SimdSemantics, ConstantReferenceChannelsGiveUniformScores) {
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t d = 33, lag = 11;
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> kd(static_cast<std::size_t>(3 * lag * d), lagkv::from_float<T>(0.75f));
    for (index_t t = 0; t < lag; ++t) kd[static_cast<std::size_t>(t * d + 5)] = lagkv::from_float<T>(static_cast<float>(t));
    const kv_view<const T> kv(kd.data(), 3 * lag, d, d);
    std::vector<float> got(static_cast<std::size_t>(2 * lag));
    lagkv::dispatch::lagkv_sequence_scores<T>(kv, kv, lag, 2, 1.0, got.data());
    // Every reference channel is constant: every normalised value is 0, all stds 0.
    for (float s : got) EXPECT_FLOAT_EQ(s, 2.0f / static_cast<float>(lag));
  });
}

// ---- Kept sets through the whole-head entry point ----------------------------------------------

TEST_P(SimdSemantics, ScoreHeadKeepsTheOraclesSetsWhereTheGapExceedsTheTolerance) {
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  lagkv::lagkv_params p;
  p.sink = 5;
  p.lag = 33;
  p.ratio = 0.37;
  p.score_v_ratio = 0.5;
  const index_t d = 96, tokens = p.sink + 5 * p.lag + 7;
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> kd = make_data<T>(kind::random, tokens, d, p.lag, 11u), vd = make_data<T>(kind::random, tokens, d, p.lag, 12u);
    const kv_view<const T> kv(kd.data(), tokens, d, d), vv(vd.data(), tokens, d, d);
    const lagkv::lagkv_head_result got = lagkv::dispatch::lagkv_score_head<T>(kv, vv, p);
    const lagkv::lagkv_head_result want = lagkv::lagkv_score_head<T>(kv, vv, p);
    ASSERT_EQ(got.cache_len, want.cache_len);
    ASSERT_EQ(got.chunk_scores.size(), want.chunk_scores.size());
    const index_t keep = p.keep_per_chunk();
    index_t compared = 0;
    for (std::size_t c = 0; c < want.chunk_scores.size(); ++c) {
      std::vector<float> sorted = want.chunk_scores[c];
      std::sort(sorted.begin(), sorted.end(), std::greater<float>());
      const double tol = score_tolerance(d, p.lag, 1.0 * 8);  // random data: |y| well below 8
      const float last_kept = sorted[static_cast<std::size_t>(keep - 1)], first_out = sorted[static_cast<std::size_t>(keep)];
      if (last_kept - first_out <= 2 * tol * last_kept) continue;
      ++compared;
      const auto first = got.kept.begin() + static_cast<std::ptrdiff_t>(c) * keep;
      EXPECT_TRUE(std::equal(first, first + keep, want.kept.begin() + static_cast<std::ptrdiff_t>(c) * keep)) << "chunk " << c;
    }
    EXPECT_GE(compared, 1) << "no chunk had a decisive gap: the test data proves nothing";
  });
}

INSTANTIATE_TEST_SUITE_P(AllTargets, SimdSemantics,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()), ::testing::ValuesIn(kDtypes)),
                         [](const ::testing::TestParamInfo<target_dtype>& info) {
                           return param_name(std::get<0>(info.param), std::get<1>(info.param));
                         });

// ---- Layouts: every adapter, unaligned, strided, transposed, paged -----------------------------

/// Stores `rows` (tokens x d, row-major) in layout `l` as head 1 of 3 (capacity tokens + 3; the
/// other heads and slots hold junk that must not leak in).
template <class T>
lagkv_test::head_memory<T> store_in_layout(view_layout l, const std::vector<T>& rows, index_t tokens, index_t d) {
  lagkv_test::head_shape s;
  s.capacity = tokens + 3, s.tokens = tokens, s.head_dim = d;
  lagkv_test::head_memory<T> m(l, s, [](std::size_t) { return lagkv::from_float<T>(1e4f); });
  for (index_t t = 0; t < tokens; ++t)
    for (index_t c = 0; c < d; ++c) m.view(t, c) = rows[static_cast<std::size_t>(t * d + c)];
  return m;
}

using layout_param = std::tuple<target, dtype, view_layout, index_t>;
class SimdLayouts : public ::testing::TestWithParam<layout_param> {};

TEST_P(SimdLayouts, SequenceAndL2MatchOracleOnContiguousCopyOnBothSchedules) {
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  const view_layout l = std::get<2>(GetParam());
  const index_t d = std::get<3>(GetParam());
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t lag = 19, chunks = 3, tokens = (chunks + 1) * lag + 4;
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    const std::vector<T> kd = make_data<T>(kind::random, tokens, d, lag, 21u), vd = make_data<T>(kind::random, tokens, d, lag, 22u);
    const auto kmem = store_in_layout<T>(l, kd, tokens, d), vmem = store_in_layout<T>(l, vd, tokens, d);
    const kv_view<const T> kv = kmem.view, vv = vmem.view;
    const kv_view<const T> kc(kd.data(), tokens, d, d), vc(vd.data(), tokens, d, d);
    expect_sequence_matches<T>(kv, vv, kc, vc, lag, chunks, 1.0);
    expect_schedules_agree<T>(kv, vv, lag, chunks, 0.5);
    std::vector<float> got(static_cast<std::size_t>(tokens)), want(static_cast<std::size_t>(tokens));
    lagkv::dispatch::l2norm_scores<T>(kv, got.data());
    lagkv::reference::l2norm_scores<T>(kc, want.data());
    const double tol = std::numeric_limits<float>::epsilon() * (static_cast<double>(d) / 8.0 + 8.0);
    for (index_t t = 0; t < tokens; ++t) EXPECT_TRUE(close(got[static_cast<std::size_t>(t)], want[static_cast<std::size_t>(t)], tol)) << t;
  });
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, SimdLayouts,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()), ::testing::ValuesIn(kDtypes),
                                            ::testing::Values(view_layout::unaligned, view_layout::shd, view_layout::hds,
                                                              view_layout::paged, view_layout::paged_unaligned),
                                            ::testing::Values(31)),
                         [](const ::testing::TestParamInfo<layout_param>& info) {
                           return param_name(std::get<0>(info.param), std::get<1>(info.param)) + "_" +
                                  lagkv_test::layout_name(std::get<2>(info.param)) + "_D" +
                                  std::to_string(std::get<3>(info.param));
                         });

// ---- L2 norm ---------------------------------------------------------------------------------------

using l2_param = std::tuple<target, dtype, index_t, kind>;
class SimdL2 : public ::testing::TestWithParam<l2_param> {};

TEST_P(SimdL2, MatchesOracle) {
  // Sum of squares in float: D/8 lane steps + the tree, halved by the sqrt, plus the sqrt.
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  const index_t d = std::get<2>(GetParam());
  const kind k = std::get<3>(GetParam());
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t tokens = 45;
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    std::vector<T> kd = make_data<T>(k, tokens, d, 15, static_cast<unsigned>(d + 3));
    if (k == kind::huge && !std::is_same_v<T, f16>) kd[3] = lagkv::from_float<T>(3e38f);  // squares overflow float
    std::fill(kd.begin() + 5 * d, kd.begin() + 6 * d, lagkv::from_float<T>(0.0f));       // an all-zero row
    const kv_view<const T> kv(kd.data(), tokens, d, d);
    std::vector<float> got(static_cast<std::size_t>(tokens)), want(static_cast<std::size_t>(tokens));
    lagkv::dispatch::l2norm_scores<T>(kv, got.data());
    lagkv::reference::l2norm_scores<T>(kv, want.data());
    const double tol = std::numeric_limits<float>::epsilon() * (static_cast<double>(d) / 8.0 + 8.0);
    for (index_t t = 0; t < tokens; ++t) EXPECT_TRUE(close(got[static_cast<std::size_t>(t)], want[static_cast<std::size_t>(t)], tol)) << t;
  });
}

INSTANTIATE_TEST_SUITE_P(AllTargets, SimdL2,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()), ::testing::ValuesIn(kDtypes),
                                            ::testing::Values(31),
                                            ::testing::Values(kind::random, kind::huge, kind::tiny, kind::nan_inf,
                                                              kind::denormal)),
                         [](const ::testing::TestParamInfo<l2_param>& info) {
                           return param_name(std::get<0>(info.param), std::get<1>(info.param)) + "_D" +
                                  std::to_string(std::get<2>(info.param)) + "_" + kind_name(std::get<3>(info.param));
                         });

// ---- Conversions: every 16-bit pattern through each target's vector loads -----------------------

class SimdConvert : public ::testing::TestWithParam<target_dtype> {};

TEST_P(SimdConvert, VectorLoadsAreBitExactForAllPatterns) {
  const target tg = std::get<0>(GetParam());
  const dtype ty = std::get<1>(GetParam());
  LAGKV_REQUIRE_TARGET(tg);
  with_dtype(ty, [&](auto tag) {
    using T = decltype(tag);
    const auto& ks = lagkv::simd::detail::kernels_for<T>(*lagkv::simd::detail::compiled_kernels(tg));
    // Odd length: the masked / buffered tail of every target is exercised too.
    const index_t n = 65536 + 13;
    std::vector<T> src(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) std::memcpy(&src[static_cast<std::size_t>(i)], &i, 2);  // little-endian low half
    std::vector<float> dst(static_cast<std::size_t>(ks.kernel_dim(n)), -1.0f);
    ks.load_to_f32(src.data(), n, dst.data());
    for (index_t pos = 0; pos < ks.kernel_dim(n); ++pos) {
      const index_t c = ks.kernel_channel(pos, n);
      if (c < 0) continue;
      const float want = lagkv::to_float(src[static_cast<std::size_t>(c)]);
      std::uint32_t a, b;
      std::memcpy(&a, &dst[static_cast<std::size_t>(pos)], 4);
      std::memcpy(&b, &want, 4);
      ASSERT_EQ(a, b) << "pattern 0x" << std::hex << (c & 0xffff);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(AllTargets, SimdConvert,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()), ::testing::Values(dtype::f16, dtype::bf16)),
                         [](const ::testing::TestParamInfo<target_dtype>& info) {
                           return param_name(std::get<0>(info.param), std::get<1>(info.param));
                         });

// ---- Dispatch API ------------------------------------------------------------------------------------

TEST(SimdDispatch, ScalarIsAlwaysAvailableAndLast) {
  const auto& t = lagkv::simd::available_targets();
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t.back(), target::scalar);
  EXPECT_EQ(lagkv::simd::best_target(), t.front());
}

TEST(SimdDispatch, ForceSwitchesAndScopedTargetRestores) {
  const target before = lagkv::simd::active_target();
  {
    lagkv::simd::scoped_target use(target::scalar);
    EXPECT_EQ(lagkv::simd::active_target(), target::scalar);
  }
  EXPECT_EQ(lagkv::simd::active_target(), before);
}

TEST(SimdDispatch, ForcingAnUnavailableTargetThrowsNamingIt) {
  for (target t : {target::avx2, target::avx512, target::neon}) {
    if (lagkv::simd::is_available(t)) continue;
    try {
      lagkv::simd::force(t);
      FAIL() << "force(" << lagkv::simd::target_name(t) << ") should throw";
    } catch (const lagkv::error& e) {
      EXPECT_NE(std::string(e.what()).find(lagkv::simd::target_name(t)), std::string::npos) << e.what();
    }
  }
  SUCCEED();
}

TEST(SimdDispatch, EnvironmentVariableSelectsAndBadNamesThrow) {
  ASSERT_EQ(::setenv("LAGKV_SIMD", "scalar", 1), 0);
  lagkv::simd::reset();
  EXPECT_EQ(lagkv::simd::active_target(), target::scalar);
  ASSERT_EQ(::setenv("LAGKV_SIMD", "sse9", 1), 0);
  EXPECT_THROW(lagkv::simd::reset(), lagkv::error);
  ASSERT_EQ(::unsetenv("LAGKV_SIMD"), 0);
  lagkv::simd::reset();
  EXPECT_EQ(lagkv::simd::active_target(), lagkv::simd::best_target());
}

TEST(SimdDispatch, ParseTargetRoundTripsEveryName) {
  for (target t : {target::scalar, target::avx2, target::avx512, target::neon}) {
    target back{};
    ASSERT_TRUE(lagkv::simd::parse_target(lagkv::simd::target_name(t), &back));
    EXPECT_EQ(back, t);
  }
  target dummy{};
  EXPECT_FALSE(lagkv::simd::parse_target("AVX2", &dummy));
}

TEST(SimdDispatch, SequenceRejectsShortViewsNamingTheParameter) {
  std::vector<float> k(10 * 4, 1.0f), out(10);
  const kv_view<const float> kv(k.data(), 10, 4, 4);
  try {
    lagkv::dispatch::lagkv_sequence_scores<float>(kv, kv, 4, 2, 1.0, out.data());  // needs 12 tokens
    FAIL() << "should throw";
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find("k.tokens=10"), std::string::npos) << e.what();
  }
  EXPECT_THROW(lagkv::dispatch::lagkv_sequence_scores<float>(kv, kv, 0, 1, 1.0, out.data()), lagkv::error);
}

// ---- Executors -----------------------------------------------------------------------------------------

TEST(Executor, SerialRunsEveryIndexInOrder) {
  std::vector<index_t> seen;
  lagkv::parallel_for(lagkv::serial_executor{}, 5, [&](index_t i) { seen.push_back(i); });
  EXPECT_EQ(seen, (std::vector<index_t>{0, 1, 2, 3, 4}));
}

TEST(Executor, ThreadPoolRunsEveryIndexExactlyOnce) {
  lagkv::thread_pool pool(2);
  EXPECT_EQ(pool.threads(), 2u);
  std::vector<std::atomic<int>> hits(1000);
  for (int round = 0; round < 3; ++round) lagkv::parallel_for(pool, 1000, [&](index_t i) { hits[static_cast<std::size_t>(i)]++; });
  for (auto& h : hits) EXPECT_EQ(h.load(), 3);
}

TEST(Executor, ThreadPoolRethrowsATaskException) {
  lagkv::thread_pool pool(2);
  std::atomic<int> ran{0};
  EXPECT_THROW(lagkv::parallel_for(pool, 64,
                                   [&](index_t i) {
                                     ++ran;
                                     if (i == 7) throw std::runtime_error("task 7");
                                   }),
               std::runtime_error);
  // The pool is still usable afterwards.
  std::atomic<int> after{0};
  lagkv::parallel_for(pool, 10, [&](index_t) { ++after; });
  EXPECT_EQ(after.load(), 10);
}

TEST(Executor, NestedParallelForOnTheSamePoolRunsSeriallyInsteadOfDeadlocking) {
  lagkv::thread_pool pool(2);
  std::atomic<int> inner{0};
  lagkv::parallel_for(pool, 4, [&](index_t) { lagkv::parallel_for(pool, 3, [&](index_t) { ++inner; }); });
  EXPECT_EQ(inner.load(), 12);
}

TEST(Executor, RejectsZeroThreads) { EXPECT_THROW(lagkv::thread_pool(0), lagkv::error); }

struct counting_executor {  // an engine's own pool, reduced to the contract
  int calls = 0;
  template <class Fn>
  void parallel_for(index_t n, Fn&& fn) {
    ++calls;
    for (index_t i = n - 1; i >= 0; --i) fn(i);  // any order is allowed
  }
};
static_assert(lagkv::is_executor_v<counting_executor>);
static_assert(!lagkv::is_executor_v<int>);

TEST(Executor, ExecutorRefErasesAnEnginesPool) {
  counting_executor engine;
  const lagkv::executor_ref ref(engine);
  std::vector<int> hit(6, 0);
  lagkv::parallel_for(ref, 6, [&](index_t i) { hit[static_cast<std::size_t>(i)] = 1; });
  EXPECT_EQ(engine.calls, 1);
  EXPECT_EQ(hit, std::vector<int>(6, 1));
}

TEST(Executor, ScoringManyHeadsThroughAPoolEqualsSerial) {
  const index_t heads = 6, d = 64, lag = 16, chunks = 5, tokens = (chunks + 1) * lag;
  const std::vector<f16> k = make_data<f16>(kind::random, heads * tokens, d, lag, 3u);
  const std::vector<f16> v = make_data<f16>(kind::random, heads * tokens, d, lag, 4u);
  auto score_all = [&](auto&& ex) {
    std::vector<float> out(static_cast<std::size_t>(heads * chunks * lag));
    lagkv::parallel_for(ex, heads, [&](index_t h) {
      lagkv::dispatch::lagkv_sequence_scores<f16>(lagkv::view_hsd<const f16>(k.data(), heads, tokens, d, h),
                                                  lagkv::view_hsd<const f16>(v.data(), heads, tokens, d, h), lag, chunks,
                                                  1.0, out.data() + h * chunks * lag);
    });
    return out;
  };
  lagkv::thread_pool pool(2);
  const std::vector<float> serial = score_all(lagkv::serial_executor{});
  const std::vector<float> parallel = score_all(pool);
  EXPECT_EQ(std::memcmp(serial.data(), parallel.data(), serial.size() * sizeof(float)), 0);
}

}  // namespace
