#pragma once
// The cache fuzz program: bytes -> a cache configuration (valid or not) and a sequence of
// operations, run against kv_cache<T> and against a deliberately plain model of it. Shared by
// the libFuzzer harness (tests/fuzz/fuzz_cache.cpp) and the gtest replay of the seed corpus and
// of every input a fuzzer found (tests/test_reliability.cpp).
//
// The model keeps, per (layer, head), a vector of rows {position, K bytes, V bytes, H2O
// accumulated attention}; appending pushes rows, compressing rebuilds the vector from a ranked
// pick. It shares no code with the cache's data path (no views, no compaction, no select): it
// predicts whether every operation must fail, and after every operation the cache must hold
// exactly the model's rows, positions and counters. Scores come from the scorers that define
// them — dispatch::lagkv_chunk_scores / dispatch::l2norm_scores on a contiguous copy (the SIMD
// kernels, themselves fuzzed against the scalar oracle by fuzz_simd), the same double-precision
// attention formula as H2O, random_policy::token_score — so any difference is the cache's.
//
// After every operation it also checks, independently of kv_view:
//  - memory bounds: every element of engine memory (guard bytes before and after each buffer,
//    unused paged blocks, and every (head, slot) at or above that head's high-water mark) still
//    holds the fill pattern — the cache never writes outside the views it was given;
//  - strong guarantee: an operation that throws leaves every byte of K/V memory (guards
//    included), lengths, positions, counters and policy state exactly as before.
// Any difference throws lagkv_fuzz::mismatch with a description.
//
// Input format (all decisions are one byte, modulo a small table; a short input reads zeros):
//   bytes [0, 32): header (fixed offsets, see decode_header / decode_policy)
//   bytes [32, n): operations, see run_ops.
#include <lagkv/cache.hpp>
#include <lagkv/policy/any.hpp>
#include <lagkv/policy/h2o.hpp>
#include <lagkv/policy/lagkv.hpp>
#include <lagkv/policy/random.hpp>
#include <lagkv/simd/dispatch.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

// The harness's own checking loops stay out of libFuzzer's coverage feedback (it should steer
// by the library's branches) and out of its per-comparison hooks (they dominated the run time).
#if defined(__clang__) && __clang_major__ >= 13
#define LAGKV_FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage")))
#else
#define LAGKV_FUZZ_NO_COVERAGE
#endif

namespace lagkv_fuzz {

using lagkv::index_t;

/// The cache and the model disagree (or a bound / the strong guarantee was violated).
struct mismatch : std::logic_error {
  using std::logic_error::logic_error;
};

/// Counters over all inputs run in this process (printed by the fuzzer at exit).
struct fuzz_stats {
  std::uint64_t inputs = 0;
  std::uint64_t configs_rejected = 0;  // constructions that failed as predicted
  std::uint64_t ops = 0;               // cache API calls made (construction included)
  std::uint64_t ops_rejected = 0;      // ... of which threw lagkv::error as predicted
  std::uint64_t compress_events = 0;   // heads compressed (observer calls)
  std::uint64_t checks = 0;            // full state comparisons
};

inline std::size_t sz(index_t x) { return static_cast<std::size_t>(x); }

template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  throw mismatch(s.str());
}

// ---- Input ----------------------------------------------------------------------------------

class byte_reader {
 public:
  byte_reader(const std::uint8_t* data, std::size_t size) : d_(data), n_(size) {}
  std::uint8_t u8() { return i_ < n_ ? d_[i_++] : std::uint8_t{0}; }
  std::uint16_t u16() {
    const std::uint16_t lo = u8();
    return static_cast<std::uint16_t>(lo | (u8() << 8));
  }
  /// The next `n` bytes into `out`, zeros past the end: what n calls of u8() return.
  void read(std::uint8_t* out, std::size_t n) {
    const std::size_t k = std::min(n, n_ - i_);
    if (k > 0) std::memcpy(out, d_ + i_, k);
    std::memset(out + k, 0, n - k);
    i_ += k;
  }
  bool done() const { return i_ >= n_; }
  std::size_t pos() const { return i_; }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
  std::size_t i_ = 0;
};

/// splitmix64: the data generator (seeded from the input, so runs are reproducible).
struct rng {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  index_t below(index_t n) { return static_cast<index_t>(next() % static_cast<std::uint64_t>(n)); }
};

template <class X, std::size_t N>
X pick(std::uint8_t b, const X (&table)[N]) {
  return table[b % N];
}

// ---- Policies: what make_policy gets, and what the model makes of it ---------------------------

enum class pkind { none, lagkv, l2norm, l2chunk, h2o, streaming, random, unknown };

struct policy_desc {
  pkind kind = pkind::none;
  std::string name = "none";
  lagkv::policy_spec spec;
  // Effective parameters (make_policy's defaults applied).
  index_t sink = 0, lag = 0, window = 0, budget = 0, interval = 1, min_per_head = 0;
  double ratio = 0.0, svr = 0.0;
  std::uint64_t seed = 0;
  bool share = false;
  lagkv::gqa_reduce reduce = lagkv::gqa_reduce::sum;

  bool chunked() const { return kind == pkind::lagkv || kind == pkind::l2chunk; }
  bool budgeted() const {
    return kind == pkind::l2norm || kind == pkind::h2o || kind == pkind::random || kind == pkind::streaming;
  }
  index_t keep_per_chunk() const { return static_cast<index_t>(std::floor(ratio * static_cast<double>(lag))); }
  bool policy_skips(index_t layer) const {
    if (kind != pkind::l2norm && kind != pkind::l2chunk) return false;
    return std::find(spec.skip_layers.begin(), spec.skip_layers.end(), layer) != spec.skip_layers.end();
  }

  /// Whether make_policy accepts these parameters (the validate() rules, restated).
  bool valid_params() const {
    auto skips_ok = [&] {
      for (index_t l : spec.skip_layers)
        if (l < 0) return false;
      return true;
    };
    switch (kind) {
      case pkind::unknown: return false;
      case pkind::none: return true;
      case pkind::lagkv:
      case pkind::l2chunk:
        return lag >= 2 && ratio > 0.0 && ratio <= 1.0 && sink >= 0 && std::isfinite(svr) && svr >= 0.0 &&
               (kind == pkind::lagkv || skips_ok());
      case pkind::streaming: return sink >= 0 && window >= 0 && sink + window >= 1 && interval >= 1;
      case pkind::l2norm:
      case pkind::h2o:
      case pkind::random:
        if (kind == pkind::h2o && !(budget > 0 || spec.ratio.has_value())) return false;
        if (kind == pkind::l2norm && !skips_ok()) return false;
        return sink >= 0 && window >= 0 && budget >= 0 &&
               (budget > 0 || (std::isfinite(ratio) && ratio > 0.0 && ratio <= 1.0)) &&
               (budget == 0 || budget >= sink + window) && interval >= 1 && min_per_head >= 0 &&
               (budget == 0 || min_per_head <= budget);
    }
    return false;
  }
  /// Whether the policy accepts the cache shape (validate(cache_shape)).
  bool valid_for(index_t head_dim) const { return kind != pkind::lagkv || head_dim >= 2; }
};

