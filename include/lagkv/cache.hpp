#pragma once
/// \file cache.hpp
/// \brief kv_cache<T, Policy>: the KV cache an engine appends to and reads attention inputs
/// from, which evicts tokens per layer with a pluggable policy (policy/policy.hpp).
///
/// Shape: layers x KV heads x capacity slots x head_dim, for K and for V, in storage type T
/// (float, f16, bf16). The cache either owns that memory (contiguous [H, capacity, D] per
/// layer) or works in place on the engine's memory through a kv_layout per layer and tensor:
/// contiguous [H, capacity, D], token-major [capacity, H, D], transposed [H, D, capacity]
/// (llama.cpp's V), or paged [num_blocks, block_size, H, D] through a block table (vLLM). All
/// cache logic goes through kv_view, so it runs unchanged on every layout.
///
/// Each (layer, head) holds `length` slots, slot i being the token at original position
/// positions(layer, head)[i] (ascending), until an engine renumbers the layer to contiguous
/// positions (rerotate_to_contiguous / renumber_positions, docs/positions.md option (b)). Appending writes new rows after the last slot; a
/// compression runs the data path
///   plan (policy) -> score (policy, SIMD scorers) -> select (select.hpp) -> compact (compact.hpp)
/// and moves the kept K/V rows and their positions down in place, in their original order,
/// with no K/V scratch at all (no full-cache copy, ever). Index/score scratch of O(capacity)
/// per layer is reserved once, when a policy is bound — the SIMD scorers' scratch too, owned by
/// each layer's policy (no thread-local state) — so appends and compressions never allocate, on
/// any thread, the scorers' exact fallbacks included. A decode append that triggers no compression costs O(head_dim) per head plus the
/// policy's on_append (H2O: O(length), the attention it accumulates).
///
/// Capacity: appends write before they compress, so a layer needs room for its peak: for
/// LagKV compressed + 2*lag - 1 + tokens_per_append (< sink + ratio*S + 2*lag + chunk); for
/// budget policies budget + interval * tokens_per_append (or the prefill length).
///
/// \note Thread safety: all state is per layer, so different layers may be appended to,
/// compressed, cleared and read concurrently from different threads (the engine's usual
/// layer-parallel or pipelined schedule). Operations on the same layer must not overlap, and
/// views returned for a layer are invalidated by the next append/compress/clear of that
/// layer. The observer (set_observer) is called from whichever thread compresses.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "lagkv/compact.hpp"
#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/policy/any.hpp"
#include "lagkv/policy/policy.hpp"
#include "lagkv/rope.hpp"
#include "lagkv/select.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// \brief Memory layout of one layer's K or V tensor (or of an append's input).
class kv_layout {
 public:
  enum class kind : std::uint8_t {
    hsd,   ///< [H, capacity, D] contiguous (Hugging Face)
    shd,   ///< [capacity, H, D] token-major (llama.cpp K)
    hds,   ///< [H, D, capacity] transposed (llama.cpp V without flash attention)
    paged  ///< [num_blocks, block_size, H, D] through a block table (vLLM)
  };

  static kv_layout hsd() { return kv_layout(kind::hsd); }
  static kv_layout shd() { return kv_layout(kind::shd); }
  static kv_layout hds() { return kv_layout(kind::hds); }
  /// `block_table[i]` is the physical block of logical slots [i*block_size, (i+1)*block_size);
  /// it must cover `capacity` slots and stay alive (and unchanged) as long as the cache.
  static kv_layout paged(const std::int32_t* block_table, index_t block_size) {
    kv_layout l(kind::paged);
    l.block_table_ = block_table;
    l.block_size_ = block_size;
    return l;
  }

  kind type() const { return kind_; }
  const char* name() const {
    switch (kind_) {
      case kind::hsd: return "hsd";
      case kind::shd: return "shd";
      case kind::hds: return "hds";
      case kind::paged: return "paged";
    }
    return "?";
  }

  /// \throws lagkv::error naming `what` for an unusable paged layout.
  void validate(const char* what) const {
    if (kind_ != kind::paged) return;
    LAGKV_CHECK(block_table_ != nullptr, what, ".block_table=nullptr: a paged layout needs a block table");
    LAGKV_CHECK(block_size_ >= 1, what, ".block_size=", block_size_, ": must be >= 1");
  }

  /// The view of head `head`'s first `tokens` slots of a tensor at `base` with this layout.
  template <class T>
  kv_view<T> view(T* base, index_t heads, index_t capacity, index_t head_dim, index_t head, index_t tokens) const {
    switch (kind_) {
      case kind::shd: return view_shd(base, capacity, heads, head_dim, head, tokens);
      case kind::hds: return view_hds(base, heads, head_dim, capacity, head, tokens);
      case kind::paged: return view_paged(base, block_table_, block_size_, heads, head_dim, head, tokens);
      case kind::hsd: break;
    }
    return view_hsd(base, heads, capacity, head_dim, head, tokens);
  }

 private:
  explicit kv_layout(kind k) : kind_(k) {}
  kind kind_ = kind::hsd;
  const std::int32_t* block_table_ = nullptr;  // [ceil(capacity / block_size)] physical block ids
  index_t block_size_ = 0;
};

