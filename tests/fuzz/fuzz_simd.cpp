// libFuzzer harness: the SIMD scoring kernels (every target this CPU runs) against the scalar
// oracle on fuzzer-chosen data — NaN, Inf, denormals, constant channels, huge and tiny
// magnitudes, every view layout — with the tolerance rules of tests/test_simd.cpp
// (tests/support/simd_fuzz.hpp). A disagreement aborts with a description.
// Longer run: build-fuzz/tests/fuzz/fuzz_simd -max_total_time=900 /tmp/simd-corpus tests/fuzz/corpus/simd
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "support/simd_fuzz.hpp"

namespace {

lagkv_fuzz::simd_stats g_stats;
char g_targets[64] = "";  // copied at start: the exit handler runs after the library's statics are gone

void print_stats() {
  std::fprintf(stderr,
               "fuzz_simd: %llu inputs, %llu kernel calls, %llu scores compared (%llu of them beyond the tolerance "
               "model: NaN pattern and range only) (targets:",
               static_cast<unsigned long long>(g_stats.inputs), static_cast<unsigned long long>(g_stats.calls),
               static_cast<unsigned long long>(g_stats.scores), static_cast<unsigned long long>(g_stats.beyond_model));
  std::fprintf(stderr, "%s); crashes 0, mismatches 0\n", g_targets);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (auto t : lagkv::simd::available_targets()) {
    std::strncat(g_targets, " ", sizeof g_targets - std::strlen(g_targets) - 1);
    std::strncat(g_targets, lagkv::simd::target_name(t), sizeof g_targets - std::strlen(g_targets) - 1);
  }
  std::atexit(print_stats);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    lagkv_fuzz::run_simd_program(data, size, g_stats);
  } catch (const lagkv_fuzz::simd_mismatch& e) {
    std::fprintf(stderr, "fuzz_simd: MISMATCH: %s\n", e.what());
    std::abort();
  }
  return 0;
}
