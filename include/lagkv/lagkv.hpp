#pragma once
/// \file lagkv.hpp
/// \brief Umbrella header: the whole public API of lagkv.
///
/// The data path, in reading order:
///   score/   per-token importance (LagKV, L2-norm)      -> scores
///   select   deterministic top-k                         -> kept indices (ascending)
///   compact  in-place gather of kept rows                -> the shrunk cache
///
/// Macros:
///   (none yet)

#include "lagkv/version.hpp"
#include "lagkv/error.hpp"
#include "lagkv/dtype.hpp"
#include "lagkv/view.hpp"
#include "lagkv/npy.hpp"
#include "lagkv/eigen.hpp"
#include "lagkv/score/lagkv.hpp"
#include "lagkv/score/l2norm.hpp"
#include "lagkv/select.hpp"
#include "lagkv/compact.hpp"
#include "lagkv/rope.hpp"
#include "lagkv/simd/dispatch.hpp"
