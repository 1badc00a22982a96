#pragma once
/// \file engine.hpp
/// \brief tiny_llm: a small inference engine for the byte-level Llama-style model of this
/// directory (FORMAT.md), whose K/V live in a lagkv::kv_cache — the integration example.
///
/// The model part (loading, RMSNorm, RoPE, SwiGLU, Eigen matmuls) is ordinary. What an engine
/// must do differently to put a *compressing* cache under its attention is marked `lagkv:`:
///  1. size the cache for its peak, not its final length: an append writes before the policy
///     compresses, so a layer briefly holds its kept tokens plus the new chunk;
///  2. give a new token the position tokens_seen(), never the cache length: after an eviction
///     the cache is shorter than the sequence, and using its length would shift RoPE;
///  3. rotate keys at their position *before* appending them: the cache stores post-RoPE keys
///     and keeps each one's rotation (positions() tells which position that was);
///  4. attend over the cache's current views plus the chunk's own rows, then append: the
///     chunk's tokens see each other causally, and the policy compresses only after the append;
///  5. hand the attention probabilities to append(): H2O accumulates them (other policies
///     ignore them), and the engine has just computed them anyway.
///
/// Thread safety: a `model` is read-only after load() and may be shared by any number of
/// threads; a `session` (one sequence: cache + scratch) belongs to one thread at a time.

#include <lagkv/cache.hpp>
#include <lagkv/dtype.hpp>
#include <lagkv/error.hpp>
#include <lagkv/widen.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

