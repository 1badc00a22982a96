#pragma once
/// \file simd/q8_0_dispatch.hpp
/// \brief LagKV and L2-norm scoring that reads q8_0 rows in place (no dequantised copy of the
/// cache), on the SIMD target active for the other dtypes (simd/dispatch.hpp: LAGKV_SIMD,
/// simd::force and scoped_target select the q8_0 kernels too; NEON runs the portable ones).
///
/// Contract: the same as the fp32 path applied to the dequantised values, i.e.
/// `dispatch::lagkv_chunk_scores(q8 views...)` equals, within the fp32 path's tolerance,
/// `reference::lagkv_chunk_scores<float>` on `dequantize_rows` of the same views (the oracle
/// overloads below do exactly that). Every dequantised value d*q is exact in float, so the only
/// differences are float-vs-double rounding in the sums (see tests/test_q8_0.cpp for the bound).
///
/// Memory. Chunks are walked from the last one backwards, so chunk j's reference (chunk j+1)
/// is finished before chunk j is read: each q8_0 row is read from the cache once and dequantised
/// once, and in the same registers scored and folded into its own chunk's min/max (see
/// simd/q8_0_scalar.hpp). No dequantised copy of the cache, or of a chunk, is made.
/// Scratch: every entry point has an overload taking a `simd::q8_0_scratch`; reserved for the
/// shape beforehand, a call allocates nothing (exact path included). The overloads without one
/// use a per-thread scratch that grows on first use.
///
/// Numerics. With finite scales every value is bounded (|d*q| <= 65504*127) and any non-zero
/// range of a reference channel is >= 2^-24 (values are multiples of the fp16 grid), so
/// 1/range and the normalised sums never overflow float: the fp16 path's float-overflow fallback
/// is not needed. A block with an Inf/NaN scale makes its chunk (as scored chunk or as
/// reference) take the exact path: that chunk and its reference are dequantised into scratch
/// and scored by the double-precision oracle, which gives the oracle's NaN semantics. Rows whose
/// one-pass variance is ill-conditioned are redone in two passes in double. The fp32 path's two
/// precision rules apply unchanged (simd/dispatch.hpp finish_chunk says why): a chunk with a std
/// above kFloatMaxStd (2^12), or with a row whose mean normalised value exceeds kFloatMaxMean
/// (2^12: float's 1/range then puts errors of O(eps * |mean|) into its small std), is scored by the
/// oracle. Both are one compare per row or per two-pass row; real data never reaches them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "lagkv/error.hpp"
#include "lagkv/q8_0.hpp"
#include "lagkv/score/l2norm.hpp"
#include "lagkv/score/lagkv.hpp"
#include "lagkv/simd/common.hpp"
#include "lagkv/simd/dispatch.hpp"
#include "lagkv/simd/q8_0_scalar.hpp"
#include "lagkv/simd/q8_0_x86.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

// ---- The oracle: dequantise, then the fp32 reference -------------------------------------------

namespace reference {

/// \brief reference::lagkv_chunk_scores<float> on the dequantised rows (allocates; tests and fallbacks).
inline void lagkv_chunk_scores(q8_0_view k_chunk, q8_0_view k_ref, q8_0_view v_chunk, q8_0_view v_ref,
                               double score_v_ratio, float* out) {
  auto deq = [](const q8_0_view& v, std::vector<float>& buf) {
    buf.resize(static_cast<std::size_t>(v.tokens() * v.head_dim()));
    dequantize_rows(v, buf.data());
    return kv_view<const float>(buf.data(), v.tokens(), v.head_dim(), v.head_dim());
  };
  std::vector<float> a, b, c, d;
  const bool use_v = score_v_ratio != 0.0;
  reference::lagkv_chunk_scores<float>(deq(k_chunk, a), deq(k_ref, b), use_v ? deq(v_chunk, c) : kv_view<const float>(),
                                       use_v ? deq(v_ref, d) : kv_view<const float>(), score_v_ratio, out);
}

/// \brief reference::l2norm_scores<float> on the dequantised rows.
inline void l2norm_scores(q8_0_view keys, float* out) {
  std::vector<float> buf(static_cast<std::size_t>(keys.head_dim()));
  for (index_t t = 0; t < keys.tokens(); ++t) {
    dequantize_q8_0(keys.row(t), keys.blocks_per_row(), buf.data());
    reference::l2norm_scores<float>(kv_view<const float>(buf.data(), 1, keys.head_dim(), keys.head_dim()), out + t);
  }
}

}  // namespace reference

