#pragma once
/// \file simd/arm_neon.hpp
/// \brief AArch64 NEON row kernels. NEON is part of the AArch64 baseline, so this target is
/// selected at compile time from the includer's flags (`__aarch64__` and `__ARM_NEON`); no
/// target region and no run-time check are needed.
///
/// Loads: fp16 through vcvt_f32_f16 (exact, denormals kept, NaN quieted: dtype.hpp's
/// to_float), bf16 through a widening shift (vshll #16, exact); channels stay in natural order.
/// Horizontal sums use vaddvq, so rows are processed one at a time.

#include "lagkv/simd/common.hpp"

#if !defined(LAGKV_NO_SIMD) && defined(__aarch64__) && defined(__ARM_NEON)
#define LAGKV_SIMD_HAVE_NEON 1

#include <arm_neon.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace lagkv {
namespace simd {
namespace neon {

template <class T>
struct group;
template <>
struct group<float> {
  static constexpr index_t kChannels = 4, kVecs = 1;
  static void load(const float* p, float32x4_t* v) { v[0] = vld1q_f32(p); }
  static void load_partial(const float* p, index_t rem, float32x4_t* v) {
    float buf[4] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * sizeof(float));
    v[0] = vld1q_f32(buf);
  }
};
template <>
struct group<f16> {
  static constexpr index_t kChannels = 8, kVecs = 2;
  static void split(uint16x8_t x, float32x4_t* v) {
    v[0] = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(x)));
    v[1] = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(x)));
  }
  static void load(const f16* p, float32x4_t* v) { split(vld1q_u16(reinterpret_cast<const std::uint16_t*>(p)), v); }
  static void load_partial(const f16* p, index_t rem, float32x4_t* v) {
    std::uint16_t buf[8] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * 2);
    split(vld1q_u16(buf), v);
  }
};
template <>
struct group<bf16> {
  static constexpr index_t kChannels = 8, kVecs = 2;
  static void split(uint16x8_t x, float32x4_t* v) {
    v[0] = vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(x), 16));
    v[1] = vreinterpretq_f32_u32(vshll_n_u16(vget_high_u16(x), 16));
  }
  static void load(const bf16* p, float32x4_t* v) { split(vld1q_u16(reinterpret_cast<const std::uint16_t*>(p)), v); }
  static void load_partial(const bf16* p, index_t rem, float32x4_t* v) {
    std::uint16_t buf[8] = {};
    std::memcpy(buf, p, static_cast<std::size_t>(rem) * 2);
    split(vld1q_u16(buf), v);
  }
};

/// Lanes of the 4-float vector starting at position `pos` that lie below `valid`.
inline uint32x4_t lanes_below(index_t pos, index_t valid) {
  const std::uint32_t idx[4] = {0, 1, 2, 3};
  const index_t left = valid - pos;
  return vcltq_u32(vld1q_u32(idx), vdupq_n_u32(static_cast<std::uint32_t>(left < 0 ? 0 : (left > 4 ? 4 : left))));
}

/// Two passes over a row parked in ubuf; see x86_kernels_inl.hpp's score_rows_two_pass for why.
template <class T>
inline float row_std(const T* row, index_t head_dim, const float* lo, const float* inv, float* ubuf) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const index_t full = head_dim / C, rem = head_dim % C;
  float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);  // two chains hide FMA latency
  for (index_t g = 0; g <= full; ++g) {
    if (g == full && rem == 0) break;
    const index_t pos = g * C;
    float32x4_t x[V];
    if (g < full)
      G::load(row + pos, x);
    else
      G::load_partial(row + pos, rem, x);
    for (index_t k = 0; k < V; ++k) {
      const float32x4_t u = vsubq_f32(x[k], vld1q_f32(lo + pos + 4 * k));
      vst1q_f32(ubuf + pos + 4 * k, u);
      if (k == 0)
        acc0 = vfmaq_f32(acc0, u, vld1q_f32(inv + pos + 4 * k));
      else
        acc1 = vfmaq_f32(acc1, u, vld1q_f32(inv + pos + 4 * k));
    }
  }
  const float mean = vaddvq_f32(vaddq_f32(acc0, acc1)) / static_cast<float>(head_dim);
  if (std::fabs(mean) > detail::kFloatMaxMean) return INFINITY;  // far outside the reference: oracle
  const float32x4_t neg_mean = vdupq_n_f32(-mean);
  float32x4_t sq0 = vdupq_n_f32(0.0f), sq1 = vdupq_n_f32(0.0f);
  const index_t kd = (full + (rem ? 1 : 0)) * C;
  for (index_t pos = 0; pos < kd; pos += 4) {
    float32x4_t dev = vfmaq_f32(neg_mean, vld1q_f32(ubuf + pos), vld1q_f32(inv + pos));  // one rounding
    if (pos + 4 > head_dim) dev = vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(dev), lanes_below(pos, head_dim)));
    if ((pos / 4) % 2 == 0)
      sq0 = vfmaq_f32(sq0, dev, dev);
    else
      sq1 = vfmaq_f32(sq1, dev, dev);
  }
  return std::sqrt(vaddvq_f32(vaddq_f32(sq0, sq1)) / static_cast<float>(head_dim - 1));
}

