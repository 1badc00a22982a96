#pragma once
/// \file paged.hpp
/// \brief Paged KV memory that frees whole blocks: paged_layer<T, Policy> keeps one layer of one
/// sequence in an engine's block pool ([num_blocks, block_size, H, D] for K and for V, vLLM /
/// OpenVINO style, addressed through the sequence's block table) and, when its policy evicts,
/// packs the kept tokens into the first ceil(kept / block_size) blocks of the table and hands
/// the other block ids back to the engine.
///
/// Why a separate mode: in such a pool a block holds one token slot for *every* KV head of the
/// layer, so evicting different tokens per head (what kv_cache does) frees no block at all. Here
/// the heads of a layer share one length: each chunk the policy plans is scored per head (the
/// policy's own scorer: LagKV, L2-norm, ... through lagkv::dispatch), the per-head scores are
/// aggregated into one score per token (head_aggregation::sum, the default, or ::max), one kept
/// set is selected for the layer (select_top_k, per chunk), and each kept token's whole row
/// (all heads, K and V) moves down in place, in order. Original positions move with the rows.
///
/// Data path: plan (policy) -> score per head (policy) -> aggregate -> select -> compact rows ->
/// release blocks. Compaction needs no K/V scratch: token t's row moves to slot j <= t, a
/// forward pass never overwrites a row it still has to read (block ids are checked distinct).
///
/// "Freed" means: after a compression holding `n` tokens, table entries
/// [ceil(n / block_size), count) are no longer referenced by this layer; their ids are reported
/// (the release callback and paged_result::freed, in table order), the entries are overwritten
/// with kNoBlock and `count` becomes ceil(n / block_size). The engine returns the ids to its
/// allocator (for a table shared by several layers, see paged_config::release_blocks).
///
/// \note Thread safety: a paged_layer is one (sequence, layer); different objects may be used
/// concurrently (they may share pools: they touch only the blocks of their own tables). Calls on
/// one object must not overlap, and views returned by keys()/values() are invalidated by the
/// next append/commit/compress.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/policy/any.hpp"
#include "lagkv/policy/policy.hpp"
#include "lagkv/select.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// \brief How a layer turns per-head scores into one score per token (the uniform per-layer budget).
enum class head_aggregation : std::uint8_t {
  sum,  ///< sum over heads (= mean): a token is kept for its overall importance. A NaN in any head makes it NaN.
  max   ///< max over heads: a token is kept if any head needs it. A NaN in any head makes it NaN.
};

/// Written into block-table entries that a compression released.
inline constexpr std::int32_t kNoBlock = -1;

/// \brief The engine's block table of a sequence: ids[i] is the physical block holding logical
/// tokens [i*block_size, (i+1)*block_size). Engine-owned; lagkv reads entries [0, count), packs
/// kept tokens into the first ones and, when it releases blocks, lowers `count` and writes
/// kNoBlock into the released entries.
struct block_table {
  std::int32_t* ids = nullptr;
  index_t count = 0;  ///< entries in use
};

/// Blocks needed for `tokens` tokens: ceil(tokens / block_size).
inline index_t blocks_for(index_t tokens, index_t block_size) { return (tokens + block_size - 1) / block_size; }

/// \brief Releases the entries of `table` beyond the blocks `tokens` tokens need: their ids are
/// appended to `freed` (table order), the entries become kNoBlock, count = blocks_for(tokens).
/// For a table shared by several layers (vLLM), call it once after compressing every layer, with
/// `tokens` = the longest layer. Returns how many ids were released.
/// \throws lagkv::error for block_size < 1 or tokens outside [0, count * block_size].
inline index_t release_unused_blocks(block_table& table, index_t tokens, index_t block_size,
                                     std::vector<std::int32_t>& freed) {
  LAGKV_CHECK(block_size >= 1, "block_size=", block_size, ": must be >= 1");
  LAGKV_CHECK(tokens >= 0 && tokens <= table.count * block_size, "tokens=", tokens,
              ": out of range [0, count*block_size=", table.count * block_size, "]");
  const index_t keep = blocks_for(tokens, block_size);
  const index_t n = table.count - keep;
  freed.reserve(freed.size() + static_cast<std::size_t>(n));
  for (index_t i = keep; i < table.count; ++i) {
    freed.push_back(table.ids[i]);
    table.ids[i] = kNoBlock;
  }
  table.count = keep;
  return n;
}

