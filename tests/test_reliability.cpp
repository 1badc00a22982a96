// Reliability: the bad-input contract (every row of the table in docs/reliability.md is a case
// here, asserting the exact message; a test keeps the document and the cases identical),
// resource bounds (guard regions around and inside engine memory, capacity overflow,
// allocation failure), and the replay of every fuzzer seed and finding (tests/fuzz/corpus).
//
// Regenerate the document's table after changing a case:
//   LAGKV_PRINT_CONTRACT_TABLE=1 build/tests/test_reliability --gtest_filter='ContractDocument.*'
#include <gtest/gtest.h>
#include <lagkv/cache.hpp>
#include <lagkv/executor.hpp>
#include <lagkv/npy.hpp>
#include <lagkv/paged.hpp>
#include <lagkv/select.hpp>
#include <lagkv/simd/dispatch.hpp>
#include <lagkv/simd/q8_0_dispatch.hpp>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <new>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/cache_fuzz.hpp"
#include "support/cache_layouts.hpp"
#include "support/contract_fixture.hpp"
#include "support/plain_cache.hpp"
#include "support/simd_fuzz.hpp"
#include "support/targets.hpp"

// ---- Allocation failure injection ---------------------------------------------------------------
// The whole binary allocates through these. Disarmed they are malloc/free; armed they throw
// std::bad_alloc for a request above `limit` or at the `countdown`-th allocation. (Under ASan a
// failed operator new is a fatal report rather than std::bad_alloc, hence our own.)
namespace alloc_control {
std::atomic<std::size_t> limit{std::numeric_limits<std::size_t>::max()};
std::atomic<long> countdown{-1};  // >= 0: that many allocations succeed, the next one fails
std::atomic<long> allocations{0};

void disarm() {
  limit = std::numeric_limits<std::size_t>::max();
  countdown = -1;
}
}  // namespace alloc_control

