#!/usr/bin/env bash
# Fresh machine -> dependencies, then the whole suite twice: a Release build and one build under
# AddressSanitizer + UndefinedBehaviorSanitizer. Fails on the first failing test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
jobs=$(nproc)

echo "== Release build + tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build -j "$jobs" --output-on-failure --timeout 600

echo "== ASan + UBSan build + tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLAGKV_SANITIZE=ON \
      -DLAGKV_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build-asan -j "$jobs"
ctest --test-dir build-asan -j "$jobs" --output-on-failure --timeout 900

echo "== ThreadSanitizer: the concurrency tests"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLAGKV_TSAN=ON \
      -DLAGKV_BUILD_BENCHMARKS=OFF -DLAGKV_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-tsan -j "$jobs" --target test_concurrency
ctest --test-dir build-tsan -R '^Concurrent' --output-on-failure

echo "== Fuzzers (clang libFuzzer + ASan/UBSan), ${LAGKV_FUZZ_SECONDS:-60} s each"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++-14 -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DLAGKV_BUILD_FUZZERS=ON -DLAGKV_BUILD_TESTS=OFF -DLAGKV_BUILD_BENCHMARKS=OFF -DLAGKV_BUILD_EXAMPLES=OFF \
      -DLAGKV_FUZZ_SECONDS="${LAGKV_FUZZ_SECONDS:-60}" >/dev/null
cmake --build build-fuzz -j "$jobs"
ctest --test-dir build-fuzz -j "$jobs" --output-on-failure
