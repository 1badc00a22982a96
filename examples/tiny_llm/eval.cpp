// lagkv-eval: what each eviction policy costs in answers, end to end on the tiny model.
//
// For every policy (full cache, LagKV, H2O, global and chunked L2-norm, StreamingLLM, random)
// at every compression (2x, 4x, 8x; all policies keep the same number of tokens, see
// compression.hpp):
//  - passkey exact match at 16 and 64 digits: --n prompts per cell from passkey.py's standard
//    suite (depths (i + 0.5) / n, prompt length max_ctx - digits so prompt + answer fit the
//    trained context), prefilled in chunks with the cache compressing as it goes, then the
//    answer decoded greedily;
//  - perplexity on heldout.txt (never trained on): --ppl-windows windows of max_ctx bytes,
//    fed one token at a time (decode), the cache compressing during decode.
// With --prompts FILE (JSON Lines {"prompt": "...", "answer": "..."}) it reports exact match
// on those prompts instead. Prints a markdown table, writes table.md, results.csv and
// accuracy.png (gnuplot) to --out. Results do not depend on --threads.
#include "compression.hpp"
#include "engine.hpp"
#include "passkey.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

#ifndef TINY_LLM_DIR
#define TINY_LLM_DIR "."
#endif

// Where tiny_llm.bin is: $TINY_LLM_DIR (e.g. another checkpoint), else this source directory.
std::string model_dir() {
  const char* env = std::getenv("TINY_LLM_DIR");
  return env != nullptr && *env != '\0' ? env : TINY_LLM_DIR;
}

using lagkv::index_t;

const char* kUsage =
    "usage: lagkv-eval [--model tiny_llm.bin] [--out DIR] [--n 100] [--digits 16,64] [--ratios 2,4,8]\n"
    "                  [--policies none,lagkv,h2o,l2norm,l2norm-chunked,streaming,random]\n"
    "                  [--ppl-windows 16] [--ppl-len max_ctx] [--heldout heldout.txt] [--prompts FILE.jsonl]\n"
    "                  [--dtype fp32|fp16|bf16] [--threads N] [--sink 16] [--lag 32] [--window 32]\n"
    "                  [--chunk 32] [--no-plot]\n"
    "  --n            passkey prompts per cell (>= 100 for the README table)\n"
    "  --ppl-windows  held-out windows of --ppl-len bytes per cell (0: skip perplexity)\n"
    "  --prompts      JSON Lines {\"prompt\": ..., \"answer\": ...}: exact match on these instead\n";

struct options {
  std::string model = model_dir() + "/tiny_llm.bin";
  std::string heldout = std::string(TINY_LLM_DIR) + "/heldout.txt";
  std::string out = ".";
  std::string prompts;
  int n = 100;
  int ppl_windows = 16;
  long ppl_len = 0;  // 0: max_ctx
  std::vector<int> digits = {16, 64};
  std::vector<double> ratios = {2, 4, 8};
  std::vector<std::string> policies = tiny_llm::eval_policies();
  lagkv::dtype dtype = lagkv::dtype::f32;
  int threads = 0;
  bool plot = true;
  tiny_llm::compression base;
  std::string command;
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string part; std::getline(ss, part, ',');) out.push_back(part);
  return out;
}

long to_long(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  LAGKV_CHECK(!v.empty() && *end == '\0', flag, "=", v, ": not an integer");
  return x;
}
double to_double(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  LAGKV_CHECK(!v.empty() && *end == '\0', flag, "=", v, ": not a number");
  return x;
}