/// \brief Shape and behaviour of a paged layer.
struct paged_config {
  index_t num_blocks = 0;   ///< physical blocks in each pool: valid ids are [0, num_blocks)
  index_t block_size = 16;  ///< tokens per block
  index_t kv_heads = 1;
  index_t head_dim = 128;
  index_t max_tokens = 0;   ///< most tokens the sequence holds at once (scratch is reserved for it)
  index_t layer = 0;        ///< layer index handed to the policy (skip_layers)
  head_aggregation aggregate = head_aggregation::sum;
  bool auto_compress = true;   ///< append()/commit() run the policy's schedule
  /// true: the table belongs to this layer alone (OpenVINO GenAI keeps one per layer) and each
  /// compression releases the blocks it emptied. false: the table is shared by all layers of the
  /// sequence (vLLM); compressions only pack, and the engine calls release_unused_blocks once
  /// per step with the longest layer's length.
  bool release_blocks = true;

  /// \throws lagkv::error naming the first invalid field and its value.
  void validate() const {
    LAGKV_CHECK(num_blocks >= 1 && num_blocks <= std::numeric_limits<std::int32_t>::max(), "num_blocks=", num_blocks,
                ": must be in [1, 2^31)");
    LAGKV_CHECK(block_size >= 1, "block_size=", block_size, ": must be >= 1");
    LAGKV_CHECK(kv_heads >= 1, "kv_heads=", kv_heads, ": must be >= 1");
    LAGKV_CHECK(head_dim >= 1, "head_dim=", head_dim, ": must be >= 1");
    LAGKV_CHECK(max_tokens >= 1, "max_tokens=", max_tokens, ": must be >= 1");
    LAGKV_CHECK(layer >= 0, "layer=", layer, ": must be >= 0");
    const index_t limit = std::numeric_limits<index_t>::max() / 8;
    LAGKV_CHECK(num_blocks <= limit / block_size / kv_heads / head_dim, "num_blocks=", num_blocks,
                ": num_blocks*block_size*kv_heads*head_dim overflows");
  }
};

/// \brief What one append/commit/compress did to the layer and its table.
struct paged_result {
  bool compressed = false;          ///< the policy planned a compression and it ran
  index_t length_before = 0;        ///< tokens held before the compression (after the append)
  index_t length_after = 0;
  index_t blocks_before = 0;        ///< table.count before / after
  index_t blocks_after = 0;
  std::vector<std::int32_t> freed;  ///< block ids handed back, in table order (empty if release_blocks is false)
};

/// \brief One layer of one sequence in a paged pool, with one length for all its heads (see the
/// file comment). `Policy` is any type satisfying policy/policy.hpp's contract whose plans are
/// the same for every head (the built-in LagKV, L2-norm, StreamingLLM, H2O and random policies
/// are, unless head-wise budget sharing is on); any_policy picks one at run time.
template <class T, class Policy = any_policy>
class paged_layer {
  static_assert(is_storage_type_v<T>, "paged_layer<T>: T must be float, lagkv::f16 or lagkv::bf16");
  static_assert(check_policy<Policy, T>());

 public:
  using value_type = T;
  /// Called once per compression that released blocks, with their ids (table order). Called in
  /// the non-throwing phase: it must not throw.
  using release_fn = std::function<void(const std::int32_t* ids, index_t count)>;

  /// \param k_pool, v_pool the engine's pools, [num_blocks, block_size, kv_heads, head_dim] each.
  /// \throws lagkv::error for an invalid config, null pools, a policy that rejects the shape, or
  /// one that shares budgets across heads (its plans could differ per head).
  paged_layer(const paged_config& config, T* k_pool, T* v_pool, Policy prototype = Policy{})
      : cfg_(config), k_(k_pool), v_(v_pool), policy_(prototype), pristine_(std::move(prototype)) {
    cfg_.validate();
    LAGKV_CHECK(k_pool != nullptr && v_pool != nullptr, "k_pool/v_pool=nullptr: the paged layer needs both pools");
    row_ = cfg_.kv_heads * cfg_.head_dim;
    bind_policy();
    const auto cap = static_cast<std::size_t>(cfg_.max_tokens);
    positions_.reserve(cap);
    agg_.resize(cap);
    head_scores_.resize(cap);
    kept_.resize(cap);
    select_scratch_.reserve(cap);
    plans_.resize(static_cast<std::size_t>(cfg_.kv_heads));
    lengths_.resize(static_cast<std::size_t>(cfg_.kv_heads));
    id_scratch_.reserve(static_cast<std::size_t>(blocks_for(cfg_.max_tokens, cfg_.block_size)));
  }

