#include "calq/data/npy_format.h"

#include <c10/util/Exception.h>
#include <zlib.h>

#include <cstring>
#include <limits>

namespace calq {
namespace data {
namespace {

// Largest element count an array may declare: keeps byte counts far from overflow.
constexpr int64_t kMaxElements = int64_t(1) << 40;

uint16_t le16(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint16_t>(u[0] | (u[1] << 8));
}
uint32_t le32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | (static_cast<uint32_t>(u[1]) << 8) |
         (static_cast<uint32_t>(u[2]) << 16) | (static_cast<uint32_t>(u[3]) << 24);
}
uint64_t le64(const char* p) {
  return le32(p) | (static_cast<uint64_t>(le32(p + 4)) << 32);
}

// A tiny reader of the header's Python dict literal.
class DictParser {
 public:
  DictParser(const std::string& text, const std::string& what) : s_(text), what_(what) {}

  void expect(char c) {
    skip();
    TORCH_CHECK(i_ < s_.size() && s_[i_] == c, what_, ": .npy header: expected '", c,
                "' at position ", i_, " of ", s_);
    ++i_;
  }
  bool accept(char c) {
    skip();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  std::string string() {
    skip();
    TORCH_CHECK(i_ < s_.size() && (s_[i_] == '\'' || s_[i_] == '"'), what_,
                ": .npy header: expected a quoted string in ", s_);
    const char quote = s_[i_++];
    const size_t end = s_.find(quote, i_);
    TORCH_CHECK(end != std::string::npos, what_, ": .npy header: unterminated string in ", s_);
    std::string out = s_.substr(i_, end - i_);
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    skip();
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      return true;
    }
    TORCH_CHECK(s_.compare(i_, 5, "False") == 0, what_, ": .npy header: expected True or False in ",
                s_);
    i_ += 5;
    return false;
  }
  std::vector<int64_t> tuple() {
    expect('(');
    std::vector<int64_t> out;
    while (!accept(')')) {
      skip();
      int64_t v = 0;
      size_t digits = 0;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
        TORCH_CHECK(digits < 15, what_, ": .npy header: dimension too large in ", s_);
        v = v * 10 + (s_[i_++] - '0');
        ++digits;
      }
      if (i_ < s_.size() && s_[i_] == 'L') ++i_;  // Python 2 long suffix
      TORCH_CHECK(digits > 0, what_, ": .npy header: expected a non-negative integer in ", s_);
      out.push_back(v);
      TORCH_CHECK(out.size() <= 32, what_, ": .npy header: more than 32 dimensions");
      if (!accept(',')) {
        expect(')');
        break;
      }
    }
    return out;
  }

 private:
  void skip() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t')) ++i_;
  }
  const std::string& s_;
  const std::string& what_;
  size_t i_ = 0;
};

}  // namespace

int64_t NpyHeader::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t NpyHeader::data_bytes() const {
  return numel() * item_size;
}

std::string NpyHeader::descr() const {
  return std::string(item_size == 1  ? "|"
                     : little_endian ? "<"
                                     : ">") +
         kind + std::to_string(item_size);
}

