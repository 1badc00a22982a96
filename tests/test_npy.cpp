// .npy reading and writing: round trips, files written by NumPy, and every rejection path.
#include <gtest/gtest.h>
#include <lagkv/npy.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "support/golden.hpp"

namespace {

using lagkv::index_t;

std::vector<unsigned char> with_header(const std::string& dict, std::size_t data_bytes, int major = 1) {
  std::vector<unsigned char> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(major), 0};
  std::string h = dict + "\n";
  out.push_back(static_cast<unsigned char>(h.size() & 0xff));
  out.push_back(static_cast<unsigned char>(h.size() >> 8));
  if (major >= 2) out.insert(out.end(), {0, 0});
  out.insert(out.end(), h.begin(), h.end());
  out.resize(out.size() + data_bytes, 0);
  return out;
}

std::string error_of(const std::vector<unsigned char>& bytes) {
  try {
    lagkv::parse_npy(bytes.data(), bytes.size(), "x.npy");
  } catch (const lagkv::error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Npy, RoundTripEveryDtype) {
  const std::vector<index_t> shape = {2, 3, 4};
  std::vector<float> f(24);
  for (int i = 0; i < 24; ++i) f[i] = static_cast<float>(i) * 0.5f - 3;
  std::vector<lagkv::f16> h(24);
  std::vector<lagkv::bf16> b(24);
  for (int i = 0; i < 24; ++i) h[i] = lagkv::to_f16(f[i]), b[i] = lagkv::to_bf16(f[i]);
  const std::string dir = ::testing::TempDir();
  lagkv::write_npy(dir + "f.npy", lagkv::dtype::f32, shape, f.data());
  lagkv::write_npy(dir + "h.npy", lagkv::dtype::f16, shape, h.data());
  lagkv::write_npy(dir + "b.npy", lagkv::dtype::bf16, shape, b.data());
  const auto rf = lagkv::read_npy(dir + "f.npy");
  const auto rh = lagkv::read_npy(dir + "h.npy");
  const auto rb = lagkv::read_npy(dir + "b.npy");
  EXPECT_EQ(rf.shape, shape);
  EXPECT_EQ(rh.type, lagkv::dtype::f16);
  EXPECT_EQ(rb.type, lagkv::dtype::bf16);
  for (int i = 0; i < 24; ++i) {
    EXPECT_EQ(rf.data<float>()[i], f[i]);
    EXPECT_EQ(rh.data<lagkv::f16>()[i].bits, h[i].bits);
    EXPECT_EQ(rb.data<lagkv::bf16>()[i].bits, b[i].bits);
  }
  EXPECT_THROW(rf.data<lagkv::f16>(), lagkv::error);
}

TEST(Npy, WrittenHeaderIsWhatNumpyWrites) {
  const float one = 1.0f;
  const auto bytes = lagkv::serialize_npy(lagkv::dtype::f32, {1}, &one);
  EXPECT_EQ(bytes.size() % 64, 4u);  // header padded to 64, then 4 data bytes
  const std::string header(bytes.begin() + 10, bytes.end() - 4);
  EXPECT_EQ(header.substr(0, 59), "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }  ");
  const auto scalar = lagkv::parse_npy(lagkv::serialize_npy(lagkv::dtype::f32, {}, &one).data(),
                                       lagkv::serialize_npy(lagkv::dtype::f32, {}, &one).size());
  EXPECT_TRUE(scalar.shape.empty());
  EXPECT_EQ(scalar.size(), 1);
}

TEST(Npy, ReadsFilesWrittenByNumpy) {
  // The golden inputs were written by NumPy itself (v1 header, <f4 and <f2).
  const auto k = lagkv::read_npy(lagkv_test::golden_root() + "/score_small/k.npy");
  EXPECT_EQ(k.shape, (std::vector<index_t>{2, 47, 16}));
  EXPECT_EQ(k.type, lagkv::dtype::f32);
  const auto h = lagkv::read_npy(lagkv_test::golden_root() + "/score_fp16/k.npy");
  EXPECT_EQ(h.type, lagkv::dtype::f16);
}

TEST(Npy, AcceptsVersion2And3Headers) {
  for (int major : {2, 3}) {
    const auto a = with_header("{'descr': '<f2', 'fortran_order': False, 'shape': (3, 2), }", 12, major);
    const auto r = lagkv::parse_npy(a.data(), a.size());
    EXPECT_EQ(r.shape, (std::vector<index_t>{3, 2}));
  }
}

TEST(Npy, RejectsBadMagic) {
  auto a = with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 4);
  a[1] = 'X';
  EXPECT_EQ(error_of(a), "x.npy: not a .npy file (bad magic)");
  EXPECT_EQ(error_of({0x93, 'N'}), "x.npy: not a .npy file (bad magic)");
}

TEST(Npy, RejectsFortranOrder) {
  EXPECT_EQ(error_of(with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", 8)),
            "x.npy: fortran_order=True is not supported (C order only)");
}

TEST(Npy, RejectsBigEndianAndOtherTypes) {
  EXPECT_EQ(error_of(with_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8)),
            "x.npy: descr='>f4' is big-endian; only little-endian is supported");
  EXPECT_EQ(error_of(with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", 8)),
            "x.npy: descr='<f8' is not supported (use '<f4', '<f2', or '<u2' for bf16 bits)");
}

TEST(Npy, RejectsTruncatedAndTrailingData) {
  EXPECT_EQ(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20)),
            "x.npy: data is 20 bytes but shape needs 24 (truncated)");
  EXPECT_EQ(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 9)),
            "x.npy: data is 9 bytes but shape needs 8 (trailing bytes)");
  auto a = with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 0);
  a.resize(20);
  EXPECT_NE(error_of(a).find("exceeds file size 20"), std::string::npos) << error_of(a);
}

TEST(Npy, RejectsShapeOverflow) {
  EXPECT_EQ(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 0)),
            "x.npy: malformed npy header: shape entry overflows");
  EXPECT_EQ(error_of(with_header(
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", 0)),
            "x.npy: shape overflows the address space");
}

TEST(Npy, RejectsMalformedHeaders) {
  EXPECT_NE(error_of(with_header("{'descr': '<f4', 'shape': (2,), }", 8)).find("lacks 'fortran_order'"),
            std::string::npos);
  EXPECT_NE(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", 8))
                .find("non-negative integers"),
            std::string::npos);
  EXPECT_NE(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8))
                .find("unknown header key 'x'"),
            std::string::npos);
  EXPECT_NE(error_of(with_header("{'descr: '<f4'", 8)).find("malformed"), std::string::npos);
}

TEST(Npy, MissingFileNamesThePath) {
  try {
    lagkv::read_npy("/nonexistent/k.npy");
    FAIL();
  } catch (const lagkv::error& e) {
    EXPECT_STREQ(e.what(), "/nonexistent/k.npy: cannot open file");
  }
}

}  // namespace
