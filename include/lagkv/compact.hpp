#pragma once
/// \file compact.hpp
/// \brief The "compact" step: move kept rows down in place, preserving their order.
///
/// Given kept token indices in ascending order, row kept[i] moves to row dst + i. Because
/// kept[i] >= dst + i, a forward pass never overwrites a row it still has to read, so no
/// scratch memory is needed at all — no full-cache copy, ever.

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "lagkv/error.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// Copies token row `src` onto row `dst` of the same view (both rows distinct or equal).
template <class T>
inline void copy_row(const kv_view<T>& v, index_t src, index_t dst) {
  static_assert(!std::is_const_v<T>, "copy_row needs a mutable view");
  if (src == dst) return;
  T* from = v.row(src);
  T* to = v.row(dst);
  if (v.rows_contiguous()) {
    std::memmove(to, from, static_cast<std::size_t>(v.head_dim()) * sizeof(T));
  } else {
    const index_t cs = v.channel_stride();
    for (index_t c = 0; c < v.head_dim(); ++c) to[c * cs] = from[c * cs];
  }
}

namespace detail {
/// Asks for the cache lines of `bytes` bytes at `p` ahead of use (read, or write: for ownership).
inline void prefetch_bytes(const void* p, std::size_t bytes, bool for_write) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = static_cast<const char*>(p);
  for (std::size_t b = 0; b < bytes; b += 64) {
    if (for_write)
      __builtin_prefetch(c + b, 1, 3);
    else
      __builtin_prefetch(c + b, 0, 3);
  }
#else
  (void)p, (void)bytes, (void)for_write;
#endif
}
}  // namespace detail

/// \brief Moves rows kept[0..n) to rows dst, dst+1, ...; `kept` ascending, kept[i] >= dst + i.
/// \throws lagkv::error (before anything moves) when `kept` is not ascending, leaves the view or
/// lies below its destination.
template <class T>
void compact_rows(const kv_view<T>& v, const index_t* kept, index_t n, index_t dst = 0) {
  for (index_t i = 0; i < n; ++i) {
    LAGKV_CHECK(kept[i] >= dst + i && kept[i] < v.tokens() && (i == 0 || kept[i] > kept[i - 1]), "kept[", i,
                "]=", kept[i], ": indices must be ascending, in range and not below their destination");
  }
  if (!v.rows_contiguous() || v.is_paged()) {
    for (index_t i = 0; i < n; ++i) copy_row(v, kept[i], dst + i);
    return;
  }
  // Contiguous rows at a fixed stride (every unpaged layout but the transposed one): no per-row
  // view arithmetic, and both ends prefetched kAhead rows early. The kept rows are scattered
  // (LagKV keeps about half of each chunk), so the hardware prefetcher alone keeps few misses in
  // flight, and every destination line is read for ownership before it is written.
  constexpr index_t kAhead = 8;
  T* const base = v.data();
  const index_t stride = v.token_stride();
  const std::size_t row_bytes = static_cast<std::size_t>(v.head_dim()) * sizeof(T);
  for (index_t i = 0; i < n; ++i) {
    if (i + kAhead < n) {
      detail::prefetch_bytes(base + kept[i + kAhead] * stride, row_bytes, false);
      detail::prefetch_bytes(base + (dst + i + kAhead) * stride, row_bytes, true);
    }
    if (kept[i] != dst + i) std::memmove(base + (dst + i) * stride, base + kept[i] * stride, row_bytes);
  }
}

/// Moves rows [src, src + count) to [dst, dst + count), dst <= src (the untouched tail).
template <class T>
void move_rows_down(const kv_view<T>& v, index_t src, index_t dst, index_t count) {
  LAGKV_CHECK(dst <= src && src + count <= v.tokens(), "move_rows_down: src=", src, " dst=", dst, " count=", count,
              " tokens=", v.tokens());
  for (index_t i = 0; i < count; ++i) copy_row(v, src + i, dst + i);
}

}  // namespace lagkv
