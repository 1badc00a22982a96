#!/usr/bin/env bash
# Installs what building and testing lagkv needs on Debian, when it is missing.
# As root: apt-get installs it. Otherwise: prints the exact command to run and fails.
set -euo pipefail

# package : a file or command that proves it is installed
required=(
  "cmake:/usr/bin/cmake"
  "ninja-build:/usr/bin/ninja"
  "g++:/usr/bin/g++"
  "libeigen3-dev:/usr/include/eigen3/Eigen/Core"
  "googletest:/usr/src/googletest/CMakeLists.txt"
  "libgtest-dev:/usr/include/gtest/gtest.h"
  "libgmock-dev:/usr/include/gmock/gmock.h"
  "libbenchmark-dev:/usr/include/benchmark/benchmark.h"
  "ccache:/usr/bin/ccache"
)
# Used by the test suite when present: NEON cross-check under qemu, fuzzers (clang + libFuzzer).
if [[ "${LAGKV_SETUP_MINIMAL:-0}" != 1 ]]; then
  required+=(
    "g++-aarch64-linux-gnu:/usr/bin/aarch64-linux-gnu-g++"
    "qemu-user:/usr/bin/qemu-aarch64"
    "clang-14:/usr/bin/clang++-14"
    "libclang-rt-14-dev:/usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a"
  )
fi

missing=()
for entry in "${required[@]}"; do
  pkg=${entry%%:*} path=${entry#*:}
  [[ -e "$path" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  echo "lagkv: missing packages. Run as root:" >&2
  echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "lagkv: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
