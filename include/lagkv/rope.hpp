#pragma once
/// \file rope.hpp
/// \brief Rotary position embedding on cached keys: fresh rotation (`apply_rope`) and exact
/// re-rotation of rotated keys to new positions (`rerotate`, `rerotate_to_contiguous`), which
/// is what an engine needs after eviction when it renumbers the kept tokens (llama.cpp's
/// context shift). docs/positions.md compares this with keeping the original positions.
///
/// Conventions, as in Hugging Face and llama.cpp: pair i of a token rotates by the angle
/// `pos * theta_i / linear_factor`, `theta_i = base^(-2i / rotary_dim)`, i < rotary_dim/2:
///   y0 = x0*cos - x1*sin,   y1 = x0*sin + x1*cos
/// with the pair being channels (2i, 2i+1) for rope_style::interleaved (GPT-J; llama.cpp's
/// default mode) and (i, i + rotary_dim/2) for rope_style::neox (GPT-NeoX; Hugging Face Llama,
/// Qwen, Mistral). Only the first rotary_dim channels rotate; the others are never touched.
///
/// Arithmetic: angles, cosines and sines in double from the integer position (or delta); the
/// rotation itself in fp32 (one rounded product and one fma per output, see
/// simd/rope_scalar.hpp); the result rounded to the cache dtype with lagkv::from_float.
/// Tokens whose angle is 0 (delta 0, or position 0 for apply_rope) are left bit-for-bit as
/// they were, so sinks and any prefix that keeps its numbering cost nothing and gain no error.
///
/// Kernels: AVX-512F or AVX2+FMA+F16C for rows with channel_stride 1 (strided and paged
/// layouts), picked once per process from the CPU; the scalar kernel otherwise (and for
/// transposed layouts). Every vector kernel equals the scalar one bit for bit (NaN payloads
/// aside); `rope_force_scalar(true)` or an explicit `rope_isa` argument selects a kernel.
///
/// \note Thread safety: every function may run concurrently on disjoint views;
/// rope_force_scalar is an atomic process-wide switch.

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/simd/rope_scalar.hpp"
#include "lagkv/simd/rope_x86.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// Which channels form a rotation pair.
enum class rope_style : std::uint8_t {
  interleaved,  ///< (2i, 2i+1): GPT-J, GPT-NeoX-J, llama.cpp LLAMA_ROPE_TYPE_NORM
  neox,         ///< (i, i + rotary_dim/2): GPT-NeoX, Hugging Face `rotate_half`, llama.cpp NEOX
};

inline const char* rope_style_name(rope_style s) { return s == rope_style::neox ? "neox" : "interleaved"; }

/// \brief The RoPE of a model. Defaults: NeoX pairs, full rotary, base 10000, no scaling.
struct rope_params {
  rope_style style = rope_style::neox;
  /// Channels that rotate (partial rotary: GPT-NeoX rotary_pct, Phi); even, <= head_dim;
  /// 0 means head_dim.
  index_t rotary_dim = 0;
  /// theta_i = base^(-2i / rotary_dim) (Llama 2: 10000, Llama 3: 500000).
  double base = 10000.0;
  /// Linear position interpolation (Hugging Face rope_scaling {"type": "linear", "factor": f},
  /// llama.cpp freq_scale = 1/f): the angle is (pos / f) * theta_i.
  double linear_factor = 1.0;
  /// Optional explicit frequencies, rotary_dim/2 of them, replacing base^(-2i/rotary_dim)
  /// (before linear_factor). Llama 3.1's "llama3", NTK-aware or YaRN scaling all reduce to a
  /// per-pair frequency. A magnitude factor (YaRN's mscale) is already in the stored key and
  /// must not be applied again when re-rotating.
  std::vector<double> inv_freq;

  /// rotary_dim with 0 resolved to `head_dim`.
  index_t rotary_dim_for(index_t head_dim) const { return rotary_dim == 0 ? head_dim : rotary_dim; }