void* operator new(std::size_t n) {
  if (n > alloc_control::limit.load(std::memory_order_relaxed)) throw std::bad_alloc();
  if (alloc_control::countdown.load(std::memory_order_relaxed) >= 0 && alloc_control::countdown.fetch_sub(1) == 0)
    throw std::bad_alloc();
  alloc_control::allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {  // std::stable_sort's buffer
  try {
    return ::operator new(n);
  } catch (const std::bad_alloc&) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return ::operator new(n, t); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"  // these operators are the malloc pair
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace {

using lagkv::index_t;
using lagkv_test::cache_layout;
using lagkv_test::layout_name;

/// Arms the injection for one scope (the test's own assertions run disarmed).
struct failing_allocations {
  explicit failing_allocations(long succeed_first, std::size_t limit = std::numeric_limits<std::size_t>::max()) {
    alloc_control::limit = limit;
    alloc_control::countdown = succeed_first;
  }
  ~failing_allocations() { alloc_control::disarm(); }
  failing_allocations(const failing_allocations&) = delete;
  failing_allocations& operator=(const failing_allocations&) = delete;
};

// ---- The contract fixture: a cache that has compressed, for every cache row --------------------

using lagkv_test::contract_fixture;
constexpr index_t kL = contract_fixture::kLayers, kH = contract_fixture::kHeads, kD = contract_fixture::kHeadDim,
                  kC = contract_fixture::kCapacity;

// ---- The bad-input table ---------------------------------------------------------------------------

enum class subject { cache_op, standalone };

struct contract_case {
  std::string id;       // row id in docs/reliability.md
  std::string call;     // the API called
  std::string input;    // what is wrong with the input
  std::string message;  // the exact lagkv::error::what()
  subject on = subject::standalone;
  std::function<void(contract_fixture&)> op;
};

lagkv::cache_config cfg_with(const std::function<void(lagkv::cache_config&)>& edit) {
  lagkv::cache_config c = contract_fixture::config();
  edit(c);
  return c;
}

template <class Spec>
lagkv::policy_spec spec(Spec&& edit) {
  lagkv::policy_spec s;
  edit(s);
  return s;
}

std::vector<unsigned char> npy_bytes(const std::string& header, std::size_t data_bytes, int major = 1) {
  std::string h = header;
  while ((10 + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  const unsigned char prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(major), 0,
                                    static_cast<unsigned char>(h.size() & 0xff), static_cast<unsigned char>(h.size() >> 8)};
  std::vector<unsigned char> b(10 + h.size() + data_bytes, 0);
  std::copy(prefix, prefix + 10, b.begin());
  std::copy(h.begin(), h.end(), b.begin() + 10);
  return b;
}

void parse(const std::vector<unsigned char>& b) { (void)lagkv::parse_npy(b.data(), b.size(), "x.npy"); }

std::vector<contract_case> contract_cases() {
  using F = contract_fixture;
  using lagkv::kv_cache;
  using lagkv::make_policy;
  const auto C = subject::cache_op;
  const auto S = subject::standalone;
  return {
      // -- cache configuration (nothing is constructed)
      {"config.layers", "kv_cache(config)", "layers = 0", "layers=0: must be >= 1", S,
       [](F&) { kv_cache<float> c(cfg_with([](auto& c) { c.layers = 0; })); }},
      {"config.kv_heads", "kv_cache(config)", "kv_heads = -2", "kv_heads=-2: must be >= 1", S,
       [](F&) { kv_cache<float> c(cfg_with([](auto& c) { c.kv_heads = -2; })); }},
      {"config.head_dim", "kv_cache(config)", "head_dim = 0", "head_dim=0: must be >= 1", S,
       [](F&) { kv_cache<float> c(cfg_with([](auto& c) { c.head_dim = 0; })); }},
      {"config.capacity", "kv_cache(config)", "capacity = 0", "capacity=0: must be >= 1", S,
       [](F&) { kv_cache<float> c(cfg_with([](auto& c) { c.capacity = 0; })); }},
      {"config.size_overflow", "kv_cache(config)", "capacity = 2^62 (the byte size overflows)",
       "capacity=4611686018427387904: layers*kv_heads*capacity*head_dim overflows (layers=3, kv_heads=2, head_dim=8)", S,
       [](F&) { kv_cache<float> c(cfg_with([](auto& c) { c.capacity = index_t{1} << 62; })); }},
      {"config.skip_layers", "kv_cache(config)", "skip_layers = {3} with 3 layers", "skip_layers entry=3: out of range [0, 3)", S,
       [](F&) { kv_cache<float> c(cfg_with([](auto& c) { c.skip_layers = {3}; })); }},
      {"config.lagkv_head_dim", "kv_cache(config, lagkv)", "head_dim = 1 (LagKV's std needs 2 channels)",
       "head_dim=1: must be >= 2", S,
       [](F&) { kv_cache<float> c(cfg_with([](auto& c) { c.head_dim = 1; }), make_policy("lagkv")); }},
      {"memory.count", "kv_cache(config, memory)", "2 layer_memory entries for 3 layers", "memory.size()=2: must equal layers=3", S,
       [](F&) { kv_cache<float> c(F::config(), std::vector<lagkv::layer_memory<float>>(2)); }},
      {"memory.null", "kv_cache(config, memory)", "layer_memory with k = nullptr", "memory[0]: k and v must not be nullptr", S,
       [](F&) { kv_cache<float> c(F::config(), std::vector<lagkv::layer_memory<float>>(3)); }},
      {"memory.block_table", "kv_cache(config, memory)", "paged K layout without a block table",
       "k_layout.block_table=nullptr: a paged layout needs a block table", S,
       [](F&) {
         std::vector<float> buf(16);
         std::vector<lagkv::layer_memory<float>> m(3, {buf.data(), buf.data(), lagkv::kv_layout::paged(nullptr, 4), lagkv::kv_layout::hsd()});
         kv_cache<float> c(F::config(), m);
       }},
      {"memory.block_size", "kv_cache(config, memory)", "paged V layout with block_size = 0", "v_layout.block_size=0: must be >= 1", S,
       [](F&) {
         std::vector<float> buf(16);
         static const std::int32_t table[1] = {0};
         std::vector<lagkv::layer_memory<float>> m(3, {buf.data(), buf.data(), lagkv::kv_layout::hsd(), lagkv::kv_layout::paged(table, 0)});
         kv_cache<float> c(F::config(), m);
       }},
      // -- policies
      {"policy.name", "make_policy", "name \"LagKV\" (names are lower case)",
       "policy=LagKV: unknown (expected one of none|lagkv|l2norm|l2norm-chunked|h2o|streaming|random)", S,
       [](F&) { make_policy("LagKV"); }},
      {"policy.lagkv.lag", "make_policy(\"lagkv\")", "lag = 1", "lag=1: must be >= 2", S,
       [](F&) { make_policy("lagkv", spec([](auto& s) { s.lag = 1; })); }},
      {"policy.lagkv.ratio_zero", "make_policy(\"lagkv\")", "ratio = 0", "ratio=0: must be in (0, 1]", S,
       [](F&) { make_policy("lagkv", spec([](auto& s) { s.ratio = 0.0; })); }},
      {"policy.lagkv.ratio_above_one", "make_policy(\"lagkv\")", "ratio = 1.5", "ratio=1.5: must be in (0, 1]", S,
       [](F&) { make_policy("lagkv", spec([](auto& s) { s.ratio = 1.5; })); }},
      {"policy.lagkv.ratio_nan", "make_policy(\"lagkv\")", "ratio = NaN", "ratio=nan: must be in (0, 1]", S,
       [](F&) { make_policy("lagkv", spec([](auto& s) { s.ratio = std::nan(""); })); }},
      {"policy.lagkv.sink", "make_policy(\"lagkv\")", "sink = -1", "sink=-1: must be >= 0", S,
       [](F&) { make_policy("lagkv", spec([](auto& s) { s.sink = -1; })); }},
      {"policy.lagkv.score_v_ratio", "make_policy(\"lagkv\")", "score_v_ratio = -1", "score_v_ratio=-1: must be finite and >= 0", S,
       [](F&) { make_policy("lagkv", spec([](auto& s) { s.score_v_ratio = -1.0; })); }},
      {"policy.lagkv.score_v_ratio_inf", "make_policy(\"lagkv\")", "score_v_ratio = +Inf",
       "score_v_ratio=inf: must be finite and >= 0", S,
       [](F&) { make_policy("lagkv", spec([](auto& s) { s.score_v_ratio = INFINITY; })); }},
      {"policy.chunked.lag", "make_policy(\"l2norm-chunked\")", "lag = 0", "lag=0: must be >= 2", S,
       [](F&) { make_policy("l2norm-chunked", spec([](auto& s) { s.lag = 0; })); }},
      {"policy.h2o.budget", "make_policy(\"h2o\")", "neither budget nor ratio", "budget=0: h2o needs a budget > 0 (or a ratio)", S,
       [](F&) { make_policy("h2o"); }},
      {"policy.budget.negative", "make_policy(\"random\")", "budget = -3", "budget=-3: must be >= 0", S,
       [](F&) { make_policy("random", spec([](auto& s) { s.budget = -3; })); }},
      {"policy.budget.below_protected", "make_policy(\"l2norm\")", "budget = 5 with sink = 4, window = 4",
       "budget=5: must be >= sink + window = 8", S,
       [](F&) { make_policy("l2norm", spec([](auto& s) { s.budget = 5, s.sink = 4, s.window = 4; })); }},
      {"policy.budget.ratio_nan", "make_policy(\"l2norm\")", "no budget, ratio = NaN", "ratio=nan: must be in (0, 1] (or set budget > 0)", S,
       [](F&) { make_policy("l2norm", spec([](auto& s) { s.ratio = std::nan(""); })); }},
      {"policy.budget.interval", "make_policy(\"h2o\")", "interval = 0", "interval=0: must be >= 1", S,
       [](F&) { make_policy("h2o", spec([](auto& s) { s.budget = 10, s.interval = 0; })); }},
      {"policy.budget.window", "make_policy(\"random\")", "window = -2", "window=-2: must be >= 0", S,
       [](F&) { make_policy("random", spec([](auto& s) { s.window = -2; })); }},
      {"policy.budget.min_per_head", "make_policy(\"h2o\")", "min_per_head = 30 > budget = 20",
       "min_per_head=30: must be in [0, budget=20]", S,
       [](F&) { make_policy("h2o", spec([](auto& s) { s.budget = 20, s.share_heads = true, s.min_per_head = 30; })); }},
      {"policy.l2norm.skip_layers", "make_policy(\"l2norm\")", "skip_layers = {-1}", "skip_layers entry=-1: must be >= 0", S,
       [](F&) { make_policy("l2norm", spec([](auto& s) { s.skip_layers = {-1}; })); }},
      {"policy.streaming.empty", "make_policy(\"streaming\")", "sink = 0, window = 0", "sink + window=0: must be >= 1", S,
       [](F&) { make_policy("streaming", spec([](auto& s) { s.sink = 0, s.window = 0; })); }},
      // -- appending (the fixture: layer 0 H2O, layer 1 LagKV, both compressed; layer 2 empty)
      {"append.layer", "append", "layer = 3 of 3", "layer=3: out of range [0, 3)", C,
       [](F& f) { f.cache.append(3, f.input(30, 1), f.input(30, 1), f.extras(30)); }},
      {"append.negative_layer", "append", "layer = -1", "layer=-1: out of range [0, 3)", C,
       [](F& f) { f.cache.append(-1, f.input(30, 1), f.input(30, 1)); }},
      {"append.negative_tokens", "append", "k.tokens = -1", "k.tokens=-1: must be >= 0", C,
       [](F& f) { f.cache.append(1, f.input(30, -1), f.input(30, -1)); }},
      {"append.token_mismatch", "append", "k.tokens = 3, v.tokens = 2", "v.tokens=2: must equal k.tokens=3", C,
       [](F& f) { f.cache.append(1, f.input(30, 3), f.input(30, 2)); }},
      {"append.null_k", "append", "k.data = nullptr", "k.data=nullptr with tokens=1", C,
       [](F& f) { f.cache.append(1, nullptr, f.k.data(), 1); }},
      {"append.null_v", "append", "v.data = nullptr", "v.data=nullptr with tokens=2", C,
       [](F& f) { f.cache.append(1, f.k.data(), nullptr, 2); }},
      {"append.paged_k", "append", "a paged K input", "k.layout=paged: inputs must be hsd, shd or hds", C,
       [](F& f) {
         static const std::int32_t table[1] = {0};
         f.cache.append(1, lagkv::kv_input<float>{f.k.data(), 1, lagkv::kv_layout::paged(table, 4)}, f.input(30, 1));
       }},
      {"append.paged_v", "append", "a paged V input", "v.layout=paged: inputs must be hsd, shd or hds", C,
       [](F& f) {
         static const std::int32_t table[1] = {0};
         f.cache.append(1, f.input(30, 1), lagkv::kv_input<float>{f.k.data(), 1, lagkv::kv_layout::paged(table, 4)});
       }},
      {"append.input_capacity", "append", "k.capacity = 2 < tokens = 3", "k.capacity=2: must be 0 or >= tokens=3", C,
       [](F& f) { f.cache.append(1, lagkv::kv_input<float>{f.k.data(), 3, lagkv::kv_layout::hsd(), 2}, f.input(30, 3)); }},
      {"append.overflow", "append", "60 tokens into a head holding 18 of 64",
       "tokens=60: capacity overflow at layer=1 head=0 (holds 18, capacity=64)", C,
       [](F& f) { f.cache.append(1, f.k.data(), f.k.data(), 60); }},
      {"append.h2o_no_attention", "append (H2O layer)", "no attention input",
       "attention: h2o needs attention.probs, attention.prob_sums or attention.queries for every append (tokens=1)", C,
       [](F& f) { f.cache.append(0, f.input(30, 1), f.input(30, 1)); }},
      {"append.h2o_q_heads", "append (H2O layer)", "q_heads = 3 with 2 KV heads",
       "attention.q_heads=3: must be a positive multiple of kv_heads=2", C,
       [](F& f) {
         auto x = f.extras(30);
         x.attention.q_heads = 3;
         f.cache.append(0, f.input(30, 1), f.input(30, 1), x);
       }},
      {"append.h2o_row_stride", "append (H2O layer)", "probs with row_stride = 5",
       "attention.row_stride=5: must be >= the longest head after the append = 21", C,
       [](F& f) {
         std::vector<float> probs(100, 0.0f);
         lagkv::append_extras x;
         x.attention.q_heads = kH;
         x.attention.probs = probs.data();
         x.attention.row_stride = 5;
         f.cache.append(0, f.input(30, 1), f.input(30, 1), x);
       }},
      {"append.h2o_token_stride", "append (H2O layer)", "queries for 2 tokens with q_token_stride = 0",
       "attention.q_token_stride=0: must be set for an append of tokens=2", C,
       [](F& f) {
         auto x = f.extras(30);
         x.attention.q_token_stride = 0;
         f.cache.append(0, f.input(30, 2), f.input(30, 2), x);
       }},
      {"append.h2o_head_stride", "append (H2O layer)", "queries of 2 heads with q_head_stride = 0",
       "attention.q_head_stride=0: must be set for q_heads=2", C,
       [](F& f) {
         auto x = f.extras(30);
         x.attention.q_head_stride = 0;
         f.cache.append(0, f.input(30, 1), f.input(30, 1), x);
       }},
      // -- in-place writes
      {"commit.negative", "commit", "tokens = -1", "tokens=-1: must be >= 0", C, [](F& f) { f.cache.commit(1, -1); }},
      {"commit.overflow", "commit", "100 tokens into a head holding 18 of 64",
       "tokens=100: capacity overflow at layer=1 head=0 (holds 18, capacity=64)", C, [](F& f) { f.cache.commit(1, 100); }},
      {"commit.h2o_no_attention", "commit (H2O layer)", "no attention input",
       "attention: h2o needs attention.probs, attention.prob_sums or attention.queries for every append (tokens=1)", C,
       [](F& f) { f.cache.commit(0, 1); }},
      {"next_keys.head", "next_keys", "head = 2 of 2", "head=2: out of range [0, 2)", C, [](F& f) { f.cache.next_keys(1, 2, 1); }},
      {"next_values.overflow", "next_values", "47 slots when 46 are free",
       "tokens=47: capacity overflow at layer=1 head=1 (holds 18, capacity=64)", C, [](F& f) { f.cache.next_values(1, 1, 47); }},
      {"next_keys.negative", "next_keys", "tokens = -1", "tokens=-1: must be >= 0", C, [](F& f) { f.cache.next_keys(1, 0, -1); }},
      // -- configuring and reading
      {"set_policy.nonempty", "set_policy", "a layer holding tokens",
       "layer=1: set_policy needs an empty layer (it holds 36 slots); call clear(layer) first", C,
       [](F& f) { f.cache.set_policy(1, make_policy("streaming")); }},
      {"set_policy.layer", "set_policy", "layer = 3", "layer=3: out of range [0, 3)", C,
       [](F& f) { f.cache.set_policy(3, make_policy("none")); }},
      {"compress.layer", "compress", "layer = 5", "layer=5: out of range [0, 3)", C, [](F& f) { f.cache.compress(5); }},
      {"clear.layer", "clear", "layer = 9", "layer=9: out of range [0, 3)", C, [](F& f) { f.cache.clear(9); }},
      {"set_skipped.layer", "set_skipped", "layer = -1", "layer=-1: out of range [0, 3)", C, [](F& f) { f.cache.set_skipped(-1, true); }},
      {"keys.head", "keys", "head = -1", "head=-1: out of range [0, 2)", C, [](F& f) { (void)f.cache.keys(0, -1); }},
      {"values.layer", "values", "layer = 3", "layer=3: out of range [0, 3)", C, [](F& f) { (void)f.cache.values(3, 0); }},
      {"positions.layer", "positions", "layer = -2", "layer=-2: out of range [0, 3)", C, [](F& f) { (void)f.cache.positions(-2, 0); }},
      {"length.head", "length", "head = 2", "head=2: out of range [0, 2)", C, [](F& f) { (void)f.cache.length(1, 2); }},
      {"tokens_seen.layer", "tokens_seen", "layer = 3", "layer=3: out of range [0, 3)", C, [](F& f) { (void)f.cache.tokens_seen(3); }},
      // -- scoring, views, executors
      {"simd.env", "first scoring call / simd::reset", "LAGKV_SIMD=sse9",
       "LAGKV_SIMD=sse9: unknown target (expected scalar, avx2, avx512 or neon)", S,
       [](F&) {
         ::setenv("LAGKV_SIMD", "sse9", 1);
         struct restore {
           ~restore() {
             ::unsetenv("LAGKV_SIMD");
             lagkv::simd::reset();
           }
         } r;
         lagkv::simd::reset();
       }},
      {"scores.lag", "dispatch::lagkv_sequence_scores", "lag = 0", "lag=0: must be >= 1", S,
       [](F& f) {
         std::vector<float> out(64);
         const lagkv::kv_view<const float> v(f.k.data(), 10, kD, kD);
         lagkv::dispatch::lagkv_sequence_scores<float>(v, v, 0, 1, 1.0, out.data());
       }},
      {"scores.chunks", "dispatch::lagkv_sequence_scores", "chunks = -1", "chunks=-1: must be >= 0", S,
       [](F& f) {
         std::vector<float> out(64);
         const lagkv::kv_view<const float> v(f.k.data(), 10, kD, kD);
         lagkv::dispatch::lagkv_sequence_scores<float>(v, v, 4, -1, 1.0, out.data());
       }},
      {"scores.short_view", "dispatch::lagkv_sequence_scores", "10 tokens for 2 chunks of lag 4",
       "k.tokens=10: must be >= (chunks + 1) * lag = 12", S,
       [](F& f) {
         std::vector<float> out(64);
         const lagkv::kv_view<const float> v(f.k.data(), 10, kD, kD);
         lagkv::dispatch::lagkv_sequence_scores<float>(v, v, 4, 2, 1.0, out.data());
       }},
      {"scores.ref_head_dim", "dispatch::lagkv_chunk_scores", "reference with head_dim 4, chunk with 8",
       "k_ref.head_dim=4: must equal k_chunk.head_dim=8", S,
       [](F& f) {
         std::vector<float> out(64);
         const lagkv::kv_view<const float> a(f.k.data(), 4, kD, kD), b(f.k.data(), 4, 4, 4);
         lagkv::dispatch::lagkv_chunk_scores<float>(a, b, {}, {}, 0.0, out.data());
       }},
      {"select.k", "select_top_k", "k = 5 of n = 4", "k=5: must be in [0, n=4]", S,
       [](F&) {
         const float s[4] = {1, 2, 3, 4};
         (void)lagkv::select_top_k(s, 4, 5);
       }},
      {"view.slice", "kv_view::slice", "tokens [3, 8) of 5", "slice [3, 8) out of range for tokens=5", S,
       [](F& f) { (void)lagkv::kv_view<float>(f.k.data(), 5, kD, kD).slice(3, 5); }},
      {"view.head", "view_hsd", "head = 2 of 2", "head=2: out of range [0, 2)", S,
       [](F& f) { (void)lagkv::view_hsd(f.k.data(), 2, 8, kD, 2, 4); }},
      {"view.tokens", "view_shd", "9 tokens of capacity 8", "tokens=9: out of range [0, capacity=8]", S,
       [](F& f) { (void)lagkv::view_shd(f.k.data(), 8, 2, kD, 0, 9); }},
      {"executor.threads", "thread_pool", "threads = 0", "threads=0: must be >= 1", S, [](F&) { lagkv::thread_pool p(0); }},
      {"executor.n", "parallel_for", "n = -1", "n=-1: must be >= 0", S,
       [](F&) { lagkv::parallel_for(lagkv::serial_executor{}, -1, [](index_t) {}); }},
      // -- .npy files (lagkv-cli, the golden sets)
      {"npy.magic", "parse_npy", "not starting with \\x93NUMPY", "x.npy: not a .npy file (bad magic)", S,
       [](F&) { parse({'N', 'U', 'M', 'P', 'Y', 0, 0, 0, 0, 0, 0, 0}); }},
      {"npy.version", "parse_npy", "format version 4.0", "x.npy: npy format version 4.0 is not supported", S,
       [](F&) { parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8, 4)); }},
      {"npy.header_length", "parse_npy", "header length 1000 in a 20-byte file", "x.npy: header length 1000 exceeds file size 20", S,
       [](F&) {
         std::vector<unsigned char> b = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0xe8, 0x03};
         b.resize(20, ' ');
         parse(b);
       }},
      {"npy.big_endian", "parse_npy", "descr '>f4'", "x.npy: descr='>f4' is big-endian; only little-endian is supported", S,
       [](F&) { parse(npy_bytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8)); }},
      {"npy.descr", "parse_npy", "descr '<f8'", "x.npy: descr='<f8' is not supported (use '<f4', '<f2', or '<u2' for bf16 bits)", S,
       [](F&) { parse(npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16)); }},
      {"npy.fortran", "parse_npy", "fortran_order True", "x.npy: fortran_order=True is not supported (C order only)", S,
       [](F&) { parse(npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24)); }},
      {"npy.truncated", "parse_npy", "shape (2, 3) of '<f4' with 8 data bytes", "x.npy: data is 8 bytes but shape needs 24 (truncated)", S,
       [](F&) { parse(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 8)); }},
      {"npy.trailing", "parse_npy", "shape (2,) of '<f2' with 6 data bytes", "x.npy: data is 6 bytes but shape needs 4 (trailing bytes)", S,
       [](F&) { parse(npy_bytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }", 6)); }},
      {"npy.open", "read_npy", "a path that does not exist", "/nonexistent/lagkv/x.npy: cannot open file", S,
       [](F&) { (void)lagkv::read_npy("/nonexistent/lagkv/x.npy"); }},
  };
}