namespace tiny_llm {

using lagkv::index_t;
using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using row_vector = Eigen::RowVectorXf;

/// \brief The header of tiny_llm.bin (FORMAT.md).
struct config {
  index_t n_layers = 0, d_model = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, ffn_dim = 0, vocab = 0, max_ctx = 0;
  float rope_base = 0.0f, rms_eps = 0.0f;
  index_t group() const { return n_heads / n_kv_heads; }  ///< query heads per KV head (GQA)
};

/// \brief One decoder layer. Projections that read the same input are stacked so each is one GEMM.
struct layer_weights {
  row_vector attn_norm, ffn_norm;
  matrix wqkv;       ///< [(n_heads + 2*n_kv_heads) * head_dim, d_model]: wq, wk, wv stacked
  matrix wo;         ///< [d_model, n_heads * head_dim]
  matrix w_gate_up;  ///< [2 * ffn_dim, d_model]: w_gate, w_up stacked
  matrix w_down;     ///< [d_model, ffn_dim]
};

/// \brief The weights, in float32 (the file stores fp16; 820k weights is 3.3 MB as float).
class model {
 public:
  /// \brief Loads and validates tiny_llm.bin.
  /// \throws lagkv::error naming the file and the offending field for an unreadable file, a
  /// bad magic/version/flags/dtype, an implausible shape, a size that does not match the
  /// header, or a non-finite weight.
  static model load(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    LAGKV_CHECK(f.good(), "model=", path, ": cannot open");
    const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const auto size = static_cast<index_t>(bytes.size());
    LAGKV_CHECK(size >= kHeaderBytes, "model=", path, ": size=", size, " bytes, shorter than the 64-byte header");
    // Explicit little-endian decoding: the file's byte order, whatever the host's.
    const auto u32 = [&](index_t off) {
      return static_cast<std::uint32_t>(bytes[off]) | static_cast<std::uint32_t>(bytes[off + 1]) << 8 |
             static_cast<std::uint32_t>(bytes[off + 2]) << 16 | static_cast<std::uint32_t>(bytes[off + 3]) << 24;
    };
    const auto f32 = [&](index_t off) {
      const std::uint32_t u = u32(off);
      float x;
      std::memcpy(&x, &u, sizeof x);
      return x;
    };
    LAGKV_CHECK(std::memcmp(bytes.data(), "TLLM", 4) == 0, "model=", path, ": magic=0x", std::hex, u32(0),
                ": not a tiny_llm.bin file (expected \"TLLM\")");
    LAGKV_CHECK(u32(4) == 1, "model=", path, ": version=", u32(4), ": only version 1 is supported");
    model m;
    config& c = m.cfg_;
    const char* names[] = {"n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab", "max_ctx"};
    index_t* fields[] = {&c.n_layers, &c.d_model, &c.n_heads, &c.n_kv_heads, &c.head_dim, &c.ffn_dim, &c.vocab, &c.max_ctx};
    for (int i = 0; i < 8; ++i) {
      const auto v = static_cast<std::int32_t>(u32(8 + 4 * i));
      // The upper bound only keeps the size arithmetic below far from overflow.
      LAGKV_CHECK(v >= 1 && v <= (1 << 20), "model=", path, ": ", names[i], "=", v, ": must be in [1, 2^20]");
      *fields[i] = v;
    }
    c.rope_base = f32(40);
    c.rms_eps = f32(44);
    LAGKV_CHECK(std::isfinite(c.rope_base) && c.rope_base > 1.0f, "model=", path, ": rope_base=", c.rope_base,
                ": must be finite and > 1");
    LAGKV_CHECK(std::isfinite(c.rms_eps) && c.rms_eps > 0.0f, "model=", path, ": rms_eps=", c.rms_eps,
                ": must be finite and > 0");
    LAGKV_CHECK((u32(48) & 1u) == 1u, "model=", path, ": flags=", u32(48), ": bit 0 (tied LM head) must be set");
    LAGKV_CHECK(u32(52) == 1, "model=", path, ": dtype=", u32(52), ": only 1 (fp16 weights) is supported");
    LAGKV_CHECK(c.vocab == 256, "model=", path, ": vocab=", c.vocab, ": must be 256 (one token per byte)");
    LAGKV_CHECK(c.head_dim % 2 == 0, "model=", path, ": head_dim=", c.head_dim, ": must be even (RoPE pairs)");
    LAGKV_CHECK(c.n_heads % c.n_kv_heads == 0, "model=", path, ": n_heads=", c.n_heads,
                ": must be a multiple of n_kv_heads=", c.n_kv_heads);

    const index_t d = c.d_model, qd = c.n_heads * c.head_dim, kvd = c.n_kv_heads * c.head_dim, ff = c.ffn_dim;
    const index_t per_layer = 2 * d + qd * d + 2 * kvd * d + d * qd + 3 * ff * d;
    const index_t weights = c.vocab * d + c.n_layers * per_layer + d;
    LAGKV_CHECK(size == kHeaderBytes + 2 * weights, "model=", path, ": size=", size,
                " bytes, but the header's shape needs 64 + 2*", weights, " = ", kHeaderBytes + 2 * weights);

    index_t off = kHeaderBytes;
    const auto read = [&](index_t rows, index_t cols, const char* what) {
      matrix w(rows, cols);
      for (index_t i = 0; i < rows * cols; ++i, off += 2) {
        const lagkv::f16 h{static_cast<std::uint16_t>(bytes[off] | bytes[off + 1] << 8)};
        w.data()[i] = lagkv::to_float(h);
        LAGKV_CHECK(std::isfinite(w.data()[i]), "model=", path, ": tensor ", what, " element ", i, " is not finite");
      }
      return w;
    };
    const auto stack = [](const matrix& a, const matrix& b) {
      matrix s(a.rows() + b.rows(), a.cols());
      s << a, b;
      return s;
    };
    m.embed_ = read(c.vocab, d, "embed");
    m.layers_.resize(static_cast<std::size_t>(c.n_layers));
    for (layer_weights& l : m.layers_) {
      l.attn_norm = read(1, d, "attn_norm");
      const matrix wq = read(qd, d, "wq"), wk = read(kvd, d, "wk"), wv = read(kvd, d, "wv");
      l.wqkv = stack(stack(wq, wk), wv);
      l.wo = read(d, qd, "wo");
      l.ffn_norm = read(1, d, "ffn_norm");
      const matrix gate = read(ff, d, "w_gate"), up = read(ff, d, "w_up");
      l.w_gate_up = stack(gate, up);
      l.w_down = read(d, ff, "w_down");
    }
    m.final_norm_ = read(1, d, "final_norm");
    return m;
  }

