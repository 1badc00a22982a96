// lagkv-cli end to end: the built binary on every golden case (score and replay), replay and
// score for every policy against the plain model, fp16/bf16 inputs, and the error paths.
#include <gtest/gtest.h>
#include <lagkv/npy.hpp>
#include <lagkv/policy/random.hpp>
#include <lagkv/simd/dispatch.hpp>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "support/golden.hpp"
#include "support/json.hpp"
#include "support/plain_cache.hpp"

namespace {

using lagkv::index_t;
using lagkv_test::json;

struct cli_result {
  int code = -1;
  std::string out, err;
};

std::string scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = std::string(info->test_suite_name()) + "." + info->name();
  for (char& c : name)
    if (c == '/') c = '_';
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / ("lagkv_cli_" + name);
  std::filesystem::create_directories(dir);
  return dir.string();
}

cli_result run_cli(const std::string& args) {
  const std::string err_path = scratch_dir() + "/stderr.txt";
  const std::string cmd = std::string("'") + LAGKV_CLI_PATH + "' " + args + " 2>'" + err_path + "'";
  cli_result r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) r.out.append(buf, n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream err(err_path);
  r.err.assign(std::istreambuf_iterator<char>(err), std::istreambuf_iterator<char>());
  return r;
}

std::string quote(const std::string& path) { return "'" + path + "'"; }

std::string params_flags(const lagkv::lagkv_params& p) {
  char buf[200];
  std::snprintf(buf, sizeof buf, " --sink %td --lag %td --ratio %.17g --score-v-ratio %.17g", p.sink, p.lag, p.ratio,
                p.score_v_ratio);
  return buf;
}

std::string steps_csv(const std::vector<index_t>& steps) {
  std::string s;
  for (std::size_t i = 0; i < steps.size(); ++i) s += (i ? "," : "") + std::to_string(steps[i]);
  return s;
}

// ---- Golden cases --------------------------------------------------------------------------

class CliGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(CliGolden, OutputMatchesTheAuthorsResults) {
  const lagkv_test::golden_case g = lagkv_test::load_golden(GetParam());
  const std::string kv = " --k " + quote(g.dir + "/k.npy") + " --v " + quote(g.dir + "/v.npy");
  if (g.is_trajectory()) {
    const std::string steps_file = scratch_dir() + "/steps.txt";
    std::ofstream(steps_file) << steps_csv(g.expected["steps"].as_vector<index_t>()) << "\n";
    const cli_result r = run_cli("replay --policy lagkv" + kv + params_flags(g.params()) + " --steps-file " +
                                 quote(steps_file));
    ASSERT_EQ(r.code, 0) << r.err;
    const json out = json::parse(r.out);
    EXPECT_EQ(out["lengths"].as_vector<index_t>(), g.expected["lengths_after_each_step"].as_vector<index_t>());
    ASSERT_EQ(out["final_positions"].size(), static_cast<std::size_t>(g.heads()));
    for (std::size_t h = 0; h < out["final_positions"].size(); ++h)
      EXPECT_EQ(out["final_positions"][h].as_vector<index_t>(), g.expected["final_positions"][h].as_vector<index_t>());
    return;
  }
  const cli_result r = run_cli("score --policy lagkv" + kv + params_flags(g.params()));
  ASSERT_EQ(r.code, 0) << r.err;
  const json out = json::parse(r.out);
  EXPECT_EQ(out["cache_len"].as_int(), g.expected["cache_len_after"].as_int());
  ASSERT_EQ(out["kept"].size(), static_cast<std::size_t>(g.heads()));
  ASSERT_EQ(out["chunk_scores"].size(), static_cast<std::size_t>(g.heads()));
  for (std::size_t h = 0; h < out["kept"].size(); ++h) {
    EXPECT_EQ(out["kept"][h].as_vector<index_t>(), g.expected["kept"][h].as_vector<index_t>());
    const json& got = out["chunk_scores"][h];
    const json& want = g.expected["chunk_scores"][h];
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t c = 0; c < want.size(); ++c) {
      ASSERT_EQ(got[c].size(), want[c].size());
      for (std::size_t i = 0; i < want[c].size(); ++i)
        ASSERT_NEAR(got[c][i].num, want[c][i].num, 1e-5 * std::fabs(want[c][i].num)) << "head " << h << " chunk " << c;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, CliGolden, ::testing::ValuesIn(lagkv_test::golden_case_names()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CliGolden);

TEST(CliGoldenFiles, StepsFileMayBeTheExpectedJsonItself) {
  const lagkv_test::golden_case g = lagkv_test::load_golden("trajectory_no_sink");
  const cli_result r = run_cli("replay --k " + quote(g.dir + "/k.npy") + " --v " + quote(g.dir + "/v.npy") +
                               params_flags(g.params()) + " --steps-file " + quote(g.dir + "/expected.json"));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["lengths"].as_vector<index_t>(),
            g.expected["lengths_after_each_step"].as_vector<index_t>());
}

// ---- Every policy, against the plain model ----------------------------------------------------

constexpr index_t kH = 2, kQH = 4, kS = 120, kD = 8;

struct cli_case {
  std::string name;
  lagkv_test::plain_config cfg;
  std::string flags;
  lagkv::dtype type = lagkv::dtype::f32;
};

std::vector<cli_case> cli_cases() {
  std::vector<cli_case> out;
  lagkv_test::plain_config c;
  c.policy = "lagkv", c.sink = 4, c.lag = 16, c.ratio = 0.25;
  out.push_back({"lagkv", c, "--sink 4 --lag 16 --ratio 0.25"});
  out.push_back({"lagkv_fp16", c, "--sink 4 --lag 16 --ratio 0.25", lagkv::dtype::f16});
  out.push_back({"lagkv_bf16", c, "--sink 4 --lag 16 --ratio 0.25", lagkv::dtype::bf16});
  c = {}, c.policy = "l2norm-chunked", c.sink = 2, c.lag = 8, c.ratio = 0.5;
  out.push_back({"l2norm_chunked", c, "--sink 2 --lag 8 --ratio 0.5"});
  c = {}, c.policy = "l2norm", c.sink = 2, c.window = 6, c.budget = 30;
  out.push_back({"l2norm", c, "--sink 2 --window 6 --budget 30"});
  c.interval = 4;
  out.push_back({"l2norm_every_4_steps", c, "--sink 2 --window 6 --budget 30 --interval 4"});
  c = {}, c.policy = "l2norm", c.sink = 2, c.window = 4, c.ratio = 0.5;  // score keeps floor(S*R) = 60
  out.push_back({"l2norm_ratio", c, "--ratio 0.5 --sink 2 --window 4"});
  c = {}, c.policy = "h2o", c.sink = 1, c.window = 5, c.budget = 24;
  out.push_back({"h2o", c, "--sink 1 --window 5 --budget 24"});
  out.push_back({"h2o_bf16", c, "--sink 1 --window 5 --budget 24", lagkv::dtype::bf16});
  c = {}, c.policy = "streaming", c.sink = 3, c.window = 17;
  out.push_back({"streaming", c, "--sink 3 --window 17"});
  c = {}, c.policy = "random", c.sink = 0, c.window = 0, c.budget = 33, c.seed = 12;
  out.push_back({"random", c, "--budget 33 --seed 12"});
  c.budget = 0, c.ratio = 0.3, c.seed = 5;
  out.push_back({"random_ratio", c, "--ratio 0.3 --seed 5"});
  return out;
}

struct npy_inputs {
  std::string k, v, q;
  std::vector<float> kf, vf, qf;
};

npy_inputs write_inputs(lagkv::dtype type) {
  npy_inputs in;
  const std::string dir = scratch_dir();
  in.kf = lagkv_test::random_kv(1, kH, kS, kD);
  in.vf = lagkv_test::random_kv(2, kH, kS, kD);
  in.qf = lagkv_test::random_kv(3, kQH, kS, kD);
  in.k = dir + "/k.npy";
  in.v = dir + "/v.npy";
  in.q = dir + "/q.npy";
  lagkv::visit_dtype(type, [&](auto tag) {
    using T = decltype(tag);
    const auto k = lagkv_test::convert<T>(in.kf), v = lagkv_test::convert<T>(in.vf);
    lagkv::write_npy(in.k, type, {kH, kS, kD}, k.data());
    lagkv::write_npy(in.v, type, {kH, kS, kD}, v.data());
  });
  lagkv::write_npy(in.q, lagkv::dtype::f32, {kQH, kS, kD}, in.qf.data());
  return in;
}

template <class T>
lagkv_test::plain_layer<T> replay_plain(const cli_case& c, const npy_inputs& in, const std::vector<index_t>& steps,
                                        std::vector<index_t>* lengths) {
  const auto k = lagkv_test::convert<T>(in.kf), v = lagkv_test::convert<T>(in.vf);
  lagkv_test::plain_layer<T> plain(c.cfg, kH, kD);
  index_t first = 0;
  for (const index_t n : steps) {
    plain.append(lagkv_test::rows_of(k.data(), kH, kS, kD, first, n), lagkv_test::rows_of(v.data(), kH, kS, kD, first, n),
                 lagkv_test::queries_of(in.qf, kQH, kS, kD, first, n));
    first += n;
    if (lengths) lengths->push_back(plain.length(0));
  }
  return plain;
}

class CliPolicies : public ::testing::TestWithParam<cli_case> {};

TEST_P(CliPolicies, ReplayMatchesThePlainModel) {
  const cli_case& c = GetParam();
  const npy_inputs in = write_inputs(c.type);
  const auto steps = lagkv_test::random_schedule(4, kS);
  const cli_result r = run_cli("replay --policy " + c.cfg.policy + " --k " + quote(in.k) + " --v " + quote(in.v) +
                               (c.cfg.policy == "h2o" ? " --q " + quote(in.q) : std::string()) + " " + c.flags +
                               " --steps " + steps_csv(steps));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err, "");
  const json out = json::parse(r.out);
  lagkv::visit_dtype(c.type, [&](auto tag) {
    std::vector<index_t> lengths;
    const auto plain = replay_plain<decltype(tag)>(c, in, steps, &lengths);
    EXPECT_EQ(out["lengths"].as_vector<index_t>(), lengths);
    ASSERT_EQ(out["final_positions"].size(), static_cast<std::size_t>(kH));
    for (index_t h = 0; h < kH; ++h)
      EXPECT_EQ(out["final_positions"][static_cast<std::size_t>(h)].as_vector<index_t>(), plain.positions(h));
  });
  EXPECT_LT(out["lengths"].as_vector<index_t>().back(), kS);
}

