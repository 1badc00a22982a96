// Eviction, then renumbering: what an engine does when it wants the kept keys at contiguous
// positions (llama.cpp's context shift) instead of passing sparse positions to attention.
//
// 1. An fp16 key cache of one layer, token-major [S, H, D] like llama.cpp, RoPE'd at 0..N-1.
// 2. Eviction with the L2-norm scorer (lowest-norm keys kept; one kept set for the layer: the
//    per-head scores are summed), plus 4 sinks and the 4 most recent tokens.
// 3. Compaction of every head and of the positions array; positions are now sparse.
// 4. rerotate_to_contiguous: the kept keys move to positions 0..kept-1, all heads in one call.
// 5. Check against rotating the original (unrotated) keys freshly at the new positions.
#include <lagkv/compact.hpp>
#include <lagkv/rope.hpp>
#include <lagkv/score/l2norm.hpp>
#include <lagkv/select.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using lagkv::f16;
using lagkv::index_t;

constexpr index_t kTokens = 32, kHeads = 2, kHeadDim = 64, kSink = 4, kRecent = 4, kKeepMiddle = 8;

void print_positions(const char* label, const std::vector<std::int32_t>& pos) {
  std::printf("%-28s", label);
  for (const std::int32_t p : pos) std::printf(" %d", p);
  std::printf("\n");
}

std::vector<lagkv::kv_view<f16>> head_views(std::vector<f16>& cache, index_t tokens) {
  std::vector<lagkv::kv_view<f16>> views;
  for (index_t h = 0; h < kHeads; ++h) views.push_back(lagkv::view_shd(cache.data(), kTokens, kHeads, kHeadDim, h, tokens));
  return views;
}

}  // namespace

int main() {
  lagkv::rope_params rope;  // Llama-style: NeoX pairs, base 10000, full rotary
  rope.style = lagkv::rope_style::neox;

  // 1. Unrotated keys (kept for the check), then the cache as an engine holds it: rotated.
  std::mt19937 gen(42);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<f16> raw(static_cast<std::size_t>(kTokens * kHeads * kHeadDim));
  for (auto& x : raw) x = lagkv::to_f16(dist(gen));
  std::vector<f16> cache = raw;
  std::vector<std::int32_t> positions(kTokens);
  for (index_t t = 0; t < kTokens; ++t) positions[static_cast<std::size_t>(t)] = static_cast<std::int32_t>(t);
  for (const auto& v : head_views(cache, kTokens)) lagkv::apply_rope(v, positions.data(), kTokens, rope);
  print_positions("positions before eviction:", positions);

  // 2. Score the middle tokens (rotation preserves norms, so rotated keys score like raw ones).
  const index_t middle = kTokens - kSink - kRecent;
  std::vector<float> layer_score(static_cast<std::size_t>(middle), 0.0f), head_score(layer_score.size());
  for (const auto& v : head_views(cache, kTokens)) {
    lagkv::reference::l2norm_scores<f16>(v.slice(kSink, middle), head_score.data());
    for (std::size_t i = 0; i < head_score.size(); ++i) layer_score[i] += head_score[i];
  }
  std::vector<index_t> kept;
  for (index_t t = 0; t < kSink; ++t) kept.push_back(t);
  for (const index_t i : lagkv::select_top_k(layer_score.data(), middle, kKeepMiddle)) kept.push_back(kSink + i);
  for (index_t t = kTokens - kRecent; t < kTokens; ++t) kept.push_back(t);
  const index_t n_kept = static_cast<index_t>(kept.size());

  // 3. Compact every head in place, and the positions with them.
  for (const auto& v : head_views(cache, kTokens)) lagkv::compact_rows(v, kept.data(), n_kept);
  std::vector<std::int32_t> kept_positions;
  for (const index_t k : kept) kept_positions.push_back(positions[static_cast<std::size_t>(k)]);
  positions = kept_positions;
  print_positions("positions after eviction:", positions);

  // 4. Renumber: one pass over the kept keys of all heads, positions rewritten to 0..n_kept-1.
  const auto views = head_views(cache, n_kept);
  lagkv::rerotate_to_contiguous(views.data(), kHeads, positions.data(), n_kept, rope);
  print_positions("positions after re-rotation:", positions);
  std::printf("next token goes to position %td; kernel: %s\n", n_kept, lagkv::rope_isa_name(lagkv::rope_active_isa()));

  // 5. Fresh rotation of the original keys at the new positions, and the difference.
  std::vector<f16> fresh(static_cast<std::size_t>(n_kept * kHeads * kHeadDim));
  for (index_t i = 0; i < n_kept; ++i)
    std::copy_n(raw.begin() + kept[static_cast<std::size_t>(i)] * kHeads * kHeadDim, kHeads * kHeadDim,
                fresh.begin() + i * kHeads * kHeadDim);
  for (index_t h = 0; h < kHeads; ++h)
    lagkv::apply_rope(lagkv::view_shd(fresh.data(), n_kept, kHeads, kHeadDim, h, n_kept), positions.data(), n_kept, rope);
  double max_abs = 0.0, max_rel = 0.0;  // rel: |error| / norm of the rotation pair, in fp16 ulps (2^-11)
  for (index_t h = 0; h < kHeads; ++h) {
    const auto got = views[static_cast<std::size_t>(h)];
    const auto want = lagkv::view_shd(fresh.data(), n_kept, kHeads, kHeadDim, h, n_kept);
    for (index_t t = 0; t < n_kept; ++t) {
      for (index_t c = 0; c < kHeadDim; ++c) {
        const index_t partner = c < kHeadDim / 2 ? c + kHeadDim / 2 : c - kHeadDim / 2;
        const double a = lagkv::to_float(want(t, c)), b = lagkv::to_float(want(t, partner));
        const double err = std::fabs(static_cast<double>(lagkv::to_float(got(t, c))) - a);
        max_abs = std::max(max_abs, err);
        max_rel = std::max(max_rel, err / std::sqrt(a * a + b * b) * 2048.0);
      }
    }
  }
  // Bound (tests/test_rope.cpp): 3 fp16 roundings of the pair norm plus fp32 arithmetic.
  const bool ok = max_rel <= 3.0 + 12.0 / 8192.0;
  std::printf("re-rotated vs fresh at new positions: max |error| %.3g, max error / pair norm %.2f x 2^-11 (bound 3): %s\n",
              max_abs, max_rel, ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