/// 12 bytes -> a policy (possibly invalid).
inline policy_desc decode_policy(const std::uint8_t* b) {
  static const pkind kinds[] = {pkind::none,  pkind::lagkv,     pkind::l2norm, pkind::l2chunk, pkind::h2o,
                                pkind::streaming, pkind::random, pkind::lagkv,  pkind::h2o,     pkind::unknown};
  static const char* const names[] = {"none", "lagkv", "l2norm", "l2norm-chunked", "h2o", "streaming", "random", "?"};
  policy_desc p;
  p.kind = pick(b[0], kinds);
  p.name = p.kind == pkind::unknown ? std::string(b[0] & 0x80 ? "LagKV" : "") : names[static_cast<int>(p.kind)];
  lagkv::policy_spec& s = p.spec;
  // An entry of -99 means "leave unset" (make_policy's default applies).
  static const index_t sinks[] = {0, 1, 2, 3, 4, 5, 6, 8, 0, 2, -1, -99};
  static const index_t lags[] = {2, 3, 4, 5, 6, 7, 8, 12, 16, 4, 1, 0, -99};
  static const double ratios[] = {0.5, 0.25, 0.75, 1.0, 0.1, 0.34, 0.9, 0.5, 0.0, 1.5, NAN, -0.5, -99};
  static const double svrs[] = {1.0, 0.0, 0.5, 2.0, 0.25, 1.0, -1.0, INFINITY, -99};
  static const index_t windows[] = {0, 1, 2, 3, 4, 6, 0, 1, -1, -99};
  static const index_t intervals[] = {1, 2, 3, 4, 5, 1, 0, -99};
  static const index_t mins[] = {0, 1, 2, 3, 4, 6, 8, 0, -1, 50};
  const index_t sink = pick(b[1], sinks), lag = pick(b[2], lags), window = pick(b[6], windows),
                interval = pick(b[7], intervals);
  const double ratio = pick(b[3], ratios), svr = pick(b[4], svrs);
  if (sink != -99) s.sink = sink;
  if (lag != -99) s.lag = lag;
  if (ratio != -99) s.ratio = ratio;
  if (svr != -99) s.score_v_ratio = svr;
  const int bv = b[5] % 46;
  if (bv >= 2 && bv <= 41) s.budget = bv - 1;  // 1..40
  if (bv == 42) s.budget = -3;
  if (bv == 43) s.budget = 0;
  if (window != -99) s.window = window;
  if (interval != -99) s.interval = interval;
  s.seed = b[8];
  s.share_heads = (b[9] & 1) != 0;
  s.reduce = pick(static_cast<std::uint8_t>(b[9] >> 1),
                  {lagkv::gqa_reduce::sum, lagkv::gqa_reduce::mean, lagkv::gqa_reduce::max, lagkv::gqa_reduce::sum});
  if (b[9] & 8) s.skip_layers.push_back(pick(static_cast<std::uint8_t>(b[9] >> 4), {0, 1, 2, -1}));
  s.min_per_head = pick(b[10], mins);
  // Effective values, as make_policy fills them.
  switch (p.kind) {
    case pkind::lagkv:
    case pkind::l2chunk:
      p.sink = s.sink.value_or(16);
      p.lag = s.lag.value_or(1024);
      p.ratio = s.ratio.value_or(0.5);
      p.svr = p.kind == pkind::lagkv ? s.score_v_ratio.value_or(1.0) : 0.0;
      break;
    case pkind::streaming:
      p.sink = s.sink.value_or(4);
      p.window = s.window.value_or(1020);
      p.interval = s.interval.value_or(1);
      p.budget = p.sink + p.window;
      break;
    case pkind::l2norm:
    case pkind::h2o:
    case pkind::random:
      p.sink = s.sink.value_or(0);
      p.window = s.window.value_or(0);
      p.budget = s.budget.value_or(0);
      p.ratio = s.ratio ? *s.ratio : (p.kind == pkind::h2o ? 0.0 : 0.5);
      p.interval = s.interval.value_or(1);
      p.share = s.share_heads;
      p.min_per_head = s.min_per_head;
      p.seed = p.kind == pkind::random ? s.seed.value_or(0) : 0;
      p.reduce = s.reduce;
      break;
    case pkind::none:
    case pkind::unknown: break;
  }
  return p;
}

// ---- Memory layouts, addressed independently of kv_view --------------------------------------

enum class mem_layout { hsd, shd, hds, paged };

struct layout_desc {
  mem_layout kind = mem_layout::hsd;
  index_t block_size = 0;
  std::vector<std::int32_t> table;  // paged: logical block -> physical block
  index_t pool_blocks = 0;

  /// Element offset of (head, slot, channel) in a tensor of H heads, C slots, D channels.
  LAGKV_FUZZ_NO_COVERAGE
  index_t offset(index_t H, index_t C, index_t D, index_t h, index_t s, index_t c) const {
    switch (kind) {
      case mem_layout::hsd: return (h * C + s) * D + c;
      case mem_layout::shd: return (s * H + h) * D + c;
      case mem_layout::hds: return (h * D + c) * C + s;
      case mem_layout::paged:
        return ((static_cast<index_t>(table[sz(s / block_size)]) * block_size + s % block_size) * H + h) * D + c;
    }
    return 0;
  }
  index_t elements(index_t H, index_t C, index_t D) const {
    return kind == mem_layout::paged ? pool_blocks * block_size * H * D : H * C * D;
  }
  lagkv::kv_layout api() const {
    switch (kind) {
      case mem_layout::shd: return lagkv::kv_layout::shd();
      case mem_layout::hds: return lagkv::kv_layout::hds();
      case mem_layout::paged: return lagkv::kv_layout::paged(table.data(), block_size);
      case mem_layout::hsd: break;
    }
    return lagkv::kv_layout::hsd();
  }
};

constexpr std::uint8_t kPattern = 0xcb;     // engine memory fill (and guards)
constexpr std::size_t kGuardBytes = 64;     // before and after every engine buffer

/// One engine-owned tensor (K or V of one layer) with guard regions.
template <class T>
struct engine_tensor {
  layout_desc layout;
  std::vector<T> storage;  // guard | elements | guard
  index_t elems = 0;
  static constexpr std::size_t guard_elems() { return kGuardBytes / sizeof(T); }
  T* data() { return storage.data() + guard_elems(); }
  void allocate(index_t n) {
    elems = n;
    storage.resize(sz(n) + 2 * guard_elems());
    std::memset(static_cast<void*>(storage.data()), kPattern, storage.size() * sizeof(T));
  }
};

// ---- The model ------------------------------------------------------------------------------

template <class T>
struct model_row {
  index_t pos = 0;
  std::vector<T> k, v;
  double acc = 0.0;
};

template <class T>
struct model_layer {
  policy_desc pol;
  std::vector<std::vector<model_row<T>>> heads;  // [H] rows in slot order
  std::vector<index_t> compressed;                // chunked policies: sink + compressed prefix
  std::vector<index_t> hwm;                       // [H] highest slot count ever written
  index_t seen = 0, appends = 0, compressions = 0;
  bool skipped = false;

  void bind(const policy_desc& p, index_t H) {
    pol = p;
    compressed.assign(sz(H), p.sink);
  }
  index_t len(index_t h) const { return static_cast<index_t>(heads[sz(h)].size()); }
  index_t held() const {
    index_t n = 0;
    for (const auto& r : heads) n += static_cast<index_t>(r.size());
    return n;
  }
};

/// Higher first; NaN last; equal scores keep the lower index. Returns indices by rank.
LAGKV_FUZZ_NO_COVERAGE
inline std::vector<index_t> rank_order(const std::vector<float>& s) {
  std::vector<index_t> idx(s.size());
  for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<index_t>(i);
  std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t b) {
    const float x = s[sz(a)], y = s[sz(b)];
    if (std::isnan(x) || std::isnan(y)) return !std::isnan(x) && std::isnan(y);
    return x > y;
  });
  return idx;
}
inline std::vector<index_t> top_k(const std::vector<float>& s, index_t k) {
  std::vector<index_t> r = rank_order(s);
  r.resize(sz(k));
  std::sort(r.begin(), r.end());
  return r;
}

/// What an append brings besides K/V: attention for H2O, stored as the library reads it.
struct extras_data {
  std::vector<float> queries, probs, sums;
  lagkv::append_extras api;
};

template <class T>
class cache_model {
 public:
  index_t L, H, C, D;
  bool auto_compress;
  std::vector<model_layer<T>> layers;

  cache_model(index_t layers_, index_t heads, index_t capacity, index_t head_dim, bool autoc)
      : L(layers_), H(heads), C(capacity), D(head_dim), auto_compress(autoc), layers(sz(layers_)) {
    for (auto& l : layers) {
      l.heads.resize(sz(H));
      l.hwm.assign(sz(H), 0);
    }
  }

  bool layer_ok(index_t l) const { return l >= 0 && l < L; }
  bool head_ok(index_t l, index_t h) const { return layer_ok(l) && h >= 0 && h < H; }

  /// Whether an append/commit of `n` tokens to a valid layer passes the cache's checks.
  bool append_ok(index_t l, index_t n, const lagkv::append_extras& x) const {
    const model_layer<T>& m = layers[sz(l)];
    for (index_t h = 0; h < H; ++h)
      if (n > C - m.len(h)) return false;
    if (n == 0 || m.pol.kind != pkind::h2o) return true;
    const lagkv::attention_input& a = x.attention;
    if (a.probs == nullptr && a.prob_sums == nullptr && a.queries == nullptr) return false;
    if (!(a.q_heads >= H && a.q_heads % H == 0)) return false;
    if (a.probs != nullptr || a.prob_sums != nullptr) {
      index_t longest = 0;
      for (index_t h = 0; h < H; ++h) longest = std::max(longest, m.len(h) + n);
      return a.row_stride >= longest;
    }
    return (n <= 1 || a.q_token_stride != 0) && (a.q_heads == 1 || a.q_head_stride != 0);
  }