  // ---- Appending ---------------------------------------------------------------------------

  /// \brief Copies `tokens` new tokens into the slots after the last one (through `table`), then
  /// compresses if the policy's schedule says so (auto_compress). `k` and `v` are token-major
  /// [tokens, kv_heads, head_dim], the layout attention kernels produce.
  /// \param table must cover the new length: count * block_size >= length() + tokens.
  /// \throws lagkv::error (layer, table and pools unchanged) for bad inputs, a table that is too
  /// short or holds an id outside [0, num_blocks) (or, when this append compresses, a repeated
  /// id), exceeding max_tokens, inputs the policy requires but lacks, or a plan that differs
  /// between heads.
  paged_result append(const T* k, const T* v, index_t tokens, block_table& table, const append_extras& extras = {}) {
    LAGKV_CHECK((k != nullptr && v != nullptr) || tokens == 0, "k/v=nullptr with tokens=", tokens);
    return append_impl(k, v, tokens, table, extras);
  }

  /// \brief Adopts `tokens` rows the engine already wrote into slots [length(), length()+tokens)
  /// of its pools (e.g. vLLM's reshape_and_cache), then compresses per the schedule.
  /// Same checks and guarantee as append().
  paged_result commit(index_t tokens, block_table& table, const append_extras& extras = {}) {
    return append_impl(nullptr, nullptr, tokens, table, extras);
  }

  /// \brief Compresses now if the policy plans something (budget policies: down to the target).
  /// \throws lagkv::error (nothing changed) for a table that does not cover length() or holds
  /// an out-of-range or repeated id, or a plan that differs between heads.
  paged_result compress(block_table& table) {
    check_table(table, length_, true);
    plan_all(info_of(0), length_, compress_reason::explicit_call);
    paged_result r = prepare(table);
    if (has_plan_) run(table, r);
    return r;
  }

  /// Called once per compression that released blocks (see release_fn); nullptr to stop.
  void set_release_callback(release_fn fn) { on_release_ = std::move(fn); }

  // ---- Reading back ------------------------------------------------------------------------

  /// Tokens held (every head holds the same tokens).
  index_t length() const { return length_; }
  /// Tokens ever appended (= the original position of the next one).
  index_t tokens_seen() const { return tokens_seen_; }
  /// Blocks the held tokens occupy: ceil(length / block_size).
  index_t blocks_used() const { return blocks_for(length_, cfg_.block_size); }
  /// Original position of each held token, ascending (RoPE re-rotation, masks).
  const std::vector<index_t>& positions() const { return positions_; }
  /// Compressions that ran.
  index_t compressions() const { return compressions_; }
  /// Keys / values of `head` through `table` (length() rows; the table must cover them).
  kv_view<const T> keys(const block_table& table, index_t head) const { return head_view(k_, table, head); }
  kv_view<const T> values(const block_table& table, index_t head) const { return head_view(v_, table, head); }
  const Policy& policy() const { return policy_; }
  const paged_config& config() const { return cfg_; }

  /// \brief Empties the layer for a new sequence (the policy restarts from a fresh bind). The
  /// table and pools are not touched: the engine frees the sequence's blocks itself.
  void clear() {
    Policy fresh(pristine_);
    policy_ops::bind(fresh, shape(), cfg_.layer);
    policy_ = std::move(fresh);
    positions_.clear();
    length_ = tokens_seen_ = appends_ = compressions_ = 0;
  }

 private:
  cache_shape shape() const {
    return cache_shape{1, cfg_.kv_heads, cfg_.head_dim, cfg_.max_tokens, dtype_traits<T>::tag, true};
  }