template <class T>
inline void minmax_row(const T* row, index_t head_dim, void* state) {
  using U = typename detail::key_traits<T>::u;
  const index_t lanes = detail::mm_lanes<T>(head_dim);
  U* base = static_cast<U*>(state);
  if constexpr (sizeof(T) == 2) {
    for (index_t c = 0; c < head_dim; c += 8) {
      std::uint16_t buf[8] = {};
      const std::uint16_t* p = reinterpret_cast<const std::uint16_t*>(row) + c;
      if (head_dim - c < 8) {
        std::memcpy(buf, p, static_cast<std::size_t>(head_dim - c) * 2);
        p = buf;
      }
      const uint16x8_t x = vld1q_u16(p);
      std::uint16_t* s = reinterpret_cast<std::uint16_t*>(base);
      vst1q_s16(reinterpret_cast<std::int16_t*>(s + c),
                vmaxq_s16(vld1q_s16(reinterpret_cast<const std::int16_t*>(s + c)), vreinterpretq_s16_u16(x)));
      vst1q_s16(reinterpret_cast<std::int16_t*>(s + lanes + c),
                vminq_s16(vld1q_s16(reinterpret_cast<const std::int16_t*>(s + lanes + c)), vreinterpretq_s16_u16(x)));
      vst1q_u16(s + 2 * lanes + c, vmaxq_u16(vld1q_u16(s + 2 * lanes + c), x));
    }
  } else {
    for (index_t c = 0; c < head_dim; c += 4) {
      std::uint32_t buf[4] = {};
      const std::uint32_t* p = reinterpret_cast<const std::uint32_t*>(row) + c;
      if (head_dim - c < 4) {
        std::memcpy(buf, p, static_cast<std::size_t>(head_dim - c) * 4);
        p = buf;
      }
      const uint32x4_t x = vld1q_u32(p);
      std::uint32_t* s = reinterpret_cast<std::uint32_t*>(base);
      vst1q_s32(reinterpret_cast<std::int32_t*>(s + c),
                vmaxq_s32(vld1q_s32(reinterpret_cast<const std::int32_t*>(s + c)), vreinterpretq_s32_u32(x)));
      vst1q_s32(reinterpret_cast<std::int32_t*>(s + lanes + c),
                vminq_s32(vld1q_s32(reinterpret_cast<const std::int32_t*>(s + lanes + c)), vreinterpretq_s32_u32(x)));
      vst1q_u32(s + 2 * lanes + c, vmaxq_u32(vld1q_u32(s + 2 * lanes + c), x));
    }
  }
}

template <class T>
void fused_rows(const T* const* srows, index_t ns, const T* const* mrows, index_t nm, index_t /*nm_prefetch*/,
                index_t head_dim,
                const float* lo, const float* inv, const float* /*bias*/, void* mm_state, float* out_std,
                float* ubuf) {
  const index_t n = ns > nm ? ns : nm;
  for (index_t i = 0; i < n; ++i) {
    if (i < ns) out_std[i] = row_std<T>(srows[i], head_dim, lo, inv, ubuf);
    if (i < nm) minmax_row<T>(mrows[i], head_dim, mm_state);
  }
}

