// No include guard, on purpose (Highway's "-inl" pattern): the x86 row kernels are written once
// here and compiled once per x86 target. x86_avx2.hpp and x86_avx512.hpp each define
// LAGKV_SIMD_X86_KERNELS_INL and include this file inside their target region and their own
// namespace, after defining the vocabulary below; GCC and Clang attach a target region to the
// functions defined in it, so one shared template could not serve both targets. Included on its
// own, the file defines nothing. It must not include anything (it is read inside a namespace).
//
// Vocabulary the including target defines in its namespace:
//   vt        float vectors: vf, vm (lane mask), kLanes, kRows (rows scored per block); zero, set1,
//             load, store, add, sub, mul, fmadd, fmsub, fnmsub, div, abs, maskz, keep_first,
//             first_n, cmp_gt / cmp_lt / cmp_neq (ordered), cmp_nle (unordered), mand, mor, any,
//             hsum; finish_rows / finish_l2 (the transposed reduction of a block of kRows rows).
//   it        integer vectors of the min/max trackers: vi, kBytes, kSlices (slices held in
//             registers at once), load, store.
//   mm16/mm32 per-lane-width tracker ops: smax, smin, umax, load_partial, resolve_max,
//             resolve_min, nan_any.
//   group<T>  one load group of storage type T: kChannels channels as kVecs float vectors, in
//             kernel order; load, load_partial (zeros past the row), lanes(rem, k) = valid lanes
//             of vector k in a group holding rem channels.
//   prefetch_l2(p)
//
// Why the kernels look the way they do (measured on Zen 4, in bench/RESULTS.md):
// - Blocks of kRows rows, walked a channel group at a time, with 1/range and the bias held in
//   registers across the block's rows: loading them for every row made the kernel load-port
//   bound (three loads per vector op pair).
// - Each row keeps its own S1 and S2 accumulators (2 * kRows independent chains: enough to cover
//   the FMA latency), and the 2 * kRows horizontal sums are done together by one transposed
//   reduction per block instead of two full reductions per row.
// - The arithmetic is 256-bit on both targets: on Zen 4, where 512-bit operations are
//   double-pumped, the 512-bit version of the same kernel measured 1.3x slower.
// - What is left is the op count itself: per 8 channels of a row one convert (fp16/bf16), two
//   FMAs and one add, plus 3 integer ops per 32 bytes for the min/max (bench/RESULTS.md).

#if defined(LAGKV_SIMD_X86_KERNELS_INL)

/// Makes the compiler materialise `v` in a register here (an empty asm it cannot see through).
/// Defined for this file only (undefined at its end).
#define LAGKV_SIMD_PIN(v) __asm__("" : "+v"(v))

/// Rows to prefetch into L2 while a block is scored, one row every `every` channel groups, so
/// that the requests go out evenly instead of in one burst per block.
struct prefetch_rows {
  const char* const* rows = nullptr;  // row pointers, as bytes
  index_t n = 0, row_bytes = 0, every = 1;
  index_t next = 0, done = 0;  // group that issues the next row; rows issued
  void issue() {
    for (index_t b = 0; b < row_bytes; b += 64) prefetch_l2(rows[done] + b);
    ++done;
  }
  void at_group(index_t g) {
    if (g == next && done < n) {
      issue();
      next += every;
    }
  }
  void rest() {  // rows the group loop did not reach
    while (done < n) issue();
  }
};

/// S1/S2 of one channel group (kernel positions [pos, pos + C)) for the block's rows.
/// kPartial: the row's last, partial group of `rem` channels (loads give 0 past the row and inv,
/// bias, lo are 0 at padding positions, so the bias form adds exactly 0 there; the -0.5 of the
/// other form is masked off).
template <class T, bool kBias, bool kPartial>
inline void score_group(const T* const* r, index_t pos, index_t rem, const float* inv, const float* lob,
                        typename vt::vf* s1, typename vt::vf* s2) {
  using G = group<T>;
  using vf = typename vt::vf;
  constexpr index_t R = vt::kRows, NV = G::kVecs, W = vt::kLanes;
  vf w[NV], b[NV];
#pragma GCC unroll 2
  for (index_t k = 0; k < NV; ++k) {
    w[k] = vt::load(inv + pos + W * k);
    b[k] = vt::load(lob + pos + W * k);  // bias, or lo
  }
#pragma GCC unroll 8
  for (index_t i = 0; i < R; ++i) {
    vf x[NV];
    if (kPartial)
      G::load_partial(r[i] + pos, rem, x);
    else
      G::load(r[i] + pos, x);
#pragma GCC unroll 2
    for (index_t k = 0; k < NV; ++k) {
      vf z = kBias ? vt::fmadd(x[k], w[k], b[k]) : vt::fmadd(vt::sub(x[k], b[k]), w[k], vt::set1(-0.5f));
      if (kPartial && !kBias) z = vt::keep_first(z, G::lanes(rem, k));
      s1[i] = vt::add(s1[i], z);
      s2[i] = vt::fmadd(z, z, s2[i]);
    }
  }
}