/// A table cell: pipes escaped (GitHub tables), messages in code spans.
std::string cell(const std::string& s, bool code) {
  std::string out = code ? "`" : "";
  for (char ch : s) {
    if (ch == '|') out += '\\';
    out += ch;
  }
  return out + (code ? "`" : "");
}

std::string contract_table() {
  std::ostringstream t;
  t << "| id | call | bad input | exact `lagkv::error::what()` |\n";
  t << "|---|---|---|---|\n";
  for (const auto& c : contract_cases())
    t << "| " << cell(c.id, true) << " | " << cell(c.call, false) << " | " << cell(c.input, false) << " | "
      << cell(c.message, true) << " |\n";
  return t.str();
}

void PrintTo(const contract_case& c, std::ostream* os) { *os << c.id; }

class BadInput : public ::testing::TestWithParam<contract_case> {};

TEST_P(BadInput, ThrowsTheDocumentedMessageAndChangesNothing) {
  const contract_case& c = GetParam();
  contract_fixture f;
  const auto before = f.snapshot();
  std::string what = "<no lagkv::error>";
  try {
    c.op(f);
  } catch (const lagkv::error& e) {
    what = e.what();
  }
  EXPECT_EQ(what, c.message);
  if (c.on == subject::cache_op) {
    EXPECT_TRUE(f.snapshot() == before) << "the failed call changed the cache";
    // ... and it keeps working: LagKV compresses at the next lag boundary as before.
    f.cache.append(1, f.input(30, 1), f.input(30, 1));
    EXPECT_EQ(f.cache.tokens_seen(1), 31);
  } else {
    EXPECT_TRUE(f.snapshot() == before);  // a standalone failure leaves an unrelated cache alone
  }
}

