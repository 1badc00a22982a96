// RoPE: re-rotation against fresh rotation (every dtype, both styles, every head_dim, partial
// rotary dims, positions up to 1e6), fp32 accuracy against a long-double rotation, every
// layout against a dense copy, every vector kernel against the scalar oracle, and validation.
//
// Tolerances, per output component, relative to r = the norm of the token's (x0, x1) pair
// (rotations preserve it, so it bounds every component on every path):
//  - One fp32 rotation (simd/rope_scalar.hpp): the fp32 cos/sin carry 2^-24 relative each,
//    the product x1*s rounds once more, the fma once: |err| <= (|x0| + 2|x1| + r) 2^-24
//    <= 3.3 * 2^-24 * r. The angle is computed in double from the integer position: its error
//    is ~|pos * theta| * 2^-52 <= 2.3e-10 rad at 1e6, i.e. 0.004 fp32 ulps: negligible.
//  - Shift vs fresh: the shift path carries the error of rotating at p (a vector of norm at most
//    sqrt(2) * 3.3 u r, rotated unchanged), plus its own 3.3 u r; the fresh path 3.3 u r:
//    together < 12 * 2^-24 * r.
//  - fp16 / bf16 add one storage rounding per stored result (u = 2^-11 / 2^-8 relative, RNE):
//    the key stored at p (propagated: a vector of norm <= u r), the shifted result and the
//    fresh result (u r each): 3 u r on top of the fp32 term. fp16 subnormals round with an
//    absolute half-step of 2^-25, three times.
#include <gtest/gtest.h>
#include <lagkv/rope.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace {

using lagkv::bf16;
using lagkv::f16;
using lagkv::index_t;
using lagkv::kv_view;
using lagkv::rope_isa;
using lagkv::rope_params;
using lagkv::rope_style;

constexpr double kU32 = 1.0 / (1 << 24);  // fp32 unit roundoff, 2^-24

template <class T>
double storage_u() {
  if constexpr (std::is_same_v<T, f16>) return 1.0 / (1 << 11);
  if constexpr (std::is_same_v<T, bf16>) return 1.0 / (1 << 8);
  return 0.0;  // fp32: the storage rounding is the fp32 rounding already counted
}
template <class T>
double storage_abs_floor() {
  return std::is_same_v<T, f16> ? 3.0 * std::ldexp(1.0, -25) : 0.0;
}
/// |shifted - fresh| bound for one component, see the file comment.
template <class T>
double shift_tolerance(double r) {
  return (3.0 * storage_u<T>() + 12.0 * kU32) * r + storage_abs_floor<T>();
}

template <class T>
std::uint32_t bits_of(T x) {
  if constexpr (std::is_same_v<T, float>) {
    std::uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    return u;
  } else {
    return x.bits;
  }
}
template <class T>
bool same_bits_or_both_nan(T a, T b) {
  const float fa = lagkv::to_float(a), fb = lagkv::to_float(b);
  return bits_of(a) == bits_of(b) || (std::isnan(fa) && std::isnan(fb));
}

template <class T>
float smallest_subnormal() {
  if constexpr (std::is_same_v<T, float>) return std::numeric_limits<float>::denorm_min();
  return lagkv::to_float(T{1});
}

template <class T>
std::vector<T> random_keys(std::size_t n, std::uint32_t seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<T> out(n);
  for (auto& x : out) x = lagkv::from_float<T>(dist(gen));
  return out;
}

/// Index of the partner channel of c, and the pair index, for a style.
struct pair_of {
  index_t partner, pair;
};
pair_of pairing(rope_style style, index_t rotary_dim, index_t c) {
  const index_t half = rotary_dim / 2;
  if (style == rope_style::neox) return c < half ? pair_of{c + half, c} : pair_of{c - half, c - half};
  return pair_of{c ^ 1, c / 2};
}

std::string style_tag(rope_style s) { return lagkv::rope_style_name(s); }

// ---- Shift: rotate at p, re-rotate to q == rotate at q --------------------------------------------

struct dims {
  index_t head_dim, rotary_dim;
};
const dims kDims[] = {{64, 64}, {80, 80}, {96, 96}, {128, 128}, {256, 256}, {128, 32}, {80, 24}};

enum class regime { near, far, jump };
const char* regime_name(regime r) { return r == regime::near ? "near" : r == regime::far ? "far1e6" : "jump1e6"; }

