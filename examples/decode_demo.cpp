// lagkv-demo: a decode loop over a synthetic model, showing what an engine does with kv_cache:
// prefill, one token per decode step, compression events, the cache size over time, and how
// attention reads the kept K/V (views) and their original positions back.
//
// The "model" emits keys/values that are smooth noise, except every 23rd token which carries a
// sharp, distinctive pattern (an "important" token). LagKV (layer 0) should keep those;
// StreamingLLM (layer 1) keeps only the first and the most recent tokens.
#include <lagkv/cache.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

constexpr lagkv::index_t kHeads = 4, kDim = 64, kPrefill = 256, kDecode = 512, kEvery = 23;

bool important(lagkv::index_t pos) { return pos % kEvery == 7; }

// K and V rows of token `pos` for all heads, [H, 1, D], in fp16.
void synth_token(lagkv::index_t pos, std::mt19937& rng, std::vector<lagkv::f16>& k, std::vector<lagkv::f16>& v,
                 lagkv::index_t offset) {
  std::normal_distribution<float> noise(0.0f, 0.05f);
  for (lagkv::index_t h = 0; h < kHeads; ++h)
    for (lagkv::index_t c = 0; c < kDim; ++c) {
      const float base = std::sin(0.01f * static_cast<float>(pos) + 0.3f * static_cast<float>(c + h));
      const float spike = important(pos) ? ((c % 2) ? 2.0f : -2.0f) : 0.0f;
      k[static_cast<std::size_t>(offset + h * kDim + c)] = lagkv::to_f16(base + spike + noise(rng));
      v[static_cast<std::size_t>(offset + h * kDim + c)] = lagkv::to_f16(0.5f * base - spike + noise(rng));
    }
}

}  // namespace

int main() {
  lagkv::cache_config cfg;
  cfg.layers = 2;
  cfg.kv_heads = kHeads;
  cfg.head_dim = kDim;
  cfg.capacity = 1024;  // peak: LagKV holds < sink + kept + 2*lag + 1 slots; StreamingLLM sink + window + 1
  lagkv::lagkv_params lp;
  lp.sink = 4;
  lp.lag = 32;
  lp.ratio = 0.25;
  lagkv::streaming_params sp;
  sp.sink = 4;
  sp.window = 124;
  sp.interval = 16;  // evict every 16 decode steps: the window moves once per 16 tokens
  lagkv::kv_cache<lagkv::f16> cache(cfg, lagkv::lagkv_policy(lp));  // any_policy: chosen per layer
  cache.set_policy(1, lagkv::streaming_policy(sp));

  std::vector<lagkv::index_t> events(2, 0), evicted(2, 0);
  cache.set_observer([&](const lagkv::compress_event& e) {
    if (e.head != 0) return;  // every head compresses together here; count once per layer
    ++events[static_cast<std::size_t>(e.layer)];
    evicted[static_cast<std::size_t>(e.layer)] += e.length_before - e.length_after;
  });

  std::printf("lagkv demo: 2 layers x %td KV heads x head_dim %td, fp16, capacity %td slots\n", kHeads, kDim,
              cfg.capacity);
  std::printf("  layer 0: LagKV (sink %td, lag %td, ratio %.2f)\n", lp.sink, lp.lag, lp.ratio);
  std::printf("  layer 1: StreamingLLM (sink %td, window %td, every %td steps)\n", sp.sink, sp.window, sp.interval);

  std::mt19937 rng(2024);
  // Prefill: the engine hands [H, S, D] per layer.
  std::vector<lagkv::f16> k(static_cast<std::size_t>(kHeads * kPrefill * kDim)), v(k.size());
  std::vector<lagkv::f16> kt(static_cast<std::size_t>(kHeads * kDim)), vt(kt.size());
  for (lagkv::index_t t = 0; t < kPrefill; ++t) {
    synth_token(t, rng, kt, vt, 0);
    for (lagkv::index_t h = 0; h < kHeads; ++h)
      for (lagkv::index_t c = 0; c < kDim; ++c) {
        k[static_cast<std::size_t>((h * kPrefill + t) * kDim + c)] = kt[static_cast<std::size_t>(h * kDim + c)];
        v[static_cast<std::size_t>((h * kPrefill + t) * kDim + c)] = vt[static_cast<std::size_t>(h * kDim + c)];
      }
  }
  for (lagkv::index_t l = 0; l < cfg.layers; ++l) cache.append(l, k.data(), v.data(), kPrefill);
  std::printf("prefill %td tokens -> cache length L0=%td L1=%td (%td + %td compressions)\n", kPrefill,
              cache.max_length(0), cache.max_length(1), events[0], events[1]);

  std::printf("decode: step  tokens  L0 len  L1 len  compressions L0/L1\n");
  for (lagkv::index_t step = 1; step <= kDecode; ++step) {
    synth_token(kPrefill + step - 1, rng, kt, vt, 0);
    for (lagkv::index_t l = 0; l < cfg.layers; ++l) cache.append(l, kt.data(), vt.data(), 1);  // [H, 1, D]
    if (step % 64 == 0)
      std::printf("        %4td  %6td  %6td  %6td  %6td/%td\n", step, cache.tokens_seen(0), cache.max_length(0),
                  cache.max_length(1), events[0], events[1]);
  }
  std::printf("evicted in total: L0 %td, L1 %td of %td tokens per head\n", evicted[0], evicted[1],
              cache.tokens_seen(0));

  // Reading back: attention of a fresh query over each layer's kept K/V, through views.
  std::vector<float> q(static_cast<std::size_t>(kDim));
  for (lagkv::index_t c = 0; c < kDim; ++c) q[static_cast<std::size_t>(c)] = (c % 2) ? 1.0f : -1.0f;
  for (lagkv::index_t l = 0; l < cfg.layers; ++l) {
    const auto keys = cache.keys(l, 0);      // kv_view<const f16>: length x head_dim
    const auto values = cache.values(l, 0);  // same slots, same order
    const auto pos = cache.positions(l, 0);  // original token index of each slot (for RoPE/masks)
    std::vector<double> w(static_cast<std::size_t>(keys.tokens()));
    double mx = -INFINITY, sum = 0.0, top = 0.0;
    for (lagkv::index_t s = 0; s < keys.tokens(); ++s) {
      double dot = 0.0;
      for (lagkv::index_t c = 0; c < kDim; ++c) dot += q[static_cast<std::size_t>(c)] * lagkv::to_float(keys(s, c));
      w[static_cast<std::size_t>(s)] = dot / std::sqrt(double(kDim));
      mx = std::fmax(mx, w[static_cast<std::size_t>(s)]);
    }
    for (double& x : w) sum += (x = std::exp(x - mx));
    double out0 = 0.0;
    lagkv::index_t kept_important = 0, total_important = 0;
    for (lagkv::index_t s = 0; s < keys.tokens(); ++s) {
      out0 += w[static_cast<std::size_t>(s)] / sum * lagkv::to_float(values(s, 0));
      if (important(pos[s])) {
        ++kept_important;
        top += w[static_cast<std::size_t>(s)] / sum;
      }
    }
    for (lagkv::index_t p = 0; p < cache.tokens_seen(l); ++p) total_important += important(p) ? 1 : 0;
    std::printf("layer %td head 0: %td slots, positions %td %td %td ... %td; important tokens kept %td/%td\n", l,
                keys.tokens(), pos[0], pos[1], pos[2], pos[pos.size() - 1], kept_important, total_important);
    std::printf("  a query matching the important pattern puts %.1f%% of its attention on them; out[0]=%+.4f\n",
                100.0 * top, out0);
  }
  return 0;
}
