// Concurrency: what the library promises about threads, checked for equality with a
// single-threaded replay — and, in the ThreadSanitizer build (-DLAGKV_TSAN=ON), for races:
//  - different layers of one cache appended to, committed, compressed, cleared and read from
//    different threads, on one shared paged pool (vLLM-style) and on owned memory;
//  - an executor (thread_pool) compressing every layer at once, and scoring many heads at once;
//  - the runtime SIMD dispatch's first call racing from many threads, and force() switching
//    targets while other threads score.
#include <gtest/gtest.h>
#include <lagkv/cache.hpp>
#include <lagkv/executor.hpp>
#include <lagkv/simd/dispatch.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "support/plain_cache.hpp"

namespace {

using lagkv::f16;
using lagkv::index_t;

/// Releases every waiting thread at once (C++17 has no std::barrier).
class start_gate {
 public:
  explicit start_gate(int parties) : left_(parties) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(m_);
    if (--left_ == 0) {
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return left_ == 0; });
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int left_;
};

// ---- Layers in parallel --------------------------------------------------------------------------

constexpr index_t kL = 4, kH = 2, kQH = 4, kD = 16, kC = 160, kS = 150, kBlock = 8;

std::vector<lagkv::any_policy> layer_policies() {
  std::vector<lagkv::any_policy> p;
  lagkv::policy_spec s;
  s.sink = 4, s.lag = 12;
  p.push_back(lagkv::make_policy("lagkv", s));
  s = {}, s.budget = 40, s.window = 8;
  p.push_back(lagkv::make_policy("h2o", s));
  s = {}, s.budget = 36, s.share_heads = true, s.min_per_head = 8;
  p.push_back(lagkv::make_policy("l2norm", s));
  s = {}, s.sink = 2, s.window = 30, s.interval = 4;
  p.push_back(lagkv::make_policy("streaming", s));
  return p;
}