INSTANTIATE_TEST_SUITE_P(Contract, BadInput, ::testing::ValuesIn(contract_cases()),
                         [](const ::testing::TestParamInfo<contract_case>& info) {
                           std::string n = info.param.id;
                           for (char& ch : n)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(ContractDocument, TableInDocsIsExactlyTheTestedCases) {
  const std::string generated = contract_table();
  if (std::getenv("LAGKV_PRINT_CONTRACT_TABLE") != nullptr) std::cout << generated;
  const std::string doc = read_text(std::string(LAGKV_SOURCE_DIR) + "/docs/reliability.md");
  const std::string begin = "<!-- contract-table:begin (generated by tests/test_reliability.cpp) -->\n";
  const std::string end = "<!-- contract-table:end -->";
  const auto b = doc.find(begin), e = doc.find(end);
  ASSERT_NE(b, std::string::npos) << "docs/reliability.md lacks the table's begin marker";
  ASSERT_NE(e, std::string::npos) << "docs/reliability.md lacks the table's end marker";
  EXPECT_EQ(doc.substr(b + begin.size(), e - b - begin.size()), generated)
      << "docs/reliability.md's table differs from the cases; regenerate it with\n"
         "LAGKV_PRINT_CONTRACT_TABLE=1 test_reliability --gtest_filter='ContractDocument.*'";
}

TEST(ContractDocument, EveryCaseHasAUniqueIdAndAMessageNamingAValue) {
  std::vector<std::string> ids;
  for (const auto& c : contract_cases()) ids.push_back(c.id);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
  for (const auto& c : contract_cases())
    EXPECT_TRUE(c.message.find('=') != std::string::npos || c.message.find(": ") != std::string::npos) << c.id;
}

// ---- Resource bounds: engine memory with guard regions -------------------------------------------

constexpr std::uint8_t kFill = 0xcb;
constexpr index_t kGL = 3, kGH = 3, kGD = 6, kGC = 96, kGuard = 48, kGS = 90;

/// One buffer per tensor (K, V) holding every layer: guard | layer 0 | guard | layer 1 | ...
/// Paged layers take blocks from a pool with unused blocks between theirs.
template <class T>
struct guarded_memory {
  std::vector<T> buf[2];
  std::vector<lagkv_fuzz::layout_desc> lay[2];  // [tensor][layer]
  std::vector<index_t> base[2];                 // element offset of each layer's region
  std::vector<index_t> elems[2];
  std::vector<lagkv::layer_memory<T>> layers;

  explicit guarded_memory(cache_layout gl) {
    std::mt19937 rng(11);
    for (int t = 0; t < 2; ++t) {
      index_t at = kGuard;
      for (index_t l = 0; l < kGL; ++l) {
        lagkv_fuzz::layout_desc d;
        d.kind = gl == cache_layout::paged ? lagkv_fuzz::mem_layout::paged
               : gl == cache_layout::shd || (gl == cache_layout::llama && t == 0) ? lagkv_fuzz::mem_layout::shd
               : gl == cache_layout::hsd ? lagkv_fuzz::mem_layout::hsd : lagkv_fuzz::mem_layout::hds;
        if (d.kind == lagkv_fuzz::mem_layout::paged) {
          d.block_size = 4 + l;
          const index_t blocks = (kGC + d.block_size - 1) / d.block_size;
          d.pool_blocks = 2 * blocks;  // every other block belongs to nobody
          std::vector<std::int32_t> ids(static_cast<std::size_t>(blocks));
          for (index_t b = 0; b < blocks; ++b) ids[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(2 * b + 1);
          std::shuffle(ids.begin(), ids.end(), rng);
          d.table = ids;
        }
        lay[t].push_back(d);
        base[t].push_back(at);
        elems[t].push_back(d.elements(kGH, kGC, kGD));
        at += elems[t].back() + kGuard;
      }
      buf[t].resize(static_cast<std::size_t>(at));
      std::memset(static_cast<void*>(buf[t].data()), kFill, buf[t].size() * sizeof(T));
    }
    for (index_t l = 0; l < kGL; ++l)
      layers.push_back({buf[0].data() + base[0][static_cast<std::size_t>(l)], buf[1].data() + base[1][static_cast<std::size_t>(l)],
                        lay[0][static_cast<std::size_t>(l)].api(), lay[1][static_cast<std::size_t>(l)].api()});
  }

  /// Describes every element outside the slots [0, hwm[l][h]) of every head that lost the fill.
  std::string violations(const std::vector<std::vector<index_t>>& hwm) const {
    std::ostringstream out;
    for (int t = 0; t < 2; ++t) {
      std::vector<char> allowed(buf[t].size(), 0);
      for (index_t l = 0; l < kGL; ++l)
        for (index_t h = 0; h < kGH; ++h)
          for (index_t s = 0; s < hwm[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)]; ++s)
            for (index_t c = 0; c < kGD; ++c)
              allowed[static_cast<std::size_t>(base[t][static_cast<std::size_t>(l)] +
                                               lay[t][static_cast<std::size_t>(l)].offset(kGH, kGC, kGD, h, s, c))] = 1;
      const auto* bytes = reinterpret_cast<const std::uint8_t*>(buf[t].data());
      for (std::size_t e = 0; e < buf[t].size(); ++e) {
        if (allowed[e]) continue;
        for (std::size_t b = 0; b < sizeof(T); ++b)
          if (bytes[e * sizeof(T) + b] != kFill) {
            out << (t ? "V" : "K") << " element " << e << " ";
            break;
          }
      }
    }
    return out.str();
  }
};

using guard_param = std::tuple<cache_layout, lagkv::dtype>;
class GuardRegions : public ::testing::TestWithParam<guard_param> {};

template <class T>
void run_guarded(cache_layout gl) {
  guarded_memory<T> mem(gl);
  lagkv::cache_config cfg;
  cfg.layers = kGL;
  cfg.kv_heads = kGH;
  cfg.head_dim = kGD;
  cfg.capacity = kGC;
  lagkv::kv_cache<T> cache(cfg, mem.layers);
  lagkv::policy_spec s;
  s.sink = 2, s.lag = 5;
  cache.set_policy(0, lagkv::make_policy("lagkv", s));  // chunked compaction
  s = {}, s.budget = 24, s.window = 3, s.share_heads = true, s.min_per_head = 5, s.interval = 2;
  cache.set_policy(1, lagkv::make_policy("h2o", s));    // head-wise budgets: heads differ in length
  s = {}, s.sink = 3, s.window = 12;
  cache.set_policy(2, lagkv::make_policy("streaming", s));
  const auto k = lagkv_test::convert<T>(lagkv_test::random_kv(1, kGH, kGS, kGD));
  const auto v = lagkv_test::convert<T>(lagkv_test::random_kv(2, kGH, kGS, kGD));
  const auto q = lagkv_test::random_kv(3, kGH, kGS, kGD);
  std::vector<std::vector<index_t>> hwm(kGL, std::vector<index_t>(kGH, 0));
  int ops = 0;
  auto check = [&](const char* what) {
    ++ops;
    for (index_t l = 0; l < kGL; ++l)
      for (index_t h = 0; h < kGH; ++h) {
        auto& w = hwm[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
        w = std::max(w, cache.length(l, h));
      }
    const std::string bad = mem.violations(hwm);
    ASSERT_TRUE(bad.empty()) << "after " << what << " #" << ops << ": written outside the views: " << bad;
  };
  check("construction");
  for (int round = 0; round < 2; ++round) {
    for (index_t l = 0; l < kGL; ++l) {
      index_t first = 0;
      for (const index_t n : lagkv_test::random_schedule(static_cast<std::uint32_t>(7 * l + round), kGS)) {
        lagkv::append_extras x;
        x.attention.q_heads = kGH;
        x.attention.queries = q.data() + first * kGD;
        x.attention.q_head_stride = kGS * kGD;
        x.attention.q_token_stride = kGD;
        if (n == 1 && first % 4 == 1) {  // the engine writes in place, then commits
          for (index_t h = 0; h < kGH; ++h) {
            const auto ks = cache.next_keys(l, h, 1), vs = cache.next_values(l, h, 1);
            for (index_t c = 0; c < kGD; ++c) {
              ks(0, c) = k[static_cast<std::size_t>((h * kGS + first) * kGD + c)];
              vs(0, c) = v[static_cast<std::size_t>((h * kGS + first) * kGD + c)];
            }
            auto& w = hwm[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
            w = std::max(w, cache.length(l, h) + 1);
          }
          cache.commit(l, 1, x);
        } else {
          // Before the append, its rows may land anywhere in the head's next n slots.
          for (index_t h = 0; h < kGH; ++h) {
            auto& w = hwm[static_cast<std::size_t>(l)][static_cast<std::size_t>(h)];
            w = std::max(w, cache.length(l, h) + n);
          }
          cache.append(l, lagkv::kv_input<T>{k.data() + first * kGD, n, lagkv::kv_layout::hsd(), kGS},
                       lagkv::kv_input<T>{v.data() + first * kGD, n, lagkv::kv_layout::hsd(), kGS}, x);
        }
        first += n;
        check("append");
        if (first % 17 == 0) {
          cache.compress(l);
          check("compress");
        }
      }
      EXPECT_GT(cache.compressions(l), 0) << "layer " << l;
    }
    cache.compress_all();
    check("compress_all");
    if (round == 0) {
      cache.clear(1);
      check("clear(1)");
      cache.clear();
      check("clear()");
    }
  }
  // The kept rows are still the tokens they claim to be.
  for (index_t l = 0; l < kGL; ++l)
    for (index_t h = 0; h < kGH; ++h) {
      const auto pos = cache.positions(l, h);
      const auto keys = cache.keys(l, h);
      for (index_t s2 = 0; s2 < keys.tokens(); ++s2)
        ASSERT_EQ(std::memcmp(&keys(s2, kGD - 1), &k[static_cast<std::size_t>((h * kGS + pos[s2]) * kGD + kGD - 1)], sizeof(T)), 0);
    }
}

TEST_P(GuardRegions, CacheNeverWritesOutsideItsViews) {
  const cache_layout gl = std::get<0>(GetParam());
  lagkv::visit_dtype(std::get<1>(GetParam()), [&](auto tag) { run_guarded<decltype(tag)>(gl); });
}

INSTANTIATE_TEST_SUITE_P(EveryLayout, GuardRegions,
                         ::testing::Combine(::testing::Values(cache_layout::hsd, cache_layout::shd, cache_layout::hds,
                                                              cache_layout::llama, cache_layout::paged),
                                            ::testing::Values(lagkv::dtype::f32, lagkv::dtype::f16, lagkv::dtype::bf16)),
                         [](const ::testing::TestParamInfo<guard_param>& info) {
                           return std::string(layout_name(std::get<0>(info.param))) + "_" +
                                  lagkv::dtype_name(std::get<1>(info.param));
                         });

// ---- Capacity ---------------------------------------------------------------------------------------

TEST(Capacity, EverySlotIsUsableAndOneMoreIsAClearErrorWithTheCacheIntact) {
  lagkv::cache_config cfg;
  cfg.kv_heads = 2;
  cfg.head_dim = 4;
  cfg.capacity = 9;
  lagkv::kv_cache<lagkv::bf16> cache(cfg);  // no eviction: the cache fills up
  const auto k = lagkv_test::convert<lagkv::bf16>(lagkv_test::random_kv(1, 2, 9, 4));
  cache.append(0, lagkv::kv_input<lagkv::bf16>{k.data(), 5, lagkv::kv_layout::hsd(), 9},
               lagkv::kv_input<lagkv::bf16>{k.data(), 5, lagkv::kv_layout::hsd(), 9});
  try {
    cache.append(0, lagkv::kv_input<lagkv::bf16>{k.data(), 5, lagkv::kv_layout::hsd(), 9},
                 lagkv::kv_input<lagkv::bf16>{k.data(), 5, lagkv::kv_layout::hsd(), 9});
    FAIL() << "no error";
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "tokens=5: capacity overflow at layer=0 head=0 (holds 5, capacity=9)");
  }
  EXPECT_EQ(cache.length(0, 1), 5);
  EXPECT_EQ(cache.tokens_seen(0), 5);
  cache.append(0, lagkv::kv_input<lagkv::bf16>{k.data() + 5 * 4, 4, lagkv::kv_layout::hsd(), 9},
               lagkv::kv_input<lagkv::bf16>{k.data() + 5 * 4, 4, lagkv::kv_layout::hsd(), 9});
  EXPECT_EQ(cache.length(0, 0), 9);
  EXPECT_EQ(std::memcmp(cache.memory(0).k, k.data(), 2 * 9 * 4 * sizeof(lagkv::bf16)), 0);
  EXPECT_THROW(cache.next_keys(0, 1, 1), lagkv::error);
  EXPECT_THROW(cache.commit(0, 1), lagkv::error);
  EXPECT_EQ(cache.length(0, 1), 9);
}

// ---- Allocation failure -------------------------------------------------------------------------------

TEST(AllocationFailure, HugeOwnedCacheThrowsBadAllocAndLeaksNothing) {
  lagkv::cache_config cfg;
  cfg.kv_heads = 8;
  cfg.head_dim = 128;
  cfg.capacity = index_t{1} << 36;  // 2^46 floats per tensor: no overflow, but no such memory
  failing_allocations oom(-1, std::size_t{1} << 30);  // like a machine with 1 GiB per allocation
  EXPECT_THROW(lagkv::kv_cache<float> c(cfg, lagkv::make_policy("lagkv")), std::bad_alloc);
}

lagkv::any_policy lagkv_small() {
  lagkv::policy_spec s;
  s.sink = 2, s.lag = 4;
  return lagkv::make_policy("lagkv", s);
}

TEST(AllocationFailure, ConstructionFailingAtEveryAllocationThrowsBadAlloc) {
  int failures = 0;
  for (long k = 0;; ++k) {
    try {
      failing_allocations oom(k);
      lagkv::kv_cache<lagkv::f16> c(contract_fixture::config(), lagkv_small());
    } catch (const std::bad_alloc&) {
      ++failures;
      continue;
    }
    break;  // the k-th allocation is beyond the last one: construction succeeded
  }
  EXPECT_GE(failures, 5);  // every allocation was a failure point; ASan/LSan checks nothing leaked
}

TEST(AllocationFailure, SetPolicyAndClearFailingAtEveryAllocationLeaveTheCacheIntact) {
  contract_fixture f;
  f.cache.clear(2);
  const auto before = f.snapshot();
  int failures = 0;
  for (long k = 0;; ++k) {
    bool failed = false;
    try {
      failing_allocations oom(k);
      f.cache.set_policy(2, lagkv_small());
    } catch (const std::bad_alloc&) {
      failed = true;
    }
    if (!failed) break;
    ++failures;
    ASSERT_TRUE(f.snapshot() == before) << "set_policy failing at allocation " << k << " changed the cache";
  }
  EXPECT_GE(failures, 3);
  EXPECT_STREQ(f.cache.policy(2).name(), "lagkv");
  const auto with_policy = f.snapshot();
  failures = 0;
  for (long k = 0;; ++k) {
    bool failed = false;
    try {
      failing_allocations oom(k);
      f.cache.clear(1);
    } catch (const std::bad_alloc&) {
      failed = true;
    }
    if (!failed) break;
    ++failures;
    ASSERT_TRUE(f.snapshot() == with_policy) << "clear failing at allocation " << k << " changed the cache";
  }
  EXPECT_GE(failures, 2);
  EXPECT_EQ(f.cache.length(1, 0), 0);
}

// Appends and compressions promise not to allocate (cache.hpp): with every allocation failing,
// a warmed-up thread keeps appending and compressing (LagKV, H2O, L2 head-wise budgets).
TEST(AllocationFailure, WarmAppendsAndCompressionsDoNotAllocate) {
  contract_fixture f;
  lagkv::policy_spec s;
  s.budget = 16, s.share_heads = true;
  f.cache.set_policy(2, lagkv::make_policy("l2norm", s));
  for (index_t t = 0; t < 30; ++t) f.cache.append(2, f.input(t, 1), f.input(t, 1));  // layer 2 at its budget
  f.cache.compress_all();
  const long before = alloc_control::allocations.load();
  {
    failing_allocations oom(0);  // every allocation from here on fails
    for (index_t t = 30; t < 36; ++t)
      for (index_t l = 0; l < kL; ++l) f.cache.append(l, f.input(t, 1), f.input(t, 1), f.extras(t));
    f.cache.compress_all();
  }
  EXPECT_EQ(alloc_control::allocations.load(), before);
  EXPECT_EQ(f.cache.tokens_seen(1), 36);
}

// The same promise on a thread that has never scored before (an engine's new worker, or one
// of thread_pool's): its first compression must not need memory either. Run in a child process
// (a death-test) because a violation is std::terminate: an allocation failing inside the
// cache's noexcept mutation phase. (Was a finding, see docs/reliability.md "Fixed": the SIMD
// scorer's thread-local workspace grew on a thread's first compression, inside that phase; the
// policies now score through scratch of their own, reserved when they are bound.)
TEST(AllocationFailure, FirstCompressionOnAFreshThreadDoesNotAllocate) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        contract_fixture f;
        f.cache.clear(1);
        for (index_t t = 0; t < 9; ++t) f.cache.append(1, f.input(t, 1), f.input(t, 1));  // LagKV compresses at 10
        std::thread fresh([&] {
          failing_allocations oom(0);
          f.cache.append(1, f.input(9, 1), f.input(9, 1));
        });
        fresh.join();
        std::exit(f.cache.compressions(1) == 1 ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

// ... and on a warm thread when the data sends LagKV's scorer to its exact (double) fallback:
// a reference channel whose range is a denormal (1/range overflows float). (Was a finding: the
// exact fallback allocated its scratch; it now uses the policy's reserved scratch.)
TEST(AllocationFailure, WarmCompressionOnTheExactFallbackPathDoesNotAllocate) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        contract_fixture f;
        f.cache.append(1, f.input(30, 1), f.input(30, 1));  // the fixture's thread has scored already
        std::vector<float> tiny(f.k);
        for (index_t h = 0; h < kH; ++h)
          for (index_t t = 0; t < kC; ++t) tiny[static_cast<std::size_t>((h * kC + t) * kD)] = (t % 2 ? 2e-39f : 1e-39f);
        f.cache.clear(1);
        for (index_t t = 0; t < 9; ++t)
          f.cache.append(1, lagkv::kv_input<float>{tiny.data() + t * kD, 1, lagkv::kv_layout::hsd(), kC}, f.input(t, 1));
        {
          failing_allocations oom(0);
          f.cache.append(1, lagkv::kv_input<float>{tiny.data() + 9 * kD, 1, lagkv::kv_layout::hsd(), kC}, f.input(9, 1));
        }
        std::exit(f.cache.compressions(1) == 1 ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

// The same on a fresh thread for every scoring policy and every engine layout (the transposed V
// of llama.cpp makes the scorers copy rows; paged memory walks a block table), with data that
// sends LagKV's scorer to its exact fallback in both tensors: a K channel whose reference range
// is a denormal (1/range overflows float) and a V token 1e30 away (stds far above 2^12).
using fresh_param = std::tuple<std::string, cache_layout>;  // policy name, memory

// Runs in the death test's child: exits 0 when the fresh thread's compressing append succeeded.
[[noreturn]] void compress_on_a_fresh_thread(const std::string& policy, cache_layout layout) {
  constexpr index_t H = 2, D = 8, C = 32, B = 4;
  lagkv::cache_config cfg;
  cfg.kv_heads = H, cfg.head_dim = D, cfg.capacity = C;
  lagkv::policy_spec spec;
  spec.sink = 2, spec.lag = 4;
  if (policy == "l2norm") spec.budget = 12;
  std::vector<float> k = lagkv_test::random_kv(11, H, C, D), v = lagkv_test::random_kv(12, H, C, D);
  for (index_t h = 0; h < H; ++h)
    for (index_t t = 0; t < C; ++t) k[static_cast<std::size_t>((h * C + t) * D)] = t % 2 ? 2e-39f : 1e-39f;
  v[static_cast<std::size_t>(3 * D + 5)] = 1e30f;  // head 0, token 3 (scored chunk 0), channel 5
  const lagkv_test::engine_memory<float> mem(layout, 1, H, C, D, B);
  lagkv::kv_cache<float> cache = layout == cache_layout::owned
                                     ? lagkv::kv_cache<float>(cfg, lagkv::make_policy(policy, spec))
                                     : lagkv::kv_cache<float>(cfg, mem.layers, lagkv::make_policy(policy, spec));
  auto in = [&](const std::vector<float>& x, index_t first, index_t n) {
    return lagkv::kv_input<float>{x.data() + first * D, n, lagkv::kv_layout::hsd(), C};
  };
  const index_t before = policy == "l2norm" ? 12 : 9;  // the next append compresses
  for (index_t t = 0; t < before; ++t) cache.append(0, in(k, t, 1), in(v, t, 1));
  if (cache.compressions(0) != 0) std::exit(4);
  std::thread fresh([&] {
    failing_allocations oom(0);  // every allocation fails: one would terminate (noexcept phase)
    cache.append(0, in(k, before, 1), in(v, before, 1));
  });
  fresh.join();
  std::exit(cache.compressions(0) == 1 ? 0 : 3);
}

class FreshThreadCompression : public ::testing::TestWithParam<fresh_param> {};

TEST_P(FreshThreadCompression, DoesNotAllocate) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(compress_on_a_fresh_thread(std::get<0>(GetParam()), std::get<1>(GetParam())),
              ::testing::ExitedWithCode(0), "");
}

INSTANTIATE_TEST_SUITE_P(
    EveryPolicyAndLayout, FreshThreadCompression,
    ::testing::Combine(::testing::Values("lagkv", "l2norm-chunked", "l2norm"),
                       ::testing::Values(cache_layout::owned, cache_layout::llama, cache_layout::paged)),
    [](const ::testing::TestParamInfo<fresh_param>& info) {
      std::string n = std::get<0>(info.param) + "_" + layout_name(std::get<1>(info.param));
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

// paged_layer (one sequence's layer in an engine's block pool) scores through the same policies:
// its compaction on a fresh thread needs no memory either (fp16; release_blocks = false, so the
// append has no freed-block list to fill).
[[noreturn]] void paged_compress_on_a_fresh_thread() {
  constexpr index_t H = 2, D = 8, B = 4, N = 32;
  lagkv::paged_config cfg;
  cfg.block_size = B, cfg.kv_heads = H, cfg.head_dim = D, cfg.max_tokens = N, cfg.num_blocks = N / B;
  cfg.release_blocks = false;
  std::vector<lagkv::f16> kpool(static_cast<std::size_t>(N * H * D)), vpool(kpool.size());
  lagkv::policy_spec spec;
  spec.sink = 2, spec.lag = 4;
  lagkv::paged_layer<lagkv::f16> layer(cfg, kpool.data(), vpool.data(), lagkv::make_policy("lagkv", spec));
  std::vector<std::int32_t> ids(N / B);
  for (index_t b = 0; b < N / B; ++b) ids[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(N / B - 1 - b);
  lagkv::block_table table{ids.data(), N / B};
  const auto k = lagkv_test::convert<lagkv::f16>(lagkv_test::random_kv(41, N, H, D));  // [tokens, H, D]
  const auto v = lagkv_test::convert<lagkv::f16>(lagkv_test::random_kv(42, N, H, D));
  for (index_t t = 0; t < 9; ++t) layer.append(k.data() + t * H * D, v.data() + t * H * D, 1, table);
  if (layer.compressions() != 0) std::exit(4);
  std::thread fresh([&] {
    failing_allocations oom(0);
    layer.append(k.data() + 9 * H * D, v.data() + 9 * H * D, 1, table);
  });
  fresh.join();
  std::exit(layer.compressions() == 1 ? 0 : 3);
}

TEST(AllocationFailure, PagedLayerCompressionOnAFreshThreadDoesNotAllocate) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(paged_compress_on_a_fresh_thread(), ::testing::ExitedWithCode(0), "");
}

// ---- Scoring scratch: reserved, a scoring call allocates nothing -----------------------------------
// simd::scratch (and simd::q8_0_scratch) reserved for a shape make every scoring entry point
// allocation-free on every target, exact fallbacks included; the results equal those computed
// with the per-thread scratch. (Checked with every allocation failing: one would throw.)

using lagkv_test::target_names;

using scratch_param = std::tuple<std::string, lagkv::dtype, bool>;  // target, dtype, strided rows
class ReservedScratch : public ::testing::TestWithParam<scratch_param> {};

template <class T>
void check_reserved_scratch(bool strided) {
  constexpr index_t D = 12, lag = 8, chunks = 3, n = (chunks + 1) * lag, l2_rows = 40;
  // Rows of a [D, tokens] (transposed, like view_hds) or [tokens, D] buffer; two data sets:
  // ordinary values, and values that take the exact path: a K channel whose range is a denormal
  // (fp32, bf16; 1/range overflows float), a V outlier 60000 against a reference range of 2^-7
  // (stds ~1e6 > 2^12), and a NaN token.
  for (int exact = 0; exact < 2; ++exact) {
    std::vector<float> kf = lagkv_test::random_kv(21, 1, l2_rows, D), vf = lagkv_test::random_kv(22, 1, l2_rows, D);
    if (exact) {
      for (index_t t = 0; t < l2_rows; ++t)
        kf[static_cast<std::size_t>(t * D + 2)] = std::is_same_v<T, lagkv::f16> ? 1.0f : (t % 2 ? 2e-39f : 1e-39f);
      for (index_t t = lag; t < 2 * lag + 3; ++t)
        vf[static_cast<std::size_t>(t * D + 7)] = t == lag ? 1.0078125f : 1.0f;
      vf[static_cast<std::size_t>(5 * D + 7)] = 60000.0f;
      kf[static_cast<std::size_t>(9 * D + 1)] = NAN;
    }
    auto store = [&](const std::vector<float>& x, std::vector<T>& mem) {
      mem.resize(x.size());
      for (index_t t = 0; t < l2_rows; ++t)
        for (index_t c = 0; c < D; ++c)
          mem[static_cast<std::size_t>(strided ? c * l2_rows + t : t * D + c)] =
              lagkv::from_float<T>(x[static_cast<std::size_t>(t * D + c)]);
      return strided ? lagkv::view_hds<const T>(mem.data(), 1, D, l2_rows, 0, l2_rows)
                     : lagkv::kv_view<const T>(mem.data(), l2_rows, D, D);
    };
    std::vector<T> km, vm;
    const lagkv::kv_view<const T> k = store(kf, km), v = store(vf, vm);
    std::vector<float> seq(chunks * lag), one(lag), l2(l2_rows), seq_want(seq.size()), one_want(lag), l2_want(l2_rows);
    lagkv::dispatch::lagkv_sequence_scores<T>(k.slice(0, n), v.slice(0, n), lag, chunks, 0.5, seq_want.data());
    lagkv::dispatch::lagkv_chunk_scores<T>(k.slice(0, lag), k.slice(lag, lag + 3), v.slice(0, lag),
                                           v.slice(lag, lag + 3), 0.5, one_want.data());
    lagkv::dispatch::l2norm_scores<T>(k, l2_want.data());
    lagkv::simd::scratch sc;
    sc.reserve(lagkv::dtype_traits<T>::tag, lag + 3, D, strided);
    sc.reserve(lagkv::dtype_traits<T>::tag, l2_rows, D, strided);  // reservations accumulate
    lagkv::simd::scratch copy(sc);  // copies are reserved like their source
    {
      failing_allocations oom(0);
      EXPECT_NO_THROW(
          lagkv::dispatch::lagkv_sequence_scores<T>(k.slice(0, n), v.slice(0, n), lag, chunks, 0.5, seq.data(), sc));
      EXPECT_NO_THROW(lagkv::dispatch::lagkv_chunk_scores<T>(k.slice(0, lag), k.slice(lag, lag + 3), v.slice(0, lag),
                                                             v.slice(lag, lag + 3), 0.5, one.data(), sc));
      lagkv::simd::scratch moved(std::move(copy));
      EXPECT_NO_THROW(lagkv::dispatch::l2norm_scores<T>(k, l2.data(), moved));
    }
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      for (std::size_t i = 0; i < a.size(); ++i)
        if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0 && !(std::isnan(a[i]) && std::isnan(b[i]))) return false;
      return true;
    };
    EXPECT_TRUE(same(seq, seq_want)) << "exact=" << exact;
    EXPECT_TRUE(same(one, one_want)) << "exact=" << exact;
    EXPECT_TRUE(same(l2, l2_want)) << "exact=" << exact;
  }
}

TEST_P(ReservedScratch, ScoringAllocatesNothingAndEqualsThePerThreadScratch) {
  lagkv::simd::scoped_target use(lagkv_test::target_named(std::get<0>(GetParam())));
  const bool strided = std::get<2>(GetParam());
  lagkv::visit_dtype(std::get<1>(GetParam()), [&](auto tag) { check_reserved_scratch<decltype(tag)>(strided); });
}

INSTANTIATE_TEST_SUITE_P(EveryTargetDtypeAndLayout, ReservedScratch,
                         ::testing::Combine(::testing::ValuesIn(target_names()),
                                            ::testing::Values(lagkv::dtype::f32, lagkv::dtype::f16, lagkv::dtype::bf16),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<scratch_param>& info) {
                           return std::get<0>(info.param) + "_" + lagkv::dtype_name(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_strided" : "_contiguous");
                         });

class ReservedQ8Scratch : public ::testing::TestWithParam<std::string> {};  // a target name

TEST_P(ReservedQ8Scratch, ScoringAllocatesNothingExactPathIncluded) {
  lagkv::simd::scoped_target use(lagkv_test::target_named(GetParam()));
  constexpr index_t D = 64, lag = 8, chunks = 3, n = (chunks + 1) * lag, nb = D / 32;
  const std::vector<float> x = lagkv_test::random_kv(31, 1, n, D), y = lagkv_test::random_kv(32, 1, n, D);
  std::vector<lagkv::block_q8_0> kq(static_cast<std::size_t>(n * nb)), vq(kq.size());
  lagkv::quantize_q8_0(x.data(), n * D, kq.data());
  lagkv::quantize_q8_0(y.data(), n * D, vq.data());
  kq[static_cast<std::size_t>(3 * nb)].d.bits = 0x7c00;  // +Inf scale: token 3 of chunk 0 -> exact path
  vq[static_cast<std::size_t>(20 * nb + 1)].d.bits = 0x7c00;  // and in V (chunk 2, chunk 1's reference)
  const auto k = lagkv::view_q8_hsd(kq.data(), 1, n, D, 0, n), v = lagkv::view_q8_hsd(vq.data(), 1, n, D, 0, n);
  std::vector<float> seq(chunks * lag), one(lag), l2(n), seq_want(seq.size()), one_want(lag), l2_want(n);
  lagkv::dispatch::lagkv_sequence_scores(k, v, lag, chunks, 1.0, seq_want.data());
  lagkv::dispatch::lagkv_chunk_scores(k.slice(0, lag), k.slice(lag, lag), v.slice(0, lag), v.slice(lag, lag), 1.0,
                                      one_want.data());
  lagkv::dispatch::l2norm_scores(k, l2_want.data());
  lagkv::simd::q8_0_scratch sc;
  sc.reserve(n, D);
  {
    failing_allocations oom(0);
    EXPECT_NO_THROW(lagkv::dispatch::lagkv_sequence_scores(k, v, lag, chunks, 1.0, seq.data(), sc));
    EXPECT_NO_THROW(lagkv::dispatch::lagkv_chunk_scores(k.slice(0, lag), k.slice(lag, lag), v.slice(0, lag),
                                                        v.slice(lag, lag), 1.0, one.data(), sc));
    EXPECT_NO_THROW(lagkv::dispatch::l2norm_scores(k, l2.data(), sc));
  }
  auto same = [](float a, float b) { return a == b || (std::isnan(a) && std::isnan(b)); };
  for (std::size_t i = 0; i < seq.size(); ++i) EXPECT_TRUE(same(seq[i], seq_want[i])) << i;
  for (std::size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(same(one[i], one_want[i])) << i;
  for (std::size_t i = 0; i < l2.size(); ++i) EXPECT_TRUE(same(l2[i], l2_want[i])) << i;
  EXPECT_TRUE(std::isnan(seq[3]));  // the Inf-scale token: the exact path's NaN semantics
}

INSTANTIATE_TEST_SUITE_P(EveryTarget, ReservedQ8Scratch, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// ---- Findings of the SIMD fuzzer ------------------------------------------------------------------
// fuzz_simd, 2026-11-25 (tests/fuzz/findings/simd/regression_huge_normalised_avx512_fp32): a chunk
// whose normalised values reach ~1e16 (a channel 4e16 away from a reference of range 1). The
// oracle's stds of the two tokens differ by ~300, so it scores them exactly 0 and 1; in float the
// stds are equal and every target scores 0.5 / 0.5 — and a top-1 keeps the other token.
// dispatch.hpp promises the oracle's semantics within a relative tolerance and recomputes a
// chunk with the oracle where float cannot represent it; such chunks (a std above 2^12) now
// take that path on every target.
class SimdFinding : public ::testing::TestWithParam<std::string> {};  // a target name

TEST_P(SimdFinding, HugeNormalisedValuesScoreAndSelectAsTheOracle) {
  lagkv::simd::target t{};
  ASSERT_TRUE(lagkv::simd::parse_target(GetParam().c_str(), &t));
  lagkv::simd::scoped_target use(t);
  const float chunk[8] = {0.f, 0.f, 4e16f, 0.f, /* token 1 */ 0.f, -2000.f, 4e16f, 0.f};
  const float ref[8] = {0.f, 0.f, 0.f, 0.f, /* token 1 */ 1.f, 1.f, 1.f, 1.f};
  const lagkv::kv_view<const float> c(chunk, 2, 4, 4), r(ref, 2, 4, 4);
  float want[2], got[2];
  lagkv::reference::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, want);
  lagkv::dispatch::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, got);
  ASSERT_EQ(want[0], 0.0f);
  ASSERT_EQ(want[1], 1.0f);
  EXPECT_NEAR(got[0], want[0], 1e-3);
  EXPECT_NEAR(got[1], want[1], 1e-3);
  EXPECT_EQ(lagkv::select_top_k(got, 2, 1), lagkv::select_top_k(want, 2, 1));
}

// Rows far outside their reference's range with a small spread: every channel of a token Y
// ranges (of that channel) away, the tokens differing by a few ranges. Their stds are O(1..50),
// below the 2^12 that sends a chunk to the oracle, but the float kernels form y = (x - lo) * inv
// with a relative error of a few eps, i.e. an absolute error ~eps * Y in every channel.
std::vector<float> far_rows(double y_offset, std::vector<float>& ref) {
  constexpr index_t D = 8, n = 4;
  ref.assign(2 * D, 0.0f);
  std::vector<float> chunk(static_cast<std::size_t>(n * D));
  for (index_t c = 0; c < D; ++c) {
    const double lo = 0.1 * static_cast<double>(c) + 0.05, range = 1.0 + 0.37 * static_cast<double>(c);
    ref[static_cast<std::size_t>(c)] = static_cast<float>(lo);
    ref[static_cast<std::size_t>(D + c)] = static_cast<float>(lo + range);
    for (index_t t = 0; t < n; ++t)
      chunk[static_cast<std::size_t>(t * D + c)] =
          static_cast<float>(lo + range * (y_offset + 3.0 * static_cast<double>((t * 5 + c * 3) % 7 - 3)));
  }
  return chunk;
}

// Up to Y ~ 1e4 the float error stays inside the tolerance the tests derive (and far below it).
TEST_P(SimdFinding, FarRowsWithSmallSpreadStayWithinTheToleranceUpTo1e4) {
  lagkv::simd::target t{};
  ASSERT_TRUE(lagkv::simd::parse_target(GetParam().c_str(), &t));
  lagkv::simd::scoped_target use(t);
  std::vector<float> ref;
  const std::vector<float> chunk = far_rows(1e4, ref);
  const lagkv::kv_view<const float> c(chunk.data(), 4, 8, 8), r(ref.data(), 2, 8, 8);
  float want[4], got[4];
  lagkv::reference::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, want);
  lagkv::dispatch::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, got);
  namespace sd = lagkv_fuzz::simd_detail;
  const double tol = sd::lagkv_tolerance(8, 4, sd::normalised_max<float>(c, r));
  ASSERT_LE(tol, sd::kModelLimit);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[i], want[i], tol * want[i]) << "token " << i;
}

// Was open (docs/reliability.md, "Findings" 3): at Y ~ 1e8 the float error of the stds is O(1)
// and more: here three equal tokens and a fourth 10 ranges off in one channel (D = 4, every
// channel ~1e8 ranges from the reference) score 0.26 / 0.26 / 0.26 / 0.22 in the oracle and
// scored 0.064 / 0.064 / 0.064 / 0.81 on every float target, a top-1 keeping token 3 instead of 0.
// Fixed: the kernels' two-pass path reports +Inf for rows with |mean(y)| > kFloatMaxMean and
// finish_chunk sends their chunk to the oracle.
TEST_P(SimdFinding, FarRowsWithSmallSpreadScoreAsTheOracle) {
  lagkv::simd::target t{};
  ASSERT_TRUE(lagkv::simd::parse_target(GetParam().c_str(), &t));
  lagkv::simd::scoped_target use(t);
  const float ref[8] = {-2.75f, -0.625f, 6.0f, 3.375f, /* token 1 */ -2.390625f, -0.171875f, 6.390625f, 3.828125f};
  const float chunk[16] = {35937496.f, 45312500.f, 39062508.f, 45312504.f, 35937496.f, 45312500.f,
                           39062508.f, 45312504.f, 35937496.f, 45312500.f, 39062508.f, 45312504.f,
                           35937496.f, 45312500.f, 39062504.f, 45312504.f};
  const lagkv::kv_view<const float> c(chunk, 4, 4, 4), r(ref, 2, 4, 4);
  float want[4], got[4];
  lagkv::reference::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, want);
  lagkv::dispatch::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, got);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[i], want[i], 1e-3) << "token " << i;
  EXPECT_EQ(lagkv::select_top_k(got, 4, 1), lagkv::select_top_k(want, 4, 1));
}