  /// \throws lagkv::error naming the parameter and its value when the parameters do not fit
  /// a key of `head_dim` channels.
  void validate(index_t head_dim) const {
    LAGKV_CHECK(rotary_dim >= 0, "rotary_dim=", rotary_dim, ": must be >= 0 (0 means head_dim)");
    LAGKV_CHECK(rotary_dim <= head_dim, "rotary_dim=", rotary_dim, ": must be <= head_dim=", head_dim);
    if (rotary_dim == 0) {
      LAGKV_CHECK(head_dim % 2 == 0, "rotary_dim=0 (head_dim=", head_dim, "): must be even");
    } else {
      LAGKV_CHECK(rotary_dim % 2 == 0, "rotary_dim=", rotary_dim, ": must be even");
    }
    LAGKV_CHECK(std::isfinite(base) && base > 0, "base=", base, ": must be finite and > 0");
    LAGKV_CHECK(std::isfinite(linear_factor) && linear_factor > 0, "linear_factor=", linear_factor,
                ": must be finite and > 0");
    const index_t half = rotary_dim_for(head_dim) / 2;
    LAGKV_CHECK(inv_freq.empty() || static_cast<index_t>(inv_freq.size()) == half, "inv_freq.size()=",
                inv_freq.size(), ": must be 0 or rotary_dim/2=", half);
    for (std::size_t i = 0; i < inv_freq.size(); ++i)
      LAGKV_CHECK(std::isfinite(inv_freq[i]), "inv_freq[", i, "]=", inv_freq[i], ": must be finite");
  }
};

/// Kernel choice. `automatic` is the best one of this CPU unless rope_force_scalar(true).
enum class rope_isa : std::uint8_t { automatic, scalar, avx2, avx512 };

inline const char* rope_isa_name(rope_isa isa) {
  switch (isa) {
    case rope_isa::automatic: return "automatic";
    case rope_isa::scalar: return "scalar";
    case rope_isa::avx2: return "avx2";
    case rope_isa::avx512: return "avx512";
  }
  return "?";
}

/// True when this build and CPU can run `isa` (scalar and automatic always can).
inline bool rope_isa_available(rope_isa isa) {
  switch (isa) {
    case rope_isa::automatic:
    case rope_isa::scalar: return true;
#if LAGKV_DETAIL_ROPE_X86
    case rope_isa::avx2: return detail::rope_cpu_has_avx2();
    case rope_isa::avx512: return detail::rope_cpu_has_avx512();
#else
    case rope_isa::avx2:
    case rope_isa::avx512: return false;
#endif
  }
  return false;
}

namespace detail {
inline std::atomic<bool>& rope_scalar_forced() {
  static std::atomic<bool> forced{false};
  return forced;
}
}  // namespace detail

/// \brief Makes `rope_isa::automatic` mean the scalar kernel (true) or the CPU's best (false),
/// process-wide: for tests, benchmarks, and bisecting a suspected kernel bug.
inline void rope_force_scalar(bool on) { detail::rope_scalar_forced().store(on, std::memory_order_relaxed); }

/// The kernel `rope_isa::automatic` runs right now.
inline rope_isa rope_active_isa() {
  if (detail::rope_scalar_forced().load(std::memory_order_relaxed)) return rope_isa::scalar;
  if (rope_isa_available(rope_isa::avx512)) return rope_isa::avx512;
  if (rope_isa_available(rope_isa::avx2)) return rope_isa::avx2;
  return rope_isa::scalar;
}

namespace detail {

/// Frequencies of one call and the fp32 cosines and sines of the angle currently applied.
class rope_angles {
 public:
  rope_angles(const rope_params& p, index_t head_dim)
      : style_(p.style), half_(p.rotary_dim_for(head_dim) / 2), inv_freq_(static_cast<std::size_t>(half_)),
        cos_(inv_freq_.size()), sin_(inv_freq_.size()) {
    for (index_t i = 0; i < half_; ++i) {
      const double theta = p.inv_freq.empty()
                               ? std::pow(p.base, -2.0 * static_cast<double>(i) / static_cast<double>(2 * half_))
                               : p.inv_freq[static_cast<std::size_t>(i)];
      inv_freq_[static_cast<std::size_t>(i)] = theta / p.linear_factor;
    }
    if (style_ == rope_style::interleaved) {
      cc_.resize(2 * inv_freq_.size());
      ss_.resize(2 * inv_freq_.size());
    }
  }

  /// Sets the rotation to `delta` positions.
  ///
  /// Why the delta form: moving a key rotated at p to q could also be done by composing
  /// R(q) * R(p)^-1 -- two rotations whose angles are q*theta and p*theta. At the positions
  /// long contexts reach (1e6 and beyond, theta_0 = 1) those angles are ~1e6 rad: computed in
  /// fp32 they would carry an absolute error of ulp(1e6) = 0.06 rad, and even in double their
  /// error grows with |p| and |q| while the two rotations each round the key once more. The
  /// single rotation by (q - p)*theta uses the exact integer difference, so its angle error
  /// scales with |q - p| (a context shift or an eviction gap, usually far smaller than q), the
  /// key is rounded once, and tokens that do not move (delta 0) are not touched at all.
  void set(std::int64_t delta) {
    const double d = static_cast<double>(delta);
    for (std::size_t i = 0; i < inv_freq_.size(); ++i) {
      const double angle = d * inv_freq_[i];
      cos_[i] = static_cast<float>(std::cos(angle));
      sin_[i] = static_cast<float>(std::sin(angle));
    }
    if (style_ == rope_style::interleaved) {
      for (std::size_t i = 0; i < inv_freq_.size(); ++i) {
        cc_[2 * i] = cc_[2 * i + 1] = cos_[i];
        ss_[2 * i] = -sin_[i];
        ss_[2 * i + 1] = sin_[i];
      }
    }
  }