  void bind_policy() {
    policy_ops::validate(policy_, shape());
    policy_ops::bind(policy_, shape(), cfg_.layer);
    LAGKV_CHECK(!policy_ops::shares_heads(policy_), "policy ", policy_name(),
                ": shares_heads=true (head-wise budgets) cannot free blocks: every head of a paged layer keeps the "
                "same tokens");
    scores_ = policy_ops::scores_tokens(policy_);
    appends_hook_ = policy_ops::wants_appends<T>(policy_);
  }

  const char* policy_name() const {
    if constexpr (std::is_same_v<Policy, any_policy>)
      return policy_.name();
    else
      return Policy::kName;
  }

  kv_view<T> head_view(T* pool, const block_table& table, index_t head) const {
    LAGKV_CHECK(table.count * cfg_.block_size >= length_, "table.count=", table.count, ": covers ",
                table.count * cfg_.block_size, " tokens, the layer holds ", length_);
    return view_paged(pool, table.ids, cfg_.block_size, cfg_.kv_heads, cfg_.head_dim, head, length_);
  }

  /// Ids [0, blocks_for(tokens)) in range (and pairwise distinct when `distinct`).
  void check_table(const block_table& table, index_t tokens, bool distinct) {
    const index_t need = blocks_for(tokens, cfg_.block_size);
    LAGKV_CHECK(table.count >= need && (table.ids != nullptr || table.count == 0), "table.count=", table.count,
                ": must be >= ceil(tokens/block_size)=", need, " for tokens=", tokens);
    for (index_t i = 0; i < need; ++i)
      LAGKV_CHECK(table.ids[i] >= 0 && table.ids[i] < cfg_.num_blocks, "table.ids[", i, "]=", table.ids[i],
                  ": out of range [0, num_blocks=", cfg_.num_blocks, ")");
    if (!distinct || need < 2) return;
    id_scratch_.assign(table.ids, table.ids + need);
    std::sort(id_scratch_.begin(), id_scratch_.end());
    const auto dup = std::adjacent_find(id_scratch_.begin(), id_scratch_.end());
    if (dup != id_scratch_.end()) {
      const index_t at = std::find(table.ids, table.ids + need, *dup) - table.ids;
      detail::throw_error("table.ids[", at, "]=", *dup, ": block id used twice in the table");
    }
  }

  layer_info info_of(index_t last_append) const {
    layer_info info;
    info.layer = cfg_.layer;
    info.kv_heads = cfg_.kv_heads;
    info.head_dim = cfg_.head_dim;
    info.capacity = cfg_.max_tokens;
    info.lengths = lengths_.data();
    info.tokens_seen = tokens_seen_;
    info.appends = appends_;
    info.last_append = last_append;
    return info;
  }

  /// Plans every head for the state `base` with every head holding `len` tokens, and checks
  /// the plans are one (a uniform per-layer budget) and in bounds.
  void plan_all(const layer_info& base, index_t len, compress_reason why) {
    std::fill(lengths_.begin(), lengths_.end(), len);
    layer_info info = base;
    info.lengths = lengths_.data();
    std::fill(plans_.begin(), plans_.end(), compress_plan{});
    layer_plan out{plans_.data(), cfg_.kv_heads, -1};
    policy_.plan(info, why, out);
    const compress_plan& p = plans_[0];
    for (index_t h = 1; h < cfg_.kv_heads; ++h) {
      const compress_plan& q = plans_[static_cast<std::size_t>(h)];
      LAGKV_CHECK(q.begin == p.begin && q.chunks == p.chunks && q.chunk == p.chunk && q.keep == p.keep, "policy ",
                  policy_name(), ": plan of head=", h, " (begin=", q.begin, " chunks=", q.chunks, " chunk=", q.chunk,
                  " keep=", q.keep, ") differs from head 0's (begin=", p.begin, " chunks=", p.chunks, " chunk=",
                  p.chunk, " keep=", p.keep, "): a paged layer needs one plan for all heads");
    }
    LAGKV_CHECK(out.shared_keep < 0, "policy ", policy_name(), ": shared_keep=", out.shared_keep,
                ": head-wise budgets cannot free blocks");
    has_plan_ = !p.empty();
    if (!has_plan_) return;
    LAGKV_CHECK(
        p.begin >= 0 && p.chunk >= 1 && p.keep >= 0 && p.keep <= p.chunk && p.chunks <= (len - p.begin) / p.chunk,
        "policy ", policy_name(), ": invalid plan (begin=", p.begin, " chunks=", p.chunks, " chunk=", p.chunk,
        " keep=", p.keep, ", length=", len, ")");
  }

