// RoPE re-rotation throughput (rope.hpp) per kernel, in bytes of keys per second, next to a
// streaming copy of the same bytes in the same binary (bench/RESULTS.md "RoPE re-rotation",
// docs/positions.md "Cost, measured"). Shape: one Llama-3-8B layer, 8 KV heads x head_dim 128,
// 4096 kept tokens, token-major [S, H, D] (llama.cpp's K cache layout), NeoX pairs, base 500000.
//
//   Memcpy/<dtype>                 memcpy of the keys into a second buffer (the bandwidth limit)
//   Shift/<isa>/<dtype>            rerotate_by per head: one uniform delta (llama.cpp's K-shift)
//   Evicted/<isa>/<dtype>          rerotate of all 8 heads in one call, positions as LagKV leaves
//                                  them (~2 kept tokens per gap: a new delta every ~2 tokens)
//   EvictedPerHead/<isa>/<dtype>   the same, one call per head (per-head position arrays)
//
// Bytes: the keys of the layer, each read and written once (8 MiB in fp16). <isa> is scalar,
// avx2 or avx512 (those this CPU has); after the table the binary prints each kernel's bytes
// per second over the scalar kernel's and over memcpy's (medians when --benchmark_repetitions
// is given).
#include <benchmark/benchmark.h>

#include "rate_reporter.hpp"
#include "synthetic.hpp"

#include <lagkv/rope.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

using lagkv::bf16;
using lagkv::f16;
using lagkv::index_t;

constexpr index_t kHeads = 8, kDim = 128, kKept = 4096;


template <class T>
struct layer {
  std::vector<T> keys;                 // [kKept, kHeads, kDim]
  std::vector<std::int64_t> old_pos;   // what LagKV leaves: sink 16, then ~half of every 2 positions
  std::vector<std::int64_t> new_pos;   // 0 .. kKept-1
};

template <class T>
layer<T>& data() {
  static layer<T> l = [] {
    layer<T> d;
    std::uint64_t s = 0x9e3779b97f4a7c15ull;
    d.keys.resize(static_cast<std::size_t>(kKept * kHeads * kDim));
    for (auto& x : d.keys) x = lagkv::from_float<T>(static_cast<float>(xorshift(s) >> 40) * (1.0f / 8388608.0f) - 1.0f);
    std::int64_t p = 0;
    for (index_t t = 0; t < kKept; ++t) {
      d.old_pos.push_back(p);
      d.new_pos.push_back(t);
      p += t < 16 ? 1 : 1 + static_cast<std::int64_t>(xorshift(s) % 3);  // gaps of 0..2 evicted tokens
    }
    return d;
  }();
  return l;
}

template <class T>
std::vector<lagkv::kv_view<T>> views(layer<T>& l) {
  std::vector<lagkv::kv_view<T>> v;
  for (index_t h = 0; h < kHeads; ++h) v.push_back(lagkv::view_shd(l.keys.data(), kKept, kHeads, kDim, h, kKept));
  return v;
}

lagkv::rope_params llama3() {
  lagkv::rope_params p;
  p.style = lagkv::rope_style::neox;
  p.base = 500000.0;
  return p;
}

std::int64_t layer_bytes(std::size_t elem) { return static_cast<std::int64_t>(kKept * kHeads * kDim) * static_cast<std::int64_t>(elem); }

template <class T>
void bm_memcpy(benchmark::State& st) {
  layer<T>& l = data<T>();
  std::vector<T> dst(l.keys.size());
  for (auto _ : st) {
    std::memcpy(dst.data(), l.keys.data(), l.keys.size() * sizeof(T));
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * layer_bytes(sizeof(T)));
}

// Rotations are applied to the same buffer over and over: they are norm-preserving up to
// rounding, so the data stay in range; the work per call does not depend on the values.
template <class T>
void bm_shift(benchmark::State& st, lagkv::rope_isa isa) {
  layer<T>& l = data<T>();
  const auto v = views(l);
  const auto p = llama3();
  for (auto _ : st) {
    for (const auto& view : v) lagkv::rerotate_by(view, -512, p, isa);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * layer_bytes(sizeof(T)));
}

template <class T>
void bm_evicted(benchmark::State& st, lagkv::rope_isa isa, bool per_head) {
  layer<T>& l = data<T>();
  const auto v = views(l);
  const auto p = llama3();
  for (auto _ : st) {
    if (per_head)
      for (const auto& view : v) lagkv::rerotate(view, l.old_pos.data(), l.new_pos.data(), kKept, p, isa);
    else
      lagkv::rerotate(v.data(), kHeads, l.old_pos.data(), l.new_pos.data(), kKept, p, isa);
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(st.iterations() * layer_bytes(sizeof(T)));
}

/// Console output plus, at the end, every kernel's rate over the scalar kernel's and memcpy's.
class ratio_reporter : public rate_reporter {
 public:
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nGB/s (decimal) and ratios to the scalar kernel and to memcpy of the same bytes:\n");
    for (const char* dt : {"fp32", "fp16", "bf16"}) {
      const std::string copy = std::string("Memcpy/") + dt;
      for (const char* op : {"Shift", "Evicted", "EvictedPerHead"})
        for (const char* isa : {"scalar", "avx2", "avx512"}) {
          const std::string name = std::string(op) + "/" + isa + "/" + dt, base = std::string(op) + "/scalar/" + dt;
          if (!rate_.count(name)) continue;
          std::printf("  %-28s %7.2f GB/s  %6.1fx scalar", name.c_str(), rate_[name] / 1e9,
                      rate_.count(base) ? rate_[name] / rate_[base] : 0.0);
          if (rate_.count(copy)) std::printf("  %.2fx memcpy (%.2f GB/s)", rate_[name] / rate_[copy], rate_[copy] / 1e9);
          std::printf("\n");
        }
    }
  }
};

template <class T>
void register_dtype(const char* dt) {
  benchmark::RegisterBenchmark((std::string("Memcpy/") + dt).c_str(), bm_memcpy<T>)->Unit(benchmark::kMillisecond);
  for (const lagkv::rope_isa isa : {lagkv::rope_isa::scalar, lagkv::rope_isa::avx2, lagkv::rope_isa::avx512}) {
    if (!lagkv::rope_isa_available(isa)) continue;
    const std::string suffix = std::string("/") + lagkv::rope_isa_name(isa) + "/" + dt;
    benchmark::RegisterBenchmark(("Shift" + suffix).c_str(), bm_shift<T>, isa)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("Evicted" + suffix).c_str(), bm_evicted<T>, isa, false)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("EvictedPerHead" + suffix).c_str(), bm_evicted<T>, isa, true)
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_dtype<f16>("fp16");
  register_dtype<bf16>("bf16");
  register_dtype<float>("fp32");
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
