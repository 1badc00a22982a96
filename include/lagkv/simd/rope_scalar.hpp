#pragma once
/// \file simd/rope_scalar.hpp
/// \brief Scalar RoPE row kernels: the oracle every vector kernel in simd/rope_x86.hpp matches
/// bit for bit, and the path for CPUs without AVX2/FMA and rows whose channels are strided.
///
/// One pair (x0, x1) rotated by the angle whose rounded fp32 cosine and sine are (c, s):
///   y0 = fma(x0, c, x1 * -s)      y1 = fma(x1, c, x0 * s)
/// The product on the right is rounded, the fma rounds once more. Written this way (rather than
/// `x0*c - x1*s`) the result cannot depend on whether the compiler contracts a multiply-add, so
/// the vector kernels, which issue exactly one mul and one fmadd per element, agree to the bit.

#include <cmath>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"

namespace lagkv {
namespace detail {

/// The rotation of one pair; see the file comment for why it is spelled with fma.
inline void rope_rotate_pair(float x0, float x1, float c, float s, float& y0, float& y1) {
  y0 = std::fma(x0, c, x1 * -s);
  y1 = std::fma(x1, c, x0 * s);
}

/// NeoX / split halves: pairs (lo[i*cs], hi[i*cs]) for i < n; a row passes lo = channel 0 and
/// hi = channel rotary_dim/2. Channels past the rotary ones are never read or written.
template <class T>
void rope_pairs_neox_scalar(T* lo, T* hi, index_t cs, const float* cos_i, const float* sin_i, index_t n) {
  for (index_t i = 0; i < n; ++i) {
    T& a = lo[i * cs];
    T& b = hi[i * cs];
    float y0, y1;
    rope_rotate_pair(to_float(a), to_float(b), cos_i[i], sin_i[i], y0, y1);
    a = from_float<T>(y0);
    b = from_float<T>(y1);
  }
}

/// Interleaved / GPT-J: pair i is channels (2i, 2i + 1) of `row`, for i < half.
template <class T>
void rope_pairs_interleaved_scalar(T* row, index_t cs, const float* cos_i, const float* sin_i, index_t half) {
  for (index_t i = 0; i < half; ++i) {
    T& a = row[(2 * i) * cs];
    T& b = row[(2 * i + 1) * cs];
    float y0, y1;
    rope_rotate_pair(to_float(a), to_float(b), cos_i[i], sin_i[i], y0, y1);
    a = from_float<T>(y0);
    b = from_float<T>(y1);
  }
}

}  // namespace detail
}  // namespace lagkv