  /// Everything a compression allocates, before anything changes.
  paged_result prepare(const block_table& table) const {
    paged_result r;
    r.blocks_before = r.blocks_after = table.count;
    if (has_plan_ && cfg_.release_blocks) {
      const compress_plan& p = plans_[0];
      const index_t len = lengths_[0];
      const index_t after = len - p.chunks * (p.chunk - p.keep);
      r.freed.reserve(static_cast<std::size_t>(std::max<index_t>(table.count - blocks_for(after, cfg_.block_size), 0)));
    }
    return r;
  }

  paged_result append_impl(const T* k, const T* v, index_t tokens, block_table& table, const append_extras& extras) {
    LAGKV_CHECK(tokens >= 0, "tokens=", tokens, ": must be >= 0");
    LAGKV_CHECK(tokens <= cfg_.max_tokens - length_, "tokens=", tokens, ": exceeds max_tokens=", cfg_.max_tokens,
                " (the layer holds ", length_, ")");
    const index_t new_len = length_ + tokens;
    if (tokens == 0) return paged_result{false, length_, length_, table.count, table.count, {}};
    std::fill(lengths_.begin(), lengths_.end(), length_);
    policy_ops::validate_append(policy_, info_of(tokens), tokens, extras);  // sees the lengths before
    // Plan the post-append state before writing anything (strong guarantee): a plan depends on
    // lengths and counters only, never on the rows.
    has_plan_ = false;
    if (cfg_.auto_compress) {
      layer_info post = info_of(tokens);
      post.tokens_seen = tokens_seen_ + tokens;
      post.appends = appends_ + 1;
      plan_all(post, new_len, compress_reason::append);
    }
    check_table(table, new_len, has_plan_);
    paged_result r = prepare(table);
    // Mutation: nothing below throws.
    write_rows(k, v, tokens, table);
    for (index_t i = 0; i < tokens; ++i) positions_.push_back(tokens_seen_ + i);  // reserved: no allocation
    length_ = new_len;
    tokens_seen_ += tokens;
    appends_ += 1;
    if (appends_hook_) {
      for (index_t h = 0; h < cfg_.kv_heads; ++h)
        policy_ops::on_append<T>(policy_, head_of(table, h), length_ - tokens, tokens, extras);
    }
    r.length_before = r.length_after = length_;
    if (has_plan_) run(table, r);
    return r;
  }

  void write_rows(const T* k, const T* v, index_t tokens, const block_table& table) noexcept {
    if (k == nullptr) return;  // commit(): the engine wrote them
    const auto bytes = static_cast<std::size_t>(row_) * sizeof(T);
    for (index_t i = 0; i < tokens; ++i) {
      std::memcpy(row_ptr(k_, table, length_ + i), k + i * row_, bytes);
      std::memcpy(row_ptr(v_, table, length_ + i), v + i * row_, bytes);
    }
  }

  T* row_ptr(T* pool, const block_table& table, index_t t) const noexcept {
    return pool + (static_cast<index_t>(table.ids[t / cfg_.block_size]) * cfg_.block_size + t % cfg_.block_size) * row_;
  }

  head_data<T> head_of(const block_table& table, index_t h) const noexcept {
    head_data<T> d;
    d.layer = cfg_.layer;
    d.head = h;
    d.keys = kv_view<const T>::paged(k_ + h * cfg_.head_dim, table.ids, cfg_.block_size, cfg_.block_size * row_, row_,
                                     1, length_, cfg_.head_dim);
    d.values = kv_view<const T>::paged(v_ + h * cfg_.head_dim, table.ids, cfg_.block_size, cfg_.block_size * row_, row_,
                                       1, length_, cfg_.head_dim);
    d.positions = positions_.data();
    return d;
  }

