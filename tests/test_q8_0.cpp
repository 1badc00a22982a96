// q8_0 storage (q8_0.hpp) and the q8_0 scorers (simd/q8_0_dispatch.hpp).
//
// Quantise / dequantise: bit-exact against a plain transcription of ggml's
// quantize_row_q8_0_ref / dequantize_row_q8_0 (below), on data that hits every branch (zero
// blocks, exact halves, fp16-denormal scales, scales whose inverse overflows).
//
// Scores. Every dequantised value d*q is exact in float, so the oracle is "dequantise, then
// reference::lagkv_chunk_scores<float>" (double precision). The q8_0 kernels compute in float
// what the oracle computes in double, with the same operations as the fp32 path of
// simd/dispatch.hpp on those exact values (z = fma(x, inv, bias) or fma(x - lo, inv, -0.5),
// one-pass S1/S2 accepted only where S1^2/D <= 2 (S2 - S1^2/D), else two passes in double), so
// the fp32 path's bound (derived in tests/test_simd.cpp) applies unchanged: with
// Y = max(1, max |(x - lo) * inv|) over the chunk's K and V tokens,
//   |score - oracle| <= eps * (4 * (D/8 + 8) * Y + lag/16 + 12) * |oracle| + FLT_MIN.
// Kept sets must equal the oracle's wherever the gap between the last kept and the first evicted
// oracle score exceeds twice that tolerance. Chunks with an Inf/NaN scale go to the oracle
// itself: NaN scores must sit exactly where the oracle's are.
// L2: -sqrt(sum_b d_b^2 * sum q^2) with the q^2 sums exact in int32, d^2 exact, and the
// float accumulation of positive terms: relative error <= (D/32 + 8) eps.
#include <gtest/gtest.h>
#include <lagkv/q8_0.hpp>
#include <lagkv/simd/q8_0_dispatch.hpp>
#include "support/targets.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

using lagkv::block_q8_0;
using lagkv::index_t;
using lagkv::kv_view;
using lagkv::q8_0_view;
using lagkv::simd::target;

constexpr double kEps = std::numeric_limits<float>::epsilon();

using lagkv_test::compiled_targets;

// ---- The plain reference: ggml's quantize_row_q8_0_ref / dequantize_row_q8_0 -------------------

#define PLAIN_MAX(a, b) ((a) > (b) ? (a) : (b))

void plain_quantize(const float* x, block_q8_0* y, std::int64_t k) {
  const std::int64_t nb = k / 32;
  for (std::int64_t i = 0; i < nb; i++) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = PLAIN_MAX(amax, std::fabs(x[i * 32 + j]));
    const float d = amax / ((1 << 7) - 1);
    const float id = d ? 1.0f / d : 0.0f;
    y[i].d = lagkv::to_f16(d);  // GGML_FP32_TO_FP16: round to nearest even (tested in test_dtype)
    for (int j = 0; j < 32; ++j) {
      const float x0 = x[i * 32 + j] * id;
      // ggml: y[i].qs[j] = roundf(x0); undefined for non-finite x0, which lagkv defines as 0.
      y[i].qs[j] = std::isfinite(x0) ? static_cast<std::int8_t>(std::roundf(x0)) : std::int8_t{0};
    }
  }
}

void plain_dequantize(const block_q8_0* x, float* y, std::int64_t k) {
  for (std::int64_t i = 0; i < k / 32; i++) {
    const float d = lagkv::to_float(x[i].d);
    for (int j = 0; j < 32; ++j) y[i * 32 + j] = x[i].qs[j] * d;
  }
}

// ---- Data ---------------------------------------------------------------------------------------

enum class kind { random, constant, far, illcond, tiny, nonfinite };
const char* kind_name(kind k) {
  switch (k) {
    case kind::random: return "random";
    case kind::constant: return "constant";
    case kind::far: return "far";
    case kind::illcond: return "illcond";
    case kind::tiny: return "tiny";
    case kind::nonfinite: return "nonfinite";
  }
  return "?";
}

/// tokens x d key-like floats: per-channel centre and scale, plus the feature of `k`.
std::vector<float> make_values(kind k, index_t tokens, index_t d, index_t lag, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> off(static_cast<std::size_t>(d)), scale(static_cast<std::size_t>(d));
  for (index_t c = 0; c < d; ++c) {
    off[static_cast<std::size_t>(c)] = 2.0f * nd(rng);
    scale[static_cast<std::size_t>(c)] = std::exp(0.7f * nd(rng));
  }
  std::vector<float> x(static_cast<std::size_t>(tokens * d));
  for (index_t t = 0; t < tokens; ++t)
    for (index_t c = 0; c < d; ++c)
      x[static_cast<std::size_t>(t * d + c)] =
          off[static_cast<std::size_t>(c)] + scale[static_cast<std::size_t>(c)] * nd(rng);
  auto at = [&](index_t t, index_t c) -> float& { return x[static_cast<std::size_t>(t * d + c)]; };
  switch (k) {
    case kind::constant:  // channels [0, 32) constant over tokens (a whole q8_0 block, so the
                          // dequantised values stay constant): reference range 0, normalised to 0
      for (index_t c = 0; c < 32; ++c)
        for (index_t t = 0; t < tokens; ++t) at(t, c) = 0.5f + static_cast<float>(c) / 32.0f;
      break;
    case kind::far:  // channels centred far from 0 relative to their spread: |bias| > 2, no bias form
      for (index_t t = 0; t < tokens; ++t)
        for (index_t c = 0; c < d; c += 2) at(t, c) = 100.0f + 0.5f * nd(rng);
      break;
    case kind::illcond:  // chunk 1 far above its reference's range: one-pass rejected, two passes
      for (index_t t = lag; t < 2 * lag && t < tokens; ++t)
        for (index_t c = 0; c < d; ++c) at(t, c) = 60.0f + 0.05f * nd(rng) + 0.001f * static_cast<float>(c);
      for (index_t t = 2 * lag; t < 3 * lag && t < tokens; ++t)
        for (index_t c = 0; c < d; ++c) at(t, c) = 0.5f * nd(rng);
      break;
    case kind::tiny:  // amax < 127 * 2^-14: the fp16 scale is denormal
      for (float& v : x) v *= 1e-5f;
      break;
    case kind::random:
    case kind::nonfinite:
      break;
  }
  return x;
}