// The far-row routing over the whole range of offsets, in the single-chunk and the sequence
// entry points, fp32 and fp16 (fp16 reaches 1e7 ranges with a reference range of 1e-3).
TEST_P(SimdFinding, FarRowsAtEveryOffsetScoreAsTheOracleInBothEntryPoints) {
  lagkv::simd::target t{};
  ASSERT_TRUE(lagkv::simd::parse_target(GetParam().c_str(), &t));
  lagkv::simd::scoped_target use(t);
  for (const double y : {1e4, 1e5, 1e6, 1e7, 1e8, -1e8}) {  // all beyond kFloatMaxMean = 4096
    std::vector<float> ref;
    const std::vector<float> chunk = far_rows(y, ref);
    // Sequence layout: chunk (4 tokens) then its reference padded to lag = 4 tokens.
    std::vector<float> seq(chunk);
    seq.insert(seq.end(), ref.begin(), ref.end());
    seq.insert(seq.end(), ref.begin(), ref.end());
    const lagkv::kv_view<const float> c(chunk.data(), 4, 8, 8), r(seq.data() + 32, 4, 8, 8);
    float want[4], got[4], got_seq[4];
    lagkv::reference::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, want);
    lagkv::dispatch::lagkv_chunk_scores<float>(c, r, {}, {}, 0.0, got);
    lagkv::dispatch::lagkv_sequence_scores<float>(lagkv::kv_view<const float>(seq.data(), 8, 8, 8), {}, 4, 1, 0.0,
                                                  got_seq);
    for (int i = 0; i < 4; ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-6) << "Y=" << y << " token " << i;
      EXPECT_NEAR(got_seq[i], want[i], 1e-6) << "Y=" << y << " token " << i << " (sequence)";
    }
  }
  // fp16: reference range 2^-10 in every channel, tokens around 2^13 = 2^23 ranges away.
  std::vector<lagkv::f16> ref16, chunk16;
  for (int c = 0; c < 8; ++c) {
    ref16.push_back(lagkv::to_f16(0.0f));
  }
  for (int c = 0; c < 8; ++c) ref16.push_back(lagkv::to_f16(0x1p-10f));
  for (int t2 = 0; t2 < 4; ++t2)
    for (int c = 0; c < 8; ++c) chunk16.push_back(lagkv::to_f16(8192.0f + 8.0f * static_cast<float>((t2 * 5 + c * 3) % 7)));
  const lagkv::kv_view<const lagkv::f16> c16(chunk16.data(), 4, 8, 8), r16(ref16.data(), 2, 8, 8);
  float want16[4], got16[4];
  lagkv::reference::lagkv_chunk_scores<lagkv::f16>(c16, r16, {}, {}, 0.0, want16);
  lagkv::dispatch::lagkv_chunk_scores<lagkv::f16>(c16, r16, {}, {}, 0.0, got16);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(got16[i], want16[i], 1e-6) << "fp16 token " << i;
}

