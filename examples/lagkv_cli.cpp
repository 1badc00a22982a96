// lagkv-cli: run any lagkv policy on .npy dumps of one layer's keys and values, through the
// same kv_cache an engine uses, and print JSON so results can be checked from outside.
//
//   lagkv-cli score  --policy P --k K.npy --v V.npy [policy flags]
//   lagkv-cli replay --policy P --k K.npy --v V.npy (--steps 300,1,1 | --steps-file F) [policy flags]
//
// See usage() for the exact semantics of each policy and of the JSON fields.
#include <lagkv/cache.hpp>
#include <lagkv/npy.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using lagkv::index_t;

const char* const kUsage = R"(lagkv-cli: KV-cache eviction policies on .npy dumps (one layer, [H, S, D]).

Usage:
  lagkv-cli score  --policy P --k K.npy --v V.npy [flags]
  lagkv-cli replay --policy P --k K.npy --v V.npy (--steps N,N,... | --steps-file F) [flags]
  lagkv-cli --help

K and V: [H, S, D] little-endian fp32 (<f4), fp16 (<f2) or bf16 bit patterns (<u2), same shape
and dtype; the cache runs in that dtype. score appends all S tokens at once; replay appends them
in the given step sizes (first a prefill, then e.g. 1 per decode step), which must sum to S.

Policies (--policy, default lagkv):
  lagkv           --sink S(16) --lag L(1024) --ratio R(0.5) --score-v-ratio W(1)
                  Compress whenever a head holds compressed + 2*L tokens or more: every full
                  chunk of L after the compressed prefix but the last keeps its floor(R*L) best
                  (LagKV score vs the next chunk); the last full chunk + remainder is the tail.
  l2norm-chunked  --sink S(16) --lag L(1024) --ratio R(0.5)
                  LagKV's schedule with score -||k||2 (low norm kept; the authors' l2_kv.py).
  l2norm          --ratio R(0.5) | --budget B, [--sink S(0)] [--window W(0)] [--interval N(1)]
                  Keep the sink, the window and the lowest-norm keys of the rest. --budget:
                  evict down to B after any append that leaves more than B. --ratio: after each
                  append of more than one token keep floor(n*R) (at least sink + window).
  h2o             --q Q.npy --budget B [--window W(0)] [--sink S(0)] [--interval N(1)]
                  Q: [H_q, S, D], H_q a multiple of H (query head j reads KV head j/(H_q/H)).
                  Each appended token's query attends causally (softmax(q.k/sqrt(D)), double)
                  over the cached slots and the new tokens up to itself; slots accumulate the
                  probabilities they receive, summed over the query heads of their KV head.
                  After an append leaving more than B slots: keep the sink, the last W slots
                  and the highest accumulated scores of the rest up to B (ties: older token).
  streaming       --sink S(4) --window W(1020) [--interval N(1)]
                  Keep the first S and the last W tokens; evict after any append exceeding S+W.
  random          --seed N(0) --ratio R(0.5) | --budget B, [--sink S(0)] [--window W(0)]
                  Like l2norm with a seeded score: hash(seed, layer 0, head, position).
  --interval N (budget policies): a step of one token evicts only if it is the N-th, 2N-th, ...
                  step (kvpress's DecodingPress: every N decode steps); longer steps always do.
  Ties in scores keep the lower original index.

Output (stdout, one JSON object; floats with 9 significant digits):
  score:  {"kept": [[...]], "cache_len": N, "chunk_scores": [[[...]]]}
    kept[h]           original indices kept in the scored region, ascending: lagkv and
                      l2norm-chunked: the scored chunks; l2norm, h2o, random: the tokens between
                      sink and window; streaming: always empty (it keeps sink + window only)
    cache_len         tokens per head after the compression (sink + kept + tail/window)
    chunk_scores[h]   lagkv, l2norm-chunked: [chunk][i] score of token sink + c*lag + i;
                      l2norm, h2o, random: one chunk, the scores of the region between sink and
                      window; streaming, or nothing compressed: []
  replay: {"lengths": [...], "final_positions": [[...]]}
    lengths[i]        tokens per head after step i
    final_positions   original indices cached at the end, per head, ascending

Exit status: 0 ok, 1 bad input (file, shape, parameter), 2 bad command line.
)";

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void usage_fail(const std::string& why) { throw usage_error(why); }

