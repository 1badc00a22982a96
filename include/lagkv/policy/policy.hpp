#pragma once
/// \file policy/policy.hpp
/// \brief The eviction-policy contract: what a policy must provide, what it may provide, and the
/// small vocabulary (plans, head data, compactions) the cache and the policies speak.
///
/// A policy decides, for every KV head of one layer, which slots to keep. The cache owns the
/// data path and keeps it visible:
///
///   plan     policy.plan(layer, why, out)          which region of each head to compress now
///   score    policy.score(head, plan, chunk, out)  importance of the slots of one chunk
///   select   select_top_k (select.hpp)             the `keep` best slots, ascending
///   compact  compact_rows (compact.hpp)            move kept K/V rows and positions down, in place
///
/// The cache holds one policy object per layer (copied from a prototype and `bind`-ed), so
/// per-head state (LagKV's compressed prefix, H2O's accumulated attention) lives in the policy
/// and different layers never share mutable state.
///
/// \code
/// struct my_policy : lagkv::policy_base {          // policy_base supplies the optional hooks
///   static constexpr const char* kName = "mine";   // required: shown in errors, any_policy::name()
///
///   // Required. For every head h of the layer, set out.heads[h] (pre-cleared to "nothing") to
///   // the region to compress now. Called after every append (why == append) when the cache
///   // compresses automatically, and by kv_cache::compress (why == explicit_call). Must not throw.
///   void plan(const lagkv::layer_info& layer, lagkv::compress_reason why, lagkv::layer_plan& out) const;
///
///   // Required. Scores of the slots of chunk `c` of `plan`, i.e. slots
///   // [plan.begin + c*plan.chunk, + plan.chunk); higher = more important. Must not throw.
///   template <class T>
///   void score(const lagkv::head_data<T>& head, const lagkv::compress_plan& plan, lagkv::index_t c,
///              lagkv::score_t* out) const;
///
///   // Optional hooks, detected with std::void_t (policy_base defaults the first three and the
///   // last two; on_append/on_compact are only called when declared, so a policy without
///   // per-slot state costs nothing per append):
///   void validate(const lagkv::cache_shape&) const;               // throw lagkv::error on bad params
///   void bind(const lagkv::cache_shape&, lagkv::index_t layer);   // allocate per-head state; may throw
///   void validate_append(const lagkv::layer_info&, lagkv::index_t tokens,
///                        const lagkv::append_extras&) const;      // throw if an append lacks inputs
///                                                                 // (layer.lengths: before the append)
///   template <class T>
///   void on_append(const lagkv::head_data<T>&, lagkv::index_t first, lagkv::index_t count,
///                  const lagkv::append_extras&) noexcept;         // new slots [first, first+count)
///   void on_compact(lagkv::index_t head, const lagkv::compaction&) noexcept;  // move per-slot state
///   template <class T>
///   void score_region(const lagkv::head_data<T>&, const lagkv::compress_plan&,
///                     lagkv::score_t* out) const;  // all chunks at once, out[c*chunk + i]; lets
///                                                  // LagKV read each chunk from memory once
///   bool shares_heads() const;   // true: plans may use layer_plan::shared_keep (AdaKV budgets)
///   static constexpr bool kScoresTokens = true;  // false: score() is never called; a chunk keeps
///                                                // its first `keep` slots (StreamingLLM: keep 0)
/// };
/// \endcode
///
/// Everything the cache calls after it has started to mutate (plan, score, on_append,
/// on_compact) must not throw: the cache validates and reserves first, then mutates, and that
/// mutation phase is `noexcept` — a throwing policy, or a plan reaching outside its head
/// (0 <= begin, keep <= chunk, begin + chunks*chunk <= length), terminates with a message
/// instead of leaving a half-compressed cache. Policies get their scratch in `bind` — scoring
/// scratch included: the SIMD scorers (simd/dispatch.hpp) take a `simd::scratch` that a policy
/// owns and reserves in bind from the shape (type, head_dim, rows_contiguous and its chunk
/// length); the overloads without one grow a per-thread scratch on first use, which would
/// allocate inside the noexcept phase. A policy that scores through its own scratch is used by
/// one thread at a time, as the cache uses a layer's policy.

#include <cstdint>
#include <type_traits>
#include <utility>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// Score type of the contract (float: what the SIMD scorers produce).
using score_t = float;

/// Why the cache asks a policy for a plan.
enum class compress_reason : std::uint8_t {
  append,        ///< automatic, right after an append to the layer
  explicit_call  ///< kv_cache::compress / compress_all
};

