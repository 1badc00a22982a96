#pragma once
// The bench binaries' synthetic data: a fixed-seed xorshift stream (reproducible across runs and
// binaries, no <random> distribution whose output differs between standard libraries) and a
// cheap bell-shaped value from it.
#include <cstdint>

/// xorshift64: the next value of the stream `s`.
inline std::uint64_t xorshift(std::uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

/// Sum of 4 uniforms, centred and scaled: cheap, smooth, key-like enough.
inline float gaussianish(std::uint64_t& s) {
  float a = 0.0f;
  for (int i = 0; i < 4; ++i) a += static_cast<float>(xorshift(s) >> 40) * (1.0f / 16777216.0f);
  return (a - 2.0f) * 1.7f;
}
