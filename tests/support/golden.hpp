#pragma once
// Access to the golden LagKV cases in ../shared/golden/lagkv (checked against the authors' code).
#include <lagkv/npy.hpp>
#include <lagkv/score/lagkv.hpp>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "support/json.hpp"

namespace lagkv_test {

struct golden_case {
  std::string name, dir;
  json expected;
  lagkv::npy_array k, v;  // [H, S, D], fp32 or fp16 as stored
  lagkv::lagkv_params params() const {
    lagkv::lagkv_params p;
    p.sink = expected["params"]["sink"].as_int();
    p.lag = expected["params"]["lag"].as_int();
    p.ratio = expected["params"]["ratio"].num;
    p.score_v_ratio = expected["params"]["score_v_ratio"].num;
    return p;
  }
  bool is_trajectory() const { return expected["kind"].str == "trajectory"; }
  lagkv::index_t heads() const { return k.shape[0]; }
  lagkv::index_t tokens() const { return k.shape[1]; }
  lagkv::index_t head_dim() const { return k.shape[2]; }
};

inline std::string golden_root() { return std::string(LAGKV_GOLDEN_DIR) + "/lagkv"; }

/// Names of the golden cases (sorted) whose expected.json has this `kind` ("score",
/// "trajectory"; empty = all). Empty when the directory is missing.
inline std::vector<std::string> golden_case_names(const std::string& kind = "") {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(golden_root(), ec)) {
    if (!e.is_directory()) continue;
    if (!kind.empty() && json::parse_file(e.path().string() + "/expected.json")["kind"].str != kind) continue;
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

inline golden_case load_golden(const std::string& name) {
  golden_case g;
  g.name = name;
  g.dir = golden_root() + "/" + name;
  g.expected = json::parse_file(g.dir + "/expected.json");
  g.k = lagkv::read_npy(g.dir + "/k.npy");
  g.v = lagkv::read_npy(g.dir + "/v.npy");
  return g;
}

}  // namespace lagkv_test