/// \brief Shape facts the cache gives policies at validate/bind time.
struct cache_shape {
  index_t layers = 0;
  index_t kv_heads = 0;
  index_t head_dim = 0;
  index_t capacity = 0;  ///< slots per (layer, head)
  dtype type = dtype::f32;      ///< storage type of K and V (sizes a policy's scoring scratch)
  bool rows_contiguous = true;  ///< false when the layer's K or V rows are strided (hds): scorers copy them
};

/// \brief What one head compresses now: `chunks` chunks of `chunk` slots from slot `begin`,
/// each keeping its `keep` best slots. Slots outside [begin, end()) are kept untouched; those
/// after end() move down. `chunks == 0` means nothing to do.
struct compress_plan {
  index_t begin = 0;
  index_t chunks = 0;
  index_t chunk = 0;
  index_t keep = 0;

  index_t end() const { return begin + chunks * chunk; }
  bool empty() const { return chunks == 0; }
  /// Slots this plan evicts (when no head-wise sharing changes `keep`).
  index_t evicted() const { return chunks * (chunk - keep); }
};

/// \brief The plans of every head of one layer, filled by Policy::plan.
struct layer_plan {
  compress_plan* heads = nullptr;  ///< [kv_heads]; cleared to empty plans before each plan() call
  index_t kv_heads = 0;
  /// Head-wise budget sharing (AdaKV): when >= 0, every non-empty head plan has exactly one
  /// chunk and its `keep` is that head's guaranteed minimum; `shared_keep` further slots, in
  /// total over the layer, go to the best remaining scores of any head (ties: lower head, then
  /// lower slot). Only honoured when the policy's shares_heads() is true.
  index_t shared_keep = -1;
};

/// \brief The state of one layer as a policy plans from it.
struct layer_info {
  index_t layer = 0;
  index_t kv_heads = 0;
  index_t head_dim = 0;
  index_t capacity = 0;
  const index_t* lengths = nullptr;  ///< [kv_heads] slots held per head (after the append)
  index_t tokens_seen = 0;           ///< tokens ever appended to the layer = next original position
  index_t appends = 0;               ///< append calls so far on the layer, this one included
  index_t last_append = 0;           ///< tokens of the append that triggered the plan (0: explicit)
};

/// \brief One head's current slots, read-only, as policies see them.
template <class T>
struct head_data {
  index_t layer = 0;
  index_t head = 0;
  kv_view<const T> keys;               ///< [length, head_dim]
  kv_view<const T> values;             ///< [length, head_dim]
  const index_t* positions = nullptr;  ///< [length] original token index of each slot, ascending

  index_t length() const { return keys.tokens(); }
};

/// \brief Attention of the appended tokens' queries, for attention-driven policies (H2O).
/// Give one of `probs` (the engine's own softmax), `prob_sums` (its per-slot sums, what a
/// fused attention kernel can return cheaply) or `queries` (the library then computes a
/// reference causal softmax attention). Query head j reads KV head j / (q_heads / kv_heads).
struct attention_input {
  index_t q_heads = 0;  ///< a multiple of kv_heads

  /// Probabilities [q_heads, tokens, row_stride]: entry (j, i, s) is what the i-th appended
  /// query of head j gives slot s of its KV head, slots numbered as after the append. Query i
  /// attends slots [0, length_before + i]; entries past that are ignored.
  const float* probs = nullptr;
  /// Or their sums over the appended queries, [q_heads, row_stride]: entry (j, s) is the total
  /// probability slot s of head j's KV head received from this append's queries.
  const float* prob_sums = nullptr;
  index_t row_stride = 0;  ///< for probs / prob_sums: >= the longest head after the append

  /// Queries: element (j, i, c) at queries[j*q_head_stride + i*q_token_stride + c].
  const float* queries = nullptr;
  index_t q_head_stride = 0;
  index_t q_token_stride = 0;
};

/// \brief Per-append inputs some policies need (none of the built-ins but H2O reads them).
struct append_extras {
  attention_input attention;
};

/// \brief The moves one compression made on one head; replay them on per-slot state with
/// apply(). Slots [0, begin) stay; kept[i] (ascending) moved to begin + i; slots
/// [region_end, length_before) moved to begin + kept_count + (t - region_end).
struct compaction {
  index_t begin = 0;
  index_t region_end = 0;
  index_t length_before = 0;
  const index_t* kept = nullptr;
  index_t kept_count = 0;