struct options {
  std::string command;
  std::string policy = "lagkv";
  std::map<std::string, std::string> values;  // flag (without --) -> value
  bool has(const std::string& f) const { return values.count(f) != 0; }
  const std::string& get(const std::string& f) const { return values.at(f); }
};

const std::set<std::string>& known_flags() {
  static const std::set<std::string> flags = {"policy", "k",      "v",    "q",     "sink",     "lag",
                                              "ratio",  "score-v-ratio", "budget", "window", "seed",
                                              "steps",  "steps-file",    "interval"};
  return flags;
}

// Flags each policy reads; others are accepted with a warning.
const std::set<std::string>& policy_flags(const std::string& policy) {
  static const std::map<std::string, std::set<std::string>> table = {
      {"lagkv", {"sink", "lag", "ratio", "score-v-ratio"}},
      {"l2norm-chunked", {"sink", "lag", "ratio"}},
      {"l2norm", {"sink", "window", "ratio", "budget", "interval"}},
      {"h2o", {"q", "sink", "window", "budget", "ratio", "interval"}},
      {"streaming", {"sink", "window", "interval"}},
      {"random", {"sink", "window", "ratio", "budget", "interval", "seed"}},
  };
  const auto it = table.find(policy);
  if (it == table.end())
    usage_fail("--policy=" + policy + ": unknown (expected lagkv|l2norm|l2norm-chunked|h2o|streaming|random)");
  return it->second;
}

options parse_args(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      o.command = "help";
      return o;
    }
  }
  if (argc < 2) usage_fail("missing command (score or replay)");
  o.command = argv[1];
  if (o.command != "score" && o.command != "replay")
    usage_fail("command '" + o.command + "': unknown (expected score or replay)");
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) usage_fail("unexpected argument '" + a + "'");
    std::string name = a.substr(2), value;
    const auto eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else {
      if (i + 1 >= argc) usage_fail("--" + name + ": missing value");
      value = argv[++i];
    }
    if (known_flags().count(name) == 0) usage_fail("unknown flag '--" + name + "' (see --help)");
    if (o.values.count(name) != 0) usage_fail("--" + name + ": given twice");
    o.values[name] = value;
  }
  if (o.has("policy")) o.policy = o.get("policy");
  const auto& used = policy_flags(o.policy);
  for (const auto& kv : o.values) {
    const std::string& f = kv.first;
    if (f == "policy" || f == "k" || f == "v" || used.count(f) != 0) continue;
    if ((f == "steps" || f == "steps-file") && o.command == "replay") continue;
    std::fprintf(stderr, "lagkv-cli: warning: --%s is not used by %s --policy %s\n", f.c_str(), o.command.c_str(),
                 o.policy.c_str());
  }
  if (!o.has("k")) usage_fail("--k: required");
  if (!o.has("v")) usage_fail("--v: required");
  if (o.command == "replay" && o.has("steps") == o.has("steps-file"))
    usage_fail("replay needs exactly one of --steps or --steps-file");
  return o;
}

index_t parse_int(const std::string& flag, const std::string& s) {
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0) usage_fail("--" + flag + "=" + s + ": not an integer");
  return static_cast<index_t>(v);
}
double parse_double(const std::string& flag, const std::string& s) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno != 0) usage_fail("--" + flag + "=" + s + ": not a number");
  return v;
}

// Integers separated by commas/whitespace, optionally in [ ]; or a JSON object with "steps".
std::vector<index_t> parse_steps(const std::string& what, std::string text) {
  const auto key = text.find("\"steps\"");
  if (key != std::string::npos) {
    const auto open = text.find('[', key), close = text.find(']', key);
    if (open == std::string::npos || close == std::string::npos || close < open)
      throw lagkv::error(what + ": \"steps\" is not followed by a [...] list");
    text = text.substr(open + 1, close - open - 1);
  }
  std::vector<index_t> steps;
  std::string token;
  auto flush = [&] {
    if (token.empty()) return;
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(token.c_str(), &end, 10);
    if (*end != '\0' || errno != 0) throw lagkv::error(what + ": '" + token + "' is not an integer");
    steps.push_back(static_cast<index_t>(v));
    token.clear();
  };
  for (char c : text) {
    if (c == ',' || c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '[' || c == ']')
      flush();
    else
      token += c;
  }
  flush();
  return steps;
}