INSTANTIATE_TEST_SUITE_P(EveryTarget, SimdFinding, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& info) { return info.param; });

// ---- Fuzzer seeds and findings, replayed --------------------------------------------------------------

// Inputs under tests/fuzz/, as paths relative to it: `named` lists the hand-made seeds and
// regression inputs (corpus/<name>/seed_*, corpus/<name>/regression_*, and every file of
// findings/<name>/, which the bounded fuzz runs do not start from); otherwise the grown corpus.
std::vector<std::string> corpus_files(const std::string& name, bool named) {
  std::vector<std::string> out;
  const std::filesystem::path root = std::filesystem::path(LAGKV_SOURCE_DIR) / "tests" / "fuzz";
  for (const std::string sub : {"corpus", "findings"}) {
    const std::filesystem::path dir = root / sub / name;
    if (!std::filesystem::is_directory(dir)) continue;
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      const std::string f = e.path().filename().string();
      const bool is_named = sub == "findings" || f.rfind("seed_", 0) == 0 || f.rfind("regression_", 0) == 0;
      if (is_named == named) out.push_back(sub + "/" + name + "/" + f);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<std::uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::string corpus_path(const std::string& relative) { return std::string(LAGKV_SOURCE_DIR) + "/tests/fuzz/" + relative; }

std::string test_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param;
  for (char& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

class CacheFuzzInput : public ::testing::TestWithParam<std::string> {};

TEST_P(CacheFuzzInput, CacheEqualsThePlainModel) {
  const auto bytes = read_bytes(corpus_path(GetParam()));
  ASSERT_FALSE(bytes.empty());
  lagkv_fuzz::fuzz_stats stats;
  try {
    lagkv_fuzz::run_cache_program(bytes.data(), bytes.size(), stats);
  } catch (const lagkv_fuzz::mismatch& e) {
    FAIL() << e.what();
  }
  EXPECT_GE(stats.ops, 1u);
}

INSTANTIATE_TEST_SUITE_P(Corpus, CacheFuzzInput, ::testing::ValuesIn(corpus_files("cache", true)), test_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CacheFuzzInput);

TEST(CacheFuzzCorpus, EveryGrownInputReplaysClean) {
  const auto files = corpus_files("cache", false);
  lagkv_fuzz::fuzz_stats stats;
  for (const auto& f : files) {
    const auto bytes = read_bytes(corpus_path(f));
    try {
      lagkv_fuzz::run_cache_program(bytes.data(), bytes.size(), stats);
    } catch (const lagkv_fuzz::mismatch& e) {
      ADD_FAILURE() << f << ": " << e.what();
    }
  }
  EXPECT_GE(files.size(), 100u);
  EXPECT_GE(stats.compress_events, 1000u);
}

class SimdFuzzInput : public ::testing::TestWithParam<std::string> {};

TEST_P(SimdFuzzInput, EveryTargetMatchesTheOracle) {
  const auto bytes = read_bytes(corpus_path(GetParam()));
  lagkv_fuzz::simd_stats stats;
  try {
    lagkv_fuzz::run_simd_program(bytes.data(), bytes.size(), stats);
  } catch (const lagkv_fuzz::simd_mismatch& e) {
    FAIL() << e.what();
  }
  EXPECT_GE(stats.scores, 1u);
}

INSTANTIATE_TEST_SUITE_P(Corpus, SimdFuzzInput, ::testing::ValuesIn(corpus_files("simd", true)), test_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(SimdFuzzInput);

TEST(SimdFuzzCorpus, EveryGrownInputReplaysClean) {
  lagkv_fuzz::simd_stats stats;
  for (const auto& f : corpus_files("simd", false)) {
    const auto bytes = read_bytes(corpus_path(f));
    try {
      lagkv_fuzz::run_simd_program(bytes.data(), bytes.size(), stats);
    } catch (const lagkv_fuzz::simd_mismatch& e) {
      ADD_FAILURE() << f << ": " << e.what();
    }
  }
  SUCCEED();
}

}  // namespace