  index_t length_after() const { return begin + kept_count + (length_before - region_end); }

  /// Moves entries of a per-slot array exactly as the K/V rows moved (forward, in place).
  template <class U>
  void apply(U* slots) const noexcept {
    for (index_t i = 0; i < kept_count; ++i) slots[begin + i] = slots[kept[i]];
    const index_t dst = begin + kept_count;
    for (index_t t = region_end; t < length_before; ++t) slots[dst + (t - region_end)] = slots[t];
  }
};

/// \brief No-op defaults for the optional validation/binding hooks; derive from it to write
/// less. (on_append/on_compact have no default on purpose: absent, the cache skips them.)
struct policy_base {
  static constexpr bool kScoresTokens = true;
  void validate(const cache_shape&) const {}
  void bind(const cache_shape&, index_t /*layer*/) {}
  void validate_append(const layer_info&, index_t /*tokens*/, const append_extras&) const {}
  bool shares_heads() const { return false; }
};

/// \brief The trivial policy: never evicts. The default of any_policy.
struct no_eviction : policy_base {
  static constexpr const char* kName = "none";
  static constexpr bool kScoresTokens = false;
  void plan(const layer_info&, compress_reason, layer_plan&) const noexcept {}
  template <class T>
  void score(const head_data<T>&, const compress_plan&, index_t, score_t*) const noexcept {}
};

// ---- Contract detection ---------------------------------------------------------------------

namespace policy_traits {

template <class P, class = void>
struct has_name : std::false_type {};
template <class P>
struct has_name<P, std::void_t<decltype(static_cast<const char*>(P::kName))>> : std::true_type {};

template <class P, class = void>
struct has_plan : std::false_type {};
template <class P>
struct has_plan<P, std::void_t<decltype(std::declval<const P&>().plan(
                       std::declval<const layer_info&>(), compress_reason::append, std::declval<layer_plan&>()))>>
    : std::true_type {};

template <class P, class T, class = void>
struct has_score : std::false_type {};
template <class P, class T>
struct has_score<P, T,
                 std::void_t<decltype(std::declval<const P&>().score(
                     std::declval<const head_data<T>&>(), std::declval<const compress_plan&>(), index_t{},
                     static_cast<score_t*>(nullptr)))>> : std::true_type {};

template <class P, class = void>
struct has_validate : std::false_type {};
template <class P>
struct has_validate<P, std::void_t<decltype(std::declval<const P&>().validate(std::declval<const cache_shape&>()))>>
    : std::true_type {};

template <class P, class = void>
struct has_bind : std::false_type {};
template <class P>
struct has_bind<P, std::void_t<decltype(std::declval<P&>().bind(std::declval<const cache_shape&>(), index_t{}))>>
    : std::true_type {};

template <class P, class = void>
struct has_validate_append : std::false_type {};
template <class P>
struct has_validate_append<P, std::void_t<decltype(std::declval<const P&>().validate_append(
                                  std::declval<const layer_info&>(), index_t{}, std::declval<const append_extras&>()))>>
    : std::true_type {};

template <class P, class T, class = void>
struct has_on_append : std::false_type {};
template <class P, class T>
struct has_on_append<P, T,
                     std::void_t<decltype(std::declval<P&>().on_append(std::declval<const head_data<T>&>(), index_t{},
                                                                       index_t{}, std::declval<const append_extras&>()))>>
    : std::true_type {};

template <class P, class T, class = void>
struct has_score_region : std::false_type {};
template <class P, class T>
struct has_score_region<P, T,
                        std::void_t<decltype(std::declval<const P&>().score_region(
                            std::declval<const head_data<T>&>(), std::declval<const compress_plan&>(),
                            static_cast<score_t*>(nullptr)))>> : std::true_type {};

template <class P, class = void>
struct has_on_compact : std::false_type {};
template <class P>
struct has_on_compact<P, std::void_t<decltype(std::declval<P&>().on_compact(index_t{}, std::declval<const compaction&>()))>>
    : std::true_type {};

template <class P, class = void>
struct has_shares_heads : std::false_type {};
template <class P>
struct has_shares_heads<P, std::void_t<decltype(static_cast<bool>(std::declval<const P&>().shares_heads()))>>
    : std::true_type {};

template <class P, class = void>
struct scores_tokens : std::true_type {};
template <class P>
struct scores_tokens<P, std::void_t<decltype(P::kScoresTokens)>> : std::bool_constant<P::kScoresTokens> {};

// Run-time forms (type-erased wrappers): `bool scores_tokens() const`, `bool wants_appends() const`.
template <class P, class = void>
struct has_wants_appends_fn : std::false_type {};
template <class P>
struct has_wants_appends_fn<P, std::void_t<decltype(static_cast<bool>(std::declval<const P&>().wants_appends()))>>
    : std::true_type {};

template <class P, class = void>
struct has_scores_tokens_fn : std::false_type {};
template <class P>
struct has_scores_tokens_fn<P, std::void_t<decltype(static_cast<bool>(std::declval<const P&>().scores_tokens()))>>
    : std::true_type {};

}  // namespace policy_traits

