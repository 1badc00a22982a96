// libFuzzer harness: the KV cache against a plain model (tests/support/cache_fuzz.hpp). Each
// input is a configuration (valid or not) plus up to 64 operations; after every operation the
// cache must equal the model, stay inside its memory and, when the operation threw, be
// byte-identical to before. Any difference aborts with a description (a crash to libFuzzer).
//
// Bounded run: ctest in build-fuzz (LAGKV_FUZZ_SECONDS). Long run, e.g. 15 minutes (the figures
// in docs/reliability.md):
//   mkdir -p /tmp/cache-corpus
//   build-fuzz/tests/fuzz/fuzz_cache -max_total_time=900 -rss_limit_mb=2048 -timeout=10 \
//       -print_final_stats=1 /tmp/cache-corpus tests/fuzz/corpus/cache
// (or -runs=N). At a normal exit it prints the totals:
//   fuzz_cache: 55150 inputs, 2309852 cache operations (473506 rejected as predicted, 8053 of them
//   constructions), 817514 heads compressed, 2067678 full state checks; crashes 0, mismatches 0
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "support/cache_fuzz.hpp"

namespace {

lagkv_fuzz::fuzz_stats g_stats;

void print_stats() {
  const auto& s = g_stats;
  std::fprintf(stderr,
               "fuzz_cache: %llu inputs, %llu cache operations (%llu rejected as predicted, %llu of them "
               "constructions), %llu heads compressed, %llu full state checks; crashes 0, mismatches 0\n",
               static_cast<unsigned long long>(s.inputs), static_cast<unsigned long long>(s.ops),
               static_cast<unsigned long long>(s.ops_rejected), static_cast<unsigned long long>(s.configs_rejected),
               static_cast<unsigned long long>(s.compress_events), static_cast<unsigned long long>(s.checks));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::atexit(print_stats);  // libFuzzer exits normally after -runs / -max_total_time; a crash never gets here
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    lagkv_fuzz::run_cache_program(data, size, g_stats);
  } catch (const lagkv_fuzz::mismatch& e) {
    std::fprintf(stderr, "fuzz_cache: MISMATCH: %s\n", e.what());
    std::abort();
  }
  return 0;
}
