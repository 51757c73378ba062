// libFuzzer target: the .npy header parser and the zip (.npz) directory reader and inflater
// on arbitrary bytes. Every input must parse or raise c10::Error.
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>

#include "calq/data/npy_format.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const char* bytes = reinterpret_cast<const char*>(data);
  try {
    calq::data::NpyHeader h = calq::data::parse_npy_header(bytes, size, "fuzz.npy");
    (void)h.data_bytes();
    (void)h.descr();
  } catch (const c10::Error&) {
  }
  try {
    const auto entries = calq::data::parse_zip_directory(bytes, size, "fuzz.npz");
    for (const auto& e : entries) {
      if (e.uncompressed_size > (1u << 24)) continue;  // keep each run fast
      std::string out;
      try {
        calq::data::read_zip_entry(bytes, size, e, out, "fuzz.npz");
        calq::data::parse_npy_header(out.data(), out.size(), "fuzz.npz member");
      } catch (const c10::Error&) {
      }
    }
  } catch (const c10::Error&) {
  }
  return 0;
}