namespace simd {
namespace q8 {
namespace detail {

/// The q8_0 kernels of target `t` (the portable ones where no q8_0 kernels exist, e.g. NEON).
inline const q8_kernel_set& kernels_for(target t) {
  switch (t) {
#if defined(LAGKV_Q8_0_HAVE_X86)
    case target::avx2: return avx2::kKernels;
    case target::avx512: return avx512::kKernels;
#endif
    default: return scalar::kKernels;
  }
}

/// Every buffer a q8_0 scoring call uses; the driver only resize()s / assign()s them, so a call
/// within what reserve() prepared allocates nothing (exact path and L2 fallback included).
struct workspace {
  std::vector<const block_q8_0*> rows, ahead;
  std::vector<float> mn[2], mx[2];  // per-channel min / max: the reference, the chunk being read
  std::vector<float> lo, inv, bias, stds;
  std::vector<float> deq_chunk, deq_ref;  // exact path only (an Inf/NaN scale): two chunks
  std::vector<double> exact, lo_d, inv_d;

  /// Capacity for chunks and references of up to `tokens` rows of `head_dim` channels.
  void reserve(index_t tokens, index_t head_dim) {
    const auto n = static_cast<std::size_t>(std::max<index_t>(tokens, 1));
    const auto d = static_cast<std::size_t>(head_dim);
    rows.reserve(n);
    ahead.reserve(n);
    for (int i = 0; i < 2; ++i) {
      mn[i].reserve(d);
      mx[i].reserve(d);
    }
    lo.reserve(d);
    inv.reserve(d);
    bias.reserve(d);
    stds.reserve(n);
    deq_chunk.reserve(n * d);
    deq_ref.reserve(n * d);
    exact.reserve(n);
    lo_d.reserve(d);
    inv_d.reserve(d);
  }
};

struct scratch_access;

}  // namespace detail
}  // namespace q8

/// \brief Scratch of the q8_0 scorers (dispatch::lagkv_chunk_scores, lagkv_sequence_scores and
/// l2norm_scores on q8_0_view), the q8_0 counterpart of simd::scratch: reserved for the largest
/// chunk/reference (`tokens` rows) and head_dim a caller will score, calls within it allocate
/// nothing. One call at a time per scratch; the overloads without one use a per-thread scratch
/// that grows on first use. Copies are reserved like their source (contents are not copied).
class q8_0_scratch {
 public:
  q8_0_scratch() = default;
  q8_0_scratch(const q8_0_scratch& other) {
    if (other.tokens_ >= 0) reserve(other.tokens_, other.head_dim_);
  }
  q8_0_scratch& operator=(const q8_0_scratch& other) {
    if (this != &other) {
      q8_0_scratch copy(other);
      *this = std::move(copy);
    }
    return *this;
  }
  q8_0_scratch(q8_0_scratch&&) noexcept = default;
  q8_0_scratch& operator=(q8_0_scratch&&) noexcept = default;
  ~q8_0_scratch() = default;