std::vector<block_q8_0> quantize(const std::vector<float>& x) {
  std::vector<block_q8_0> q(x.size() / 32);
  lagkv::quantize_q8_0(x.data(), static_cast<index_t>(x.size()), q.data());
  return q;
}

/// Poisons scales of a [tokens, d/32] block array: Inf in a token of chunk 0, NaN in chunk 2
/// (the reference of chunk 1: the whole chunk scores NaN), Inf in the last chunk's first token.
void poison_scales(std::vector<block_q8_0>& q, index_t tokens, index_t nb, index_t lag) {
  if (tokens < 4 * lag) return;
  q[static_cast<std::size_t>(3 * nb + 1 % nb)].d.bits = 0x7c00;       // +Inf: token 3 of chunk 0
  q[static_cast<std::size_t>((2 * lag + 5) * nb)].d.bits = 0x7e00;    // NaN: token 5 of chunk 2
  q[static_cast<std::size_t>((3 * lag) * nb + nb - 1)].d.bits = 0xfc00;  // -Inf: chunk 3
}

std::vector<float> dequantize(const std::vector<block_q8_0>& q) {
  std::vector<float> x(q.size() * 32);
  plain_dequantize(q.data(), x.data(), static_cast<std::int64_t>(x.size()));
  return x;
}

// ---- Tolerances -----------------------------------------------------------------------------------

/// Y of the tolerance: max(1, max |(x - lo) * inv|) over the finite values of a chunk.
double normalised_max(kv_view<const float> chunk, kv_view<const float> ref) {
  double y = 1.0;
  for (index_t c = 0; c < chunk.head_dim(); ++c) {
    double mn = INFINITY, mx = -INFINITY;
    for (index_t t = 0; t < ref.tokens(); ++t) {
      mn = std::fmin(mn, ref(t, c));
      mx = std::fmax(mx, ref(t, c));
    }
    const double inv = mx > mn ? 1.0 / (mx - mn) : 0.0;
    for (index_t t = 0; t < chunk.tokens(); ++t) {
      const double v = (chunk(t, c) - mn) * inv;
      if (std::isfinite(v)) y = std::max(y, std::fabs(v));
    }
  }
  return y;
}

double score_tolerance(index_t d, index_t lag, double y) {
  return kEps * (4.0 * (static_cast<double>(d) / 8.0 + 8.0) * y + static_cast<double>(lag) / 16.0 + 12.0);
}

::testing::AssertionResult close(float got, float want, double rel) {
  if (std::isnan(want) || std::isnan(got)) {
    if (std::isnan(want) && std::isnan(got)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "got " << got << " want " << want << " (NaN mismatch)";
  }
  if (got == want) return ::testing::AssertionSuccess();
  const double err = std::fabs(static_cast<double>(got) - want);
  if (err <= rel * std::fabs(static_cast<double>(want)) + FLT_MIN) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << got << " want " << want << " rel err "
                                       << err / std::fabs(static_cast<double>(want)) << " > tol " << rel;
}

kv_view<const float> fview(const std::vector<float>& x, index_t tokens, index_t d) {
  return kv_view<const float>(x.data(), tokens, d, d);
}

/// The oracle: dequantise-then-score, chunk by chunk, with each chunk's tolerance.
struct oracle_result {
  std::vector<float> scores;
  std::vector<double> tol;  // per chunk
};
oracle_result oracle_sequence(const std::vector<float>& kf, const std::vector<float>& vf, index_t d, index_t lag,
                              index_t chunks, double w) {
  oracle_result r;
  r.scores.resize(static_cast<std::size_t>(chunks * lag));
  const index_t tokens = static_cast<index_t>(kf.size()) / d;
  const auto k = fview(kf, tokens, d), v = fview(vf, tokens, d);
  for (index_t c = 0; c < chunks; ++c) {
    const auto kc = k.slice(c * lag, lag), kr = k.slice((c + 1) * lag, lag);
    const auto vc = v.slice(c * lag, lag), vr = v.slice((c + 1) * lag, lag);
    lagkv::reference::lagkv_chunk_scores<float>(kc, kr, vc, vr, w, r.scores.data() + c * lag);
    r.tol.push_back(score_tolerance(d, lag, std::max(normalised_max(kc, kr), normalised_max(vc, vr))));
  }
  return r;
}

// ---- Block type and conversions -------------------------------------------------------------------

TEST(Q8Block, MatchesGgmlLayout) {
  EXPECT_EQ(sizeof(block_q8_0), 34u);
  EXPECT_EQ(offsetof(block_q8_0, qs), 2u);
  EXPECT_EQ(alignof(block_q8_0), 2u);
}

enum class qdata { normal, large, small, denormal_scale, halves, zeros, vanishing, mixed };
const char* qdata_name(qdata q) {
  switch (q) {
    case qdata::normal: return "normal";
    case qdata::large: return "large";
    case qdata::small: return "small";
    case qdata::denormal_scale: return "denormal_scale";
    case qdata::halves: return "halves";
    case qdata::zeros: return "zeros";
    case qdata::vanishing: return "vanishing";
    case qdata::mixed: return "mixed";
  }
  return "?";
}

std::vector<float> make_qdata(qdata k) {
  const index_t n = 32 * 64;
  std::mt19937 rng(7 + static_cast<unsigned>(k));
  std::normal_distribution<float> nd;
  std::vector<float> x(static_cast<std::size_t>(n));
  for (float& v : x) v = nd(rng);
  switch (k) {
    case qdata::large: for (float& v : x) v *= 3e4f; break;  // d = amax/127 ~ 1e3; amax*id lands near 127
    case qdata::small: for (float& v : x) v *= 1e-3f; break;
    case qdata::denormal_scale: for (float& v : x) v *= 2e-6f; break;  // d < 2^-14: fp16 denormal
    case qdata::halves:  // amax 127 -> d = 1, id = 1: x0 = k + 0.5 exactly, roundf goes away from zero
      for (index_t i = 0; i < n; ++i)
        x[static_cast<std::size_t>(i)] = i % 32 == 0 ? 127.0f : static_cast<float>(i % 61 - 30) + 0.5f;
      break;
    case qdata::zeros: std::fill(x.begin(), x.end(), 0.0f); break;  // d = 0, id = 0
    case qdata::vanishing: for (float& v : x) v *= 1e-37f; break;   // 1/d overflows float: qs = 0
    case qdata::mixed:  // blocks of every kind side by side, and negative zero
      for (index_t i = 0; i < n; ++i) {
        float& v = x[static_cast<std::size_t>(i)];
        switch ((i / 32) % 5) {
          case 0: v *= 1e3f; break;
          case 1: v = 0.0f; break;
          case 2: v = -0.0f; break;
          case 3: v *= 1e-6f; break;
          default: break;
        }
      }
      break;
    case qdata::normal: break;
  }
  return x;
}

class Q8Quantize : public ::testing::TestWithParam<qdata> {};

TEST_P(Q8Quantize, BitExactAgainstGgmlReference) {
  const std::vector<float> x = make_qdata(GetParam());
  const auto n = static_cast<index_t>(x.size());
  std::vector<block_q8_0> got(static_cast<std::size_t>(n / 32)), want(got.size());
  lagkv::quantize_q8_0(x.data(), n, got.data());
  plain_quantize(x.data(), want.data(), n);
  for (std::size_t b = 0; b < got.size(); ++b) {
    EXPECT_EQ(got[b].d.bits, want[b].d.bits) << "block " << b;
    for (int j = 0; j < 32; ++j) EXPECT_EQ(got[b].qs[j], want[b].qs[j]) << "block " << b << " value " << j;
  }
}

TEST_P(Q8Quantize, DequantiseIsExactAndReproducesTheReference) {
  const std::vector<float> x = make_qdata(GetParam());
  const auto n = static_cast<index_t>(x.size());
  std::vector<block_q8_0> q(static_cast<std::size_t>(n / 32));
  lagkv::quantize_q8_0(x.data(), n, q.data());
  std::vector<float> got(x.size()), want(x.size());
  lagkv::dequantize_q8_0(q.data(), n / 32, got.data());
  plain_dequantize(q.data(), want.data(), n);
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(std::memcmp(&got[i], &want[i], sizeof(float)), 0) << "value " << i << ": " << got[i] << " vs " << want[i];
    // d*q in double equals the float product: the dequantised value is exact.
    const double exact = static_cast<double>(lagkv::to_float(q[i / 32].d)) * q[i / 32].qs[i % 32];
    EXPECT_EQ(static_cast<double>(got[i]), exact) << "value " << i;
    EXPECT_EQ(lagkv::dequantize_value(q[i / 32], static_cast<index_t>(i % 32)), got[i]);
  }
}