/// Std of the normalised rows of a block (nr in 1..kRows; missing rows repeat the last one).
///
/// Numerics: one pass accumulating S1 = sum z and S2 = sum z^2 of z = y - 0.5, y = (x - lo) * inv
/// the normalised value. Shifting every channel by the same constant leaves the variance alone
/// and centres in-range data (y in [0, 1] for rows like the reference) on 0. kBias: z =
/// fma(x, inv, bias) with bias = -lo*inv - 0.5 in one rounding; the driver passes a bias only
/// where every |bias| <= 2, so the folded offset cannot swamp z (absolute error ~ eps * (|y| +
/// |bias|)). Otherwise z = fma(x - lo, inv, -0.5). var = (S2 - S1^2/D) / (D - 1) cancels only when
/// the row's mean is large against its spread, so a block is accepted only when every row has
/// S1^2/D <= 2 * (S2 - S1^2/D); the relative error of var is then <= ~7 * (D/8 + 5) eps (float
/// lane sums of D/8 steps plus the tree). Rows that overflow float (|y| ~ 1e19) or hold NaN/Inf
/// fail that test or come out non-finite; dispatch.hpp's finish_chunk sends non-finite rows to the
/// exact double path. Returns false when the block must be redone by score_rows_two_pass.
template <class T, bool kBias, index_t kD>
inline bool score_block(const T* const* rows, index_t nr, index_t head_dim, const float* lo, const float* inv,
                        const float* bias, float inv_d, float inv_d1, float* out, prefetch_rows& pf) {
  if (kD > 0) head_dim = kD;  // compile-time head_dim: constant trip counts
  using G = group<T>;
  using vf = typename vt::vf;
  constexpr index_t R = vt::kRows, C = G::kChannels;
  const T* r[R];
#pragma GCC unroll 8
  for (index_t i = 0; i < R; ++i) r[i] = rows[i < nr ? i : nr - 1];
  const float* lob = kBias ? bias : lo;
  const index_t full = head_dim / C, rem = head_dim % C;
  vf s1[R], s2[R];
#pragma GCC unroll 8
  for (index_t i = 0; i < R; ++i) s1[i] = s2[i] = vt::zero();
  for (index_t g = 0; g < full; ++g) {
    pf.at_group(g);
    score_group<T, kBias, false>(r, g * C, 0, inv, lob, s1, s2);
  }
  pf.rest();
  if (rem != 0) score_group<T, kBias, true>(r, full * C, rem, inv, lob, s1, s2);
  return vt::finish_rows(s1, s2, nr, inv_d, inv_d1, out);
}

