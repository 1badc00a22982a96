// Eviction on a llama.cpp q8_0 KV cache, read in place.
//
// One head's keys and values (head_dim 128, 2048 tokens) are quantised to q8_0 with llama.cpp's
// rule, laid out token-major like llama.cpp's cache. LagKV and L2-norm score the q8_0 rows
// directly (dequantised on the fly, no converted copy) and the kept sets are compared with
// scoring the same values dequantised to fp32 (what q8_0 must reproduce) and with scoring the
// original fp32 values before quantisation (what quantisation costs).
#include <lagkv/q8_0.hpp>
#include <lagkv/simd/dispatch.hpp>
#include <lagkv/simd/q8_0_dispatch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <random>
#include <vector>

namespace {

using lagkv::index_t;

constexpr index_t kTokens = 2048, kDim = 128, kHeads = 4, kHead = 1;

double overlap(const std::vector<index_t>& a, const std::vector<index_t>& b) {
  std::vector<index_t> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
  return a.empty() ? 1.0 : static_cast<double>(both.size()) / static_cast<double>(a.size());
}

void print_head(const char* label, const std::vector<index_t>& kept) {
  std::printf("  %-26s", label);
  for (std::size_t i = 0; i < 14 && i < kept.size(); ++i) std::printf(" %ld", static_cast<long>(kept[i]));
  std::printf(" ...\n");
}

std::vector<index_t> top(const std::vector<float>& scores, index_t keep) {
  return lagkv::select_top_k(scores.data(), static_cast<index_t>(scores.size()), keep);
}

}  // namespace

int main() {
  // Key-like data: per-channel offsets and scales, [tokens, heads, dim] (llama.cpp's row order).
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> off(kHeads * kDim), scale(kHeads * kDim);
  for (std::size_t c = 0; c < off.size(); ++c) {
    off[c] = 1.5f * nd(rng);
    scale[c] = std::exp(0.5f * nd(rng));
  }
  std::vector<float> k(static_cast<std::size_t>(kTokens * kHeads * kDim)), v(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = off[i % off.size()] + scale[i % off.size()] * nd(rng);
    v[i] = nd(rng);
  }
  std::vector<lagkv::block_q8_0> kq(k.size() / 32), vq(v.size() / 32);
  lagkv::quantize_q8_0(k.data(), static_cast<index_t>(k.size()), kq.data());
  lagkv::quantize_q8_0(v.data(), static_cast<index_t>(v.size()), vq.data());

  // The q8_0 views of head kHead, and fp32 views of the same head: original, and dequantised.
  const auto k8 = lagkv::view_q8_shd<const lagkv::block_q8_0>(kq.data(), kTokens, kHeads, kDim, kHead, kTokens);
  const auto v8 = lagkv::view_q8_shd<const lagkv::block_q8_0>(vq.data(), kTokens, kHeads, kDim, kHead, kTokens);
  std::vector<float> kd(static_cast<std::size_t>(kTokens * kDim)), vd(kd.size());
  lagkv::dequantize_rows(k8, kd.data());
  lagkv::dequantize_rows(v8, vd.data());
  const lagkv::kv_view<const float> kf = lagkv::view_shd<const float>(k.data(), kTokens, kHeads, kDim, kHead, kTokens);
  const lagkv::kv_view<const float> vf = lagkv::view_shd<const float>(v.data(), kTokens, kHeads, kDim, kHead, kTokens);
  const lagkv::kv_view<const float> kdv(kd.data(), kTokens, kDim, kDim), vdv(vd.data(), kTokens, kDim, kDim);

  std::printf("one head of %ld tokens x %ld, SIMD target %s\n", static_cast<long>(kTokens), static_cast<long>(kDim),
              lagkv::simd::target_name(lagkv::simd::active_target()));

  // ---- LagKV ------------------------------------------------------------------------------------
  lagkv::lagkv_params p;
  p.lag = 128;
  const auto on_q8 = lagkv::dispatch::lagkv_score_head(k8, v8, p);
  const auto on_deq = lagkv::lagkv_score_head<float>(kdv, vdv, p);  // the scalar oracle, double precision
  const auto on_f32 = lagkv::dispatch::lagkv_score_head<float>(kf, vf, p);
  std::printf("\nLagKV (sink %ld, lag %ld, ratio %.2f): %zu tokens kept in the scored region, cache %ld -> %ld\n",
              static_cast<long>(p.sink), static_cast<long>(p.lag), p.ratio, on_q8.kept.size(),
              static_cast<long>(kTokens), static_cast<long>(on_q8.cache_len));
  print_head("kept, q8_0 read in place:", on_q8.kept);
  print_head("kept, dequantised fp32:", on_deq.kept);
  print_head("kept, original fp32:", on_f32.kept);
  std::printf("  agreement with dequantise-then-score: %.2f %%   with the unquantised fp32 values: %.2f %%\n",
              100.0 * overlap(on_q8.kept, on_deq.kept), 100.0 * overlap(on_q8.kept, on_f32.kept));

  // ---- L2-norm (keep the lowest-norm half) -----------------------------------------------------------
  std::vector<float> s8(kTokens), sd(kTokens), sf(kTokens);
  lagkv::dispatch::l2norm_scores(k8, s8.data());
  lagkv::reference::l2norm_scores<float>(kdv, sd.data());
  lagkv::dispatch::l2norm_scores<float>(kf, sf.data());
  const auto l8 = top(s8, kTokens / 2), ld = top(sd, kTokens / 2), lf = top(sf, kTokens / 2);
  std::printf("\nL2-norm, keep %ld of %ld:\n", static_cast<long>(kTokens / 2), static_cast<long>(kTokens));
  print_head("kept, q8_0 read in place:", l8);
  print_head("kept, dequantised fp32:", ld);
  print_head("kept, original fp32:", lf);
  std::printf("  agreement with dequantise-then-score: %.2f %%   with the unquantised fp32 values: %.2f %%\n",
              100.0 * overlap(l8, ld), 100.0 * overlap(l8, lf));

  // ---- Memory ---------------------------------------------------------------------------------------
  const double fp16_bytes = static_cast<double>(k.size()) * 2.0 * 2.0;  // K and V
  const double q8_bytes = static_cast<double>(kq.size() + vq.size()) * sizeof(lagkv::block_q8_0);
  std::printf("\nK+V cache, %ld heads: fp16 %.2f MiB, q8_0 %.2f MiB: %.1f %% saved vs fp16", static_cast<long>(kHeads),
              fp16_bytes / (1 << 20), q8_bytes / (1 << 20), 100.0 * (1.0 - q8_bytes / fp16_bytes));
  const double after = static_cast<double>(on_q8.cache_len) / static_cast<double>(kTokens);
  std::printf("; with LagKV's eviction %.2f MiB (%.1f %% saved vs fp16 uncompressed)\n", q8_bytes * after / (1 << 20),
              100.0 * (1.0 - q8_bytes * after / fp16_bytes));
  return 0;
}