TEST_P(Q8Quantize, RoundTripErrorIsAtMostHalfAStep) {
  const std::vector<float> x = make_qdata(GetParam());
  const auto n = static_cast<index_t>(x.size());
  std::vector<block_q8_0> q(static_cast<std::size_t>(n / 32));
  lagkv::quantize_q8_0(x.data(), n, q.data());
  std::vector<float> y(x.size());
  lagkv::dequantize_q8_0(q.data(), n / 32, y.data());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double d = lagkv::to_float(q[i / 32].d);
    float amax = 0.0f;
    for (std::size_t j = i / 32 * 32; j < i / 32 * 32 + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    // half a step, plus the fp16 rounding of d (relative 2^-11) carried by up to 127 steps
    const double bound = 0.5 * d + 127.0 * std::fabs(amax / 127.0 - d) + 1e-30;
    EXPECT_LE(std::fabs(static_cast<double>(y[i]) - x[i]), bound * (1.0 + 1e-6)) << "value " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(AllData, Q8Quantize,
                         ::testing::Values(qdata::normal, qdata::large, qdata::small, qdata::denormal_scale,
                                           qdata::halves, qdata::zeros, qdata::vanishing, qdata::mixed),
                         [](const auto& info) { return std::string(qdata_name(info.param)); });

TEST(Q8Quantize, RejectsNonFiniteInputNamingIndexAndLeavesOutputAlone) {
  std::vector<float> x(64, 1.0f);
  x[37] = NAN;
  std::vector<block_q8_0> out(2);
  out[0].d.bits = 0x1234;
  try {
    lagkv::quantize_q8_0(x.data(), 64, out.data());
    FAIL() << "no throw";
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find("x[37]=nan"), std::string::npos) << e.what();
  }
  EXPECT_EQ(out[0].d.bits, 0x1234);
}

TEST(Q8Quantize, RejectsLengthsThatAreNotWholeBlocks) {
  std::vector<float> x(40, 1.0f);
  std::vector<block_q8_0> out(2);
  EXPECT_THROW(lagkv::quantize_q8_0(x.data(), 40, out.data()), lagkv::error);
  try {
    lagkv::quantize_q8_0(x.data(), 40, out.data());
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find("n=40"), std::string::npos) << e.what();
  }
}

TEST(Q8Quantize, TemplateFormWidensExactly) {
  std::vector<lagkv::f16> h(64);
  std::vector<float> f(64);
  for (int i = 0; i < 64; ++i) {
    h[static_cast<std::size_t>(i)] = lagkv::to_f16(0.37f * static_cast<float>(i - 30));
    f[static_cast<std::size_t>(i)] = lagkv::to_float(h[static_cast<std::size_t>(i)]);
  }
  std::vector<block_q8_0> a(2), b(2);
  lagkv::quantize_q8_0(h.data(), 64, a.data());
  lagkv::quantize_q8_0(f.data(), 64, b.data());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(block_q8_0) * 2), 0);
}

// ---- Views ----------------------------------------------------------------------------------------

enum class layout { hsd, shd, paged };
const char* layout_name(layout l) {
  switch (l) {
    case layout::hsd: return "hsd";
    case layout::shd: return "shd";
    case layout::paged: return "paged";
  }
  return "?";
}

/// A multi-head q8_0 cache holding one head's rows `x` ([tokens, d]) in layout `l`, other heads
/// filled with unrelated rows; view() is the head's view.
struct q8_cache {
  static constexpr index_t kHeads = 3, kHead = 1, kPage = 7;  // prime page size
  layout l;
  index_t tokens, d, nb;
  std::vector<block_q8_0> pool;
  std::vector<std::int32_t> table;