  rope_style style() const { return style_; }
  index_t half() const { return half_; }
  const float* cos_i() const { return cos_.data(); }
  const float* sin_i() const { return sin_.data(); }
  const float* cc() const { return cc_.data(); }  // interleaved only: cos duplicated per channel
  const float* ss() const { return ss_.data(); }  // interleaved only: (-sin, +sin) per pair

 private:
  rope_style style_;
  index_t half_;
  std::vector<double> inv_freq_;  // [half] theta_i / linear_factor
  std::vector<float> cos_, sin_;  // [half]
  std::vector<float> cc_, ss_;    // [2*half]
};

// One row per call; a kernel is a type so the token loop is compiled once per kernel.
struct rope_kernel_scalar {
  template <class T>
  static void row(T* r, index_t cs, const rope_angles& a) {
    if (a.style() == rope_style::neox)
      rope_pairs_neox_scalar(r, r + a.half() * cs, cs, a.cos_i(), a.sin_i(), a.half());
    else
      rope_pairs_interleaved_scalar(r, cs, a.cos_i(), a.sin_i(), a.half());
  }
};

#if LAGKV_DETAIL_ROPE_X86
struct rope_kernel_avx2 {
  template <class T>
  static void row(T* r, index_t cs, const rope_angles& a) {
    if (cs != 1) return rope_kernel_scalar::row(r, cs, a);
    if (a.style() == rope_style::neox)
      rope_avx2::neox(r, r + a.half(), a.cos_i(), a.sin_i(), a.half());
    else
      rope_avx2::interleaved(r, a.cc(), a.ss(), a.cos_i(), a.sin_i(), a.half());
  }
};
struct rope_kernel_avx512 {
  template <class T>
  static void row(T* r, index_t cs, const rope_angles& a) {
    if (cs != 1) return rope_kernel_scalar::row(r, cs, a);
    if (a.style() == rope_style::neox)
      rope_avx512::neox(r, r + a.half(), a.cos_i(), a.sin_i(), a.half());
    else
      rope_avx512::interleaved(r, a.cc(), a.ss(), a.cos_i(), a.sin_i(), a.half());
  }
};
#endif

/// Token-major so that all views (the heads and layers sharing one position array) reuse the
/// cosines of a token, and runs of tokens with equal deltas (what eviction leaves between two
/// gaps) compute them once.
template <class Kernel, class T>
void rope_run(const kv_view<T>* views, index_t n_views, const std::int64_t* deltas, index_t tokens, rope_angles& a) {
  bool have = false;
  std::int64_t current = 0;
  for (index_t t = 0; t < tokens; ++t) {
    const std::int64_t d = deltas[t];
    if (d == 0) continue;
    if (!have || d != current) {
      a.set(d);
      current = d;
      have = true;
    }
    for (index_t v = 0; v < n_views; ++v) Kernel::row(views[v].row(t), views[v].channel_stride(), a);
  }
}

/// The kernel switch of rope_rotate_views without its checks and allocations, for callers that
/// validated the parameters, resolved the kernel (rope_resolve_isa) and built `a` beforehand
/// (kv_cache::rerotate_to_contiguous, whose mutation phase must not throw): rotates token t of
/// every view by deltas[t].
template <class T>
void rope_rotate_prepared(const kv_view<T>* views, index_t n_views, const std::int64_t* deltas, index_t tokens,
                          rope_angles& a, rope_isa resolved) noexcept {
  if (n_views == 0 || a.half() == 0) return;
  switch (resolved) {
#if LAGKV_DETAIL_ROPE_X86
    case rope_isa::avx512: return rope_run<rope_kernel_avx512>(views, n_views, deltas, tokens, a);
    case rope_isa::avx2: return rope_run<rope_kernel_avx2>(views, n_views, deltas, tokens, a);
#endif
    default: return rope_run<rope_kernel_scalar>(views, n_views, deltas, tokens, a);
  }
}

inline rope_isa rope_resolve_isa(rope_isa isa) {
  if (isa == rope_isa::automatic) return rope_active_isa();
  LAGKV_CHECK(rope_isa_available(isa), "isa=", rope_isa_name(isa), ": not available on this CPU/build (best: ",
              rope_isa_name(rope_active_isa()), ")");
  return isa;
}

/// Validates views, parameters and kernel, then rotates token t of every view by deltas[t].
template <class T>
void rope_rotate_views(const kv_view<T>* views, index_t n_views, const std::vector<std::int64_t>& deltas,
                       const rope_params& p, rope_isa isa) {
  static_assert(!std::is_const_v<T>, "RoPE rotates in place: pass a kv_view of non-const T");
  LAGKV_CHECK(n_views >= 0, "n_views=", n_views, ": must be >= 0");
  LAGKV_CHECK(views != nullptr || n_views == 0, "views=nullptr with n_views=", n_views);
  const index_t tokens = static_cast<index_t>(deltas.size());
  for (index_t v = 0; v < n_views; ++v) {
    LAGKV_CHECK(views[v].tokens() == tokens, "positions: length=", tokens, " does not match views[", v,
                "].tokens()=", views[v].tokens());
    LAGKV_CHECK(views[v].head_dim() == views[0].head_dim(), "views[", v, "].head_dim()=", views[v].head_dim(),
                ": must match views[0].head_dim()=", views[0].head_dim());
  }
  if (n_views == 0) return;
  p.validate(views[0].head_dim());
  const rope_isa kernel = rope_resolve_isa(isa);
  rope_angles angles(p, views[0].head_dim());
  rope_rotate_prepared(views, n_views, deltas.data(), tokens, angles, kernel);
}

template <class Pos>
void rope_check_position_type() {
  static_assert(std::is_integral_v<Pos> && !std::is_same_v<Pos, bool>, "positions must be an integer type");
}

/// positions[i] as int64, checked (only a uint64 can exceed it).
template <class Pos>
std::int64_t rope_position(const Pos* positions, index_t i, const char* name) {
  const Pos p = positions[i];
  if constexpr (std::is_unsigned_v<Pos> && sizeof(Pos) >= sizeof(std::int64_t)) {
    LAGKV_CHECK(p <= static_cast<Pos>(std::numeric_limits<std::int64_t>::max()), name, "[", i, "]=", p,
                ": exceeds the int64 range");
  }
  return static_cast<std::int64_t>(p);
}

/// to - from, or an error naming token i when it does not fit int64.
inline std::int64_t rope_delta(std::int64_t to, std::int64_t from, index_t i) {
  const bool overflow = (from < 0 && to > std::numeric_limits<std::int64_t>::max() + from) ||
                        (from > 0 && to < std::numeric_limits<std::int64_t>::min() + from);
  LAGKV_CHECK(!overflow, "token ", i, ": new position ", to, " - old position ", from, " overflows int64");
  return to - from;
}

inline void rope_check_length(index_t n_positions, const void* positions, const char* name) {
  LAGKV_CHECK(n_positions >= 0, name, ": length=", n_positions, ": must be >= 0");
  LAGKV_CHECK(positions != nullptr || n_positions == 0, name, "=nullptr with length=", n_positions);
}

}  // namespace detail

