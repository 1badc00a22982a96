#pragma once
// One KV head's rows inside several heads' memory, in every layout the view adapters read
// (view_layout, head_memory). A cache's engine memory: support/cache_layouts.hpp.
#include <lagkv/view.hpp>

#include <cstdint>
#include <functional>
#include <vector>

namespace lagkv_test {

/// Where one KV head's rows live.
enum class view_layout {
  hsd,              ///< [heads, capacity, head_dim] (view_hsd): rows contiguous
  shd,              ///< [capacity, heads, head_dim], token-major (view_shd): rows heads*head_dim apart
  hds,              ///< [heads, head_dim, capacity], transposed (view_hds): channels capacity apart
  paged,            ///< [blocks, block_size, heads, head_dim] through an out-of-order block table
  paged_unaligned,  ///< paged, the pool one element past an aligned address
  unaligned,        ///< the head's rows alone, one element past an aligned address
};

inline const char* layout_name(view_layout l) {
  switch (l) {
    case view_layout::hsd: return "hsd";
    case view_layout::shd: return "shd";
    case view_layout::hds: return "hds";
    case view_layout::paged: return "paged";
    case view_layout::paged_unaligned: return "paged_unaligned";
    case view_layout::unaligned: return "unaligned";
  }
  return "?";
}

/// Head `head` of `heads`, so the other heads' data is there to leak in.
struct head_shape {
  lagkv::index_t heads = 3, head = 1;
  lagkv::index_t capacity = 0, tokens = 0, head_dim = 0;
  lagkv::index_t block_size = 7;  ///< paged: prime, so blocks straddle every interesting boundary
  lagkv::index_t row_pad = 0;     ///< unaligned: elements between one row's end and the next row
};

/// Memory in a view_layout, every element `fill(i)` (i its index in `mem`), and `view`: head
/// s.head's first s.tokens tokens. Paged blocks come in reverse order with an unused block
/// between and around them. Movable (the view keeps pointing into the moved buffers), not copyable.
template <class T>
struct head_memory {
  std::vector<T> mem;
  std::vector<std::int32_t> table;
  lagkv::kv_view<T> view;

  head_memory(view_layout l, const head_shape& s, const std::function<T(std::size_t)>& fill) {
    using lagkv::index_t;
    const index_t cells = s.heads * s.capacity * s.head_dim;
    switch (l) {
      case view_layout::hsd:
        allocate(cells, fill);
        view = lagkv::view_hsd(mem.data(), s.heads, s.capacity, s.head_dim, s.head, s.tokens);
        break;
      case view_layout::shd:
        allocate(cells, fill);
        view = lagkv::view_shd(mem.data(), s.capacity, s.heads, s.head_dim, s.head, s.tokens);
        break;
      case view_layout::hds:
        allocate(cells, fill);
        view = lagkv::view_hds(mem.data(), s.heads, s.head_dim, s.capacity, s.head, s.tokens);
        break;
      case view_layout::paged:
      case view_layout::paged_unaligned: {
        const index_t blocks = (s.capacity + s.block_size - 1) / s.block_size, pool_blocks = 2 * blocks + 1;
        const index_t shift = l == view_layout::paged_unaligned ? 1 : 0;
        for (index_t b = 0; b < blocks; ++b) table.push_back(static_cast<std::int32_t>(2 * (blocks - 1 - b) + 1));
        allocate(pool_blocks * s.block_size * s.heads * s.head_dim + shift, fill);
        view = lagkv::view_paged(mem.data() + shift, table.data(), s.block_size, s.heads, s.head_dim, s.head, s.tokens);
        break;
      }
      case view_layout::unaligned: {
        const index_t stride = s.head_dim + s.row_pad;
        allocate(1 + s.capacity * stride, fill);
        view = lagkv::kv_view<T>(mem.data() + 1, s.tokens, s.head_dim, stride);
        break;
      }
    }
  }
  head_memory(head_memory&&) = default;
  head_memory& operator=(head_memory&&) = default;
  head_memory(const head_memory&) = delete;
  head_memory& operator=(const head_memory&) = delete;

 private:
  void allocate(lagkv::index_t n, const std::function<T(std::size_t)>& fill) {
    mem.resize(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < mem.size(); ++i) mem[i] = fill(i);
  }
};

}  // namespace lagkv_test