  q8_cache(layout lay, const std::vector<block_q8_0>& rows, index_t t, index_t dim)
      : l(lay), tokens(t), d(dim), nb(dim / 32) {
    std::mt19937 rng(99);
    std::vector<float> noise(static_cast<std::size_t>(32));
    std::normal_distribution<float> nd;
    const index_t pages = (tokens + kPage - 1) / kPage;
    const index_t slots = l == layout::paged ? (pages + 3) * kPage : tokens;
    pool.resize(static_cast<std::size_t>(slots * kHeads * nb));
    for (auto& b : pool) {
      for (float& v : noise) v = nd(rng);
      b = lagkv::quantize_block_q8_0(noise.data());
    }
    if (l == layout::paged) {
      table.resize(static_cast<std::size_t>(pages));
      std::iota(table.begin(), table.end(), 0);
      std::shuffle(table.begin(), table.end(), rng);
      for (auto& id : table) id += 2;  // pages 0 and 1 never used
    }
    auto mut = view_mut();
    for (index_t t2 = 0; t2 < tokens; ++t2)
      std::memcpy(mut.row(t2), rows.data() + t2 * nb, static_cast<std::size_t>(nb) * 34);
  }
  lagkv::q8_view<block_q8_0> view_mut() {
    switch (l) {
      case layout::hsd: return lagkv::view_q8_hsd(pool.data(), kHeads, tokens, d, kHead, tokens);
      case layout::shd: return lagkv::view_q8_shd(pool.data(), tokens, kHeads, d, kHead, tokens);
      case layout::paged: return lagkv::view_q8_paged(pool.data(), table.data(), kPage, kHeads, d, kHead, tokens);
    }
    return {};
  }
  q8_0_view view() { return view_mut(); }
};

class Q8Views : public ::testing::TestWithParam<layout> {};

TEST_P(Q8Views, ValuesAndSlicesAddressTheRightBlocks) {
  const index_t tokens = 40, d = 64;
  const auto x = make_values(kind::random, tokens, d, 8, 1);
  const auto q = quantize(x);
  const auto xf = dequantize(q);
  q8_cache cache(GetParam(), q, tokens, d);
  const q8_0_view v = cache.view();
  ASSERT_EQ(v.tokens(), tokens);
  ASSERT_EQ(v.blocks_per_row(), 2);
  EXPECT_EQ(v.row_bytes(), 68);
  for (index_t t = 0; t < tokens; ++t)
    for (index_t c = 0; c < d; ++c) EXPECT_EQ(v.value(t, c), xf[static_cast<std::size_t>(t * d + c)]) << t << "," << c;
  const q8_0_view s = v.slice(9, 20);
  for (index_t t = 0; t < 20; ++t)
    EXPECT_EQ(std::memcmp(s.row(t), q.data() + (t + 9) * 2, 68), 0) << "slice row " << t;
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, Q8Views, ::testing::Values(layout::hsd, layout::shd, layout::paged),
                         [](const auto& info) { return std::string(layout_name(info.param)); });

TEST(Q8Views, RejectHeadDimsThatAreNotWholeBlocksNamingTheValue) {
  std::vector<block_q8_0> b(8);
  try {
    lagkv::q8_view<block_q8_0>(b.data(), 2, 48, 2);
    FAIL() << "no throw";
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim=48"), std::string::npos) << e.what();
  }
  EXPECT_THROW(lagkv::view_q8_shd(b.data(), 2, 2, 64, 2, 2), lagkv::error);     // head out of range
  EXPECT_THROW(lagkv::view_q8_hsd(b.data(), 2, 2, 64, 0, 3), lagkv::error);     // tokens > capacity
  EXPECT_THROW(lagkv::q8_view<block_q8_0>(b.data(), 2, 64, 1), lagkv::error);   // rows would overlap
  EXPECT_THROW(q8_0_view().slice(0, 1), lagkv::error);
}

// ---- LagKV scores vs dequantise-then-score ---------------------------------------------------------

using score_param = std::tuple<target, kind, index_t>;
class Q8Scores : public ::testing::TestWithParam<score_param> {};

TEST_P(Q8Scores, SequenceMatchesDequantiseThenScore) {
  const auto [tg, k, d] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t lag = 16, chunks = 4, tokens = (chunks + 1) * lag + 5;
  auto kq = quantize(make_values(k, tokens, d, lag, 11));
  auto vq = quantize(make_values(k == kind::illcond ? kind::random : k, tokens, d, lag, 12));
  if (k == kind::nonfinite) poison_scales(kq, tokens, d / 32, lag);
  const auto kf = dequantize(kq), vf = dequantize(vq);
  const oracle_result want = oracle_sequence(kf, vf, d, lag, chunks, 1.0);
  std::vector<float> got(static_cast<std::size_t>(chunks * lag), -7.0f);
  lagkv::dispatch::lagkv_sequence_scores(lagkv::view_q8_hsd(kq.data(), 1, tokens, d, 0, tokens),
                                         lagkv::view_q8_hsd(vq.data(), 1, tokens, d, 0, tokens), lag, chunks, 1.0,
                                         got.data());
  for (index_t c = 0; c < chunks; ++c)
    for (index_t i = 0; i < lag; ++i) {
      const auto j = static_cast<std::size_t>(c * lag + i);
      EXPECT_TRUE(close(got[j], want.scores[j], want.tol[static_cast<std::size_t>(c)]))
          << "chunk " << c << " token " << i;
    }
  if (k == kind::nonfinite) {  // the oracle's semantics, exactly where they apply
    EXPECT_TRUE(std::isnan(got[3])) << "Inf scale in a scored token";
    for (index_t i = 0; i < lag; ++i)
      EXPECT_TRUE(std::isnan(got[static_cast<std::size_t>(lag + i)])) << "poisoned reference";
  }
}

