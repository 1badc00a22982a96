#pragma once
// The SIMD fuzz program: bytes -> a scoring problem (dtype, head_dim, lag, chunks, reference
// length, value weight, memory layout of the views, data with NaN / Inf / denormals / constant
// channels / huge magnitudes), scored by every target this CPU runs (simd::available_targets,
// simd::scoped_target) and compared with the scalar oracle (score/lagkv.hpp, score/l2norm.hpp)
// on a contiguous copy, with the tolerance rules of tests/test_simd.cpp:
//   LagKV: |got - want| <= rel * |want| + FLT_MIN, rel = eps * (4 * (D/8 + 8) * Y + lag/16 + 12),
//          where Y = max(1, max |(x - lo) * inv|) over the finite normalised values of the chunk
//          (K and V: each tensor's part, the larger counts), and (e^rel - 1) instead of rel past
//          rel = 1/16 (see kModelLimit); a tensor whose chunk certainly took the kernels' oracle
//          path (an oracle std above simd::detail::kFloatMaxStd by more than the model's error)
//          gets kExactRel instead: the oracle's own result, to a few ulps; scores in [0, 1 + w];
//   L2:    |got - want| <= eps * (D/8 + 8) * |want| + FLT_MIN;
//   NaN exactly where the oracle has NaN (infinities must be equal).
// Shared by tests/fuzz/fuzz_simd.cpp and the gtest replay in tests/test_reliability.cpp.
//
// Input: bytes [0, 16) header (see run_simd_program), then up to 24 injections of 3 bytes
// (element index low/high, special value) written over the generated data.
#include <lagkv/score/l2norm.hpp>
#include <lagkv/score/lagkv.hpp>
#include <lagkv/simd/dispatch.hpp>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lagkv_fuzz {

/// A target disagrees with the oracle beyond the tolerance.
struct simd_mismatch : std::logic_error {
  using std::logic_error::logic_error;
};

struct simd_stats {
  std::uint64_t inputs = 0, calls = 0, scores = 0;
  std::uint64_t beyond_model = 0;  ///< scores whose bound is >= 100 %: NaN pattern and range only (close())
};

