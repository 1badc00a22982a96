#pragma once
/// \file score/lagkv.hpp
/// \brief LagKV scoring (arXiv 2504.04704), scalar reference. This is the oracle every SIMD
/// path is tested against, so it favours clarity and accuracy (double accumulation) over speed.
///
/// For one KV head, the tokens after `sink` are cut into chunks of `lag`. Chunk c is scored
/// against chunk c+1 (its "lag" reference):
///   x'[t][d] = (x[t][d] - min_d) / (max_d - min_d)   min/max over the reference chunk's tokens
///   s[t]     = std_d(x'[t][:])                        unbiased (divides by head_dim - 1)
///   p[t]     = softmax over the chunk's tokens of s
///   score[t] = p_key[t] + score_v_ratio * p_value[t]
/// and the top floor(ratio * lag) tokens of each chunk are kept.
///
/// Division by zero, defined: a channel that is constant over the reference chunk
/// (max_d == min_d) carries no scale, so its normalised value is 0 for every token of the
/// scored chunk. The authors' code produces NaN there (and then keeps an arbitrary set); with
/// this rule the score stays finite and deterministic. A NaN in a scored token makes that
/// token's std NaN; it is left out of the softmax normaliser and ranks last in selection (see
/// select.hpp), so the rest of its chunk is scored as if it were absent. A NaN in the reference
/// chunk poisons that channel, hence every token of the chunk (all rank equal: index order).

#include <cmath>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/select.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// \brief LagKV parameters; defaults are the authors'.
struct lagkv_params {
  index_t sink = 16;            ///< leading tokens never evicted
  index_t lag = 1024;           ///< chunk length (and reference length)
  double ratio = 0.5;           ///< fraction of each scored chunk that is kept
  double score_v_ratio = 1.0;   ///< weight of the value score; 0 scores keys only

  /// Tokens kept per scored chunk: floor(ratio * lag), computed as Python's int(ratio*lag).
  index_t keep_per_chunk() const { return static_cast<index_t>(std::floor(ratio * static_cast<double>(lag))); }

  /// \throws lagkv::error naming the first invalid parameter.
  void validate() const {
    LAGKV_CHECK(lag >= 2, "lag=", lag, ": must be >= 2");
    LAGKV_CHECK(ratio > 0.0 && ratio <= 1.0, "ratio=", ratio, ": must be in (0, 1]");
    LAGKV_CHECK(sink >= 0, "sink=", sink, ": must be >= 0");
    LAGKV_CHECK(std::isfinite(score_v_ratio) && score_v_ratio >= 0.0, "score_v_ratio=", score_v_ratio,
                ": must be finite and >= 0");
  }
};

/// Checks head_dim for std over channels (needs two channels for the unbiased estimate).
inline void check_lagkv_head_dim(index_t head_dim) {
  LAGKV_CHECK(head_dim >= 2, "head_dim=", head_dim, ": must be >= 2");
}

/// \brief How a sequence of `tokens` splits under LagKV's schedule when compressed once.
struct lagkv_layout {
  index_t full_chunks = 0;    ///< complete chunks after the sink
  index_t scored_chunks = 0;  ///< all complete chunks but the last (the last is the final reference)
  index_t tail = 0;           ///< last full chunk + remainder, kept untouched

  static lagkv_layout of(index_t tokens, index_t sink, index_t lag) {
    lagkv_layout l;
    const index_t body = tokens > sink ? tokens - sink : 0;
    l.full_chunks = body / lag;
    l.scored_chunks = l.full_chunks >= 2 ? l.full_chunks - 1 : 0;
    l.tail = body - l.scored_chunks * lag;
    return l;
  }
};