  /// Appends rows[h][i] (validated before) and compresses per the schedule.
  void append(index_t l, const std::vector<std::vector<model_row<T>>>& rows, const lagkv::append_extras& x) {
    model_layer<T>& m = layers[sz(l)];
    const index_t n = static_cast<index_t>(rows[0].size());
    std::vector<index_t> first(sz(H));
    for (index_t h = 0; h < H; ++h) {
      first[sz(h)] = m.len(h);
      for (index_t i = 0; i < n; ++i) {
        model_row<T> r = rows[sz(h)][sz(i)];
        r.pos = m.seen + i;
        r.acc = 0.0;
        m.heads[sz(h)].push_back(std::move(r));
      }
      m.hwm[sz(h)] = std::max(m.hwm[sz(h)], m.len(h));
    }
    m.seen += n;
    m.appends += 1;
    if (m.pol.kind == pkind::h2o)
      for (index_t h = 0; h < H; ++h) accumulate(m, h, first[sz(h)], n, x.attention);
    if (auto_compress && !m.skipped) compress(l, true, n);
  }

  /// One compression of layer l; returns whether the policy planned one.
  bool compress(index_t l, bool on_append, index_t last_append) {
    model_layer<T>& m = layers[sz(l)];
    const policy_desc& p = m.pol;
    if (p.kind == pkind::none || p.policy_skips(l)) return false;
    bool planned = p.chunked() ? compress_chunked(m) : compress_budget(m, l, on_append, last_append);
    if (planned) ++m.compressions;
    return planned;
  }

 private:
  static float l2(const std::vector<T>& k) {
    float out = 0.0f;
    lagkv::dispatch::l2norm_scores<T>(lagkv::kv_view<const T>(k.data(), 1, static_cast<index_t>(k.size()),
                                                              static_cast<index_t>(k.size())),
                                      &out);
    return out;
  }

  // Contiguous [n, D] copy of rows [first, first + n) of a head (K or V).
  LAGKV_FUZZ_NO_COVERAGE
  std::vector<T> gather(const std::vector<model_row<T>>& rows, index_t first, index_t n, bool keys) const {
    std::vector<T> out;
    out.reserve(sz(n * D));
    for (index_t i = first; i < first + n; ++i) {
      const auto& src = keys ? rows[sz(i)].k : rows[sz(i)].v;
      out.insert(out.end(), src.begin(), src.end());
    }
    return out;
  }

  bool compress_chunked(model_layer<T>& m) {
    const policy_desc& p = m.pol;
    const index_t lag = p.lag, keep = p.keep_per_chunk();
    bool planned = false;
    for (index_t h = 0; h < H; ++h) {
      auto& rows = m.heads[sz(h)];
      index_t& done = m.compressed[sz(h)];
      const index_t n = static_cast<index_t>(rows.size());
      if (n < done + 2 * lag) continue;
      planned = true;
      const index_t chunks = (n - done) / lag - 1;
      std::vector<model_row<T>> out(rows.begin(), rows.begin() + done);
      for (index_t c = 0; c < chunks; ++c) {
        const index_t start = done + c * lag;
        std::vector<float> s(sz(lag));
        if (p.kind == pkind::lagkv) {
          using V = lagkv::kv_view<const T>;
          const std::vector<T> kc = gather(rows, start, lag, true), kr = gather(rows, start + lag, lag, true);
          std::vector<T> vc, vr;
          if (p.svr != 0.0) vc = gather(rows, start, lag, false), vr = gather(rows, start + lag, lag, false);
          lagkv::dispatch::lagkv_chunk_scores<T>(V(kc.data(), lag, D, D), V(kr.data(), lag, D, D),
                                                 p.svr != 0.0 ? V(vc.data(), lag, D, D) : V(),
                                                 p.svr != 0.0 ? V(vr.data(), lag, D, D) : V(), p.svr, s.data());
        } else {
          for (index_t i = 0; i < lag; ++i) s[sz(i)] = l2(rows[sz(start + i)].k);
        }
        for (index_t i : top_k(s, keep)) out.push_back(rows[sz(start + i)]);
      }
      out.insert(out.end(), rows.begin() + done + chunks * lag, rows.end());
      rows = std::move(out);
      done += chunks * keep;
    }
    return planned;
  }

  float score_of(const model_layer<T>& m, index_t layer, index_t h, const model_row<T>& r) const {
    switch (m.pol.kind) {
      case pkind::l2norm: return l2(r.k);
      case pkind::h2o: return static_cast<float>(r.acc);
      case pkind::random: return lagkv::random_policy::token_score(m.pol.seed, layer, h, r.pos);
      default: return 0.0f;
    }
  }

  index_t target(const policy_desc& p, index_t n) const {
    if (p.budget > 0) return std::min(n, p.budget);
    const auto by_ratio = static_cast<index_t>(std::floor(p.ratio * static_cast<double>(n)));
    return std::max(by_ratio, std::min(n, p.sink + p.window));
  }

  // Keep rows [0, sink), the picked region rows (region-relative, ascending), rows [n - window, n).
  void rebuild(model_layer<T>& m, index_t h, const std::vector<index_t>& picked) {
    auto& rows = m.heads[sz(h)];
    const index_t n = static_cast<index_t>(rows.size());
    std::vector<model_row<T>> out(rows.begin(), rows.begin() + m.pol.sink);
    for (index_t i : picked) out.push_back(rows[sz(m.pol.sink + i)]);
    out.insert(out.end(), rows.begin() + (n - m.pol.window), rows.end());
    rows = std::move(out);
  }

  bool compress_budget(model_layer<T>& m, index_t layer, bool on_append, index_t last) {
    const policy_desc& p = m.pol;
    if (on_append) {
      if (p.budget == 0 && last <= 1) return false;
      if (p.budget > 0 && last <= 1 && m.appends % p.interval != 0) return false;
    }
    const index_t protect = p.sink + p.window;
    const bool scored = p.kind != pkind::streaming;
    auto region_scores = [&](index_t h, index_t region) {
      std::vector<float> s(sz(region));
      for (index_t i = 0; i < region; ++i) s[sz(i)] = score_of(m, layer, h, m.heads[sz(h)][sz(p.sink + i)]);
      return s;
    };
    if (!p.share) {
      bool planned = false;
      for (index_t h = 0; h < H; ++h) {
        const index_t n = m.len(h), t = target(p, n);
        if (t >= n) continue;
        planned = true;
        const index_t region = n - protect, keep = t - protect;
        std::vector<index_t> picked;
        if (scored) {
          picked = top_k(region_scores(h, region), keep);
        } else {
          for (index_t i = 0; i < keep; ++i) picked.push_back(i);
        }
        rebuild(m, h, picked);
      }
      return planned;
    }
    // AdaKV: each head keeps its guaranteed best; the rest of the layer's total goes to the
    // best remaining candidates of any head, ordered by (score desc / NaN last, head, slot).
    index_t held = 0, total = 0;
    for (index_t h = 0; h < H; ++h) {
      held += m.len(h);
      total += p.budget > 0 ? p.budget : target(p, m.len(h));
    }
    if (held <= total) return false;
    const index_t floor_total = std::max(p.min_per_head, protect);
    struct cand {
      float score;
      index_t head, rank_in_head, idx;
    };
    std::vector<cand> pool;
    std::vector<std::vector<index_t>> picked(sz(H));
    index_t guaranteed = 0, candidates = 0;
    bool planned = false;
    for (index_t h = 0; h < H; ++h) {
      const index_t n = m.len(h), region = std::max<index_t>(n - protect, 0);
      const index_t g = std::min(floor_total - protect, region);
      guaranteed += std::min(n, protect) + g;
      if (region == 0) continue;
      planned = true;
      candidates += region - g;
      const std::vector<float> s = region_scores(h, region);
      const std::vector<index_t> order = rank_order(s);
      for (index_t r = 0; r < region; ++r) {
        const index_t i = order[sz(r)];
        if (r < g)
          picked[sz(h)].push_back(i);
        else
          pool.push_back(cand{s[sz(i)], h, r, i});
      }
    }
    if (!planned) return false;
    std::stable_sort(pool.begin(), pool.end(), [](const cand& a, const cand& b) {
      const bool na = std::isnan(a.score), nb = std::isnan(b.score);
      if (na != nb) return nb;
      if (!na && a.score != b.score) return a.score > b.score;
      if (a.head != b.head) return a.head < b.head;
      return a.rank_in_head < b.rank_in_head;
    });
    const index_t extra = std::clamp<index_t>(total - guaranteed, 0, candidates);
    for (index_t e = 0; e < extra; ++e) picked[sz(pool[sz(e)].head)].push_back(pool[sz(e)].idx);
    for (index_t h = 0; h < H; ++h) {
      if (m.len(h) <= protect) continue;
      auto& ph = picked[sz(h)];
      std::sort(ph.begin(), ph.end());
      rebuild(m, h, ph);
    }
    return true;
  }