std::string shape_str(const std::vector<index_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::vector<float> to_floats(const lagkv::npy_array& a) {
  std::vector<float> out(static_cast<std::size_t>(a.size()));
  lagkv::visit_dtype(a.type, [&](auto tag) {
    using T = decltype(tag);
    const T* p = a.data<T>();
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = lagkv::to_float(p[i]);
  });
  return out;
}

struct head_record {
  std::vector<index_t> kept;
  std::vector<std::vector<float>> chunk_scores;
};

void print_float(std::string& out, float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(x));
  out += buf;
}

template <class V>
void print_ints(std::string& out, const V& xs) {
  out += '[';
  bool first = true;
  for (index_t x : xs) {
    if (!first) out += ", ";
    first = false;
    out += std::to_string(x);
  }
  out += ']';
}

template <class T>
int run(const options& o, const lagkv::npy_array& k, const lagkv::npy_array& v, const lagkv::npy_array* q) {
  const index_t H = k.shape[0], S = k.shape[1], D = k.shape[2];

  lagkv::policy_spec spec;
  if (o.has("sink")) spec.sink = parse_int("sink", o.get("sink"));
  if (o.has("lag")) spec.lag = parse_int("lag", o.get("lag"));
  if (o.has("ratio")) spec.ratio = parse_double("ratio", o.get("ratio"));
  if (o.has("score-v-ratio")) spec.score_v_ratio = parse_double("score-v-ratio", o.get("score-v-ratio"));
  if (o.has("budget")) spec.budget = parse_int("budget", o.get("budget"));
  if (o.has("window")) spec.window = parse_int("window", o.get("window"));
  if (o.has("interval")) spec.interval = parse_int("interval", o.get("interval"));
  if (o.has("seed")) spec.seed = static_cast<std::uint64_t>(parse_int("seed", o.get("seed")));

  std::vector<index_t> steps;
  if (o.command == "score") {
    steps = {S};
  } else if (o.has("steps")) {
    steps = parse_steps("--steps", o.get("steps"));
  } else {
    std::ifstream in(o.get("steps-file"));
    if (!in) throw lagkv::error(o.get("steps-file") + ": cannot open file");
    std::stringstream ss;
    ss << in.rdbuf();
    steps = parse_steps(o.get("steps-file"), ss.str());
  }
  index_t total = 0;
  for (std::size_t i = 0; i < steps.size(); ++i) {
    LAGKV_CHECK(steps[i] >= 1, "steps[", i, "]=", steps[i], ": must be >= 1");
    total += steps[i];
  }
  LAGKV_CHECK(!steps.empty() || S == 0, "steps: empty list");
  LAGKV_CHECK(total == S, "steps: sum to ", total, " but K has S=", S, " tokens");

  std::vector<float> qf;
  lagkv::attention_input att;
  if (q != nullptr) {
    qf = to_floats(*q);
    att.q_heads = q->shape[0];
    att.queries = qf.data();
    att.q_head_stride = S * D;
    att.q_token_stride = D;
  }

  lagkv::cache_config cfg;
  cfg.layers = 1;
  cfg.kv_heads = H;
  cfg.head_dim = D;
  cfg.capacity = S > 0 ? S : 1;
  lagkv::kv_cache<T> cache(cfg, lagkv::make_policy(o.policy, spec));

  std::vector<head_record> records(static_cast<std::size_t>(H));
  cache.set_observer([&](const lagkv::compress_event& e) {
    head_record& r = records[static_cast<std::size_t>(e.head)];
    for (index_t i = 0; i < e.kept_count; ++i) r.kept.push_back(e.positions[e.kept[i]]);
    if (e.scores == nullptr) return;
    for (index_t c = 0; c < e.plan.chunks; ++c)
      r.chunk_scores.emplace_back(e.scores + c * e.plan.chunk, e.scores + (c + 1) * e.plan.chunk);
  });

  const T* kd = k.data<T>();
  const T* vd = v.data<T>();
  std::vector<index_t> lengths;
  index_t first = 0;
  for (index_t n : steps) {
    lagkv::append_extras extras;
    if (q != nullptr) {
      extras.attention = att;
      extras.attention.queries = qf.data() + first * D;
    }
    const lagkv::kv_input<T> kin{kd + first * D, n, lagkv::kv_layout::hsd(), S};
    const lagkv::kv_input<T> vin{vd + first * D, n, lagkv::kv_layout::hsd(), S};
    cache.append(0, kin, vin, extras);
    lengths.push_back(cache.max_length(0));
    first += n;
  }

  std::string out;
  if (o.command == "score") {
    out += "{\"kept\": [";
    for (index_t h = 0; h < H; ++h) {
      if (h) out += ", ";
      print_ints(out, records[static_cast<std::size_t>(h)].kept);
    }
    out += "], \"cache_len\": " + std::to_string(cache.max_length(0)) + ", \"chunk_scores\": [";
    for (index_t h = 0; h < H; ++h) {
      if (h) out += ", ";
      out += '[';
      const auto& chunks = records[static_cast<std::size_t>(h)].chunk_scores;
      for (std::size_t c = 0; c < chunks.size(); ++c) {
        if (c) out += ", ";
        out += '[';
        for (std::size_t i = 0; i < chunks[c].size(); ++i) {
          if (i) out += ", ";
          print_float(out, chunks[c][i]);
        }
        out += ']';
      }
      out += ']';
    }
    out += "]}\n";
  } else {
    out += "{\"lengths\": ";
    print_ints(out, lengths);
    out += ", \"final_positions\": [";
    for (index_t h = 0; h < H; ++h) {
      if (h) out += ", ";
      print_ints(out, cache.positions(0, h));
    }
    out += "]}\n";
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : 1;
}

int main_impl(int argc, char** argv) {
  const options o = parse_args(argc, argv);
  if (o.command == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const lagkv::npy_array k = lagkv::read_npy(o.get("k"));
  const lagkv::npy_array v = lagkv::read_npy(o.get("v"));
  LAGKV_CHECK(k.shape.size() == 3, "--k shape ", shape_str(k.shape), ": must be [H, S, D]");
  LAGKV_CHECK(v.shape == k.shape, "--v shape ", shape_str(v.shape), ": does not match --k shape ",
              shape_str(k.shape));
  LAGKV_CHECK(v.type == k.type, "--v dtype=", lagkv::dtype_name(v.type), ": does not match --k dtype=",
              lagkv::dtype_name(k.type));
  LAGKV_CHECK(k.shape[0] >= 1 && k.shape[1] >= 1 && k.shape[2] >= 1, "--k shape ", shape_str(k.shape),
              ": H, S and D must be >= 1");
  lagkv::npy_array q;
  const bool use_q = o.policy == "h2o";
  if (use_q) {
    if (!o.has("q")) usage_fail("--q: required for --policy h2o");
    q = lagkv::read_npy(o.get("q"));
    LAGKV_CHECK(q.shape.size() == 3 && q.shape[1] == k.shape[1] && q.shape[2] == k.shape[2] && q.shape[0] >= 1 &&
                    q.shape[0] % k.shape[0] == 0,
                "--q shape ", shape_str(q.shape), ": must be [H_q, S, D] with H_q a multiple of H for --k shape ",
                shape_str(k.shape));
  }
  return lagkv::visit_dtype(k.type, [&](auto tag) {
    using T = decltype(tag);
    return run<T>(o, k, v, use_q ? &q : nullptr);
  });
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return main_impl(argc, argv);
  } catch (const usage_error& e) {
    std::fprintf(stderr, "lagkv-cli: error: %s\nRun 'lagkv-cli --help' for usage.\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lagkv-cli: error: %s\n", e.what());
    return 1;
  }
}
