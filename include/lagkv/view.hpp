#pragma once
/// \file view.hpp
/// \brief kv_view<T>: a non-owning, strided view of one (layer, KV head) sequence, and the
/// adapters that build it over the memory layouts inference engines use, without copying.
///
/// A view is tokens x head_dim. Element (t, c) lives at
///   strided: data + t*token_stride + c*channel_stride
///   paged:   data + block_table[(first+t) / block_size]*block_stride
///                 + ((first+t) % block_size)*token_stride + c*channel_stride
/// Strides are in elements and may be anything (transposed layouts have channel_stride != 1).
/// `T` may be const-qualified; kv_view<T> converts to kv_view<const T>.

#include <cstdint>
#include <type_traits>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"

namespace lagkv {

template <class T>
class kv_view {
 public:
  using element_type = T;
  using value_type = std::remove_const_t<T>;
  static_assert(is_storage_type_v<value_type>, "kv_view<T>: T must be float, lagkv::f16 or lagkv::bf16");

  kv_view() = default;

  /// Strided view: element (t, c) at data[t*token_stride + c*channel_stride].
  kv_view(T* data, index_t tokens, index_t head_dim, index_t token_stride, index_t channel_stride = 1)
      : data_(data), tokens_(tokens), head_dim_(head_dim), token_stride_(token_stride),
        channel_stride_(channel_stride) {
    LAGKV_CHECK(tokens >= 0, "tokens=", tokens, ": must be >= 0");
    LAGKV_CHECK(head_dim >= 1, "head_dim=", head_dim, ": must be >= 1");
    LAGKV_CHECK(data != nullptr || tokens == 0, "data=nullptr with tokens=", tokens);
  }

  /// Paged view. `data` points at element (block 0, slot 0, channel 0) of this head;
  /// `block_table[i]` is the physical block holding logical tokens [i*block_size, (i+1)*block_size).
  static kv_view paged(T* data, const std::int32_t* block_table, index_t block_size, index_t block_stride,
                       index_t token_stride, index_t channel_stride, index_t tokens, index_t head_dim) {
    LAGKV_CHECK(block_size >= 1, "block_size=", block_size, ": must be >= 1");
    LAGKV_CHECK(block_table != nullptr || tokens == 0, "block_table=nullptr with tokens=", tokens);
    kv_view v(data, tokens, head_dim, token_stride, channel_stride);
    v.block_table_ = block_table;
    v.block_size_ = block_size;
    v.block_stride_ = block_stride;
    return v;
  }

  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  kv_view(const kv_view<U>& other)  // NOLINT(google-explicit-constructor): T -> const T is safe
      : data_(other.data()), tokens_(other.tokens()), head_dim_(other.head_dim()),
        token_stride_(other.token_stride()), channel_stride_(other.channel_stride()),
        block_table_(other.block_table()), block_size_(other.block_size()),
        block_stride_(other.block_stride()), first_(other.first()) {}

  index_t tokens() const { return tokens_; }
  index_t head_dim() const { return head_dim_; }
  T* data() const { return data_; }
  index_t token_stride() const { return token_stride_; }
  index_t channel_stride() const { return channel_stride_; }
  bool is_paged() const { return block_table_ != nullptr; }
  const std::int32_t* block_table() const { return block_table_; }
  index_t block_size() const { return block_size_; }
  index_t block_stride() const { return block_stride_; }
  index_t first() const { return first_; }

  /// Offset in elements of token t's channel 0 from data().
  index_t row_offset(index_t t) const {
    if (block_table_ == nullptr) return t * token_stride_;
    const index_t logical = first_ + t;
    return static_cast<index_t>(block_table_[logical / block_size_]) * block_stride_ +
           (logical % block_size_) * token_stride_;
  }
  /// Pointer to channel 0 of token t; channel c is at row(t)[c * channel_stride()].
  T* row(index_t t) const { return data_ + row_offset(t); }
  T& operator()(index_t t, index_t c) const { return data_[row_offset(t) + c * channel_stride_]; }
  /// True when each token's channels are adjacent in memory (the fast paths' favourite case).
  bool rows_contiguous() const { return channel_stride_ == 1; }