  // H2O's accumulation, restated from its definition (same double operations, same order).
  LAGKV_FUZZ_NO_COVERAGE
  void accumulate(model_layer<T>& m, index_t h, index_t first, index_t count, const lagkv::attention_input& a) {
    auto& rows = m.heads[sz(h)];
    const index_t group = a.q_heads / H;
    const lagkv::gqa_reduce red = m.pol.reduce;
    auto add = [&](std::vector<double>& agg, index_t s, double x) {
      if (red == lagkv::gqa_reduce::sum) rows[sz(s)].acc += x;
      if (red == lagkv::gqa_reduce::mean) rows[sz(s)].acc += x / static_cast<double>(group);
      if (red == lagkv::gqa_reduce::max) agg[sz(s)] = std::fmax(agg[sz(s)], x);
    };
    if (a.probs == nullptr && a.prob_sums != nullptr) {
      const index_t visible = first + count;
      std::vector<double> agg(sz(visible), 0.0);
      for (index_t j = h * group; j < (h + 1) * group; ++j)
        for (index_t s = 0; s < visible; ++s) add(agg, s, static_cast<double>(a.prob_sums[j * a.row_stride + s]));
      if (red == lagkv::gqa_reduce::max)
        for (index_t s = 0; s < visible; ++s) rows[sz(s)].acc += agg[sz(s)];
      return;
    }
    const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(D));
    for (index_t i = 0; i < count; ++i) {
      const index_t visible = first + i + 1;
      std::vector<double> agg(sz(visible), 0.0), p(sz(visible));
      for (index_t j = h * group; j < (h + 1) * group; ++j) {
        if (a.probs != nullptr) {
          const float* src = a.probs + (j * count + i) * a.row_stride;
          for (index_t s = 0; s < visible; ++s) p[sz(s)] = src[s];
        } else {
          const float* q = a.queries + j * a.q_head_stride + i * a.q_token_stride;
          double mx = -INFINITY;
          for (index_t s = 0; s < visible; ++s) {
            double dot = 0.0;
            for (index_t c = 0; c < D; ++c)
              dot += static_cast<double>(q[c]) * static_cast<double>(lagkv::to_float(rows[sz(s)].k[sz(c)]));
            p[sz(s)] = dot * inv_sqrt_d;
            mx = std::fmax(mx, p[sz(s)]);
          }
          double sum = 0.0;
          for (index_t s = 0; s < visible; ++s) {
            p[sz(s)] = std::exp(p[sz(s)] - mx);
            sum += p[sz(s)];
          }
          for (index_t s = 0; s < visible; ++s) p[sz(s)] /= sum;
        }
        for (index_t s = 0; s < visible; ++s) add(agg, s, p[sz(s)]);
      }
      if (red == lagkv::gqa_reduce::max)
        for (index_t s = 0; s < visible; ++s) rows[sz(s)].acc += agg[sz(s)];
    }
  }
};

// ---- Data -----------------------------------------------------------------------------------

/// One value of the fuzzer-chosen kind: an exact grid, raw bit patterns, special values,
/// wide per-channel scales.
template <class T>
T make_value(rng& r, int mode, index_t channel) {
  static const float specials[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 2.0f, 1e-41f, -1e-41f, 1e-30f, 3e38f,
                                   -3e38f, 65504.0f, 1e5f, NAN, INFINITY, -INFINITY, FLT_MIN, 6e-8f, -2.5f, 0.125f};
  switch (mode) {
    case 1: {  // raw bits: NaN payloads, infinities, denormals, everything
      T out;
      const std::uint64_t bits = r.next();
      std::memcpy(&out, &bits, sizeof(T));
      return out;
    }
    case 2: return lagkv::from_float<T>(specials[r.below(20)]);
    case 3: {  // wide per-channel scales
      const float g = static_cast<float>(r.below(129) - 64) / 8.0f;
      return lagkv::from_float<T>(std::ldexp(g, static_cast<int>((channel * 7) % 41) - 20));
    }
    default: return lagkv::from_float<T>(static_cast<float>(r.below(129) - 64) / 8.0f);  // exact in every dtype
  }
}

/// Rows of `n` new tokens for every head; mode 4 repeats one token (ties), mode 5 makes every
/// channel constant within the append.
template <class T>
std::vector<std::vector<model_row<T>>> make_rows(index_t H, index_t n, index_t D, std::uint8_t mode_byte,
                                                 std::uint16_t seed) {
  rng r{seed * 0x100000001b3ull + mode_byte};
  const int mode = mode_byte % 6;
  std::vector<std::vector<model_row<T>>> rows(sz(H));
  for (index_t h = 0; h < H; ++h) {
    for (index_t i = 0; i < n; ++i) {
      model_row<T> row;
      row.k.resize(sz(D));
      row.v.resize(sz(D));
      for (index_t c = 0; c < D; ++c) {
        const int m = mode >= 4 ? 0 : mode;
        row.k[sz(c)] = make_value<T>(r, m, c);
        row.v[sz(c)] = make_value<T>(r, m, c);
      }
      if (mode == 4 && i > 0) row = rows[sz(h)][0];
      if (mode == 5 && i > 0)
        for (index_t c = 0; c < D; ++c)
          if (c % 2 == 0) row.k[sz(c)] = rows[sz(h)][0].k[sz(c)], row.v[sz(c)] = rows[sz(h)][0].v[sz(c)];
      rows[sz(h)].push_back(std::move(row));
    }
  }
  return rows;
}

inline float make_float(rng& r, int mode) {
  static const float specials[] = {0.0f, 1.0f, -1.0f, NAN, INFINITY, -INFINITY, 1e30f, -1e30f, 1e-40f, 0.5f};
  switch (mode) {
    case 1: return specials[r.below(10)];
    case 2: {
      const auto bits = static_cast<std::uint32_t>(r.next());
      float f;
      std::memcpy(&f, &bits, 4);
      return f;
    }
    default: return static_cast<float>(r.below(129) - 64) / 16.0f;
  }
}

// ---- The program ------------------------------------------------------------------------------

template <class T>
class program {
 public:
  using cache_t = lagkv::kv_cache<T>;

  program(const std::uint8_t* data, std::size_t size, fuzz_stats& stats) : stats_(stats) {
    std::uint8_t hdr[32] = {};
    std::memcpy(hdr, data, std::min<std::size_t>(size, 32));
    std::memcpy(header_, hdr, 32);
    ops_ = byte_reader(size > 32 ? data + 32 : data, size > 32 ? size - 32 : 0);
  }

  void run() {
    const auto& targets = lagkv::simd::available_targets();
    lagkv::simd::scoped_target use(targets[header_[1] % targets.size()]);
    if (!construct()) return;
    check("construct");
    for (int i = 0; i < kMaxOps && !ops_.done(); ++i) step();
  }

 private:
  static constexpr int kMaxOps = 64;

  // ---- Construction ------------------------------------------------------------------------

