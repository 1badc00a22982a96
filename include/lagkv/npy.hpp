#pragma once
/// \file npy.hpp
/// \brief Reading and writing NumPy `.npy` files (format versions 1.0, 2.0 and 3.0).
///
/// Accepted: C order, little-endian `<f4` (fp32), `<f2` (fp16) and `<u2` (bf16 bit patterns,
/// NumPy having no bfloat16). Everything else is rejected with a message naming the file and
/// the offending field. The reader never allocates more than the file's own size justifies:
/// the shape must describe exactly the bytes that follow the header.

#include <cctype>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "lagkv/dtype.hpp"
#include "lagkv/error.hpp"

namespace lagkv {

/// \brief An in-memory .npy array: element type, shape and the raw little-endian bytes.
struct npy_array {
  dtype type = dtype::f32;
  std::vector<index_t> shape;
  std::vector<unsigned char> bytes;

  index_t size() const {
    index_t n = 1;
    for (index_t s : shape) n *= s;
    return n;
  }
  /// Typed pointer to the elements; `T` must match `type`.
  template <class T>
  const T* data() const {
    LAGKV_CHECK(dtype_traits<T>::tag == type, "npy dtype=", dtype_name(type), ": requested as ",
                dtype_name(dtype_traits<T>::tag));
    return reinterpret_cast<const T*>(bytes.data());
  }
  template <class T>
  T* data() {
    return const_cast<T*>(static_cast<const npy_array&>(*this).data<T>());
  }
};

namespace detail {

// Minimal parser for the header's Python dict literal. Only what np.save writes is accepted.
class npy_header_parser {
 public:
  npy_header_parser(const std::string& text, const std::string& what) : s_(text), what_(what) {}

  void parse(dtype& type, std::vector<index_t>& shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip_ws();
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') break;
      const std::string key = quoted();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        type = descr_type(quoted());
        have_descr = true;
      } else if (key == "fortran_order") {
        LAGKV_CHECK(word() == "False", what_, ": fortran_order=True is not supported (C order only)");
        have_order = true;
      } else if (key == "shape") {
        shape = tuple();
        have_shape = true;
      } else {
        fail("unknown header key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      skip_ws();
      expect('}');
      --i_;
      break;
    }
    expect('}');
    LAGKV_CHECK(have_descr && have_order && have_shape, what_, ": header lacks ",
                !have_descr ? "'descr'" : !have_order ? "'fortran_order'" : "'shape'");
  }

 private:
  [[noreturn]] void fail(const std::string& why) const { detail::throw_error(what_, ": malformed npy header: ", why); }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "' at offset " + std::to_string(i_));
    ++i_;
  }
  std::string quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string at offset " + std::to_string(i_));
    const std::size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string r = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return r;
  }
  std::string word() {
    const std::size_t start = i_;
    while (i_ < s_.size() && std::isalpha(static_cast<unsigned char>(s_[i_]))) ++i_;
    return s_.substr(start, i_ - start);
  }
  std::vector<index_t> tuple() {
    std::vector<index_t> dims;
    expect('(');
    while (true) {
      skip_ws();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("shape entries must be non-negative integers");
      index_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const index_t digit = peek() - '0';
        if (v > (std::numeric_limits<index_t>::max() - digit) / 10) fail("shape entry overflows");
        v = v * 10 + digit;
        ++i_;
      }
      while (peek() == 'L') ++i_;  // Python 2 longs
      dims.push_back(v);
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != ')') fail("expected ',' or ')' in shape");
    }
    expect(')');
    if (dims.size() > 32) fail("more than 32 dimensions");
    return dims;
  }
  dtype descr_type(const std::string& d) const {
    if (d == "<f4") return dtype::f32;
    if (d == "<f2") return dtype::f16;
    if (d == "<u2") return dtype::bf16;
    if (!d.empty() && d[0] == '>') detail::throw_error(what_, ": descr='", d, "' is big-endian; only little-endian is supported");
    detail::throw_error(what_, ": descr='", d, "' is not supported (use '<f4', '<f2', or '<u2' for bf16 bits)");
  }

  const std::string& s_;
  const std::string& what_;
  std::size_t i_ = 0;
};

inline std::size_t element_size(dtype t) { return t == dtype::f32 ? 4 : 2; }

}  // namespace detail