/// Old and new positions for `n` tokens: near (both < 4096), far (both ~1e6, q within 1000 of
/// p either way: an eviction or context shift late in a long context), jump (p < 4096, q ~1e6).
void make_positions(regime rg, index_t n, std::uint32_t seed, std::vector<std::int64_t>& p, std::vector<std::int64_t>& q) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::int64_t> small(0, 4095), gap(-1000, 1000), big(999000, 1000000);
  p.resize(static_cast<std::size_t>(n));
  q.resize(static_cast<std::size_t>(n));
  for (std::size_t t = 0; t < p.size(); ++t) {
    switch (rg) {
      case regime::near: p[t] = small(gen), q[t] = small(gen); break;
      case regime::far: p[t] = big(gen), q[t] = p[t] + gap(gen); break;
      case regime::jump: p[t] = small(gen), q[t] = big(gen); break;
    }
  }
  p[0] = q[0];  // one token that does not move
}

struct shift_case {
  lagkv::dtype type;
  rope_style style;
  dims d;
  regime rg;
};

class RopeShift : public ::testing::TestWithParam<shift_case> {
 protected:
  template <class T>
  void run() {
    const shift_case& k = GetParam();
    const index_t n = 29, D = k.d.head_dim, rd = k.d.rotary_dim;
    rope_params params;
    params.style = k.style;
    params.rotary_dim = rd;
    const std::vector<T> x = random_keys<T>(static_cast<std::size_t>(n * D), 17u + static_cast<std::uint32_t>(D + rd));
    std::vector<std::int64_t> p, q;
    make_positions(k.rg, n, 5u, p, q);

    std::vector<T> shifted = x, fresh = x;
    const kv_view<T> vs(shifted.data(), n, D, D), vf(fresh.data(), n, D, D);
    lagkv::apply_rope(vs, p.data(), n, params);
    lagkv::rerotate(vs, p.data(), q.data(), n, params);
    lagkv::apply_rope(vf, q.data(), n, params);

    double worst = 0.0;  // largest |err| / tolerance, recorded for docs/positions.md
    for (index_t t = 0; t < n; ++t) {
      for (index_t c = 0; c < D; ++c) {
        const std::size_t i = static_cast<std::size_t>(t * D + c);
        if (c >= rd) {  // beyond rotary_dim: untouched on both paths, to the bit
          ASSERT_EQ(bits_of(shifted[i]), bits_of(x[i])) << "t=" << t << " c=" << c;
          ASSERT_EQ(bits_of(fresh[i]), bits_of(x[i])) << "t=" << t << " c=" << c;
          continue;
        }
        const index_t partner = pairing(k.style, rd, c).partner;
        const double a = lagkv::to_float(x[i]), b = lagkv::to_float(x[static_cast<std::size_t>(t * D + partner)]);
        const double r = std::sqrt(a * a + b * b);
        const double err = std::fabs(static_cast<double>(lagkv::to_float(shifted[i])) - lagkv::to_float(fresh[i]));
        const double tol = shift_tolerance<T>(r);
        ASSERT_LE(err, tol) << "t=" << t << " c=" << c << " p=" << p[static_cast<std::size_t>(t)]
                            << " q=" << q[static_cast<std::size_t>(t)] << " r=" << r;
        worst = std::max(worst, err / tol);
      }
    }
    RecordProperty("worst_error_over_tolerance", std::to_string(worst));
  }
};

TEST_P(RopeShift, RerotateEqualsFreshRotation) {
  lagkv::visit_dtype(GetParam().type, [&](auto tag) { run<decltype(tag)>(); });
}

std::vector<shift_case> shift_cases() {
  std::vector<shift_case> out;
  for (auto type : {lagkv::dtype::f32, lagkv::dtype::f16, lagkv::dtype::bf16})
    for (auto style : {rope_style::interleaved, rope_style::neox})
      for (const dims& d : kDims)
        for (auto rg : {regime::near, regime::far, regime::jump}) out.push_back({type, style, d, rg});
  return out;
}

std::string name_of(const shift_case& k) {
  return std::string(lagkv::dtype_name(k.type)) + "_" + style_tag(k.style) + "_d" + std::to_string(k.d.head_dim) +
         "_r" + std::to_string(k.d.rotary_dim) + "_" + regime_name(k.rg);
}
void PrintTo(const shift_case& k, std::ostream* os) { *os << name_of(k); }

INSTANTIATE_TEST_SUITE_P(AllDtypesStylesDims, RopeShift, ::testing::ValuesIn(shift_cases()),
                         [](const ::testing::TestParamInfo<shift_case>& info) { return name_of(info.param); });

// ---- fp32 accuracy against a long-double rotation ---------------------------------------------

