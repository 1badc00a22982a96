// No include guard, on purpose (Highway's "-inl" pattern, as simd/x86_kernels_inl.hpp): the x86
// q8_0 row kernels are written once here and compiled once per x86 target. q8_0_x86.hpp defines
// LAGKV_SIMD_Q8_0_X86_KERNELS_INL and includes this file inside each target region and the
// target's own namespace (q8::avx2, q8::avx512), after defining the vocabulary below; GCC and
// Clang attach a target region to the functions defined in it, so one shared template could not
// serve both targets. Included on its own, the file defines nothing. It must not include
// anything (it is read inside a namespace).
//
// Vocabulary the including target defines in its namespace:
//   vt   float vectors: vf, vm (lane mask), kLanes (floats per vector: 32 / kLanes vectors per
//        q8_0 block), kRows (rows per batch: their partial sums fit a small stack buffer),
//        kGroup (q8_0 blocks whose min/max trackers are held in registers at once); zero, set1,
//        load, store, add, sub, mul, fmadd, fnmsub, vmin, vmax; values(block, j) (values
//        [kLanes j, kLanes j + kLanes) of a block as floats, exact), scale(block, bad) (the
//        block's scale broadcast, exact; flags Inf/NaN into `bad` through scale_bad),
//        q_squares(block) / d_squared(block) (exact int32 sums of q^2 as floats, d^2 broadcast),
//        recip_or_zero(range) (1/range where range > 0, else 0), beyond_two(v) (|v| > 2 or NaN),
//        no_lanes, mor, any; sum4(a0, a1, a2, a3) -> __m128 [sum a0, .., sum a3] and
//        store_n(out, __m128, n) (the first n lanes).
//
// The arithmetic (the file comment of q8_0_x86.hpp says why it looks like this): per value
// v = (float)q * d; z = fma(v, inv, bias) (kBias) or fma(v - lo, inv, -0.5); per row
// S1 = sum z and S2 = sum z^2 in two accumulator pairs (vectors alternate between them), reduced
// four rows at a time; the std is accepted where S1^2/D <= 2 (S2 - S1^2/D), else -1.

#if defined(LAGKV_SIMD_Q8_0_X86_KERNELS_INL)

/// Blocks [b0, b0+K) of a batch of rows (K <= vt::kGroup: 2 * K * kVecs trackers of min and
/// max in registers), each row front to back; the row's partial sums continue those of earlier
/// groups.
template <int K, bool kScore, bool kFold, bool kBias>
inline unsigned group_rows(const block_q8_0* const* rows, index_t n, index_t b0, const float* lo, const float* inv,
                           const float* bias, float* mn, float* mx, vt::vf* p1, vt::vf* p2) {
  using vf = vt::vf;
  constexpr index_t W = vt::kLanes;
  constexpr int kVecs = static_cast<int>(kQ8BlockValues / W);  // vectors per q8_0 block
  unsigned bad = 0;
  const index_t c0 = b0 * kQ8BlockValues;
  vf tl[K * kVecs], th[K * kVecs];
  if (kFold)
    for (int k = 0; k < K * kVecs; ++k) {
      tl[k] = vt::load(mn + c0 + W * k);
      th[k] = vt::load(mx + c0 + W * k);
    }
  const vf neg_half = vt::set1(-0.5f);
  for (index_t i = 0; i < n; ++i) {
    const block_q8_0* r = rows[i] + b0;
    vf a1 = vt::zero(), a2 = vt::zero(), b1 = vt::zero(), b2 = vt::zero();
    if (kScore && b0 > 0) {
      a1 = p1[i];
      a2 = p2[i];
    }
#pragma GCC unroll 4
    for (int k = 0; k < K; ++k) {
      const vf d = vt::scale(r[k], bad);
#pragma GCC unroll 4
      for (int j = 0; j < kVecs; ++j) {
        const vf v = vt::mul(vt::values(r[k], j), d);
        if (kFold) {
          tl[k * kVecs + j] = vt::vmin(tl[k * kVecs + j], v);
          th[k * kVecs + j] = vt::vmax(th[k * kVecs + j], v);
        }
        if (kScore) {
          const index_t c = c0 + kQ8BlockValues * k + W * j;
          const vf w = vt::load(inv + c);
          const vf z =
              kBias ? vt::fmadd(v, w, vt::load(bias + c)) : vt::fmadd(vt::sub(v, vt::load(lo + c)), w, neg_half);
          if (j % 2 == 0) {
            a1 = vt::add(a1, z);
            a2 = vt::fmadd(z, z, a2);
          } else {
            b1 = vt::add(b1, z);
            b2 = vt::fmadd(z, z, b2);
          }
        }
      }
    }
    if (kScore) {
      p1[i] = vt::add(a1, b1);
      p2[i] = vt::add(a2, b2);
    }
  }
  if (kFold)
    for (int k = 0; k < K * kVecs; ++k) {
      vt::store(mn + c0 + W * k, tl[k]);
      vt::store(mx + c0 + W * k, th[k]);
    }
  return bad & kScaleBadBit;
}

/// group_rows<K> for the first `left` >= 1 blocks of what remains (K = min(left, kGroup)).
template <int K, bool kScore, bool kFold, bool kBias>
inline unsigned group_rows_upto(index_t left, const block_q8_0* const* rows, index_t n, index_t b0, const float* lo,
                                const float* inv, const float* bias, float* mn, float* mx, vt::vf* p1,
                                vt::vf* p2) {
  if constexpr (K > 1) {
    if (left < K) return group_rows_upto<K - 1, kScore, kFold, kBias>(left, rows, n, b0, lo, inv, bias, mn, mx, p1, p2);
  }
  return group_rows<K, kScore, kFold, kBias>(rows, n, b0, lo, inv, bias, mn, mx, p1, p2);
}

