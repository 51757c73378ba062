#pragma once
// The .npy and .npz file formats, parsed without LibTorch (c10 errors only) so that the
// parsers can be fuzzed on their own (tests/fuzz/). Readers that turn them into tensors are
// in calq/data/arrays.h.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace calq {
namespace data {

/// A .npy header (format versions 1.0, 2.0, 3.0).
struct NpyHeader {
  /// 'f' float, 'i' signed int, 'u' unsigned int, 'b' bool.
  char kind = 'f';
  /// Bytes per element: 2/4/8 for floats, 1/2/4/8 for integers, 1 for bool.
  int64_t item_size = 4;
  /// False for big-endian data ('>'); single-byte types count as little-endian.
  bool little_endian = true;
  bool fortran_order = false;
  std::vector<int64_t> shape;
  /// Byte offset of the data from the start of the file (a multiple of 16 or 64).
  int64_t data_offset = 0;

  int64_t numel() const;
  /// numel() * item_size.
  int64_t data_bytes() const;
  /// numpy's descr, e.g. "<f4".
  std::string descr() const;
};

/// Parses the header at the start of `data` (`size` bytes available: at least the header).
/// Errors (c10::Error) name `what` (the file) and the rule: magic string, version, header
/// length, dict syntax, unsupported dtype (objects, strings, complex, structured), shapes
/// with negative or overflowing dims.
NpyHeader parse_npy_header(const char* data, size_t size, const std::string& what);

/// One member of a .zip / .npz archive.
struct ZipEntry {
  std::string name;
  /// 0 (stored) or 8 (deflate); other methods are an error when read.
  int method = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint32_t crc32 = 0;
  /// Offset of the member's (compressed) data from the start of the archive.
  uint64_t data_offset = 0;
};

/// Lists the members of a zip archive from its central directory (zip64 included). `data`
/// is the whole archive (`size` bytes). Every entry's data range is checked to lie inside the
/// archive. Errors name `what`.
std::vector<ZipEntry> parse_zip_directory(const char* data, size_t size, const std::string& what);

/// Decompresses `entry` (stored or deflate) from the archive bytes into `out`, checking the
/// size and CRC-32. For tests and small members; readers stream instead.
void read_zip_entry(const char* data, size_t size, const ZipEntry& entry, std::string& out,
                    const std::string& what);

}  // namespace data
}  // namespace calq