struct accuracy_case {
  rope_style style;
  regime rg;
};

class RopeAccuracy : public ::testing::TestWithParam<accuracy_case> {
 protected:
  static constexpr index_t kN = 17, kD = 128;
  rope_params params() const {
    rope_params p;
    p.style = GetParam().style;
    p.base = 500000.0;  // Llama 3
    return p;
  }
  /// Rotates fp32 `x` by `pos` in long double (64-bit mantissa: the angle's error at 1e6 rad is
  /// ~1e-13) and returns the exact-ish result, before any fp32 rounding.
  std::vector<long double> reference(const std::vector<float>& x, const std::vector<std::int64_t>& pos) const {
    const rope_params p = params();
    std::vector<long double> y(x.begin(), x.end());
    for (index_t t = 0; t < kN; ++t) {
      for (index_t c = 0; c < kD; ++c) {
        const pair_of pr = pairing(p.style, kD, c);
        const bool first = p.style == rope_style::neox ? c < kD / 2 : c % 2 == 0;
        const long double theta = std::pow(static_cast<long double>(p.base), -2.0L * pr.pair / kD);
        const long double angle = static_cast<long double>(pos[static_cast<std::size_t>(t)]) * theta;
        const long double a = x[static_cast<std::size_t>(t * kD + c)], b = x[static_cast<std::size_t>(t * kD + pr.partner)];
        y[static_cast<std::size_t>(t * kD + c)] =
            first ? a * std::cos(angle) - b * std::sin(angle) : a * std::cos(angle) + b * std::sin(angle);
      }
    }
    return y;
  }
  /// One fp32 rotation is within 3.3 * 2^-24 * r of exact (file comment); 4 * 2^-24 * r allowed.
  void expect_close(const std::vector<float>& got, const std::vector<long double>& want, const std::vector<float>& x) const {
    double worst = 0.0;
    for (index_t t = 0; t < kN; ++t) {
      for (index_t c = 0; c < kD; ++c) {
        const std::size_t i = static_cast<std::size_t>(t * kD + c);
        const std::size_t j = static_cast<std::size_t>(t * kD + pairing(GetParam().style, kD, c).partner);
        const double r = std::sqrt(static_cast<double>(x[i]) * x[i] + static_cast<double>(x[j]) * x[j]);
        const double err = static_cast<double>(std::fabs(static_cast<long double>(got[i]) - want[i]));
        ASSERT_LE(err, 4.0 * kU32 * r) << "t=" << t << " c=" << c;
        worst = std::max(worst, err / (kU32 * r));
      }
    }
    RecordProperty("worst_error_in_u_r", std::to_string(worst));
  }
};

TEST_P(RopeAccuracy, FreshRotationMatchesLongDouble) {
  std::vector<std::int64_t> p, q;
  make_positions(GetParam().rg, kN, 9u, p, q);
  const std::vector<float> x = random_keys<float>(kN * kD, 3u);
  std::vector<float> y = x;
  lagkv::apply_rope(kv_view<float>(y.data(), kN, kD, kD), q.data(), kN, params());
  expect_close(y, reference(x, q), x);
}

TEST_P(RopeAccuracy, RerotationMatchesLongDoubleRotationOfTheStoredKey) {
  std::vector<std::int64_t> p, q, delta(kN);
  make_positions(GetParam().rg, kN, 11u, p, q);
  std::vector<float> stored = random_keys<float>(kN * kD, 4u);
  lagkv::apply_rope(kv_view<float>(stored.data(), kN, kD, kD), p.data(), kN, params());
  for (std::size_t t = 0; t < delta.size(); ++t) delta[t] = q[t] - p[t];
  std::vector<float> y = stored;
  lagkv::rerotate(kv_view<float>(y.data(), kN, kD, kD), p.data(), q.data(), kN, params());
  // Exact up to one rotation's rounding: the reference rotates the stored key by q - p exactly.
  expect_close(y, reference(stored, delta), stored);
}

std::string name_of(const accuracy_case& k) { return style_tag(k.style) + "_" + regime_name(k.rg); }
void PrintTo(const accuracy_case& k, std::ostream* os) { *os << name_of(k); }

INSTANTIATE_TEST_SUITE_P(Fp32, RopeAccuracy,
                         ::testing::Values(accuracy_case{rope_style::interleaved, regime::near},
                                           accuracy_case{rope_style::interleaved, regime::far},
                                           accuracy_case{rope_style::interleaved, regime::jump},
                                           accuracy_case{rope_style::neox, regime::near},
                                           accuracy_case{rope_style::neox, regime::far},
                                           accuracy_case{rope_style::neox, regime::jump}),
                         [](const ::testing::TestParamInfo<accuracy_case>& info) { return name_of(info.param); });