/// std (or -1) of each row of a batch from its partials: four rows per reduction.
inline void finish_rows(const vt::vf* p1, const vt::vf* p2, index_t n, index_t dim, float* out) {
  const float fd = static_cast<float>(dim);
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    const index_t i1 = t + (1 < nr ? 1 : nr - 1), i2 = t + (2 < nr ? 2 : nr - 1), i3 = t + (3 < nr ? 3 : nr - 1);
    const __m128 a = vt::sum4(p1[t], p1[i1], p1[i2], p1[i3]);
    const __m128 q = vt::sum4(p2[t], p2[i1], p2[i2], p2[i3]);
    const __m128 mean_part = _mm_mul_ps(_mm_mul_ps(a, a), _mm_set1_ps(1.0f / fd));
    const __m128 ss = _mm_sub_ps(q, mean_part);
    const __m128 ok = _mm_cmp_ps(mean_part, _mm_mul_ps(ss, _mm_set1_ps(2.0f)), _CMP_LE_OQ);
    const __m128 sd = _mm_sqrt_ps(_mm_mul_ps(ss, _mm_set1_ps(1.0f / (fd - 1.0f))));
    vt::store_n(out + t, _mm_blendv_ps(_mm_set1_ps(-1.0f), sd, ok), nr);
  }
}

/// One batch of at most vt::kRows rows over all `nb` blocks, a group of blocks at a time.
template <bool kScore, bool kFold, bool kBias>
inline unsigned batch(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                      const float* bias, float* out, float* mn, float* mx) {
  vt::vf p1[vt::kRows], p2[vt::kRows];
  unsigned bad = 0;
  for (index_t b0 = 0; b0 < nb; b0 += vt::kGroup)
    bad |= group_rows_upto<vt::kGroup, kScore, kFold, kBias>(nb - b0, rows, n, b0, lo, inv, bias, mn, mx, p1, p2);
  if (kScore) finish_rows(p1, p2, n, nb * kQ8BlockValues, out);
  return bad;
}

/// See q8_kernel_set::score_rows.
inline bool score_rows(const block_q8_0* const* rows, index_t n, index_t nb, const float* lo, const float* inv,
                       const float* bias, float* out, float* mn, float* mx) {
  unsigned bad = 0;
  for (index_t t = 0; t < n; t += vt::kRows) {
    const index_t m = n - t < vt::kRows ? n - t : vt::kRows;
    const block_q8_0* const* r = rows + t;
    if (out == nullptr)
      bad |= batch<false, true, false>(r, m, nb, lo, inv, bias, nullptr, mn, mx);
    else if (mn == nullptr)
      bad |= bias != nullptr ? batch<true, false, true>(r, m, nb, lo, inv, bias, out + t, mn, mx)
                             : batch<true, false, false>(r, m, nb, lo, inv, bias, out + t, mn, mx);
    else
      bad |= bias != nullptr ? batch<true, true, true>(r, m, nb, lo, inv, bias, out + t, mn, mx)
                             : batch<true, true, false>(r, m, nb, lo, inv, bias, out + t, mn, mx);
  }
  return bad != 0;
}

/// sum of (d*q)^2 per row: q^2 summed exactly in int32 (vpmaddwd on sign-extended int16), then
/// scaled by d^2 (exact in float) into a float accumulator per row; four rows per reduction.
/// A non-finite scale gives a non-finite result, which the driver recomputes with the oracle.
inline void l2_rows(const block_q8_0* const* rows, index_t n, index_t nb, float* out) {
  for (index_t t = 0; t < n; t += 4) {
    const index_t nr = n - t < 4 ? n - t : 4;
    vt::vf acc[4];
#pragma GCC unroll 4
    for (index_t i = 0; i < 4; ++i) {
      const block_q8_0* r = rows[t + (i < nr ? i : nr - 1)];
      vt::vf a = vt::zero();
      for (index_t b = 0; b < nb; ++b) a = vt::fmadd(vt::q_squares(r[b]), vt::d_squared(r[b]), a);
      acc[i] = a;
    }
    vt::store_n(out + t, _mm_sub_ps(_mm_setzero_ps(), _mm_sqrt_ps(vt::sum4(acc[0], acc[1], acc[2], acc[3]))), nr);
  }
}

/// See q8_kernel_set::ref_stats: kLanes channels per step (d is a multiple of 32).
inline bool ref_stats(const float* mn, const float* mx, index_t d, float* lo, float* inv, float* bias) {
  using vf = vt::vf;
  const vf half = vt::set1(0.5f);
  vt::vm far_bias = vt::no_lanes();
  for (index_t c = 0; c < d; c += vt::kLanes) {
    const vf l = vt::load(mn + c);
    const vf r = vt::recip_or_zero(vt::sub(vt::load(mx + c), l));
    vt::store(lo + c, l);
    vt::store(inv + c, r);
    vt::store(bias + c, vt::fnmsub(l, r, half));  // -lo*r - 0.5
    far_bias = vt::mor(far_bias, vt::beyond_two(vt::fmadd(l, r, half)));  // |lo*inv + 0.5| > 2
  }
  return !vt::any(far_bias);
}

#endif  // LAGKV_SIMD_Q8_0_X86_KERNELS_INL