  /// \brief Makes calls whose chunks and references hold at most `tokens` rows of `head_dim`
  /// channels allocation-free (l2norm_scores: views of at most `tokens` rows, or any length once
  /// tokens >= simd::kL2RowsPerCall). Reservations accumulate.
  /// \throws std::bad_alloc (the scratch stays usable); lagkv::error for tokens < 0 or head_dim < 1.
  void reserve(index_t tokens, index_t head_dim) {
    LAGKV_CHECK(tokens >= 0, "tokens=", tokens, ": must be >= 0");
    LAGKV_CHECK(head_dim >= 1, "head_dim=", head_dim, ": must be >= 1");
    ws_.reserve(tokens, head_dim);
    tokens_ = std::max(tokens_, tokens);
    head_dim_ = std::max(head_dim_, head_dim);
  }

 private:
  friend struct q8::detail::scratch_access;
  q8::detail::workspace ws_;
  index_t tokens_ = -1, head_dim_ = 0;  // the reservation, for copies
};

namespace q8 {
namespace detail {

struct scratch_access {
  static workspace& of(q8_0_scratch& s) { return s.ws_; }
};

/// The scratch of the overloads without one: per thread, grown to the largest shape seen.
inline q8_0_scratch& thread_scratch() {
  thread_local q8_0_scratch s;
  return s;
}

/// Pointers to rows [first, first + n) of `v` (paged views walk the table without a division per row).
inline const block_q8_0* const* rows_of(const q8_0_view& v, index_t first, index_t n,
                                        std::vector<const block_q8_0*>& out) {
  out.resize(static_cast<std::size_t>(n > 0 ? n : 1));
  if (!v.is_paged()) {
    for (index_t t = 0; t < n; ++t) out[static_cast<std::size_t>(t)] = v.data() + (first + t) * v.token_stride();
  } else {
    const index_t logical = v.first() + first;
    index_t page = logical / v.page_size(), slot = logical % v.page_size();
    for (index_t t = 0; t < n; ++t) {
      out[static_cast<std::size_t>(t)] =
          v.data() + static_cast<index_t>(v.page_table()[page]) * v.page_stride() + slot * v.token_stride();
      if (++slot == v.page_size()) {
        slot = 0;
        ++page;
      }
    }
  }
  return out.data();
}

inline void mm_init(workspace& ws, int which, index_t d) {
  ws.mn[which].assign(static_cast<std::size_t>(d), INFINITY);
  ws.mx[which].assign(static_cast<std::size_t>(d), -INFINITY);
}

/// lo, inv = 1/(hi - lo) or 0, bias = -lo*inv - 0.5 from a finished min/max (the target's
/// q8_kernel_set::ref_stats); returns whether every |lo*inv + 0.5| <= 2 (the bias form is then
/// accurate, see simd/x86_avx512.hpp).
inline bool ref_stats(const q8_kernel_set& ks, workspace& ws, int which, index_t d) {
  ws.lo.resize(static_cast<std::size_t>(d));
  ws.inv.resize(static_cast<std::size_t>(d));
  ws.bias.resize(static_cast<std::size_t>(d));
  return ks.ref_stats(ws.mn[which].data(), ws.mx[which].data(), d, ws.lo.data(), ws.inv.data(), ws.bias.data());
}

/// Two passes in double with the float lo/inv (a row the one-pass form rejected); +Inf for a row
/// whose mean is beyond kFloatMaxMean, which sends its chunk to the oracle (see score_chunk).
inline float row_std_two_pass(const block_q8_0* row, index_t d, const float* lo, const float* inv) {
  auto y = [&](index_t c) {
    return (static_cast<double>(dequantize_value(row[c / kQ8BlockValues], c % kQ8BlockValues)) - lo[c]) * inv[c];
  };
  double sum = 0.0;
  for (index_t c = 0; c < d; ++c) sum += y(c);
  const double mean = sum / static_cast<double>(d);
  // The float inv of each channel is off by up to 2^-24 relative, i.e. by ~|mean| * 2^-24 per
  // value here: beyond 2^12 that reorders the small stds of such rows.
  if (std::fabs(mean) > simd::detail::kFloatMaxMean) return INFINITY;
  double ss = 0.0;
  for (index_t c = 0; c < d; ++c) ss += (y(c) - mean) * (y(c) - mean);
  return static_cast<float>(std::sqrt(ss / static_cast<double>(d - 1)));
}

/// The oracle on one chunk against `ref` (an Inf/NaN scale in either): out = p or out += w*p,
/// with reference::lagkv_token_std's semantics (NaN tokens, poisoned references).
inline void exact_chunk(const q8_0_view& chunk, const q8_0_view& ref, float w, bool accumulate, float* out,
                        workspace& ws) {
  const index_t n = chunk.tokens(), d = chunk.head_dim();
  ws.deq_chunk.resize(static_cast<std::size_t>(n * d));
  ws.deq_ref.resize(static_cast<std::size_t>(ref.tokens() * d));
  dequantize_rows(chunk, ws.deq_chunk.data());
  dequantize_rows(ref, ws.deq_ref.data());
  ws.exact.resize(static_cast<std::size_t>(n));
  ws.lo_d.resize(static_cast<std::size_t>(d));
  ws.inv_d.resize(static_cast<std::size_t>(d));
  reference::lagkv_token_std<float>(kv_view<const float>(ws.deq_chunk.data(), n, d, d),
                                    kv_view<const float>(ws.deq_ref.data(), ref.tokens(), d, d), ws.exact.data(),
                                    ws.lo_d.data(), ws.inv_d.data());
  reference::softmax(ws.exact.data(), n);
  for (index_t t = 0; t < n; ++t) {
    const float p = static_cast<float>(ws.exact[static_cast<std::size_t>(t)]);
    out[t] = accumulate ? out[t] + w * p : p;
  }
}

/// Rows per kernel call; before each call the matching rows of the chunk read next are
/// prefetched into L2, so the backwards walk over chunks keeps DRAM busy.
inline constexpr index_t kBatch = 16;

inline void prefetch_l2(const char* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 2);  // into L2: into L1 (T0) measured slower
#else
  (void)p;
#endif
}

/// True when every std is <= kFloatMaxStd (false for +Inf, the far-row mark, and for NaN, which
/// finite scales do not produce). Branch-free: one pass over a chunk's stds.
inline bool all_float_resolvable(const float* s, index_t n) {
  int bad = 0;
  for (index_t i = 0; i < n; ++i) bad |= static_cast<int>(!(s[i] <= simd::detail::kFloatMaxStd));
  return bad == 0;
}

/// How score_chunk left a chunk. `exact`: its stds are beyond what float resolves (its own
/// min/max fold is complete); `bad_scale`: an Inf/NaN scale in its rows (its fold is not).
/// Either way the caller scores the chunk with exact_chunk; out is not written.
enum class chunk_status { ok, exact, bad_scale };

/// Folds the min/max of `rows` into slot `which` (a reference nobody scores against yet).
inline bool fold_only(const q8_kernel_set& ks, const block_q8_0* const* rows, index_t n, index_t nb, int which,
                      workspace& ws) {
  return ks.score_rows(rows, n, nb, nullptr, nullptr, nullptr, nullptr, ws.mn[which].data(), ws.mx[which].data());
}

/// Scores `chunk` against the reference statistics of slot `ref` (ws.mn/mx), folding its own
/// min/max into slot `fold` (or not, -1), and turns the stds into softmax probabilities in out
/// (or adds w*p). Returns ok, or why the chunk must go to exact_chunk (out is then not written).
inline chunk_status score_chunk(const simd::detail::target_kernels& tk, const q8_kernel_set& ks,
                                const q8_0_view& chunk, const q8_0_view& next, int ref, int fold, float w,
                                bool accumulate, float* out, workspace& ws) {
  const index_t n = chunk.tokens(), d = chunk.head_dim(), nb = chunk.blocks_per_row();
  const bool small = ref_stats(ks, ws, ref, d);
  ws.stds.resize(static_cast<std::size_t>(n));
  const block_q8_0* const* rows = rows_of(chunk, 0, n, ws.rows);
  const block_q8_0* const* ahead = next.tokens() > 0 ? rows_of(next, 0, next.tokens(), ws.ahead) : nullptr;
  const index_t row_bytes = chunk.row_bytes();
  bool bad = false;
  for (index_t i = 0; i < n; i += kBatch) {
    const index_t m = std::min(kBatch, n - i);
    for (index_t t = i; t < i + m && t < next.tokens(); ++t)
      for (index_t b = 0; b < row_bytes; b += 64) prefetch_l2(reinterpret_cast<const char*>(ahead[t]) + b);
    bad |= ks.score_rows(rows + i, m, nb, ws.lo.data(), ws.inv.data(), small ? ws.bias.data() : nullptr,
                         ws.stds.data() + i, fold >= 0 ? ws.mn[fold].data() : nullptr,
                         fold >= 0 ? ws.mx[fold].data() : nullptr);
  }
  if (bad) return chunk_status::bad_scale;
  float* s = ws.stds.data();
  for (index_t t = 0; t < n; ++t)
    if (s[t] < 0.0f) s[t] = row_std_two_pass(rows[t], d, ws.lo.data(), ws.inv.data());
  if (!all_float_resolvable(s, n)) return chunk_status::exact;  // stds or means beyond 2^12
  tk.softmax(s, n, w, out, accumulate);  // finite scales give finite stds (see file comment)
  return chunk_status::ok;
}

/// One tensor, one chunk against an arbitrary (non-empty) reference.
inline void score_one_chunk(const simd::detail::target_kernels& tk, const q8_kernel_set& ks, const q8_0_view& chunk,
                            const q8_0_view& ref, float w, bool accumulate, float* out, workspace& ws) {
  const index_t d = chunk.head_dim();
  mm_init(ws, 0, d);
  const bool ref_bad =
      fold_only(ks, rows_of(ref, 0, ref.tokens(), ws.rows), ref.tokens(), chunk.blocks_per_row(), 0, ws);
  if (ref_bad || score_chunk(tk, ks, chunk, q8_0_view(), 0, -1, w, accumulate, out, ws) != chunk_status::ok)
    exact_chunk(chunk, ref, w, accumulate, out, ws);
}

/// One tensor over `chunks` consecutive chunks (chunk j against chunk j+1), each row read once:
/// the last chunk is folded into a min/max, then chunks j = chunks-1 .. 0 are scored against the
/// min/max of chunk j+1 while their own is folded for chunk j-1.
inline void sweep(const simd::detail::target_kernels& tk, const q8_kernel_set& ks, const q8_0_view& x, index_t lag,
                  index_t chunks, float w, bool accumulate, float* out, workspace& ws) {
  const index_t d = x.head_dim(), nb = x.blocks_per_row();
  int ref = 0, cur = 1;
  mm_init(ws, ref, d);
  bool ref_bad = fold_only(ks, rows_of(x, chunks * lag, lag, ws.rows), lag, nb, ref, ws);
  for (index_t j = chunks - 1; j >= 0; --j) {
    const bool fold = j > 0;  // chunk 0 is nobody's reference
    if (fold) mm_init(ws, cur, d);
    chunk_status st = chunk_status::ok;
    if (!ref_bad)
      st = score_chunk(tk, ks, x.slice(j * lag, lag), fold ? x.slice((j - 1) * lag, lag) : q8_0_view(), ref,
                       fold ? cur : -1, w, accumulate, out + j * lag, ws);
    else if (fold && fold_only(ks, rows_of(x, j * lag, lag, ws.rows), lag, nb, cur, ws))
      st = chunk_status::bad_scale;
    if (ref_bad || st != chunk_status::ok)
      exact_chunk(x.slice(j * lag, lag), x.slice((j + 1) * lag, lag), w, accumulate, out + j * lag, ws);
    ref_bad = st == chunk_status::bad_scale;  // an exact-only chunk's own min/max is complete
    std::swap(ref, cur);
  }
}

inline void check_same_dim(const char* name, const q8_0_view& v, index_t head_dim) {
  LAGKV_CHECK(v.head_dim() == head_dim, name, ".head_dim=", v.head_dim(), ": must equal k.head_dim=", head_dim);
}

}  // namespace detail
}  // namespace q8
}  // namespace simd

