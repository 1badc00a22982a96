#pragma once
/// \file dtype.hpp
/// \brief 16-bit storage types (IEEE binary16 and bfloat16) and their exact scalar conversions.
///
/// `f16` and `bf16` are trivially copyable wrappers of the raw bits, so a cache of them is a
/// plain array an engine can hand to its own kernels. All maths in the library happens in float
/// (or wider); these conversions are the reference every SIMD conversion must match bit for bit:
///  - narrowing rounds to nearest, ties to even; overflow gives +-Inf; denormals are produced
///    and read exactly (no flush to zero);
///  - NaN stays NaN with its sign and the top payload bits; like every hardware converter
///    (F16C, AVX512-BF16, NEON) a signalling NaN comes out quiet.

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace lagkv {

/// IEEE 754 binary16 storage.
struct f16 {
  std::uint16_t bits;
};
/// bfloat16 storage: the top half of an IEEE binary32.
struct bf16 {
  std::uint16_t bits;
};

static_assert(sizeof(f16) == 2 && std::is_trivially_copyable_v<f16>);
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>);

/// Runtime tag of a storage type (npy I/O, the type-erased wrappers, the CLI).
enum class dtype : std::uint8_t { f32, f16, bf16 };

inline const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f32: return "fp32";
    case dtype::f16: return "fp16";
    case dtype::bf16: return "bf16";
  }
  return "?";
}

namespace detail {
inline std::uint32_t float_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
}  // namespace detail

/// Exact widening of binary16 to binary32.
inline float to_float(f16 h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t exp = (h.bits >> 10) & 0x1fu;
  std::uint32_t mant = h.bits & 0x3ffu;
  if (exp == 0x1f) {  // Inf or NaN; NaN is quieted as hardware does.
    const std::uint32_t quiet = mant ? 0x00400000u : 0u;
    return detail::bits_float(sign | 0x7f800000u | quiet | (mant << 13));
  }
  if (exp == 0) {
    if (mant == 0) return detail::bits_float(sign);
    // Denormal: renormalise so the leading one becomes implicit.
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400u) == 0);
    mant &= 0x3ffu;
    return detail::bits_float(sign | static_cast<std::uint32_t>(127 - 15 - e) << 23 | mant << 13);
  }
  return detail::bits_float(sign | (exp + 112) << 23 | mant << 13);
}

/// binary32 -> binary16, round to nearest even.
inline f16 to_f16(float x) {
  const std::uint32_t u = detail::float_bits(x);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet.
    return f16{static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
  }
  if (abs >= 0x477ff000u) {  // >= 65520 rounds to Inf (65504 is the largest finite).
    return f16{static_cast<std::uint16_t>(sign | 0x7c00u)};
  }
  if (abs < 0x38800000u) {  // below 2^-14: denormal or zero in binary16.
    if (abs < 0x33000000u) return f16{sign};  // < 2^-25: rounds to zero (2^-25 ties to even 0)
    const std::uint32_t exp = abs >> 23;
    const std::uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126 - exp;  // 14..24 -> value = mant >> shift in 2^-24 units
    std::uint32_t half = mant >> shift;
    const std::uint32_t rest = mant & ((1u << shift) - 1);
    const std::uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return f16{static_cast<std::uint16_t>(sign | half)};
  }
  // Normal: rebias, then round the 13 dropped bits; a carry into the exponent is correct.
  std::uint32_t h = ((abs >> 13) - (112u << 10));
  const std::uint32_t rest = abs & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return f16{static_cast<std::uint16_t>(sign | h)};
}

/// Exact widening of bfloat16 to binary32 (bit shift; signalling NaNs stay as stored).
inline float to_float(bf16 b) { return detail::bits_float(static_cast<std::uint32_t>(b.bits) << 16); }

/// binary32 -> bfloat16, round to nearest even.
inline bf16 to_bf16(float x) {
  const std::uint32_t u = detail::float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x40u)};
  const std::uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<std::uint16_t>(rounded >> 16)};
}

inline float to_float(float x) { return x; }

/// \brief Compile-time facts about a storage type; `T` is float, f16 or bf16.
template <class T>
struct dtype_traits;
template <>
struct dtype_traits<float> {
  static constexpr dtype tag = dtype::f32;
  static float from_float(float x) { return x; }
};
template <>
struct dtype_traits<f16> {
  static constexpr dtype tag = dtype::f16;
  static f16 from_float(float x) { return to_f16(x); }
};
template <>
struct dtype_traits<bf16> {
  static constexpr dtype tag = dtype::bf16;
  static bf16 from_float(float x) { return to_bf16(x); }
};

/// True for the storage types the library supports.
template <class T>
inline constexpr bool is_storage_type_v =
    std::is_same_v<T, float> || std::is_same_v<T, f16> || std::is_same_v<T, bf16>;

/// Converts a float to storage type `T` with the reference rounding.
template <class T>
inline T from_float(float x) {
  return dtype_traits<T>::from_float(x);
}

/// Calls `fn(T{})` with the storage type matching a runtime tag (CLI, npy, type-erased paths).
template <class Fn>
decltype(auto) visit_dtype(dtype t, Fn&& fn) {
  switch (t) {
    case dtype::f16: return fn(f16{});
    case dtype::bf16: return fn(bf16{});
    case dtype::f32: break;
  }
  return fn(float{});
}

}  // namespace lagkv