TEST_P(Q8Scores, KeysOnlyAndValueWeightMatch) {
  const auto [tg, k, d] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t lag = 8, chunks = 3, tokens = (chunks + 1) * lag;
  auto kq = quantize(make_values(k, tokens, d, lag, 21));
  auto vq = quantize(make_values(k, tokens, d, lag, 22));
  if (k == kind::nonfinite) poison_scales(kq, tokens, d / 32, lag);
  const auto kf = dequantize(kq), vf = dequantize(vq);
  for (double w : {0.0, 0.25}) {
    const oracle_result want = oracle_sequence(kf, vf, d, lag, chunks, w);
    std::vector<float> got(static_cast<std::size_t>(chunks * lag));
    lagkv::dispatch::lagkv_sequence_scores(
        lagkv::view_q8_hsd(kq.data(), 1, tokens, d, 0, tokens),
        w == 0.0 ? q8_0_view() : lagkv::view_q8_hsd(vq.data(), 1, tokens, d, 0, tokens), lag, chunks, w, got.data());
    for (std::size_t j = 0; j < got.size(); ++j)
      EXPECT_TRUE(close(got[j], want.scores[j], want.tol[j / static_cast<std::size_t>(lag)]))
          << "w=" << w << " at " << j;
  }
}

TEST_P(Q8Scores, ChunkApiWithAShorterReferenceMatches) {
  const auto [tg, k, d] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t n = 13, nref = 6, tokens = 64;
  auto kq = quantize(make_values(k, tokens, d, 16, 31));
  auto vq = quantize(make_values(k, tokens, d, 16, 32));
  if (k == kind::nonfinite) kq[static_cast<std::size_t>(2 * (d / 32))].d.bits = 0x7e00;  // NaN scale: token 2
  const auto kf = dequantize(kq), vf = dequantize(vq);
  const auto kv = lagkv::view_q8_hsd(kq.data(), 1, tokens, d, 0, tokens);
  const auto vv = lagkv::view_q8_hsd(vq.data(), 1, tokens, d, 0, tokens);
  std::vector<float> got(static_cast<std::size_t>(n)), want(got.size());
  lagkv::dispatch::lagkv_chunk_scores(kv.slice(0, n), kv.slice(40, nref), vv.slice(0, n), vv.slice(40, nref), 0.5,
                                      got.data());
  const auto k8 = fview(kf, tokens, d), v8 = fview(vf, tokens, d);
  lagkv::reference::lagkv_chunk_scores<float>(k8.slice(0, n), k8.slice(40, nref), v8.slice(0, n), v8.slice(40, nref),
                                              0.5, want.data());
  const double tol = score_tolerance(d, n, std::max(normalised_max(k8.slice(0, n), k8.slice(40, nref)),
                                                    normalised_max(v8.slice(0, n), v8.slice(40, nref))));
  for (index_t i = 0; i < n; ++i)
    EXPECT_TRUE(close(got[static_cast<std::size_t>(i)], want[static_cast<std::size_t>(i)], tol)) << i;
  // The library's own oracle overload is exactly dequantise-then-score.
  std::vector<float> oracle(got.size());
  lagkv::reference::lagkv_chunk_scores(kv.slice(0, n), kv.slice(40, nref), vv.slice(0, n), vv.slice(40, nref), 0.5,
                                       oracle.data());
  for (index_t i = 0; i < n; ++i) {
    const auto j = static_cast<std::size_t>(i);
    EXPECT_TRUE(oracle[j] == want[j] || (std::isnan(oracle[j]) && std::isnan(want[j]))) << i;
  }
}

TEST_P(Q8Scores, ScoreHeadKeepsTheOraclesSetsWhereTheGapExceedsTheTolerance) {
  const auto [tg, k, d] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  lagkv::lagkv_params p;
  p.sink = 4;
  p.lag = 16;
  p.ratio = 0.5;
  const index_t tokens = p.sink + 5 * p.lag + 3;
  auto kq = quantize(make_values(k, tokens, d, p.lag, 41));
  auto vq = quantize(make_values(k, tokens, d, p.lag, 42));
  if (k == kind::nonfinite) poison_scales(kq, tokens, d / 32, p.lag);
  const auto kf = dequantize(kq), vf = dequantize(vq);
  const lagkv::lagkv_head_result got =
      lagkv::dispatch::lagkv_score_head(lagkv::view_q8_hsd(kq.data(), 1, tokens, d, 0, tokens),
                                        lagkv::view_q8_hsd(vq.data(), 1, tokens, d, 0, tokens), p);
  const lagkv::lagkv_head_result want = lagkv::lagkv_score_head<float>(fview(kf, tokens, d), fview(vf, tokens, d), p);
  ASSERT_EQ(got.cache_len, want.cache_len);
  ASSERT_EQ(got.chunk_scores.size(), want.chunk_scores.size());
  const index_t keep = p.keep_per_chunk();
  index_t compared = 0;
  for (std::size_t c = 0; c < want.chunk_scores.size(); ++c) {
    const auto& ws = want.chunk_scores[c];
    const auto k8 = fview(kf, tokens, d).slice(p.sink + static_cast<index_t>(c) * p.lag, 2 * p.lag);
    const auto v8 = fview(vf, tokens, d).slice(p.sink + static_cast<index_t>(c) * p.lag, 2 * p.lag);
    const double tol = score_tolerance(d, p.lag, std::max(normalised_max(k8.slice(0, p.lag), k8.slice(p.lag, p.lag)),
                                                          normalised_max(v8.slice(0, p.lag), v8.slice(p.lag, p.lag))));
    // Oracle ranks: the gap between the last kept and the first evicted score.
    std::vector<index_t> order(static_cast<std::size_t>(p.lag));
    std::iota(order.begin(), order.end(), index_t{0});
    std::sort(order.begin(), order.end(), [&](index_t a, index_t b) {
      return lagkv::ranks_before(ws[static_cast<std::size_t>(a)], a, ws[static_cast<std::size_t>(b)], b);
    });
    const float last = ws[static_cast<std::size_t>(order[static_cast<std::size_t>(keep - 1)])];
    const float first_out = ws[static_cast<std::size_t>(order[static_cast<std::size_t>(keep)])];
    const bool all_nan = std::isnan(last) && std::isnan(first_out);
    const double gap = std::isnan(first_out) ? INFINITY : static_cast<double>(last) - first_out;
    if (!all_nan && !(gap > 2.0 * tol * std::fabs(static_cast<double>(last)) + 2 * FLT_MIN)) continue;
    ++compared;
    for (index_t i = 0; i < keep; ++i) {
      const auto j = c * static_cast<std::size_t>(keep) + static_cast<std::size_t>(i);
      EXPECT_EQ(got.kept[j], want.kept[j]) << "chunk " << c << " kept #" << i;
    }
  }
  if (k != kind::constant) {
    EXPECT_GT(compared, 0) << "no chunk had a decisive gap: the test checks nothing";
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, Q8Scores,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()),
                                            ::testing::Values(kind::random, kind::constant, kind::far, kind::illcond,
                                                              kind::tiny, kind::nonfinite),
                                            ::testing::Values(index_t{32}, index_t{128}, index_t{160})),
                         [](const auto& info) {
                           return std::string(lagkv::simd::target_name(std::get<0>(info.param))) + "_" +
                                  kind_name(std::get<1>(info.param)) + "_D" + std::to_string(std::get<2>(info.param));
                         });