// ---- Layouts: a view over any layout rotates exactly like a dense copy ----------------------------

enum class layout { hsd, shd, hds, paged };
const char* layout_name(layout l) {
  switch (l) {
    case layout::hsd: return "hsd";
    case layout::shd: return "shd";
    case layout::hds: return "hds_transposed";
    case layout::paged: return "paged";
  }
  return "?";
}

struct layout_case {
  lagkv::dtype type;
  layout lay;
  rope_style style;
};

class RopeLayout : public ::testing::TestWithParam<layout_case> {
 protected:
  // head_dim 80 with rotary_dim 52: 26 pairs exercise the 16-, 8-wide and scalar tails.
  static constexpr index_t kH = 3, kD = 80, kRd = 52, kCap = 23, kUsed = 19, kHead = 1, kBlock = 5;

  template <class T>
  void run() {
    const layout_case& k = GetParam();
    const std::vector<std::int32_t> table = {4, 0, 6, 2};  // 4 of 7 blocks, scrambled
    std::vector<T> buf = random_keys<T>(static_cast<std::size_t>(layout_size(k.lay)), 21u);
    const std::vector<T> before = buf;
    kv_view<T> v;
    switch (k.lay) {
      case layout::hsd: v = lagkv::view_hsd(buf.data(), kH, kCap, kD, kHead, kUsed); break;
      case layout::shd: v = lagkv::view_shd(buf.data(), kCap, kH, kD, kHead, kUsed); break;
      case layout::hds: v = lagkv::view_hds(buf.data(), kH, kD, kCap, kHead, kUsed); break;
      case layout::paged: v = lagkv::view_paged(buf.data(), table.data(), kBlock, kH, kD, kHead, kUsed); break;
    }
    std::vector<T> dense(static_cast<std::size_t>(kUsed * kD));
    std::vector<bool> in_view(buf.size(), false);
    for (index_t t = 0; t < kUsed; ++t)
      for (index_t c = 0; c < kD; ++c) {
        dense[static_cast<std::size_t>(t * kD + c)] = v(t, c);
        in_view[static_cast<std::size_t>(&v(t, c) - buf.data())] = true;
      }
    std::vector<std::int64_t> p, q;
    make_positions(regime::far, kUsed, 2u, p, q);
    rope_params params;
    params.style = k.style;
    params.rotary_dim = kRd;
    lagkv::rerotate(v, p.data(), q.data(), kUsed, params);
    lagkv::rerotate(kv_view<T>(dense.data(), kUsed, kD, kD), p.data(), q.data(), kUsed, params);
    for (index_t t = 0; t < kUsed; ++t)
      for (index_t c = 0; c < kD; ++c)
        ASSERT_EQ(bits_of(v(t, c)), bits_of(dense[static_cast<std::size_t>(t * kD + c)])) << "t=" << t << " c=" << c;
    for (std::size_t i = 0; i < buf.size(); ++i)
      if (!in_view[i]) {
        ASSERT_EQ(bits_of(buf[i]), bits_of(before[i])) << "element " << i << " outside the view changed";
      }
  }
  static index_t layout_size(layout l) { return l == layout::paged ? 7 * kBlock * kH * kD : kH * kCap * kD; }
};

TEST_P(RopeLayout, MatchesDenseCopyAndTouchesNothingElse) {
  lagkv::visit_dtype(GetParam().type, [&](auto tag) { run<decltype(tag)>(); });
}

std::vector<layout_case> layout_cases() {
  std::vector<layout_case> out;
  for (auto type : {lagkv::dtype::f32, lagkv::dtype::f16, lagkv::dtype::bf16})
    for (auto lay : {layout::hsd, layout::shd, layout::hds, layout::paged})
      for (auto style : {rope_style::interleaved, rope_style::neox}) out.push_back({type, lay, style});
  return out;
}

std::string name_of(const layout_case& k) {
  return std::string(lagkv::dtype_name(k.type)) + "_" + layout_name(k.lay) + "_" + style_tag(k.style);
}
void PrintTo(const layout_case& k, std::ostream* os) { *os << name_of(k); }

INSTANTIATE_TEST_SUITE_P(AllLayouts, RopeLayout, ::testing::ValuesIn(layout_cases()),
                         [](const ::testing::TestParamInfo<layout_case>& info) { return name_of(info.param); });

