#pragma once
// A deliberately plain model of every lagkv policy, for one layer: each head is a vector of
// rows {position, K, V, accumulated attention}; compressing rebuilds the vector from a sorted
// pick. No views, no in-place moves, no shared code with the cache beyond the scalar LagKV
// scorer (the oracle) and random_policy::token_score (the hash that defines that policy).
#include <lagkv/dtype.hpp>
#include <lagkv/policy/any.hpp>
#include <lagkv/policy/random.hpp>
#include <lagkv/score/lagkv.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace lagkv_test {

using lagkv::index_t;

/// Everything any policy reads; `policy` is a make_policy name.
struct plain_config {
  std::string policy = "lagkv";
  index_t sink = 16, lag = 1024, window = 0, budget = 0, interval = 1, min_per_head = 0;
  double ratio = 0.5, score_v_ratio = 1.0;
  std::uint64_t seed = 0;
  bool share_heads = false;
  lagkv::gqa_reduce reduce = lagkv::gqa_reduce::sum;
  index_t layer = 0;

  lagkv::policy_spec spec() const {
    lagkv::policy_spec s;
    s.sink = sink;
    s.lag = lag;
    s.window = window;
    if (budget > 0) s.budget = budget;
    s.ratio = ratio;
    s.score_v_ratio = score_v_ratio;
    s.interval = interval;
    s.seed = seed;
    s.share_heads = share_heads;
    s.min_per_head = min_per_head;
    s.reduce = reduce;
    return s;
  }
  lagkv::any_policy make() const { return lagkv::make_policy(policy, spec()); }
  bool chunked() const { return policy == "lagkv" || policy == "l2norm-chunked"; }
  // Streaming is the budget schedule with budget = sink + window and nothing scored.
  index_t effective_budget() const { return policy == "streaming" ? sink + window : budget; }
};

template <class T>
struct plain_row {
  index_t pos = 0;
  std::vector<T> k, v;
  double acc = 0.0;
};

template <class T>
class plain_layer {
 public:
  plain_layer(plain_config cfg, index_t heads, index_t head_dim)
      : cfg_(std::move(cfg)), heads_(heads), d_(head_dim), rows_(static_cast<std::size_t>(heads)),
        compressed_(static_cast<std::size_t>(heads), cfg_.sink) {}

  /// k_new[h][i] / v_new[h][i]: rows of the new tokens. q (h2o): q[j][i] the query of head j
  /// for new token i.
  void append(const std::vector<std::vector<std::vector<T>>>& k_new,
              const std::vector<std::vector<std::vector<T>>>& v_new,
              const std::vector<std::vector<std::vector<float>>>& q = {}) {
    const index_t n = static_cast<index_t>(k_new[0].size());
    for (index_t h = 0; h < heads_; ++h) {
      auto& rows = rows_[static_cast<std::size_t>(h)];
      const index_t first = static_cast<index_t>(rows.size());
      for (index_t i = 0; i < n; ++i)
        rows.push_back(plain_row<T>{seen_ + i, k_new[static_cast<std::size_t>(h)][static_cast<std::size_t>(i)],
                                    v_new[static_cast<std::size_t>(h)][static_cast<std::size_t>(i)], 0.0});
      if (cfg_.policy == "h2o") accumulate(h, first, n, q);
    }
    seen_ += n;
    ++appends_;
    if (cfg_.chunked()) {
      for (index_t h = 0; h < heads_; ++h) compress_chunked(h);
    } else if (cfg_.policy != "none") {
      const bool ratio_mode = cfg_.effective_budget() == 0;
      if (ratio_mode ? n > 1 : (n > 1 || appends_ % cfg_.interval == 0)) compress_budget();
    }
  }

  index_t length(index_t h) const { return static_cast<index_t>(rows_[static_cast<std::size_t>(h)].size()); }
  std::vector<index_t> positions(index_t h) const {
    std::vector<index_t> p;
    for (const auto& r : rows_[static_cast<std::size_t>(h)]) p.push_back(r.pos);
    return p;
  }
  const std::vector<plain_row<T>>& rows(index_t h) const { return rows_[static_cast<std::size_t>(h)]; }