// Layouts: strided token-major and paged (prime page size, shuffled table) read the same rows.
using layout_param = std::tuple<target, layout>;
class Q8Layouts : public ::testing::TestWithParam<layout_param> {};

TEST_P(Q8Layouts, SequenceAndL2MatchOnEveryLayout) {
  const auto [tg, lay] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t d = 96, lag = 12, chunks = 3, tokens = (chunks + 1) * lag + 2;
  const auto kq = quantize(make_values(kind::random, tokens, d, lag, 51));
  const auto vq = quantize(make_values(kind::random, tokens, d, lag, 52));
  q8_cache kc(lay, kq, tokens, d), vc(lay, vq, tokens, d);
  const auto kf = dequantize(kq), vf = dequantize(vq);
  const oracle_result want = oracle_sequence(kf, vf, d, lag, chunks, 1.0);
  std::vector<float> got(static_cast<std::size_t>(chunks * lag));
  lagkv::dispatch::lagkv_sequence_scores(kc.view(), vc.view(), lag, chunks, 1.0, got.data());
  for (std::size_t j = 0; j < got.size(); ++j)
    EXPECT_TRUE(close(got[j], want.scores[j], want.tol[j / static_cast<std::size_t>(lag)])) << j;
  std::vector<float> l2(static_cast<std::size_t>(tokens)), l2want(l2.size());
  lagkv::dispatch::l2norm_scores(kc.view(), l2.data());
  lagkv::reference::l2norm_scores<float>(fview(kf, tokens, d), l2want.data());
  for (std::size_t t = 0; t < l2.size(); ++t) EXPECT_TRUE(close(l2[t], l2want[t], (d / 32 + 8) * kEps)) << t;
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, Q8Layouts,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()),
                                            ::testing::Values(layout::hsd, layout::shd, layout::paged)),
                         [](const auto& info) {
                           return std::string(lagkv::simd::target_name(std::get<0>(info.param))) + "_" +
                                  layout_name(std::get<1>(info.param));
                         });

// ---- L2 ---------------------------------------------------------------------------------------------

using l2_param = std::tuple<target, kind>;
class Q8L2 : public ::testing::TestWithParam<l2_param> {};

TEST_P(Q8L2, MatchesDequantiseThenScore) {
  const auto [tg, k] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t d = 160, tokens = 301;  // > one 256-row kernel call, odd tail
  auto q = quantize(make_values(k, tokens, d, 16, 61));
  if (k == kind::nonfinite) {
    q[5 * 5].d.bits = 0x7e00;          // NaN scale
    q[9 * 5 + 2].d.bits = 0x7c00;      // Inf scale, non-zero q
    std::memset(q[11 * 5 + 4].qs, 0, 32);
    q[11 * 5 + 4].d.bits = 0x7c00;     // Inf scale times q = 0: NaN in the oracle too
  }
  const auto f = dequantize(q);
  std::vector<float> got(static_cast<std::size_t>(tokens)), want(got.size());
  lagkv::dispatch::l2norm_scores(lagkv::view_q8_hsd(q.data(), 1, tokens, d, 0, tokens), got.data());
  lagkv::reference::l2norm_scores<float>(fview(f, tokens, d), want.data());
  for (std::size_t t = 0; t < got.size(); ++t) EXPECT_TRUE(close(got[t], want[t], (d / 32 + 8) * kEps)) << t;
  if (k == kind::nonfinite) {
    EXPECT_TRUE(std::isnan(got[5]));
    EXPECT_EQ(got[9], -INFINITY);
    EXPECT_TRUE(std::isnan(got[11]));
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, Q8L2,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()),
                                            ::testing::Values(kind::random, kind::tiny, kind::far, kind::nonfinite)),
                         [](const auto& info) {
                           return std::string(lagkv::simd::target_name(std::get<0>(info.param))) + "_" +
                                  kind_name(std::get<1>(info.param));
                         });

// ---- Chunks float cannot resolve go to the oracle ---------------------------------------------------
//
// The fp32 path's two rules (simd/dispatch.hpp finish_chunk; common.hpp kFloatMaxStd and
// kFloatMaxMean) hold for q8_0 too: a chunk with a std above 2^12, or with a row whose mean
// normalised value is beyond 2^12, is scored by the oracle. The chunks below hold several tokens
// with (nearly) equal oracle stds but different values, so float errors of O(0.1..1) in the stds
// reorder them: before the rules every target (scalar included: its double sums use the float
// 1/range) was off by 0.03 (wide), 0.035 (far_above) and 0.004 (far_below), top-k differing.
//   wide: reference values in [0, 127 * 2^-12], the scored tokens share three blocks of values
//     up to 2048 * 127 and differ only in a fourth, small block: normalised stds ~5e6 that differ
//     by O(1).
//   far: scored tokens 2^27 (~1.3e8) or -2^24 reference ranges away with a spread of O(10..100)
//     normalised: reference block b has scale m_b 2^-24 (m_b = 1800 + b) and values q_c * scale
//     (q_c in [64, 127]) above a zero row; token t's block b has scale (m_b + j_t) 2^(E-24) and
//     the same q_c, so its normalised values are exactly 2^E (1 + j_t / m_b): j_t and -j_t give
//     equal oracle stds but different float errors.
// Scores are compared with the oracle within 1e-3 (absolute) and top-k, on the chunk entry point
// and on the sequence one (a random chunk 0 scored against the extreme chunk 1, then chunk 1).