// ---- Vector kernels against the scalar oracle -------------------------------------------------

struct simd_case {
  rope_isa isa;
  lagkv::dtype type;
  rope_style style;
  dims d;
};

class RopeSimd : public ::testing::TestWithParam<simd_case> {
 protected:
  template <class T>
  void run() {
    const simd_case& k = GetParam();
    if (!lagkv::rope_isa_available(k.isa)) GTEST_SKIP() << lagkv::rope_isa_name(k.isa) << " not available";
    const index_t n = 13, D = k.d.head_dim, stride = D + 1;  // odd stride: rows start misaligned
    std::vector<T> base = random_keys<T>(static_cast<std::size_t>(1 + n * stride), 33u + static_cast<std::uint32_t>(D), 2.0f);
    // Specials in token 1: NaN, +-Inf, -0, the smallest subnormal, and a value that overflows
    // fp16 once rotated (|x0| + |x1| > 65504) -- both kernels must round them the same way.
    const float specials[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity(),
                              -0.0f,
                              smallest_subnormal<T>(),
                              6.0e4f,
                              6.0e4f,
                              std::ldexp(1.0f, -24)};
    for (index_t c = 0; c < std::min<index_t>(D, 8); ++c)
      base[static_cast<std::size_t>(1 + stride + c)] = lagkv::from_float<T>(specials[c]);
    std::vector<std::int64_t> p(static_cast<std::size_t>(n)), q(static_cast<std::size_t>(n));
    std::mt19937 gen(7);
    std::uniform_int_distribution<std::int64_t> pos(-2000, 1000000);
    for (auto& x : p) x = pos(gen);
    for (auto& x : q) x = pos(gen);
    rope_params params;
    params.style = k.style;
    params.rotary_dim = k.d.rotary_dim;
    params.base = 1.0e6;

    std::vector<T> want = base, got = base;
    lagkv::rerotate(kv_view<T>(want.data() + 1, n, D, stride), p.data(), q.data(), n, params, rope_isa::scalar);
    lagkv::rerotate(kv_view<T>(got.data() + 1, n, D, stride), p.data(), q.data(), n, params, k.isa);
    for (std::size_t i = 0; i < got.size(); ++i)
      ASSERT_TRUE(same_bits_or_both_nan(got[i], want[i]))
          << "element " << i << ": " << bits_of(got[i]) << " vs scalar " << bits_of(want[i]);
    ASSERT_NE(bits_of(got[static_cast<std::size_t>(1 + 2 * stride)]), bits_of(base[static_cast<std::size_t>(1 + 2 * stride)]))
        << "nothing was rotated";
  }
};

TEST_P(RopeSimd, BitExactAgainstScalar) {
  lagkv::visit_dtype(GetParam().type, [&](auto tag) { run<decltype(tag)>(); });
}

std::vector<simd_case> simd_cases() {
  // Pair counts around the vector widths: 1, 7, 17, 12, 40, 48, 16, 64, 128 pairs.
  const dims sizes[] = {{2, 2}, {14, 14}, {34, 34}, {80, 24}, {80, 80}, {96, 96}, {128, 32}, {128, 128}, {256, 256}};
  std::vector<simd_case> out;
  for (auto isa : {rope_isa::avx2, rope_isa::avx512})
    for (auto type : {lagkv::dtype::f32, lagkv::dtype::f16, lagkv::dtype::bf16})
      for (auto style : {rope_style::interleaved, rope_style::neox})
        for (const dims& d : sizes) out.push_back({isa, type, style, d});
  return out;
}

std::string name_of(const simd_case& k) {
  return std::string(lagkv::rope_isa_name(k.isa)) + "_" + lagkv::dtype_name(k.type) + "_" + style_tag(k.style) + "_d" +
         std::to_string(k.d.head_dim) + "_r" + std::to_string(k.d.rotary_dim);
}
void PrintTo(const simd_case& k, std::ostream* os) { *os << name_of(k); }

INSTANTIATE_TEST_SUITE_P(Kernels, RopeSimd, ::testing::ValuesIn(simd_cases()),
                         [](const ::testing::TestParamInfo<simd_case>& info) { return name_of(info.param); });

// ---- Definitions and conveniences -------------------------------------------------------------

