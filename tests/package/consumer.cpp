// A consumer that only sees the installed or sub-projected package.
#include <lagkv/lagkv.hpp>

#include <cstdio>
#include <vector>

int main() {
  lagkv::lagkv_params p;
  p.sink = 1;
  p.lag = 4;
  std::vector<float> k(2 * 14 * 3), v(k.size());
  for (std::size_t i = 0; i < k.size(); ++i) {
    k[i] = static_cast<float>((i * 7919) % 31);
    v[i] = static_cast<float>((i * 104729) % 17);
  }
  const auto kv = lagkv::view_hsd<const float>(k.data(), 2, 14, 3, 0);
  const auto vv = lagkv::view_hsd<const float>(v.data(), 2, 14, 3, 0);
  const auto r = lagkv::lagkv_score_head(kv, vv, p);
  std::printf("lagkv %d.%d.%d: kept %zu, cache_len %td\n", LAGKV_VERSION_MAJOR, LAGKV_VERSION_MINOR,
              LAGKV_VERSION_PATCH, r.kept.size(), r.cache_len);
  return r.cache_len == 1 + 2 * 2 + 5 ? 0 : 1;
}
