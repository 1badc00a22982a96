// Decode-step cost of kv_cache: append one token to a layer and let the policy compress, per
// policy, at 1k / 8k / 32k tokens of context. Shape: Llama-3-8B (8 KV heads x head_dim 128,
// 32 query heads), fp16, one layer (multiply by the layer count for a model).
//
// The benchmark's time is the amortised cost per decode token (compressions included); the
// counters split it: `plain_ns` is a step that did not compress, `warm_ns` the same from the
// 5th step after a compression on (a compaction streams the cache through memory and evicts
// the decode path's working set, so the first steps after it run cold) — this is the one that
// must not grow with the cache size: O(head_dim) per head, plus H2O's O(length) accumulation
// of the attention it is handed — `compress_ns` a step that did compress, `every` how many
// steps pass between compressions. Bytes processed = the K/V bytes the
// step appends. Baselines in the same binary: memcpy of one token's K/V rows (the floor of an
// append) and a streaming read of the whole cache (what one attention pass costs in bandwidth).
#include <benchmark/benchmark.h>
#include <lagkv/cache.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using lagkv::index_t;
using T = lagkv::f16;

constexpr index_t kHeads = 8, kQHeads = 32, kDim = 128, kSteps = 4096;

// Cheap deterministic fp16 data (a hash, not a PRNG: 32k x 8 x 128 values per tensor).
std::vector<T> synth(index_t n, std::uint32_t salt) {
  std::vector<T> x(static_cast<std::size_t>(n));
  std::uint32_t h = salt * 2654435761u + 1;
  for (auto& e : x) {
    h ^= h << 13, h ^= h >> 17, h ^= h << 5;
    e = lagkv::to_f16(static_cast<float>(static_cast<std::int32_t>(h % 2001) - 1000) * 0.002f);
  }
  return x;
}

struct workload {
  index_t context;
  std::vector<T> k, v;        // [H, context, D] prefill
  std::vector<T> kt, vt;      // [H, D] per decode token (cycled)
  std::vector<float> sums;    // [Hq, capacity] attention sums, uniform-ish
};

workload make_workload(index_t context, index_t capacity) {
  workload w;
  w.context = context;
  w.k = synth(kHeads * context * kDim, 1);
  w.v = synth(kHeads * context * kDim, 2);
  w.kt = synth(kHeads * 64 * kDim, 3);
  w.vt = synth(kHeads * 64 * kDim, 4);
  w.sums.resize(static_cast<std::size_t>(kQHeads * capacity));
  for (std::size_t i = 0; i < w.sums.size(); ++i) w.sums[i] = 1e-4f * static_cast<float>((i * 7919) % 101);
  return w;
}

lagkv::append_extras attention(workload& w, index_t capacity) {
  lagkv::append_extras x;
  x.attention.q_heads = kQHeads;
  x.attention.prob_sums = w.sums.data();
  x.attention.row_stride = capacity;
  return x;
}

void run_decode(benchmark::State& state, const lagkv::any_policy& policy) {
  const index_t context = state.range(0);
  const index_t capacity = context + kSteps + 128;
  workload w = make_workload(context, capacity);
  lagkv::cache_config cfg;
  cfg.kv_heads = kHeads;
  cfg.head_dim = kDim;
  cfg.capacity = capacity;
  lagkv::kv_cache<T> cache(cfg, policy);
  const lagkv::append_extras x = attention(w, capacity);
  cache.append(0, w.k.data(), w.v.data(), context, x);  // prefill (not timed)
  const index_t before = cache.compressions(0);

  double plain_ns = 0.0, compress_ns = 0.0, warm_ns = 0.0;
  index_t plain_steps = 0, warm_steps = 0, step = 0, since = 1 << 30;
  for (auto _ : state) {
    const index_t c = cache.compressions(0);
    const auto t0 = std::chrono::steady_clock::now();
    const index_t slot = step % 64;
    cache.append(0, lagkv::kv_input<T>{w.kt.data() + slot * kDim, 1, lagkv::kv_layout::hsd(), 64},
                 lagkv::kv_input<T>{w.vt.data() + slot * kDim, 1, lagkv::kv_layout::hsd(), 64}, x);
    const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    if (cache.compressions(0) == c) {
      plain_ns += ns;
      ++plain_steps;
      if (++since > 4) {
        warm_ns += ns;
        ++warm_steps;
      }
    } else {
      compress_ns += ns;
      since = 0;
    }
    ++step;
  }
  const index_t compressions = cache.compressions(0) - before;
  state.counters["plain_ns"] = plain_steps ? plain_ns / static_cast<double>(plain_steps) : 0.0;
  state.counters["warm_ns"] = warm_steps ? warm_ns / static_cast<double>(warm_steps) : 0.0;
  state.counters["compress_ns"] = compressions ? compress_ns / static_cast<double>(compressions) : 0.0;
  state.counters["every"] = compressions ? static_cast<double>(step) / static_cast<double>(compressions) : 0.0;
  state.counters["cache_len"] = static_cast<double>(cache.max_length(0));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * 2 * kHeads * kDim *
                          static_cast<std::int64_t>(sizeof(T)));
}