/// \brief Rotates unrotated keys to absolute positions: token t by positions[t].
/// Tokens at position 0 are left untouched.
/// \param keys         tokens x head_dim, any layout; rotated in place
/// \param positions    `n_positions` integer positions (any integer type; negative allowed)
/// \param n_positions  must equal keys.tokens()
/// \param params       style, rotary_dim, base, scaling
/// \param isa          kernel; automatic = best for this CPU (see rope_force_scalar)
/// \throws lagkv::error (keys unchanged) for a length mismatch, invalid params, or an isa the
/// CPU lacks.
template <class T, class Pos>
void apply_rope(const kv_view<T>& keys, const Pos* positions, index_t n_positions, const rope_params& params,
                rope_isa isa = rope_isa::automatic) {
  detail::rope_check_position_type<Pos>();
  detail::rope_check_length(n_positions, positions, "positions");
  std::vector<std::int64_t> deltas(static_cast<std::size_t>(n_positions));
  for (index_t t = 0; t < n_positions; ++t) deltas[t] = detail::rope_position(positions, t, "positions");
  detail::rope_rotate_views(&keys, 1, deltas, params, isa);
}

/// \brief Moves keys of `n_views` views rotated at old_positions[t] to new_positions[t]: one
/// rotation by the integer delta new - old (see detail::rope_angles::set for why). All views
/// share the positions (the KV heads, or layers, of one sequence) and are processed token by
/// token, so each distinct delta costs its cosines once for all of them.
/// \param views          `n_views` views, equal tokens and head_dim; must not overlap
/// \param old_positions  the positions the keys are rotated at now, `n` of them (any integer type)
/// \param new_positions  the positions to rotate them to, `n` of them (any integer type)
/// \throws lagkv::error (all views unchanged) for mismatched lengths or head_dims, invalid
/// params, a delta that overflows int64, or an isa the CPU lacks.
template <class T, class OldPos, class NewPos>
void rerotate(const kv_view<T>* views, index_t n_views, const OldPos* old_positions, const NewPos* new_positions,
              index_t n, const rope_params& params, rope_isa isa = rope_isa::automatic) {
  detail::rope_check_position_type<OldPos>();
  detail::rope_check_position_type<NewPos>();
  detail::rope_check_length(n, old_positions, "old_positions");
  detail::rope_check_length(n, new_positions, "new_positions");
  std::vector<std::int64_t> deltas(static_cast<std::size_t>(n));
  for (index_t t = 0; t < n; ++t)
    deltas[t] = detail::rope_delta(detail::rope_position(new_positions, t, "new_positions"),
                                   detail::rope_position(old_positions, t, "old_positions"), t);
  detail::rope_rotate_views(views, n_views, deltas, params, isa);
}

