// The NEON target against the scalar oracle, built by the aarch64 cross compiler and run under
// qemu-aarch64 (tests/CMakeLists.txt registers it only when both are installed). GoogleTest is
// not available for the target, so this is a self-checking program: it prints every mismatch
// and exits non-zero. Same tolerance as tests/test_simd.cpp (derived there).
#include <lagkv/simd/dispatch.hpp>

#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <random>
#include <vector>

namespace {

int failures = 0;

void fail(const char* what, const char* dt, long d, long i, double got, double want) {
  if (++failures <= 20) std::printf("FAIL %s %s D=%ld i=%ld got=%.9g want=%.9g\n", what, dt, d, i, got, want);
}

bool close(float got, float want, double rel) {
  if (std::isnan(got) || std::isnan(want)) return std::isnan(got) && std::isnan(want);
  if (got == want) return true;
  return std::fabs(static_cast<double>(got) - want) <= rel * std::fabs(static_cast<double>(want)) + FLT_MIN;
}

template <class T>
std::vector<T> make(lagkv::index_t tokens, lagkv::index_t d, unsigned seed, int kind) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<T> x(static_cast<std::size_t>(tokens * d));
  for (lagkv::index_t t = 0; t < tokens; ++t)
    for (lagkv::index_t c = 0; c < d; ++c) {
      float v = static_cast<float>(c % 5) + nd(rng);
      if (kind == 1 && c % 3 == 0) v = 0.25f * static_cast<float>(c);  // constant channels
      x[static_cast<std::size_t>(t * d + c)] = lagkv::from_float<T>(v);
    }
  if (kind == 2) {
    x[static_cast<std::size_t>(2 * d)] = lagkv::from_float<T>(NAN);  // NaN token in chunk 0
    x[x.size() - 1] = lagkv::from_float<T>(INFINITY);                 // Inf in the last reference
  }
  return x;
}

template <class T>
void check_lagkv(const char* dt, lagkv::index_t d, int kind) {
  const lagkv::index_t lag = 13, chunks = 3, tokens = (chunks + 1) * lag;
  const auto k = make<T>(tokens, d, static_cast<unsigned>(d * 3 + kind), kind);
  const auto v = make<T>(tokens, d, static_cast<unsigned>(d * 5 + kind), kind);
  const lagkv::kv_view<const T> kv(k.data(), tokens, d, d), vv(v.data(), tokens, d, d);
  std::vector<float> got(static_cast<std::size_t>(chunks * lag)), want(got.size());
  for (lagkv::index_t c = 0; c < chunks; ++c)
    lagkv::reference::lagkv_chunk_scores<T>(kv.slice(c * lag, lag), kv.slice((c + 1) * lag, lag), vv.slice(c * lag, lag),
                                            vv.slice((c + 1) * lag, lag), 1.0, want.data() + c * lag);
  // Data of scale ~5 normalised by ranges of ~5: Y <= 8 is generous.
  const double eps = std::numeric_limits<float>::epsilon();
  const double tol = eps * (4.0 * (static_cast<double>(d) / 8.0 + 8.0) * 8.0 + static_cast<double>(lag) / 16.0 + 12.0);
  for (auto schedule : {lagkv::simd::sweep_schedule::forward, lagkv::simd::sweep_schedule::backward}) {
    lagkv::simd::scoped_schedule use(schedule);
    lagkv::dispatch::lagkv_sequence_scores<T>(kv, vv, lag, chunks, 1.0, got.data());
    const char* what = schedule == lagkv::simd::sweep_schedule::forward ? "lagkv forward" : "lagkv backward";
    for (std::size_t i = 0; i < got.size(); ++i)
      if (!close(got[i], want[i], tol)) fail(what, dt, static_cast<long>(d), static_cast<long>(i), got[i], want[i]);
  }
  std::vector<float> l2(static_cast<std::size_t>(tokens)), l2w(l2.size());
  lagkv::dispatch::l2norm_scores<T>(kv, l2.data());
  lagkv::reference::l2norm_scores<T>(kv, l2w.data());
  for (std::size_t i = 0; i < l2.size(); ++i)
    if (!close(l2[i], l2w[i], eps * (static_cast<double>(d) / 8.0 + 8.0))) fail("l2", dt, static_cast<long>(d), static_cast<long>(i), l2[i], l2w[i]);
}

template <class T>
void check_conversion(const char* dt) {
  const auto& ks = lagkv::simd::detail::kernels_for<T>(*lagkv::simd::detail::compiled_kernels(lagkv::simd::target::neon));
  const lagkv::index_t n = 65536 + 5;
  std::vector<T> src(static_cast<std::size_t>(n));
  for (lagkv::index_t i = 0; i < n; ++i) {
    const auto b = static_cast<std::uint16_t>(i);
    std::memcpy(&src[static_cast<std::size_t>(i)], &b, 2);
  }
  std::vector<float> dst(static_cast<std::size_t>(ks.kernel_dim(n)));
  ks.load_to_f32(src.data(), n, dst.data());
  for (lagkv::index_t pos = 0; pos < ks.kernel_dim(n); ++pos) {
    const lagkv::index_t c = ks.kernel_channel(pos, n);
    if (c < 0) continue;
    const float want = lagkv::to_float(src[static_cast<std::size_t>(c)]);
    if (std::memcmp(&dst[static_cast<std::size_t>(pos)], &want, 4) != 0)
      fail("convert", dt, 0, static_cast<long>(c), dst[static_cast<std::size_t>(pos)], want);
  }
}

}  // namespace

int main() {
#if !defined(LAGKV_SIMD_HAVE_NEON)
  std::printf("NEON target not compiled in (not an AArch64 NEON build)\n");
  return 1;
#else
  lagkv::simd::force(lagkv::simd::target::neon);
  for (lagkv::index_t d : {2, 3, 7, 16, 31, 64, 80, 128, 256})
    for (int kind = 0; kind < 3; ++kind) {
      check_lagkv<float>("fp32", d, kind);
      check_lagkv<lagkv::f16>("fp16", d, kind);
      check_lagkv<lagkv::bf16>("bf16", d, kind);
    }
  check_conversion<lagkv::f16>("fp16");
  check_conversion<lagkv::bf16>("bf16");
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
#endif
}