/// \brief Engine-owned memory of one layer: K and V base pointers and their layouts.
template <class T>
struct layer_memory {
  T* k = nullptr;  ///< layout k_layout, `capacity` slots per head
  T* v = nullptr;  ///< layout v_layout
  kv_layout k_layout = kv_layout::hsd();
  kv_layout v_layout = kv_layout::hsd();
};

/// \brief The new tokens of one layer for append(): `tokens` rows per KV head at `data`,
/// laid out [H, capacity, D] (hsd, default), [capacity, H, D] (shd) or [H, D, capacity] (hds),
/// of which the first `tokens` slots are appended. `capacity` 0 means `tokens` (a dense
/// tensor); a larger one appends a slice of a bigger tensor (data = its first token).
template <class T>
struct kv_input {
  const T* data = nullptr;
  index_t tokens = 0;
  kv_layout layout = kv_layout::hsd();
  index_t capacity = 0;

  index_t extent() const { return capacity == 0 ? tokens : capacity; }
};

/// \brief Cache shape and behaviour.
struct cache_config {
  index_t layers = 1;
  index_t kv_heads = 1;
  index_t head_dim = 128;
  index_t capacity = 0;              ///< slots per (layer, head)
  bool auto_compress = true;         ///< compress after each append (else only on compress())
  std::vector<index_t> skip_layers;  ///< layers never compressed
};

/// \brief One compression of one head, as the observer sees it (before the rows move).
struct compress_event {
  index_t layer = 0;
  index_t head = 0;
  compress_plan plan;                  ///< the region; plan.keep is per chunk (per head when shared)
  const score_t* scores = nullptr;     ///< [plan.chunks * plan.chunk] region scores; nullptr if unscored
  const index_t* kept = nullptr;       ///< [kept_count] kept region slots, ascending (pre-compaction numbering)
  index_t kept_count = 0;
  const index_t* positions = nullptr;  ///< [length_before] positions before the compaction
  index_t length_before = 0;
  index_t length_after = 0;
};

/// \brief A read-only run of index_t (positions of a head's slots).
struct index_span {
  const index_t* ptr = nullptr;
  index_t count = 0;
  const index_t* begin() const { return ptr; }
  const index_t* end() const { return ptr + count; }
  const index_t* data() const { return ptr; }
  index_t size() const { return count; }
  index_t operator[](index_t i) const { return ptr[i]; }
  std::vector<index_t> to_vector() const { return std::vector<index_t>(begin(), end()); }
};

/// \brief The KV cache (see file comment). `Policy` is any type satisfying the policy
/// contract; any_policy (the default) picks one at run time.
template <class T, class Policy = any_policy>
class kv_cache {
  static_assert(is_storage_type_v<T>, "kv_cache<T>: T must be float, lagkv::f16 or lagkv::bf16");
  static_assert(check_policy<Policy, T>());

 public:
  using value_type = T;
  using policy_type = Policy;
  using observer = std::function<void(const compress_event&)>;

  /// \brief A cache owning its memory ([H, capacity, D] per layer, zero-initialised).
  /// \throws lagkv::error for an invalid config (names the field and value), a size that
  /// overflows, or a policy rejecting the shape; std::bad_alloc.
  explicit kv_cache(const cache_config& config, Policy prototype = Policy{}) : cfg_(config) {
    validate_config();
    const index_t per_layer = cfg_.kv_heads * cfg_.capacity * cfg_.head_dim;
    owned_k_.assign(static_cast<std::size_t>(per_layer * cfg_.layers), T{});
    owned_v_.assign(owned_k_.size(), T{});
    std::vector<layer_memory<T>> mem(static_cast<std::size_t>(cfg_.layers));
    for (index_t l = 0; l < cfg_.layers; ++l) {
      mem[static_cast<std::size_t>(l)].k = owned_k_.data() + l * per_layer;
      mem[static_cast<std::size_t>(l)].v = owned_v_.data() + l * per_layer;
    }
    init_layers(mem, prototype);
  }

  /// \brief A cache working in place on engine-owned memory, one layer_memory per layer.
  /// The memory must outlive the cache; slots beyond each head's length are free for the
  /// engine (see next_keys/commit). \throws lagkv::error as above, or for null pointers or
  /// `memory.size() != layers`.
  kv_cache(const cache_config& config, const std::vector<layer_memory<T>>& memory, Policy prototype = Policy{})
      : cfg_(config) {
    validate_config();
    LAGKV_CHECK(static_cast<index_t>(memory.size()) == cfg_.layers, "memory.size()=", memory.size(),
                ": must equal layers=", cfg_.layers);
    for (std::size_t l = 0; l < memory.size(); ++l) {
      LAGKV_CHECK(memory[l].k != nullptr && memory[l].v != nullptr, "memory[", l, "]: k and v must not be nullptr");
      memory[l].k_layout.validate("k_layout");
      memory[l].v_layout.validate("v_layout");
    }
    init_layers(memory, prototype);
  }

  kv_cache(const kv_cache&) = delete;
  kv_cache& operator=(const kv_cache&) = delete;
  kv_cache(kv_cache&&) noexcept = default;
  kv_cache& operator=(kv_cache&&) noexcept = default;
  ~kv_cache() = default;

  // ---- Appending ---------------------------------------------------------------------------

