#!/usr/bin/env bash
# Fresh machine -> dependencies, Release build, and the decode-loop demo.
set -euo pipefail
cd "$(dirname "$0")/.."
LAGKV_SETUP_MINIMAL=1 scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLAGKV_BUILD_TESTS=OFF -DLAGKV_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build --target lagkv-demo
./build/examples/lagkv-demo "$@"
