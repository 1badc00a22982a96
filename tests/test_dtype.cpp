// Exhaustive checks of the 16-bit conversions: every one of the 65,536 patterns of each type.
#include <gtest/gtest.h>
#include <lagkv/dtype.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>

namespace {

std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

// Value of a binary16 pattern computed independently (ldexp), for finite patterns.
double f16_value(std::uint16_t b) {
  const int sign = b >> 15, exp = (b >> 10) & 0x1f, mant = b & 0x3ff;
  const double mag = exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25);
  return sign ? -mag : mag;
}

TEST(F16, WideningIsExactForAllPatterns) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = lagkv::f16{static_cast<std::uint16_t>(b)};
    const float x = lagkv::to_float(h);
    const int exp = (b >> 10) & 0x1f;
    if (exp == 0x1f && (b & 0x3ff)) {
      ASSERT_TRUE(std::isnan(x)) << b;
      ASSERT_EQ(bits_of(x) >> 31, b >> 15) << "NaN sign kept " << b;
      ASSERT_EQ((bits_of(x) >> 13) & 0x1ff, b & 0x1ff) << "NaN payload kept " << b;
      ASSERT_TRUE(bits_of(x) & 0x400000u) << "NaN comes out quiet " << b;
    } else if (exp == 0x1f) {
      ASSERT_TRUE(std::isinf(x)) << b;
      ASSERT_EQ(std::signbit(x), (b >> 15) != 0);
    } else {
      ASSERT_EQ(static_cast<double>(x), f16_value(static_cast<std::uint16_t>(b))) << b;
      ASSERT_EQ(std::signbit(x), (b >> 15) != 0) << b;
    }
  }
}

TEST(F16, RoundTripIsIdentityForAllNonSignallingPatterns) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto h = lagkv::f16{static_cast<std::uint16_t>(b)};
    const bool snan = ((b >> 10) & 0x1f) == 0x1f && (b & 0x3ff) && !(b & 0x200);
    const std::uint16_t expect = static_cast<std::uint16_t>(snan ? b | 0x200 : b);
    ASSERT_EQ(lagkv::to_f16(lagkv::to_float(h)).bits, expect) << b;
  }
}

TEST(F16, NarrowingRoundsToNearestEvenAtEveryMidpoint) {
  // For each pair of adjacent finite positive patterns, probe the midpoint and its neighbours.
  for (std::uint32_t b = 0; b < 0x7bff; ++b) {
    const double lo = f16_value(static_cast<std::uint16_t>(b)), hi = f16_value(static_cast<std::uint16_t>(b + 1));
    const double mid = (lo + hi) / 2;  // exact in double; representable in float too
    const float fmid = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(fmid), mid);
    const std::uint16_t even = (b & 1) ? static_cast<std::uint16_t>(b + 1) : static_cast<std::uint16_t>(b);
    ASSERT_EQ(lagkv::to_f16(fmid).bits, even) << b;
    ASSERT_EQ(lagkv::to_f16(std::nextafter(fmid, 0.0f)).bits, b) << b;
    ASSERT_EQ(lagkv::to_f16(std::nextafter(fmid, INFINITY)).bits, b + 1) << b;
    ASSERT_EQ(lagkv::to_f16(-fmid).bits, even | 0x8000) << b;
  }
}

TEST(F16, OverflowUnderflowAndSpecials) {
  EXPECT_EQ(lagkv::to_f16(65504.0f).bits, 0x7bff);
  EXPECT_EQ(lagkv::to_f16(65519.99f).bits, 0x7bff);
  EXPECT_EQ(lagkv::to_f16(65520.0f).bits, 0x7c00);  // the tie rounds to even = Inf
  EXPECT_EQ(lagkv::to_f16(1e30f).bits, 0x7c00);
  EXPECT_EQ(lagkv::to_f16(-INFINITY).bits, 0xfc00);
  EXPECT_EQ(lagkv::to_f16(std::ldexp(1.0f, -25)).bits, 0x0000);  // tie between 0 and 2^-24 -> 0
  EXPECT_EQ(lagkv::to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)).bits, 0x0001);
  EXPECT_EQ(lagkv::to_f16(1e-30f).bits, 0x0000);
  EXPECT_EQ(lagkv::to_f16(-0.0f).bits, 0x8000);
  EXPECT_EQ(lagkv::to_f16(std::numeric_limits<float>::denorm_min()).bits, 0x0000);
  EXPECT_TRUE(std::isnan(lagkv::to_float(lagkv::to_f16(NAN))));
}