options parse(int argc, char** argv) {
  options o;
  for (int i = 0; i < argc; ++i) o.command += (i ? " " : "") + std::string(i ? argv[i] : "lagkv-eval");
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (a == "--no-plot") {
      o.plot = false;
      continue;
    }
    LAGKV_CHECK(i + 1 < argc, a, ": missing value (or unknown flag)\n", kUsage);
    const std::string v = argv[++i];
    if (a == "--model") o.model = v;
    else if (a == "--heldout") o.heldout = v;
    else if (a == "--out") o.out = v;
    else if (a == "--prompts") o.prompts = v;
    else if (a == "--n") o.n = static_cast<int>(to_long(a, v));
    else if (a == "--ppl-windows") o.ppl_windows = static_cast<int>(to_long(a, v));
    else if (a == "--ppl-len") o.ppl_len = to_long(a, v);
    else if (a == "--threads") o.threads = static_cast<int>(to_long(a, v));
    else if (a == "--sink") o.base.sink = to_long(a, v);
    else if (a == "--lag") o.base.lag = to_long(a, v);
    else if (a == "--window") o.base.window = to_long(a, v);
    else if (a == "--chunk") o.base.chunk = to_long(a, v);
    else if (a == "--digits") {
      o.digits.clear();
      for (const std::string& d : split(v)) o.digits.push_back(static_cast<int>(to_long(a, d)));
    } else if (a == "--ratios") {
      o.ratios.clear();
      for (const std::string& r : split(v)) o.ratios.push_back(to_double(a, r));
    } else if (a == "--policies") {
      o.policies = split(v);
    } else if (a == "--dtype") {
      LAGKV_CHECK(v == "fp32" || v == "fp16" || v == "bf16", "--dtype=", v, ": expected fp32, fp16 or bf16");
      o.dtype = v == "fp16" ? lagkv::dtype::f16 : v == "bf16" ? lagkv::dtype::bf16 : lagkv::dtype::f32;
    } else {
      lagkv::detail::throw_error(a, ": unknown flag\n", kUsage);
    }
  }
  LAGKV_CHECK(o.n >= 1, "--n=", o.n, ": must be >= 1");
  LAGKV_CHECK(o.ppl_windows >= 0, "--ppl-windows=", o.ppl_windows, ": must be >= 0");
  LAGKV_CHECK(o.ppl_len >= 0, "--ppl-len=", o.ppl_len, ": must be >= 0");
  LAGKV_CHECK(o.base.chunk >= 1, "--chunk=", o.base.chunk, ": must be >= 1");
  for (int d : o.digits) LAGKV_CHECK(d >= 1, "--digits entry=", d, ": must be >= 1");
  for (double r : o.ratios) LAGKV_CHECK(r >= 1.0, "--ratios entry=", r, ": must be >= 1");
  for (const std::string& p : o.policies) {  // fail now, not after minutes of work
    tiny_llm::compression c = o.base;
    c.policy = p;
    for (double r : o.ratios) c.ratio = r, c.make(1024);
  }
  if (o.threads <= 0) o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return o;
}

// ---- External prompts: a minimal JSON reader, enough for one flat object per line ----------

struct json_line {
  const std::string& s;
  std::size_t i = 0;
  int line;
  const std::string& file;

  [[noreturn]] void fail(const char* why) const {
    lagkv::detail::throw_error("--prompts=", file, " line ", line, " column ", i + 1, ": ", why);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) ++i;
  }
  void expect(char c) {
    ws();
    if (i >= s.size() || s[i] != c) fail((std::string("expected '") + c + "'").c_str());
    ++i;
  }
  unsigned hex4() {
    if (i + 4 > s.size()) fail("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i++];
      u <<= 4;
      if (c >= '0' && c <= '9') u |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') u |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') u |= static_cast<unsigned>(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return u;
  }
  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (i >= s.size()) fail("unterminated string");
      const char c = s[i++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;  // UTF-8 bytes pass through: tokens are bytes
        continue;
      }
      if (i >= s.size()) fail("unterminated escape");
      switch (s[i++]) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= s.size() && s[i] == '\\' && s[i + 1] == 'u') {
            i += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  }
  void skip_value() {  // numbers, literals, nested arrays/objects of fields we do not use
    ws();
    if (i >= s.size()) fail("missing value");
    if (s[i] == '"') {
      string();
      return;
    }
    if (s[i] == '{' || s[i] == '[') {
      int depth = 0;
      do {
        if (i >= s.size()) fail("unterminated array/object");
        if (s[i] == '"') {
          string();
          continue;
        }
        depth += (s[i] == '{' || s[i] == '[') - (s[i] == '}' || s[i] == ']');
        ++i;
      } while (depth > 0);
      return;
    }
    const std::size_t start = i;
    while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ' ') ++i;
    if (i == start) fail("missing value");
  }
};

