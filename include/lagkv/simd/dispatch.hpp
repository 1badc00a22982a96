#pragma once
/// \file simd/dispatch.hpp
/// \brief Entry points the policies and the cache call for scoring; they run the best kernel
/// this CPU has, chosen once.
///
/// Targets: `scalar` (portable, always there), `avx2` (AVX2+FMA+F16C) and `avx512`
/// (F/BW/VL/DQ) on x86 with GCC or Clang — compiled in target regions, so a plain x86-64 build
/// carries them and the CPU is asked at run time — and `neon` on AArch64 (selected from the
/// compiler's flags). The choice is made on first use: `LAGKV_SIMD=scalar|avx2|avx512|neon`
/// when set (an unknown or unavailable name throws lagkv::error from that first call), else the
/// best available. `lagkv::simd::force(t)` switches for tests and benchmarks; `reset()` undoes it.
/// Define `LAGKV_NO_SIMD` before including to build the scalar target only.
///
/// Results follow the scalar oracle's semantics (score/lagkv.hpp) exactly: a constant reference
/// channel normalises to 0, a NaN token scores NaN outside the softmax normaliser, a NaN in the
/// reference poisons its chunk. Scores agree with the oracle to a relative tolerance (the test
/// derives it: ~ (3*(D/8 + 8) * max|normalised x| + lag/16 + 10) float epsilons). Where float
/// arithmetic cannot represent the oracle's double intermediates (1/range outside the float
/// range, a normalised row whose sums overflow, or stds above 2^12, too large for float to
/// resolve the differences the softmax turns into scores), that chunk is recomputed by the oracle.
///
/// Memory: every entry point has an overload taking a `simd::scratch`; reserved beforehand for
/// the shapes it will see, a call allocates nothing (the exact fallback included). The overloads
/// without one use a per-thread scratch that grows on first use. The cache's policies own a
/// scratch each, reserved when they are bound, so compressions never allocate.

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/score/l2norm.hpp"
#include "lagkv/score/lagkv.hpp"
#include "lagkv/select.hpp"
#include "lagkv/simd/arm_neon.hpp"
#include "lagkv/simd/common.hpp"
#include "lagkv/simd/scalar.hpp"
#include "lagkv/simd/x86_avx2.hpp"
#include "lagkv/simd/x86_avx512.hpp"
#include "lagkv/view.hpp"

namespace lagkv {
namespace simd {
namespace detail {

struct cpu_features {
  bool avx2 = false;
  bool avx512 = false;
};

/// Asked once (function-local static: initialised thread-safely on first use, never written again).
inline const cpu_features& cpu() {
  static const cpu_features features = [] {
    cpu_features f;
#if defined(LAGKV_SIMD_HAVE_AVX2) || defined(LAGKV_SIMD_HAVE_AVX512)
    __builtin_cpu_init();
    unsigned a = 0, b = 0, c = 0, d = 0;
    const bool f16c = __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & (1u << 29)) != 0;  // F16C bit
    // __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 state.
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
    f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    return f;
  }();
  return features;
}

/// The table of a target this build carries, or nullptr.
inline const target_kernels* compiled_kernels(target t) {
  switch (t) {
    case target::scalar: return &scalar::kKernels;
#if defined(LAGKV_SIMD_HAVE_AVX2)
    case target::avx2: return &avx2::kKernels;
#endif
#if defined(LAGKV_SIMD_HAVE_AVX512)
    case target::avx512: return &avx512::kKernels;
#endif
#if defined(LAGKV_SIMD_HAVE_NEON)
    case target::neon: return &neon::kKernels;
#endif
    default: return nullptr;
  }
}

inline bool cpu_runs(target t) {
  switch (t) {
    case target::avx2: return cpu().avx2;
    case target::avx512: return cpu().avx512;
    default: return true;  // scalar; NEON is only compiled where the compiler targets it
  }
}

}  // namespace detail

/// True when this build carries target `t` and this CPU can run it.
inline bool is_available(target t) { return detail::compiled_kernels(t) != nullptr && detail::cpu_runs(t); }

/// \brief Targets usable here, fastest first; `scalar` is always present (last).
inline const std::vector<target>& available_targets() {
  static const std::vector<target> targets = [] {
    std::vector<target> v;
    for (target t : {target::avx512, target::avx2, target::neon, target::scalar})
      if (is_available(t)) v.push_back(t);
    return v;
  }();
  return targets;
}

/// The fastest available target.
inline target best_target() { return available_targets().front(); }

namespace detail {

inline std::string available_list() {
  std::string s;
  for (target t : available_targets()) s += (s.empty() ? "" : ", ") + std::string(target_name(t));
  return s;
}

/// LAGKV_SIMD when set, else the best target. \throws lagkv::error on a bad LAGKV_SIMD.
inline const target_kernels* default_kernels() {
  const char* env = std::getenv("LAGKV_SIMD");
  if (env == nullptr || *env == '\0') return compiled_kernels(best_target());
  target t{};
  LAGKV_CHECK(parse_target(env, &t), "LAGKV_SIMD=", env, ": unknown target (expected scalar, avx2, avx512 or neon)");
  LAGKV_CHECK(is_available(t), "LAGKV_SIMD=", env, ": not available in this build on this CPU (available: ",
              available_list(), ")");
  return compiled_kernels(t);
}

/// The active table. An atomic pointer (not a global written by a constructor): the first use
/// stores the default once; force()/reset() may swap it while other threads score.
inline std::atomic<const target_kernels*>& active_slot() {
  static std::atomic<const target_kernels*> slot{nullptr};
  return slot;
}
inline const target_kernels& active() {
  const target_kernels* k = active_slot().load(std::memory_order_acquire);
  if (k == nullptr) {
    const target_kernels* chosen = default_kernels();
    active_slot().compare_exchange_strong(k, chosen, std::memory_order_acq_rel);
    k = active_slot().load(std::memory_order_acquire);
  }
  return *k;
}

}  // namespace detail

/// The target scoring calls use now.
inline target active_target() { return detail::active().id; }

/// \brief Makes every later scoring call (all threads) use target `t`; for tests and benchmarks.
/// \throws lagkv::error when `t` is not available here (see available_targets()).
inline void force(target t) {
  LAGKV_CHECK(is_available(t), "target=", target_name(t), ": not available in this build on this CPU (available: ",
              detail::available_list(), ")");
  detail::active_slot().store(detail::compiled_kernels(t), std::memory_order_release);
}

/// Back to the default choice (LAGKV_SIMD or the best target).
inline void reset() { detail::active_slot().store(detail::default_kernels(), std::memory_order_release); }

/// \brief RAII force(): restores the previous target on destruction.
class scoped_target {
 public:
  explicit scoped_target(target t) : previous_(&detail::active()) { force(t); }
  scoped_target(const scoped_target&) = delete;
  scoped_target& operator=(const scoped_target&) = delete;
  ~scoped_target() { detail::active_slot().store(previous_, std::memory_order_release); }