 private:
  // Higher first; equal scores: lower index first.
  static std::vector<index_t> top_k(const std::vector<float>& score, index_t k) {
    std::vector<index_t> idx(score.size());
    for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<index_t>(i);
    std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t b) {
      return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)];
    });
    idx.resize(static_cast<std::size_t>(k));
    std::sort(idx.begin(), idx.end());
    return idx;
  }

  float l2_score(const std::vector<T>& k) const {
    double ss = 0.0;
    for (const T& x : k) ss += static_cast<double>(lagkv::to_float(x)) * lagkv::to_float(x);
    return static_cast<float>(-std::sqrt(ss));
  }

  std::vector<float> scores(index_t h, index_t begin, index_t count) const {
    const auto& rows = rows_[static_cast<std::size_t>(h)];
    std::vector<float> s(static_cast<std::size_t>(count));
    for (index_t i = 0; i < count; ++i) {
      const auto& r = rows[static_cast<std::size_t>(begin + i)];
      if (cfg_.policy == "l2norm" || cfg_.policy == "l2norm-chunked")
        s[static_cast<std::size_t>(i)] = l2_score(r.k);
      else if (cfg_.policy == "h2o")
        s[static_cast<std::size_t>(i)] = static_cast<float>(r.acc);
      else if (cfg_.policy == "random")
        s[static_cast<std::size_t>(i)] = lagkv::random_policy::token_score(cfg_.seed, cfg_.layer, h, r.pos);
      else
        s[static_cast<std::size_t>(i)] = 0.0f;
    }
    return s;
  }

  std::vector<float> lagkv_scores(index_t h, index_t start) const {
    const auto& rows = rows_[static_cast<std::size_t>(h)];
    const index_t lag = cfg_.lag;
    std::vector<T> kc, kr, vc, vr;
    for (index_t i = 0; i < lag; ++i) {
      const auto& a = rows[static_cast<std::size_t>(start + i)];
      const auto& b = rows[static_cast<std::size_t>(start + lag + i)];
      kc.insert(kc.end(), a.k.begin(), a.k.end());
      vc.insert(vc.end(), a.v.begin(), a.v.end());
      kr.insert(kr.end(), b.k.begin(), b.k.end());
      vr.insert(vr.end(), b.v.begin(), b.v.end());
    }
    std::vector<float> s(static_cast<std::size_t>(lag));
    using V = lagkv::kv_view<const T>;
    lagkv::reference::lagkv_chunk_scores<T>(V(kc.data(), lag, d_, d_), V(kr.data(), lag, d_, d_),
                                            V(vc.data(), lag, d_, d_), V(vr.data(), lag, d_, d_),
                                            cfg_.score_v_ratio, s.data());
    return s;
  }

  void compress_chunked(index_t h) {
    auto& rows = rows_[static_cast<std::size_t>(h)];
    index_t& done = compressed_[static_cast<std::size_t>(h)];
    const index_t n = static_cast<index_t>(rows.size()), lag = cfg_.lag;
    if (n < done + 2 * lag) return;
    const index_t chunks = (n - done) / lag - 1;
    const auto keep = static_cast<index_t>(std::floor(cfg_.ratio * static_cast<double>(lag)));
    std::vector<plain_row<T>> out(rows.begin(), rows.begin() + done);
    for (index_t c = 0; c < chunks; ++c) {
      const index_t start = done + c * lag;
      const auto s = cfg_.policy == "lagkv" ? lagkv_scores(h, start) : scores(h, start, lag);
      for (index_t i : top_k(s, keep)) out.push_back(rows[static_cast<std::size_t>(start + i)]);
    }
    out.insert(out.end(), rows.begin() + done + chunks * lag, rows.end());
    rows = out;
    done += chunks * keep;
  }

  index_t target(index_t n) const {
    const index_t b = cfg_.effective_budget();
    if (b > 0) return std::min(n, b);
    const auto r = static_cast<index_t>(std::floor(cfg_.ratio * static_cast<double>(n)));
    return std::max(r, std::min(n, cfg_.sink + cfg_.window));
  }

  // Keep rows [0, sink), the picked region rows (region-relative indices), rows [n - window, n).
  void rebuild(index_t h, const std::vector<index_t>& picked) {
    auto& rows = rows_[static_cast<std::size_t>(h)];
    const index_t n = static_cast<index_t>(rows.size());
    std::vector<plain_row<T>> out(rows.begin(), rows.begin() + cfg_.sink);
    for (index_t i : picked) out.push_back(rows[static_cast<std::size_t>(cfg_.sink + i)]);
    out.insert(out.end(), rows.begin() + (n - cfg_.window), rows.end());
    rows = out;
  }

  void compress_budget() {
    const index_t protect = cfg_.sink + cfg_.window;
    if (!cfg_.share_heads) {
      for (index_t h = 0; h < heads_; ++h) {
        const index_t n = length(h), t = target(n);
        if (t >= n) continue;
        rebuild(h, top_k(scores(h, cfg_.sink, n - protect), t - protect));
      }
      return;
    }
    // AdaKV: every head keeps its guaranteed best; the rest of the layer total goes to the best
    // remaining candidates of any head, ordered by (score desc, head asc, index asc).
    index_t held = 0, total = 0;
    for (index_t h = 0; h < heads_; ++h) {
      held += length(h);
      total += cfg_.effective_budget() > 0 ? cfg_.effective_budget() : target(length(h));
    }
    if (held <= total) return;
    const index_t floor_total = std::max(cfg_.min_per_head, protect);
    struct cand {
      float score;
      index_t head, idx;
    };
    std::vector<cand> pool;
    std::vector<std::vector<index_t>> picked(static_cast<std::size_t>(heads_));
    index_t guaranteed = 0;
    for (index_t h = 0; h < heads_; ++h) {
      const index_t n = length(h), region = std::max<index_t>(n - protect, 0);
      const index_t g = std::min(floor_total - protect, region);
      guaranteed += std::min(n, protect) + g;
      if (region == 0) continue;
      const auto s = scores(h, cfg_.sink, region);
      std::vector<index_t> order(static_cast<std::size_t>(region));
      for (index_t i = 0; i < region; ++i) order[static_cast<std::size_t>(i)] = i;
      std::stable_sort(order.begin(), order.end(),
                       [&](index_t a, index_t b) { return s[static_cast<std::size_t>(a)] > s[static_cast<std::size_t>(b)]; });
      for (index_t r = 0; r < region; ++r) {
        const index_t i = order[static_cast<std::size_t>(r)];
        if (r < g)
          picked[static_cast<std::size_t>(h)].push_back(i);
        else
          pool.push_back(cand{s[static_cast<std::size_t>(i)], h, i});
      }
    }
    std::stable_sort(pool.begin(), pool.end(), [](const cand& a, const cand& b) {
      if (a.score != b.score) return a.score > b.score;
      if (a.head != b.head) return a.head < b.head;
      return a.idx < b.idx;
    });
    const index_t extra = std::clamp<index_t>(total - guaranteed, 0, static_cast<index_t>(pool.size()));
    for (index_t e = 0; e < extra; ++e)
      picked[static_cast<std::size_t>(pool[static_cast<std::size_t>(e)].head)].push_back(pool[static_cast<std::size_t>(e)].idx);
    for (index_t h = 0; h < heads_; ++h) {
      if (length(h) <= protect) continue;
      auto& p = picked[static_cast<std::size_t>(h)];
      std::sort(p.begin(), p.end());
      rebuild(h, p);
    }
  }

  void accumulate(index_t h, index_t first, index_t n, const std::vector<std::vector<std::vector<float>>>& q) {
    auto& rows = rows_[static_cast<std::size_t>(h)];
    const index_t q_heads = static_cast<index_t>(q.size()), group = q_heads / heads_;
    const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d_));
    for (index_t i = 0; i < n; ++i) {
      const index_t visible = first + i + 1;
      std::vector<double> best(static_cast<std::size_t>(visible), 0.0);
      for (index_t j = h * group; j < (h + 1) * group; ++j) {
        const auto& qv = q[static_cast<std::size_t>(j)][static_cast<std::size_t>(i)];
        std::vector<double> p(static_cast<std::size_t>(visible));
        double mx = -INFINITY, sum = 0.0;
        for (index_t s = 0; s < visible; ++s) {
          double dot = 0.0;
          for (index_t c = 0; c < d_; ++c)
            dot += static_cast<double>(qv[static_cast<std::size_t>(c)]) *
                   static_cast<double>(lagkv::to_float(rows[static_cast<std::size_t>(s)].k[static_cast<std::size_t>(c)]));
          p[static_cast<std::size_t>(s)] = dot * inv_sqrt_d;
          mx = std::fmax(mx, p[static_cast<std::size_t>(s)]);
        }
        for (auto& x : p) sum += (x = std::exp(x - mx));
        for (index_t s = 0; s < visible; ++s) {
          const double prob = p[static_cast<std::size_t>(s)] / sum;
          if (cfg_.reduce == lagkv::gqa_reduce::sum) rows[static_cast<std::size_t>(s)].acc += prob;
          if (cfg_.reduce == lagkv::gqa_reduce::mean)
            rows[static_cast<std::size_t>(s)].acc += prob / static_cast<double>(group);
          if (cfg_.reduce == lagkv::gqa_reduce::max)
            best[static_cast<std::size_t>(s)] = std::fmax(best[static_cast<std::size_t>(s)], prob);
        }
      }
      if (cfg_.reduce == lagkv::gqa_reduce::max)
        for (index_t s = 0; s < visible; ++s) rows[static_cast<std::size_t>(s)].acc += best[static_cast<std::size_t>(s)];
    }
  }

  plain_config cfg_;
  index_t heads_, d_;
  std::vector<std::vector<plain_row<T>>> rows_;
  std::vector<index_t> compressed_;
  index_t seen_ = 0, appends_ = 0;
};

