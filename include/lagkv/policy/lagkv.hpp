#pragma once
/// \file policy/lagkv.hpp
/// \brief LagKV eviction (Liang et al., "LagKV: Lag-Relative Information of the KV Cache Tells
/// Which Tokens Are Important", arXiv 2504.04704) with the authors' schedule.
///
/// Per head, the first `sink` slots are never evicted and a prefix of already-compressed slots
/// follows them (initially empty). Whenever a head holds `compressed + 2*lag` slots or more,
/// every complete chunk of `lag` slots after the compressed prefix except the last is scored
/// against the chunk after it (score/lagkv.hpp) and keeps its floor(ratio*lag) best slots; the
/// last full chunk plus the remainder is the tail, kept as is. Compressed slots are never
/// rescored. Defaults are the authors': sink 16, lag 1024, ratio 0.5, score_v_ratio 1.
/// This reproduces the golden trajectories in ../shared/golden/lagkv exactly.

#include <algorithm>
#include <utility>
#include <vector>

#include "lagkv/policy/policy.hpp"
#include "lagkv/score/lagkv.hpp"
#include "lagkv/simd/dispatch.hpp"

namespace lagkv {

/// \brief LagKV's chunk schedule for one head: what to compress when it holds `length` slots
/// of which [0, compressed) are sink + already-compressed slots.
inline compress_plan lagkv_chunk_plan(index_t length, index_t compressed, index_t lag, index_t keep) noexcept {
  compress_plan plan;
  if (length >= compressed + 2 * lag) {
    plan.begin = compressed;
    plan.chunks = (length - compressed) / lag - 1;
    plan.chunk = lag;
    plan.keep = keep;
  }
  return plan;
}

/// \brief The LagKV policy (see file comment). Per-head state: the compressed prefix length.
class lagkv_policy : public policy_base {
 public:
  static constexpr const char* kName = "lagkv";

  /// \throws lagkv::error when `params` are invalid (lag >= 2, ratio in (0, 1], sink >= 0).
  explicit lagkv_policy(const lagkv_params& params = {}) : p_(params) { p_.validate(); }

  const lagkv_params& params() const { return p_; }

  /// \throws lagkv::error for head_dim < 2 (std over channels needs two).
  /// \throws lagkv::error for a bad LAGKV_SIMD too: the kernel choice is resolved here, before
  /// the cache mutates, because scoring runs inside the cache's noexcept compaction phase.
  void validate(const cache_shape& s) const {
    p_.validate();
    check_lagkv_head_dim(s.head_dim);
    (void)simd::active_target();
  }
  /// Per-head state, and the scorer's scratch for chunks of `lag` rows (a head never holds more
  /// than `capacity`), so scoring allocates nothing later. \throws std::bad_alloc.
  void bind(const cache_shape& s, index_t /*layer*/) {
    std::vector<index_t> compressed(static_cast<std::size_t>(s.kv_heads), p_.sink);
    scratch_.reserve(s.type, std::min(p_.lag, s.capacity), s.head_dim, !s.rows_contiguous);
    compressed_ = std::move(compressed);
  }

  void plan(const layer_info& layer, compress_reason, layer_plan& out) const noexcept {
    const index_t keep = p_.keep_per_chunk();
    for (index_t h = 0; h < layer.kv_heads; ++h)
      out.heads[h] = lagkv_chunk_plan(layer.lengths[h], compressed_[static_cast<std::size_t>(h)], p_.lag, keep);
  }

  /// Chunk c is scored against the `lag` slots that follow it (its lag reference).
  template <class T>
  void score(const head_data<T>& head, const compress_plan& plan, index_t c, score_t* out) const noexcept {
    const index_t start = plan.begin + c * plan.chunk;
    kv_view<const T> v_chunk, v_ref;
    if (p_.score_v_ratio != 0.0) {
      v_chunk = head.values.slice(start, p_.lag);
      v_ref = head.values.slice(start + p_.lag, p_.lag);
    }
    dispatch::lagkv_chunk_scores<T>(head.keys.slice(start, p_.lag), head.keys.slice(start + p_.lag, p_.lag), v_chunk,
                                    v_ref, p_.score_v_ratio, out, scratch_);
  }

  /// All chunks of the plan in one sweep: chunk c+1's min/max is taken while it is being scored
  /// as a reference and is still in cache, so each slot comes from memory once.
  template <class T>
  void score_region(const head_data<T>& head, const compress_plan& plan, score_t* out) const noexcept {
    const index_t span = (plan.chunks + 1) * p_.lag;
    const kv_view<const T> values = p_.score_v_ratio != 0.0 ? head.values.slice(plan.begin, span) : kv_view<const T>();
    dispatch::lagkv_sequence_scores<T>(head.keys.slice(plan.begin, span), values, p_.lag, plan.chunks,
                                       p_.score_v_ratio, out, scratch_);
  }

  void on_compact(index_t head, const compaction& c) noexcept {
    compressed_[static_cast<std::size_t>(head)] = c.begin + c.kept_count;
  }

  /// Sink + compressed prefix of `head` (slots never rescored).
  index_t compressed(index_t head) const { return compressed_[static_cast<std::size_t>(head)]; }

 private:
  lagkv_params p_;
  std::vector<index_t> compressed_;  // [kv_heads]
  // Scoring scratch, reserved in bind. Mutable: scoring is logically const, and a policy object
  // scores on one thread at a time (the cache's layer discipline), so it needs no lock.
  mutable simd::scratch scratch_;
};

}  // namespace lagkv
