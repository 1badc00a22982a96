#pragma once
// The SIMD targets a test runs on, as gtest parameters: by name (what this CPU runs) or by enum
// (what this binary carries, skipped where the CPU lacks it).
#include <gtest/gtest.h>
#include <lagkv/simd/dispatch.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace lagkv_test {

/// The targets this CPU runs, best first, by name: a parameter that is also a valid test name.
inline std::vector<std::string> target_names() {
  std::vector<std::string> names;
  for (auto t : lagkv::simd::available_targets()) names.push_back(lagkv::simd::target_name(t));
  return names;
}

/// The target called `name` (an entry of target_names()).
/// \throws std::invalid_argument for any other name (gtest reports it as a failure).
inline lagkv::simd::target target_named(const std::string& name) {
  lagkv::simd::target t{};
  if (!lagkv::simd::parse_target(name.c_str(), &t)) throw std::invalid_argument("unknown SIMD target name: " + name);
  return t;
}

/// Every target compiled into this binary, scalar first, whether this CPU runs it or not: a test
/// on one it lacks skips (LAGKV_REQUIRE_TARGET) rather than vanishing from the list.
inline std::vector<lagkv::simd::target> compiled_targets() {
  using lagkv::simd::target;
  std::vector<target> t{target::scalar};
#if defined(LAGKV_SIMD_HAVE_AVX2)
  t.push_back(target::avx2);
#endif
#if defined(LAGKV_SIMD_HAVE_AVX512)
  t.push_back(target::avx512);
#endif
#if defined(LAGKV_SIMD_HAVE_NEON)
  t.push_back(target::neon);
#endif
  return t;
}

}  // namespace lagkv_test

/// Skips the current test when this CPU cannot run target `t`.
#define LAGKV_REQUIRE_TARGET(t)                                                                            \
  do {                                                                                                     \
    if (!lagkv::simd::is_available(t)) GTEST_SKIP() << lagkv::simd::target_name(t) << " not on this CPU"; \
  } while (false)
