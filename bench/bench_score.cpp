// Scoring throughput in bytes of K+V read per second, next to a streaming read of the same bytes
// in the same binary (ratios in bench/RESULTS.md come from one run). Shapes: Llama-3-8B-like
// 8 KV heads x S=32768 tokens, head_dim 64/128, lag 128/1024, fp32/fp16/bf16.
//
//   Stream/<dtype>/D/lag        sum of every K and V byte (AVX2 integer adds, 4 accumulators)
//   LagKV/<target>/...          dispatch::lagkv_sequence_scores per head, each target forced
//   Paired/<target>/...         the stream and LagKV alternating in one loop: counters stream_GBps,
//                               kernel_GBps, ratio (robust against other jobs on the machine)
//   InCache/<target>/.../lag128 LagKV on 512 KiB of one head scored over and over (it stays in
//                               L2): the kernel's compute-bound rate. Next to LagKV/...
//                               (from DRAM) it tells compute-bound (the two agree) from
//                               memory-bound (InCache much faster) — bench/RESULTS.md
//   LagKVOracle/...             reference::lagkv_chunk_scores chunk by chunk (1 head: it is slow)
//   LagKVEigen/...              the natural Eigen-expression version (1 head)
//   L2/<target>, L2Stream, L2Eigen, L2Oracle   the same for L2-norm scoring (keys only)
//   Compact/<dtype>, CompactMemcpy             in-place gather (compact.hpp) of half the rows vs memcpy
//   Heads/<threads>, HeadsStream/<threads>      many (layer, head) pairs through the executor
//   Overlap/fmas<W>             the machine, not the library: a sequential read with W FMAs per
//                               64-byte line, from DRAM and in cache, next to the plain read:
//                               how close to the streaming rate any kernel of a given in-cache
//                               speed can get (bench/RESULTS.md "The overlap bound")
#include <benchmark/benchmark.h>

#include "stream_read.hpp"
#include "synthetic.hpp"

#include <Eigen/Core>
#include <lagkv/compact.hpp>
#include <lagkv/executor.hpp>
#include <lagkv/simd/dispatch.hpp>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <ctime>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

using lagkv::bf16;
using lagkv::f16;
using lagkv::index_t;
using lagkv::kv_view;

constexpr index_t kHeads = 8, kTokens = 32768;

// ---- Data: one K and one V buffer [H, S, D] per (dtype, D), made on first use -----------------


template <class T>
struct dataset {
  index_t d = 0;
  std::vector<T> k, v;
};

/// One dataset per (dtype, head_dim), kept for the whole run: with
/// --benchmark_enable_random_interleaving the shapes alternate, and rebuilding would dominate.
template <class T>
dataset<T>& data_for(index_t d) {
  static std::map<index_t, dataset<T>> all;
  dataset<T>& ds = all[d];
  if (ds.d != d) {
    ds.d = d;
    const std::size_t n = static_cast<std::size_t>(kHeads * kTokens * d);
    ds.k.resize(n);
    ds.v.resize(n);
    std::uint64_t s = 0x9e3779b97f4a7c15ull ^ static_cast<std::uint64_t>(d);
    for (std::size_t i = 0; i < n; ++i) {
      const float offset = static_cast<float>(static_cast<index_t>(i) % d % 7) - 3.0f;  // per-channel centre
      ds.k[i] = lagkv::from_float<T>(offset + gaussianish(s));
      ds.v[i] = lagkv::from_float<T>(gaussianish(s));
    }
  }
  return ds;
}

// ---- Streaming read: the limit ------------------------------------------------------------------

template <class T>
void bm_stream(benchmark::State& st, index_t d, bool keys_only) {
  auto& ds = data_for<T>(d);
  const std::size_t bytes = ds.k.size() * sizeof(T);
  for (auto _ : st) {
    std::uint64_t s = stream_sum(ds.k.data(), bytes);
    if (!keys_only) s += stream_sum(ds.v.data(), bytes);
    benchmark::DoNotOptimize(s);
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(bytes * (keys_only ? 1 : 2)));
}

// ---- LagKV scoring ------------------------------------------------------------------------------

template <class T>
kv_view<const T> head_view(const std::vector<T>& x, index_t d, index_t h) {
  return lagkv::view_hsd<const T>(x.data(), kHeads, kTokens, d, h);
}