/// \brief rerotate for one view.
template <class T, class OldPos, class NewPos>
void rerotate(const kv_view<T>& keys, const OldPos* old_positions, const NewPos* new_positions, index_t n,
              const rope_params& params, rope_isa isa = rope_isa::automatic) {
  rerotate(&keys, 1, old_positions, new_positions, n, params, isa);
}

/// \brief Shifts every token by the same `delta` positions (llama.cpp's K-shift after it
/// discards n tokens: delta = -n). The caller renumbers its positions.
/// \throws lagkv::error (keys unchanged) for invalid params or an isa the CPU lacks.
template <class T>
void rerotate_by(const kv_view<T>& keys, std::int64_t delta, const rope_params& params,
                 rope_isa isa = rope_isa::automatic) {
  const std::vector<std::int64_t> deltas(static_cast<std::size_t>(keys.tokens()), delta);
  detail::rope_rotate_views(&keys, 1, deltas, params, isa);
}

/// \brief After eviction: re-rotates the kept keys of every view from their original
/// positions to start, start+1, ..., and then writes those into `positions`. Call it once
/// with all the views that share `positions` (rotating them one call at a time would find the
/// array already renumbered after the first). New tokens continue at start + n.
/// \param positions  `n` original positions of the kept tokens, in cache order; renumbered
/// \param start      the first new position (0: the cache starts the sequence)
/// \throws lagkv::error (views and positions unchanged) for the reasons of rerotate, or when
/// start + n - 1 does not fit the position type.
template <class T, class Pos>
void rerotate_to_contiguous(const kv_view<T>* views, index_t n_views, Pos* positions, index_t n,
                            const rope_params& params, std::int64_t start = 0, rope_isa isa = rope_isa::automatic) {
  detail::rope_check_position_type<Pos>();
  detail::rope_check_length(n, positions, "positions");
  if (n > 0) {
    const std::int64_t last_offset = static_cast<std::int64_t>(n - 1);
    LAGKV_CHECK(start <= std::numeric_limits<std::int64_t>::max() - last_offset, "start=", start,
                ": start + n - 1 overflows int64 (n=", n, ")");
    const bool fits =
        (std::is_signed_v<Pos> ? start >= static_cast<std::int64_t>(std::numeric_limits<Pos>::min()) : start >= 0) &&
        (sizeof(Pos) >= sizeof(std::int64_t) ||
         start + last_offset <= static_cast<std::int64_t>(std::numeric_limits<Pos>::max()));
    LAGKV_CHECK(fits, "start=", start, ": positions start..", start + last_offset, " do not fit the position type");
  }
  std::vector<std::int64_t> deltas(static_cast<std::size_t>(n));
  for (index_t t = 0; t < n; ++t)
    deltas[t] = detail::rope_delta(start + static_cast<std::int64_t>(t), detail::rope_position(positions, t, "positions"), t);
  detail::rope_rotate_views(views, n_views, deltas, params, isa);
  for (index_t t = 0; t < n; ++t) positions[t] = static_cast<Pos>(start + static_cast<std::int64_t>(t));
}

/// \brief rerotate_to_contiguous for one view.
template <class T, class Pos>
void rerotate_to_contiguous(const kv_view<T>& keys, Pos* positions, index_t n, const rope_params& params,
                            std::int64_t start = 0, rope_isa isa = rope_isa::automatic) {
  rerotate_to_contiguous(&keys, 1, positions, n, params, start, isa);
}

}  // namespace lagkv
