// q8_0 scoring throughput next to the fp16 path, in bytes of cache read per second, one binary,
// one run (bench/RESULTS.md "q8_0"). Shape: Llama-3-8B-like 8 KV heads x S=32768, head_dim 128,
// lag 128; K and V hold the same values in both dtypes (fp16 rounded from one float source, q8_0
// quantised from it with llama.cpp's rule).
//
//   Stream/<dtype>              sum of every K and V byte (the memory-bandwidth limit)
//   LagKV/<target>/<dtype>      dispatch::lagkv_sequence_scores per head, each target forced
//   L2/<target>/<dtype>         dispatch::l2norm_scores per head (keys only)
//
// Bytes: fp16 2 per value, q8_0 34 per 32 values. After the table the binary prints, per
// target, q8_0 bytes/s over fp16 bytes/s (medians over repetitions when --benchmark_repetitions
// is given) and the same ratio in values per second; the goal is >= 0.8 in bytes/s, i.e. q8_0
// scoring ~1.5x as many values per second as fp16.
#include <benchmark/benchmark.h>

#include "rate_reporter.hpp"
#include "stream_read.hpp"
#include "synthetic.hpp"

#include <lagkv/q8_0.hpp>
#include <lagkv/simd/dispatch.hpp>
#include <lagkv/simd/q8_0_dispatch.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

namespace {

using lagkv::block_q8_0;
using lagkv::f16;
using lagkv::index_t;
using lagkv::simd::target;

constexpr index_t kHeads = 8, kTokens = 32768, kDim = 128, kLag = 128;
constexpr index_t kBlocksPerRow = kDim / lagkv::kQ8BlockValues;


struct dataset {
  std::vector<f16> k16, v16;          // [H, S, D]
  std::vector<block_q8_0> k8, v8;     // [H, S, D/32]
};

const dataset& data() {
  static const dataset ds = [] {
    dataset d;
    const std::size_t n = static_cast<std::size_t>(kHeads * kTokens * kDim);
    std::vector<float> k(n), v(n);
    std::uint64_t s = 0x9e3779b97f4a7c15ull;
    for (std::size_t i = 0; i < n; ++i) {
      const float offset = static_cast<float>(static_cast<index_t>(i) % kDim % 7) - 3.0f;  // per-channel centre
      k[i] = offset + gaussianish(s);
      v[i] = gaussianish(s);
    }
    d.k16.resize(n);
    d.v16.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      d.k16[i] = lagkv::to_f16(k[i]);
      d.v16[i] = lagkv::to_f16(v[i]);
    }
    d.k8.resize(n / 32);
    d.v8.resize(n / 32);
    lagkv::quantize_q8_0(k.data(), static_cast<index_t>(n), d.k8.data());
    lagkv::quantize_q8_0(v.data(), static_cast<index_t>(n), d.v8.data());
    return d;
  }();
  return ds;
}

constexpr std::int64_t kBytes16 = kHeads * kTokens * kDim * 2;
constexpr std::int64_t kBytes8 = kHeads * kTokens * kBlocksPerRow * static_cast<std::int64_t>(sizeof(block_q8_0));

void bm_stream(benchmark::State& st, bool q8) {
  const dataset& ds = data();
  const void* k = q8 ? static_cast<const void*>(ds.k8.data()) : static_cast<const void*>(ds.k16.data());
  const void* v = q8 ? static_cast<const void*>(ds.v8.data()) : static_cast<const void*>(ds.v16.data());
  const auto bytes = static_cast<std::size_t>(q8 ? kBytes8 : kBytes16);
  for (auto _ : st) {
    std::uint64_t s = stream_sum(k, bytes) + stream_sum(v, bytes);
    benchmark::DoNotOptimize(s);
  }
  st.SetBytesProcessed(st.iterations() * 2 * static_cast<std::int64_t>(bytes));
}

void bm_lagkv(benchmark::State& st, target tg, bool q8) {
  const dataset& ds = data();
  lagkv::simd::scoped_target use(tg);
  const index_t chunks = kTokens / kLag - 1;
  std::vector<float> out(static_cast<std::size_t>(chunks * kLag));
  for (auto _ : st) {
    for (index_t h = 0; h < kHeads; ++h) {
      if (q8)
        lagkv::dispatch::lagkv_sequence_scores(lagkv::view_q8_hsd(ds.k8.data(), kHeads, kTokens, kDim, h, kTokens),
                                               lagkv::view_q8_hsd(ds.v8.data(), kHeads, kTokens, kDim, h, kTokens),
                                               kLag, chunks, 1.0, out.data());
      else
        lagkv::dispatch::lagkv_sequence_scores<f16>(lagkv::view_hsd(ds.k16.data(), kHeads, kTokens, kDim, h),
                                                    lagkv::view_hsd(ds.v16.data(), kHeads, kTokens, kDim, h), kLag,
                                                    chunks, 1.0, out.data());
    }
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * (q8 ? kBytes8 : kBytes16));
}

void bm_l2(benchmark::State& st, target tg, bool q8) {
  const dataset& ds = data();
  lagkv::simd::scoped_target use(tg);
  std::vector<float> out(static_cast<std::size_t>(kTokens));
  for (auto _ : st) {
    for (index_t h = 0; h < kHeads; ++h) {
      if (q8)
        lagkv::dispatch::l2norm_scores(lagkv::view_q8_hsd(ds.k8.data(), kHeads, kTokens, kDim, h, kTokens), out.data());
      else
        lagkv::dispatch::l2norm_scores<f16>(lagkv::view_hsd(ds.k16.data(), kHeads, kTokens, kDim, h), out.data());
    }
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(st.iterations() * (q8 ? kBytes8 : kBytes16));
}

/// Console output plus, at the end, the q8_0 / fp16 bytes-per-second ratio of each target.
class ratio_reporter : public rate_reporter {
 public:
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nq8_0 / fp16 bytes per second (goal >= 0.80):\n");
    for (const char* kind : {"LagKV", "L2"})
      for (const char* t : {"scalar", "avx2", "avx512", "neon"}) {
        const std::string a = std::string(kind) + "/" + t + "/q8_0", b = std::string(kind) + "/" + t + "/fp16";
        if (rate_.count(a) && rate_.count(b))  // values/s: q8_0 stores 34 bytes per 32 values, fp16 2 per value
          std::printf("  %-6s %-7s %.2f  (q8_0 %.2f GB/s, fp16 %.2f GB/s; values/s ratio %.2f)\n", kind, t,
                      rate_[a] / rate_[b], rate_[a] / 1e9, rate_[b] / 1e9, (rate_[a] / 1.0625) / (rate_[b] / 2.0));
      }
    if (rate_.count("Stream/q8_0") && rate_.count("Stream/fp16"))
      std::printf("  Stream         %.2f\n", rate_["Stream/q8_0"] / rate_["Stream/fp16"]);
  }
};

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RegisterBenchmark("Stream/fp16", bm_stream, false)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("Stream/q8_0", bm_stream, true)->Unit(benchmark::kMillisecond);
  for (target t : lagkv::simd::available_targets()) {
    const std::string name = lagkv::simd::target_name(t);
    // fp16 and q8_0 back to back per target, so both see the same machine state.
    benchmark::RegisterBenchmark(("LagKV/" + name + "/fp16").c_str(), bm_lagkv, t, false)
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("LagKV/" + name + "/q8_0").c_str(), bm_lagkv, t, true)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("L2/" + name + "/fp16").c_str(), bm_l2, t, false)->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("L2/" + name + "/q8_0").c_str(), bm_l2, t, true)->Unit(benchmark::kMillisecond);
  }
  ratio_reporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