TEST(F16, RandomFloatsMatchIndependentRounding) {
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-30, 16), sign(0, 1);
  for (int i = 0; i < 200000; ++i) {
    const float x = (sign(rng) ? -1.0f : 1.0f) * std::ldexp(mantissa(rng), exponent(rng));
    const auto h = lagkv::to_f16(x);
    if (((h.bits >> 10) & 0x1f) == 0x1f) {
      ASSERT_GE(std::fabs(x), 65520.0f);
      continue;
    }
    // The chosen pattern is nearest: no neighbour is strictly closer.
    const double v = f16_value(h.bits), err = std::fabs(v - x);
    const std::uint16_t mag = h.bits & 0x7fff;
    for (int step : {-1, 1}) {
      const int nb = mag + step;
      if (nb < 0 || nb > 0x7bff) continue;
      const double nv = f16_value(static_cast<std::uint16_t>(nb | (h.bits & 0x8000)));
      ASSERT_LE(err, std::fabs(nv - x)) << x;
    }
  }
}

TEST(Bf16, WideningIsAShiftForAllPatterns) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float x = lagkv::to_float(lagkv::bf16{static_cast<std::uint16_t>(b)});
    ASSERT_EQ(bits_of(x), b << 16) << b;
  }
}

TEST(Bf16, RoundTripIsIdentityForAllNonSignallingPatterns) {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const bool nan = ((b >> 7) & 0xff) == 0xff && (b & 0x7f);
    const std::uint16_t expect = static_cast<std::uint16_t>(nan ? b | 0x40 : b);
    ASSERT_EQ(lagkv::to_bf16(lagkv::to_float(lagkv::bf16{static_cast<std::uint16_t>(b)})).bits, expect) << b;
  }
}

TEST(Bf16, NarrowingRoundsToNearestEvenAtEveryMidpoint) {
  for (std::uint32_t b = 0; b < 0x7f7f; ++b) {
    const std::uint32_t mid = (b << 16) | 0x8000u;  // exactly halfway to b + 1
    float x;
    std::memcpy(&x, &mid, 4);
    const std::uint16_t even = (b & 1) ? static_cast<std::uint16_t>(b + 1) : static_cast<std::uint16_t>(b);
    ASSERT_EQ(lagkv::to_bf16(x).bits, even) << b;
    ASSERT_EQ(lagkv::to_bf16(std::nextafter(x, 0.0f)).bits, b) << b;
    ASSERT_EQ(lagkv::to_bf16(std::nextafter(x, INFINITY)).bits, b + 1) << b;
  }
  EXPECT_EQ(lagkv::to_bf16(std::numeric_limits<float>::max()).bits, 0x7f80);  // rounds up to Inf
  EXPECT_EQ(lagkv::to_bf16(std::numeric_limits<float>::denorm_min()).bits, 0x0000);
  EXPECT_EQ(lagkv::to_bf16(-INFINITY).bits, 0xff80);
}

TEST(Dtype, VisitAndTraits) {
  EXPECT_STREQ(lagkv::dtype_name(lagkv::dtype::bf16), "bf16");
  EXPECT_EQ(lagkv::visit_dtype(lagkv::dtype::f16, [](auto t) { return sizeof(t); }), 2u);
  EXPECT_EQ(lagkv::visit_dtype(lagkv::dtype::f32, [](auto t) { return sizeof(t); }), 4u);
  EXPECT_EQ(lagkv::from_float<lagkv::bf16>(1.0f).bits, 0x3f80);
}

}  // namespace