lagkv::any_policy lagkv_default(index_t) {
  lagkv::policy_spec s;  // the authors' defaults: sink 16, lag 1024, ratio 0.5
  return lagkv::make_policy("lagkv", s);
}
lagkv::any_policy budget(const char* name, index_t context, index_t interval, index_t window) {
  lagkv::policy_spec s;
  s.budget = context;
  s.interval = interval;
  s.window = window;
  s.sink = 4;
  return lagkv::make_policy(name, s);
}

void BM_decode_none(benchmark::State& s) { run_decode(s, lagkv::make_policy("none")); }
void BM_decode_lagkv(benchmark::State& s) { run_decode(s, lagkv_default(s.range(0))); }
void BM_decode_l2norm_chunked(benchmark::State& s) { run_decode(s, lagkv::make_policy("l2norm-chunked")); }
void BM_decode_l2norm_every64(benchmark::State& s) { run_decode(s, budget("l2norm", s.range(0), 64, 64)); }
void BM_decode_h2o(benchmark::State& s) { run_decode(s, budget("h2o", s.range(0), 1, 64)); }
void BM_decode_h2o_every64(benchmark::State& s) { run_decode(s, budget("h2o", s.range(0), 64, 64)); }
void BM_decode_random_every64(benchmark::State& s) { run_decode(s, budget("random", s.range(0), 64, 64)); }
void BM_decode_streaming(benchmark::State& s) {
  lagkv::policy_spec p;
  p.sink = 4;
  p.window = s.range(0) - 4;
  run_decode(s, lagkv::make_policy("streaming", p));
}
void BM_decode_streaming_every64(benchmark::State& s) {
  lagkv::policy_spec p;
  p.sink = 4;
  p.window = s.range(0) - 4;
  p.interval = 64;
  run_decode(s, lagkv::make_policy("streaming", p));
}

// Baselines: the floor of an append, and one streaming read of the cache.
void BM_baseline_token_copy(benchmark::State& state) {
  const auto src = synth(2 * kHeads * kDim, 5);
  std::vector<T> dst(src.size());
  for (auto _ : state) {
    std::memcpy(dst.data(), src.data(), src.size() * sizeof(T));
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * src.size() * sizeof(T)));
}
void BM_baseline_stream_read(benchmark::State& state) {
  const auto cache = synth(2 * kHeads * state.range(0) * kDim, 6);
  for (auto _ : state) {
    std::uint32_t acc = 0;
    for (const T& e : cache) acc += e.bits;
    benchmark::DoNotOptimize(acc);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * cache.size() * sizeof(T)));
}

#define LAGKV_DECODE_BENCH(fn) BENCHMARK(fn)->Arg(1024)->Arg(8192)->Arg(32768)->Iterations(kSteps)->Unit(benchmark::kNanosecond)
LAGKV_DECODE_BENCH(BM_decode_none);
LAGKV_DECODE_BENCH(BM_decode_lagkv);
LAGKV_DECODE_BENCH(BM_decode_l2norm_chunked);
LAGKV_DECODE_BENCH(BM_decode_l2norm_every64);
LAGKV_DECODE_BENCH(BM_decode_h2o);
LAGKV_DECODE_BENCH(BM_decode_h2o_every64);
LAGKV_DECODE_BENCH(BM_decode_random_every64);
LAGKV_DECODE_BENCH(BM_decode_streaming);
LAGKV_DECODE_BENCH(BM_decode_streaming_every64);
BENCHMARK(BM_baseline_token_copy);
BENCHMARK(BM_baseline_stream_read)->Arg(1024)->Arg(8192)->Arg(32768);

}  // namespace

BENCHMARK_MAIN();