/// The slow, always-accurate path for blocks score_block rejects: two passes over each row.
/// Pass 1 forms u = x - lo (exact for most inputs, one rounding otherwise) and the mean of
/// y = u*inv; u is parked in ubuf (L1). Pass 2 forms y - mean = fma(u, inv, -mean) with a single
/// rounding and sums its squares: nothing cancels, so the absolute error of the std stays
/// O((D/8 + c) * eps * max|y|) whatever the mean.
template <class T>
inline void score_rows_two_pass(const T* const* rows, index_t nr, index_t head_dim, const float* lo, const float* inv,
                                float inv_d, float inv_d1, float* ubuf, float* out) {
  using G = group<T>;
  using vf = typename vt::vf;
  constexpr index_t C = G::kChannels, NV = G::kVecs, W = vt::kLanes;
  const index_t full = head_dim / C, rem = head_dim % C, groups = full + (rem != 0 ? 1 : 0);
  for (index_t t = 0; t < nr; ++t) {
    vf acc = vt::zero();
    for (index_t g = 0; g < groups; ++g) {
      const index_t pos = g * C;
      vf x[NV];
      if (g < full)
        G::load(rows[t] + pos, x);
      else
        G::load_partial(rows[t] + pos, rem, x);  // padding: u = 0 - 0, weight inv = 0
      for (index_t k = 0; k < NV; ++k) {
        const vf u = vt::sub(x[k], vt::load(lo + pos + W * k));
        vt::store(ubuf + pos + W * k, u);
        acc = vt::fmadd(u, vt::load(inv + pos + W * k), acc);
      }
    }
    const float mean_y = vt::hsum(acc) * inv_d;
    if (std::fabs(mean_y) > detail::kFloatMaxMean) {  // far outside the reference: the oracle scores it
      out[t] = INFINITY;
      continue;
    }
    const vf mean = vt::set1(mean_y);
    vf sq = vt::zero();
    for (index_t g = 0; g < groups; ++g) {
      const index_t pos = g * C;
      for (index_t k = 0; k < NV; ++k) {
        vf dev = vt::fmsub(vt::load(ubuf + pos + W * k), vt::load(inv + pos + W * k), mean);
        if (g == full) dev = vt::keep_first(dev, G::lanes(rem, k));  // padding must add 0, not mean^2
        sq = vt::fmadd(dev, dev, sq);
      }
    }
    out[t] = std::sqrt(vt::hsum(sq) * inv_d1);
  }
}

/// Folds `nr` rows into tracker slices [s0, s0 + NS) of a min/max state (it::kBytes bytes each);
/// kTail: the last of them is the row's partial slice (`rem` elements). The 3 x NS trackers stay
/// in registers (every loop over them is unrolled and nothing in the row loop branches, or GCC
/// keeps the array on the stack) while the rows are read front to back: the DRAM stream stays
/// sequential (slice-major order over many rows defeats the hardware prefetcher).
template <class T, int NS, bool kTail>
inline void minmax_block(const T* const* rows, index_t nr, index_t rem, unsigned char* base, std::size_t tracker,
                         index_t s0) {
  using Ops = std::conditional_t<sizeof(T) == 2, mm16, mm32>;
  using vi = typename it::vi;
  constexpr index_t per = it::kBytes / static_cast<index_t>(sizeof(T));
  vi a[3][NS];
#pragma GCC unroll 8
  for (int s = 0; s < NS; ++s)
#pragma GCC unroll 3
    for (int k = 0; k < 3; ++k) a[k][s] = it::load(base + k * tracker + static_cast<std::size_t>(s0 + s) * it::kBytes);
  for (index_t i = 0; i < nr; ++i) {
#pragma GCC unroll 8
    for (int s = 0; s < NS; ++s) {
      const T* p = rows[i] + (s0 + s) * per;
      vi x = kTail && s == NS - 1 ? Ops::load_partial(p, rem) : it::load(p);
      // One load, three uses: left alone, GCC folds the load into each min/max (three loads of
      // the same bytes; measured 1.8x slower, the load ports being the limit).
      LAGKV_SIMD_PIN(x);
      a[0][s] = Ops::smax(a[0][s], x);
      a[1][s] = Ops::smin(a[1][s], x);
      a[2][s] = Ops::umax(a[2][s], x);
    }
  }
#pragma GCC unroll 8
  for (int s = 0; s < NS; ++s)
#pragma GCC unroll 3
    for (int k = 0; k < 3; ++k) it::store(base + k * tracker + static_cast<std::size_t>(s0 + s) * it::kBytes, a[k][s]);
}

template <class T, int NS>
inline void minmax_block_of(const T* const* rows, index_t nr, index_t rem, bool tail, unsigned char* base,
                            std::size_t tracker, index_t s0) {
  if (tail)
    minmax_block<T, NS, true>(rows, nr, rem, base, tracker, s0);
  else
    minmax_block<T, NS, false>(rows, nr, rem, base, tracker, s0);
}

/// The last slices of a row (fewer than it::kSlices): one block of exactly `left` slices.
template <class T, int N>
inline void minmax_last(const T* const* rows, index_t nr, index_t rem, unsigned char* base, std::size_t tracker,
                        index_t s0, index_t left) {
  if constexpr (N >= 1) {
    if (left == N)
      minmax_block_of<T, N>(rows, nr, rem, rem != 0, base, tracker, s0);
    else
      minmax_last<T, N - 1>(rows, nr, rem, base, tracker, s0, left);
  }
}