TEST_P(CliPolicies, ScoreIsOneAppendOfTheWholeSequence) {
  const cli_case& c = GetParam();
  const npy_inputs in = write_inputs(c.type);
  const cli_result r = run_cli("score --policy " + c.cfg.policy + " --k " + quote(in.k) + " --v " + quote(in.v) +
                               (c.cfg.policy == "h2o" ? " --q " + quote(in.q) : std::string()) + " " + c.flags);
  ASSERT_EQ(r.code, 0) << r.err;
  const json out = json::parse(r.out);
  lagkv::visit_dtype(c.type, [&](auto tag) {
    const auto plain = replay_plain<decltype(tag)>(c, in, {kS}, nullptr);
    EXPECT_EQ(out["cache_len"].as_int(), plain.length(0));
    for (index_t h = 0; h < kH; ++h) {
      // kept = the scored region only: everything but the sink and the tail/window.
      const auto pos = plain.positions(h);
      const index_t tail = c.cfg.chunked() ? kS - (c.cfg.sink + ((kS - c.cfg.sink) / c.cfg.lag - 1) * c.cfg.lag)
                                           : c.cfg.window;
      const std::vector<index_t> region(pos.begin() + c.cfg.sink, pos.end() - tail);
      const json& kept = out["kept"][static_cast<std::size_t>(h)];
      const json& scores = out["chunk_scores"][static_cast<std::size_t>(h)];
      if (c.cfg.policy == "streaming") {
        EXPECT_EQ(kept.size(), 0u);
        EXPECT_EQ(scores.size(), 0u);
        continue;
      }
      EXPECT_EQ(kept.as_vector<index_t>(), region);
      if (c.cfg.chunked()) {
        EXPECT_EQ(scores.size(), static_cast<std::size_t>((kS - c.cfg.sink) / c.cfg.lag - 1));
        for (std::size_t i = 0; i < scores.size(); ++i) EXPECT_EQ(scores[i].size(), static_cast<std::size_t>(c.cfg.lag));
      } else {
        ASSERT_EQ(scores.size(), 1u);  // one chunk: the region between sink and window
        ASSERT_EQ(scores[0].size(), static_cast<std::size_t>(kS - c.cfg.sink - c.cfg.window));
      }
      if (c.cfg.policy == "random") {
        for (std::size_t i = 0; i < scores[0].size(); ++i)
          EXPECT_EQ(static_cast<float>(scores[0][i].num),
                    lagkv::random_policy::token_score(c.cfg.seed, 0, h, c.cfg.sink + static_cast<index_t>(i)));
      }
      if (c.cfg.policy == "l2norm" || c.cfg.policy == "l2norm-chunked") {
        const double first = scores[0][0].num;
        double ss = 0.0;
        for (index_t ch = 0; ch < kD; ++ch) {
          const double x = lagkv::to_float(lagkv::from_float<decltype(tag)>(
              in.kf[static_cast<std::size_t>((h * kS + c.cfg.sink) * kD + ch)]));
          ss += x * x;
        }
        EXPECT_NEAR(first, -std::sqrt(ss), 1e-6 * std::sqrt(ss));
      }
    }
  });
}

