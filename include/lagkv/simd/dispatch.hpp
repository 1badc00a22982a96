#pragma once
/// \file simd/dispatch.hpp
/// \brief Entry points the policies call for scoring; they pick the best kernel for this CPU.
/// (Placeholder until the SIMD kernels land: forwards to the scalar reference.)

#include "lagkv/score/l2norm.hpp"
#include "lagkv/score/lagkv.hpp"

namespace lagkv {
namespace dispatch {

/// Same contract as reference::lagkv_chunk_scores, computed by the fastest available kernel.
template <class T>
void lagkv_chunk_scores(kv_view<const T> k_chunk, kv_view<const T> k_ref, kv_view<const T> v_chunk,
                        kv_view<const T> v_ref, double score_v_ratio, float* out) {
  reference::lagkv_chunk_scores<T>(k_chunk, k_ref, v_chunk, v_ref, score_v_ratio, out);
}

/// Same contract as reference::l2norm_scores.
template <class T>
void l2norm_scores(kv_view<const T> keys, float* out) {
  reference::l2norm_scores<T>(keys, out);
}

}  // namespace dispatch
}  // namespace lagkv
