#pragma once
/// \file q8_0.hpp
/// \brief llama.cpp's q8_0 storage type (blocks of 32 int8 values sharing one fp16 scale), its
/// exact scalar quantise / dequantise reference, q8_view (a non-owning view of one KV head's rows
/// of q8_0 blocks, strided or paged like kv_view) and row compaction.
///
/// A q8_0 block holds 32 consecutive values of one row: value j is `to_float(d) * qs[j]`
/// (ggml's dequantize_row_q8_0). A KV row of head_dim values (head_dim a multiple of 32) is
/// head_dim/32 blocks, so a token's row is a whole number of blocks and a view addresses blocks,
/// never single values. llama.cpp's `--cache-type-k q8_0` K cache is token-major: one row of
/// H*D values per token, i.e. `[capacity, H, D/32]` blocks (view_q8_shd). A quantised V cache
/// in llama.cpp requires flash attention, which stores V token-major too: there is no
/// transposed (channel-major) q8_0 layout, so q8_view has no channel stride.
///
/// Scoring reads these views directly (simd/q8_0_dispatch.hpp); every dequantised value
/// `d * q` is exact in float (an 11-bit by 8-bit product), so "dequantise, then score in fp32"
/// is the precise reference of what the q8_0 scorers compute.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"

namespace lagkv {

/// Values per q8_0 block (ggml's QK8_0).
inline constexpr index_t kQ8BlockValues = 32;

/// \brief One q8_0 block, bit-compatible with ggml's `block_q8_0 { ggml_half d; int8_t qs[32]; }`.
struct block_q8_0 {
  f16 d;                                  ///< scale: value j is to_float(d) * qs[j]
  std::int8_t qs[kQ8BlockValues];         ///< quantised values
};
static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must match ggml's 34-byte layout");
static_assert(std::is_trivially_copyable_v<block_q8_0> && alignof(block_q8_0) == 2);

// ---- Reference conversions ---------------------------------------------------------------------

/// \brief Quantises one block of 32 floats exactly as ggml's quantize_row_q8_0_ref:
/// amax = max |x|, d = amax / 127 (float), stored as fp16 (round to nearest even), and
/// qs[j] = roundf(x[j] * id) with id = 1/d (the float d, not the fp16 one; 0 when d == 0);
/// roundf rounds halves away from zero.
/// Where ggml's reference is undefined (1/d overflows float: amax below ~1.5e-36, so the
/// stored fp16 d is 0 and every value dequantises to 0 anyway) this stores qs = 0.
/// \throws lagkv::error naming the index and value of a non-finite input.
inline block_q8_0 quantize_block_q8_0(const float* x) {
  float amax = 0.0f;
  for (index_t j = 0; j < kQ8BlockValues; ++j) {
    LAGKV_CHECK(std::isfinite(x[j]), "x[", j, "]=", x[j], ": q8_0 quantisation needs finite values");
    const float a = std::fabs(x[j]);
    amax = amax > a ? amax : a;  // ggml's MAX(amax, fabsf(v))
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  block_q8_0 b;
  b.d = to_f16(d);
  for (index_t j = 0; j < kQ8BlockValues; ++j) {
    const float x0 = x[j] * id;
    b.qs[j] = std::isfinite(x0) ? static_cast<std::int8_t>(std::round(x0)) : std::int8_t{0};
  }
  return b;
}

/// \brief Quantises `n` floats (a multiple of 32) into n/32 blocks (ggml's quantize_row_q8_0_ref).
/// \throws lagkv::error for n not a multiple of 32, or a non-finite input (nothing written then).
inline void quantize_q8_0(const float* x, index_t n, block_q8_0* out) {
  LAGKV_CHECK(n >= 0 && n % kQ8BlockValues == 0, "n=", n, ": must be a non-negative multiple of 32");
  for (index_t i = 0; i < n; ++i)
    LAGKV_CHECK(std::isfinite(x[i]), "x[", i, "]=", x[i], ": q8_0 quantisation needs finite values");
  for (index_t b = 0; b < n / kQ8BlockValues; ++b) out[b] = quantize_block_q8_0(x + b * kQ8BlockValues);
}

/// Quantises `n` values of storage type `T` (widened exactly to float first).
template <class T>
void quantize_q8_0(const T* x, index_t n, block_q8_0* out) {
  std::vector<float> f(static_cast<std::size_t>(n > 0 ? n : 0));
  for (index_t i = 0; i < n; ++i) f[static_cast<std::size_t>(i)] = to_float(x[i]);
  quantize_q8_0(f.data(), n, out);
}

/// Value `j` (0..31) of a block: to_float(d) * qs[j], exact in float.
inline float dequantize_value(const block_q8_0& b, index_t j) {
  return to_float(b.d) * static_cast<float>(b.qs[j]);
}

/// \brief Dequantises `n_blocks` blocks into 32 * n_blocks floats (ggml's dequantize_row_q8_0).
inline void dequantize_q8_0(const block_q8_0* blocks, index_t n_blocks, float* out) {
  for (index_t b = 0; b < n_blocks; ++b) {
    const float d = to_float(blocks[b].d);
    for (index_t j = 0; j < kQ8BlockValues; ++j) out[b * kQ8BlockValues + j] = d * static_cast<float>(blocks[b].qs[j]);
  }
}

/// True when a block's scale is Inf or NaN (its values dequantise to Inf/NaN, or NaN for q == 0).
inline bool q8_0_scale_nonfinite(const block_q8_0& b) { return (b.d.bits & 0x7c00u) == 0x7c00u; }

// ---- Views ------------------------------------------------------------------------------------------

/// Checks that `head_dim` is a whole number of q8_0 blocks.
inline void check_q8_0_head_dim(index_t head_dim) {
  LAGKV_CHECK(head_dim >= kQ8BlockValues && head_dim % kQ8BlockValues == 0, "head_dim=", head_dim,
              ": q8_0 rows need a positive multiple of 32");
}

/// \brief Non-owning view of one KV head's rows of q8_0 blocks: tokens x head_dim values, each
/// row head_dim/32 adjacent blocks. Row t starts at
///   strided: data + t*token_stride
///   paged:   data + block_table[(first+t) / page_size]*page_stride + ((first+t) % page_size)*token_stride
/// with strides in q8_0 blocks. (Paged memory's blocks of tokens are called pages here, to
/// keep "block" for q8_0 blocks.) `B` is block_q8_0 or const block_q8_0.
template <class B>
class q8_view {
 public:
  using element_type = B;
  static_assert(std::is_same_v<std::remove_const_t<B>, block_q8_0>, "q8_view<B>: B must be (const) block_q8_0");

  q8_view() = default;

  /// Strided view: row t at data + t*token_stride (blocks).
  /// \throws lagkv::error for tokens < 0, head_dim not a positive multiple of 32, a null data
  /// pointer with tokens > 0, or a token_stride shorter than a row.
  q8_view(B* data, index_t tokens, index_t head_dim, index_t token_stride)
      : data_(data), tokens_(tokens), head_dim_(head_dim), token_stride_(token_stride) {
    LAGKV_CHECK(tokens >= 0, "tokens=", tokens, ": must be >= 0");
    check_q8_0_head_dim(head_dim);
    LAGKV_CHECK(data != nullptr || tokens == 0, "data=nullptr with tokens=", tokens);
    LAGKV_CHECK(tokens <= 1 || token_stride >= head_dim / kQ8BlockValues, "token_stride=", token_stride,
                ": must be >= head_dim/32=", head_dim / kQ8BlockValues, " (rows may not overlap)");
  }

  /// Paged view: `data` is the head's first block in page 0 slot 0; `page_table[i]` is the page
  /// holding logical tokens [i*page_size, (i+1)*page_size); strides in blocks.
  static q8_view paged(B* data, const std::int32_t* page_table, index_t page_size, index_t page_stride,
                       index_t token_stride, index_t tokens, index_t head_dim) {
    LAGKV_CHECK(page_size >= 1, "page_size=", page_size, ": must be >= 1");
    LAGKV_CHECK(page_table != nullptr || tokens == 0, "page_table=nullptr with tokens=", tokens);
    q8_view v(data, tokens, head_dim, token_stride);
    v.table_ = page_table;
    v.page_size_ = page_size;
    v.page_stride_ = page_stride;
    return v;
  }

  template <class U, class = std::enable_if_t<std::is_same_v<const U, B> && !std::is_same_v<U, B>>>
  q8_view(const q8_view<U>& o)  // NOLINT(google-explicit-constructor): mutable -> const is safe
      : data_(o.data()), tokens_(o.tokens()), head_dim_(o.head_dim()), token_stride_(o.token_stride()),
        table_(o.page_table()), page_size_(o.page_size()), page_stride_(o.page_stride()), first_(o.first()) {}

  index_t tokens() const { return tokens_; }
  index_t head_dim() const { return head_dim_; }
  /// q8_0 blocks per row (head_dim / 32).
  index_t blocks_per_row() const { return head_dim_ / kQ8BlockValues; }
  /// Bytes of one row.
  index_t row_bytes() const { return blocks_per_row() * static_cast<index_t>(sizeof(block_q8_0)); }
  B* data() const { return data_; }
  index_t token_stride() const { return token_stride_; }
  bool is_paged() const { return table_ != nullptr; }
  const std::int32_t* page_table() const { return table_; }
  index_t page_size() const { return page_size_; }
  index_t page_stride() const { return page_stride_; }
  index_t first() const { return first_; }

  /// Offset in blocks of row t from data().
  index_t row_offset(index_t t) const {
    if (table_ == nullptr) return t * token_stride_;
    const index_t logical = first_ + t;
    return static_cast<index_t>(table_[logical / page_size_]) * page_stride_ + (logical % page_size_) * token_stride_;
  }
  /// The blocks_per_row() blocks of row t.
  B* row(index_t t) const { return data_ + row_offset(t); }
  /// Dequantised value (t, c).
  float value(index_t t, index_t c) const {
    return dequantize_value(row(t)[c / kQ8BlockValues], c % kQ8BlockValues);
  }

  /// Tokens [first, first + count).
  q8_view slice(index_t first, index_t count) const {
    LAGKV_CHECK(first >= 0 && count >= 0 && first + count <= tokens_, "slice [", first, ", ", first + count,
                ") out of range for tokens=", tokens_);
    q8_view v = *this;
    v.tokens_ = count;
    if (table_ == nullptr)
      v.data_ = count == 0 ? data_ : data_ + first * token_stride_;
    else
      v.first_ = first_ + first;
    return v;
  }

 private:
  B* data_ = nullptr;
  index_t tokens_ = 0;
  index_t head_dim_ = kQ8BlockValues;
  index_t token_stride_ = 0;                  // blocks between consecutive rows
  const std::int32_t* table_ = nullptr;       // [ceil((first+tokens)/page_size)] physical page ids
  index_t page_size_ = 0;                     // tokens per page
  index_t page_stride_ = 0;                   // blocks between pages
  index_t first_ = 0;                         // logical token offset (paged slices)
};

/// Read-only q8_0 view: what the scorers take.
using q8_0_view = q8_view<const block_q8_0>;

/// Contiguous `[H, capacity, D/32]` blocks; the first `tokens` rows of head `head`.
template <class B>
q8_view<B> view_q8_hsd(B* base, index_t heads, index_t capacity, index_t head_dim, index_t head, index_t tokens) {
  LAGKV_CHECK(heads >= 1 && head >= 0 && head < heads, "head=", head, ": out of range [0, heads=", heads, ")");
  LAGKV_CHECK(tokens >= 0 && tokens <= capacity, "tokens=", tokens, ": out of range [0, capacity=", capacity, "]");
  check_q8_0_head_dim(head_dim);
  const index_t nb = head_dim / kQ8BlockValues;
  return q8_view<B>(base + head * capacity * nb, tokens, head_dim, nb);
}

/// Token-major `[capacity, H, D/32]` blocks (llama.cpp's q8_0 K cache, and V with flash attention).
template <class B>
q8_view<B> view_q8_shd(B* base, index_t capacity, index_t heads, index_t head_dim, index_t head, index_t tokens) {
  LAGKV_CHECK(heads >= 1 && head >= 0 && head < heads, "head=", head, ": out of range [0, heads=", heads, ")");
  LAGKV_CHECK(tokens >= 0 && tokens <= capacity, "tokens=", tokens, ": out of range [0, capacity=", capacity, "]");
  check_q8_0_head_dim(head_dim);
  const index_t nb = head_dim / kQ8BlockValues;
  return q8_view<B>(base + head * nb, tokens, head_dim, heads * nb);
}

/// Paged `[num_pages, page_size, H, D/32]` blocks through `page_table` (vLLM-style layout).
template <class B>
q8_view<B> view_q8_paged(B* pool, const std::int32_t* page_table, index_t page_size, index_t heads, index_t head_dim,
                         index_t head, index_t tokens) {
  LAGKV_CHECK(heads >= 1 && head >= 0 && head < heads, "head=", head, ": out of range [0, heads=", heads, ")");
  check_q8_0_head_dim(head_dim);
  const index_t nb = head_dim / kQ8BlockValues;
  return q8_view<B>::paged(pool + head * nb, page_table, page_size, page_size * heads * nb, heads * nb, tokens,
                           head_dim);
}

/// \brief Dequantises every row of `v` into `out` ([tokens, head_dim] floats, row-major): the
/// "dequantise, then score" reference. Tests and fallbacks only; the scorers never call it on a
/// whole cache.
template <class B>
void dequantize_rows(const q8_view<B>& v, float* out) {
  for (index_t t = 0; t < v.tokens(); ++t) dequantize_q8_0(v.row(t), v.blocks_per_row(), out + t * v.head_dim());
}

// ---- Compaction (the q8_0 form of compact.hpp) -------------------------------------------------------

/// Copies row `src` onto row `dst` of the same view: whole blocks, bit for bit.
template <class B>
inline void copy_row(const q8_view<B>& v, index_t src, index_t dst) {
  static_assert(!std::is_const_v<B>, "copy_row needs a mutable view");
  if (src == dst) return;
  std::memmove(v.row(dst), v.row(src), static_cast<std::size_t>(v.row_bytes()));
}

/// \brief Moves rows kept[0..n) to rows dst, dst+1, ...; `kept` ascending, kept[i] >= dst + i.
/// In place, forward, no scratch (see compact.hpp). \throws lagkv::error (view unchanged) for
/// an index out of range, not ascending, or below its destination.
template <class B>
void compact_rows(const q8_view<B>& v, const index_t* kept, index_t n, index_t dst = 0) {
  for (index_t i = 0; i < n; ++i) {
    LAGKV_CHECK(kept[i] >= dst + i && kept[i] < v.tokens() && (i == 0 || kept[i] > kept[i - 1]), "kept[", i,
                "]=", kept[i], ": indices must be ascending, in range and not below their destination");
  }
  for (index_t i = 0; i < n; ++i) copy_row(v, kept[i], dst + i);
}

/// Moves rows [src, src + count) to [dst, dst + count), dst <= src.
template <class B>
void move_rows_down(const q8_view<B>& v, index_t src, index_t dst, index_t count) {
  LAGKV_CHECK(dst <= src && src >= 0 && count >= 0 && src + count <= v.tokens(), "move_rows_down: src=", src,
              " dst=", dst, " count=", count, " tokens=", v.tokens());
  for (index_t i = 0; i < count; ++i) copy_row(v, src + i, dst + i);
}

}  // namespace lagkv
