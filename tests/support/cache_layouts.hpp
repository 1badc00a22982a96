#pragma once
// A kv_cache's engine-owned memory in every layout an engine uses (cache_layout, engine_memory).
// One head's view in a layout: support/layouts.hpp.
#include <lagkv/cache.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

namespace lagkv_test {

/// How an engine lays out K and V for kv_cache (owned: the cache allocates its own).
enum class cache_layout { owned, hsd, shd, hds, llama, paged };

inline const char* layout_name(cache_layout l) {
  switch (l) {
    case cache_layout::owned: return "owned";
    case cache_layout::hsd: return "hsd";
    case cache_layout::shd: return "shd";
    case cache_layout::hds: return "hds";
    case cache_layout::llama: return "shdK_hdsV";  // llama.cpp: token-major K, transposed V
    case cache_layout::paged: return "paged";
  }
  return "?";
}

/// The buffers an engine would own for L layers of H heads x C slots x D, filled with a byte
/// pattern so nothing relies on zeroed memory; `layers` is what kv_cache(config, memory) takes
/// (empty for owned). Paged: one shuffled block table shared by K, V and every layer.
template <class T>
struct engine_memory {
  std::vector<T> k, v;
  std::vector<std::int32_t> table;
  std::vector<lagkv::layer_memory<T>> layers;

  engine_memory(cache_layout id, lagkv::index_t L, lagkv::index_t H, lagkv::index_t C, lagkv::index_t D,
                lagkv::index_t block_size = 7) {
    using lagkv::index_t;
    if (id == cache_layout::owned) return;
    index_t per_layer = H * C * D;
    lagkv::kv_layout kl = lagkv::kv_layout::hsd(), vl = lagkv::kv_layout::hsd();
    if (id == cache_layout::shd) kl = vl = lagkv::kv_layout::shd();
    if (id == cache_layout::llama) kl = lagkv::kv_layout::shd(), vl = lagkv::kv_layout::hds();
    if (id == cache_layout::hds) kl = vl = lagkv::kv_layout::hds();
    if (id == cache_layout::paged) {
      const index_t blocks = (C + block_size - 1) / block_size, pool_blocks = blocks + 3;
      std::vector<std::int32_t> ids(static_cast<std::size_t>(pool_blocks));
      std::iota(ids.begin(), ids.end(), 0);
      std::shuffle(ids.begin(), ids.end(), std::mt19937(17));
      table.assign(ids.begin(), ids.begin() + blocks);
      per_layer = pool_blocks * block_size * H * D;
      kl = vl = lagkv::kv_layout::paged(table.data(), block_size);
    }
    k.resize(static_cast<std::size_t>(per_layer * L));
    v.resize(k.size());
    std::memset(static_cast<void*>(k.data()), 0x5a, k.size() * sizeof(T));
    std::memset(static_cast<void*>(v.data()), 0xa5, v.size() * sizeof(T));
    for (index_t l = 0; l < L; ++l) layers.push_back({k.data() + l * per_layer, v.data() + l * per_layer, kl, vl});
  }
  engine_memory(const engine_memory&) = delete;  // layers point into k, v and table
  engine_memory& operator=(const engine_memory&) = delete;
};

}  // namespace lagkv_test