namespace simd_detail {

using lagkv::index_t;
using lagkv::kv_view;

inline std::size_t usz(index_t x) { return static_cast<std::size_t>(x); }

/// The same score bit for bit, NaN payloads aside: what two entry points or schedules that run the
/// same kernels on the same rows must give.
inline bool same_score(float a, float b) {
  return std::memcmp(&a, &b, sizeof(float)) == 0 || (std::isnan(a) && std::isnan(b));
}

struct gen {
  std::uint64_t s;
  std::uint64_t next() {
    std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }
  double normal() {  // Box-Muller: plenty for test data
    const double u = std::max(uniform(), 1e-300), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

inline float special(std::uint8_t b) {
  static const float table[] = {NAN,     INFINITY, -INFINITY, 0.0f,    -0.0f,   1e-41f,  -1e-41f, FLT_MIN,
                                FLT_MAX, -FLT_MAX, 3e38f,     -3e38f,  65504.f, -65504.f, 6e-8f,  1e-30f,
                                1e30f,   1.0f,     -1.0f,     0.5f,    1e25f,   -1e-25f, 2e-7f,   1e5f};
  return table[b % 24];
}

/// Y of the tolerance: max(1, max |(x - lo) * inv|) over the finite values of `chunk`, leaving
/// out tokens with a NaN or Inf (the oracle scores them NaN, outside the softmax: their other
/// values do not touch the rest of the chunk, and the NaN pattern is checked exactly).
template <class T>
double normalised_max(kv_view<const T> chunk, kv_view<const T> ref) {
  std::vector<char> skip(usz(chunk.tokens()), 0);
  for (index_t t = 0; t < chunk.tokens(); ++t)
    for (index_t c = 0; c < chunk.head_dim(); ++c)
      if (!std::isfinite(lagkv::to_float(chunk(t, c)))) skip[usz(t)] = 1;
  double y = 1.0;
  for (index_t c = 0; c < chunk.head_dim(); ++c) {
    double mn = INFINITY, mx = -INFINITY;
    for (index_t t = 0; t < ref.tokens(); ++t) {
      const double v = lagkv::to_float(ref(t, c));
      mn = std::fmin(mn, v);
      mx = std::fmax(mx, v);
    }
    const double inv = mx > mn ? 1.0 / (mx - mn) : 0.0;
    for (index_t t = 0; t < chunk.tokens(); ++t) {
      if (skip[usz(t)]) continue;
      const double v = (lagkv::to_float(chunk(t, c)) - mn) * inv;
      if (std::isfinite(v)) y = std::max(y, std::fabs(v));
    }
  }
  return y;
}

inline double lagkv_tolerance(index_t d, index_t lag, double y) {
  const double eps = std::numeric_limits<float>::epsilon();
  return eps * (4.0 * (static_cast<double>(d) / 8.0 + 8.0) * y + static_cast<double>(lag) / 16.0 + 12.0);
}

/// The relative bound above is first order in the float error of the stds: with the stds off by
/// at most d, a softmax moves every p by a factor within e^(+-2d), and rel ~ 2d. Up to
/// kModelLimit (Y up to ~1e4) the linear form is used as is (test_simd's rule); beyond, its
/// exact form, |got - want| <= (e^rel - 1) * |want|, which allows 100 % and more once rel passes
/// ln 2 (Y ~ 1e5) and then constrains little beyond the range (`simd_stats::beyond_model`
/// counts those scores).
///
/// Where float cannot be trusted, dispatch.hpp sends a chunk to the oracle when a float std
/// exceeds kFloatMaxStd (2^12): where the oracle's std is above that by more than the model's
/// error, the chunk certainly took that path and is checked against kExactRel (the fuzz_simd
/// finding, SimdFinding.* in tests/test_reliability.cpp, is this case). Rows far outside the
/// reference's range with a small spread (|mean(y)| > kFloatMaxMean, every std <= 2^12) are sent
/// to the oracle by the kernels' two-pass path; the one-pass path accepts a row only when
/// mean^2 <= 2 var, so a row escapes that routing only while |mean(y)| <= sqrt(2) * 2^12: beyond
/// 1.5 * kFloatMaxMean the chunk is certainly exact and is checked against kExactRel too.
constexpr double kModelLimit = 1.0 / 16.0;
constexpr double kExactRel = 8.0 * std::numeric_limits<float>::epsilon();  // float(p_k) + w * float(p_v)

/// The tolerance of a chunk's scores: the model's rel (see above), and whether the check it
/// gives still constrains anything (a bound below 100 %).
struct chunk_tolerance {
  double rel = 0.0;
  bool model_holds = true;
};

/// The relative bound a tolerance model's rel gives (linear while small, exponential beyond).
inline double relative_bound(double rel) { return rel <= kModelLimit ? rel : std::expm1(rel); }

/// The largest finite std the oracle gives a row of `chunk`; -1 when none is finite (every
/// score is then NaN, which close() checks exactly).
template <class T>
double max_oracle_std(kv_view<const T> chunk, kv_view<const T> ref) {
  std::vector<double> s(usz(chunk.tokens()));
  lagkv::reference::lagkv_token_std<T>(chunk, ref, s.data());
  double m = -1.0;
  for (double x : s)
    if (std::isfinite(x)) m = std::max(m, x);
  return m;
}

/// The largest finite |mean(y)| of a row of `chunk` (y the oracle's normalised values); 0 when none.
template <class T>
double max_abs_oracle_mean(kv_view<const T> chunk, kv_view<const T> ref) {
  const index_t d = chunk.head_dim();
  std::vector<double> s(usz(chunk.tokens())), lo(usz(d)), inv(usz(d));
  lagkv::reference::lagkv_token_std<T>(chunk, ref, s.data(), lo.data(), inv.data());
  double m = 0.0;
  for (index_t t = 0; t < chunk.tokens(); ++t) {
    double sum = 0.0;
    for (index_t c = 0; c < d; ++c) sum += (static_cast<double>(lagkv::to_float(chunk(t, c))) - lo[usz(c)]) * inv[usz(c)];
    const double mean = std::fabs(sum / static_cast<double>(d));
    if (std::isfinite(mean)) m = std::max(m, mean);
  }
  return m;
}

/// One tensor's part: the float model, or kExactRel where the chunk certainly went to the oracle
/// (the float std of its widest row, within `rel` of the oracle's, is above kFloatMaxStd) or
/// every score is NaN (a NaN in the reference).
template <class T>
chunk_tolerance tensor_tolerance(kv_view<const T> chunk, kv_view<const T> ref, index_t d, index_t lag) {
  const double rel = lagkv_tolerance(d, lag, normalised_max<T>(chunk, ref));
  const double max_std = max_oracle_std<T>(chunk, ref);
  if (max_std < 0.0 || max_std - rel > static_cast<double>(lagkv::simd::detail::kFloatMaxStd) ||
      max_abs_oracle_mean<T>(chunk, ref) > 1.5 * static_cast<double>(lagkv::simd::detail::kFloatMaxMean))
    return {kExactRel, true};
  return {rel, relative_bound(rel) < 1.0};
}

/// K's part and (w != 0) V's: a score is p_k + w * p_v, so the larger relative bound covers it.
inline chunk_tolerance combine(chunk_tolerance a, chunk_tolerance b) {
  return {std::max(a.rel, b.rel), a.model_holds && b.model_holds};
}

/// `max_score` (LagKV: 1 + w, the largest p_k + w * p_v; 0 for L2) also sizes the absolute
/// slack: the kernels flush each probability whose exp argument is below ~-87.34 (a result under
/// FLT_MIN) to 0, deciding on the float std, so p_k and w * p_v may each lose up to ~2 FLT_MIN
/// (fuzz_simd found w * p_v = 2 * 6e-39 flushed: tests/fuzz/findings/simd/regression_flush_*).
inline bool close(float got, float want, chunk_tolerance tol, double max_score) {
  if (std::isnan(want) || std::isnan(got)) return std::isnan(want) && std::isnan(got);
  if (got == want) return true;
  if (max_score > 0.0 && !(got >= 0.0f && got <= max_score * (1.0 + 1e-6))) return false;  // LagKV: p_k + w p_v
  const double slack = max_score > 0.0 ? 2.0 * max_score * FLT_MIN : FLT_MIN;
  return std::fabs(static_cast<double>(got) - want) <=
         relative_bound(tol.rel) * std::fabs(static_cast<double>(want)) + slack;
}

/// Stores `rows` (tokens x d, row-major) in layout `l` and returns the view of it.
template <class T>
kv_view<const T> store(int l, index_t block, const std::vector<T>& rows, index_t tokens, index_t d, std::vector<T>& mem,
                       std::vector<std::int32_t>& table) {
  const T junk = lagkv::from_float<T>(12345.0f);  // other heads' data must not leak in
  const index_t heads = 3, head = 1;
  switch (l) {
    case 1: {  // unaligned
      mem.assign(usz(tokens * d + 1), junk);
      std::copy(rows.begin(), rows.end(), mem.begin() + 1);
      return kv_view<const T>(mem.data() + 1, tokens, d, d);
    }
    case 2: {  // token-major [S, H, D]
      mem.assign(usz(std::max<index_t>(tokens, 1) * heads * d), junk);
      for (index_t t = 0; t < tokens; ++t)
        for (index_t c = 0; c < d; ++c) mem[usz((t * heads + head) * d + c)] = rows[usz(t * d + c)];
      return lagkv::view_shd<const T>(mem.data(), tokens, heads, d, head, tokens);
    }
    case 3: {  // transposed [H, D, S]
      const index_t cap = tokens + 2;
      mem.assign(usz(heads * d * cap), junk);
      for (index_t t = 0; t < tokens; ++t)
        for (index_t c = 0; c < d; ++c) mem[usz((head * d + c) * cap + t)] = rows[usz(t * d + c)];
      return lagkv::view_hds<const T>(mem.data(), heads, d, cap, head, tokens);
    }
    case 4: {  // paged [blocks, block, H, D], blocks scattered
      const index_t blocks = std::max<index_t>((tokens + block - 1) / block, 1), pool = blocks + 2;
      table.resize(usz(blocks));
      for (index_t b = 0; b < blocks; ++b) table[usz(b)] = static_cast<std::int32_t>((b * 5 + 1) % pool);
      if (std::gcd(static_cast<index_t>(5), pool) != 1)  // keep the map injective
        for (index_t b = 0; b < blocks; ++b) table[usz(b)] = static_cast<std::int32_t>(pool - 1 - b);
      mem.assign(usz(pool * block * heads * d), junk);
      for (index_t t = 0; t < tokens; ++t)
        for (index_t c = 0; c < d; ++c)
          mem[usz(((table[usz(t / block)] * block + t % block) * heads + head) * d + c)] = rows[usz(t * d + c)];
      return lagkv::view_paged<const T>(mem.data(), table.data(), block, heads, d, head, tokens);
    }
    default: {
      mem = rows;
      return kv_view<const T>(mem.data(), tokens, d, d);
    }
  }
}

template <class T>
class problem {
 public:
  problem(const std::uint8_t* data, std::size_t size, simd_stats& stats) : stats_(stats) {
    std::memcpy(h_, data, std::min<std::size_t>(size, 16));
    if (size > 16) inj_.assign(data + 16, data + std::min<std::size_t>(size, 16 + 3 * 24));
  }

  void run() {
    d_ = 1 + h_[2] % 72;
    lag_ = 1 + h_[3] % 40;
    chunks_ = 1 + h_[4] % 3;
    mode_ = h_[5] % 3;
    ref_len_ = 1 + h_[6] % 40;
    static const double weights[] = {0.0, 1.0, 0.5, 2.0, 1e-3, 1e3, 0.25, 1.0};
    w_ = weights[h_[7] % 8];
    layout_ = h_[8] % 5;
    block_ = 1 + h_[9] % 8;
    tokens_ = mode_ == 0 ? (chunks_ + 1) * lag_ + h_[6] % 4 : mode_ == 1 ? lag_ + ref_len_ : chunks_ * lag_;
    k_ = make(0);
    v_ = make(1);
    std::vector<T> kmem, vmem;
    std::vector<std::int32_t> ktab, vtab;
    const kv_view<const T> kv = store<T>(layout_, block_, k_, tokens_, d_, kmem, ktab);
    const kv_view<const T> vv = store<T>(layout_, block_, v_, tokens_, d_, vmem, vtab);
    const kv_view<const T> kc(k_.data(), tokens_, d_, d_), vc(v_.data(), tokens_, d_, d_);
    for (lagkv::simd::target t : lagkv::simd::available_targets()) {
      lagkv::simd::scoped_target use(t);
      target_ = lagkv::simd::target_name(t);
      if (mode_ == 0) sequence(kv, vv, kc, vc);
      if (mode_ == 1) chunk(kv, vv, kc, vc);
      if (mode_ == 2) l2(kv, kc);
    }
  }

 private:
  // tokens x d values: a base distribution, per-channel scales, constant channels, injections.
  std::vector<T> make(int which) {
    gen g{(static_cast<std::uint64_t>(h_[13]) << 16 | h_[14] << 8 | h_[15]) * 2 + static_cast<std::uint64_t>(which)};
    const int base = h_[10] % 5;
    const int e = static_cast<int>(static_cast<std::int8_t>(h_[11]));
    const double mag = std::ldexp(1.0, std::is_same_v<T, lagkv::f16> ? e / 8 : e);
    std::vector<double> off(usz(d_)), scale(usz(d_));
    for (index_t c = 0; c < d_; ++c) off[usz(c)] = 2.0 * g.normal(), scale[usz(c)] = std::exp(0.7 * g.normal());
    std::vector<T> x(usz(tokens_ * d_));
    for (index_t t = 0; t < tokens_; ++t)
      for (index_t c = 0; c < d_; ++c) {
        float f = 0.0f;
        switch (base) {
          case 0: f = static_cast<float>(g.next() % 129) / 8.0f - 8.0f; break;  // exact grid
          case 1: f = static_cast<float>(mag * (off[usz(c)] + scale[usz(c)] * g.normal())); break;
          case 2: {
            const auto bits = g.next();
            T raw;
            std::memcpy(&raw, &bits, sizeof(T));
            x[usz(t * d_ + c)] = raw;
            continue;
          }
          case 3: f = g.next() % 4 == 0 ? special(static_cast<std::uint8_t>(g.next())) : static_cast<float>(g.normal()); break;
          case 4: f = static_cast<float>(mag * std::ldexp(g.normal(), static_cast<int>(c % 9) * 8 - 32)); break;  // channel scales apart
        }
        x[usz(t * d_ + c)] = lagkv::from_float<T>(f);
      }
    // Constant channels: over the whole sequence, or within one chunk (-> constant reference).
    const int cmode = h_[12] % 4, every = 1 + (h_[12] >> 2) % 4;
    if (cmode != 0)
      for (index_t c = 0; c < d_; c += every)
        for (index_t t = 0; t < tokens_; ++t) {
          const index_t from = cmode == 1 ? 0 : cmode == 2 ? (t / lag_) * lag_ : lag_;
          if (cmode == 3 && (t < lag_ || t >= 2 * lag_)) continue;
          x[usz(t * d_ + c)] = x[usz(from * d_ + c)];
        }
    for (std::size_t i = 0; i + 2 < inj_.size(); i += 3) {
      if ((inj_[i + 2] & 1) != static_cast<std::uint8_t>(which)) continue;
      const auto at = static_cast<index_t>(inj_[i] | inj_[i + 1] << 8) % (tokens_ * d_);
      x[usz(at)] = lagkv::from_float<T>(special(static_cast<std::uint8_t>(inj_[i + 2] >> 1)));
    }
    return x;
  }

  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    std::ostringstream s;
    s << "target " << target_ << " " << lagkv::dtype_name(lagkv::dtype_traits<T>::tag) << " D=" << d_
      << " lag=" << lag_ << " chunks=" << chunks_ << " mode=" << mode_ << " layout=" << layout_ << " w=" << w_ << ": ";
    (s << ... << parts);
    throw simd_mismatch(s.str());
  }

  void sequence(kv_view<const T> kv, kv_view<const T> vv, kv_view<const T> kc, kv_view<const T> vc) {
    std::vector<float> got(usz(chunks_ * lag_), -1.0f), want(got.size());
    stats_.calls++;
    lagkv::dispatch::lagkv_sequence_scores<T>(kv, w_ != 0.0 ? vv : kv_view<const T>(), lag_, chunks_, w_, got.data());
    for (index_t c = 0; c < chunks_; ++c) {
      const auto kch = kc.slice(c * lag_, lag_), kref = kc.slice((c + 1) * lag_, lag_);
      const auto vch = vc.slice(c * lag_, lag_), vref = vc.slice((c + 1) * lag_, lag_);
      lagkv::reference::lagkv_chunk_scores<T>(kch, kref, vch, vref, w_, want.data() + c * lag_);
      chunk_tolerance tol = tensor_tolerance<T>(kch, kref, d_, lag_);
      if (w_ != 0.0) tol = combine(tol, tensor_tolerance<T>(vch, vref, d_, lag_));
      for (index_t i = 0; i < lag_; ++i) {
        const auto j = usz(c * lag_ + i);
        stats_.scores++;
        stats_.beyond_model += tol.model_holds ? 0u : 1u;
        if (!close(got[j], want[j], tol, 1.0 + w_))
          fail("sequence chunk ", c, " token ", i, ": got ", got[j], " want ", want[j], " (tol ", tol.rel,
               tol.model_holds ? ")" : ", beyond the model)");
      }
    }
    // The same chunks one at a time through the single-chunk entry point.
    for (index_t c = 0; c < chunks_; ++c) {
      std::vector<float> one(usz(lag_));
      stats_.calls++;
      lagkv::dispatch::lagkv_chunk_scores<T>(kv.slice(c * lag_, lag_), kv.slice((c + 1) * lag_, lag_),
                                             w_ != 0.0 ? vv.slice(c * lag_, lag_) : kv_view<const T>(),
                                             w_ != 0.0 ? vv.slice((c + 1) * lag_, lag_) : kv_view<const T>(), w_,
                                             one.data());
      for (index_t i = 0; i < lag_; ++i)
        if (!same_score(one[usz(i)], got[usz(c * lag_ + i)]))
          fail("chunk ", c, " token ", i, ": lagkv_chunk_scores ", one[usz(i)], " != lagkv_sequence_scores ",
               got[usz(c * lag_ + i)]);
    }
    // Both sweep schedules, forced: the same bits as the automatic choice.
    for (auto schedule : {lagkv::simd::sweep_schedule::forward, lagkv::simd::sweep_schedule::backward}) {
      lagkv::simd::scoped_schedule use(schedule);
      std::vector<float> again(got.size(), -1.0f);
      stats_.calls++;
      lagkv::dispatch::lagkv_sequence_scores<T>(kv, w_ != 0.0 ? vv : kv_view<const T>(), lag_, chunks_, w_,
                                                again.data());
      for (std::size_t j = 0; j < got.size(); ++j)
        if (!same_score(again[j], got[j]))
          fail("schedule ", schedule == lagkv::simd::sweep_schedule::forward ? "forward" : "backward", " token ", j,
               ": ", again[j], " != automatic ", got[j]);
    }
  }

  void chunk(kv_view<const T> kv, kv_view<const T> vv, kv_view<const T> kc, kv_view<const T> vc) {
    std::vector<float> got(usz(lag_), -1.0f), want(usz(lag_));
    const auto kch = kc.slice(0, lag_), kref = kc.slice(lag_, ref_len_);
    const auto vch = vc.slice(0, lag_), vref = vc.slice(lag_, ref_len_);
    stats_.calls++;
    lagkv::dispatch::lagkv_chunk_scores<T>(kv.slice(0, lag_), kv.slice(lag_, ref_len_),
                                           w_ != 0.0 ? vv.slice(0, lag_) : kv_view<const T>(),
                                           w_ != 0.0 ? vv.slice(lag_, ref_len_) : kv_view<const T>(), w_, got.data());
    lagkv::reference::lagkv_chunk_scores<T>(kch, kref, vch, vref, w_, want.data());
    chunk_tolerance tol = tensor_tolerance<T>(kch, kref, d_, lag_);
    if (w_ != 0.0) tol = combine(tol, tensor_tolerance<T>(vch, vref, d_, lag_));
    for (index_t i = 0; i < lag_; ++i) {
      stats_.scores++;
      stats_.beyond_model += tol.model_holds ? 0u : 1u;
      if (!close(got[usz(i)], want[usz(i)], tol, 1.0 + w_)) {
        if (std::getenv("LAGKV_FUZZ_VERBOSE") != nullptr) dump(got, want);
        fail("chunk (ref ", ref_len_, " tokens) token ", i, ": got ", got[usz(i)], " want ", want[usz(i)], " (tol ",
             tol.rel, tol.model_holds ? ")" : ", beyond the model)");
      }
    }
  }

  void l2(kv_view<const T> kv, kv_view<const T> kc) {
    std::vector<float> got(usz(tokens_), 1.0f), want(usz(tokens_));
    stats_.calls++;
    lagkv::dispatch::l2norm_scores<T>(kv, got.data());
    lagkv::reference::l2norm_scores<T>(kc, want.data());
    const chunk_tolerance tol{std::numeric_limits<float>::epsilon() * (static_cast<double>(d_) / 8.0 + 8.0), true};
    for (index_t t = 0; t < tokens_; ++t) {
      stats_.scores++;
      if (!close(got[usz(t)], want[usz(t)], tol, 0.0)) fail("l2 token ", t, ": got ", got[usz(t)], " want ", want[usz(t)]);
    }
  }

  // LAGKV_FUZZ_VERBOSE=1: the data and both score vectors, to turn a finding into a test.
  void dump(const std::vector<float>& got, const std::vector<float>& want) const {
    for (int which = 0; which < 2; ++which) {
      const std::vector<T>& x = which == 0 ? k_ : v_;
      std::fprintf(stderr, "%s (tokens x channels):\n", which == 0 ? "K" : "V");
      for (index_t t = 0; t < tokens_; ++t) {
        for (index_t c = 0; c < d_; ++c) std::fprintf(stderr, " %.9g", static_cast<double>(lagkv::to_float(x[usz(t * d_ + c)])));
        std::fprintf(stderr, "\n");
      }
    }
    for (std::size_t i = 0; i < got.size(); ++i)
      std::fprintf(stderr, "score %zu: got %.9g want %.9g\n", i, static_cast<double>(got[i]), static_cast<double>(want[i]));
  }

  simd_stats& stats_;
  std::uint8_t h_[16] = {};
  std::vector<std::uint8_t> inj_;
  index_t d_ = 1, lag_ = 1, chunks_ = 1, ref_len_ = 1, tokens_ = 0, block_ = 1;
  int mode_ = 0, layout_ = 0;
  double w_ = 0.0;
  const char* target_ = "";
  std::vector<T> k_, v_;
};

}  // namespace simd_detail

/// Runs one input on every available target; throws simd_mismatch on a disagreement.
inline void run_simd_program(const std::uint8_t* data, std::size_t size, simd_stats& stats) {
  stats.inputs++;
  switch (size > 1 ? data[1] % 3 : 0) {
    case 0: simd_detail::problem<float>(data, size, stats).run(); break;
    case 1: simd_detail::problem<lagkv::f16>(data, size, stats).run(); break;
    default: simd_detail::problem<lagkv::bf16>(data, size, stats).run(); break;
  }
}

}  // namespace lagkv_fuzz