  const config& cfg() const { return cfg_; }
  const matrix& embed() const { return embed_; }
  const layer_weights& layer(index_t l) const { return layers_[static_cast<std::size_t>(l)]; }
  const row_vector& final_norm() const { return final_norm_; }

 private:
  static constexpr index_t kHeaderBytes = 64;
  config cfg_;
  matrix embed_;  // [vocab, d_model]; also the LM head (tied)
  std::vector<layer_weights> layers_;
  row_vector final_norm_;
};

/// \brief One sequence: a KV cache of storage type `T` (float, lagkv::f16, lagkv::bf16) with
/// eviction policy `Policy` (any_policy: chosen at run time), and the forward pass over it.
template <class T, class Policy = lagkv::any_policy>
class session {
 public:
  /// \param capacity slots per (layer, KV head): the most the cache may hold at its peak
  /// (lagkv: kept tokens + the largest append; the tokens of the whole sequence always suffice).
  /// \throws lagkv::error for a bad capacity or a policy that rejects the shape.
  session(const model& m, index_t capacity, Policy policy = Policy{})
      : m_(&m), cache_(cache_config(m.cfg(), capacity), std::move(policy)) {}

  /// \brief Runs `n` tokens (a prefill chunk, or 1 when decoding) through the model, appending
  /// their K/V to the cache. \return the logits of each of them, [n, vocab] (valid until the
  /// next call). \throws lagkv::error (session unchanged) when the cache has no room for them.
  const matrix& forward(const std::uint8_t* tokens, index_t n) {
    const config& c = m_->cfg();
    LAGKV_CHECK(n >= 1, "n=", n, ": must be >= 1");
    // Checked up front so that a full cache fails before any layer has appended.
    for (index_t l = 0; l < c.n_layers; ++l)
      LAGKV_CHECK(cache_.max_length(l) + n <= cache_.config().capacity, "tokens=", n, ": the cache of layer ", l,
                  " holds ", cache_.max_length(l), " of capacity=", cache_.config().capacity,
                  " slots; give the session a larger capacity");
    // lagkv: the chunk's first position is the number of tokens seen, not the cache length.
    const index_t p0 = cache_.tokens_seen(0);
    rope_table(p0, n);
    x_.resize(n, c.d_model);
    for (index_t i = 0; i < n; ++i) x_.row(i) = m_->embed().row(tokens[i]);
    for (index_t l = 0; l < c.n_layers; ++l) {
      const layer_weights& w = m_->layer(l);
      rmsnorm(x_, w.attn_norm, a_);
      qkv_.noalias() = a_ * w.wqkv.transpose();  // [n, q | k | v]
      // lagkv: keys are rotated at their original positions before they enter the cache.
      for (index_t h = 0; h < c.n_heads + c.n_kv_heads; ++h) rope(h * c.head_dim);
      attend_and_append(l);
      x_.noalias() += attn_ * w.wo.transpose();
      rmsnorm(x_, w.ffn_norm, a_);
      gu_.noalias() = a_ * w.w_gate_up.transpose();
      const auto g = gu_.leftCols(c.ffn_dim).array();
      h_ = (g / (1.0f + (-g).exp()) * gu_.rightCols(c.ffn_dim).array()).matrix();  // SwiGLU
      x_.noalias() += h_ * w.w_down.transpose();
    }
    rmsnorm(x_, m_->final_norm(), a_);
    logits_.noalias() = a_ * m_->embed().transpose();  // tied LM head
    return logits_;
  }

  /// \brief Prefills `tokens` in appends of at most `chunk` tokens (the cache compresses after
  /// each, so later chunks attend over the compressed cache). \return the last token's logits.
  row_vector prefill(const std::vector<std::uint8_t>& tokens, index_t chunk) {
    LAGKV_CHECK(!tokens.empty(), "tokens: the prompt must not be empty");
    LAGKV_CHECK(chunk >= 1, "chunk=", chunk, ": must be >= 1");
    const auto n = static_cast<index_t>(tokens.size());
    for (index_t i = 0; i < n; i += chunk) forward(tokens.data() + i, std::min(chunk, n - i));
    return logits_.bottomRows(1);
  }