/// Accumulates `nr` rows into a min/max state (common.hpp layout: three trackers of
/// mm_lanes(head_dim) lanes, signed max, signed min, unsigned max).
template <class T>
inline void minmax_rows(const T* const* rows, index_t nr, index_t head_dim, void* state) {
  constexpr index_t per = it::kBytes / static_cast<index_t>(sizeof(T));
  constexpr int NS = it::kSlices;
  const index_t rem = head_dim % per, slices = (head_dim + per - 1) / per;
  const std::size_t tracker = static_cast<std::size_t>(detail::mm_lanes<T>(head_dim)) * sizeof(T);
  unsigned char* base = static_cast<unsigned char*>(state);
  index_t s0 = 0;
  for (; s0 + NS <= slices; s0 += NS)
    minmax_block_of<T, NS>(rows, nr, rem, rem != 0 && s0 + NS == slices, base, tracker, s0);
  if (s0 < slices) minmax_last<T, NS - 1>(rows, nr, rem, base, tracker, s0, slices - s0);
}

/// Vectorised ref_stats (see common.hpp's kernel_set): runs once per reference chunk, so it must
/// cost a few instructions per channel, not the ~50 of the portable loop.
template <class T>
unsigned ref_stats(const void* state, index_t head_dim, T* max_out, T* min_out, float* lo, float* inv, float* bias) {
  using Ops = std::conditional_t<sizeof(T) == 2, mm16, mm32>;
  using K = detail::key_traits<T>;
  using vf = typename vt::vf;
  using vm = typename vt::vm;
  constexpr index_t per = it::kBytes / static_cast<index_t>(sizeof(T));
  const index_t lanes = detail::mm_lanes<T>(head_dim);
  const unsigned char* base = static_cast<const unsigned char*>(state);
  const std::size_t tracker = static_cast<std::size_t>(lanes) * sizeof(T);
  bool nan = false;
  for (index_t off = 0; off < lanes; off += per) {
    const std::size_t b = static_cast<std::size_t>(off) * sizeof(T);
    const auto smax = it::load(base + b), smin = it::load(base + tracker + b);
    const auto umax = it::load(base + 2 * tracker + b);
    it::store(max_out + off, Ops::resolve_max(smax, smin));
    it::store(min_out + off, Ops::resolve_min(umax, smin));
    nan |= Ops::nan_any(smax, umax, K::kInf, K::kSign, head_dim - off);
  }
  using G = group<T>;
  constexpr index_t C = G::kChannels, NV = G::kVecs, W = vt::kLanes;
  const index_t groups = (head_dim + C - 1) / C, rem = head_dim % C;
  const vf zero = vt::zero(), one = vt::set1(1.0f), half = vt::set1(0.5f), two = vt::set1(2.0f);
  const vf fmax = vt::set1(FLT_MAX), fmin = vt::set1(FLT_MIN);
  // The flags are OR-ed as lane masks and tested once: no per-vector test in the chain.
  vm unsafe = vt::first_n(0), far = vt::first_n(0);
  for (index_t g = 0; g < groups; ++g) {
    vf h[NV], l[NV];
    G::load(max_out + g * C, h);  // the arrays are padded to mm_lanes: whole groups are readable
    G::load(min_out + g * C, l);
    const bool last_partial = g == groups - 1 && rem != 0;
#pragma GCC unroll 2
    for (index_t k = 0; k < NV; ++k) {
      const index_t pos = g * C + W * k;
      const vm valid = vt::first_n(last_partial ? G::lanes(rem, k) : W);
      const vf lv = vt::maskz(valid, l[k]);
      const vf range = vt::sub(h[k], l[k]);
      const vf r = vt::maskz(vt::mand(valid, vt::cmp_gt(range, zero)), vt::div(one, range));
      vt::store(lo + pos, lv);
      vt::store(inv + pos, r);
      vt::store(bias + pos, vt::maskz(valid, vt::fnmsub(lv, r, half)));  // -lo*r - 0.5
      unsafe = vt::mor(unsafe, vt::mand(valid, vt::mor(vt::mor(vt::cmp_nle(range, fmax), vt::cmp_gt(r, fmax)),
                                                       vt::mand(vt::cmp_lt(r, fmin), vt::cmp_neq(r, zero)))));
      far = vt::mor(far, vt::mand(valid, vt::cmp_nle(vt::abs(vt::fmadd(lv, r, half)), two)));
    }
  }
  return (nan ? detail::kRefPoisoned : 0u) | (vt::any(unsafe) ? detail::kRefUnsafe : 0u) |
         (vt::any(far) ? detail::kRefFarBias : 0u);
}