/// Random append schedule summing to `total`: a prefill, then mostly single decode tokens with
/// occasional small chunks (fixed seed).
inline std::vector<index_t> random_schedule(std::uint32_t seed, index_t total) {
  std::mt19937 rng(seed);
  std::vector<index_t> steps;
  index_t left = total;
  const index_t prefill = std::uniform_int_distribution<index_t>(1, std::max<index_t>(1, total / 2))(rng);
  steps.push_back(prefill);
  left -= prefill;
  std::uniform_int_distribution<int> coin(0, 9);
  while (left > 0) {
    index_t n = coin(rng) < 8 ? 1 : std::uniform_int_distribution<index_t>(2, 24)(rng);
    n = std::min(n, left);
    steps.push_back(n);
    left -= n;
  }
  return steps;
}

/// [heads, tokens, head_dim] floats with per-token scale and a few outlier tokens, so scores
/// are spread out (fixed seed).
inline std::vector<float> random_kv(std::uint32_t seed, index_t heads, index_t tokens, index_t head_dim) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01;
  std::uniform_real_distribution<float> scale(0.5f, 1.5f);
  std::vector<float> x(static_cast<std::size_t>(heads * tokens * head_dim));
  for (index_t h = 0; h < heads; ++h)
    for (index_t t = 0; t < tokens; ++t) {
      const float s = scale(rng) * ((t * 7 + h) % 13 == 0 ? 3.0f : 1.0f);
      for (index_t c = 0; c < head_dim; ++c) x[static_cast<std::size_t>((h * tokens + t) * head_dim + c)] = s * n01(rng);
    }
  return x;
}

template <class T>
std::vector<T> convert(const std::vector<float>& x) {
  std::vector<T> out(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) out[i] = lagkv::from_float<T>(x[i]);
  return out;
}

/// Rows [first, first+n) of head h from an [H, S, D] array, as plain_layer::append wants them.
template <class T>
std::vector<std::vector<std::vector<T>>> rows_of(const T* x, index_t heads, index_t tokens, index_t head_dim,
                                                 index_t first, index_t n) {
  std::vector<std::vector<std::vector<T>>> out(static_cast<std::size_t>(heads));
  for (index_t h = 0; h < heads; ++h)
    for (index_t i = 0; i < n; ++i) {
      const T* row = x + (h * tokens + first + i) * head_dim;
      out[static_cast<std::size_t>(h)].emplace_back(row, row + head_dim);
    }
  return out;
}

/// Same for queries stored [Hq, S, D] as floats.
inline std::vector<std::vector<std::vector<float>>> queries_of(const std::vector<float>& q, index_t q_heads,
                                                               index_t tokens, index_t head_dim, index_t first,
                                                               index_t n) {
  return rows_of<float>(q.data(), q_heads, tokens, head_dim, first, n);
}

}  // namespace lagkv_test
