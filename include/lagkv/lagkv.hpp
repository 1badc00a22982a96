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
///   LAGKV_NO_SIMD   define before including: build the portable scalar kernels only (no x86
///                   target regions, no NEON). Run time: LAGKV_SIMD=scalar|avx2|avx512|neon picks
///                   a target (see simd/dispatch.hpp).

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
#include "lagkv/executor.hpp"
#include "lagkv/widen.hpp"
#include "lagkv/policy/policy.hpp"
#include "lagkv/policy/budget.hpp"
#include "lagkv/policy/lagkv.hpp"
#include "lagkv/policy/l2norm.hpp"
#include "lagkv/policy/h2o.hpp"
#include "lagkv/policy/streaming.hpp"
#include "lagkv/policy/random.hpp"
#include "lagkv/policy/any.hpp"
#include "lagkv/cache.hpp"
#include "lagkv/paged.hpp"
#include "lagkv/q8_0.hpp"
#include "lagkv/simd/q8_0_dispatch.hpp"
