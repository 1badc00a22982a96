#pragma once
/// \file version.hpp
/// \brief Library version; CMake parses these three lines, keep their shape.

#define LAGKV_VERSION_MAJOR 0
#define LAGKV_VERSION_MINOR 1
#define LAGKV_VERSION_PATCH 0
