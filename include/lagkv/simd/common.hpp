#pragma once
/// \file simd/common.hpp
/// \brief What every SIMD target shares: the target names, the kernel table a target fills in,
/// and the reference-chunk statistics.
///
/// A target supplies a handful of row kernels (`kernel_set<T>`); the chunk/sequence logic that
/// calls them, the exact-semantics fallbacks and the softmax glue live once in dispatch.hpp.
///
/// Reference min/max are tracked on the raw bit patterns with integer min/max (signed max and
/// min, unsigned max of each lane), which needs no conversion, treats all dtypes alike and sees
/// NaN for free: a NaN's pattern lies beyond the infinity's, so it shows up as an extreme key.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"

namespace lagkv {
namespace simd {

/// \brief The kernels a build can carry; `available_targets()` (dispatch.hpp) says which this CPU runs.
enum class target : std::uint8_t { scalar, avx2, avx512, neon };

/// Lower-case name as accepted by `LAGKV_SIMD` ("scalar", "avx2", "avx512", "neon").
inline const char* target_name(target t) {
  switch (t) {
    case target::scalar: return "scalar";
    case target::avx2: return "avx2";
    case target::avx512: return "avx512";
    case target::neon: return "neon";
  }
  return "?";
}

/// Parses a target name; false when unknown.
inline bool parse_target(const char* name, target* out) {
  for (target t : {target::scalar, target::avx2, target::avx512, target::neon}) {
    if (std::strcmp(name, target_name(t)) == 0) {
      *out = t;
      return true;
    }
  }
  return false;
}

namespace detail {

// ---- Raw-bit min/max of a reference chunk -----------------------------------------------------

/// Lane types of the raw patterns of each storage type.
template <class T>
struct key_traits;
template <>
struct key_traits<float> {
  using s = std::int32_t;
  using u = std::uint32_t;
  static constexpr u kSign = 0x80000000u;
  static constexpr u kInf = 0x7f800000u;
};
template <>
struct key_traits<f16> {
  using s = std::int16_t;
  using u = std::uint16_t;
  static constexpr u kSign = 0x8000u;
  static constexpr u kInf = 0x7c00u;
};
template <>
struct key_traits<bf16> {
  using s = std::int16_t;
  using u = std::uint16_t;
  static constexpr u kSign = 0x8000u;
  static constexpr u kInf = 0x7f80u;
};

/// Lanes per tracker array: head_dim rounded up to 64 bytes, so every target may run whole
/// vectors over the state (padding lanes hold garbage that is never read back).
template <class T>
constexpr index_t mm_lanes(index_t head_dim) {
  constexpr index_t per64 = 64 / static_cast<index_t>(sizeof(typename key_traits<T>::u));
  return (head_dim + per64 - 1) / per64 * per64;
}
/// Bytes of one min/max state: three trackers (signed max, signed min, unsigned max). That is
/// enough: the largest value is the largest non-negative pattern (signed max) or, when every
/// value is negative, the smallest-magnitude negative one (signed min); the smallest value is
/// the largest-magnitude negative pattern (unsigned max) or, with no negative value, the smallest
/// pattern (signed min, which then equals the unsigned min). Three integer ops per vector.
template <class T>
constexpr std::size_t mm_state_bytes(index_t head_dim) {
  return 3 * static_cast<std::size_t>(mm_lanes<T>(head_dim)) * sizeof(typename key_traits<T>::u);
}

/// Resets a min/max state to "no rows seen".
template <class T>
void mm_init(void* state, index_t head_dim) {
  using S = typename key_traits<T>::s;
  using U = typename key_traits<T>::u;
  const index_t n = mm_lanes<T>(head_dim);
  S* smax = static_cast<S*>(state);
  S* smin = smax + n;
  U* umax = reinterpret_cast<U*>(smin + n);
  // One loop per tracker: S and U may alias, so a fused loop would not vectorise (runs per chunk).
  std::fill(smax, smax + n, std::numeric_limits<S>::min());
  std::fill(smin, smin + n, std::numeric_limits<S>::max());
  std::fill(umax, umax + n, U{0});
}

/// Portable accumulation of `n` rows into a min/max state (the scalar target, and tails).
template <class T>
void mm_accumulate(void* state, index_t head_dim, const T* const* rows, index_t n) {
  using S = typename key_traits<T>::s;
  using U = typename key_traits<T>::u;
  const index_t lanes = mm_lanes<T>(head_dim);
  S* smax = static_cast<S*>(state);
  S* smin = smax + lanes;
  U* umax = reinterpret_cast<U*>(smin + lanes);
  for (index_t r = 0; r < n; ++r) {
    for (index_t c = 0; c < head_dim; ++c) {
      U u;
      std::memcpy(&u, rows[r] + c, sizeof u);
      const S s = static_cast<S>(u);
      smax[c] = s > smax[c] ? s : smax[c];
      smin[c] = s < smin[c] ? s : smin[c];
      umax[c] = u > umax[c] ? u : umax[c];
    }
  }
}

/// Resolves a state that has seen >= 1 row into per-channel max and min patterns (natural order)
/// and reports whether any channel saw NaN. Integer work only; the values are then converted
/// with the target's vector loads (dispatch.hpp).
template <class T>
bool mm_resolve(const void* state, index_t head_dim, T* max_out, T* min_out) {
  using S = typename key_traits<T>::s;
  using U = typename key_traits<T>::u;
  constexpr U kSign = key_traits<T>::kSign, kInf = key_traits<T>::kInf;
  const index_t lanes = mm_lanes<T>(head_dim);
  const S* smax = static_cast<const S*>(state);
  const S* smin = smax + lanes;
  const U* umax = reinterpret_cast<const U*>(smin + lanes);
  bool nan = false;
  for (index_t c = 0; c < head_dim; ++c) {
    const U max_bits = smax[c] >= 0 ? static_cast<U>(smax[c]) : static_cast<U>(smin[c]);
    const U min_bits = umax[c] >= kSign ? umax[c] : static_cast<U>(smin[c]);
    nan |= smax[c] > static_cast<S>(kInf) || umax[c] > static_cast<U>(kSign | kInf);
    std::memcpy(max_out + c, &max_bits, sizeof max_bits);
    std::memcpy(min_out + c, &min_bits, sizeof min_bits);
  }
  return nan;
}

/// ref_stats flags: a channel saw NaN; float cannot reproduce some 1/range (range or 1/range
/// not finite and normal, and not 0); some |lo*inv + 0.5| > 2 (the FMA form is not accurate).
inline constexpr unsigned kRefPoisoned = 1, kRefUnsafe = 2, kRefFarBias = 4;

/// Float stds above this send their chunk to the oracle (dispatch.hpp's finish_chunk says why).
inline constexpr float kFloatMaxStd = 0x1p12f;

/// A row whose normalised mean |mean(y)| exceeds this is scored by the oracle: the two-pass
/// kernels report +Inf as its std (finish_chunk's non-finite handling then finds the double std
/// finite and recomputes the chunk exactly). Rows that far outside the reference's range carry an
/// absolute std error of ~(D/8 + c) * eps * |mean(y)| in float, which reorders the small stds of
/// rows with little spread; the one-pass kernels never see such rows (they reject any row with
/// mean^2 > 2 var to the two-pass path, and var is bounded by kFloatMaxStd), so the check costs
/// one compare per two-pass row. Real rows sit within a few reference ranges (|mean(y)| = O(1)).
inline constexpr float kFloatMaxMean = 0x1p12f;

/// Portable ref_stats (scalar and NEON targets): resolve the trackers, convert with the
/// target's loads, then one branch-free loop over kernel positions.
template <class T, void (*LoadToF32)(const T*, index_t, float*), index_t (*KernelDim)(index_t)>
unsigned generic_ref_stats(const void* state, index_t head_dim, T* max_out, T* min_out, float* lo, float* inv,
                           float* bias) {
  unsigned flags = mm_resolve<T>(state, head_dim, max_out, min_out) ? kRefPoisoned : 0u;
  const index_t kd = KernelDim(head_dim);
  LoadToF32(min_out, head_dim, lo);  // kernel order; padding positions come back 0
  LoadToF32(max_out, head_dim, inv);  // hi, overwritten below
  int unsafe = 0, far = 0;
  for (index_t i = 0; i < kd; ++i) {
    const float range = inv[i] - lo[i];
    const float r = range > 0.0f ? 1.0f / range : 0.0f;
    inv[i] = r;
    bias[i] = -lo[i] * r - 0.5f;
    unsafe |= static_cast<int>(!(range <= std::numeric_limits<float>::max())) |
              static_cast<int>(r > std::numeric_limits<float>::max()) |
              static_cast<int>(r != 0.0f && r < std::numeric_limits<float>::min());
    far |= static_cast<int>(!(std::fabs(lo[i] * r + 0.5f) <= 2.0f));
  }
  return flags | (unsafe ? kRefUnsafe : 0u) | (far ? kRefFarBias : 0u);
}

/// What the scoring path needs to know about one reference chunk.
struct ref_summary {
  bool poisoned = false;  ///< some channel saw NaN: every token of the scored chunk scores NaN
  bool f32_safe = true;    ///< range and 1/range finite and normal (or 0): float maths reproduces the oracle
  bool small_bias = true;  ///< every |lo * inv + 0.5| <= 2: z = fma(x, inv, bias) is accurate
};

// ---- The table a target fills in --------------------------------------------------------------

/// \brief Row kernels of one target for storage type `T`. Rows are `head_dim` contiguous elements.
///
/// "Kernel order": a target may visit channels in its own order (x86 reads bf16 as even/odd
/// halves of 32-bit lanes); `kernel_dim` positions, `kernel_channel(pos)` names the channel at a
/// position (or -1 for padding), and `lo`/`inv` handed to `fused_rows` are in that order.
template <class T>
struct kernel_set {
  index_t (*kernel_dim)(index_t head_dim);
  index_t (*kernel_channel)(index_t pos, index_t head_dim);
  /// For the `ns` rows of `srows`: out_std[t] = unbiased std over channels of
  /// (x - lo) * inv; fused with the min/max of the `nm` rows of `mrows` into `mm_state`.
  /// mrows[nm, nm_prefetch) are rows that come next (the following chunk): prefetch only.
  /// `bias` (kernel order, or nullptr) is -lo*inv - 0.5, given only when every |bias| <= 2.
  /// `ubuf` is scratch of 4 * kernel_dim floats, 64-byte aligned.
  void (*fused_rows)(const T* const* srows, index_t ns, const T* const* mrows, index_t nm, index_t nm_prefetch,
                     index_t head_dim, const float* lo, const float* inv, const float* bias, void* mm_state,
                     float* out_std, float* ubuf);
  /// From a finished min/max state: max_out/min_out (natural order, mm_lanes(head_dim) elements,
  /// padding lanes unspecified), and in kernel order lo, inv = 1/(hi - lo) or 0, bias =
  /// -lo*inv - 0.5 (padding positions 0). Returns kRef* flags.
  unsigned (*ref_stats)(const void* mm_state, index_t head_dim, T* max_out, T* min_out, float* lo, float* inv,
                        float* bias);
  /// out[t] = -sqrt(sum of squares of row t), in float.
  void (*l2_rows)(const T* const* rows, index_t n, index_t head_dim, float* out);
  /// Converts n elements with the target's vector loads into kernel order (tests: bit-exactness).
  void (*load_to_f32)(const T* src, index_t n, float* dst);
};

/// \brief Softmax of `s[0..n)` (NaN entries stay NaN and are left out of the normaliser) written
/// to out (out[t] = p[t]) or accumulated (out[t] += w * p[t]). `s` is overwritten.
using softmax_fn = void (*)(float* s, index_t n, float w, float* out, bool accumulate);

/// Everything one target provides.
struct target_kernels {
  target id;
  kernel_set<float> f32;
  kernel_set<f16> h16;
  kernel_set<bf16> b16;
  softmax_fn softmax;
};

template <class T>
const kernel_set<T>& kernels_for(const target_kernels& k);
template <>
inline const kernel_set<float>& kernels_for<float>(const target_kernels& k) { return k.f32; }
template <>
inline const kernel_set<f16>& kernels_for<f16>(const target_kernels& k) { return k.h16; }
template <>
inline const kernel_set<bf16>& kernels_for<bf16>(const target_kernels& k) { return k.b16; }

/// Natural channel order (padding to a multiple of `Width`), shared by targets that keep it.
template <index_t Width>
index_t natural_kernel_dim(index_t head_dim) {
  return (head_dim + Width - 1) / Width * Width;
}
inline index_t natural_kernel_channel(index_t pos, index_t head_dim) { return pos < head_dim ? pos : -1; }

/// Even/odd order of 16-bit data read as 32-bit lanes: within each group of 2*Width channels,
/// positions [0, Width) hold the even channels and [Width, 2*Width) the odd ones.
template <index_t Width>
index_t even_odd_kernel_dim(index_t head_dim) {
  return (head_dim + 2 * Width - 1) / (2 * Width) * (2 * Width);
}
template <index_t Width>
index_t even_odd_kernel_channel(index_t pos, index_t head_dim) {
  const index_t group = pos / (2 * Width), within = pos % (2 * Width);
  const index_t c = group * 2 * Width + 2 * (within % Width) + within / Width;
  return c < head_dim ? c : -1;
}

}  // namespace detail
}  // namespace simd
}  // namespace lagkv