  /// \brief Appends `k.tokens` tokens (a prefill chunk, or 1 while decoding) to every KV head of
  /// `layer`, then compresses the layer if the policy's schedule says so (auto_compress).
  /// \param extras per-append inputs of attention-driven policies (H2O: probabilities or queries).
  /// \throws lagkv::error (cache unchanged) for a bad layer, mismatched or null inputs, a
  /// capacity overflow, or inputs the policy requires but lacks.
  void append(index_t layer, const kv_input<T>& k, const kv_input<T>& v, const append_extras& extras = {}) {
    check_layer(layer);
    LAGKV_CHECK(k.tokens >= 0, "k.tokens=", k.tokens, ": must be >= 0");
    LAGKV_CHECK(v.tokens == k.tokens, "v.tokens=", v.tokens, ": must equal k.tokens=", k.tokens);
    LAGKV_CHECK(k.data != nullptr || k.tokens == 0, "k.data=nullptr with tokens=", k.tokens);
    LAGKV_CHECK(v.data != nullptr || v.tokens == 0, "v.data=nullptr with tokens=", v.tokens);
    LAGKV_CHECK(k.layout.type() != kv_layout::kind::paged, "k.layout=paged: inputs must be hsd, shd or hds");
    LAGKV_CHECK(v.layout.type() != kv_layout::kind::paged, "v.layout=paged: inputs must be hsd, shd or hds");
    LAGKV_CHECK(k.capacity == 0 || k.capacity >= k.tokens, "k.capacity=", k.capacity, ": must be 0 or >= tokens=",
                k.tokens);
    LAGKV_CHECK(v.capacity == 0 || v.capacity >= v.tokens, "v.capacity=", v.capacity, ": must be 0 or >= tokens=",
                v.tokens);
    validate_append(layer, k.tokens, extras);
    if (k.tokens == 0) return;
    write_and_compress(layer, k.tokens, &k, &v, extras);
  }

  /// Appends `tokens` tokens laid out [H, tokens, D] at `k` and `v`.
  void append(index_t layer, const T* k, const T* v, index_t tokens, const append_extras& extras = {}) {
    append(layer, kv_input<T>{k, tokens, kv_layout::hsd()}, kv_input<T>{v, tokens, kv_layout::hsd()}, extras);
  }

  /// \brief Writable views of the next `tokens` free slots of (layer, head), for engines that
  /// write K/V in place (e.g. from their attention kernel); then call commit().
  /// \throws lagkv::error for a bad layer/head or a capacity overflow.
  kv_view<T> next_keys(index_t layer, index_t head, index_t tokens) {
    return next_slots(layer, head, tokens, true);
  }
  kv_view<T> next_values(index_t layer, index_t head, index_t tokens) {
    return next_slots(layer, head, tokens, false);
  }

  /// \brief Adopts `tokens` rows the engine already wrote after every head's last slot of
  /// `layer` (zero-copy append), then compresses per the schedule. Same checks as append().
  void commit(index_t layer, index_t tokens, const append_extras& extras = {}) {
    check_layer(layer);
    LAGKV_CHECK(tokens >= 0, "tokens=", tokens, ": must be >= 0");
    validate_append(layer, tokens, extras);
    if (tokens == 0) return;
    write_and_compress(layer, tokens, nullptr, nullptr, extras);
  }

  // ---- Compressing -------------------------------------------------------------------------

  /// \brief Compresses `layer` now if its policy's schedule has something to compress (budget
  /// policies: down to the target, ignoring `interval`). Skipped layers never compress.
  /// \return true when the policy planned a compression. \throws lagkv::error for a bad layer only.
  bool compress(index_t layer) {
    check_layer(layer);
    if (layers_[static_cast<std::size_t>(layer)].skipped) return false;
    return compress_layer(layer, compress_reason::explicit_call, 0);
  }
  /// compress() on every layer; returns how many layers evicted something.
  index_t compress_all() {
    index_t n = 0;
    for (index_t l = 0; l < cfg_.layers; ++l) n += compress(l) ? 1 : 0;
    return n;
  }

  // ---- Reading back ------------------------------------------------------------------------

