#pragma once
/// \file error.hpp
/// \brief The one exception type of the library and the check macro that throws it.
///
/// Every message names the offending parameter and its value ("lag=1: must be >= 2"), so an
/// engine can log it verbatim. Functions that throw leave their arguments and any cache they
/// operate on exactly as they were (strong guarantee) unless documented otherwise.

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lagkv {

/// Signed index used for token counts, head_dim and strides throughout the library.
using index_t = std::ptrdiff_t;

/// \brief Thrown for invalid configuration, shapes, file contents or capacity overflow.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <class... Parts>
[[noreturn]] inline void throw_error(Parts&&... parts) {
  std::ostringstream message;
  (message << ... << std::forward<Parts>(parts));
  throw error(message.str());
}

}  // namespace detail
}  // namespace lagkv

/// \brief Throws lagkv::error with the streamed parts as message when `cond` is false.
/// Usage: LAGKV_CHECK(lag >= 2, "lag=", lag, ": must be >= 2");
#define LAGKV_CHECK(cond, ...)                              \
  do {                                                      \
    if (!(cond)) ::lagkv::detail::throw_error(__VA_ARGS__); \
  } while (false)