template <class T>
void bm_lagkv(benchmark::State& st, lagkv::simd::target tg, index_t d, index_t lag) {
  auto& ds = data_for<T>(d);
  lagkv::simd::scoped_target use(tg);
  const index_t chunks = kTokens / lag - 1;
  std::vector<float> out(static_cast<std::size_t>(chunks * lag));
  for (auto _ : st) {
    for (index_t h = 0; h < kHeads; ++h)
      lagkv::dispatch::lagkv_sequence_scores<T>(head_view(ds.k, d, h), head_view(ds.v, d, h), lag, chunks, 1.0, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * 2 * kHeads * kTokens * d * static_cast<std::int64_t>(sizeof(T)));
}

/// The streaming read and the kernel alternating inside one timing loop, each timed with the
/// process CPU clock: both see the same moment of a shared machine (other jobs' memory traffic
/// moves separately-run benchmarks by up to 2x), so `ratio` (kernel rate / stream rate over the
/// same bytes) is the robust figure. Reports stream_GBps, kernel_GBps (decimal) and ratio.
template <class T>
void bm_paired(benchmark::State& st, lagkv::simd::target tg, index_t d, index_t lag) {
  auto& ds = data_for<T>(d);
  lagkv::simd::scoped_target use(tg);
  const index_t chunks = kTokens / lag - 1;
  const std::size_t bytes = ds.k.size() * sizeof(T);
  std::vector<float> out(static_cast<std::size_t>(chunks * lag));
  double stream_s = 0.0, kernel_s = 0.0;
  for (auto _ : st) {
    const std::clock_t c0 = std::clock();
    std::uint64_t sum = stream_sum(ds.k.data(), bytes) + stream_sum(ds.v.data(), bytes);
    benchmark::DoNotOptimize(sum);
    const std::clock_t c1 = std::clock();
    for (index_t h = 0; h < kHeads; ++h)
      lagkv::dispatch::lagkv_sequence_scores<T>(head_view(ds.k, d, h), head_view(ds.v, d, h), lag, chunks, 1.0, out.data());
    benchmark::DoNotOptimize(out.data());
    const std::clock_t c2 = std::clock();
    stream_s += static_cast<double>(c1 - c0) / CLOCKS_PER_SEC;
    kernel_s += static_cast<double>(c2 - c1) / CLOCKS_PER_SEC;
  }
  const double total = static_cast<double>(st.iterations()) * 2.0 * static_cast<double>(bytes) / 1e9;
  st.counters["stream_GBps"] = total / stream_s;
  st.counters["kernel_GBps"] = total / kernel_s;
  st.counters["ratio"] = stream_s / kernel_s;
}

/// The compute-bound rate: 512 KiB of the first head (K + V; at least two chunks), scored again
/// and again, stays in L2 (1 MiB+ per core on current x86), so no DRAM is involved. Bytes count
/// the scored chunks only (the last chunk, a reference only, is left out): a slight understatement,
/// so an InCache rate above the DRAM one means the kernel is not compute-bound from DRAM.
template <class T>
void bm_lagkv_in_cache(benchmark::State& st, lagkv::simd::target tg, index_t d, index_t lag) {
  auto& ds = data_for<T>(d);
  lagkv::simd::scoped_target use(tg);
  const index_t row_bytes = 2 * d * static_cast<index_t>(sizeof(T));  // K + V
  const index_t tokens = std::max<index_t>(2 * lag, (index_t{512} << 10) / row_bytes / lag * lag);
  const index_t chunks = tokens / lag - 1;
  const auto k = head_view(ds.k, d, 0).slice(0, tokens), v = head_view(ds.v, d, 0).slice(0, tokens);
  std::vector<float> out(static_cast<std::size_t>(chunks * lag));
  for (auto _ : st) {
    lagkv::dispatch::lagkv_sequence_scores<T>(k, v, lag, chunks, 1.0, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = static_cast<double>(st.iterations()) * static_cast<double>(chunks * lag * row_bytes);
  st.SetBytesProcessed(static_cast<std::int64_t>(bytes));
  st.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsRate);  // decimal, as Paired's
}

template <class T>
void bm_lagkv_oracle(benchmark::State& st, index_t d, index_t lag) {
  auto& ds = data_for<T>(d);
  const index_t chunks = kTokens / lag - 1;
  std::vector<float> out(static_cast<std::size_t>(lag));
  for (auto _ : st) {
    const auto k = head_view(ds.k, d, 0), v = head_view(ds.v, d, 0);
    for (index_t c = 0; c < chunks; ++c)
      lagkv::reference::lagkv_chunk_scores<T>(k.slice(c * lag, lag), k.slice((c + 1) * lag, lag), v.slice(c * lag, lag),
                                              v.slice((c + 1) * lag, lag), 1.0, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * 2 * kTokens * d * static_cast<std::int64_t>(sizeof(T)));
}

// Eigen's own 16-bit types share the bit layout of lagkv::f16 / bf16.
template <class T>
struct eigen_scalar {
  using type = float;
};
template <>
struct eigen_scalar<f16> {
  using type = Eigen::half;
};
template <>
struct eigen_scalar<bf16> {
  using type = Eigen::bfloat16;
};
static_assert(sizeof(Eigen::half) == 2 && sizeof(Eigen::bfloat16) == 2);

template <class T>
using eigen_rows = Eigen::Map<const Eigen::Matrix<typename eigen_scalar<T>::type, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;

/// "Just use Eigen": the formula as array expressions over a mapped chunk, one temporary per step.
template <class T>
Eigen::ArrayXf eigen_chunk_probs(const T* chunk, const T* ref, index_t lag, index_t d) {
  using E = typename eigen_scalar<T>::type;
  const eigen_rows<T> x(reinterpret_cast<const E*>(chunk), lag, d), r(reinterpret_cast<const E*>(ref), lag, d);
  const Eigen::MatrixXf rf = r.template cast<float>();
  const Eigen::RowVectorXf lo = rf.colwise().minCoeff(), hi = rf.colwise().maxCoeff();
  const Eigen::RowVectorXf range = hi - lo;
  const Eigen::RowVectorXf inv = (range.array() > 0.0f).select(range.array().inverse(), 0.0f);
  const Eigen::MatrixXf y = ((x.template cast<float>().rowwise() - lo).array().rowwise() * inv.array()).matrix();
  const Eigen::VectorXf mean = y.rowwise().mean();
  const Eigen::ArrayXf sd = ((y.colwise() - mean).array().square().rowwise().sum() / static_cast<float>(d - 1)).sqrt();
  const Eigen::ArrayXf e = (sd - sd.maxCoeff()).exp();
  return e / e.sum();
}

template <class T>
void bm_lagkv_eigen(benchmark::State& st, index_t d, index_t lag) {
  auto& ds = data_for<T>(d);
  const index_t chunks = kTokens / lag - 1;
  std::vector<float> out(static_cast<std::size_t>(chunks * lag));
  for (auto _ : st) {
    for (index_t c = 0; c < chunks; ++c) {
      const T* k = ds.k.data() + c * lag * d;
      const T* v = ds.v.data() + c * lag * d;
      const Eigen::ArrayXf s = eigen_chunk_probs<T>(k, k + lag * d, lag, d) + eigen_chunk_probs<T>(v, v + lag * d, lag, d);
      std::copy(s.data(), s.data() + lag, out.data() + c * lag);
    }
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * 2 * kTokens * d * static_cast<std::int64_t>(sizeof(T)));
}

// ---- L2-norm scoring ------------------------------------------------------------------------------

template <class T>
void bm_l2(benchmark::State& st, lagkv::simd::target tg, index_t d) {
  auto& ds = data_for<T>(d);
  lagkv::simd::scoped_target use(tg);
  std::vector<float> out(static_cast<std::size_t>(kTokens));
  for (auto _ : st) {
    for (index_t h = 0; h < kHeads; ++h) lagkv::dispatch::l2norm_scores<T>(head_view(ds.k, d, h), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * kHeads * kTokens * d * static_cast<std::int64_t>(sizeof(T)));
}

template <class T>
void bm_l2_eigen(benchmark::State& st, index_t d) {
  using E = typename eigen_scalar<T>::type;
  auto& ds = data_for<T>(d);
  Eigen::VectorXf out(kTokens);
  for (auto _ : st) {
    for (index_t h = 0; h < kHeads; ++h) {
      const eigen_rows<T> x(reinterpret_cast<const E*>(ds.k.data()) + h * kTokens * d, kTokens, d);
      out = -x.template cast<float>().rowwise().norm();
    }
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * kHeads * kTokens * d * static_cast<std::int64_t>(sizeof(T)));
}

template <class T>
void bm_l2_oracle(benchmark::State& st, index_t d) {
  auto& ds = data_for<T>(d);
  std::vector<float> out(static_cast<std::size_t>(kTokens));
  for (auto _ : st) {
    lagkv::reference::l2norm_scores<T>(head_view(ds.k, d, 0), out.data());
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * kTokens * d * static_cast<std::int64_t>(sizeof(T)));
}

// ---- Compaction: in-place gather of kept rows vs memcpy of the same bytes -----------------------

/// LagKV-shaped kept set: half of every 128-token chunk, pseudo-random, ascending.
std::vector<index_t> kept_rows(index_t tokens) {
  std::vector<index_t> kept;
  std::uint64_t s = 12345;
  for (index_t c = 0; c + 128 <= tokens; c += 128) {
    std::vector<index_t> idx(128);
    for (index_t i = 0; i < 128; ++i) idx[static_cast<std::size_t>(i)] = c + i;
    for (index_t i = 127; i > 0; --i) std::swap(idx[static_cast<std::size_t>(i)], idx[xorshift(s) % static_cast<std::uint64_t>(i + 1)]);
    std::sort(idx.begin(), idx.begin() + 64);
    kept.insert(kept.end(), idx.begin(), idx.begin() + 64);
  }
  return kept;
}

template <class T>
void bm_compact(benchmark::State& st, index_t d) {
  auto& ds = data_for<T>(d);
  const std::vector<index_t> kept = kept_rows(kTokens);
  std::vector<T> cache = ds.k;  // a private copy: compaction writes
  for (auto _ : st) {
    for (index_t h = 0; h < kHeads; ++h) {
      const auto view = lagkv::view_hsd<T>(cache.data(), kHeads, kTokens, d, h);
      lagkv::compact_rows(view, kept.data(), static_cast<index_t>(kept.size()));
    }
    benchmark::DoNotOptimize(cache.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * kHeads * static_cast<std::int64_t>(kept.size()) * d *
                       static_cast<std::int64_t>(sizeof(T)));
}

template <class T>
void bm_compact_memcpy(benchmark::State& st, index_t d) {
  auto& ds = data_for<T>(d);
  const std::size_t bytes = ds.k.size() * sizeof(T) / 2;  // the kept half
  std::vector<unsigned char> dst(bytes);
  for (auto _ : st) {
    std::memcpy(dst.data(), ds.k.data(), bytes);
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(bytes));
}

// ---- Many (layer, head) pairs through the executor ------------------------------------------------

constexpr index_t kLayers = 4, kPairTokens = 8192, kPairDim = 128, kPairLag = 128;

struct pair_data {
  std::vector<f16> k, v;
  pair_data() {
    const std::size_t n = static_cast<std::size_t>(kLayers * kHeads * kPairTokens * kPairDim);
    k.resize(n);
    v.resize(n);
    std::uint64_t s = 777;
    for (std::size_t i = 0; i < n; ++i) {
      k[i] = lagkv::to_f16(gaussianish(s));
      v[i] = lagkv::to_f16(gaussianish(s));
    }
  }
};
pair_data& pairs() {
  static pair_data p;
  return p;
}

void bm_heads(benchmark::State& st, unsigned threads) {
  auto& p = pairs();
  const index_t n = kLayers * kHeads, chunks = kPairTokens / kPairLag - 1;
  std::vector<float> out(static_cast<std::size_t>(n * chunks * kPairLag));
  std::unique_ptr<lagkv::thread_pool> pool = threads > 1 ? std::make_unique<lagkv::thread_pool>(threads) : nullptr;
  auto body = [&](index_t i) {
    const auto k = lagkv::view_hsd<const f16>(p.k.data(), n, kPairTokens, kPairDim, i);
    const auto v = lagkv::view_hsd<const f16>(p.v.data(), n, kPairTokens, kPairDim, i);
    lagkv::dispatch::lagkv_sequence_scores<f16>(k, v, kPairLag, chunks, 1.0, out.data() + i * chunks * kPairLag);
  };
  for (auto _ : st) {
    if (pool)
      lagkv::parallel_for(*pool, n, body);
    else
      lagkv::parallel_for(lagkv::serial_executor{}, n, body);
    benchmark::DoNotOptimize(out.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(p.k.size() * 2 * sizeof(f16)));
}

void bm_heads_stream(benchmark::State& st, unsigned threads) {
  auto& p = pairs();
  const index_t n = kLayers * kHeads;
  const std::size_t head_bytes = static_cast<std::size_t>(kPairTokens * kPairDim) * sizeof(f16);
  std::unique_ptr<lagkv::thread_pool> pool = threads > 1 ? std::make_unique<lagkv::thread_pool>(threads) : nullptr;
  std::vector<std::uint64_t> sums(static_cast<std::size_t>(n));
  auto body = [&](index_t i) {
    sums[static_cast<std::size_t>(i)] = stream_sum(p.k.data() + i * kPairTokens * kPairDim, head_bytes) +
                                        stream_sum(p.v.data() + i * kPairTokens * kPairDim, head_bytes);
  };
  for (auto _ : st) {
    if (pool)
      lagkv::parallel_for(*pool, n, body);
    else
      lagkv::parallel_for(lagkv::serial_executor{}, n, body);
    benchmark::DoNotOptimize(sums.data());
  }
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(p.k.size() * 2 * sizeof(f16)));
}

// ---- The overlap bound: the machine, not the library ---------------------------------------------

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/// A sequential read whose every 64-byte line feeds W FMAs (8 independent chains: two FMA pipes
/// with latency 4 stay busy): the ideal access pattern for a kernel that costs W/2 cycles a line
/// in cache. noipa: the in-cache loop calls it on the same bytes again and again, which a pure
/// function would let the compiler fold into one call.
template <int W>
__attribute__((target("avx2,fma"), noipa)) float read_with_fmas(const unsigned char* p, std::size_t bytes) {
  __m256 acc[8];
  for (auto& a : acc) a = _mm256_setzero_ps();
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  const __m256 m = _mm256_set1_ps(0.999f);
  for (std::size_t i = 0; i + 64 <= bytes; i += 64) {
    const __m256 x = _mm256_loadu_ps(reinterpret_cast<const float*>(p + i));
    const __m256 y = _mm256_loadu_ps(reinterpret_cast<const float*>(p + i + 32));
    s0 = _mm256_add_ps(s0, x);
    s1 = _mm256_add_ps(s1, y);
#pragma GCC unroll 64
    for (int k = 0; k < W; ++k) acc[k % 8] = _mm256_fmadd_ps(acc[k % 8], m, k % 2 ? y : x);
  }
  __m256 t = _mm256_add_ps(s0, s1);
  for (const auto& a : acc) t = _mm256_add_ps(t, a);
  alignas(32) float o[8];
  _mm256_store_ps(o, t);
  return o[0] + o[7];
}

/// The fp32 D64 K and V buffers (128 MiB) read three ways in one timing loop, each timed with
/// the process CPU clock as in Paired: the plain streaming read, read_with_fmas<W> over them
/// (from DRAM), and read_with_fmas<W> over their first 64 KiB again and again to the same byte
/// count (in cache). dram_vs_stream next to in_cache_vs_stream is the bound: a kernel that runs
/// at in_cache_vs_stream of the streaming rate in cache reaches at most about dram_vs_stream
/// from DRAM on this machine, however its reads are arranged.
template <int W>
void bm_overlap(benchmark::State& st) {
  auto& ds = data_for<float>(64);
  const std::size_t bytes = ds.k.size() * sizeof(float), hot = std::size_t{64} << 10;
  const auto* k = reinterpret_cast<const unsigned char*>(ds.k.data());
  const auto* v = reinterpret_cast<const unsigned char*>(ds.v.data());
  double stream_s = 0.0, dram_s = 0.0, cache_s = 0.0;
  for (auto _ : st) {
    const std::clock_t c0 = std::clock();
    std::uint64_t sum = stream_sum(k, bytes) + stream_sum(v, bytes);
    benchmark::DoNotOptimize(sum);
    const std::clock_t c1 = std::clock();
    float f = read_with_fmas<W>(k, bytes) + read_with_fmas<W>(v, bytes);
    benchmark::DoNotOptimize(f);
    const std::clock_t c2 = std::clock();
    for (std::size_t done = 0; done < 2 * bytes; done += hot) f += read_with_fmas<W>(k, hot);
    benchmark::DoNotOptimize(f);
    const std::clock_t c3 = std::clock();
    stream_s += static_cast<double>(c1 - c0) / CLOCKS_PER_SEC;
    dram_s += static_cast<double>(c2 - c1) / CLOCKS_PER_SEC;
    cache_s += static_cast<double>(c3 - c2) / CLOCKS_PER_SEC;
  }
  const double total = static_cast<double>(st.iterations()) * 2.0 * static_cast<double>(bytes) / 1e9;
  st.counters["stream_GBps"] = total / stream_s;
  st.counters["dram_GBps"] = total / dram_s;
  st.counters["in_cache_GBps"] = total / cache_s;
  st.counters["in_cache_vs_stream"] = stream_s / cache_s;
  st.counters["dram_vs_stream"] = stream_s / dram_s;
}

void register_overlap() {
  benchmark::RegisterBenchmark("Overlap/fmas0", bm_overlap<0>);
  benchmark::RegisterBenchmark("Overlap/fmas8", bm_overlap<8>);
  benchmark::RegisterBenchmark("Overlap/fmas16", bm_overlap<16>);
  benchmark::RegisterBenchmark("Overlap/fmas20", bm_overlap<20>);
  benchmark::RegisterBenchmark("Overlap/fmas24", bm_overlap<24>);
  benchmark::RegisterBenchmark("Overlap/fmas32", bm_overlap<32>);
}
#else
void register_overlap() {}
#endif

// ---- Registration -----------------------------------------------------------------------------------

template <class T>
void register_dtype() {
  const std::string ty = lagkv::dtype_name(lagkv::dtype_traits<T>::tag);
  for (index_t d : {64, 128}) {
    for (index_t lag : {128, 1024}) {
      const std::string shape = ty + "/D" + std::to_string(d) + "/lag" + std::to_string(lag);
      benchmark::RegisterBenchmark(("Stream/" + shape).c_str(), [d](benchmark::State& st) { bm_stream<T>(st, d, false); });
      for (lagkv::simd::target tg : lagkv::simd::available_targets())
        benchmark::RegisterBenchmark(("LagKV/" + std::string(lagkv::simd::target_name(tg)) + "/" + shape).c_str(),
                                     [tg, d, lag](benchmark::State& st) { bm_lagkv<T>(st, tg, d, lag); });
      for (lagkv::simd::target tg : lagkv::simd::available_targets())
        if (tg != lagkv::simd::target::scalar && lag == 128)  // lag 1024: two chunks no longer fit L2
          benchmark::RegisterBenchmark(("InCache/" + std::string(lagkv::simd::target_name(tg)) + "/" + shape).c_str(),
                                       [tg, d, lag](benchmark::State& st) { bm_lagkv_in_cache<T>(st, tg, d, lag); });
      for (lagkv::simd::target tg : lagkv::simd::available_targets())
        if (tg != lagkv::simd::target::scalar)
          benchmark::RegisterBenchmark(("Paired/" + std::string(lagkv::simd::target_name(tg)) + "/" + shape).c_str(),
                                       [tg, d, lag](benchmark::State& st) { bm_paired<T>(st, tg, d, lag); });
      benchmark::RegisterBenchmark(("LagKVEigen/" + shape).c_str(), [d, lag](benchmark::State& st) { bm_lagkv_eigen<T>(st, d, lag); });
      benchmark::RegisterBenchmark(("LagKVOracle/" + shape).c_str(), [d, lag](benchmark::State& st) { bm_lagkv_oracle<T>(st, d, lag); });
    }
    const std::string shape = ty + "/D" + std::to_string(d);
    benchmark::RegisterBenchmark(("L2Stream/" + shape).c_str(), [d](benchmark::State& st) { bm_stream<T>(st, d, true); });
    for (lagkv::simd::target tg : lagkv::simd::available_targets())
      benchmark::RegisterBenchmark(("L2/" + std::string(lagkv::simd::target_name(tg)) + "/" + shape).c_str(),
                                   [tg, d](benchmark::State& st) { bm_l2<T>(st, tg, d); });
    benchmark::RegisterBenchmark(("L2Eigen/" + shape).c_str(), [d](benchmark::State& st) { bm_l2_eigen<T>(st, d); });
    benchmark::RegisterBenchmark(("L2Oracle/" + shape).c_str(), [d](benchmark::State& st) { bm_l2_oracle<T>(st, d); });
    benchmark::RegisterBenchmark(("Compact/" + shape).c_str(), [d](benchmark::State& st) { bm_compact<T>(st, d); });
    benchmark::RegisterBenchmark(("CompactMemcpy/" + shape).c_str(), [d](benchmark::State& st) { bm_compact_memcpy<T>(st, d); });
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_dtype<float>();
  register_dtype<f16>();
  register_dtype<bf16>();
  register_overlap();
  for (unsigned threads : {1u, 2u}) {
    benchmark::RegisterBenchmark(("HeadsStream/threads" + std::to_string(threads)).c_str(),
                                 [threads](benchmark::State& st) { bm_heads_stream(st, threads); })
        ->UseRealTime();
    benchmark::RegisterBenchmark(("Heads/threads" + std::to_string(threads)).c_str(),
                                 [threads](benchmark::State& st) { bm_heads(st, threads); })
        ->UseRealTime();
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
