#include "calq/data/idx.h"

#include <zlib.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>

namespace calq {
namespace data {
namespace {

// Owns a zlib file handle. gzopen reads gzip and raw files alike, so an already decompressed
// idx file works too.
class GzFile {
 public:
  explicit GzFile(const std::string& path) : path_(path) {
    TORCH_CHECK(std::filesystem::is_regular_file(path), "idx file '", path,
                "' does not exist or is not a regular file");
    file_ = gzopen(path.c_str(), "rb");
    TORCH_CHECK(file_ != nullptr, "cannot open idx file '", path, "': ", std::strerror(errno));
    // A larger buffer than zlib's 8 KiB default roughly halves the time to inflate 47 MB.
    gzbuffer(file_, 1 << 20);
  }
  ~GzFile() {
    if (file_ != nullptr) gzclose(file_);
  }
  GzFile(const GzFile&) = delete;
  GzFile& operator=(const GzFile&) = delete;

  const std::string& path() const { return path_; }

  // Reads up to `size` bytes; returns how many were read (fewer only at the end of the data).
  // A zlib error (corrupt stream, bad checksum) throws.
  int64_t read(void* data, int64_t size) {
    auto* out = static_cast<char*>(data);
    int64_t done = 0;
    while (done < size) {
      const auto chunk = static_cast<unsigned>(std::min<int64_t>(size - done, INT_MAX / 2));
      const int got = gzread(file_, out + done, chunk);
      if (got < 0) {
        TORCH_CHECK(false, "corrupt idx file '", path_, "': gzip error after ", done,
                    " bytes of a ", size, "-byte read: ", error_text());
      }
      if (got == 0) break;
      done += got;
    }
    return done;
  }

  // Reads exactly `size` bytes of `what` or throws naming the shortfall.
  void read_exact(void* data, int64_t size, const std::string& what) {
    const int64_t got = read(data, size);
    if (got < size) {
      TORCH_CHECK(false, "truncated idx file '", path_, "': expected ", size, " bytes of ", what,
                  ", found only ", got, error_suffix());
    }
  }

  // After the announced data: the stream must end here (and its gzip checksum match).
  void expect_end(int64_t announced_bytes) {
    char extra = 0;
    const int64_t got = read(&extra, 1);
    TORCH_CHECK(got == 0, "idx file '", path_, "' has more bytes than its header announces (",
                announced_bytes, "); the file is corrupt or not an idx file");
  }

 private:
  std::string error_text() const {
    int errnum = Z_OK;
    const char* message = gzerror(file_, &errnum);
    if (errnum == Z_ERRNO) return std::strerror(errno);
    if (message == nullptr) return "unknown zlib error";
    // zlib prefixes its message with the path, which our messages already name.
    std::string text = message;
    const std::string prefix = path_ + ": ";
    if (text.compare(0, prefix.size(), prefix) == 0) text.erase(0, prefix.size());
    return text;
  }
  std::string error_suffix() const {
    int errnum = Z_OK;
    gzerror(file_, &errnum);
    return errnum == Z_OK ? std::string() : " (" + error_text() + ")";
  }

  std::string path_;
  gzFile file_ = nullptr;
};

uint32_t read_be32(GzFile& file, const char* field) {
  unsigned char bytes[4];
  file.read_exact(bytes, 4, std::string("header field '") + field + "'");
  return (uint32_t{bytes[0]} << 24) | (uint32_t{bytes[1]} << 16) | (uint32_t{bytes[2]} << 8) |
         uint32_t{bytes[3]};
}

void check_magic(GzFile& file, bool labels) {
  const int64_t expected = labels ? kIdxLabelsMagic : kIdxImagesMagic;
  const int64_t magic = read_be32(file, "magic");
  TORCH_CHECK(magic == expected, "idx file '", file.path(), "' has magic number ", magic,
              ", expected ", expected, " (", labels ? "labels, idx1-ubyte" : "images, idx3-ubyte",
              "); is it the right file?");
}

int64_t rows_to_read(const std::string& path, int64_t count, c10::optional<int64_t> limit) {
  if (!limit.has_value()) return count;
  TORCH_CHECK(*limit >= 1, "limit must be >= 1 (or unset to read all examples), got ", *limit,
              " for '", path, "'");
  return std::min(count, *limit);
}

}  // namespace

int64_t read_idx_count(const std::string& path, bool labels) {
  GzFile file(path);
  check_magic(file, labels);
  return read_be32(file, "count");
}

torch::Tensor read_idx_images(const std::string& path, c10::optional<int64_t> limit,
                              int64_t expected_rows, int64_t expected_cols) {
  GzFile file(path);
  check_magic(file, /*labels=*/false);
  const int64_t count = read_be32(file, "count");
  const int64_t rows = read_be32(file, "rows");
  const int64_t cols = read_be32(file, "cols");
  TORCH_CHECK(rows == expected_rows && cols == expected_cols, "idx file '", path,
              "' holds images of ", rows, "x", cols, ", expected ", expected_rows, "x",
              expected_cols);
  const int64_t n = rows_to_read(path, count, limit);
  auto pixels = torch::empty({n, rows, cols}, torch::kUInt8);
  file.read_exact(pixels.data_ptr<uint8_t>(), pixels.numel(),
                  "pixel data (" + std::to_string(n) + " images of " + std::to_string(rows) + "x" +
                      std::to_string(cols) + ")");
  if (n == count) file.expect_end(count * rows * cols);
  return pixels;
}

torch::Tensor read_idx_labels(const std::string& path, c10::optional<int64_t> limit,
                              int64_t num_classes) {
  GzFile file(path);
  check_magic(file, /*labels=*/true);
  const int64_t count = read_be32(file, "count");
  const int64_t n = rows_to_read(path, count, limit);
  std::vector<uint8_t> bytes(static_cast<size_t>(n));
  file.read_exact(bytes.data(), n, std::to_string(n) + " labels");
  if (n == count) file.expect_end(count);
  auto labels = torch::empty({n}, torch::kInt64);
  auto* out = labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(bytes[i] < num_classes, "idx file '", path, "' has label ", int{bytes[i]},
                " at index ", i, ", expected a class index in [0, ", num_classes, ")");
    out[i] = bytes[i];
  }
  return labels;
}

}  // namespace data
}  // namespace calq