  // plan (done) -> score per head -> aggregate -> select -> compact -> release. Never throws.
  void run(block_table& table, paged_result& r) noexcept {
    const compress_plan p = plans_[0];
    const index_t n = p.chunks * p.chunk;
    if (scores_) {
      for (index_t h = 0; h < cfg_.kv_heads; ++h) {
        // score_region: one sweep over the region where the policy has it (LagKV), else per chunk
        policy_ops::score_region<T>(policy_, head_of(table, h), p, head_scores_.data());
        aggregate(h == 0, n);
      }
    }
    for (index_t c = 0; c < p.chunks; ++c) {
      index_t* kept = kept_.data() + c * p.keep;
      const index_t first = p.begin + c * p.chunk;
      if (scores_) {
        select_top_k(agg_.data() + c * p.chunk, p.chunk, p.keep, kept, select_scratch_);  // reserved: no allocation
        for (index_t i = 0; i < p.keep; ++i) kept[i] += first;
      } else {
        for (index_t i = 0; i < p.keep; ++i) kept[i] = first + i;
      }
    }
    const compaction moves{p.begin, p.end(), length_, kept_.data(), p.chunks * p.keep};
    compact(table, moves);
    moves.apply(positions_.data());
    positions_.resize(static_cast<std::size_t>(moves.length_after()));  // shrinking: no allocation
    for (index_t h = 0; h < cfg_.kv_heads; ++h) policy_ops::on_compact(policy_, h, moves);
    r.compressed = true;
    r.length_before = length_;
    length_ = moves.length_after();
    r.length_after = length_;
    ++compressions_;
    if (cfg_.release_blocks) {
      const index_t keep = blocks_for(length_, cfg_.block_size);
      for (index_t i = keep; i < table.count; ++i) {
        r.freed.push_back(table.ids[i]);  // reserved in prepare(): no allocation
        table.ids[i] = kNoBlock;
      }
      if (table.count > keep) table.count = keep;
      if (on_release_ && !r.freed.empty()) on_release_(r.freed.data(), static_cast<index_t>(r.freed.size()));
    }
    r.blocks_after = table.count;
  }

  // NaN anywhere makes the token NaN (it ranks last in select_top_k), for both rules.
  void aggregate(bool first, index_t n) noexcept {
    const score_t* s = head_scores_.data();
    score_t* a = agg_.data();
    if (first) {
      std::copy(s, s + n, a);
    } else if (cfg_.aggregate == head_aggregation::sum) {
      for (index_t i = 0; i < n; ++i) a[i] += s[i];
    } else {
      for (index_t i = 0; i < n; ++i) a[i] = (s[i] > a[i] || s[i] != s[i]) ? s[i] : a[i];
    }
  }

  // Token rows (all heads, K and V) move down in place: kept[i] -> begin + i, the tail after it.
  void compact(const block_table& table, const compaction& m) noexcept {
    const auto bytes = static_cast<std::size_t>(row_) * sizeof(T);
    auto move = [&](index_t src, index_t dst) {
      if (src == dst) return;
      std::memcpy(row_ptr(k_, table, dst), row_ptr(k_, table, src), bytes);  // distinct blocks: no overlap
      std::memcpy(row_ptr(v_, table, dst), row_ptr(v_, table, src), bytes);
    };
    for (index_t i = 0; i < m.kept_count; ++i) move(m.kept[i], m.begin + i);
    const index_t dst = m.begin + m.kept_count;
    for (index_t t = m.region_end; t < m.length_before; ++t) move(t, dst + (t - m.region_end));
  }

  paged_config cfg_;
  T* k_;
  T* v_;
  index_t row_ = 0;  // kv_heads * head_dim: elements of one token's row
  Policy policy_;
  Policy pristine_;  // unbound copy, for clear()
  bool scores_ = true;
  bool appends_hook_ = false;
  bool has_plan_ = false;
  release_fn on_release_;
  index_t length_ = 0, tokens_seen_ = 0, appends_ = 0, compressions_ = 0;
  std::vector<index_t> positions_;            // [length] original positions (capacity max_tokens)
  std::vector<compress_plan> plans_;          // [H]
  std::vector<index_t> lengths_;              // [H] all equal: what the policy plans from
  std::vector<score_t> agg_, head_scores_;    // [max_tokens]
  std::vector<index_t> kept_, select_scratch_;  // [max_tokens]
  std::vector<std::int32_t> id_scratch_;      // distinctness check of the table
};

}  // namespace lagkv