  /// Tokens [first, first + count) of this view.
  kv_view slice(index_t first, index_t count) const {
    LAGKV_CHECK(first >= 0 && count >= 0 && first + count <= tokens_, "slice [", first, ", ", first + count,
                ") out of range for tokens=", tokens_);
    kv_view v = *this;
    v.tokens_ = count;
    if (block_table_ == nullptr)
      v.data_ = count == 0 ? data_ : data_ + first * token_stride_;
    else
      v.first_ = first_ + first;
    return v;
  }

 private:
  T* data_ = nullptr;
  index_t tokens_ = 0;
  index_t head_dim_ = 0;
  index_t token_stride_ = 0;
  index_t channel_stride_ = 1;
  const std::int32_t* block_table_ = nullptr;  // [ceil((first+tokens)/block_size)] physical block ids
  index_t block_size_ = 0;
  index_t block_stride_ = 0;
  index_t first_ = 0;  // logical token offset into the block table (paged slices only)
};

// ---- Layout adapters: each returns the view of KV head `head` without copying. -------------

namespace detail {
inline void check_head(index_t head, index_t heads) {
  LAGKV_CHECK(heads >= 1, "heads=", heads, ": must be >= 1");
  LAGKV_CHECK(head >= 0 && head < heads, "head=", head, ": out of range [0, ", heads, ")");
}
inline void check_tokens(index_t tokens, index_t capacity) {
  LAGKV_CHECK(tokens >= 0 && tokens <= capacity, "tokens=", tokens, ": out of range [0, capacity=", capacity, "]");
}
}  // namespace detail

/// Contiguous `[H, capacity, D]` (Hugging Face per batch entry); the first `tokens` slots are used.
template <class T>
kv_view<T> view_hsd(T* base, index_t heads, index_t capacity, index_t head_dim, index_t head, index_t tokens) {
  detail::check_head(head, heads);
  detail::check_tokens(tokens, capacity);
  return kv_view<T>(base + head * capacity * head_dim, tokens, head_dim, head_dim, 1);
}
/// Contiguous `[H, S, D]` with every slot used.
template <class T>
kv_view<T> view_hsd(T* base, index_t heads, index_t tokens, index_t head_dim, index_t head) {
  return view_hsd(base, heads, tokens, head_dim, head, tokens);
}

/// Token-major `[capacity, H, D]` (llama.cpp K cache: one row of H*D per token).
template <class T>
kv_view<T> view_shd(T* base, index_t capacity, index_t heads, index_t head_dim, index_t head, index_t tokens) {
  detail::check_head(head, heads);
  detail::check_tokens(tokens, capacity);
  return kv_view<T>(base + head * head_dim, tokens, head_dim, heads * head_dim, 1);
}

/// Channel-major (transposed) V: `[H, D, capacity]`, i.e. token t of channel (h, d) at
/// base[(h*D + d)*capacity + t] (llama.cpp V cache without flash attention).
template <class T>
kv_view<T> view_hds(T* base, index_t heads, index_t head_dim, index_t capacity, index_t head, index_t tokens) {
  detail::check_head(head, heads);
  detail::check_tokens(tokens, capacity);
  return kv_view<T>(base + head * head_dim * capacity, tokens, head_dim, 1, capacity);
}

/// Paged `[num_blocks, block_size, H, D]` addressed through `block_table` (vLLM).
template <class T>
kv_view<T> view_paged(T* pool, const std::int32_t* block_table, index_t block_size, index_t heads,
                      index_t head_dim, index_t head, index_t tokens) {
  detail::check_head(head, heads);
  return kv_view<T>::paged(pool + head * head_dim, block_table, block_size, block_size * heads * head_dim,
                           heads * head_dim, 1, tokens, head_dim);
}

}  // namespace lagkv