TEST(Rope, PairingAndAnglesFollowTheDefinition) {
  // head_dim 4, base 10000: theta_0 = 1, theta_1 = 10000^(-1/2) = 0.01; position 3.
  const double a0 = 3.0, a1 = 0.03;
  const std::int64_t pos[] = {3};
  rope_params p;
  p.style = rope_style::neox;  // pairs (0, 2), (1, 3)
  float k[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  lagkv::apply_rope(kv_view<float>(k, 1, 4, 4), pos, 1, p);
  EXPECT_NEAR(k[0], 1 * std::cos(a0) - 3 * std::sin(a0), 1e-6);
  EXPECT_NEAR(k[2], 1 * std::sin(a0) + 3 * std::cos(a0), 1e-6);
  EXPECT_NEAR(k[1], 2 * std::cos(a1) - 4 * std::sin(a1), 1e-6);
  EXPECT_NEAR(k[3], 2 * std::sin(a1) + 4 * std::cos(a1), 1e-6);
  p.style = rope_style::interleaved;  // pairs (0, 1), (2, 3)
  float g[4] = {1.0f, 2.0f, 3.0f, 4.0f};
  lagkv::apply_rope(kv_view<float>(g, 1, 4, 4), pos, 1, p);
  EXPECT_NEAR(g[0], 1 * std::cos(a0) - 2 * std::sin(a0), 1e-6);
  EXPECT_NEAR(g[1], 1 * std::sin(a0) + 2 * std::cos(a0), 1e-6);
  EXPECT_NEAR(g[2], 3 * std::cos(a1) - 4 * std::sin(a1), 1e-6);
  EXPECT_NEAR(g[3], 3 * std::sin(a1) + 4 * std::cos(a1), 1e-6);
}

TEST(Rope, LinearFactorDividesPositionsAndInvFreqOverridesBase) {
  const index_t n = 5, D = 16;
  const std::vector<float> x = random_keys<float>(n * D, 8u);
  const std::int64_t pos[] = {0, 4, 8, 12, 400}, quarter[] = {0, 1, 2, 3, 100};
  rope_params scaled;
  scaled.linear_factor = 4.0;
  std::vector<float> a = x, b = x;
  lagkv::apply_rope(kv_view<float>(a.data(), n, D, D), pos, n, scaled);
  lagkv::apply_rope(kv_view<float>(b.data(), n, D, D), quarter, n, rope_params{});
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5) << i;

  rope_params explicit_freq;
  for (index_t i = 0; i < D / 2; ++i) explicit_freq.inv_freq.push_back(std::pow(10000.0, -2.0 * i / D));
  std::vector<float> c = x;
  lagkv::apply_rope(kv_view<float>(c.data(), n, D, D), quarter, n, explicit_freq);
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_EQ(c[i], b[i]) << i;
}

TEST(Rope, TokensThatDoNotMoveKeepTheirBits) {
  const index_t n = 3, D = 8;
  std::vector<f16> x = random_keys<f16>(n * D, 1u);
  x[1] = lagkv::to_f16(std::numeric_limits<float>::infinity());  // Inf * sin(0) would be NaN
  x[2] = lagkv::to_f16(std::numeric_limits<float>::quiet_NaN());
  const std::vector<f16> before = x;
  const std::int32_t old_pos[] = {41, 7, 9}, new_pos[] = {41, 8, 9};
  lagkv::rerotate(kv_view<f16>(x.data(), n, D, D), old_pos, new_pos, n, rope_params{});
  for (index_t c = 0; c < D; ++c) {
    EXPECT_EQ(x[static_cast<std::size_t>(c)].bits, before[static_cast<std::size_t>(c)].bits) << c;
    EXPECT_EQ(x[static_cast<std::size_t>(2 * D + c)].bits, before[static_cast<std::size_t>(2 * D + c)].bits) << c;
  }
  EXPECT_NE(x[D].bits, before[D].bits);  // the token that moved did rotate (pair 0: 1 rad)
}

TEST(Rope, RerotateByEqualsRerotateWithConstantDelta) {
  const index_t n = 9, D = 64;
  const std::vector<bf16> x = random_keys<bf16>(n * D, 2u);
  std::vector<index_t> old_pos(n);  // a cache's positions and an engine's int32 numbering mix
  std::vector<std::int32_t> new_pos(n);
  for (index_t t = 0; t < n; ++t) {
    old_pos[static_cast<std::size_t>(t)] = 1000 + t;
    new_pos[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(488 + t);
  }
  std::vector<bf16> a = x, b = x;
  lagkv::rerotate_by(kv_view<bf16>(a.data(), n, D, D), -512, rope_params{});
  lagkv::rerotate(kv_view<bf16>(b.data(), n, D, D), old_pos.data(), new_pos.data(), n, rope_params{});
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i].bits, b[i].bits) << i;
}

