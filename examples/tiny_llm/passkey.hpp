#pragma once
/// \file passkey.hpp
/// \brief The passkey-retrieval prompts of passkey.py, ported byte for byte (same seeds, same
/// keys, same filler, same depths), so C++ and Python evaluate the same suite.
///
///   prompt = PREFIX + FILLER_BEFORE + NEEDLE + FILLER_AFTER + QUESTION, answer = KEY
///
/// KEY digits come from splitmix64; the filler cycles five sentences and is cut to fit
/// `prompt_len`; the needle sits after floor(depth * sentences) sentences.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tiny_llm::passkey {

inline const std::string kPrefix =
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize it. I will quiz you about the important information there.\n";
inline const std::string kQuestion = "\nWhat is the pass key? The pass key is ";
inline const char* const kFiller[] = {"The grass is green. ", "The sky is blue. ", "The sun is yellow. ",
                                      "Here we go. ", "There and back again. "};

/// splitmix64 (Vigna): the key generator of passkey.py.
struct splitmix64 {
  std::uint64_t state;
  std::uint64_t next() {
    state += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

inline std::string make_key(std::uint64_t seed, int n_digits) {
  splitmix64 rng{seed};
  std::string key;
  for (int i = 0; i < n_digits; ++i) key += static_cast<char>('0' + rng.next() % 10);
  return key;
}

inline std::string needle(const std::string& key) {
  return "The pass key is " + key + ". Remember it. " + key + " is the pass key. ";
}

/// \brief One passkey case: the prompt and the expected answer.
struct sample {
  std::string prompt;
  std::string key;
};

/// passkey.make_prompt(seed, n_digits, depth, prompt_len).
inline sample make_prompt(std::uint64_t seed, int n_digits, double depth, std::ptrdiff_t prompt_len) {
  sample s;
  s.key = make_key(seed, n_digits);
  const std::string nd = needle(s.key);
  const auto budget = prompt_len - static_cast<std::ptrdiff_t>(kPrefix.size() + nd.size() + kQuestion.size());
  std::vector<const char*> sents;
  std::ptrdiff_t used = 0;
  for (std::size_t j = 0;; ++j) {
    const char* sent = kFiller[j % 5];
    const auto len = static_cast<std::ptrdiff_t>(std::char_traits<char>::length(sent));
    if (used + len > budget) break;
    sents.push_back(sent);
    used += len;
  }
  const auto n_sent = static_cast<std::ptrdiff_t>(sents.size());
  auto n_before = static_cast<std::ptrdiff_t>(depth * static_cast<double>(n_sent));  // int(): floor for depth >= 0
  n_before = n_before < 0 ? 0 : (n_before > n_sent ? n_sent : n_before);
  s.prompt = kPrefix;
  for (std::ptrdiff_t i = 0; i < n_before; ++i) s.prompt += sents[static_cast<std::size_t>(i)];
  s.prompt += nd;
  for (std::ptrdiff_t i = n_before; i < n_sent; ++i) s.prompt += sents[static_cast<std::size_t>(i)];
  s.prompt += kQuestion;
  return s;
}

/// Case i of passkey.standard_suite(n, n_digits, prompt_len): seed 1000003*(i+1) + n_digits,
/// depth (i + 0.5) / n — depths spread evenly over the filler.
inline sample standard_case(int i, int n, int n_digits, std::ptrdiff_t prompt_len) {
  const std::uint64_t seed = 1000003ull * static_cast<std::uint64_t>(i + 1) + static_cast<std::uint64_t>(n_digits);
  return make_prompt(seed, n_digits, (i + 0.5) / n, prompt_len);
}

}  // namespace tiny_llm::passkey