NpyHeader parse_npy_header(const char* data, size_t size, const std::string& what) {
  TORCH_CHECK(size >= 10 && std::memcmp(data, "\x93NUMPY", 6) == 0, what,
              ": not a .npy file (no \\x93NUMPY magic string)");
  const int major = static_cast<unsigned char>(data[6]);
  TORCH_CHECK(major >= 1 && major <= 3, what, ": .npy format version ", major,
              " is not supported (1, 2 or 3)");
  size_t header_len = 0, start = 0;
  if (major == 1) {
    header_len = le16(data + 8);
    start = 10;
  } else {
    TORCH_CHECK(size >= 12, what, ": truncated .npy header");
    header_len = le32(data + 8);
    start = 12;
  }
  TORCH_CHECK(header_len <= (1u << 20) && start + header_len <= size, what,
              ": truncated .npy header (", header_len, " bytes announced, ", size - start,
              " present)");
  const std::string text(data + start, header_len);
  NpyHeader h;
  h.data_offset = static_cast<int64_t>(start + header_len);
  DictParser p(text, what);
  p.expect('{');
  bool has_descr = false, has_order = false, has_shape = false;
  while (!p.accept('}')) {
    const std::string key = p.string();
    p.expect(':');
    if (key == "descr") {
      const std::string d = p.string();
      TORCH_CHECK(d.size() >= 3 && d.size() <= 4, what, ": dtype '", d,
                  "' is not supported (float16/32/64, int8-64, uint8-64, bool)");
      const char order = d[0];
      TORCH_CHECK(order == '<' || order == '>' || order == '|' || order == '=', what, ": dtype '",
                  d, "' has an unknown byte order");
      h.kind = d[1];
      int64_t n = 0;
      for (size_t i = 2; i < d.size(); ++i) {
        TORCH_CHECK(d[i] >= '0' && d[i] <= '9', what, ": dtype '", d, "' is not supported");
        n = n * 10 + (d[i] - '0');
      }
      h.item_size = n;
      const bool ok =
          (h.kind == 'f' && (n == 2 || n == 4 || n == 8)) ||
          ((h.kind == 'i' || h.kind == 'u') && (n == 1 || n == 2 || n == 4 || n == 8)) ||
          (h.kind == 'b' && n == 1);
      TORCH_CHECK(ok, what, ": dtype '", d,
                  "' is not supported (float16/32/64, int8-64, uint8-64, bool)");
      h.little_endian = order != '>' || n == 1;
      has_descr = true;
    } else if (key == "fortran_order") {
      h.fortran_order = p.boolean();
      has_order = true;
    } else if (key == "shape") {
      h.shape = p.tuple();
      has_shape = true;
    } else {
      TORCH_CHECK(false, what, ": unknown .npy header key '", key, "'");
    }
    if (!p.accept(',')) {
      p.expect('}');
      break;
    }
  }
  TORCH_CHECK(has_descr && has_order && has_shape, what,
              ": .npy header must give descr, fortran_order and shape: ", text);
  int64_t n = 1;
  for (int64_t d : h.shape) {
    TORCH_CHECK(d == 0 || n <= kMaxElements / d, what, ": shape has more than 2^40 elements");
    n *= d;
  }
  return h;
}

std::vector<ZipEntry> parse_zip_directory(const char* data, size_t size, const std::string& what) {
  TORCH_CHECK(size >= 22, what, ": not a zip archive (", size, " bytes)");
  // End of central directory: the last signature within 64 KiB + 22 bytes of the end.
  size_t eocd = std::string::npos;
  const size_t lowest = size > 65557 ? size - 65557 : 0;
  for (size_t i = size - 22 + 1; i-- > lowest;) {
    if (le32(data + i) == 0x06054b50u) {
      eocd = i;
      break;
    }
  }
  TORCH_CHECK(eocd != std::string::npos, what, ": not a zip archive (no end of central directory)");
  uint64_t count = le16(data + eocd + 10);
  uint64_t cd_size = le32(data + eocd + 12);
  uint64_t cd_offset = le32(data + eocd + 16);
  if ((count == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu) && eocd >= 20 &&
      le32(data + eocd - 20) == 0x07064b50u) {
    const uint64_t z64 = le64(data + eocd - 20 + 8);
    TORCH_CHECK(size >= 56 && z64 <= size - 56 && le32(data + z64) == 0x06064b50u, what,
                ": corrupt zip64 end of central directory");
    count = le64(data + z64 + 32);
    cd_size = le64(data + z64 + 40);
    cd_offset = le64(data + z64 + 48);
  }
  TORCH_CHECK(cd_offset <= size && cd_size <= size - cd_offset, what,
              ": the central directory lies outside the archive");
  TORCH_CHECK(count <= cd_size / 46, what, ": ", count, " entries cannot fit a ", cd_size,
              "-byte central directory");
  std::vector<ZipEntry> entries;
  size_t p = cd_offset;
  const size_t end = cd_offset + cd_size;
  for (uint64_t k = 0; k < count; ++k) {
    TORCH_CHECK(p + 46 <= end && le32(data + p) == 0x02014b50u, what,
                ": corrupt central directory entry ", k);
    ZipEntry e;
    const uint16_t flags = le16(data + p + 8);
    TORCH_CHECK((flags & 1) == 0, what, ": encrypted zip members are not supported");
    e.method = le16(data + p + 10);
    e.crc32 = le32(data + p + 16);
    e.compressed_size = le32(data + p + 20);
    e.uncompressed_size = le32(data + p + 24);
    const size_t name_len = le16(data + p + 28), extra_len = le16(data + p + 30),
                 comment_len = le16(data + p + 32);
    uint64_t local = le32(data + p + 42);
    TORCH_CHECK(p + 46 + name_len + extra_len + comment_len <= end, what,
                ": corrupt central directory entry ", k);
    e.name.assign(data + p + 46, name_len);
    // Zip64 extra field: 64-bit sizes and offset where the 32-bit ones are saturated.
    size_t x = p + 46 + name_len;
    const size_t x_end = x + extra_len;
    while (x + 4 <= x_end) {
      const uint16_t id = le16(data + x), len = le16(data + x + 2);
      TORCH_CHECK(x + 4 + len <= x_end, what, ": corrupt extra field in entry '", e.name, "'");
      if (id == 0x0001) {
        size_t f = x + 4;
        auto take = [&](uint64_t& v) {
          if (v != 0xFFFFFFFFu) return;
          TORCH_CHECK(f + 8 <= x + 4 + len, what, ": truncated zip64 field in '", e.name, "'");
          v = le64(data + f);
          f += 8;
        };
        take(e.uncompressed_size);
        take(e.compressed_size);
        take(local);
      }
      x += 4 + len;
    }
    TORCH_CHECK(local <= size && size - local >= 30 && le32(data + local) == 0x04034b50u, what,
                ": member '", e.name, "' has no local header at offset ", local);
    const uint64_t data_start = local + 30 + le16(data + local + 26) + le16(data + local + 28);
    TORCH_CHECK(data_start <= size && e.compressed_size <= size - data_start, what, ": member '",
                e.name, "' runs past the end of the archive (truncated file?)");
    e.data_offset = data_start;
    entries.push_back(std::move(e));
    p += 46 + name_len + extra_len + comment_len;
  }
  return entries;
}