/// \brief Parses a whole .npy file held in memory. `what` names it in error messages.
inline npy_array parse_npy(const unsigned char* bytes, std::size_t n, const std::string& what = "<memory>") {
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  LAGKV_CHECK(n >= 10 && std::memcmp(bytes, magic, 6) == 0, what, ": not a .npy file (bad magic)");
  const int major = bytes[6];
  LAGKV_CHECK(major >= 1 && major <= 3, what, ": npy format version ", major, ".", int(bytes[7]), " is not supported");
  std::size_t header_len = 0, prefix = 0;
  if (major == 1) {
    header_len = bytes[8] | std::size_t{bytes[9]} << 8;
    prefix = 10;
  } else {
    LAGKV_CHECK(n >= 12, what, ": truncated header");
    header_len = bytes[8] | std::size_t{bytes[9]} << 8 | std::size_t{bytes[10]} << 16 | std::size_t{bytes[11]} << 24;
    prefix = 12;
  }
  LAGKV_CHECK(header_len <= n - prefix, what, ": header length ", header_len, " exceeds file size ", n);
  std::string header(reinterpret_cast<const char*>(bytes + prefix), header_len);
  while (!header.empty() && (header.back() == '\n' || header.back() == ' ' || header.back() == '\0')) header.pop_back();

  npy_array a;
  detail::npy_header_parser(header, what).parse(a.type, a.shape);

  const std::size_t available = n - prefix - header_len;
  const std::size_t esize = detail::element_size(a.type);
  std::size_t count = 1;
  for (index_t d : a.shape) {
    const auto du = static_cast<std::size_t>(d);
    LAGKV_CHECK(du == 0 || count <= std::numeric_limits<std::size_t>::max() / esize / du, what,
                ": shape overflows the address space");
    count *= du;
  }
  LAGKV_CHECK(count * esize == available, what, ": data is ", available, " bytes but shape needs ", count * esize,
              available < count * esize ? " (truncated)" : " (trailing bytes)");
  a.bytes.assign(bytes + prefix + header_len, bytes + n);
  return a;
}

/// \brief Reads a .npy file. \throws lagkv::error naming `path` on any I/O or format problem.
inline npy_array read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LAGKV_CHECK(in.good(), path, ": cannot open file");
  std::vector<unsigned char> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LAGKV_CHECK(!in.bad(), path, ": read error");
  return parse_npy(buf.data(), buf.size(), path);
}

/// \brief Serialises an array as a version 1.0 .npy (2.0 when the header needs it).
inline std::vector<unsigned char> serialize_npy(dtype type, const std::vector<index_t>& shape, const void* data) {
  std::string header = std::string("{'descr': '") + (type == dtype::f32 ? "<f4" : type == dtype::f16 ? "<f2" : "<u2") +
                       "', 'fortran_order': False, 'shape': (";
  std::size_t count = 1;
  for (index_t d : shape) {
    LAGKV_CHECK(d >= 0, "shape entry=", d, ": must be >= 0");
    header += std::to_string(d) + ",";
    if (shape.size() > 1) header += " ";
    count *= static_cast<std::size_t>(d);
  }
  if (shape.size() > 1) header.erase(header.size() - 2, 1);  // "(2, 3)" not "(2, 3,)"
  header += "), }";
  const bool v2 = header.size() + 11 > 65535;
  const std::size_t prefix = v2 ? 12 : 10;
  const std::size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;  // pad to 64 bytes incl. '\n'
  header.append(total - prefix - header.size() - 1, ' ');
  header += '\n';
  std::vector<unsigned char> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<unsigned char>(v2 ? 2 : 1), 0};
  const std::size_t hl = header.size();
  out.push_back(static_cast<unsigned char>(hl & 0xff));
  out.push_back(static_cast<unsigned char>((hl >> 8) & 0xff));
  if (v2) {
    out.push_back(static_cast<unsigned char>((hl >> 16) & 0xff));
    out.push_back(static_cast<unsigned char>((hl >> 24) & 0xff));
  }
  out.insert(out.end(), header.begin(), header.end());
  const auto* p = static_cast<const unsigned char*>(data);
  out.insert(out.end(), p, p + count * detail::element_size(type));
  return out;
}

/// \brief Writes an array to `path`. \throws lagkv::error on I/O failure.
inline void write_npy(const std::string& path, dtype type, const std::vector<index_t>& shape, const void* data) {
  const std::vector<unsigned char> bytes = serialize_npy(type, shape, data);
  std::ofstream out(path, std::ios::binary);
  LAGKV_CHECK(out.good(), path, ": cannot open for writing");
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  LAGKV_CHECK(out.good(), path, ": write error");
}

}  // namespace lagkv