  /// \brief Appends one token; \return the logits predicting the next one.
  row_vector step(std::uint8_t token) { return forward(&token, 1).row(0); }

  lagkv::kv_cache<T, Policy>& cache() { return cache_; }
  const lagkv::kv_cache<T, Policy>& cache() const { return cache_; }
  /// Tokens seen so far (the position of the next token).
  index_t position() const { return cache_.tokens_seen(0); }

 private:
  static lagkv::cache_config cache_config(const config& c, index_t capacity) {
    lagkv::cache_config cc;
    cc.layers = c.n_layers;
    cc.kv_heads = c.n_kv_heads;
    cc.head_dim = c.head_dim;
    cc.capacity = capacity;
    return cc;
  }

  void rmsnorm(const matrix& x, const row_vector& w, matrix& out) const {
    const float eps = m_->cfg().rms_eps;
    out.resize(x.rows(), x.cols());
    for (index_t i = 0; i < x.rows(); ++i) {
      const float ms = x.row(i).squaredNorm() / static_cast<float>(x.cols());
      out.row(i) = x.row(i).cwiseProduct(w) / std::sqrt(ms + eps);
    }
  }

  // cos/sin of positions p0 .. p0+n-1. The angle is formed in double (FORMAT.md): a float
  // t*inv_freq loses ~1e-4 rad by t ~ 1000, and the reference does the same.
  void rope_table(index_t p0, index_t n) {
    const index_t half = m_->cfg().head_dim / 2;
    cos_.resize(n, half);
    sin_.resize(n, half);
    for (index_t i = 0; i < half; ++i) {
      const double inv_freq = std::pow(static_cast<double>(m_->cfg().rope_base), -2.0 * static_cast<double>(i) /
                                                                                    static_cast<double>(2 * half));
      for (index_t t = 0; t < n; ++t) {
        const double theta = static_cast<double>(p0 + t) * inv_freq;
        cos_(t, i) = static_cast<float>(std::cos(theta));
        sin_(t, i) = static_cast<float>(std::sin(theta));
      }
    }
  }

  // NeoX "rotate half" RoPE on the head_dim columns of qkv_ starting at `col`.
  void rope(index_t col) {
    const index_t half = m_->cfg().head_dim / 2;
    auto x1 = qkv_.middleCols(col, half), x2 = qkv_.middleCols(col + half, half);
    r_.noalias() = x1.cwiseProduct(cos_) - x2.cwiseProduct(sin_);
    x2 = x2.cwiseProduct(cos_) + x1.cwiseProduct(sin_);
    x1 = r_;
  }

  using stride_map = lagkv::eigen_row_map<const float>;
  using prob_map = Eigen::Map<matrix, Eigen::Unaligned, Eigen::OuterStride<>>;

  // A float matrix over a cache view: the cache's own memory for contiguous fp32 rows (no
  // copy), else the rows widened into `scratch` (what an fp16/bf16 engine's kernel does on load).
  // (as_eigen_rows, not as_eigen: a compile-time unit inner stride lets Eigen vectorise the
  // decode GEMV, ~5x faster here than a run-time stride.)
  static stride_map as_float(const lagkv::kv_view<const T>& v, std::vector<float>& scratch) {
    if constexpr (std::is_same_v<T, float>) {
      if (v.rows_contiguous() && !v.is_paged()) return lagkv::as_eigen_rows(v);
    }
    scratch.resize(static_cast<std::size_t>(v.tokens() * v.head_dim()));
    lagkv::widen(v, scratch.data(), v.head_dim());
    return stride_map(scratch.data(), v.tokens(), v.head_dim(), Eigen::OuterStride<>(v.head_dim()));
  }