  bool construct() {
    const std::uint8_t* b = header_;
    static const index_t layer_counts[] = {1, 2, 3, 1, 2, 3, 2, 1, 0, -1};
    static const index_t head_counts[] = {1, 2, 3, 1, 2, 2, 1, 3, 0, -2};
    static const index_t head_dims[] = {1, 2, 3, 4, 5, 6, 7, 8, 2, 3, 4, 8, 16, 17, 33, 4, 0, -1};
    lagkv::cache_config cfg;
    cfg.layers = pick(b[2], layer_counts);
    cfg.kv_heads = pick(b[3], head_counts);
    cfg.head_dim = pick(b[4], head_dims);
    const int cb = b[5] % 84;
    cfg.capacity = cb < 64 ? cb + 1 : cb < 76 ? 4 + (cb - 64) : cb == 76 ? 0 : cb == 77 ? -3
                 : cb == 78 ? index_t{1} << 62 : cb == 79 ? std::numeric_limits<index_t>::max() : 24;
    cfg.auto_compress = (b[6] & 1) == 0;
    const int skips = (b[6] >> 1) & 3;
    for (int i = 0; i < skips && i < 2; ++i) cfg.skip_layers.push_back(b[7 + i] % 5 - 1);
    const policy_desc pol = decode_policy(b + 16);

    const bool cfg_ok = cfg.layers >= 1 && cfg.kv_heads >= 1 && cfg.head_dim >= 1 && cfg.capacity >= 1 &&
                        cfg.capacity <= 4096;  // the huge ones overflow layers*heads*capacity*head_dim*sizeof(T)
    bool ok = cfg_ok;
    for (index_t l : cfg.skip_layers) ok = ok && l >= 0 && l < cfg.layers;
    // Engine memory (only for a usable shape; an unusable one gets dummies the cache must reject).
    const int mem_mode = b[9] % 8;
    owned_ = mem_mode < 2;
    std::vector<lagkv::layer_memory<T>> mem;
    if (!owned_) {
      const index_t entries = cfg_ok ? cfg.layers + (b[15] % 32 == 31 ? 1 : 0) : std::max<index_t>(cfg.layers, 1);
      const bool null_k = b[15] % 32 == 30;
      const index_t bs = b[13] == 255 ? 0 : 1 + b[13] % 8;
      const bool null_table = b[13] == 254;
      ok = ok && entries == cfg.layers && !null_k && bs >= 1 && !null_table;
      tensors_.resize(sz(entries) * 2);
      rng shuffle{b[14] * 7919ull + 1};
      for (index_t l = 0; l < entries; ++l) {
        lagkv::layer_memory<T> lm;
        for (int t = 0; t < 2; ++t) {
          engine_tensor<T>& et = tensors_[sz(l * 2 + t)];
          int kind = mem_mode == 2 ? 0 : mem_mode == 3 ? 1 : mem_mode == 4 ? (t == 0 ? 1 : 2) : mem_mode == 5 ? 2
                   : mem_mode == 6 ? 3 : (b[10 + l % 3] >> (2 * t + 4 * (l / 3))) & 3;
          et.layout.kind = static_cast<mem_layout>(kind);
          if (et.layout.kind == mem_layout::paged) {
            et.layout.block_size = bs;
            if (cfg_ok && bs >= 1) {
              const index_t blocks = (cfg.capacity + bs - 1) / bs;
              et.layout.pool_blocks = blocks + static_cast<index_t>(b[14] % 4);
              std::vector<std::int32_t> ids(sz(et.layout.pool_blocks));
              for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>(i);
              for (std::size_t i = ids.size(); i > 1; --i) std::swap(ids[i - 1], ids[sz(shuffle.below(static_cast<index_t>(i)))]);
              et.layout.table.assign(ids.begin(), ids.begin() + blocks);
            } else {
              et.layout.table.assign(1, 0);
            }
          }
          et.allocate(cfg_ok ? et.layout.elements(cfg.kv_heads, cfg.capacity, cfg.head_dim) : 1);
        }
        lm.k = null_k && l == 0 ? nullptr : tensors_[sz(l * 2)].data();
        lm.v = tensors_[sz(l * 2 + 1)].data();
        lm.k_layout = tensors_[sz(l * 2)].layout.api();
        lm.v_layout = tensors_[sz(l * 2 + 1)].layout.api();
        if (null_table) lm.k_layout = lagkv::kv_layout::paged(nullptr, bs < 1 ? 1 : bs);
        else if (bs < 1) lm.k_layout = lagkv::kv_layout::paged(tensors_[sz(l * 2)].layout.table.data(), 0);
        mem.push_back(lm);
      }
    }
    // The policy: make_policy first (its own validation), then the cache's shape check.
    lagkv::any_policy proto;
    stats_.ops++;
    try {
      proto = lagkv::make_policy(pol.name, pol.spec);
      if (!pol.valid_params()) fail("make_policy(", pol.name, ") accepted invalid parameters");
    } catch (const lagkv::error& e) {
      if (pol.valid_params()) fail("make_policy(", pol.name, ") rejected valid parameters: ", e.what());
      expect_message(e);
      stats_.ops_rejected++;
      stats_.configs_rejected++;
      return false;
    }
    ok = ok && pol.valid_for(cfg.head_dim);
    stats_.ops++;
    try {
      cache_ = owned_ ? std::make_unique<cache_t>(cfg, proto) : std::make_unique<cache_t>(cfg, mem, proto);
    } catch (const lagkv::error& e) {
      if (ok) fail("construction failed for a valid configuration: ", e.what());
      expect_message(e);
      stats_.ops_rejected++;
      stats_.configs_rejected++;
      check_engine_untouched();
      return false;
    }
    if (!ok) fail("construction accepted an invalid configuration (layers=", cfg.layers, " heads=", cfg.kv_heads,
                  " head_dim=", cfg.head_dim, " capacity=", cfg.capacity, ")");
    model_ = std::make_unique<cache_model<T>>(cfg.layers, cfg.kv_heads, cfg.capacity, cfg.head_dim, cfg.auto_compress);
    for (index_t l = 0; l < cfg.layers; ++l) {
      auto& m = model_->layers[sz(l)];
      m.bind(pol, cfg.kv_heads);
      m.skipped = std::find(cfg.skip_layers.begin(), cfg.skip_layers.end(), l) != cfg.skip_layers.end();
    }
    cache_->set_observer([this](const lagkv::compress_event& e) { observe(e); });
    return true;
  }

  void expect_message(const lagkv::error& e) {
    if (std::strlen(e.what()) == 0) fail("lagkv::error with an empty message");
  }

  LAGKV_FUZZ_NO_COVERAGE
  void check_engine_untouched() {
    for (const auto& t : tensors_)
      for (std::size_t i = 0; i < t.storage.size() * sizeof(T); ++i)
        if (reinterpret_cast<const std::uint8_t*>(t.storage.data())[i] != kPattern)
          fail("a rejected construction wrote engine memory at byte ", i);
  }

  // ---- Operations --------------------------------------------------------------------------

  index_t pick_layer(std::uint8_t b) const {
    const index_t L = model_->L;
    return b % 16 < 14 ? b % L : (b % 16 == 14 ? -1 : L);
  }
  index_t pick_head(std::uint8_t b) const {
    const index_t H = model_->H;
    return b % 16 < 14 ? b % H : (b % 16 == 14 ? -1 : H);
  }
  index_t pick_tokens(std::uint8_t b, index_t layer) const {
    static const index_t counts[] = {1, 1, 1, 1, 1, 2, 3, 4, 5, 7, 8, 11, 16, 24, 0, -1};
    if (b >= 248 && model_->layer_ok(layer)) {  // just past the free room of the fullest head
      index_t longest = 0;
      for (index_t h = 0; h < model_->H; ++h) longest = std::max(longest, model_->layers[sz(layer)].len(h));
      return model_->C - longest + 1;
    }
    return pick(b, counts);
  }

  void step() {
    const std::uint8_t op = ops_.u8();
    switch (op % 16) {
      case 0: case 1: case 2: case 3: case 15: op_append(); break;
      case 4: op_commit(); break;
      case 5: op_compress(); break;
      case 6: op_compress_all(); break;
      case 7: op_clear(); break;
      case 8: op_set_policy(); break;
      case 9: op_set_skipped(); break;
      case 10: op_read(); break;
      case 11: op_next_slots(); break;
      case 12: op_move(); break;
      case 13: op_decode_burst(); break;
      case 14: op_append(); break;
    }
  }

  // Runs `fn` as one cache operation: it must throw lagkv::error iff !expect_ok, and a throw
  // must leave everything as it was. Returns whether it succeeded.
  template <class Fn>
  bool attempt(const char* what, bool expect_ok, Fn&& fn) {
    stats_.ops++;
    snapshot before;
    if (!expect_ok) before = take_snapshot();  // an unpredicted error is a mismatch by itself
    try {
      fn();
    } catch (const lagkv::error& e) {
      if (expect_ok) fail(what, ": unexpected lagkv::error: ", e.what());
      expect_message(e);
      stats_.ops_rejected++;
      if (!(take_snapshot() == before)) fail(what, ": failed with \"", e.what(), "\" but changed the cache");
      return false;
    } catch (const mismatch&) {
      throw;
    } catch (const std::exception& e) {
      fail(what, ": threw a non-lagkv exception: ", e.what());
    }
    if (!expect_ok) fail(what, ": succeeded but must fail");
    return true;
  }

  struct input_buffers {
    std::vector<T> k, v;
    lagkv::kv_input<T> ki, vi;
    std::vector<std::int32_t> table{0};
  };