/// kernel_set::fused_rows: scores `ns` rows of the chunk and folds `nm` rows of a later chunk
/// into the min/max state, a batch of each at a time (8 or 16 rows, see `batch`: scoring blocks,
/// then the min/max rows with their trackers in registers, loaded and stored once per batch).
/// Interleaving the two inside one loop (min/max slices between the scoring groups, trackers
/// through L1) was measured: no gain with AVX2, 1.1x slower with AVX-512; both phases compete
/// for the same vector ports.
template <class T, index_t kD>
void fused_rows_d(const T* const* srows, index_t ns, const T* const* mrows, index_t nm, index_t nm_prefetch,
                  index_t head_dim, const float* lo, const float* inv, const float* bias, void* mm_state,
                  float* out_std, float* ubuf) {
  constexpr index_t R = vt::kRows;
  const index_t row_bytes = head_dim * static_cast<index_t>(sizeof(T));
  // Rows per batch (scoring blocks, then as many min/max rows): about 4 KiB of the DRAM stream.
  // Measured (paired, best of 30-40 rounds, D128 lag128): 512-byte rows (fp32 D128) in batches of
  // 8 instead of 16: AVX-512 0.64-0.65x -> 0.69-0.71x of the streaming read, AVX2 0.56 -> 0.66x;
  // 256-byte rows (fp32 D64, fp16/bf16 D128) lose with 8 (AVX2 fp32 D64 0.71 -> 0.57x, fp16
  // D128 0.53-0.58 -> 0.50x); 128-byte rows gained nothing clear from 32 (noise-level).
  const index_t batch = row_bytes >= 512 ? 8 : 16;
  static_assert(8 % R == 0 && 16 % R == 0, "a batch holds whole scoring blocks");
  // Rows of the min/max stream (from DRAM) are prefetched into L2 kAhead rows before they are
  // read, spread over the scoring of the block before them (prefetch_rows): without it the two
  // streams serialise. Measured (fp16 and fp32, D128): 16 rows ahead beat 8, 12, 24 and 32 (the
  // sweep hands over 16 rows of the next chunk, so the stream stays covered across chunks);
  // spreading beat one burst per block (fp32 0.63x vs 0.47x of the streaming read); T1 (L2)
  // rather than T0/NTA.
  constexpr index_t kAhead = 16;
  const index_t n = ns > nm ? ns : nm;
  const index_t full_groups = head_dim / group<T>::kChannels;
  const float inv_d = 1.0f / static_cast<float>(head_dim), inv_d1 = 1.0f / static_cast<float>(head_dim - 1);
  for (index_t i = 0; i < n; i += batch) {
    for (index_t j = i; j < i + batch && j < ns; j += R) {
      prefetch_rows pf;
      const index_t m0 = j + kAhead, m1 = j + kAhead + R < nm_prefetch ? j + kAhead + R : nm_prefetch;
      if (m1 > m0) {
        pf.rows = reinterpret_cast<const char* const*>(mrows + m0);
        pf.n = m1 - m0;
        pf.row_bytes = row_bytes;
        pf.every = full_groups >= pf.n ? full_groups / pf.n : 1;
      }
      const index_t nr = ns - j < R ? ns - j : R;
      const bool ok =
          bias != nullptr
              ? score_block<T, true, kD>(srows + j, nr, head_dim, lo, inv, bias, inv_d, inv_d1, out_std + j, pf)
              : score_block<T, false, kD>(srows + j, nr, head_dim, lo, inv, nullptr, inv_d, inv_d1, out_std + j, pf);
      if (!ok) score_rows_two_pass<T>(srows + j, nr, head_dim, lo, inv, inv_d, inv_d1, ubuf, out_std + j);
    }
    if (i < nm) minmax_rows<T>(mrows + i, nm - i < batch ? nm - i : batch, head_dim, mm_state);
  }
}