namespace dispatch {

/// \brief LagKV scores of one chunk of q8_0 rows (reference::lagkv_chunk_scores' contract on the
/// dequantised values), on the active target.
/// \throws lagkv::error when the reference's head_dim differs from the chunk's, or (score_v_ratio
/// != 0) when the value views do not match the key views in shape.
inline void lagkv_chunk_scores(q8_0_view k_chunk, q8_0_view k_ref, q8_0_view v_chunk, q8_0_view v_ref,
                               double score_v_ratio, float* out, simd::q8_0_scratch& scratch) {
  namespace qd = simd::q8::detail;
  const bool use_v = score_v_ratio != 0.0;
  qd::check_same_dim("k_ref", k_ref, k_chunk.head_dim());
  if (use_v) {
    LAGKV_CHECK(v_chunk.tokens() == k_chunk.tokens(), "v_chunk.tokens=", v_chunk.tokens(),
                ": must equal k_chunk.tokens=", k_chunk.tokens());
    qd::check_same_dim("v_chunk", v_chunk, k_chunk.head_dim());
    qd::check_same_dim("v_ref", v_ref, k_chunk.head_dim());
  }
  if (k_chunk.tokens() == 0) return;
  if (k_ref.tokens() == 0 || (use_v && v_ref.tokens() == 0)) {
    reference::lagkv_chunk_scores(k_chunk, k_ref, v_chunk, v_ref, score_v_ratio, out);  // degenerate shapes
    return;
  }
  const auto& tk = simd::detail::active();
  const auto& ks = qd::kernels_for(tk.id);
  auto& ws = qd::scratch_access::of(scratch);
  qd::score_one_chunk(tk, ks, k_chunk, k_ref, 0.0f, false, out, ws);
  if (use_v) qd::score_one_chunk(tk, ks, v_chunk, v_ref, static_cast<float>(score_v_ratio), true, out, ws);
}

/// \brief The same with this thread's scratch (the first call on a thread, or with a larger
/// shape, allocates).
inline void lagkv_chunk_scores(q8_0_view k_chunk, q8_0_view k_ref, q8_0_view v_chunk, q8_0_view v_ref,
                               double score_v_ratio, float* out) {
  lagkv_chunk_scores(k_chunk, k_ref, v_chunk, v_ref, score_v_ratio, out, simd::q8::detail::thread_scratch());
}

/// \brief `chunks` consecutive chunks of `lag` q8_0 rows, each token read from memory once:
/// the q8_0 form of dispatch::lagkv_sequence_scores (same layout of `out`, same contract).
/// \throws lagkv::error for lag < 1, chunks < 0, or views too short / of different head_dim.
inline void lagkv_sequence_scores(q8_0_view k, q8_0_view v, index_t lag, index_t chunks, double score_v_ratio,
                                  float* out, simd::q8_0_scratch& scratch) {
  namespace qd = simd::q8::detail;
  const bool use_v = score_v_ratio != 0.0;
  LAGKV_CHECK(lag >= 1, "lag=", lag, ": must be >= 1");
  LAGKV_CHECK(chunks >= 0, "chunks=", chunks, ": must be >= 0");
  if (chunks == 0) return;
  LAGKV_CHECK(k.tokens() >= (chunks + 1) * lag, "k.tokens=", k.tokens(), ": must be >= (chunks + 1) * lag = ",
              (chunks + 1) * lag);
  if (use_v) {
    LAGKV_CHECK(v.tokens() >= (chunks + 1) * lag, "v.tokens=", v.tokens(), ": must be >= (chunks + 1) * lag = ",
                (chunks + 1) * lag);
    qd::check_same_dim("v", v, k.head_dim());
  }
  const auto& tk = simd::detail::active();
  const auto& ks = qd::kernels_for(tk.id);
  auto& ws = qd::scratch_access::of(scratch);
  qd::sweep(tk, ks, k, lag, chunks, 0.0f, false, out, ws);
  if (use_v) qd::sweep(tk, ks, v, lag, chunks, static_cast<float>(score_v_ratio), true, out, ws);
}

/// \brief The same with this thread's scratch (the first call on a thread, or with a larger
/// shape, allocates).
inline void lagkv_sequence_scores(q8_0_view k, q8_0_view v, index_t lag, index_t chunks, double score_v_ratio,
                                  float* out) {
  lagkv_sequence_scores(k, v, lag, chunks, score_v_ratio, out, simd::q8::detail::thread_scratch());
}

/// \brief One LagKV compression of a q8_0 head: scores, kept sets and length, like
/// dispatch::lagkv_score_head for the other dtypes.
inline lagkv_head_result lagkv_score_head(q8_0_view k, q8_0_view v, const lagkv_params& p) {
  p.validate();
  const bool use_v = p.score_v_ratio != 0.0;
  if (use_v) {
    LAGKV_CHECK(v.tokens() == k.tokens(), "v.tokens=", v.tokens(), ": must equal k.tokens=", k.tokens());
    simd::q8::detail::check_same_dim("v", v, k.head_dim());
  }
  return simd::detail::score_head_from_sequence(k.tokens(), p, [&](index_t span, index_t n, float* flat) {
    lagkv_sequence_scores(k.slice(p.sink, span), use_v ? v.slice(p.sink, span) : q8_0_view(), p.lag, n,
                          p.score_v_ratio, flat);
  });
}

/// \brief out[t] = -||k[t]||_2 of q8_0 rows (reference::l2norm_scores on the dequantised
/// values), on the active target. Rows with a non-finite scale are recomputed by the oracle
/// (dequantised into the scratch). Allocation-free when `scratch` was reserved for this head_dim
/// and min(keys.tokens(), simd::kL2RowsPerCall) tokens.
inline void l2norm_scores(q8_0_view keys, float* out, simd::q8_0_scratch& scratch) {
  namespace qd = simd::q8::detail;
  const index_t n = keys.tokens(), nb = keys.blocks_per_row(), d = keys.head_dim();
  if (n == 0) return;
  const auto& ks = qd::kernels_for(simd::detail::active().id);
  auto& ws = qd::scratch_access::of(scratch);
  constexpr index_t kBlock = simd::kL2RowsPerCall;  // row pointers per kernel call: stays in L1
  for (index_t t0 = 0; t0 < n; t0 += kBlock) {
    const index_t m = n - t0 < kBlock ? n - t0 : kBlock;
    ks.l2_rows(qd::rows_of(keys, t0, m, ws.rows), m, nb, out + t0);
    for (index_t t = t0; t < t0 + m; ++t) {
      if (std::isfinite(out[t])) continue;
      ws.deq_chunk.resize(static_cast<std::size_t>(d));
      dequantize_q8_0(keys.row(t), nb, ws.deq_chunk.data());
      reference::l2norm_scores<float>(kv_view<const float>(ws.deq_chunk.data(), 1, d, d), out + t);
    }
  }
}

/// \brief The same with this thread's scratch (the first call on a thread, or with a larger
/// shape, allocates).
inline void l2norm_scores(q8_0_view keys, float* out) {
  l2norm_scores(keys, out, simd::q8::detail::thread_scratch());
}

}  // namespace dispatch
}  // namespace lagkv
