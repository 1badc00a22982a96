#pragma once
// The streaming-read baseline the bench binaries report kernels against: a sum over every byte,
// which the memory system, not arithmetic, limits. One definition, so bench_score's and
// bench_q8_0's "Stream" rows measure the same loop and their ratios compare.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// target("avx2"), not -mavx2: the binaries run-time dispatch, so the rest must stay baseline x86-64.
// Four independent accumulators, so the add chain never holds back the loads.
__attribute__((target("avx2"))) inline std::uint64_t stream_sum(const void* p, std::size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  std::size_t i = 0;
  for (; i + 128 <= bytes; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i)));
    a1 = _mm256_add_epi64(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + i + 96)));
  }
  alignas(32) std::uint64_t out[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out),
                     _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
  std::uint64_t s = out[0] + out[1] + out[2] + out[3];
  for (; i < bytes; ++i) s += c[i];
  return s;
}
#else
// Word-sized loads (memcpy: no alignment or aliasing assumptions) so the compiler's vectoriser,
// not a byte loop's widening adds, sets the pace.
inline std::uint64_t stream_sum(const void* p, std::size_t bytes) {
  const auto* c = static_cast<const unsigned char*>(p);
  std::uint64_t s = 0;
  std::size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, c + i, 8);
    s += w;
  }
  for (; i < bytes; ++i) s += c[i];
  return s;
}
#endif