template <class T>
void l2_rows(const T* const* rows, index_t n, index_t head_dim, float* out) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  const index_t full = head_dim / C, rem = head_dim % C;
  for (index_t t = 0; t < n; ++t) {
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    for (index_t g = 0; g <= full; ++g) {
      if (g == full && rem == 0) break;
      float32x4_t x[V];
      if (g < full)
        G::load(rows[t] + g * C, x);
      else
        G::load_partial(rows[t] + g * C, rem, x);
      acc0 = vfmaq_f32(acc0, x[0], x[0]);
      if (V == 2) acc1 = vfmaq_f32(acc1, x[V - 1], x[V - 1]);
    }
    out[t] = -std::sqrt(vaddvq_f32(vaddq_f32(acc0, acc1)));
  }
}

template <class T>
void load_to_f32(const T* src, index_t n, float* dst) {
  using G = group<T>;
  constexpr index_t C = G::kChannels, V = G::kVecs;
  for (index_t pos = 0; pos < n; pos += C) {
    float32x4_t x[V];
    if (n - pos >= C)
      G::load(src + pos, x);
    else
      G::load_partial(src + pos, n - pos, x);
    for (index_t k = 0; k < V; ++k) vst1q_f32(dst + pos + 4 * k, x[k]);
  }
}

/// exp(x) for x <= 0 or NaN (Cephes expf, <= 2 ulp); denormal results flushed to 0.
inline float32x4_t exp_nonpositive(float32x4_t x) {
  const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
  float32x4_t r = vfmaq_f32(x, n, vdupq_n_f32(-0.693359375f));
  r = vfmaq_f32(r, n, vdupq_n_f32(2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  const float32x4_t y = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
  const int32x4_t bits = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
  const float32x4_t e = vmulq_f32(y, vreinterpretq_f32_s32(bits));
  const uint32x4_t keep = vmvnq_u32(vcltq_f32(x, vdupq_n_f32(-87.33654f)));  // NaN: kept
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), keep));
}

inline void softmax(float* s, index_t n, float w, float* out, bool accumulate) {
  float mx = -INFINITY;
  index_t i = 0;
  float32x4_t mv = vdupq_n_f32(-INFINITY);
  for (; i + 4 <= n; i += 4) mv = vmaxnmq_f32(mv, vld1q_f32(s + i));  // maxNum skips NaN
  mx = vmaxnmvq_f32(mv);
  for (; i < n; ++i) mx = std::fmax(mx, s[i]);
  const float32x4_t m = vdupq_n_f32(mx);
  double sum = 0.0;
  for (i = 0; i < n; i += 4) {
    float buf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    const index_t k = n - i < 4 ? n - i : 4;
    std::memcpy(buf, s + i, static_cast<std::size_t>(k) * sizeof(float));
    const float32x4_t e = exp_nonpositive(vsubq_f32(vld1q_f32(buf), m));
    vst1q_f32(buf, e);
    std::memcpy(s + i, buf, static_cast<std::size_t>(k) * sizeof(float));
    const float64x2_t lo = vcvt_f64_f32(vget_low_f32(vmaxnmq_f32(e, vdupq_n_f32(0.0f))));
    const float64x2_t hi = vcvt_high_f64_f32(vmaxnmq_f32(e, vdupq_n_f32(0.0f)));
    sum += vaddvq_f64(vaddq_f64(lo, hi));
  }
  const float rcp = static_cast<float>(1.0 / sum);
  for (i = 0; i < n; ++i) {
    const float p = s[i] * rcp;
    out[i] = accumulate ? std::fma(w, p, out[i]) : p;
  }
}

template <class T>
constexpr detail::kernel_set<T> make_kernel_set() {
  return {&detail::natural_kernel_dim<group<T>::kChannels>, &detail::natural_kernel_channel, &fused_rows<T>,
          &detail::generic_ref_stats<T, &load_to_f32<T>, &detail::natural_kernel_dim<group<T>::kChannels>>,
          &l2_rows<T>, &load_to_f32<T>};
}

/// The NEON target's table.
inline constexpr detail::target_kernels kKernels{target::neon, make_kernel_set<float>(), make_kernel_set<f16>(),
                                                 make_kernel_set<bf16>(), &softmax};

}  // namespace neon
}  // namespace simd
}  // namespace lagkv

#endif  // aarch64 NEON