  /// Keys of (layer, head): length(layer, head) rows x head_dim, in the layer's layout.
  kv_view<const T> keys(index_t layer, index_t head) const {
    check_head(layer, head);
    const layer_state& s = layers_[static_cast<std::size_t>(layer)];
    return s.mem.k_layout.view(static_cast<const T*>(s.mem.k), cfg_.kv_heads, cfg_.capacity, cfg_.head_dim, head,
                               s.lengths[static_cast<std::size_t>(head)]);
  }
  /// Values of (layer, head), like keys().
  kv_view<const T> values(index_t layer, index_t head) const {
    check_head(layer, head);
    const layer_state& s = layers_[static_cast<std::size_t>(layer)];
    return s.mem.v_layout.view(static_cast<const T*>(s.mem.v), cfg_.kv_heads, cfg_.capacity, cfg_.head_dim, head,
                               s.lengths[static_cast<std::size_t>(head)]);
  }
  /// Position of every slot of (layer, head), ascending (RoPE, masks, debugging): the original
  /// token index, or the contiguous numbering renumber_positions / rerotate_to_contiguous gave it.
  index_span positions(index_t layer, index_t head) const {
    check_head(layer, head);
    const layer_state& s = layers_[static_cast<std::size_t>(layer)];
    return index_span{s.positions.data() + head * cfg_.capacity, s.lengths[static_cast<std::size_t>(head)]};
  }
  /// Slots held by (layer, head).
  index_t length(index_t layer, index_t head) const {
    check_head(layer, head);
    return layers_[static_cast<std::size_t>(layer)].lengths[static_cast<std::size_t>(head)];
  }
  /// The longest head of `layer` (heads differ only under head-wise budgets).
  index_t max_length(index_t layer) const {
    check_layer(layer);
    const auto& len = layers_[static_cast<std::size_t>(layer)].lengths;
    return *std::max_element(len.begin(), len.end());
  }
  /// Tokens ever appended to `layer` (= the original position of the next one; after a
  /// renumbering the next token's position is next_position(layer)).
  index_t tokens_seen(index_t layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].tokens_seen;
  }
  /// The position the next token appended to `layer` gets (what its query and key are rotated
  /// at): tokens_seen(layer) until the layer is renumbered, then start + max_length(layer) of
  /// that renumbering, advanced by every append since.
  index_t next_position(index_t layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].next_position;
  }
  /// Compressions of `layer` so far (plans with a region; LagKV with ratio 1 evicts nothing).
  index_t compressions(index_t layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].compressions;
  }
  /// The raw memory and layouts of `layer` (owned or the engine's).
  layer_memory<T> memory(index_t layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].mem;
  }
  const Policy& policy(index_t layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].rt.policy;
  }
  const cache_config& config() const { return cfg_; }
  cache_shape shape() const {
    return cache_shape{cfg_.layers, cfg_.kv_heads, cfg_.head_dim, cfg_.capacity, dtype_traits<T>::tag, true};
  }
  bool owns_memory() const { return !owned_k_.empty(); }

  // ---- Configuring -------------------------------------------------------------------------

  /// \brief Gives `layer` its own policy (per-layer choice). The layer must be empty, since a
  /// policy's state describes the slots it compressed. \throws lagkv::error (cache unchanged).
  void set_policy(index_t layer, Policy policy) {
    check_layer(layer);
    layer_state& s = layers_[static_cast<std::size_t>(layer)];
    index_t held = 0;
    for (index_t n : s.lengths) held += n;
    LAGKV_CHECK(held == 0, "layer=", layer, ": set_policy needs an empty layer (it holds ", held,
                " slots); call clear(layer) first");
    runtime rt = make_runtime(std::move(policy), layer);
    s.rt = std::move(rt);
  }
  /// Marks `layer` as never compressed (or compressed again).
  void set_skipped(index_t layer, bool skipped) {
    check_layer(layer);
    layers_[static_cast<std::size_t>(layer)].skipped = skipped;
  }
  bool skipped(index_t layer) const {
    check_layer(layer);
    return layers_[static_cast<std::size_t>(layer)].skipped;
  }
  /// Called once per compressed head, before its rows move; must not throw.
  void set_observer(observer fn) { observer_ = std::move(fn); }

  /// \brief Empties `layer` for a new sequence; its policy restarts from a fresh bind.
  /// K/V memory is left as is. \throws std::bad_alloc (cache unchanged).
  void clear(index_t layer) {
    check_layer(layer);
    layer_state& s = layers_[static_cast<std::size_t>(layer)];
    runtime rt = make_runtime(Policy(prototype_of(s)), layer);
    s.rt = std::move(rt);
    std::fill(s.lengths.begin(), s.lengths.end(), index_t{0});
    s.tokens_seen = s.next_position = s.appends = s.compressions = 0;
  }
  /// clear() on every layer.
  void clear() {
    for (index_t l = 0; l < cfg_.layers; ++l) clear(l);
  }

  // ---- Positions after eviction (docs/positions.md) ------------------------------------------

  /// \brief Renumbers the slots of every head of `layer` to start, start+1, ... (head h:
  /// [start, start + length(layer, h))) without touching K or V; new tokens continue at
  /// start + max_length(layer) (next_position). For engines that re-rotate the kept keys with
  /// their own RoPE kernel; rerotate_to_contiguous re-rotates and renumbers in one call.
  /// \throws lagkv::error (nothing changed) for a bad layer, start < 0, or a numbering that
  /// overflows index_t.
  void renumber_positions(index_t layer, index_t start = 0) {
    check_renumbering(layer, start);
    renumber(layers_[static_cast<std::size_t>(layer)], start);
  }

  /// \brief Option (b) of docs/positions.md for `layer`: re-rotates every head's kept keys from
  /// their stored positions to start, start+1, ... (rope.hpp's exact rotation by the integer
  /// delta, computed in fp32 and rounded once to T; slots whose position does not change are
  /// not touched), then renumbers like renumber_positions. Values are left alone (RoPE rotates
  /// keys only). Each head is rotated against its own positions, so per-head eviction is fine;
  /// heads of different lengths (head-wise budgets) all start at `start`. Allocates
  /// O(max_length + rotary_dim) scratch per call.
  /// \param rope  the model's RoPE: style, base, rotary_dim (partial rotary), scaling
  /// \param start the first new position (0: the cache holds the sequence from its start)
  /// \param isa   kernel; automatic = the CPU's best (see rope_force_scalar)
  /// \throws lagkv::error (keys and positions unchanged) for a bad layer, start < 0 or an
  /// overflowing numbering, rope parameters that do not fit head_dim, or an isa the CPU lacks;
  /// std::bad_alloc (unchanged).
  void rerotate_to_contiguous(index_t layer, const rope_params& rope, index_t start = 0,
                              rope_isa isa = rope_isa::automatic) {
    check_renumbering(layer, start);
    rope.validate(cfg_.head_dim);
    const rope_isa kernel = detail::rope_resolve_isa(isa);
    layer_state& s = layers_[static_cast<std::size_t>(layer)];
    std::vector<std::int64_t> deltas(static_cast<std::size_t>(max_length(layer)));
    std::vector<kv_view<T>> group(static_cast<std::size_t>(cfg_.kv_heads));
    detail::rope_angles angles(rope, cfg_.head_dim);
    // Nothing below throws: every check and allocation is done. Adjacent heads holding the same
    // positions (a per-layer kept set) go in one call, so each distinct delta's cosines are
    // computed once for all of them (bench/RESULTS.md "RoPE": 8 heads, ~9x).
    const index_t C = cfg_.capacity;
    for (index_t h = 0; h < cfg_.kv_heads;) {
      const index_t n = s.lengths[static_cast<std::size_t>(h)];
      const index_t* pos = s.positions.data() + h * C;
      for (index_t i = 0; i < n; ++i)  // both in [0, max index_t]: the difference cannot overflow
        deltas[static_cast<std::size_t>(i)] = static_cast<std::int64_t>(start + i) - static_cast<std::int64_t>(pos[i]);
      index_t g = 0;
      do {
        group[static_cast<std::size_t>(g++)] = mutable_view(s, true, h++, n);
      } while (h < cfg_.kv_heads && s.lengths[static_cast<std::size_t>(h)] == n &&
               std::equal(pos, pos + n, s.positions.data() + h * C));
      detail::rope_rotate_prepared(group.data(), g, deltas.data(), n, angles, kernel);
    }
    renumber(s, start);
  }

 private:
  // Policy plus the scratch its compressions need, rebuilt together (strong guarantee).
  struct runtime {
    Policy policy;
    Policy pristine;  // the unbound copy, for clear()
    bool shares = false;
    bool scores = true;
    bool appends = false;  // the policy declares on_append
    std::vector<compress_plan> plans;    // [H]
    std::vector<score_t> scores_buf;     // [C], or [H*C] when the policy shares heads
    std::vector<index_t> kept;           // [C]
    std::vector<index_t> select_scratch; // [C]
    std::vector<index_t> order;          // [H*C] when sharing: region slots by rank per head
    std::vector<index_t> taken;          // [H] when sharing
  };
  struct layer_state {
    layer_memory<T> mem;
    runtime rt;
    std::vector<index_t> lengths;    // [H]
    std::vector<index_t> positions;  // [H, capacity]
    index_t tokens_seen = 0;
    index_t next_position = 0;       // position of the next appended token (tokens_seen unless renumbered)
    index_t appends = 0;
    index_t compressions = 0;
    bool skipped = false;
  };

  static const Policy& prototype_of(const layer_state& s) { return s.rt.pristine; }

  void validate_config() const {
    LAGKV_CHECK(cfg_.layers >= 1, "layers=", cfg_.layers, ": must be >= 1");
    LAGKV_CHECK(cfg_.kv_heads >= 1, "kv_heads=", cfg_.kv_heads, ": must be >= 1");
    LAGKV_CHECK(cfg_.head_dim >= 1, "head_dim=", cfg_.head_dim, ": must be >= 1");
    LAGKV_CHECK(cfg_.capacity >= 1, "capacity=", cfg_.capacity, ": must be >= 1");
    const index_t max = std::numeric_limits<index_t>::max() / static_cast<index_t>(sizeof(T));
    index_t n = cfg_.layers;
    for (index_t f : {cfg_.kv_heads, cfg_.capacity, cfg_.head_dim}) {
      LAGKV_CHECK(n <= max / f, "capacity=", cfg_.capacity, ": layers*kv_heads*capacity*head_dim overflows (layers=",
                  cfg_.layers, ", kv_heads=", cfg_.kv_heads, ", head_dim=", cfg_.head_dim, ")");
      n *= f;
    }
    for (index_t l : cfg_.skip_layers)
      LAGKV_CHECK(l >= 0 && l < cfg_.layers, "skip_layers entry=", l, ": out of range [0, ", cfg_.layers, ")");
  }

  runtime make_runtime(Policy policy, index_t layer) const {
    runtime rt;
    rt.policy = policy;
    rt.pristine = std::move(policy);
    // The layer's own shape: a transposed (hds) K or V makes its scorers copy rows, so the
    // policy reserves room for that copy too in bind — the compaction phase must not allocate.
    cache_shape s = shape();
    const layer_memory<T>& mem = layers_[static_cast<std::size_t>(layer)].mem;
    s.rows_contiguous = mem.k_layout.type() != kv_layout::kind::hds && mem.v_layout.type() != kv_layout::kind::hds;
    policy_ops::validate(rt.policy, s);
    policy_ops::bind(rt.policy, s, layer);
    rt.shares = policy_ops::shares_heads(rt.policy);
    rt.scores = policy_ops::scores_tokens(rt.policy);
    rt.appends = policy_ops::wants_appends<T>(rt.policy);
    const auto H = static_cast<std::size_t>(cfg_.kv_heads), C = static_cast<std::size_t>(cfg_.capacity);
    rt.plans.resize(H);
    rt.scores_buf.resize(rt.shares ? H * C : C);
    rt.kept.resize(C);
    rt.select_scratch.reserve(C);
    if (rt.shares) {
      rt.order.resize(H * C);
      rt.taken.resize(H);
    }
    return rt;
  }

  void init_layers(const std::vector<layer_memory<T>>& mem, const Policy& prototype) {
    layers_.resize(static_cast<std::size_t>(cfg_.layers));
    for (index_t l = 0; l < cfg_.layers; ++l) {
      layer_state& s = layers_[static_cast<std::size_t>(l)];
      s.mem = mem[static_cast<std::size_t>(l)];
      s.rt = make_runtime(prototype, l);
      s.lengths.assign(static_cast<std::size_t>(cfg_.kv_heads), 0);
      s.positions.assign(static_cast<std::size_t>(cfg_.kv_heads * cfg_.capacity), 0);
      s.skipped = std::find(cfg_.skip_layers.begin(), cfg_.skip_layers.end(), l) != cfg_.skip_layers.end();
    }
  }

  void check_layer(index_t layer) const {
    LAGKV_CHECK(layer >= 0 && layer < cfg_.layers, "layer=", layer, ": out of range [0, ", cfg_.layers, ")");
  }

  void check_renumbering(index_t layer, index_t start) const {
    check_layer(layer);
    LAGKV_CHECK(start >= 0, "start=", start, ": must be >= 0");
    const index_t longest = max_length(layer);
    LAGKV_CHECK(start <= std::numeric_limits<index_t>::max() - longest, "start=", start,
                ": start + max_length=", longest, " overflows index_t");
  }

  // Heads numbered from `start`, the next token after the longest head.
  void renumber(layer_state& s, index_t start) noexcept {
    index_t longest = 0;
    for (index_t h = 0; h < cfg_.kv_heads; ++h) {
      const index_t n = s.lengths[static_cast<std::size_t>(h)];
      index_t* pos = s.positions.data() + h * cfg_.capacity;
      for (index_t i = 0; i < n; ++i) pos[i] = start + i;
      longest = std::max(longest, n);
    }
    s.next_position = start + longest;
  }
  void check_head(index_t layer, index_t head) const {
    check_layer(layer);
    LAGKV_CHECK(head >= 0 && head < cfg_.kv_heads, "head=", head, ": out of range [0, ", cfg_.kv_heads, ")");
  }

  layer_info info_of(index_t layer, index_t last_append) const {
    const layer_state& s = layers_[static_cast<std::size_t>(layer)];
    layer_info info;
    info.layer = layer;
    info.kv_heads = cfg_.kv_heads;
    info.head_dim = cfg_.head_dim;
    info.capacity = cfg_.capacity;
    info.lengths = s.lengths.data();
    info.tokens_seen = s.tokens_seen;
    info.appends = s.appends;
    info.last_append = last_append;
    return info;
  }

  // Everything an append can fail on, checked before anything changes.
  void validate_append(index_t layer, index_t tokens, const append_extras& extras) const {
    const layer_state& s = layers_[static_cast<std::size_t>(layer)];
    for (index_t h = 0; h < cfg_.kv_heads; ++h) {
      const index_t held = s.lengths[static_cast<std::size_t>(h)];
      LAGKV_CHECK(tokens <= cfg_.capacity - held, "tokens=", tokens, ": capacity overflow at layer=", layer,
                  " head=", h, " (holds ", held, ", capacity=", cfg_.capacity, ")");
    }
    LAGKV_CHECK(tokens <= std::numeric_limits<index_t>::max() - s.next_position, "tokens=", tokens,
                ": positions overflow index_t at layer=", layer, " (next_position=", s.next_position, ")");
    // The policy sees the lengths before the append.
    if (tokens > 0) policy_ops::validate_append(s.rt.policy, info_of(layer, tokens), tokens, extras);
  }

  kv_view<T> next_slots(index_t layer, index_t head, index_t tokens, bool keys) {
    check_head(layer, head);
    LAGKV_CHECK(tokens >= 0, "tokens=", tokens, ": must be >= 0");
    layer_state& s = layers_[static_cast<std::size_t>(layer)];
    const index_t held = s.lengths[static_cast<std::size_t>(head)];
    LAGKV_CHECK(tokens <= cfg_.capacity - held, "tokens=", tokens, ": capacity overflow at layer=", layer,
                " head=", head, " (holds ", held, ", capacity=", cfg_.capacity, ")");
    const kv_view<T> all = keys ? s.mem.k_layout.view(s.mem.k, cfg_.kv_heads, cfg_.capacity, cfg_.head_dim, head,
                                                      held + tokens)
                                : s.mem.v_layout.view(s.mem.v, cfg_.kv_heads, cfg_.capacity, cfg_.head_dim, head,
                                                      held + tokens);
    return all.slice(held, tokens);
  }

  kv_view<T> mutable_view(const layer_state& s, bool keys, index_t head, index_t tokens) const noexcept {
    return keys ? s.mem.k_layout.view(s.mem.k, cfg_.kv_heads, cfg_.capacity, cfg_.head_dim, head, tokens)
                : s.mem.v_layout.view(s.mem.v, cfg_.kv_heads, cfg_.capacity, cfg_.head_dim, head, tokens);
  }

  head_data<T> head_of(index_t layer, index_t head) const noexcept {
    const layer_state& s = layers_[static_cast<std::size_t>(layer)];
    const index_t n = s.lengths[static_cast<std::size_t>(head)];
    head_data<T> d;
    d.layer = layer;
    d.head = head;
    d.keys = mutable_view(s, true, head, n);
    d.values = mutable_view(s, false, head, n);
    d.positions = s.positions.data() + head * cfg_.capacity;
    return d;
  }

  static void copy_rows(const kv_view<const T>& src, const kv_view<T>& dst, index_t first) noexcept {
    const index_t d = src.head_dim();
    const bool contiguous = src.rows_contiguous() && dst.rows_contiguous();
    for (index_t t = 0; t < src.tokens(); ++t) {
      const T* from = src.row(t);
      T* to = dst.row(first + t);
      if (contiguous) {
        std::memcpy(to, from, static_cast<std::size_t>(d) * sizeof(T));
      } else {
        for (index_t c = 0; c < d; ++c) to[c * dst.channel_stride()] = from[c * src.channel_stride()];
      }
    }
  }

  // The mutation phase of append/commit: validated before, so nothing here may fail.
  void write_and_compress(index_t layer, index_t tokens, const kv_input<T>* k, const kv_input<T>* v,
                          const append_extras& extras) noexcept {
    layer_state& s = layers_[static_cast<std::size_t>(layer)];
    const index_t H = cfg_.kv_heads, C = cfg_.capacity, D = cfg_.head_dim;
    for (index_t h = 0; h < H; ++h) {
      const index_t held = s.lengths[static_cast<std::size_t>(h)];
      if (k != nullptr) {
        copy_rows(k->layout.view(k->data, H, k->extent(), D, h, tokens), mutable_view(s, true, h, held + tokens), held);
        copy_rows(v->layout.view(v->data, H, v->extent(), D, h, tokens), mutable_view(s, false, h, held + tokens), held);
      }
      index_t* pos = s.positions.data() + h * C + held;
      for (index_t i = 0; i < tokens; ++i) pos[i] = s.next_position + i;
      s.lengths[static_cast<std::size_t>(h)] = held + tokens;
    }
    s.tokens_seen += tokens;
    s.next_position += tokens;
    s.appends += 1;
    for (index_t h = 0; s.rt.appends && h < H; ++h) {
      const head_data<T> d = head_of(layer, h);
      policy_ops::on_append<T>(s.rt.policy, d, d.length() - tokens, tokens, extras);
    }
    if (cfg_.auto_compress && !s.skipped) compress_layer(layer, compress_reason::append, tokens);
  }

  // plan -> score -> select -> compact for every head of `layer`. Never allocates or throws.
  bool compress_layer(index_t layer, compress_reason why, index_t last_append) noexcept {
    layer_state& s = layers_[static_cast<std::size_t>(layer)];
    runtime& rt = s.rt;
    const index_t H = cfg_.kv_heads, C = cfg_.capacity;
    std::fill(rt.plans.begin(), rt.plans.end(), compress_plan{});
    layer_plan out{rt.plans.data(), H, -1};
    const layer_info info = info_of(layer, last_append);
    rt.policy.plan(info, why, out);  // 1. plan
    if (!has_region(rt)) return false;
    for (index_t h = 0; h < H; ++h) check_plan(layer, h, rt.plans[static_cast<std::size_t>(h)], s);

    if (rt.shares && out.shared_keep >= 0) {
      // Head-wise budget (AdaKV): score every head, then hand out the shared slots by rank.
      for (index_t h = 0; h < H; ++h) {
        const compress_plan& p = rt.plans[static_cast<std::size_t>(h)];
        if (p.empty()) continue;
        score_t* sc = rt.scores_buf.data() + h * C;
        score_region(layer, h, p, sc);  // 2. score
        index_t* ord = rt.order.data() + h * C;
        for (index_t i = 0; i < p.chunk; ++i) ord[i] = i;
        std::sort(ord, ord + p.chunk, [sc](index_t a, index_t b) { return ranks_before(sc[a], a, sc[b], b); });
        rt.taken[static_cast<std::size_t>(h)] = p.keep;
      }
      share_budget(rt, out.shared_keep);  // 3. select (across heads) ...
      for (index_t h = 0; h < H; ++h) {
        compress_plan& p = rt.plans[static_cast<std::size_t>(h)];
        if (p.empty()) continue;
        p.keep = rt.taken[static_cast<std::size_t>(h)];
        index_t* ord = rt.order.data() + h * C;
        std::sort(ord, ord + p.keep);  // ... in original order
        for (index_t i = 0; i < p.keep; ++i) rt.kept[static_cast<std::size_t>(i)] = p.begin + ord[i];
        compact_head(layer, h, p, rt.kept.data(), p.keep, rt.scores ? rt.scores_buf.data() + h * C : nullptr);  // 4.
      }
      ++s.compressions;
      return true;
    }

    for (index_t h = 0; h < H; ++h) {
      const compress_plan& p = rt.plans[static_cast<std::size_t>(h)];
      if (p.empty()) continue;
      score_region(layer, h, p, rt.scores_buf.data());  // 2. score
      for (index_t c = 0; c < p.chunks; ++c) {         // 3. select, per chunk
        index_t* kept = rt.kept.data() + c * p.keep;
        const index_t first = p.begin + c * p.chunk;
        if (rt.scores) {
          select_top_k(rt.scores_buf.data() + c * p.chunk, p.chunk, p.keep, kept, rt.select_scratch);
          for (index_t i = 0; i < p.keep; ++i) kept[i] += first;
        } else {
          for (index_t i = 0; i < p.keep; ++i) kept[i] = first + i;
        }
      }
      compact_head(layer, h, p, rt.kept.data(), p.chunks * p.keep, rt.scores ? rt.scores_buf.data() : nullptr);  // 4.
    }
    ++s.compressions;
    return true;
  }

  // A plan outside the head is a broken policy; inside the noexcept mutation phase this
  // terminates with the message rather than touching memory it must not.
  void check_plan(index_t layer, index_t head, const compress_plan& p, const layer_state& s) const {
    if (p.empty()) return;
    const index_t len = s.lengths[static_cast<std::size_t>(head)];
    LAGKV_CHECK(p.begin >= 0 && p.chunks >= 0 && p.chunk >= 1 && p.keep >= 0 && p.keep <= p.chunk &&
                    p.chunks <= (len - p.begin) / p.chunk,
                "policy ", Policy::kName, ": invalid plan for layer=", layer, " head=", head, " (begin=", p.begin,
                " chunks=", p.chunks, " chunk=", p.chunk, " keep=", p.keep, ", length=", len, ")");
  }

  bool has_region(const runtime& rt) const noexcept {
    for (const compress_plan& p : rt.plans)
      if (!p.empty()) return true;
    return false;
  }

  void score_region(index_t layer, index_t head, const compress_plan& p, score_t* out) noexcept {
    runtime& rt = layers_[static_cast<std::size_t>(layer)].rt;
    if (!rt.scores) {
      std::fill(out, out + p.chunks * p.chunk, score_t{0});
      return;
    }
    policy_ops::score_region<T>(rt.policy, head_of(layer, head), p, out);
  }

  // Each head already has its guaranteed `taken` best; give `extra` more to the best remaining
  // candidates of any head (ties: lower head, then lower slot). O(extra * H).
  void share_budget(runtime& rt, index_t extra) noexcept {
    const index_t H = cfg_.kv_heads, C = cfg_.capacity;
    for (; extra > 0; --extra) {
      index_t best = -1;
      score_t best_score{};
      for (index_t h = 0; h < H; ++h) {
        const compress_plan& p = rt.plans[static_cast<std::size_t>(h)];
        const index_t t = rt.taken[static_cast<std::size_t>(h)];
        if (p.empty() || t >= p.chunk) continue;
        const index_t slot = rt.order[static_cast<std::size_t>(h * C + t)];
        const score_t sc = rt.scores_buf[static_cast<std::size_t>(h * C + slot)];
        // Across heads only the score counts; on a tie the lower head (found first) stays.
        if (best < 0 || ranks_before(sc, index_t{1}, best_score, index_t{0})) {
          best = h;
          best_score = sc;
        }
      }
      if (best < 0) return;
      ++rt.taken[static_cast<std::size_t>(best)];
    }
  }

  // Moves the kept rows of `head` (and the rows after the region) down, in place and in order.
  void compact_head(index_t layer, index_t head, const compress_plan& p, const index_t* kept, index_t kept_count,
                    const score_t* scores) noexcept {
    layer_state& s = layers_[static_cast<std::size_t>(layer)];
    const index_t len = s.lengths[static_cast<std::size_t>(head)];
    index_t* pos = s.positions.data() + head * cfg_.capacity;
    const compaction c{p.begin, p.end(), len, kept, kept_count};
    if (observer_) {
      compress_event e;
      e.layer = layer;
      e.head = head;
      e.plan = p;
      e.scores = scores;
      e.kept = kept;
      e.kept_count = kept_count;
      e.positions = pos;
      e.length_before = len;
      e.length_after = c.length_after();
      observer_(e);
    }
    for (bool keys : {true, false}) {
      const kv_view<T> v = mutable_view(s, keys, head, len);
      compact_rows(v, kept, kept_count, p.begin);
      move_rows_down(v, p.end(), p.begin + kept_count, len - p.end());
    }
    c.apply(pos);
    s.lengths[static_cast<std::size_t>(head)] = c.length_after();
    policy_ops::on_compact(s.rt.policy, head, c);
  }

  cache_config cfg_;
  std::vector<T> owned_k_, owned_v_;  // [layers, H, capacity, D] when the cache owns its memory
  std::vector<layer_state> layers_;
  observer observer_;
};

}  // namespace lagkv