INSTANTIATE_TEST_SUITE_P(Cli, CliPolicies, ::testing::ValuesIn(cli_cases()),
                         [](const ::testing::TestParamInfo<cli_case>& info) { return info.param.name; });

// ---- Errors --------------------------------------------------------------------------------

struct cli_error_case {
  std::string name;
  std::string args;  // {K} {V} {Q} {K16} {BAD} are replaced by files
  int code;
  std::string message;
};

std::vector<cli_error_case> cli_error_cases() {
  return {
      {"unknown_flag", "score --k {K} --v {V} --bogus 1", 2, "unknown flag '--bogus'"},
      {"unknown_command", "squash --k {K} --v {V}", 2, "command 'squash': unknown"},
      {"unknown_policy", "score --policy lru --k {K} --v {V}", 2, "--policy=lru: unknown"},
      {"missing_value", "score --k {K} --v", 2, "--v: missing value"},
      {"missing_k", "score --v {V}", 2, "--k: required"},
      {"missing_file", "score --k {K} --v /nonexistent/v.npy", 1, "/nonexistent/v.npy: cannot open file"},
      {"not_npy", "score --k {K} --v {BAD}", 1, "not a .npy file"},
      {"shape_mismatch", "score --k {K} --v {Q}", 1, "--v shape [4, 120, 8]: does not match --k shape [2, 120, 8]"},
      {"dtype_mismatch", "score --k {K} --v {K16}", 1, "--v dtype=fp16: does not match --k dtype=fp32"},
      {"steps_do_not_sum", "replay --k {K} --v {V} --steps 100,1,1", 1, "steps: sum to 102 but K has S=120 tokens"},
      {"steps_zero", "replay --k {K} --v {V} --steps 119,0,1", 1, "steps[1]=0: must be >= 1"},
      {"steps_garbage", "replay --k {K} --v {V} --steps 100,x", 1, "'x' is not an integer"},
      {"replay_without_steps", "replay --k {K} --v {V}", 2, "exactly one of --steps or --steps-file"},
      {"missing_steps_file", "replay --k {K} --v {V} --steps-file /nonexistent/steps", 1, "cannot open file"},
      {"h2o_without_q", "score --policy h2o --budget 10 --k {K} --v {V}", 2, "--q: required for --policy h2o"},
      {"h2o_without_budget", "score --policy h2o --q {Q} --k {K} --v {V}", 1, "h2o needs a budget"},
      {"bad_q_heads", "score --policy h2o --budget 10 --q {K16} --k {Q} --v {Q}", 1, "H_q a multiple of H"},
      {"bad_integer", "score --k {K} --v {V} --lag 1.5", 2, "--lag=1.5: not an integer"},
      {"invalid_lag", "score --k {K} --v {V} --lag 1", 1, "lag=1: must be >= 2"},
      {"budget_below_sink_window", "score --policy l2norm --k {K} --v {V} --budget 10 --sink 8 --window 8", 1,
       "budget=10: must be >= sink + window = 16"},
  };
}