  // Lays rows out as an append input (hsd / shd / hds, possibly a slice of a larger tensor).
  LAGKV_FUZZ_NO_COVERAGE
  void fill_input(std::vector<T>& buf, lagkv::kv_input<T>& in, const std::vector<std::vector<model_row<T>>>& rows,
                  index_t n, int layout, index_t extra, bool keys) {
    const index_t H = model_->H, D = model_->D;
    const index_t extent = std::max<index_t>(n + extra, 1);
    buf.assign(sz(H * extent * D), lagkv::from_float<T>(-7.75f));
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < n; ++i)
        for (index_t c = 0; c < D; ++c) {
          const T x = keys ? rows[sz(h)][sz(i)].k[sz(c)] : rows[sz(h)][sz(i)].v[sz(c)];
          index_t at = 0;
          if (layout == 1) at = (i * H + h) * D + c;
          else if (layout == 2) at = (h * D + c) * extent + i;
          else at = (h * extent + i) * D + c;
          buf[sz(at)] = x;
        }
    in.data = buf.data();
    in.tokens = n;
    in.layout = layout == 1 ? lagkv::kv_layout::shd() : layout == 2 ? lagkv::kv_layout::hds() : lagkv::kv_layout::hsd();
    in.capacity = extra > 0 ? n + extra : 0;
  }

  // H2O attention for an append of n tokens to `layer` (read from 3 bytes).
  void make_extras(extras_data& x, index_t layer, index_t n) {
    const std::uint8_t mode = ops_.u8(), bad = ops_.u8(), seed = ops_.u8();
    const index_t H = model_->H, D = model_->D, nn = std::max<index_t>(n, 1);
    const index_t g = 1 + (mode >> 3) % 3;
    lagkv::attention_input& a = x.api.attention;
    a.q_heads = H * g;
    rng r{seed * 31ull + 5};
    const int vmode = (mode >> 5) % 3;
    index_t longest = 0;
    if (model_->layer_ok(layer))
      for (index_t h = 0; h < H; ++h) longest = std::max(longest, model_->layers[sz(layer)].len(h) + std::max<index_t>(n, 0));
    const index_t stride = std::max<index_t>(longest, 1) + (seed % 3);
    switch (mode % 8) {
      case 0: case 1: case 2: case 3: case 7:
        x.queries.resize(sz(a.q_heads * nn * D));
        for (float& f : x.queries) f = make_float(r, vmode);
        a.queries = x.queries.data();
        a.q_head_stride = nn * D;
        a.q_token_stride = D;
        if (a.q_heads == 1 && (seed & 16)) a.q_head_stride = 0;  // allowed: one query head
        if (n <= 1 && (seed & 32)) a.q_token_stride = 0;         // allowed: one token
        if (mode % 8 != 7) break;
        [[fallthrough]];
      case 4:
        x.probs.resize(sz(a.q_heads * nn * stride));
        for (float& f : x.probs) f = vmode == 0 ? static_cast<float>(r.below(1000)) / 1000.0f : make_float(r, vmode);
        a.probs = x.probs.data();
        a.row_stride = stride;
        break;
      case 5:
        x.sums.resize(sz(a.q_heads * stride));
        for (float& f : x.sums) f = vmode == 0 ? static_cast<float>(r.below(1000)) / 250.0f : make_float(r, vmode);
        a.prob_sums = x.sums.data();
        a.row_stride = stride;
        break;
      case 6: break;  // no attention at all
    }
    if (bad >= 224) {
      switch (bad % 5) {
        case 0: a.q_heads = H > 1 ? a.q_heads + 1 : 0; break;
        case 1: a.q_heads = -H; break;
        case 2: if (a.row_stride > 0) a.row_stride = longest - 1; break;
        case 3: a.q_token_stride = 0; break;
        case 4: a.q_head_stride = 0; break;
      }
    }
  }

  void op_append() {
    const std::uint8_t lb = ops_.u8(), tb = ops_.u8(), layout = ops_.u8(), bad = ops_.u8(), dmode = ops_.u8();
    const std::uint16_t seed = ops_.u16();
    const index_t layer = pick_layer(lb), n = pick_tokens(tb, layer);
    extras_data x;
    make_extras(x, layer, n);
    append_with(layer, n, layout, bad, dmode, seed, x);
  }

  void op_decode_burst() {
    const std::uint8_t lb = ops_.u8(), count = ops_.u8(), dmode = ops_.u8();
    const std::uint16_t seed = ops_.u16();
    const index_t layer = pick_layer(lb);
    extras_data x;
    make_extras(x, layer, 1);
    for (int i = 0; i < 1 + count % 16; ++i) append_with(layer, 1, 0, 0, dmode, static_cast<std::uint16_t>(seed + i), x);
  }

  void append_with(index_t layer, index_t n, std::uint8_t layout, std::uint8_t bad, std::uint8_t dmode,
                   std::uint16_t seed, const extras_data& x) {
    const index_t rows_n = std::max<index_t>(n, 0);
    const auto rows = make_rows<T>(model_->H, rows_n, model_->D, dmode, seed);
    input_buffers in;
    const index_t extra = layout & 16 ? 1 + ((layout >> 5) & 3) : 0;
    fill_input(in.k, in.ki, rows, rows_n, layout & 3, extra, true);
    fill_input(in.v, in.vi, rows, rows_n, (layout >> 2) & 3, extra, false);
    in.ki.tokens = in.vi.tokens = n;
    bool ok = model_->layer_ok(layer) && n >= 0;
    if (bad >= 232) {
      switch (bad % 7) {
        case 0: if (n > 1) in.ki.capacity = n - 1, ok = false; break;
        case 1: in.ki.data = nullptr, ok = ok && n == 0; break;
        case 2: in.vi.tokens = n + 1, ok = false; break;
        case 3: in.ki.layout = lagkv::kv_layout::paged(in.table.data(), 4), ok = false; break;
        case 4: in.vi.data = nullptr, ok = ok && n == 0; break;
        case 5: in.vi.layout = lagkv::kv_layout::paged(in.table.data(), 1), ok = false; break;
        case 6: if (n > 1) in.vi.capacity = n - 1, ok = false; break;
      }
    }
    ok = ok && model_->append_ok(layer, n, x.api);
    if (attempt("append", ok, [&] { cache_->append(layer, in.ki, in.vi, x.api); }) && n > 0) {
      model_->append(layer, rows, x.api);
    }
    check("append");
  }

  void op_commit() {
    const std::uint8_t lb = ops_.u8(), tb = ops_.u8(), wb = ops_.u8(), dmode = ops_.u8();
    const std::uint16_t seed = ops_.u16();
    const index_t layer = pick_layer(lb), n = pick_tokens(tb, layer);
    extras_data x;
    make_extras(x, layer, n);
    const auto rows = make_rows<T>(model_->H, std::max<index_t>(n, 0), model_->D, dmode, seed);
    // The engine writes the new rows in place (K and/or V, or neither: commit adopts what is there).
    for (index_t h = 0; h < model_->H; ++h)
      for (int t = 0; t < 2; ++t) {
        if (!(wb & (1 << t))) continue;
        const bool ok = model_->layer_ok(layer) && n >= 0 && n <= model_->C - model_->layers[sz(layer)].len(h);
        lagkv::kv_view<T> slots;
        if (!attempt(t == 0 ? "next_keys" : "next_values", ok, [&] {
              slots = t == 0 ? cache_->next_keys(layer, h, n) : cache_->next_values(layer, h, n);
            }))
          continue;
        write_slots(slots, rows[sz(h)], t == 0);
        note_written(layer, h, n);
      }
    if (!model_->layer_ok(layer) || n < 0 || !model_->append_ok(layer, n, x.api)) {
      attempt("commit", false, [&] { cache_->commit(layer, n, x.api); });
      check("commit");
      return;
    }
    // What the model adopts: the bytes now in the free slots, read by its own addressing.
    std::vector<std::vector<model_row<T>>> adopted(sz(model_->H));
    for (index_t h = 0; h < model_->H; ++h)
      for (index_t i = 0; i < n; ++i) adopted[sz(h)].push_back(read_slot(layer, h, model_->layers[sz(layer)].len(h) + i));
    attempt("commit", true, [&] { cache_->commit(layer, n, x.api); });
    if (n > 0) model_->append(layer, adopted, x.api);
    check("commit");
  }

  void write_slots(const lagkv::kv_view<T>& slots, const std::vector<model_row<T>>& rows, bool keys) {
    for (index_t i = 0; i < slots.tokens(); ++i)
      for (index_t c = 0; c < slots.head_dim(); ++c) slots(i, c) = keys ? rows[sz(i)].k[sz(c)] : rows[sz(i)].v[sz(c)];
  }
  void note_written(index_t layer, index_t h, index_t n) {
    auto& m = model_->layers[sz(layer)];
    m.hwm[sz(h)] = std::max(m.hwm[sz(h)], m.len(h) + n);
  }

  void op_next_slots() {
    const std::uint8_t lb = ops_.u8(), hb = ops_.u8(), tb = ops_.u8(), wb = ops_.u8();
    const index_t layer = pick_layer(lb), head = pick_head(hb), n = pick_tokens(tb, layer);
    const bool ok = model_->head_ok(layer, head) && n >= 0 && n <= model_->C - model_->layers[sz(layer)].len(head);
    lagkv::kv_view<T> slots;
    const bool keys = (wb & 1) != 0;
    if (attempt(keys ? "next_keys" : "next_values", ok,
                [&] { slots = keys ? cache_->next_keys(layer, head, n) : cache_->next_values(layer, head, n); }) &&
        (wb & 2)) {
      const auto rows = make_rows<T>(1, n, model_->D, wb, 7);
      write_slots(slots, rows[0], keys);
      note_written(layer, head, n);
    }
    check("next_slots");
  }

  void op_compress() {
    const index_t layer = pick_layer(ops_.u8());
    bool got = false;
    const bool ok = model_->layer_ok(layer);
    attempt("compress", ok, [&] { got = cache_->compress(layer); });
    if (ok) {
      const bool want = !model_->layers[sz(layer)].skipped && model_->compress(layer, false, 0);
      if (got != want) fail("compress(", layer, ") returned ", got, ", model says ", want);
    }
    check("compress");
  }

  void op_compress_all() {
    index_t got = 0;
    attempt("compress_all", true, [&] { got = cache_->compress_all(); });
    index_t want = 0;
    for (index_t l = 0; l < model_->L; ++l)
      want += !model_->layers[sz(l)].skipped && model_->compress(l, false, 0) ? 1 : 0;
    if (got != want) fail("compress_all() returned ", got, ", model says ", want);
    check("compress_all");
  }

  void reset_layer(index_t l) {
    auto& m = model_->layers[sz(l)];
    for (auto& rows : m.heads) rows.clear();
    m.seen = m.appends = m.compressions = 0;
    m.bind(m.pol, model_->H);
  }

  void op_clear() {
    const std::uint8_t b = ops_.u8();
    if (b & 0x80) {
      attempt("clear()", true, [&] { cache_->clear(); });
      for (index_t l = 0; l < model_->L; ++l) reset_layer(l);
    } else {
      const index_t layer = pick_layer(b);
      if (attempt("clear", model_->layer_ok(layer), [&] { cache_->clear(layer); })) reset_layer(layer);
    }
    check("clear");
  }

  void op_set_policy() {
    const index_t layer = pick_layer(ops_.u8());
    // One read, not a loop of u8(): GCC 12 at -O3 with -fsanitize=address,undefined warned
    // (-Wstringop-overflow, a false positive) that the unrolled loop wrote past the array.
    std::uint8_t spec[12];
    ops_.read(spec, sizeof spec);
    const policy_desc pol = decode_policy(spec);
    lagkv::any_policy p;
    try {
      p = lagkv::make_policy(pol.name, pol.spec);
    } catch (const lagkv::error& e) {
      if (pol.valid_params()) fail("make_policy(", pol.name, ") rejected valid parameters: ", e.what());
      return;
    }
    if (!pol.valid_params()) fail("make_policy(", pol.name, ") accepted invalid parameters");
    const bool ok = model_->layer_ok(layer) && model_->layers[sz(layer)].held() == 0 && pol.valid_for(model_->D);
    if (attempt("set_policy", ok, [&] { cache_->set_policy(layer, p); })) model_->layers[sz(layer)].bind(pol, model_->H);
    check("set_policy");
  }

  void op_set_skipped() {
    const std::uint8_t b = ops_.u8();
    const index_t layer = pick_layer(b);
    const bool skip = (b & 0x40) != 0;
    if (attempt("set_skipped", model_->layer_ok(layer), [&] { cache_->set_skipped(layer, skip); }))
      model_->layers[sz(layer)].skipped = skip;
    check("set_skipped");
  }

  void op_read() {
    const std::uint8_t wb = ops_.u8(), lb = ops_.u8(), hb = ops_.u8();
    const index_t layer = pick_layer(lb), head = pick_head(hb);
    const bool lok = model_->layer_ok(layer), hok = model_->head_ok(layer, head);
    const cache_t& c = *cache_;
    index_t got = 0, want = 0;
    switch (wb % 10) {
      case 0: attempt("keys", hok, [&] { got = c.keys(layer, head).tokens(); }); if (hok) want = model_->layers[sz(layer)].len(head); break;
      case 1: attempt("values", hok, [&] { got = c.values(layer, head).tokens(); }); if (hok) want = model_->layers[sz(layer)].len(head); break;
      case 2: attempt("positions", hok, [&] { got = c.positions(layer, head).size(); }); if (hok) want = model_->layers[sz(layer)].len(head); break;
      case 3: attempt("length", hok, [&] { got = c.length(layer, head); }); if (hok) want = model_->layers[sz(layer)].len(head); break;
      case 4: attempt("max_length", lok, [&] { got = c.max_length(layer); });
        if (lok) for (index_t h = 0; h < model_->H; ++h) want = std::max(want, model_->layers[sz(layer)].len(h));
        break;
      case 5: attempt("tokens_seen", lok, [&] { got = c.tokens_seen(layer); }); if (lok) want = model_->layers[sz(layer)].seen; break;
      case 6: attempt("compressions", lok, [&] { got = c.compressions(layer); }); if (lok) want = model_->layers[sz(layer)].compressions; break;
      case 7: attempt("memory", lok, [&] { got = c.memory(layer).k != nullptr; }); want = lok; break;
      case 8: {
        std::string name;
        attempt("policy", lok, [&] { name = c.policy(layer).name(); });
        if (lok && name != model_->layers[sz(layer)].pol.name) fail("policy(", layer, ").name()=", name);
        break;
      }
      case 9: attempt("skipped", lok, [&] { got = c.skipped(layer); }); if (lok) want = model_->layers[sz(layer)].skipped; break;
    }
    if (got != want) fail("read ", static_cast<int>(wb % 10), " of layer ", layer, " head ", head, ": got ", got, ", model ", want);
  }

  void op_move() {
    const std::uint8_t b = ops_.u8();
    attempt("move", true, [&] {
      auto moved = std::make_unique<cache_t>(std::move(*cache_));
      if (b & 1) {
        *cache_ = std::move(*moved);  // move-assign back into the moved-from object
      } else {
        cache_ = std::move(moved);
      }
    });
    check("move");
  }

  // ---- Observation -------------------------------------------------------------------------

  void observe(const lagkv::compress_event& e) {
    stats_.compress_events++;
    if (!observer_error_.empty()) return;
    std::ostringstream why;
    const lagkv::compress_plan& p = e.plan;
    if (!model_->head_ok(e.layer, e.head)) why << "bad layer/head";
    else if (p.begin < 0 || p.chunk < 1 || p.chunks < 1 || p.keep < 0 || p.keep > p.chunk || p.end() > e.length_before) why << "plan outside the head";
    else if (e.kept_count < 0 || e.kept_count > p.chunks * p.chunk) why << "kept_count " << e.kept_count;
    else if (e.length_after != p.begin + e.kept_count + (e.length_before - p.end())) why << "length_after " << e.length_after;
    else {
      for (index_t i = 0; i < e.kept_count; ++i)
        if (e.kept[i] < p.begin || e.kept[i] >= p.end() || (i > 0 && e.kept[i] <= e.kept[i - 1])) why << "kept[" << i << "]=" << e.kept[i];
      for (index_t i = 1; i < e.length_before; ++i)
        if (e.positions[i] <= e.positions[i - 1]) why << "positions not ascending at " << i;
    }
    if (!why.str().empty()) observer_error_ = "observer: layer " + std::to_string(e.layer) + " head " + std::to_string(e.head) + ": " + why.str();
  }

  // ---- State comparison --------------------------------------------------------------------

  struct snapshot {
    std::vector<std::uint8_t> bytes;
    std::vector<index_t> ints;
    std::vector<double> doubles;
    bool operator==(const snapshot& o) const {
      if (bytes != o.bytes || ints != o.ints || doubles.size() != o.doubles.size()) return false;
      for (std::size_t i = 0; i < doubles.size(); ++i)
        if (std::memcmp(&doubles[i], &o.doubles[i], sizeof(double)) != 0) return false;
      return true;
    }
  };

  const T* tensor_base(index_t l, int t) const {
    if (owned_) {
      const auto m = cache_->memory(l);
      return t == 0 ? m.k : m.v;
    }
    return tensors_[sz(l * 2 + t)].storage.data() + engine_tensor<T>::guard_elems();
  }

  LAGKV_FUZZ_NO_COVERAGE
  snapshot take_snapshot() const {
    snapshot s;
    const index_t L = model_->L, H = model_->H, C = model_->C, D = model_->D;
    if (owned_) {
      for (index_t l = 0; l < L; ++l)
        for (int t = 0; t < 2; ++t) {
          const auto* p = reinterpret_cast<const std::uint8_t*>(tensor_base(l, t));
          s.bytes.insert(s.bytes.end(), p, p + sz(H * C * D) * sizeof(T));
        }
    } else {
      for (const auto& t : tensors_) {
        const auto* p = reinterpret_cast<const std::uint8_t*>(t.storage.data());
        s.bytes.insert(s.bytes.end(), p, p + t.storage.size() * sizeof(T));
      }
    }
    for (index_t l = 0; l < L; ++l) {
      s.ints.push_back(cache_->tokens_seen(l));
      s.ints.push_back(cache_->compressions(l));
      s.ints.push_back(cache_->skipped(l));
      s.ints.push_back(static_cast<index_t>(std::strlen(cache_->policy(l).name())));
      for (index_t h = 0; h < H; ++h) {
        s.ints.push_back(cache_->length(l, h));
        for (index_t p : cache_->positions(l, h)) s.ints.push_back(p);
      }
      const lagkv::any_policy& pol = cache_->policy(l);
      if (const auto* h2o = pol.template target<lagkv::h2o_policy>())
        for (index_t h = 0; h < H; ++h) s.doubles.insert(s.doubles.end(), h2o->accumulated(h), h2o->accumulated(h) + C);
      if (const auto* lag = pol.template target<lagkv::lagkv_policy>())
        for (index_t h = 0; h < H; ++h) s.ints.push_back(lag->compressed(h));
    }
    return s;
  }

  LAGKV_FUZZ_NO_COVERAGE
  model_row<T> read_slot(index_t l, index_t h, index_t s) const {
    model_row<T> r;
    const index_t H = model_->H, C = model_->C, D = model_->D;
    for (int t = 0; t < 2; ++t) {
      const layout_desc lay = owned_ ? layout_desc{} : tensors_[sz(l * 2 + t)].layout;
      auto& dst = t == 0 ? r.k : r.v;
      for (index_t c = 0; c < D; ++c) dst.push_back(tensor_base(l, t)[lay.offset(H, C, D, h, s, c)]);
    }
    return r;
  }

  LAGKV_FUZZ_NO_COVERAGE
  void check(const char* after) {
    stats_.checks++;
    if (!observer_error_.empty()) fail("after ", after, ": ", observer_error_);
    const index_t L = model_->L, H = model_->H, C = model_->C, D = model_->D;
    for (index_t l = 0; l < L; ++l) {
      const model_layer<T>& m = model_->layers[sz(l)];
      if (cache_->tokens_seen(l) != m.seen) fail("after ", after, ": layer ", l, " tokens_seen ", cache_->tokens_seen(l), " != model ", m.seen);
      if (cache_->compressions(l) != m.compressions)
        fail("after ", after, ": layer ", l, " compressions ", cache_->compressions(l), " != model ", m.compressions);
      if (cache_->skipped(l) != m.skipped) fail("after ", after, ": layer ", l, " skipped flag differs");
      const std::string want_name = m.pol.name;
      if (want_name != cache_->policy(l).name()) fail("after ", after, ": layer ", l, " policy ", cache_->policy(l).name(), " != ", want_name);
      const auto* h2o = cache_->policy(l).template target<lagkv::h2o_policy>();
      for (index_t h = 0; h < H; ++h) {
        const auto& rows = m.heads[sz(h)];
        const index_t n = static_cast<index_t>(rows.size());
        if (cache_->length(l, h) != n) fail("after ", after, ": layer ", l, " head ", h, " length ", cache_->length(l, h), " != model ", n);
        const lagkv::index_span pos = cache_->positions(l, h);
        const auto keys = cache_->keys(l, h);
        const auto values = cache_->values(l, h);
        if (pos.size() != n || keys.tokens() != n || values.tokens() != n) fail("after ", after, ": view sizes differ");
        for (index_t s = 0; s < n; ++s) {
          const model_row<T>& r = rows[sz(s)];
          if (pos[s] != r.pos) {
            std::ostringstream got, want;
            for (index_t i = 0; i < n; ++i) got << pos[i] << ' ', want << rows[sz(i)].pos << ' ';
            fail("after ", after, ": layer ", l, " head ", h, " positions [", got.str(), "] != model [", want.str(), "]");
          }
          const T* krow = keys.row(s);
          const T* vrow = values.row(s);
          for (index_t c = 0; c < D; ++c) {
            if (std::memcmp(krow + c * keys.channel_stride(), &r.k[sz(c)], sizeof(T)) != 0)
              fail("after ", after, ": layer ", l, " head ", h, " slot ", s, " (position ", r.pos, ") K channel ", c, " differs");
            if (std::memcmp(vrow + c * values.channel_stride(), &r.v[sz(c)], sizeof(T)) != 0)
              fail("after ", after, ": layer ", l, " head ", h, " slot ", s, " (position ", r.pos, ") V channel ", c, " differs");
          }
          if (h2o != nullptr) {
            const double a = h2o->accumulated(h)[s];
            if (!(std::memcmp(&a, &r.acc, sizeof a) == 0 || (std::isnan(a) && std::isnan(r.acc))))
              fail("after ", after, ": layer ", l, " head ", h, " slot ", s, " h2o accumulated ", a, " != model ", r.acc);
          }
        }
      }
      if (const auto* lag = cache_->policy(l).template target<lagkv::lagkv_policy>())
        for (index_t h = 0; h < H; ++h)
          if (lag->compressed(h) != m.compressed[sz(h)]) fail("after ", after, ": layer ", l, " head ", h, " lagkv compressed prefix differs");
      check_bounds(l, after);
    }
    (void)C;
  }

  // Every element the cache had no business writing still holds the fill pattern.
  LAGKV_FUZZ_NO_COVERAGE
  void check_bounds(index_t l, const char* after) {
    const index_t H = model_->H, C = model_->C, D = model_->D;
    const model_layer<T>& m = model_->layers[sz(l)];
    for (int t = 0; t < 2; ++t) {
      const layout_desc lay = owned_ ? layout_desc{} : tensors_[sz(l * 2 + t)].layout;
      const index_t elems = owned_ ? H * C * D : tensors_[sz(l * 2 + t)].elems;
      allowed_.assign(sz(elems), 0);
      for (index_t h = 0; h < H; ++h)
        for (index_t s = 0; s < m.hwm[sz(h)]; ++s)
          for (index_t c = 0; c < D; ++c) allowed_[sz(lay.offset(H, C, D, h, s, c))] = 1;
      const std::uint8_t fill = owned_ ? 0 : kPattern;
      const auto* base = reinterpret_cast<const std::uint8_t*>(tensor_base(l, t));
      for (index_t e = 0; e < elems; ++e) {
        if (allowed_[sz(e)]) continue;
        for (std::size_t b = 0; b < sizeof(T); ++b)
          if (base[sz(e) * sizeof(T) + b] != fill)
            fail("after ", after, ": layer ", l, t == 0 ? " K" : " V", " element ", e, " (", lay.kind == mem_layout::paged ? "paged" : "strided",
                 ") outside every head's written slots was modified");
      }
      if (!owned_) {
        const auto& st = tensors_[sz(l * 2 + t)].storage;
        const auto* all = reinterpret_cast<const std::uint8_t*>(st.data());
        const std::size_t total = st.size() * sizeof(T);
        for (std::size_t b = 0; b < kGuardBytes; ++b)
          if (all[b] != kPattern || all[total - 1 - b] != kPattern)
            fail("after ", after, ": layer ", l, t == 0 ? " K" : " V", " guard region overwritten");
      }
    }
  }

  fuzz_stats& stats_;
  std::uint8_t header_[32] = {};
  byte_reader ops_{nullptr, 0};
  bool owned_ = true;
  std::vector<engine_tensor<T>> tensors_;  // [layer * 2 + (0: K, 1: V)]
  std::unique_ptr<cache_t> cache_;
  std::unique_ptr<cache_model<T>> model_;
  std::string observer_error_;
  std::vector<std::uint8_t> allowed_;
};

/// Runs one input; throws mismatch on any disagreement.
inline void run_cache_program(const std::uint8_t* data, std::size_t size, fuzz_stats& stats) {
  stats.inputs++;
  const int dtype_byte = size > 0 ? data[0] % 3 : 0;
  if (dtype_byte == 0) program<float>(data, size, stats).run();
  if (dtype_byte == 1) program<lagkv::f16>(data, size, stats).run();
  if (dtype_byte == 2) program<lagkv::bf16>(data, size, stats).run();
}

}  // namespace lagkv_fuzz