  void attend_and_append(index_t l) {
    const config& c = m_->cfg();
    const index_t n = qkv_.rows(), hd = c.head_dim, kvd = c.n_kv_heads * hd, qd = c.n_heads * hd;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

    // The new rows in the cache's storage type, [n, kv_heads, head_dim] (the "shd" layout).
    // Attention reads them back widened, so the chunk sees exactly what the cache will hold.
    k_new_.resize(static_cast<std::size_t>(n * kvd));
    v_new_.resize(k_new_.size());
    kv_f_.resize(n, 2 * kvd);
    for (index_t t = 0; t < n; ++t)
      for (index_t i = 0; i < kvd; ++i) {
        const auto at = static_cast<std::size_t>(t * kvd + i);
        k_new_[at] = lagkv::from_float<T>(qkv_(t, qd + i));
        v_new_[at] = lagkv::from_float<T>(qkv_(t, qd + kvd + i));
        kv_f_(t, i) = lagkv::to_float(k_new_[at]);
        kv_f_(t, kvd + i) = lagkv::to_float(v_new_[at]);
      }

    // Probabilities [n_heads, n, stride]: row (h, i) holds query i's weights over its KV head's
    // slots numbered as after the append (cached slots, then the chunk) — H2O's input format.
    const index_t stride = cache_.max_length(l) + n;
    probs_.resize(static_cast<std::size_t>(c.n_heads * n * stride));
    attn_.resize(n, qd);
    for (index_t j = 0; j < c.n_kv_heads; ++j) {
      // lagkv: attention reads the cache's current (compressed) views of this KV head.
      const stride_map kc = as_float(cache_.keys(l, j), k_scratch_);
      const stride_map vc = as_float(cache_.values(l, j), v_scratch_);
      const index_t m = kc.rows();
      const auto kn = kv_f_.middleCols(j * hd, hd), vn = kv_f_.middleCols(kvd + j * hd, hd);
      for (index_t h = j * c.group(); h < (j + 1) * c.group(); ++h) {
        const auto q = qkv_.middleCols(h * hd, hd);
        prob_map p(probs_.data() + h * n * stride, n, m + n, Eigen::OuterStride<>(stride));
        if (m > 0) p.leftCols(m).noalias() = (q * kc.transpose()) * scale;
        p.rightCols(n).noalias() = (q * kn.transpose()) * scale;
        for (index_t i = 0; i < n; ++i) {  // causal softmax: query i sees the cache and chunk rows 0..i
          auto row = p.row(i).head(m + i + 1);
          row = (row.array() - row.maxCoeff()).exp();
          row /= row.sum();
          p.row(i).tail(n - 1 - i).setZero();
        }
        auto out = attn_.middleCols(h * hd, hd);
        out.noalias() = p.rightCols(n) * vn;
        if (m > 0) out.noalias() += p.leftCols(m) * vc;
      }
    }

    // lagkv: append (the policy may compress this layer now), with the probabilities for H2O.
    lagkv::append_extras extras;
    extras.attention.q_heads = c.n_heads;
    extras.attention.probs = probs_.data();
    extras.attention.row_stride = stride;
    const lagkv::kv_input<T> k{k_new_.data(), n, lagkv::kv_layout::shd()};
    const lagkv::kv_input<T> v{v_new_.data(), n, lagkv::kv_layout::shd()};
    cache_.append(l, k, v, extras);
  }

  const model* m_;
  lagkv::kv_cache<T, Policy> cache_;
  // Scratch, reused across calls so a decode step allocates nothing once warm.
  matrix x_, a_, qkv_, attn_, gu_, h_, logits_, cos_, sin_, r_, kv_f_;
  std::vector<T> k_new_, v_new_;
  std::vector<float> probs_, k_scratch_, v_scratch_;
};

/// Index of the largest logit (greedy decoding); ties pick the lower byte.
inline std::uint8_t argmax(const row_vector& logits) {
  index_t best = 0;
  logits.maxCoeff(&best);
  return static_cast<std::uint8_t>(best);
}

}  // namespace tiny_llm