/// kernel_set::fused_rows (see fused_rows_d). The head_dims of most models (64, 128) get code
/// compiled for their size (constant trip counts: the whole sweep measured 1.06x faster with
/// AVX-512 and 1.13x with AVX2, in cache); others run the generic loop.
template <class T>
void fused_rows(const T* const* srows, index_t ns, const T* const* mrows, index_t nm, index_t nm_prefetch,
                index_t head_dim, const float* lo, const float* inv, const float* bias, void* mm_state, float* out_std,
                float* ubuf) {
  switch (head_dim) {
    case 64:
      return fused_rows_d<T, 64>(srows, ns, mrows, nm, nm_prefetch, head_dim, lo, inv, bias, mm_state, out_std, ubuf);
    case 128:
      return fused_rows_d<T, 128>(srows, ns, mrows, nm, nm_prefetch, head_dim, lo, inv, bias, mm_state, out_std, ubuf);
    default:
      return fused_rows_d<T, 0>(srows, ns, mrows, nm, nm_prefetch, head_dim, lo, inv, bias, mm_state, out_std, ubuf);
  }
}

/// kernel_set::l2_rows (below): out[t] = -||row t||. Blocks of kRows rows share one transposed reduction;
/// each row is read front to back with two accumulators (interleaving rows' addresses defeats
/// the hardware prefetcher: measured 2.3x slower from DRAM for fp32 rows).
template <class T, index_t kD>
void l2_rows_d(const T* const* rows, index_t n, index_t head_dim, float* out) {
  using G = group<T>;
  using vf = typename vt::vf;
  constexpr index_t R = vt::kRows, C = G::kChannels, NV = G::kVecs;
  if (kD > 0) head_dim = kD;
  const index_t full = head_dim / C, rem = head_dim % C;
  for (index_t t = 0; t < n; t += R) {
    const index_t nr = n - t < R ? n - t : R;
    vf acc[R];
#pragma GCC unroll 8
    for (index_t i = 0; i < R; ++i) {
      const T* row = rows[t + (i < nr ? i : nr - 1)];
      vf a0 = vt::zero(), a1 = vt::zero();
      index_t g = 0;
      for (; g + 2 <= full; g += 2) {
        vf x[NV], y[NV];
        G::load(row + g * C, x);
        G::load(row + g * C + C, y);
#pragma GCC unroll 2
        for (index_t k = 0; k < NV; ++k) {
          a0 = vt::fmadd(x[k], x[k], a0);
          a1 = vt::fmadd(y[k], y[k], a1);
        }
      }
      if (g < full) {
        vf x[NV];
        G::load(row + g * C, x);
        for (index_t k = 0; k < NV; ++k) a0 = vt::fmadd(x[k], x[k], a0);
      }
      if (rem != 0) {
        vf x[NV];
        G::load_partial(row + full * C, rem, x);
        for (index_t k = 0; k < NV; ++k) a1 = vt::fmadd(x[k], x[k], a1);
      }
      acc[i] = vt::add(a0, a1);
    }
    vt::finish_l2(acc, nr, out + t);
  }
}

/// Compiled for head_dim 64 and 128 as well (measured 1.1-1.2x in cache).
template <class T>
void l2_rows(const T* const* rows, index_t n, index_t head_dim, float* out) {
  switch (head_dim) {
    case 64: return l2_rows_d<T, 64>(rows, n, head_dim, out);
    case 128: return l2_rows_d<T, 128>(rows, n, head_dim, out);
    default: return l2_rows_d<T, 0>(rows, n, head_dim, out);
  }
}

/// kernel_set::load_to_f32: n elements into kernel order with the kernels' own loads.
template <class T>
void load_to_f32(const T* src, index_t n, float* dst) {
  using G = group<T>;
  using vf = typename vt::vf;
  constexpr index_t C = G::kChannels, NV = G::kVecs, W = vt::kLanes;
  for (index_t pos = 0; pos < n; pos += C) {
    vf x[NV];
    if (n - pos >= C)
      G::load(src + pos, x);
    else
      G::load_partial(src + pos, n - pos, x);
    for (index_t k = 0; k < NV; ++k) vt::store(dst + pos + W * k, x[k]);
  }
}

#undef LAGKV_SIMD_PIN

#endif  // LAGKV_SIMD_X86_KERNELS_INL