namespace reference {

/// Per-token unbiased std over channels of chunk rows normalised by `ref`'s per-channel range.
/// `chunk` and `ref` have the same head_dim; out has chunk.tokens() entries. `lo` and
/// `inv_range` are the caller's scratch of head_dim doubles each (overwritten), so this form
/// allocates nothing: the SIMD scorers' exact fallback runs it inside the cache's noexcept phase.
template <class T>
void lagkv_token_std(kv_view<const T> chunk, kv_view<const T> ref, double* out, double* lo, double* inv_range) {
  const index_t d = chunk.head_dim();
  for (index_t c = 0; c < d; ++c) {
    double mn = INFINITY, mx = -INFINITY;
    bool nan = false;
    for (index_t t = 0; t < ref.tokens(); ++t) {
      const double x = to_float(ref(t, c));
      nan |= std::isnan(x);
      mn = std::fmin(mn, x);
      mx = std::fmax(mx, x);
    }
    lo[c] = nan ? NAN : mn;
    // Constant channel -> normalised value 0 (see file comment); NaN keeps propagating.
    inv_range[c] = nan ? NAN : (mx > mn ? 1.0 / (mx - mn) : 0.0);
  }
  for (index_t t = 0; t < chunk.tokens(); ++t) {
    double sum = 0.0;
    for (index_t c = 0; c < d; ++c) sum += (to_float(chunk(t, c)) - lo[c]) * inv_range[c];
    const double mean = sum / static_cast<double>(d);
    double ss = 0.0;
    for (index_t c = 0; c < d; ++c) {
      const double dev = (to_float(chunk(t, c)) - lo[c]) * inv_range[c] - mean;
      ss += dev * dev;
    }
    out[t] = std::sqrt(ss / static_cast<double>(d - 1));
  }
}

/// lagkv_token_std with its own scratch (allocates two head_dim vectors).
template <class T>
void lagkv_token_std(kv_view<const T> chunk, kv_view<const T> ref, double* out) {
  std::vector<double> lo(static_cast<std::size_t>(chunk.head_dim())), inv_range(lo.size());
  lagkv_token_std(chunk, ref, out, lo.data(), inv_range.data());
}

/// In-place softmax; max-subtracted so large std values cannot overflow. NaN entries stay NaN
/// and are left out of the normaliser, so one poisoned token does not poison its chunk.
inline void softmax(double* x, index_t n) {
  double mx = -INFINITY;
  for (index_t i = 0; i < n; ++i) mx = std::fmax(mx, x[i]);  // fmax skips NaN
  double sum = 0.0;
  for (index_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    if (!std::isnan(x[i])) sum += x[i];
  }
  for (index_t i = 0; i < n; ++i) x[i] /= sum;
}

/// \brief Scores of one chunk: softmax(std(K)) + score_v_ratio * softmax(std(V)).
/// The value views are ignored (may be empty) when score_v_ratio == 0.
template <class T>
void lagkv_chunk_scores(kv_view<const T> k_chunk, kv_view<const T> k_ref, kv_view<const T> v_chunk,
                        kv_view<const T> v_ref, double score_v_ratio, float* out) {
  const index_t n = k_chunk.tokens();
  std::vector<double> pk(static_cast<std::size_t>(n)), pv;
  lagkv_token_std(k_chunk, k_ref, pk.data());
  softmax(pk.data(), n);
  if (score_v_ratio != 0.0) {
    pv.resize(static_cast<std::size_t>(n));
    lagkv_token_std(v_chunk, v_ref, pv.data());
    softmax(pv.data(), n);
  }
  for (index_t t = 0; t < n; ++t)
    out[t] = static_cast<float>(score_v_ratio != 0.0 ? pk[t] + score_v_ratio * pv[t] : pk[t]);
}

}  // namespace reference

/// \brief Result of scoring one head's whole sequence once (what `lagkv-cli score` prints).
struct lagkv_head_result {
  std::vector<index_t> kept;                     ///< absolute indices kept in the scored region, ascending
  std::vector<std::vector<float>> chunk_scores;  ///< [scored_chunks][lag]
  index_t cache_len = 0;                         ///< sink + kept + tail
};

/// \brief Scores one head's sequence with LagKV exactly as one compression of the authors' cache.
/// `chunk_scorer(k_chunk, k_ref, v_chunk, v_ref, score_v_ratio, out)` computes one chunk's
/// scores; it defaults to the scalar reference (the SIMD dispatcher is a drop-in).
template <class T, class ChunkScorer>
lagkv_head_result lagkv_score_head(kv_view<const T> k, kv_view<const T> v, const lagkv_params& p,
                                   ChunkScorer&& chunk_scorer) {
  p.validate();
  check_lagkv_head_dim(k.head_dim());
  const bool use_v = p.score_v_ratio != 0.0;
  if (use_v) {
    LAGKV_CHECK(v.tokens() == k.tokens(), "v.tokens=", v.tokens(), ": must equal k.tokens=", k.tokens());
    LAGKV_CHECK(v.head_dim() == k.head_dim(), "v.head_dim=", v.head_dim(), ": must equal k.head_dim=", k.head_dim());
  }
  const lagkv_layout layout = lagkv_layout::of(k.tokens(), p.sink, p.lag);
  const index_t keep = p.keep_per_chunk();
  lagkv_head_result r;
  r.chunk_scores.resize(static_cast<std::size_t>(layout.scored_chunks));
  r.kept.resize(static_cast<std::size_t>(layout.scored_chunks * keep));
  std::vector<index_t> scratch;
  for (index_t c = 0; c < layout.scored_chunks; ++c) {
    const index_t start = p.sink + c * p.lag;
    auto& scores = r.chunk_scores[static_cast<std::size_t>(c)];
    scores.resize(static_cast<std::size_t>(p.lag));
    kv_view<const T> vc, vr;
    if (use_v) {
      vc = v.slice(start, p.lag);
      vr = v.slice(start + p.lag, p.lag);
    }
    chunk_scorer(k.slice(start, p.lag), k.slice(start + p.lag, p.lag), vc, vr, p.score_v_ratio, scores.data());
    index_t* out = r.kept.data() + c * keep;
    select_top_k(scores.data(), p.lag, keep, out, scratch);
    for (index_t i = 0; i < keep; ++i) out[i] += start;
  }
  r.cache_len = (k.tokens() < p.sink ? k.tokens() : p.sink) + layout.scored_chunks * keep + layout.tail;
  return r;
}

/// Scalar-reference form of lagkv_score_head.
template <class T>
lagkv_head_result lagkv_score_head(kv_view<const T> k, kv_view<const T> v, const lagkv_params& p) {
  return lagkv_score_head(k, v, p, [](auto kc, auto kr, auto vc, auto vr, double w, float* out) {
    reference::lagkv_chunk_scores<T>(kc, kr, vc, vr, w, out);
  });
}

}  // namespace lagkv