TEST(Rope, ToContiguousRenumbersAllHeadsOnceAndMatchesFresh) {
  // Three heads of a [S, H, D] cache share one positions array (what an engine holds per layer).
  const index_t S = 12, H = 3, D = 64;
  const std::vector<f16> raw = random_keys<f16>(S * H * D, 6u);
  std::vector<std::int32_t> positions = {0, 1, 2, 3, 9, 10, 15, 16, 17, 30, 31, 40};  // kept after eviction
  std::vector<f16> cache = raw;
  rope_params params;
  params.style = rope_style::interleaved;
  std::vector<kv_view<f16>> heads;
  for (index_t h = 0; h < H; ++h) heads.push_back(lagkv::view_shd(cache.data(), S, H, D, h, S));
  for (const auto& v : heads) lagkv::apply_rope(v, positions.data(), S, params);

  lagkv::rerotate_to_contiguous(heads.data(), H, positions.data(), S, params, /*start=*/100);
  for (index_t t = 0; t < S; ++t) EXPECT_EQ(positions[static_cast<std::size_t>(t)], 100 + t);

  std::vector<f16> fresh = raw;
  for (index_t h = 0; h < H; ++h)
    lagkv::apply_rope(lagkv::view_shd(fresh.data(), S, H, D, h, S), positions.data(), S, params);
  for (std::size_t i = 0; i < cache.size(); ++i) {
    const std::size_t row = i / static_cast<std::size_t>(D), c = i % static_cast<std::size_t>(D);
    const float a = lagkv::to_float(raw[i]), b = lagkv::to_float(raw[row * D + (c ^ 1)]);
    ASSERT_NEAR(lagkv::to_float(cache[i]), lagkv::to_float(fresh[i]), shift_tolerance<f16>(std::hypot(a, b))) << i;
  }
}

TEST(Rope, ToContiguousSingleViewDefaultsToZero) {
  const index_t n = 4, D = 8;
  std::vector<float> x = random_keys<float>(n * D, 3u);
  std::vector<std::uint32_t> positions = {5, 6, 20, 21};
  lagkv::rerotate_to_contiguous(kv_view<float>(x.data(), n, D, D), positions.data(), n, rope_params{});
  EXPECT_EQ(positions, (std::vector<std::uint32_t>{0, 1, 2, 3}));
}

TEST(Rope, ForceScalarSwitchesTheAutomaticKernel) {
  lagkv::rope_force_scalar(true);
  EXPECT_EQ(lagkv::rope_active_isa(), rope_isa::scalar);
  lagkv::rope_force_scalar(false);
  EXPECT_TRUE(lagkv::rope_isa_available(lagkv::rope_active_isa()));
  EXPECT_TRUE(lagkv::rope_isa_available(rope_isa::scalar));
}

// ---- Validation: messages name the parameter and value; nothing is modified --------------------

std::string error_of_rerotate(const rope_params& p, index_t D = 128, index_t n_pos = 4) {
  std::vector<float> x = random_keys<float>(static_cast<std::size_t>(4 * D), 1u);
  const std::vector<float> before = x;
  const std::vector<std::int64_t> a(static_cast<std::size_t>(n_pos), 3), b(static_cast<std::size_t>(n_pos), 5);
  std::string what = "no error";
  try {
    lagkv::rerotate(kv_view<float>(x.data(), 4, D, D), a.data(), b.data(), n_pos, p);
  } catch (const lagkv::error& e) {
    what = e.what();
  }
  EXPECT_TRUE(std::memcmp(x.data(), before.data(), x.size() * sizeof(float)) == 0) << "keys changed by a failed call";
  return what;
}

rope_params with_rotary(index_t rd) {
  rope_params p;
  p.rotary_dim = rd;
  return p;
}

TEST(RopeValidation, RotaryDimOdd) { EXPECT_EQ(error_of_rerotate(with_rotary(7)), "rotary_dim=7: must be even"); }

TEST(RopeValidation, RotaryDimAboveHeadDim) {
  EXPECT_EQ(error_of_rerotate(with_rotary(136)), "rotary_dim=136: must be <= head_dim=128");
}

TEST(RopeValidation, RotaryDimNegative) {
  EXPECT_EQ(error_of_rerotate(with_rotary(-2)), "rotary_dim=-2: must be >= 0 (0 means head_dim)");
}

TEST(RopeValidation, FullRotaryOfOddHeadDim) {
  EXPECT_EQ(error_of_rerotate(rope_params{}, 5), "rotary_dim=0 (head_dim=5): must be even");
}