enum class extreme { wide, far_above, far_below };
const char* extreme_name(extreme e) {
  switch (e) {
    case extreme::wide: return "wide";
    case extreme::far_above: return "far_above";
    case extreme::far_below: return "far_below";
  }
  return "?";
}

constexpr index_t kExtremeDim = 128, kExtremeBlocks = kExtremeDim / 32, kExtremeLag = 16;

/// [lag random tokens | lag extreme tokens | lag reference tokens] of kExtremeDim channels.
std::vector<block_q8_0> make_extreme(extreme e) {
  const index_t nb = kExtremeBlocks, lag = kExtremeLag;
  std::vector<block_q8_0> q = quantize(make_values(kind::random, 3 * lag, kExtremeDim, lag, 91));
  std::mt19937 rng(92);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto set = [&](index_t t, index_t b, float d, auto&& value) {
    block_q8_0& blk = q[static_cast<std::size_t>(t * nb + b)];
    blk.d = lagkv::to_f16(d);
    for (int j = 0; j < 32; ++j) blk.qs[j] = static_cast<std::int8_t>(value(j));
  };
  const index_t chunk = lag, ref = 2 * lag;
  if (e == extreme::wide) {
    for (index_t t = 0; t < lag; ++t)
      for (index_t b = 0; b < nb; ++b) set(ref + t, b, 0x1p-12f, [&](int) { return uniform(0, 127); });
    std::vector<int> shared(static_cast<std::size_t>(32 * (nb - 1)));
    for (int& v : shared) v = uniform(-127, 127);
    for (index_t t = 0; t < lag; ++t) {
      for (index_t b = 0; b + 1 < nb; ++b)
        set(chunk + t, b, 2048.0f, [&](int j) { return shared[static_cast<std::size_t>(b * 32 + j)]; });
      const float d = 2.0f * static_cast<float>(uniform(1, 1000)) / 1000.0f;
      set(chunk + t, nb - 1, d, [&](int) { return uniform(-127, 127); });
    }
  } else {
    const int exponent = e == extreme::far_above ? 27 : 24;
    const float sign = e == extreme::far_above ? 1.0f : -1.0f;
    std::vector<int> top(static_cast<std::size_t>(kExtremeDim));
    for (int& v : top) v = uniform(64, 127);
    auto m = [](index_t b) { return 1800.0f + static_cast<float>(b); };
    for (index_t t = 0; t < lag; ++t)
      for (index_t b = 0; b < nb; ++b)
        set(ref + t, b, m(b) * 0x1p-24f, [&](int j) {
          const int c = top[static_cast<std::size_t>(b * 32 + j)];
          return t == 0 ? 0 : t == 1 ? c : uniform(0, c);
        });
    const int js[kExtremeLag] = {3, -3, 0, 2, -2, 3, -3, 1, -1, 0, 2, -2, 3, -3, 1, -1};
    for (index_t t = 0; t < lag; ++t)
      for (index_t b = 0; b < nb; ++b)
        set(chunk + t, b, sign * (m(b) + static_cast<float>(js[t])) * std::ldexp(1.0f, exponent - 24),
            [&](int j) { return top[static_cast<std::size_t>(b * 32 + j)]; });
  }
  return q;
}

/// got within 1e-3 of the oracle and the same top-(n/2).
void expect_like_oracle(const float* got, const float* want, index_t n, const char* what) {
  for (index_t i = 0; i < n; ++i) EXPECT_NEAR(got[i], want[i], 1e-3) << what << " token " << i;
  EXPECT_EQ(lagkv::select_top_k(got, n, n / 2), lagkv::select_top_k(want, n, n / 2)) << what;
}

using extreme_param = std::tuple<target, extreme>;
class Q8Extreme : public ::testing::TestWithParam<extreme_param> {};

TEST_P(Q8Extreme, ChunkEntryPointScoresAsTheOracle) {
  const auto [tg, e] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t lag = kExtremeLag;
  const std::vector<block_q8_0> q = make_extreme(e);
  const auto x = lagkv::view_q8_hsd(q.data(), 1, 3 * lag, kExtremeDim, 0, 3 * lag);
  float got[kExtremeLag], want[kExtremeLag];
  lagkv::dispatch::lagkv_chunk_scores(x.slice(lag, lag), x.slice(2 * lag, lag), q8_0_view(), q8_0_view(), 0.0, got);
  lagkv::reference::lagkv_chunk_scores(x.slice(lag, lag), x.slice(2 * lag, lag), q8_0_view(), q8_0_view(), 0.0, want);
  expect_like_oracle(got, want, lag, "chunk");
}

TEST_P(Q8Extreme, SequenceEntryPointScoresAsTheOracle) {
  const auto [tg, e] = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  lagkv::simd::scoped_target use(tg);
  const index_t lag = kExtremeLag;
  const std::vector<block_q8_0> q = make_extreme(e);
  const auto x = lagkv::view_q8_hsd(q.data(), 1, 3 * lag, kExtremeDim, 0, 3 * lag);
  float got[2 * kExtremeLag], want[2 * kExtremeLag];
  lagkv::dispatch::lagkv_sequence_scores(x, x, lag, 2, 0.5, got);
  for (index_t c = 0; c < 2; ++c)
    lagkv::reference::lagkv_chunk_scores(x.slice(c * lag, lag), x.slice((c + 1) * lag, lag), x.slice(c * lag, lag),
                                         x.slice((c + 1) * lag, lag), 0.5, want + c * lag);
  expect_like_oracle(got, want, lag, "sequence chunk 0 (random, against the extreme chunk)");
  expect_like_oracle(got + lag, want + lag, lag, "sequence chunk 1 (extreme)");
}

INSTANTIATE_TEST_SUITE_P(AllTargets, Q8Extreme,
                         ::testing::Combine(::testing::ValuesIn(compiled_targets()),
                                            ::testing::Values(extreme::wide, extreme::far_above, extreme::far_below)),
                         [](const auto& info) {
                           return std::string(lagkv::simd::target_name(std::get<0>(info.param))) + "_" +
                                  extreme_name(std::get<1>(info.param));
                         });

// ---- SIMD vs scalar ------------------------------------------------------------------------------