class CliErrors : public ::testing::TestWithParam<cli_error_case> {};

TEST_P(CliErrors, ExitNonZeroWithAClearMessage) {
  const cli_error_case& c = GetParam();
  const npy_inputs in = write_inputs(lagkv::dtype::f32);
  const std::string k16 = scratch_dir() + "/k16.npy", bad = scratch_dir() + "/bad.npy";
  const auto k16data = lagkv_test::convert<lagkv::f16>(in.kf);
  lagkv::write_npy(k16, lagkv::dtype::f16, {kH, kS, kD}, k16data.data());
  std::ofstream(bad) << "not numpy";
  std::string args = c.args;
  for (const auto& [key, value] : {std::pair<std::string, std::string>{"{K}", in.k}, {"{V}", in.v}, {"{Q}", in.q},
                                   {"{K16}", k16}, {"{BAD}", bad}})
    for (std::size_t at; (at = args.find(key)) != std::string::npos;) args.replace(at, key.size(), quote(value));
  const cli_result r = run_cli(args);
  EXPECT_EQ(r.code, c.code) << r.err;
  EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("lagkv-cli: error: "), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

INSTANTIATE_TEST_SUITE_P(Cli, CliErrors, ::testing::ValuesIn(cli_error_cases()),
                         [](const ::testing::TestParamInfo<cli_error_case>& info) { return info.param.name; });

TEST(CliHelp, PrintsUsageAndSucceeds) {
  const cli_result r = run_cli("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* needle : {"Usage:", "score", "replay", "--steps-file", "--score-v-ratio", "l2norm-chunked", "h2o",
                             "streaming", "random", "chunk_scores", "final_positions"})
    EXPECT_NE(r.out.find(needle), std::string::npos) << needle;
}

TEST(CliWarnings, UnusedFlagsAreReportedButNotFatal) {
  const npy_inputs in = write_inputs(lagkv::dtype::f32);
  const cli_result r = run_cli("score --policy streaming --sink 2 --window 10 --lag 64 --k " + quote(in.k) + " --v " +
                               quote(in.v));
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.err.find("warning: --lag is not used by score --policy streaming"), std::string::npos) << r.err;
  EXPECT_EQ(json::parse(r.out)["cache_len"].as_int(), 12);
}

TEST(CliFloats, ScoresRoundTripThroughNineDigits) {
  const lagkv_test::golden_case g = lagkv_test::load_golden("score_small");
  const cli_result r = run_cli("score --k " + quote(g.dir + "/k.npy") + " --v " + quote(g.dir + "/v.npy") +
                               params_flags(g.params()));
  ASSERT_EQ(r.code, 0) << r.err;
  const auto k = lagkv::view_hsd<const float>(g.k.data<float>(), g.heads(), g.tokens(), g.head_dim(), 0);
  const auto v = lagkv::view_hsd<const float>(g.v.data<float>(), g.heads(), g.tokens(), g.head_dim(), 0);
  // The CLI scores with the dispatched kernel; so does this reference, on the same CPU.
  const auto ref = lagkv::lagkv_score_head(k, v, g.params(), [](auto kc, auto kr, auto vc, auto vr, double w, float* o) {
    lagkv::dispatch::lagkv_chunk_scores<float>(kc, kr, vc, vr, w, o);
  });
  const json out = json::parse(r.out);
  for (std::size_t c = 0; c < ref.chunk_scores.size(); ++c)
    for (std::size_t i = 0; i < ref.chunk_scores[c].size(); ++i)
      EXPECT_EQ(static_cast<float>(out["chunk_scores"][0][c][i].num), ref.chunk_scores[c][i]);
}

}  // namespace