 private:
  const detail::target_kernels* previous_;
};

/// \brief The order in which lagkv_sequence_scores walks a tensor's chunks. Both read each row
/// from memory once and give the same scores bit for bit; they differ in what stays in cache.
/// `forward`: the min/max of chunk j+2 is read while chunk j is scored from cache (three chunks
/// live). `backward`: chunks last to first, each row scored and folded into its own chunk's
/// min/max in one read (one chunk live). `automatic` (the default) picks per row size.
enum class sweep_schedule { automatic, forward, backward };

namespace detail {
inline std::atomic<sweep_schedule>& schedule_slot() {
  static std::atomic<sweep_schedule> slot{sweep_schedule::automatic};
  return slot;
}
}  // namespace detail

/// \brief RAII override of the sweep schedule (all threads); for tests and benchmarks.
class scoped_schedule {
 public:
  explicit scoped_schedule(sweep_schedule s) : previous_(detail::schedule_slot().exchange(s)) {}
  scoped_schedule(const scoped_schedule&) = delete;
  scoped_schedule& operator=(const scoped_schedule&) = delete;
  ~scoped_schedule() { detail::schedule_slot().store(previous_); }

 private:
  sweep_schedule previous_;
};

namespace detail {

// ---- The driver: chunk and sequence logic shared by every target -----------------------------

template <class T>
struct row_buffers {
  std::vector<const T*> ptrs;
  std::vector<T> gather;  // rows of a non-contiguous view, copied (not converted) one chunk at a time
  std::vector<T> max, min;  // per-channel max / min of the current reference (natural order)
};

/// Rows past a chunk whose pointers the sequence sweep hands the kernels for prefetching.
inline constexpr index_t kAheadRows = 16;

/// The largest kernel_dim(head_dim) of every target this build carries for T: scratch reserved
/// with it fits whichever target force()/scoped_target selects later.
template <class T>
index_t max_kernel_dim(index_t head_dim) {
  index_t kd = head_dim;
  for (target t : {target::scalar, target::avx2, target::avx512, target::neon})
    if (const target_kernels* k = compiled_kernels(t)) kd = std::max(kd, kernels_for<T>(*k).kernel_dim(head_dim));
  return kd;
}

/// Every buffer a scoring call uses. The driver only resize()s them, so a call whose shape is
/// within what reserve() prepared never allocates (resize within capacity cannot).
struct workspace {
  row_buffers<float> f32[2];
  row_buffers<f16> h16[2];
  row_buffers<bf16> b16[2];
  std::vector<float> lo, inv, bias, stds, ubuf_raw;
  std::vector<double> lo_d, inv_d, exact;  // the exact (double) fallback's per-channel statistics and stds
  std::vector<std::uint64_t> mm[2];

  row_buffers<float>* rows(float*) { return f32; }
  row_buffers<f16>* rows(f16*) { return h16; }
  row_buffers<bf16>* rows(bf16*) { return b16; }

  float* ubuf(index_t n) {
    ubuf_raw.resize(static_cast<std::size_t>(n) + 16);
    const auto addr = reinterpret_cast<std::uintptr_t>(ubuf_raw.data());
    return ubuf_raw.data() + ((64 - addr % 64) % 64) / sizeof(float);
  }

