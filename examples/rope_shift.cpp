// Eviction, then renumbering: what an engine does when it wants the kept keys at contiguous
// positions (llama.cpp's context shift) instead of passing sparse positions to attention.
//
// 1. A kv_cache (fp16, token-major [S, H, D] like llama.cpp's K cache) receives keys the engine
//    RoPE'd at positions 0..N-1.
// 2. The L2-norm policy evicts: 4 sinks, the 4 most recent tokens and the 8 lowest-norm others
//    are kept, per head; positions are now sparse.
// 3. kv_cache::rerotate_to_contiguous moves every head's kept keys to positions 0..kept-1 and
//    renumbers them; the next token continues at next_position().
// 4. Check against rotating the original (unrotated) keys freshly at the new positions.
#include <lagkv/cache.hpp>
#include <lagkv/policy/l2norm.hpp>
#include <lagkv/rope.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using lagkv::f16;
using lagkv::index_t;

constexpr index_t kTokens = 32, kHeads = 2, kHeadDim = 64;

void print_positions(const char* label, const lagkv::index_span& pos) {
  std::printf("%-30s", label);
  for (const index_t p : pos) std::printf(" %td", p);
  std::printf("\n");
}

}  // namespace

int main() {
  lagkv::rope_params rope;  // Llama-style: NeoX pairs, base 10000, full rotary
  rope.style = lagkv::rope_style::neox;

  // 1. Unrotated keys (kept for the check), then what the engine appends: keys rotated at 0..N-1.
  std::mt19937 gen(42);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<f16> raw(static_cast<std::size_t>(kTokens * kHeads * kHeadDim)), v(raw.size());
  for (auto& x : raw) x = lagkv::to_f16(dist(gen));
  for (auto& x : v) x = lagkv::to_f16(dist(gen));
  std::vector<f16> rotated = raw;
  std::vector<index_t> positions(kTokens);
  for (index_t t = 0; t < kTokens; ++t) positions[static_cast<std::size_t>(t)] = t;
  for (index_t h = 0; h < kHeads; ++h)
    lagkv::apply_rope(lagkv::view_shd(rotated.data(), kTokens, kHeads, kHeadDim, h, kTokens), positions.data(), kTokens,
                      rope);

  // 2. The cache evicts on append (rotation preserves norms, so rotated keys score like raw ones).
  std::vector<f16> k_mem(raw.size()), v_mem(raw.size());
  const lagkv::layer_memory<f16> mem{k_mem.data(), v_mem.data(), lagkv::kv_layout::shd(), lagkv::kv_layout::shd()};
  lagkv::cache_config cfg;
  cfg.kv_heads = kHeads;
  cfg.head_dim = kHeadDim;
  cfg.capacity = kTokens;
  lagkv::l2norm_params lp;
  lp.sink = 4;
  lp.window = 4;
  lp.budget = 16;
  lagkv::kv_cache<f16, lagkv::l2norm_policy> cache(cfg, {mem}, lagkv::l2norm_policy(lp));
  const lagkv::kv_input<f16> k_in{rotated.data(), kTokens, lagkv::kv_layout::shd()}, v_in{v.data(), kTokens, lagkv::kv_layout::shd()};
  cache.append(0, k_in, v_in);
  std::vector<std::vector<index_t>> original;
  for (index_t h = 0; h < kHeads; ++h) {
    original.push_back(cache.positions(0, h).to_vector());
    print_positions(h == 0 ? "head 0 positions after eviction:" : "head 1 positions after eviction:", cache.positions(0, h));
  }

  // 3. Renumber: every head's kept keys re-rotated to 0..kept-1, positions rewritten.
  cache.rerotate_to_contiguous(0, rope);
  print_positions("head 0 after re-rotation:", cache.positions(0, 0));
  std::printf("next token goes to position %td (tokens seen: %td); kernel: %s\n", cache.next_position(0),
              cache.tokens_seen(0), lagkv::rope_isa_name(lagkv::rope_active_isa()));

  // 4. Fresh rotation of the original keys at the new positions, and the difference.
  double max_abs = 0.0, max_rel = 0.0;  // rel: |error| / norm of the rotation pair, in fp16 ulps (2^-11)
  for (index_t h = 0; h < kHeads; ++h) {
    const auto got = cache.keys(0, h);
    for (index_t i = 0; i < got.tokens(); ++i) {
      const index_t p = original[static_cast<std::size_t>(h)][static_cast<std::size_t>(i)];
      std::vector<f16> want(raw.begin() + (p * kHeads + h) * kHeadDim, raw.begin() + (p * kHeads + h + 1) * kHeadDim);
      lagkv::apply_rope(lagkv::kv_view<f16>(want.data(), 1, kHeadDim, kHeadDim), &i, 1, rope);
      for (index_t c = 0; c < kHeadDim; ++c) {
        const index_t partner = c < kHeadDim / 2 ? c + kHeadDim / 2 : c - kHeadDim / 2;
        const double a = lagkv::to_float(want[static_cast<std::size_t>(c)]);
        const double b = lagkv::to_float(want[static_cast<std::size_t>(partner)]);
        const double err = std::fabs(static_cast<double>(lagkv::to_float(got(i, c))) - a);
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