void read_zip_entry(const char* data, size_t size, const ZipEntry& entry, std::string& out,
                    const std::string& what) {
  TORCH_CHECK(entry.data_offset <= size && entry.compressed_size <= size - entry.data_offset, what,
              ": member '", entry.name, "' lies outside the archive");
  TORCH_CHECK(entry.uncompressed_size < (uint64_t(1) << 32), what, ": member '", entry.name,
              "' is too large to read whole (", entry.uncompressed_size, " bytes)");
  const char* src = data + entry.data_offset;
  if (entry.method == 0) {
    TORCH_CHECK(entry.compressed_size == entry.uncompressed_size, what, ": stored member '",
                entry.name, "' has different compressed and uncompressed sizes");
    out.assign(src, entry.compressed_size);
  } else {
    TORCH_CHECK(entry.method == 8, what, ": member '", entry.name, "' uses compression method ",
                entry.method, "; calq reads stored (0) and deflate (8)");
    out.assign(entry.uncompressed_size, '\0');
    z_stream z;
    std::memset(&z, 0, sizeof(z));
    TORCH_CHECK(inflateInit2(&z, -MAX_WBITS) == Z_OK, what, ": zlib initialisation failed");
    z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(src));
    z.avail_in = static_cast<uInt>(std::min<uint64_t>(entry.compressed_size, UINT32_MAX));
    z.next_out = reinterpret_cast<Bytef*>(out.empty() ? nullptr : &out[0]);
    z.avail_out = static_cast<uInt>(out.size());
    const int status = inflate(&z, Z_FINISH);
    const uint64_t produced = z.total_out;
    inflateEnd(&z);
    TORCH_CHECK(status == Z_STREAM_END && produced == entry.uncompressed_size, what, ": member '",
                entry.name, "' does not inflate to its ", entry.uncompressed_size,
                " bytes (corrupt or truncated)");
  }
  const uLong crc =
      crc32(0L, reinterpret_cast<const Bytef*>(out.data()), static_cast<uInt>(out.size()));
  TORCH_CHECK(crc == entry.crc32, what, ": member '", entry.name, "' fails its CRC-32 check");
}

}  // namespace data
}  // namespace calq