TEST(RopeValidation, BaseNotPositive) {
  rope_params p;
  p.base = 0.0;
  EXPECT_EQ(error_of_rerotate(p), "base=0: must be finite and > 0");
  p.base = -10000.0;
  EXPECT_EQ(error_of_rerotate(p), "base=-10000: must be finite and > 0");
  p.base = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(error_of_rerotate(p), "base=nan: must be finite and > 0");
}

TEST(RopeValidation, LinearFactorNotPositive) {
  rope_params p;
  p.linear_factor = 0.0;
  EXPECT_EQ(error_of_rerotate(p), "linear_factor=0: must be finite and > 0");
}

TEST(RopeValidation, InvFreqWrongSizeOrNotFinite) {
  rope_params p;
  p.rotary_dim = 32;
  p.inv_freq.assign(15, 1.0);
  EXPECT_EQ(error_of_rerotate(p), "inv_freq.size()=15: must be 0 or rotary_dim/2=16");
  p.inv_freq.assign(16, 1.0);
  p.inv_freq[3] = std::numeric_limits<double>::infinity();
  EXPECT_EQ(error_of_rerotate(p), "inv_freq[3]=inf: must be finite");
}

TEST(RopeValidation, PositionsLengthMismatch) {
  EXPECT_EQ(error_of_rerotate(rope_params{}, 128, 5), "positions: length=5 does not match views[0].tokens()=4");
}

TEST(RopeValidation, NullPositions) {
  std::vector<float> x(8);
  EXPECT_THROW(lagkv::apply_rope(kv_view<float>(x.data(), 1, 8, 8), static_cast<const int*>(nullptr), 1, rope_params{}),
               lagkv::error);
}

TEST(RopeValidation, ViewsWithDifferentHeadDims) {
  std::vector<float> a(4 * 8), b(4 * 6);
  const kv_view<float> views[] = {kv_view<float>(a.data(), 4, 8, 8), kv_view<float>(b.data(), 4, 6, 6)};
  std::int64_t pos[] = {0, 1, 2, 3};
  try {
    lagkv::rerotate_to_contiguous(views, 2, pos, 4, rope_params{}, 7);
    FAIL() << "no error";
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "views[1].head_dim()=6: must match views[0].head_dim()=8");
  }
  EXPECT_EQ(pos[3], 3) << "positions renumbered by a failed call";
}

TEST(RopeValidation, DeltaOverflow) {
  std::vector<float> x(8);
  const std::int64_t from[] = {std::numeric_limits<std::int64_t>::min()}, to[] = {1};
  try {
    lagkv::rerotate(kv_view<float>(x.data(), 1, 8, 8), from, to, 1, rope_params{});
    FAIL() << "no error";
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "token 0: new position 1 - old position -9223372036854775808 overflows int64");
  }
}

TEST(RopeValidation, Uint64PositionBeyondInt64) {
  std::vector<float> x(8);
  const std::uint64_t pos[] = {std::numeric_limits<std::uint64_t>::max()};
  try {
    lagkv::apply_rope(kv_view<float>(x.data(), 1, 8, 8), pos, 1, rope_params{});
    FAIL() << "no error";
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "positions[0]=18446744073709551615: exceeds the int64 range");
  }
}

TEST(RopeValidation, ContiguousNumberingMustFitThePositionType) {
  std::vector<float> x(2 * 8);
  std::int32_t pos[] = {1, 2};
  try {
    lagkv::rerotate_to_contiguous(kv_view<float>(x.data(), 2, 8, 8), pos, 2, rope_params{},
                                  std::numeric_limits<std::int32_t>::max());
    FAIL() << "no error";
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "start=2147483647: positions start..2147483648 do not fit the position type");
  }
  EXPECT_EQ(pos[1], 2);
}

TEST(RopeValidation, UnavailableKernelIsAnErrorNotAFallback) {
  const rope_isa isa = !lagkv::rope_isa_available(rope_isa::avx512) ? rope_isa::avx512
                       : !lagkv::rope_isa_available(rope_isa::avx2) ? rope_isa::avx2
                                                                     : rope_isa::automatic;
  if (isa == rope_isa::automatic) GTEST_SKIP() << "this CPU has every kernel";
  std::vector<float> x(8);
  const std::int64_t pos[] = {1};
  EXPECT_THROW(lagkv::apply_rope(kv_view<float>(x.data(), 1, 8, 8), pos, 1, rope_params{}, isa), lagkv::error);
}

}  // namespace