struct prompt_case {
  std::string prompt, answer;
};

std::vector<prompt_case> read_prompts(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LAGKV_CHECK(f.good(), "--prompts=", path, ": cannot open");
  std::vector<prompt_case> out;
  int line_no = 0;
  for (std::string line; std::getline(f, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json_line p{line, 0, line_no, path};
    prompt_case c;
    bool have_prompt = false, have_answer = false;
    p.expect('{');
    p.ws();
    if (p.i < line.size() && line[p.i] == '}') p.fail("empty object");
    while (true) {
      const std::string key = p.string();
      p.expect(':');
      if (key == "prompt") c.prompt = p.string(), have_prompt = true;
      else if (key == "answer") c.answer = p.string(), have_answer = true;
      else p.skip_value();
      p.ws();
      if (p.i < line.size() && line[p.i] == ',') {
        ++p.i;
        continue;
      }
      p.expect('}');
      break;
    }
    if (!have_prompt || !have_answer) p.fail("needs string fields \"prompt\" and \"answer\"");
    if (c.prompt.empty() || c.answer.empty()) p.fail("\"prompt\" and \"answer\" must not be empty");
    out.push_back(std::move(c));
  }
  LAGKV_CHECK(!out.empty(), "--prompts=", path, ": no prompts");
  return out;
}

// ---- Cells, jobs, workers --------------------------------------------------------------------

enum class task { passkey, perplexity, prompts };

struct cell {
  task kind;
  int digits = 0;       // passkey
  std::string policy;
  double ratio = 1.0;   // 1: the full cache
  int items = 0;
  // Results (under the mutex).
  int done = 0, correct = 0;
  double nll = 0.0, tokens = 0.0;       // perplexity
  double kept = 0.0, seq_len = 0.0;     // sums over items: tokens kept after the prompt, prompt length
  double held = 0.0;                    // perplexity: sum over windows of the mean tokens held per step
  double key_kept = 0.0;                // passkey: sum over items of the fraction of key bytes kept
};

struct context {
  const tiny_llm::model* m;
  const options* o;
  std::vector<std::uint8_t> heldout;
  std::vector<prompt_case> prompts;
  std::vector<cell> cells;
  std::mutex mu;
};

tiny_llm::compression setting(const context& ctx, const cell& c) {
  tiny_llm::compression comp = ctx.o->base;
  comp.policy = c.policy;
  comp.ratio = c.ratio;
  return comp;
}

// The longest head of any layer (every layer and head hold the same count with these policies).
template <class T>
index_t kept_tokens(const lagkv::kv_cache<T>& c) {
  index_t k = 0;
  for (index_t l = 0; l < c.config().layers; ++l) k = std::max(k, c.max_length(l));
  return k;
}

// Fraction of the answer's bytes still cached, over every layer and KV head, where byte i counts
// as kept when any copy of the answer in the prompt (starting at `copies`) kept its i-th byte:
// how much of the passkey a policy left for the model to copy, which exact match needs.
template <class T>
double fraction_kept(const lagkv::kv_cache<T>& c, const std::vector<index_t>& copies, index_t n) {
  if (copies.empty() || n == 0) return 0.0;
  index_t hit = 0, all = 0;
  std::vector<char> have(static_cast<std::size_t>(n));
  for (index_t l = 0; l < c.config().layers; ++l)
    for (index_t h = 0; h < c.config().kv_heads; ++h) {
      std::fill(have.begin(), have.end(), 0);
      for (index_t p : c.positions(l, h))
        for (index_t a : copies)
          if (p >= a && p < a + n) have[static_cast<std::size_t>(p - a)] = 1;
      for (char k : have) hit += k;
      all += n;
    }
  return static_cast<double>(hit) / static_cast<double>(all);
}

struct answer_result {
  bool match = false;
  index_t kept = 0;       // tokens kept after the prompt
  double key_kept = 0.0;  // fraction of the answer's bytes kept in some copy in the prompt (0 if absent)
};

// Greedy-decodes `answer.size()` bytes after `prompt`; stops at the first wrong byte (exact
// match is decided there).
template <class T>
answer_result answer(const context& ctx, const tiny_llm::compression& comp, const std::string& prompt,
                     const std::string& expected) {
  const std::vector<std::uint8_t> ids(prompt.begin(), prompt.end());
  const auto len = static_cast<index_t>(ids.size()), n = static_cast<index_t>(expected.size());
  tiny_llm::session<T> s(*ctx.m, len + n, comp.make(len));
  tiny_llm::row_vector logits = s.prefill(ids, comp.chunk);
  answer_result r;
  r.kept = kept_tokens(s.cache());
  std::vector<index_t> copies;
  for (std::size_t at = prompt.find(expected); !expected.empty() && at != std::string::npos;
       at = prompt.find(expected, at + 1))
    copies.push_back(static_cast<index_t>(at));
  r.key_kept = fraction_kept(s.cache(), copies, n);
  for (index_t i = 0; i < n; ++i) {
    const std::uint8_t next = tiny_llm::argmax(logits);
    if (next != static_cast<std::uint8_t>(expected[static_cast<std::size_t>(i)])) return r;
    if (i + 1 < n) logits = s.step(next);
  }
  r.match = true;
  return r;
}

struct window_result {
  double nll = 0.0;   // nats, summed over the window's predictions
  index_t kept = 0;   // tokens held at the end
  double held = 0.0;  // tokens held, averaged over the steps
};

// Negative log-likelihood of window `w` of the held-out text, decoded token by token.
template <class T>
window_result window_nll(const context& ctx, tiny_llm::compression comp, int w) {
  const index_t L = ctx.o->ppl_len;
  const auto total = static_cast<index_t>(ctx.heldout.size());
  const index_t windows = ctx.o->ppl_windows;
  const index_t start = windows == 1 ? 0 : w * (total - L - 1) / (windows - 1);
  const std::uint8_t* x = ctx.heldout.data() + start;
  comp.chunk = 1;  // the budget is what LagKV keeps when fed one token at a time
  tiny_llm::session<T> s(*ctx.m, L, comp.make(L));
  window_result r;
  for (index_t t = 0; t < L; ++t) {
    const tiny_llm::row_vector logits = s.step(x[t]);
    r.held += static_cast<double>(kept_tokens(s.cache())) / static_cast<double>(L);
    const double mx = logits.maxCoeff();
    const double lse = mx + std::log((logits.array() - static_cast<float>(mx)).exp().cast<double>().sum());
    r.nll += lse - static_cast<double>(logits(x[t + 1]));
  }
  r.kept = kept_tokens(s.cache());
  return r;
}

template <class T>
void run_item(context& ctx, std::size_t cell_index, int item) {
  const cell& c = ctx.cells[cell_index];
  const tiny_llm::compression comp = setting(ctx, c);
  bool ok = false;
  double nll = 0.0, tokens = 0.0, held = 0.0, key_kept = 0.0;
  index_t kept = 0, len = 0;
  if (c.kind == task::passkey) {
    const tiny_llm::passkey::sample s =
        tiny_llm::passkey::standard_case(item, c.items, c.digits, ctx.m->cfg().max_ctx - c.digits);
    const answer_result a = answer<T>(ctx, comp, s.prompt, s.key);
    ok = a.match;
    kept = a.kept;
    key_kept = a.key_kept;
    len = static_cast<index_t>(s.prompt.size());
  } else if (c.kind == task::prompts) {
    const prompt_case& p = ctx.prompts[static_cast<std::size_t>(item)];
    const answer_result a = answer<T>(ctx, comp, p.prompt, p.answer);
    ok = a.match;
    kept = a.kept;
    len = static_cast<index_t>(p.prompt.size());
  } else {
    const window_result w = window_nll<T>(ctx, comp, item);
    nll = w.nll;
    kept = w.kept;
    held = w.held;
    tokens = static_cast<double>(ctx.o->ppl_len);
    len = ctx.o->ppl_len;
  }
  std::lock_guard<std::mutex> lock(ctx.mu);
  cell& r = ctx.cells[cell_index];
  r.done += 1;
  r.correct += ok ? 1 : 0;
  r.nll += nll;
  r.tokens += tokens;
  r.kept += static_cast<double>(kept);
  r.seq_len += static_cast<double>(len);
  r.held += held;
  r.key_kept += key_kept;
}

std::string clock(double s) {
  char b[32];
  std::snprintf(b, sizeof b, "%d:%02d", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return b;
}

// Runs every (cell, item) on `threads` workers, each with its own sessions (caches), with a
// progress bar on stderr.
void run_all(context& ctx, int threads) {
  std::vector<std::pair<std::size_t, int>> jobs;
  for (std::size_t c = 0; c < ctx.cells.size(); ++c)
    for (int i = 0; i < ctx.cells[c].items; ++i) jobs.emplace_back(c, i);
  std::atomic<std::size_t> next{0}, finished{0};
  std::atomic<bool> failed{false};
  std::string failure;
  const auto worker = [&] {
    for (std::size_t j; !failed && (j = next++) < jobs.size();) {
      try {
        lagkv::visit_dtype(ctx.o->dtype, [&](auto tag) { run_item<decltype(tag)>(ctx, jobs[j].first, jobs[j].second); });
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(ctx.mu);
        failure = e.what();
        failed = true;
      }
      ++finished;
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  std::mutex bar_mu;
  std::condition_variable bar_cv;
  bool stop = false;
  const bool tty = isatty(2) != 0;
  std::thread bar([&] {
    int last_decile = -1;
    std::unique_lock<std::mutex> lock(bar_mu);
    while (true) {
      const bool last = stop;
      const std::size_t done = finished;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double frac = jobs.empty() ? 1.0 : static_cast<double>(done) / static_cast<double>(jobs.size());
      const double eta = done > 0 ? el * (1.0 - frac) / frac : 0.0;
      const int width = 40, fill = static_cast<int>(frac * width);
      if (tty || static_cast<int>(frac * 10) != last_decile || last) {
        last_decile = static_cast<int>(frac * 10);
        std::fprintf(stderr, "%s[%s%s] %3d%% %zu/%zu  elapsed %s  eta %s%s", tty ? "\r" : "",
                     std::string(static_cast<std::size_t>(fill), '#').c_str(),
                     std::string(static_cast<std::size_t>(width - fill), '.').c_str(), static_cast<int>(frac * 100),
                     done, jobs.size(), clock(el).c_str(), clock(eta).c_str(), tty && !last ? "" : "\n");
      }
      if (last) break;
      bar_cv.wait_for(lock, std::chrono::milliseconds(500), [&] { return stop; });
    }
  });
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(worker);
  for (std::thread& t : pool) t.join();
  {
    std::lock_guard<std::mutex> lock(bar_mu);
    stop = true;
  }
  bar_cv.notify_all();
  bar.join();
  LAGKV_CHECK(!failed, "evaluation failed: ", failure);
}

// ---- Reporting -------------------------------------------------------------------------------

std::string label(const std::string& policy) {
  if (policy == "none") return "full cache";
  if (policy == "lagkv") return "LagKV";
  if (policy == "h2o") return "H2O";
  if (policy == "l2norm") return "L2-norm (global)";
  if (policy == "l2norm-chunked") return "L2-norm (chunked)";
  if (policy == "streaming") return "StreamingLLM";
  if (policy == "random") return "random";
  return policy;
}

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}

const cell* find(const context& ctx, task k, int digits, const std::string& policy, double ratio) {
  for (const cell& c : ctx.cells)
    if (c.kind == k && c.digits == digits && c.policy == policy && (policy == "none" || c.ratio == ratio)) return &c;
  return nullptr;
}

double exact_match(const cell& c) { return 100.0 * c.correct / std::max(1, c.done); }
double perplexity(const cell& c) { return std::exp(c.nll / std::max(1.0, c.tokens)); }

std::string table(const context& ctx, double seconds, int threads) {
  const options& o = *ctx.o;
  std::ostringstream t;
  const bool ext = !ctx.prompts.empty();
  t << "| policy |";
  std::string rule = "|---|";
  const auto header = [&](const std::string& what) {
    for (double r : o.ratios) t << " " << what << " " << fmt("%g", r) << "× |", rule += "---:|";
  };
  if (ext) {
    header("EM");
  } else {
    for (int d : o.digits) header(std::to_string(d) + "-digit");
    if (o.ppl_windows > 0) header("ppl");
  }
  t << "\n" << rule << "\n";
  for (const std::string& p : o.policies) {
    t << "| " << label(p) << " |";
    const auto row = [&](task k, int digits, bool ppl) {
      for (double r : o.ratios) {
        const cell* c = find(ctx, k, digits, p, r);
        t << " " << (ppl ? fmt("%.3f", perplexity(*c)) : fmt("%.1f", exact_match(*c))) << " |";
      }
    };
    if (ext) {
      row(task::prompts, 0, false);
    } else {
      for (int d : o.digits) row(task::passkey, d, false);
      if (o.ppl_windows > 0) row(task::perplexity, 0, true);
    }
    t << "\n";
  }
  // What "2x" meant in tokens: the matched budget K (mean over prompts) and the real compression.
  t << "\nKept tokens per KV head after the prompt (mean; identical for every policy at a ratio):";
  for (double r : o.ratios) {
    const auto kept = [&](task k, int d, const char* what) {
      const cell* c = find(ctx, k, d, "lagkv", r);
      if (c == nullptr) {  // lagkv not evaluated: report the budget the others used
        for (const cell& x : ctx.cells)
          if (x.kind == k && x.digits == d && x.ratio == r) c = &x;
      }
      if (c == nullptr || c->done == 0) return;
      t << " " << what << " " << fmt("%.0f", c->kept / c->done) << "/" << fmt("%.0f", c->seq_len / c->done) << " ("
        << fmt("%.2f", c->seq_len / c->kept) << "×);";
    };
    t << "\n- " << fmt("%g", r) << "×:";
    if (ext) kept(task::prompts, 0, "prompts");
    for (int d : o.digits) kept(task::passkey, d, (std::to_string(d) + "-digit").c_str());
    if (o.ppl_windows > 0) kept(task::perplexity, 0, "ppl (end of window)");
  }
  if (!ext && o.ppl_windows > 0) {
    // The budget is matched at the end of a window; before that, LagKV (compressing from
    // sink + 2*lag tokens on) holds fewer tokens than the budget policies (evicting only once
    // they reach the budget). Shown so that the perplexity columns are read with it.
    t << "\n\nMean tokens held per KV head over the perplexity windows:";
    for (double r : o.ratios) {
      t << "\n- " << fmt("%g", r) << "×:";
      for (const std::string& p : o.policies) {
        const cell* c = find(ctx, task::perplexity, 0, p, r);
        t << " " << label(p) << " " << fmt("%.0f", c->held / std::max(1, c->done)) << ";";
      }
    }
  }
  if (!ext) {
    // Exact match needs every byte of the key: this says whether a policy failed by evicting
    // the key or kept it and the model still could not read it back.
    t << "\n\nPasskey bytes still cached after the prompt (% of the key's bytes kept in at least one of its two "
         "copies; mean over prompts, layers and KV heads):\n\n| policy |";
    std::string kr = "|---|";
    for (int d : o.digits)
      for (double r : o.ratios) t << " " << d << "-digit " << fmt("%g", r) << "× |", kr += "---:|";
    t << "\n" << kr;
    for (const std::string& p : o.policies) {
      t << "\n| " << label(p) << " |";
      for (int d : o.digits)
        for (double r : o.ratios) {
          const cell* c = find(ctx, task::passkey, d, p, r);
          t << " " << fmt("%.1f", 100.0 * c->key_kept / std::max(1, c->done)) << " |";
        }
    }
  }
  const tiny_llm::compression& b = o.base;
  t << "\n\nExact match in % (" << (ext ? std::to_string(ctx.prompts.size()) + " prompts" : std::to_string(o.n) + " passkey prompts")
    << " per cell); perplexity per byte on " << o.ppl_windows << " held-out windows of " << o.ppl_len
    << " bytes, decoded one token at a time. Full cache: same value in every column. Cache "
    << lagkv::dtype_name(o.dtype) << "; sink " << b.sink << " for every policy; LagKV / chunked L2-norm lag "
    << b.lag << " keeping lag/ratio per chunk; H2O, global L2-norm, random: window " << b.window
    << ", budget = LagKV's kept tokens, evicting every " << b.lag
    << " decode steps; StreamingLLM: sink + (budget - sink) recent. Prefill in appends of " << b.chunk
    << " tokens.\n\nCommand: `" << o.command << "` — " << fmt("%.1f", seconds / 60.0) << " min on " << threads
    << " threads.\n";
  return t.str();
}

void write_csv(const context& ctx, const std::string& path) {
  std::ofstream f(path);
  LAGKV_CHECK(f.good(), "--out: cannot write ", path);
  const tiny_llm::compression& b = ctx.o->base;
  f << "task,digits,policy,ratio,items,correct,exact_match,perplexity,kept_mean,held_mean,seq_len_mean,key_kept_pct,sink,"
       "lag,window,"
       "chunk,dtype\n";
  for (const cell& c : ctx.cells) {
    const char* kind = c.kind == task::passkey ? "passkey" : c.kind == task::prompts ? "prompts" : "perplexity";
    f << kind << "," << c.digits << "," << c.policy << "," << c.ratio << "," << c.done << "," << c.correct << ","
      << (c.kind == task::perplexity ? "" : fmt("%.2f", exact_match(c))) << ","
      << (c.kind == task::perplexity ? fmt("%.4f", perplexity(c)) : "") << "," << fmt("%.1f", c.kept / c.done) << ","
      << (c.kind == task::perplexity ? fmt("%.1f", c.held / c.done) : "") << "," << fmt("%.1f", c.seq_len / c.done) << ","
      << (c.kind == task::passkey ? fmt("%.1f", 100.0 * c.key_kept / c.done) : "") << "," << b.sink << "," << b.lag << "," << b.window << "," << b.chunk << ","
      << lagkv::dtype_name(ctx.o->dtype) << "\n";
  }
}

// accuracy.png: exact match vs compression, one line per policy, one panel per task.
void plot(const context& ctx, const std::string& dir) {
  const options& o = *ctx.o;
  std::vector<std::pair<task, int>> panels;
  if (!ctx.prompts.empty()) panels.emplace_back(task::prompts, 0);
  else
    for (int d : o.digits) panels.emplace_back(task::passkey, d);
  const std::string gp = dir + "/accuracy.gp";
  std::ofstream f(gp);
  LAGKV_CHECK(f.good(), "--out: cannot write ", gp);
  f << "set terminal pngcairo size " << 560 * panels.size() << ",520 font 'sans,10'\n"
    << "set output '" << dir << "/accuracy.png'\n"
    << "set multiplot layout 1," << panels.size() << " title 'tiny\\_llm: exact match vs KV-cache compression (same kept "
    << "tokens for every policy)'\n"
    << "set logscale x 2\nset xrange [1.8:9]\nset xtics (";
  for (std::size_t i = 0; i < o.ratios.size(); ++i) f << (i ? ", " : "") << "'" << o.ratios[i] << "x' " << o.ratios[i];
  f << ")\nset yrange [-2:102]\nset ylabel 'exact match (%)'\nset xlabel 'compression (LagKV keeps 1/c of each chunk; kept tokens: table.md)'\nset grid\n"
    << "set key outside below horizontal maxrows 3\n";
  for (const auto& [kind, digits] : panels) {
    f << "set title '" << (kind == task::prompts ? std::string("--prompts") : std::to_string(digits) + "-digit passkey")
      << "'\nplot ";
    bool first = true;
    for (const std::string& p : o.policies) {
      f << (first ? "" : ", ") << "'-' using 1:2 with linespoints lw 2 "
        << (p == "none" ? "dt 2 pt 0 " : "") << "title '" << label(p) << "'";
      first = false;
    }
    f << "\n";
    for (const std::string& p : o.policies) {
      for (double r : o.ratios) f << r << " " << exact_match(*find(ctx, kind, digits, p, r)) << "\n";
      f << "e\n";
    }
  }
  f << "unset multiplot\n";
  f.close();
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    std::fprintf(stderr, "lagkv-eval: gnuplot not found (Debian: apt-get install gnuplot-nox); plot script: %s\n",
                 gp.c_str());
    return;
  }
  const std::string cmd = "gnuplot '" + gp + "'";
  if (std::system(cmd.c_str()) != 0) std::fprintf(stderr, "lagkv-eval: gnuplot failed on %s\n", gp.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  try {
    options o = parse(argc, argv);
    const tiny_llm::model m = tiny_llm::model::load(o.model);
    if (o.ppl_len == 0) o.ppl_len = static_cast<long>(m.cfg().max_ctx);
    context ctx;
    ctx.m = &m;
    ctx.o = &o;
    const auto add = [&](task k, int digits, int items) {
      for (const std::string& p : o.policies)
        for (double r : o.ratios) {
          if (p == "none" && r != o.ratios.front()) continue;  // the full cache does not depend on the ratio
          cell c;
          c.kind = k;
          c.digits = digits;
          c.policy = p;
          c.ratio = p == "none" ? 1.0 : r;
          c.items = items;
          ctx.cells.push_back(c);
        }
    };
    if (!o.prompts.empty()) {
      ctx.prompts = read_prompts(o.prompts);
      add(task::prompts, 0, static_cast<int>(ctx.prompts.size()));
    } else {
      for (int d : o.digits) {
        LAGKV_CHECK(d < m.cfg().max_ctx / 4, "--digits entry=", d, ": too long for max_ctx=", m.cfg().max_ctx);
        add(task::passkey, d, o.n);
      }
      if (o.ppl_windows > 0) {
        std::ifstream f(o.heldout, std::ios::binary);
        LAGKV_CHECK(f.good(), "--heldout=", o.heldout, ": cannot open");
        ctx.heldout.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
        LAGKV_CHECK(static_cast<index_t>(ctx.heldout.size()) > o.ppl_len + 1, "--heldout=", o.heldout,
                    ": shorter than one window of --ppl-len + 1 = ", o.ppl_len + 1, " bytes");
        add(task::perplexity, 0, o.ppl_windows);
      }
    }
    std::fprintf(stderr, "lagkv-eval: %zu cells, %d threads, cache %s\n", ctx.cells.size(), o.threads,
                 lagkv::dtype_name(o.dtype));
    const auto t0 = std::chrono::steady_clock::now();
    run_all(ctx, o.threads);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    std::filesystem::create_directories(o.out);
    const std::string md = table(ctx, seconds, o.threads);
    std::fputs(md.c_str(), stdout);
    std::ofstream(o.out + "/table.md") << md;
    write_csv(ctx, o.out + "/results.csv");
    if (o.plot) plot(ctx, o.out);
    std::fprintf(stderr, "lagkv-eval: %.1f s; wrote %s/{table.md,results.csv%s}\n", seconds, o.out.c_str(),
                 o.plot ? ",accuracy.png" : "");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lagkv-eval: %s\n", e.what());
    return 1;
  }
}