  /// Capacity for chunks and references of up to `tokens` rows (plus the sweep's look-ahead)
  /// of `head_dim` channels of T, on any target; `gather`: room to copy strided rows.
  template <class T>
  void reserve(index_t tokens, index_t head_dim, bool gather) {
    const auto n = static_cast<std::size_t>(std::max<index_t>(tokens, 1) + kAheadRows);
    const auto d = static_cast<std::size_t>(head_dim);
    const auto kd = static_cast<std::size_t>(max_kernel_dim<T>(head_dim));
    const auto lanes = static_cast<std::size_t>(mm_lanes<T>(head_dim));
    for (int i = 0; i < 2; ++i) {
      row_buffers<T>& b = rows(static_cast<T*>(nullptr))[i];
      b.ptrs.reserve(n);
      if (gather) b.gather.reserve(n * d);
      b.max.reserve(lanes);
      b.min.reserve(lanes);
      mm[i].reserve((mm_state_bytes<T>(head_dim) + 7) / 8);
    }
    lo.reserve(kd);
    inv.reserve(kd);
    bias.reserve(kd);
    stds.reserve(n);
    ubuf_raw.reserve(4 * kd + 16);
    lo_d.reserve(d);
    inv_d.reserve(d);
    exact.reserve(n);
  }
};

struct scratch_access;

}  // namespace detail

/// \brief l2norm_scores scores this many rows per kernel call, so a scratch reserved for this
/// many tokens serves l2norm_scores on views of any length.
inline constexpr index_t kL2RowsPerCall = 256;

/// \brief Scratch memory of the scoring entry points (dispatch::lagkv_chunk_scores,
/// lagkv_sequence_scores, l2norm_scores), for callers that must not allocate while they score.
///
/// A scoring call needs O(rows + head_dim) scratch: row pointers, per-channel statistics, the
/// stds, the exact (double) fallback's buffers and, for views whose rows are strided in memory
/// (a transposed V, view_hds), a copy of the rows. The overloads without a scratch argument use
/// one scratch per thread that grows to the largest shape it has seen, so a thread's first call
/// (or a larger shape) allocates. A caller with a section that must not allocate — the cache's
/// noexcept compaction — owns a scratch, reserves it for its largest shape before that section
/// and passes it: a call within the reservation then allocates nothing on any target, fallbacks
/// included. lagkv_policy and the L2 policies own one each, reserved in bind().
///
/// One scratch serves one call at a time: give each thread (or each cache layer) its own.
/// Copies are reserved like their source; the contents are scratch and are not copied.
class scratch {
 public:
  scratch() = default;
  scratch(const scratch& other) {
    for (std::size_t i = 0; i < 3; ++i)
      if (other.res_[i].tokens >= 0)
        reserve(static_cast<dtype>(i), other.res_[i].tokens, other.res_[i].head_dim, other.res_[i].strided);
  }
  scratch& operator=(const scratch& other) {
    if (this != &other) {
      scratch copy(other);
      *this = std::move(copy);
    }
    return *this;
  }
  scratch(scratch&&) noexcept = default;
  scratch& operator=(scratch&&) noexcept = default;
  ~scratch() = default;

  /// \brief Makes scoring calls on views of storage type `type`, whose chunks and references
  /// hold at most `tokens` rows of `head_dim` channels, allocation-free (for l2norm_scores:
  /// views of at most `tokens` rows, or of any length once tokens >= kL2RowsPerCall).
  /// Reservations accumulate: each buffer keeps the largest capacity asked for.
  /// \param strided_rows also reserve the copy of rows that are not contiguous in memory
  /// (view_hds); contiguous rows (view_hsd, view_shd, paged views) are read in place.
  /// \throws std::bad_alloc (the scratch stays usable, possibly partly reserved);
  /// lagkv::error for tokens < 0 or head_dim < 1.
  void reserve(dtype type, index_t tokens, index_t head_dim, bool strided_rows) {
    LAGKV_CHECK(tokens >= 0, "tokens=", tokens, ": must be >= 0");
    LAGKV_CHECK(head_dim >= 1, "head_dim=", head_dim, ": must be >= 1");
    visit_dtype(type, [&](auto tag) { ws_.reserve<decltype(tag)>(tokens, head_dim, strided_rows); });
    reservation& r = res_[static_cast<std::size_t>(type)];
    r.tokens = std::max(r.tokens, tokens);
    r.head_dim = std::max(r.head_dim, head_dim);
    r.strided = r.strided || strided_rows;
  }