/// True when `P` satisfies the required part of the contract for storage type `T` (a trait
/// class, so std::conjunction can short-circuit it in constraints).
template <class P, class T = float>
struct is_policy
    : std::conjunction<policy_traits::has_name<P>, policy_traits::has_plan<P>, policy_traits::has_score<P, T>,
                       std::is_copy_constructible<P>> {};
template <class P, class T = float>
inline constexpr bool is_policy_v = is_policy<P, T>::value;

#if defined(__cpp_concepts) && __cpp_concepts >= 201907L
/// C++20: the same contract as a concept.
template <class P, class T = float>
concept eviction_policy = is_policy_v<P, T>;
#endif

/// Fails compilation with a message naming the missing member; `true` otherwise.
template <class P, class T>
constexpr bool check_policy() {
  static_assert(policy_traits::has_name<P>::value,
                "lagkv policy: missing `static constexpr const char* kName` (see policy/policy.hpp)");
  static_assert(policy_traits::has_plan<P>::value,
                "lagkv policy: missing `void plan(const layer_info&, compress_reason, layer_plan&) const`");
  static_assert(policy_traits::has_score<P, T>::value,
                "lagkv policy: missing `template <class T> void score(const head_data<T>&, const compress_plan&, "
                "index_t chunk, score_t* out) const` for this storage type");
  static_assert(std::is_copy_constructible_v<P>, "lagkv policy: must be copy-constructible (one copy per layer)");
  return true;
}

// ---- Calling the optional hooks -------------------------------------------------------------

namespace policy_ops {

template <class P>
void validate(const P& p, const cache_shape& s) {
  if constexpr (policy_traits::has_validate<P>::value) p.validate(s);
}
template <class P>
void bind(P& p, const cache_shape& s, index_t layer) {
  if constexpr (policy_traits::has_bind<P>::value) p.bind(s, layer);
}
template <class P>
void validate_append(const P& p, const layer_info& l, index_t tokens, const append_extras& x) {
  if constexpr (policy_traits::has_validate_append<P>::value) p.validate_append(l, tokens, x);
}
template <class T, class P>
void on_append(P& p, const head_data<T>& h, index_t first, index_t count, const append_extras& x) noexcept {
  if constexpr (policy_traits::has_on_append<P, T>::value) p.on_append(h, first, count, x);
}
/// Scores of every chunk of `plan`: the policy's score_region when it has one (one pass over
/// the region), else score() chunk by chunk.
template <class T, class P>
void score_region(const P& p, const head_data<T>& h, const compress_plan& plan, score_t* out) noexcept {
  if constexpr (policy_traits::has_score_region<P, T>::value) {
    p.score_region(h, plan, out);
  } else {
    for (index_t c = 0; c < plan.chunks; ++c) p.score(h, plan, c, out + c * plan.chunk);
  }
}
template <class P>
void on_compact(P& p, index_t head, const compaction& c) noexcept {
  if constexpr (policy_traits::has_on_compact<P>::value) p.on_compact(head, c);
}
template <class P>
bool shares_heads(const P& p) {
  if constexpr (policy_traits::has_shares_heads<P>::value) return p.shares_heads();
  return false;
}
/// Whether on_append needs calling at all (false for policies without the hook).
template <class T, class P>
bool wants_appends(const P& p) {
  if constexpr (policy_traits::has_wants_appends_fn<P>::value) return p.wants_appends();
  return policy_traits::has_on_append<P, T>::value;
}
template <class P>
bool scores_tokens(const P& p) {
  if constexpr (policy_traits::has_scores_tokens_fn<P>::value) return p.scores_tokens();
  return policy_traits::scores_tokens<P>::value;
}

}  // namespace policy_ops
}  // namespace lagkv
