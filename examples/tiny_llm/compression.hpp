#pragma once
/// \file compression.hpp
/// \brief How tiny-llm and lagkv-eval configure each policy so that every policy keeps the
/// same number of tokens at a given compression: "matched budgets".
///
/// For a nominal compression c (2, 4, 8):
///  - LagKV (and the chunked L2-norm, which shares its schedule) keeps lag/c tokens of every
///    scored chunk of `lag` (the paper's definition of the ratio), after `sink` leading tokens,
///    and leaves its last 1..2 chunks (the tail, < 2*lag tokens) uncompressed;
///  - the kept-token budget K of a prompt is what LagKV holds after prefilling it (computed from
///    the library's own schedule, lagkv_chunk_plan): K = sink + kept chunks + tail. Because of
///    the tail, K is a little above S/c: the table reports K next to each ratio;
///  - the budget policies (H2O, global L2-norm, random) keep K tokens: `sink` leading tokens,
///    `window` recent ones and the best-scored of the rest; StreamingLLM keeps the sink and
///    K - sink recent tokens. While decoding they evict every `lag` steps (interval = lag), so
///    that, like LagKV's growing tail, they hold between K and K + lag - 1 tokens.
/// Defaults: sink 16 (LagKV's), lag 32 (the largest power of two whose tail, < 2*lag, fits in
/// half of the 8x budget of a 1024-token context), window 32 (= lag: the recent tokens LagKV
/// never evicts), prefill appends of 32 tokens. One setting for every policy and ratio.

#include <lagkv/cache.hpp>
#include <lagkv/policy/any.hpp>
#include <lagkv/policy/lagkv.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace tiny_llm {

/// Names of the policies the evaluation compares, in table order.
inline const std::vector<std::string>& eval_policies() {
  static const std::vector<std::string> names = {"none",      "lagkv",  "h2o",   "l2norm", "l2norm-chunked",
                                                 "streaming", "random"};
  return names;
}

/// \brief One compression setting (see file comment).
struct compression {
  std::string policy = "lagkv";  ///< none|lagkv|h2o|l2norm|l2norm-chunked|streaming|random
  double ratio = 2.0;            ///< nominal compression c >= 1
  lagkv::index_t sink = 16;
  lagkv::index_t lag = 32;
  lagkv::index_t window = 32;    ///< recent tokens the scored budget policies never evict
  lagkv::index_t chunk = 32;     ///< prefill append size
  std::uint64_t seed = 0;        ///< random policy

  lagkv::index_t keep_per_chunk() const { return static_cast<lagkv::index_t>(static_cast<double>(lag) / ratio); }

  /// \brief The kept-token budget K for a prompt of `prompt_len` tokens appended `chunk` at a
  /// time: the length LagKV's schedule leaves after the last append.
  lagkv::index_t budget(lagkv::index_t prompt_len) const {
    lagkv::index_t length = 0, compressed = sink;
    for (lagkv::index_t done = 0; done < prompt_len; done += chunk) {
      length += std::min(chunk, prompt_len - done);
      const lagkv::compress_plan p = lagkv::lagkv_chunk_plan(length, compressed, lag, keep_per_chunk());
      length -= p.evicted();
      compressed += p.chunks * p.keep;
    }
    return length;
  }

  /// \brief The policy for a prompt of `prompt_len` tokens (its budget depends on the length).
  /// \throws lagkv::error for an unknown policy or invalid parameters.
  lagkv::any_policy make(lagkv::index_t prompt_len) const {
    LAGKV_CHECK(ratio >= 1.0, "ratio=", ratio, ": the compression must be >= 1");
    LAGKV_CHECK(keep_per_chunk() >= 1, "ratio=", ratio, ": keeps nothing of a chunk of lag=", lag);
    lagkv::policy_spec s;
    const lagkv::index_t k = budget(prompt_len);
    if (policy == "lagkv" || policy == "l2norm-chunked") {
      s.sink = sink;
      s.lag = lag;
      s.ratio = static_cast<double>(keep_per_chunk()) / static_cast<double>(lag);
    } else if (policy != "none") {
      // Short prompts: LagKV keeps everything, and so must the others (K may be < sink+window).
      s.sink = std::min(sink, k);
      s.window = policy == "streaming" ? k - *s.sink : std::min(window, k - *s.sink);
      s.budget = k;
      s.interval = lag;
      s.seed = seed;
    }
    return lagkv::make_policy(policy, s);
  }
};

}  // namespace tiny_llm
