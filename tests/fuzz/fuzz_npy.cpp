// libFuzzer harness: the .npy reader on arbitrary bytes. It must never crash, hang or allocate
// more than the input justifies; whatever it accepts must survive a write/read round trip.
#include <lagkv/npy.hpp>

#include <cstdint>
#include <cstdlib>
#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  lagkv::npy_array a;
  try {
    a = lagkv::parse_npy(data, size, "fuzz.npy");
  } catch (const lagkv::error&) {
    return 0;  // rejection with a message is the contract
  }
  // Accepted: the payload is exactly what the shape describes, and never larger than the input.
  const std::size_t elem = a.type == lagkv::dtype::f32 ? 4 : 2;
  if (a.bytes.size() != static_cast<std::size_t>(a.size()) * elem || a.bytes.size() > size) std::abort();
  const auto again = lagkv::serialize_npy(a.type, a.shape, a.bytes.data());
  const lagkv::npy_array b = lagkv::parse_npy(again.data(), again.size(), "roundtrip.npy");
  if (b.type != a.type || b.shape != a.shape || b.bytes != a.bytes) std::abort();
  return 0;
}
