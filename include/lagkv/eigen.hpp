#pragma once
/// \file eigen.hpp
/// \brief Eigen interop: see a strided fp32 kv_view as an Eigen matrix without copying, so an
/// engine that does its attention maths with Eigen reads the compressed cache in place.

#include <Eigen/Core>

#include "lagkv/error.hpp"
#include "lagkv/view.hpp"

namespace lagkv {

/// Row-major tokens x head_dim map with the view's own strides (in elements).
template <class T>
using eigen_map = Eigen::Map<std::conditional_t<std::is_const_v<T>,
                                                const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                                                Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>,
                             Eigen::Unaligned, Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>>;

/// \brief Maps an fp32 strided view. \throws lagkv::error for a paged view (no single stride).
template <class T>
eigen_map<T> as_eigen(const kv_view<T>& v) {
  static_assert(std::is_same_v<std::remove_const_t<T>, float>, "as_eigen: only fp32 views map onto Eigen matrices");
  LAGKV_CHECK(!v.is_paged(), "as_eigen: a paged view has no single token stride; copy its blocks instead");
  return eigen_map<T>(v.data(), v.tokens(), v.head_dim(),
                      Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(v.token_stride(), v.channel_stride()));
}

}  // namespace lagkv