 private:
  friend struct detail::scratch_access;
  struct reservation {
    index_t tokens = -1;  // -1: never reserved
    index_t head_dim = 0;
    bool strided = false;
  };
  detail::workspace ws_;
  reservation res_[3];  // by dtype, for copies
};

namespace detail {

struct scratch_access {
  static workspace& of(scratch& s) { return s.ws_; }
};

/// The scratch of the overloads without one: per thread, grown to the largest shape seen.
inline scratch& thread_scratch() {
  thread_local scratch s;
  return s;
}

/// Pointers to rows [first, first + n) of `v`. Contiguous rows are used in place (paged views
/// walk the block table without a division per row); other views are gathered into `b`.
template <class T>
const T* const* rows_of(const kv_view<const T>& v, index_t first, index_t n, row_buffers<T>& b) {
  b.ptrs.resize(static_cast<std::size_t>(n > 0 ? n : 1));
  const index_t d = v.head_dim();
  if (v.rows_contiguous()) {
    if (!v.is_paged()) {
      for (index_t t = 0; t < n; ++t) b.ptrs[static_cast<std::size_t>(t)] = v.data() + (first + t) * v.token_stride();
    } else {
      const index_t logical = v.first() + first;
      index_t block = logical / v.block_size(), slot = logical % v.block_size();
      for (index_t t = 0; t < n; ++t) {
        b.ptrs[static_cast<std::size_t>(t)] =
            v.data() + static_cast<index_t>(v.block_table()[block]) * v.block_stride() + slot * v.token_stride();
        if (++slot == v.block_size()) {
          slot = 0;
          ++block;
        }
      }
    }
    return b.ptrs.data();
  }
  b.gather.resize(static_cast<std::size_t>(n * d));
  T* g = b.gather.data();
  if (!v.is_paged()) {
    // Channel-major (transposed) layouts read along tokens: channel c of consecutive tokens is adjacent.
    const index_t ts = v.token_stride(), cs = v.channel_stride();
    const T* base = v.data() + first * ts;
    for (index_t c = 0; c < d; ++c)
      for (index_t t = 0; t < n; ++t) g[t * d + c] = base[t * ts + c * cs];
  } else {
    for (index_t t = 0; t < n; ++t)
      for (index_t c = 0; c < d; ++c) g[t * d + c] = v(first + t, c);
  }
  for (index_t t = 0; t < n; ++t) b.ptrs[static_cast<std::size_t>(t)] = g + t * d;
  return b.ptrs.data();
}

/// The oracle's std of one row (same operations as reference::lagkv_token_std), used to tell a
/// genuine NaN (NaN/Inf input) from a float overflow the oracle does not have.
template <class T>
double row_std_double(const T* row, index_t d, const double* lo, const double* inv) {
  double sum = 0.0;
  for (index_t c = 0; c < d; ++c) sum += (to_float(row[c]) - lo[c]) * inv[c];
  const double mean = sum / static_cast<double>(d);
  double ss = 0.0;
  for (index_t c = 0; c < d; ++c) {
    const double dev = (to_float(row[c]) - lo[c]) * inv[c] - mean;
    ss += dev * dev;
  }
  return std::sqrt(ss / static_cast<double>(d - 1));
}

template <class T>
void* mm_buffer(workspace& ws, int which, index_t d) {
  ws.mm[which].resize((mm_state_bytes<T>(d) + 7) / 8);
  return ws.mm[which].data();
}

/// Reference statistics of a finished min/max state, in the target's kernel order: lo, 1/range
/// and bias = -lo/range - 0.5 in float (1/range within 2 ulp of the oracle's double), plus the
/// flags that route a chunk to the oracle. The min/max patterns are converted by the target's
/// own vector loads: this runs once per chunk and must stay small next to the chunk's rows.
template <class T>
ref_summary prepare_ref(const kernel_set<T>& ks, const void* mm, index_t d, workspace& ws) {
  row_buffers<T>& rb = ws.rows(static_cast<T*>(nullptr))[0];
  rb.max.resize(static_cast<std::size_t>(mm_lanes<T>(d)));
  rb.min.resize(static_cast<std::size_t>(mm_lanes<T>(d)));
  const auto kd = static_cast<std::size_t>(ks.kernel_dim(d));
  ws.lo.resize(kd);
  ws.inv.resize(kd);
  ws.bias.resize(kd);
  const unsigned flags = ks.ref_stats(mm, d, rb.max.data(), rb.min.data(), ws.lo.data(), ws.inv.data(), ws.bias.data());
  ref_summary rs;
  rs.poisoned = (flags & kRefPoisoned) != 0;
  rs.f32_safe = (flags & kRefUnsafe) == 0;
  rs.small_bias = (flags & kRefFarBias) == 0;
  return rs;
}

/// The oracle's lo and 1/range in double (natural order), computed only when a row needs them.
template <class T>
void exact_ref(index_t d, workspace& ws) {
  const row_buffers<T>& rb = ws.rows(static_cast<T*>(nullptr))[0];
  ws.lo_d.resize(static_cast<std::size_t>(d));
  ws.inv_d.resize(static_cast<std::size_t>(d));
  for (std::size_t c = 0; c < static_cast<std::size_t>(d); ++c) {
    const double mx = to_float(rb.max[c]), mn = to_float(rb.min[c]);
    ws.lo_d[c] = mn;
    ws.inv_d[c] = mx > mn ? 1.0 / (mx - mn) : 0.0;
  }
}

/// True when no entry is Inf or NaN; a branch-free pass over the bits, which vectorises.
inline bool all_finite(const float* s, index_t n) {
  std::uint32_t bad = 0;
  for (index_t i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, s + i, sizeof u);
    bad |= static_cast<std::uint32_t>((u & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

/// True when some entry exceeds kFloatMaxStd (NaN compares false: NaN rows are handled apart).
/// Branch-free, so it vectorises: one pass over a chunk's stds.
inline bool any_above_float_max_std(const float* s, index_t n) {
  int above = 0;
  for (index_t i = 0; i < n; ++i) above |= static_cast<int>(s[i] > kFloatMaxStd);
  return above != 0;
}

/// Turns the stds of one scored chunk (ws.stds) into softmax probabilities in `out` (or adds
/// w * p), applying the oracle's semantics where float could not: a poisoned reference gives
/// NaN everywhere; an unsafe reference (1/range not a normal float), a float overflow the
/// oracle does not have, or a std above kFloatMaxStd sends the chunk to the oracle (exact path,
/// allocation-free given reserved scratch).
///
/// Why stds above 2^12. The softmax turns a difference between two stds into a factor
/// e^(s_i - s_j), so the stds need an absolute error well below 1. The float kernels form
/// y = (x - lo) * inv with a relative error of a few eps (the subtraction's and 1/range's
/// roundings) and their two-pass std then carries an absolute error of about
/// (D/16 + c) * eps * rms(y), rms(y) = sqrt(s^2 + mean(y)^2) >= s: at s = 2^12 that is
/// ~(D/16 + c) * 2^-11: p within ~1 % (measured <= 1e-3 on every target at s ~ 2^12), inside
/// the tolerance the tests derive. The error grows with s, and from s ~ 2^20 on, stds the oracle
/// tells apart come out equal or swapped in float, so the kept set changes (the fuzz_simd
/// finding: stds ~2e16 differing by ~300). Double has 29 more bits. Real normalised stds are
/// O(1..100), so the oracle does not run on real data; the test is one pass over the stds.
/// Rows far outside the reference's range with a small spread (|mean(y)| large, s <= 2^12) would
/// keep an error that rms(y) makes large: the kernels' two-pass path (the only one such rows
/// reach) reports +Inf for them (kFloatMaxMean, common.hpp), which the non-finite branch above
/// turns into an exact chunk.
template <class T>
void finish_chunk(const target_kernels& tk, const kv_view<const T>& chunk, const kv_view<const T>& ref,
                  const T* const* srows, const ref_summary& rs, workspace& ws, float w, bool accumulate, float* out) {
  const index_t n = chunk.tokens(), d = chunk.head_dim();
  float* s = ws.stds.data();
  bool exact = !rs.f32_safe;
  if (rs.poisoned) {
    std::fill(s, s + n, NAN);
  } else if (!exact && !all_finite(s, n)) {
    bool have_exact_ref = false;
    for (index_t t = 0; t < n && !exact; ++t) {
      if (std::isfinite(s[t])) continue;
      if (!have_exact_ref) {
        exact_ref<T>(d, ws);
        have_exact_ref = true;
      }
      if (std::isnan(row_std_double(srows[t], d, ws.lo_d.data(), ws.inv_d.data())))
        s[t] = NAN;  // genuine (NaN or Inf in the token): NaN score, outside the normaliser
      else
        exact = true;  // float overflowed where double did not
    }
  }
  if (!exact && !rs.poisoned && any_above_float_max_std(s, n)) exact = true;  // see above
  if (exact) {
    // Allocation-free given a reserved scratch: the oracle's statistics go to lo_d / inv_d.
    ws.exact.resize(static_cast<std::size_t>(n));
    ws.lo_d.resize(static_cast<std::size_t>(d));
    ws.inv_d.resize(static_cast<std::size_t>(d));
    reference::lagkv_token_std(chunk, ref, ws.exact.data(), ws.lo_d.data(), ws.inv_d.data());
    reference::softmax(ws.exact.data(), n);
    for (index_t t = 0; t < n; ++t) {
      const float p = static_cast<float>(ws.exact[static_cast<std::size_t>(t)]);
      out[t] = accumulate ? out[t] + w * p : p;
    }
    return;
  }
  tk.softmax(s, n, w, out, accumulate);
}

/// One tensor (K or V), one chunk against an arbitrary reference.
template <class T>
void score_one_chunk(const target_kernels& tk, const kv_view<const T>& chunk, const kv_view<const T>& ref, float w,
                     bool accumulate, float* out, workspace& ws) {
  const kernel_set<T>& ks = kernels_for<T>(tk);
  const index_t d = chunk.head_dim(), n = chunk.tokens();
  row_buffers<T>* rb = ws.rows(static_cast<T*>(nullptr));
  void* mm = mm_buffer<T>(ws, 0, d);
  float* ubuf = ws.ubuf(4 * ks.kernel_dim(d));
  ws.stds.resize(static_cast<std::size_t>(n));
  mm_init<T>(mm, d);
  ks.fused_rows(nullptr, 0, rows_of(ref, 0, ref.tokens(), rb[1]), ref.tokens(), ref.tokens(), d, nullptr, nullptr,
                nullptr, mm, nullptr, ubuf);
  const ref_summary rs = prepare_ref<T>(ks, mm, d, ws);
  const T* const* srows = rows_of(chunk, 0, n, rb[0]);
  ks.fused_rows(srows, n, nullptr, 0, 0, d, ws.lo.data(), ws.inv.data(), rs.small_bias ? ws.bias.data() : nullptr, mm,
                ws.stds.data(), ubuf);
  finish_chunk<T>(tk, chunk, ref, srows, rs, ws, w, accumulate, out);
}

/// Schedule forward (chunk j against chunk j+1): before chunk 0, the min/max of chunk 1. Step j
/// then scores chunk j against the finished min/max of chunk j+1 and, in the same row loop,
/// accumulates the min/max of chunk j+2. So each row is read from DRAM once (as a later chunk's
/// reference) and re-read from cache two steps later when it is scored: three chunks of one
/// tensor are live at a time (96 KiB for lag 128, D 128, fp16), which L2 holds.
template <class T>
void sweep_forward(const target_kernels& tk, const kv_view<const T>& x, index_t lag, index_t chunks, float w,
                   bool accumulate, float* out, workspace& ws) {
  const kernel_set<T>& ks = kernels_for<T>(tk);
  const index_t d = x.head_dim();
  row_buffers<T>* rb = ws.rows(static_cast<T*>(nullptr));
  void* cur = mm_buffer<T>(ws, 0, d);
  void* next = mm_buffer<T>(ws, 1, d);
  float* ubuf = ws.ubuf(4 * ks.kernel_dim(d));
  ws.stds.resize(static_cast<std::size_t>(lag));
  mm_init<T>(cur, d);
  ks.fused_rows(nullptr, 0, rows_of(x, lag, lag, rb[1]), lag, lag, d, nullptr, nullptr, nullptr, cur, nullptr, ubuf);
  for (index_t c = 0; c < chunks; ++c) {
    const ref_summary rs = prepare_ref<T>(ks, cur, d, ws);
    const bool has_next = c + 2 <= chunks;
    if (has_next) mm_init<T>(next, d);
    const T* const* srows = rows_of(x, c * lag, lag, rb[0]);
    const index_t ahead = has_next ? std::min(kAheadRows, x.tokens() - (c + 3) * lag) : 0;
    const T* const* mrows = has_next ? rows_of(x, (c + 2) * lag, lag + std::max<index_t>(ahead, 0), rb[1]) : nullptr;
    ks.fused_rows(srows, lag, mrows, has_next ? lag : 0, has_next ? lag + std::max<index_t>(ahead, 0) : 0, d,
                  ws.lo.data(), ws.inv.data(), rs.small_bias ? ws.bias.data() : nullptr, next, ws.stds.data(), ubuf);
    finish_chunk<T>(tk, x.slice(c * lag, lag), x.slice((c + 1) * lag, lag), srows, rs, ws, w, accumulate,
                    out + c * lag);
    std::swap(cur, next);
  }
}

/// Schedule backward (as the q8_0 sweep): the min/max of chunk `chunks` (the last reference)
/// first; then chunks j = chunks-1 .. 0 are scored against the finished min/max of chunk j+1
/// while their own min/max (chunk j-1's reference) is folded from the same rows, a batch at a
/// time, the batch still in L1. Each row comes from memory once and only one chunk is live. The
/// x86 kernels prefetch the rows they are handed past the scored ones, so the row list runs on
/// into the first kAheadRows rows of chunk j-1, the next ones read (contiguous rows only:
/// gathered rows are already in cache).
template <class T>
void sweep_backward(const target_kernels& tk, const kv_view<const T>& x, index_t lag, index_t chunks, float w,
                    bool accumulate, float* out, workspace& ws) {
  const kernel_set<T>& ks = kernels_for<T>(tk);
  const index_t d = x.head_dim();
  row_buffers<T>* rb = ws.rows(static_cast<T*>(nullptr));
  void* ref = mm_buffer<T>(ws, 0, d);
  void* own = mm_buffer<T>(ws, 1, d);
  float* ubuf = ws.ubuf(4 * ks.kernel_dim(d));
  ws.stds.resize(static_cast<std::size_t>(lag));
  mm_init<T>(ref, d);
  ks.fused_rows(nullptr, 0, rows_of(x, chunks * lag, lag, rb[1]), lag, lag, d, nullptr, nullptr, nullptr, ref, nullptr,
                ubuf);
  for (index_t c = chunks - 1; c >= 0; --c) {
    const ref_summary rs = prepare_ref<T>(ks, ref, d, ws);
    const bool fold = c > 0;  // chunk 0 is nobody's reference
    if (fold) mm_init<T>(own, d);
    const T* const* rows = rows_of(x, c * lag, lag, rb[0]);
    const index_t ahead = fold && x.rows_contiguous() ? std::min(kAheadRows, lag) : 0;
    if (ahead > 0) {
      rb[0].ptrs.resize(static_cast<std::size_t>(lag + ahead));  // within what reserve() prepared
      for (index_t t = 0; t < ahead; ++t) rb[0].ptrs[static_cast<std::size_t>(lag + t)] = x.row((c - 1) * lag + t);
      rows = rb[0].ptrs.data();
    }
    ks.fused_rows(rows, lag, rows, fold ? lag : 0, lag + ahead, d, ws.lo.data(), ws.inv.data(),
                  rs.small_bias ? ws.bias.data() : nullptr, own, ws.stds.data(), ubuf);
    finish_chunk<T>(tk, x.slice(c * lag, lag), x.slice((c + 1) * lag, lag), rows, rs, ws, w, accumulate,
                    out + c * lag);
    std::swap(ref, own);
  }
}

/// Rows of at least this many bytes are swept backward. Measured (paired, bench/RESULTS.md
/// "The overlap bound, and a backward sweep"): 512-byte rows (fp32 D128) lag 1024 0.47-0.55x ->
/// 0.69-0.79x of the streaming read (going forward, three live chunks, 1.5 MiB, overflow L2),
/// lag 128 0.65-0.69x -> 0.68-0.72x; 16-bit rows and 256-byte fp32 rows stay forward (backward
/// measured 0.00-0.10x slower for them).
inline constexpr index_t kBackwardRowBytes = 512;

inline sweep_schedule schedule_for(index_t row_bytes) {
  const sweep_schedule s = schedule_slot().load(std::memory_order_relaxed);
  if (s != sweep_schedule::automatic) return s;
  return row_bytes >= kBackwardRowBytes ? sweep_schedule::backward : sweep_schedule::forward;
}

/// One tensor over `chunks` consecutive chunks (chunk j against chunk j+1), each row read from
/// memory once, by one of the two schedules above (same scores, bit for bit). K and V are swept
/// one after the other so that only one tensor's chunks are live; the V sweep adds w * p_v onto
/// the K probabilities already in `out`.
template <class T>
void sweep(const target_kernels& tk, const kv_view<const T>& x, index_t lag, index_t chunks, float w, bool accumulate,
           float* out, workspace& ws) {
  if (schedule_for(x.head_dim() * static_cast<index_t>(sizeof(T))) == sweep_schedule::backward)
    sweep_backward<T>(tk, x, lag, chunks, w, accumulate, out, ws);
  else
    sweep_forward<T>(tk, x, lag, chunks, w, accumulate, out, ws);
}

/// lagkv_score_head once its inputs are checked, for any cache format: the layout, one sequence
/// scoring call over the scored span (`score_span(span, n, flat)`: tokens [p.sink, p.sink + span)
/// of K and V, span = (n + 1) * lag, n chunks into flat), then the kept set of each chunk and the
/// length after compression.
template <class ScoreSpan>
lagkv_head_result score_head_from_sequence(index_t tokens, const lagkv_params& p, ScoreSpan&& score_span) {
  const lagkv_layout layout = lagkv_layout::of(tokens, p.sink, p.lag);
  const index_t keep = p.keep_per_chunk(), n = layout.scored_chunks;
  lagkv_head_result r;
  r.chunk_scores.resize(static_cast<std::size_t>(n));
  r.kept.resize(static_cast<std::size_t>(n * keep));
  if (n > 0) {
    std::vector<float> flat(static_cast<std::size_t>(n * p.lag));
    score_span((n + 1) * p.lag, n, flat.data());
    std::vector<index_t> scratch;
    for (index_t c = 0; c < n; ++c) {
      const float* s = flat.data() + c * p.lag;
      r.chunk_scores[static_cast<std::size_t>(c)].assign(s, s + p.lag);
      index_t* kept = r.kept.data() + c * keep;
      select_top_k(s, p.lag, keep, kept, scratch);
      for (index_t i = 0; i < keep; ++i) kept[i] += p.sink + c * p.lag;
    }
  }
  r.cache_len = (tokens < p.sink ? tokens : p.sink) + n * keep + layout.tail;
  return r;
}

}  // namespace detail
}  // namespace simd

namespace dispatch {

/// \brief Same contract as reference::lagkv_chunk_scores, computed by the active target, with
/// the caller's scratch: allocation-free when `scratch` was reserved for this dtype, head_dim
/// and max(k_chunk.tokens(), k_ref.tokens()) (degenerate shapes — head_dim < 2, an empty
/// reference — are handed to the allocating oracle).
/// \throws lagkv::error when the reference's head_dim differs from the chunk's, or (score_v_ratio
/// != 0) when the value views do not match the key views in shape.
template <class T>
void lagkv_chunk_scores(kv_view<const T> k_chunk, kv_view<const T> k_ref, kv_view<const T> v_chunk,
                        kv_view<const T> v_ref, double score_v_ratio, float* out, simd::scratch& scratch) {
  const bool use_v = score_v_ratio != 0.0;
  LAGKV_CHECK(k_ref.head_dim() == k_chunk.head_dim(), "k_ref.head_dim=", k_ref.head_dim(),
              ": must equal k_chunk.head_dim=", k_chunk.head_dim());
  if (use_v) {
    LAGKV_CHECK(v_chunk.tokens() == k_chunk.tokens() && v_chunk.head_dim() == k_chunk.head_dim(), "v_chunk shape ",
                v_chunk.tokens(), "x", v_chunk.head_dim(), ": must equal k_chunk shape ", k_chunk.tokens(), "x",
                k_chunk.head_dim());
    LAGKV_CHECK(v_ref.head_dim() == k_chunk.head_dim(), "v_ref.head_dim=", v_ref.head_dim(),
                ": must equal k_chunk.head_dim=", k_chunk.head_dim());
  }
  if (k_chunk.tokens() == 0) return;
  if (k_chunk.head_dim() < 2 || k_ref.tokens() == 0 || (use_v && v_ref.tokens() == 0)) {
    reference::lagkv_chunk_scores<T>(k_chunk, k_ref, v_chunk, v_ref, score_v_ratio, out);  // degenerate shapes
    return;
  }
  const auto& tk = simd::detail::active();
  auto& ws = simd::detail::scratch_access::of(scratch);
  simd::detail::score_one_chunk<T>(tk, k_chunk, k_ref, 0.0f, false, out, ws);
  if (use_v) simd::detail::score_one_chunk<T>(tk, v_chunk, v_ref, static_cast<float>(score_v_ratio), true, out, ws);
}

/// \brief lagkv_chunk_scores with this thread's scratch, which grows to the largest shape the
/// thread has scored: the first call on a thread (or with a larger shape) allocates.
template <class T>
void lagkv_chunk_scores(kv_view<const T> k_chunk, kv_view<const T> k_ref, kv_view<const T> v_chunk,
                        kv_view<const T> v_ref, double score_v_ratio, float* out) {
  lagkv_chunk_scores<T>(k_chunk, k_ref, v_chunk, v_ref, score_v_ratio, out, simd::detail::thread_scratch());
}

/// \brief Scores `chunks` consecutive chunks of `lag` tokens, reading each token from memory once.
///
/// Chunk j is tokens [j*lag, (j+1)*lag) of `k` (and `v`) and is scored against chunk j+1, so the
/// views must hold at least (chunks + 1) * lag tokens; `out[j*lag + i]` receives the score of
/// token j*lag + i — the values lagkv_chunk_scores gives chunk by chunk. A cache calls it on its
/// not-yet-compressed region: `k.slice(start, (chunks + 1) * lag)`, then select_top_k per chunk.
/// \param score_v_ratio weight of the value score; 0 ignores `v` (it may be empty).
/// Allocation-free when `scratch` was reserved for this dtype, head_dim and `lag` tokens
/// (head_dim < 2 is handed to the allocating oracle).
/// \throws lagkv::error for lag < 1, chunks < 0, or views too short / of different head_dim.
template <class T>
void lagkv_sequence_scores(kv_view<const T> k, kv_view<const T> v, index_t lag, index_t chunks, double score_v_ratio,
                           float* out, simd::scratch& scratch) {
  const bool use_v = score_v_ratio != 0.0;
  LAGKV_CHECK(lag >= 1, "lag=", lag, ": must be >= 1");
  LAGKV_CHECK(chunks >= 0, "chunks=", chunks, ": must be >= 0");
  if (chunks == 0) return;
  LAGKV_CHECK(k.tokens() >= (chunks + 1) * lag, "k.tokens=", k.tokens(), ": must be >= (chunks + 1) * lag = ",
              (chunks + 1) * lag);
  if (use_v) {
    LAGKV_CHECK(v.tokens() >= (chunks + 1) * lag, "v.tokens=", v.tokens(), ": must be >= (chunks + 1) * lag = ",
                (chunks + 1) * lag);
    LAGKV_CHECK(v.head_dim() == k.head_dim(), "v.head_dim=", v.head_dim(), ": must equal k.head_dim=", k.head_dim());
  }
  if (k.head_dim() < 2) {
    for (index_t c = 0; c < chunks; ++c) {
      kv_view<const T> vc, vr;
      if (use_v) {
        vc = v.slice(c * lag, lag);
        vr = v.slice((c + 1) * lag, lag);
      }
      reference::lagkv_chunk_scores<T>(k.slice(c * lag, lag), k.slice((c + 1) * lag, lag), vc, vr, score_v_ratio,
                                       out + c * lag);
    }
    return;
  }
  const auto& tk = simd::detail::active();
  auto& ws = simd::detail::scratch_access::of(scratch);
  simd::detail::sweep<T>(tk, k, lag, chunks, 0.0f, false, out, ws);
  if (use_v) simd::detail::sweep<T>(tk, v, lag, chunks, static_cast<float>(score_v_ratio), true, out, ws);
}

/// \brief lagkv_sequence_scores with this thread's scratch (the first call on a thread, or
/// with a larger shape, allocates).
template <class T>
void lagkv_sequence_scores(kv_view<const T> k, kv_view<const T> v, index_t lag, index_t chunks, double score_v_ratio,
                           float* out) {
  lagkv_sequence_scores<T>(k, v, lag, chunks, score_v_ratio, out, simd::detail::thread_scratch());
}

/// \brief lagkv::lagkv_score_head (one compression of a whole head: scores, kept sets, length)
/// on the active target through lagkv_sequence_scores. Same contract and errors.
template <class T>
lagkv_head_result lagkv_score_head(kv_view<const T> k, kv_view<const T> v, const lagkv_params& p) {
  p.validate();
  check_lagkv_head_dim(k.head_dim());
  const bool use_v = p.score_v_ratio != 0.0;
  if (use_v) {
    LAGKV_CHECK(v.tokens() == k.tokens(), "v.tokens=", v.tokens(), ": must equal k.tokens=", k.tokens());
    LAGKV_CHECK(v.head_dim() == k.head_dim(), "v.head_dim=", v.head_dim(), ": must equal k.head_dim=", k.head_dim());
  }
  return simd::detail::score_head_from_sequence(k.tokens(), p, [&](index_t span, index_t n, float* flat) {
    lagkv_sequence_scores<T>(k.slice(p.sink, span), use_v ? v.slice(p.sink, span) : kv_view<const T>(), p.lag, n,
                             p.score_v_ratio, flat);
  });
}

/// \brief Same contract as reference::l2norm_scores (out[t] = -||k[t]||_2), on the active target.
/// Rows whose float sum of squares leaves [2^-80, 2^120] (zero, denormal-scale, huge, NaN/Inf)
/// are recomputed by the oracle, so float underflow/overflow never changes a score.
/// Allocation-free when `scratch` was reserved for this dtype, head_dim and
/// min(keys.tokens(), simd::kL2RowsPerCall) tokens.
template <class T>
void l2norm_scores(kv_view<const T> keys, float* out, simd::scratch& scratch) {
  const index_t n = keys.tokens(), d = keys.head_dim();
  if (n == 0) return;
  const auto& ks = simd::detail::kernels_for<T>(simd::detail::active());
  auto& rb = simd::detail::scratch_access::of(scratch).rows(static_cast<T*>(nullptr))[0];
  constexpr index_t kBlock = simd::kL2RowsPerCall;  // row pointers per kernel call: stays in L1
  for (index_t t0 = 0; t0 < n; t0 += kBlock) {
    const index_t nb = n - t0 < kBlock ? n - t0 : kBlock;
    ks.l2_rows(simd::detail::rows_of(keys, t0, nb, rb), nb, d, out + t0);
    for (index_t t = t0; t < t0 + nb; ++t)
      if (!(out[t] <= -0x1p-40f && out[t] >= -0x1p60f)) reference::l2norm_scores<T>(keys.slice(t, 1), out + t);
  }
}

/// \brief l2norm_scores with this thread's scratch (the first call on a thread, or with a larger
/// shape, allocates).
template <class T>
void l2norm_scores(kv_view<const T> keys, float* out) {
  l2norm_scores<T>(keys, out, simd::detail::thread_scratch());
}

}  // namespace dispatch
}  // namespace lagkv
