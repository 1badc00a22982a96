#pragma once
// A small JSON reader for the tests (golden expected.json, lagkv-cli output). Strict enough to
// catch malformed output; not a general-purpose library.
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace lagkv_test {

struct json {
  enum class kind { null, boolean, number, string, array, object } type = kind::null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<json> arr;
  std::map<std::string, json> obj;

  const json& operator[](const std::string& key) const {
    auto it = obj.find(key);
    if (type != kind::object || it == obj.end()) throw std::runtime_error("json: missing key '" + key + "'");
    return it->second;
  }
  const json& operator[](std::size_t i) const {
    if (type != kind::array || i >= arr.size()) throw std::runtime_error("json: bad array index");
    return arr[i];
  }
  bool has(const std::string& key) const { return type == kind::object && obj.count(key) != 0; }
  std::size_t size() const { return type == kind::array ? arr.size() : obj.size(); }
  long long as_int() const { return static_cast<long long>(num); }

  template <class T>
  std::vector<T> as_vector() const {
    std::vector<T> out;
    for (const auto& e : arr) out.push_back(static_cast<T>(e.num));
    return out;
  }

  static json parse(const std::string& text) {
    std::size_t i = 0;
    json v = parse_value(text, i);
    skip(text, i);
    if (i != text.size()) throw std::runtime_error("json: trailing characters at " + std::to_string(i));
    return v;
  }
  static json parse_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path);
    std::stringstream ss;
    ss << in.rdbuf();
    return parse(ss.str());
  }

 private:
  static void skip(const std::string& s, std::size_t& i) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
  }
  static json parse_value(const std::string& s, std::size_t& i) {
    skip(s, i);
    if (i >= s.size()) throw std::runtime_error("json: unexpected end");
    json v;
    const char c = s[i];
    if (c == '{') {
      v.type = kind::object;
      ++i;
      skip(s, i);
      if (s[i] == '}') return ++i, v;
      while (true) {
        skip(s, i);
        json key = parse_value(s, i);
        if (key.type != kind::string) throw std::runtime_error("json: object key must be a string");
        skip(s, i);
        if (s[i++] != ':') throw std::runtime_error("json: expected ':'");
        v.obj[key.str] = parse_value(s, i);
        skip(s, i);
        if (s[i] == ',') { ++i; continue; }
        if (s[i++] != '}') throw std::runtime_error("json: expected '}'");
        return v;
      }
    }
    if (c == '[') {
      v.type = kind::array;
      ++i;
      skip(s, i);
      if (s[i] == ']') return ++i, v;
      while (true) {
        v.arr.push_back(parse_value(s, i));
        skip(s, i);
        if (s[i] == ',') { ++i; continue; }
        if (s[i++] != ']') throw std::runtime_error("json: expected ']'");
        return v;
      }
    }
    if (c == '"') {
      v.type = kind::string;
      ++i;
      while (i < s.size() && s[i] != '"') {
        if (s[i] == '\\') ++i;
        v.str += s[i++];
      }
      ++i;
      return v;
    }
    if (s.compare(i, 4, "true") == 0) { v.type = kind::boolean; v.b = true; i += 4; return v; }
    if (s.compare(i, 5, "false") == 0) { v.type = kind::boolean; i += 5; return v; }
    if (s.compare(i, 4, "null") == 0) { i += 4; return v; }
    char* end = nullptr;
    v.num = std::strtod(s.c_str() + i, &end);
    if (end == s.c_str() + i) throw std::runtime_error("json: bad value at " + std::to_string(i));
    v.type = kind::number;
    i = static_cast<std::size_t>(end - s.c_str());
    return v;
  }
};

}  // namespace lagkv_test