/// Engine memory: one paged pool for K and one for V shared by all layers, each layer owning a
/// disjoint, shuffled set of blocks (what vLLM hands out).
struct shared_pool {
  std::vector<f16> k, v;
  std::vector<std::vector<std::int32_t>> tables;
  std::vector<lagkv::layer_memory<f16>> layers;
  shared_pool() {
    const index_t per_layer = (kC + kBlock - 1) / kBlock, blocks = per_layer * kL;
    std::vector<std::int32_t> ids(static_cast<std::size_t>(blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937(3));
    k.assign(static_cast<std::size_t>(blocks * kBlock * kH * kD), lagkv::from_float<f16>(-3.0f));
    v = k;
    for (index_t l = 0; l < kL; ++l)
      tables.emplace_back(ids.begin() + l * per_layer, ids.begin() + (l + 1) * per_layer);
    for (index_t l = 0; l < kL; ++l) {
      const auto layout = lagkv::kv_layout::paged(tables[static_cast<std::size_t>(l)].data(), kBlock);
      layers.push_back({k.data(), v.data(), layout, layout});
    }
  }
};

struct layer_data {
  std::vector<f16> k, v;
  std::vector<float> q;
};

std::vector<layer_data> make_layer_data() {
  std::vector<layer_data> d;
  for (index_t l = 0; l < kL; ++l) {
    const auto seed = static_cast<std::uint32_t>(l);
    d.push_back({lagkv_test::convert<f16>(lagkv_test::random_kv(10 + seed, kH, kS, kD)),
                 lagkv_test::convert<f16>(lagkv_test::random_kv(20 + seed, kH, kS, kD)),
                 lagkv_test::random_kv(30 + seed, kQH, kS, kD)});
  }
  return d;
}

/// Everything one layer goes through: prefill, decode (append and in-place commit), reads,
/// an explicit compression, a clear and a second sequence. Returns a digest of what was read.
std::vector<index_t> drive_layer(lagkv::kv_cache<f16>& cache, const layer_data& d, index_t l) {
  std::vector<index_t> digest;
  auto extras = [&](index_t first) {
    lagkv::append_extras x;
    x.attention.q_heads = kQH;
    x.attention.queries = d.q.data() + first * kD;
    x.attention.q_head_stride = kS * kD;
    x.attention.q_token_stride = kD;
    return x;
  };
  auto input = [&](const std::vector<f16>& src, index_t first, index_t n) {
    return lagkv::kv_input<f16>{src.data() + first * kD, n, lagkv::kv_layout::hsd(), kS};
  };
  for (int round = 0; round < 2; ++round) {
    index_t first = 0;
    for (const index_t n : lagkv_test::random_schedule(static_cast<std::uint32_t>(l * 7 + round), kS)) {
      if (n == 1 && first % 3 == 0) {  // the engine writes the token itself, then commits
        for (index_t h = 0; h < kH; ++h) {
          const auto ks = cache.next_keys(l, h, 1), vs = cache.next_values(l, h, 1);
          for (index_t c = 0; c < kD; ++c) {
            ks(0, c) = d.k[static_cast<std::size_t>((h * kS + first) * kD + c)];
            vs(0, c) = d.v[static_cast<std::size_t>((h * kS + first) * kD + c)];
          }
        }
        cache.commit(l, 1, extras(first));
      } else {
        cache.append(l, input(d.k, first, n), input(d.v, first, n), extras(first));
      }
      first += n;
      digest.push_back(cache.max_length(l));
      const auto keys = cache.keys(l, first % kH);
      digest.push_back(static_cast<index_t>(keys(keys.tokens() - 1, 0).bits));
    }
    cache.compress(l);
    for (index_t h = 0; h < kH; ++h) {
      const auto pos = cache.positions(l, h).to_vector();
      digest.insert(digest.end(), pos.begin(), pos.end());
    }
    if (round == 0) cache.clear(l);
  }
  return digest;
}

template <class Cache>
void expect_same_layers(const Cache& a, const Cache& b) {
  for (index_t l = 0; l < kL; ++l) {
    EXPECT_EQ(a.tokens_seen(l), b.tokens_seen(l));
    EXPECT_EQ(a.compressions(l), b.compressions(l)) << "layer " << l;
    for (index_t h = 0; h < kH; ++h) {
      ASSERT_EQ(a.positions(l, h).to_vector(), b.positions(l, h).to_vector()) << "layer " << l << " head " << h;
      const auto ka = a.keys(l, h), kb = b.keys(l, h), va = a.values(l, h), vb = b.values(l, h);
      for (index_t s = 0; s < ka.tokens(); ++s)
        for (index_t c = 0; c < kD; ++c) {
          ASSERT_EQ(ka(s, c).bits, kb(s, c).bits) << "layer " << l << " head " << h << " slot " << s;
          ASSERT_EQ(va(s, c).bits, vb(s, c).bits) << "layer " << l << " head " << h << " slot " << s;
        }
    }
  }
}

lagkv::cache_config config() {
  lagkv::cache_config cfg;
  cfg.layers = kL;
  cfg.kv_heads = kH;
  cfg.head_dim = kD;
  cfg.capacity = kC;
  return cfg;
}

TEST(ConcurrentLayers, SharedPagedPoolEqualsSingleThreadedReplay) {
  const auto data = make_layer_data();
  const auto policies = layer_policies();
  shared_pool serial_mem, parallel_mem;
  lagkv::kv_cache<f16> serial(config(), serial_mem.layers), parallel(config(), parallel_mem.layers);
  std::atomic<int> events{0};
  parallel.set_observer([&](const lagkv::compress_event&) { events.fetch_add(1, std::memory_order_relaxed); });
  for (index_t l = 0; l < kL; ++l) {
    serial.set_policy(l, policies[static_cast<std::size_t>(l)]);
    parallel.set_policy(l, policies[static_cast<std::size_t>(l)]);
  }
  std::vector<std::vector<index_t>> want(kL), got(kL);
  for (index_t l = 0; l < kL; ++l) want[static_cast<std::size_t>(l)] = drive_layer(serial, data[static_cast<std::size_t>(l)], l);
  start_gate gate(kL);
  std::vector<std::thread> threads;
  for (index_t l = 0; l < kL; ++l)
    threads.emplace_back([&, l] {
      gate.arrive_and_wait();
      got[static_cast<std::size_t>(l)] = drive_layer(parallel, data[static_cast<std::size_t>(l)], l);
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(got, want);
  expect_same_layers(serial, parallel);
  // The whole pools, free slots included: the threads wrote the same bytes, and only their own.
  EXPECT_EQ(std::memcmp(serial_mem.k.data(), parallel_mem.k.data(), serial_mem.k.size() * sizeof(f16)), 0);
  EXPECT_EQ(std::memcmp(serial_mem.v.data(), parallel_mem.v.data(), serial_mem.v.size() * sizeof(f16)), 0);
  EXPECT_GT(events.load(), 0);
  for (index_t l = 0; l < kL; ++l) EXPECT_GT(serial.compressions(l), 0) << "layer " << l;
}

TEST(ConcurrentLayers, ThreadPoolCompressesEveryLayerAtOnce) {
  const auto data = make_layer_data();
  const auto policies = layer_policies();
  auto cfg = config();
  cfg.auto_compress = false;  // everything is left for the explicit, parallel compression
  lagkv::kv_cache<f16> serial(cfg), parallel(cfg);
  for (auto* c : {&serial, &parallel})
    for (index_t l = 0; l < kL; ++l) {
      c->set_policy(l, policies[static_cast<std::size_t>(l)]);
      const auto& d = data[static_cast<std::size_t>(l)];
      lagkv::append_extras x;
      x.attention.q_heads = kQH;
      x.attention.queries = d.q.data();
      x.attention.q_head_stride = kS * kD;
      x.attention.q_token_stride = kD;
      c->append(l, d.k.data(), d.v.data(), kS, x);
    }
  std::vector<int> serial_result(kL), parallel_result(kL);
  lagkv::parallel_for(lagkv::serial_executor{}, kL, [&](index_t l) { serial_result[static_cast<std::size_t>(l)] = serial.compress(l); });
  lagkv::thread_pool pool(4);
  lagkv::parallel_for(pool, kL, [&](index_t l) { parallel_result[static_cast<std::size_t>(l)] = parallel.compress(l); });
  EXPECT_EQ(parallel_result, serial_result);
  EXPECT_EQ(std::count(serial_result.begin(), serial_result.end(), 1), kL);
  expect_same_layers(serial, parallel);
}

// ---- The executor scoring many heads at once -------------------------------------------------------

constexpr index_t kHeads = 16, kLag = 16, kChunks = 4, kTokens = (kChunks + 1) * kLag, kHD = 64;

std::vector<float> score_heads(lagkv::executor_ref ex, const std::vector<f16>& k, const std::vector<f16>& v) {
  std::vector<float> out(static_cast<std::size_t>(kHeads * (kChunks * kLag + kTokens)));
  lagkv::parallel_for(ex, kHeads, [&](index_t h) {
    const auto kv = lagkv::view_hsd<const f16>(k.data(), kHeads, kTokens, kHD, h);
    const auto vv = lagkv::view_hsd<const f16>(v.data(), kHeads, kTokens, kHD, h);
    float* o = out.data() + h * (kChunks * kLag + kTokens);
    lagkv::dispatch::lagkv_sequence_scores<f16>(kv, vv, kLag, kChunks, 1.0, o);
    lagkv::dispatch::l2norm_scores<f16>(kv, o + kChunks * kLag);
  });
  return out;
}

TEST(ConcurrentScoring, ThreadPoolScoringManyHeadsEqualsSerial) {
  const auto k = lagkv_test::convert<f16>(lagkv_test::random_kv(1, kHeads, kTokens, kHD));
  const auto v = lagkv_test::convert<f16>(lagkv_test::random_kv(2, kHeads, kTokens, kHD));
  lagkv::serial_executor serial;
  const auto want = score_heads(serial, k, v);
  lagkv::thread_pool pool(4);
  for (int round = 0; round < 3; ++round) {
    const auto got = score_heads(pool, k, v);
    ASSERT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0) << "round " << round;
  }
}

TEST(ConcurrentScoring, OnePoolServesSeveralCallingThreads) {
  const auto k = lagkv_test::convert<f16>(lagkv_test::random_kv(3, kHeads, kTokens, kHD));
  const auto v = lagkv_test::convert<f16>(lagkv_test::random_kv(4, kHeads, kTokens, kHD));
  lagkv::serial_executor serial;
  const auto want = score_heads(serial, k, v);
  lagkv::thread_pool pool(3);
  std::vector<std::vector<float>> got(3);
  std::vector<std::thread> callers;
  for (std::size_t i = 0; i < got.size(); ++i) callers.emplace_back([&, i] { got[i] = score_heads(pool, k, v); });
  for (auto& t : callers) t.join();
  for (const auto& g : got) EXPECT_EQ(std::memcmp(g.data(), want.data(), want.size() * sizeof(float)), 0);
}

// ---- Runtime dispatch -----------------------------------------------------------------------------

std::vector<float> score_one(const std::vector<f16>& k) {
  std::vector<float> out(static_cast<std::size_t>(kChunks * kLag + kTokens));
  const lagkv::kv_view<const f16> kv(k.data(), kTokens, kHD, kHD);
  lagkv::dispatch::lagkv_sequence_scores<f16>(kv, kv, kLag, kChunks, 0.5, out.data());
  lagkv::dispatch::l2norm_scores<f16>(kv, out.data() + kChunks * kLag);
  return out;
}

TEST(ConcurrentDispatch, FirstCallRacesFromManyThreads) {
  const auto k = lagkv_test::convert<f16>(lagkv_test::random_kv(5, 1, kTokens, kHD));
  // Back to "nothing chosen yet", so every thread below races for the first choice (in a
  // fresh process — how ctest runs each case — this is the state before any call anyway).
  lagkv::simd::detail::active_slot().store(nullptr);
  constexpr int kThreads = 8;
  start_gate gate(kThreads);
  std::vector<lagkv::simd::target> chosen(kThreads);
  std::vector<std::vector<float>> got(kThreads);
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i)
    threads.emplace_back([&, i] {
      gate.arrive_and_wait();
      got[static_cast<std::size_t>(i)] = score_one(k);
      chosen[static_cast<std::size_t>(i)] = lagkv::simd::active_target();
    });
  for (auto& t : threads) t.join();
  const auto want = score_one(k);  // single-threaded, after the race
  for (int i = 0; i < kThreads; ++i) {
    EXPECT_EQ(chosen[static_cast<std::size_t>(i)], lagkv::simd::active_target());
    EXPECT_EQ(std::memcmp(got[static_cast<std::size_t>(i)].data(), want.data(), want.size() * sizeof(float)), 0) << i;
  }
}

TEST(ConcurrentDispatch, ForceWhileOtherThreadsScoreGivesOneTargetsResultPerCall) {
  const auto k = lagkv_test::convert<f16>(lagkv_test::random_kv(6, 1, kTokens, kHD));
  const auto& targets = lagkv::simd::available_targets();
  std::vector<std::vector<float>> per_target;
  for (auto t : targets) {
    lagkv::simd::scoped_target use(t);
    per_target.push_back(score_one(k));
  }
  std::atomic<bool> stop{false};
  std::thread switcher([&] {
    for (int i = 0; !stop.load(); ++i) lagkv::simd::force(targets[static_cast<std::size_t>(i) % targets.size()]);
  });
  constexpr int kThreads = 3, kCalls = 20;
  std::vector<int> unmatched(kThreads, 0);
  std::vector<std::thread> scorers;
  for (int i = 0; i < kThreads; ++i)
    scorers.emplace_back([&, i] {
      for (int c = 0; c < kCalls; ++c) {
        const auto got = score_one(k);
        // lagkv_sequence_scores and l2norm_scores each read the target once: every half of
        // the result is exactly one target's.
        auto matches = [&](std::size_t from, std::size_t to) {
          for (const auto& want : per_target)
            if (std::memcmp(got.data() + from, want.data() + from, (to - from) * sizeof(float)) == 0) return true;
          return false;
        };
        const std::size_t split = static_cast<std::size_t>(kChunks * kLag);
        if (!matches(0, split) || !matches(split, got.size())) ++unmatched[static_cast<std::size_t>(i)];
      }
    });
  for (auto& t : scorers) t.join();
  stop = true;
  switcher.join();
  lagkv::simd::reset();
  EXPECT_EQ(unmatched, std::vector<int>(kThreads, 0));
}

}  // namespace