class Q8SimdVsScalar : public ::testing::TestWithParam<target> {};

TEST_P(Q8SimdVsScalar, TargetsAgreeWithThePortableKernels) {
  const target tg = GetParam();
  LAGKV_REQUIRE_TARGET(tg);
  const index_t d = 128, lag = 32, chunks = 5, tokens = (chunks + 1) * lag;
  const auto kq = quantize(make_values(kind::random, tokens, d, lag, 71));
  const auto vq = quantize(make_values(kind::far, tokens, d, lag, 72));
  const auto kv = lagkv::view_q8_hsd(kq.data(), 1, tokens, d, 0, tokens);
  const auto vv = lagkv::view_q8_hsd(vq.data(), 1, tokens, d, 0, tokens);
  auto run = [&](target t, std::vector<float>& seq, std::vector<float>& l2) {
    lagkv::simd::scoped_target use(t);
    seq.resize(static_cast<std::size_t>(chunks * lag));
    l2.resize(static_cast<std::size_t>(tokens));
    lagkv::dispatch::lagkv_sequence_scores(kv, vv, lag, chunks, 1.0, seq.data());
    lagkv::dispatch::l2norm_scores(kv, l2.data());
  };
  std::vector<float> s_ref, l_ref, s, l;
  run(target::scalar, s_ref, l_ref);
  run(tg, s, l);
  const oracle_result o = oracle_sequence(dequantize(kq), dequantize(vq), d, lag, chunks, 1.0);
  for (std::size_t j = 0; j < s.size(); ++j)  // both within tol of the oracle: within 2 tol of each other
    EXPECT_TRUE(close(s[j], s_ref[j], 2.0 * o.tol[j / static_cast<std::size_t>(lag)])) << j;
  for (std::size_t t = 0; t < l.size(); ++t) EXPECT_TRUE(close(l[t], l_ref[t], 2.0 * (d / 32 + 8) * kEps)) << t;
}

INSTANTIATE_TEST_SUITE_P(AllTargets, Q8SimdVsScalar, ::testing::ValuesIn(compiled_targets()),
                         [](const auto& info) { return std::string(lagkv::simd::target_name(info.param)); });

// ---- Errors ---------------------------------------------------------------------------------------

TEST(Q8Dispatch, RejectsMismatchedViewsNamingTheParameter) {
  std::vector<block_q8_0> a(64 * 4), b(64 * 2);
  const auto k = lagkv::view_q8_hsd(a.data(), 1, 64, 128, 0, 64);
  const auto v = lagkv::view_q8_hsd(b.data(), 1, 64, 64, 0, 64);
  std::vector<float> out(64);
  try {
    lagkv::dispatch::lagkv_sequence_scores(k, v, 16, 3, 1.0, out.data());
    FAIL() << "no throw";
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find("v.head_dim=64"), std::string::npos) << e.what();
  }
  try {
    lagkv::dispatch::lagkv_sequence_scores(k, k, 16, 4, 1.0, out.data());
    FAIL() << "no throw";
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find("k.tokens=64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(lagkv::dispatch::lagkv_sequence_scores(k, k, 0, 1, 1.0, out.data()), lagkv::error);
  EXPECT_THROW(lagkv::dispatch::lagkv_chunk_scores(k.slice(0, 8), v.slice(8, 8), k, k, 0.0, out.data()), lagkv::error);
}

// ---- Compaction -------------------------------------------------------------------------------------

class Q8Compact : public ::testing::TestWithParam<layout> {};

TEST_P(Q8Compact, KeptRowsMoveBitForBitAndNothingElseChanges) {
  const index_t tokens = 30, d = 64, nb = 2;
  const auto q = quantize(make_values(kind::random, tokens, d, 8, 81));
  q8_cache cache(GetParam(), q, tokens, d);
  const std::vector<block_q8_0> before = cache.pool;
  const auto v = cache.view_mut();
  const std::vector<index_t> kept = {0, 1, 4, 5, 6, 11, 17, 18, 23, 29};
  const auto n = static_cast<index_t>(kept.size());
  lagkv::compact_rows(v, kept.data(), n);
  lagkv::move_rows_down(v, 29, n, 1);  // row 29 (kept last) again, onto slot n
  // Expected: the head's rows [0, n) are the kept rows and row n is row 29; every other byte
  // (rows past n, other heads, unused pages) is as before.
  q8_cache expect(GetParam(), q, tokens, d);
  ASSERT_EQ(std::memcmp(expect.pool.data(), before.data(), before.size() * sizeof(block_q8_0)), 0);
  const auto ev = expect.view_mut();
  for (index_t i = 0; i < n; ++i) std::memcpy(ev.row(i), q.data() + kept[static_cast<std::size_t>(i)] * nb, 68);
  std::memcpy(ev.row(n), q.data() + 29 * nb, 68);
  ASSERT_EQ(cache.pool.size(), expect.pool.size());
  EXPECT_EQ(std::memcmp(cache.pool.data(), expect.pool.data(), cache.pool.size() * sizeof(block_q8_0)), 0);
}

TEST_P(Q8Compact, BadKeptIndicesThrowAndLeaveRowsUnchanged) {
  const index_t tokens = 10, d = 32;
  const auto q = quantize(make_values(kind::random, tokens, d, 8, 82));
  q8_cache cache(GetParam(), q, tokens, d);
  const std::vector<block_q8_0> before = cache.pool;
  const std::vector<index_t> bad = {0, 3, 2};
  try {
    lagkv::compact_rows(cache.view_mut(), bad.data(), 3);
    FAIL() << "no throw";
  } catch (const lagkv::error& e) {
    EXPECT_NE(std::string(e.what()).find("kept[2]=2"), std::string::npos) << e.what();
  }
  EXPECT_EQ(std::memcmp(cache.pool.data(), before.data(), before.size() * sizeof(block_q8_0)), 0);
  EXPECT_THROW(lagkv::move_rows_down(cache.view_mut(), 2, 3, 1), lagkv::error);
}

INSTANTIATE_TEST_SUITE_P(AllLayouts, Q8Compact, ::testing::Values(layout::hsd, layout::shd, layout::paged),
                         [](const auto& info) { return std::string(layout_name(info.param)); });

}  // namespace
