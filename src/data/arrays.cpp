#include "calq/data/arrays.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <mutex>

namespace calq {
namespace data {
namespace detail {

// Bytes of one array's data, read by offset.
class ArraySource {
 public:
  virtual ~ArraySource() = default;
  virtual uint64_t size() const = 0;
  /// Copies [offset, offset + n) into dst.
  virtual void read(uint64_t offset, uint64_t n, char* dst) = 0;
};

// A read-only memory map of a whole file.
class MappedFile : public ArraySource {
 public:
  explicit MappedFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    TORCH_CHECK(fd_ >= 0, "cannot open '", path, "': ", std::strerror(errno));
    struct stat st;
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      TORCH_CHECK(false, "'", path, "' is not a regular file");
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        ::close(fd_);
        TORCH_CHECK(false, "cannot map '", path, "': ", std::strerror(errno));
      }
      data_ = static_cast<const char*>(p);
    }
  }
  ~MappedFile() override {
    if (data_ != nullptr) ::munmap(const_cast<char*>(data_), size_);
    ::close(fd_);
  }
  uint64_t size() const override { return size_; }
  const char* data() const { return data_; }
  void read(uint64_t offset, uint64_t n, char* dst) override {
    TORCH_INTERNAL_ASSERT(offset <= size_ && n <= size_ - offset);
    if (n == 0) return;
    std::memcpy(dst, data_ + offset, n);
    // Hand the pages back: the caller keeps the copy, and a file read once from start to end
    // (calibration data) would otherwise stay mapped in this process, its resident memory
    // growing with the file. The pages are clean (read-only mapping): a later read maps them
    // again from the page cache.
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t begin = offset / page * page;
    ::madvise(const_cast<char*>(data_) + begin, offset + n - begin, MADV_DONTNEED);
  }

 private:
  int fd_ = -1;
  const char* data_ = nullptr;
  uint64_t size_ = 0;
};

// A window [begin, begin + length) of another source (a stored zip member).
class Window : public ArraySource {
 public:
  Window(std::shared_ptr<ArraySource> base, uint64_t begin, uint64_t length)
      : base_(std::move(base)), begin_(begin), length_(length) {}
  uint64_t size() const override { return length_; }
  void read(uint64_t offset, uint64_t n, char* dst) override {
    TORCH_INTERNAL_ASSERT(offset <= length_ && n <= length_ - offset);
    base_->read(begin_ + offset, n, dst);
  }

 private:
  std::shared_ptr<ArraySource> base_;
  uint64_t begin_, length_;
};

// A deflated zip member, inflated as it is read (forward reads stream; a read before the
// current position restarts from the beginning).
class Inflated : public ArraySource {
 public:
  Inflated(std::shared_ptr<MappedFile> file, ZipEntry entry, std::string what)
      : file_(std::move(file)), entry_(std::move(entry)), what_(std::move(what)) {
    restart();
  }
  ~Inflated() override { inflateEnd(&z_); }
  uint64_t size() const override { return entry_.uncompressed_size; }
  void read(uint64_t offset, uint64_t n, char* dst) override {
    std::lock_guard<std::mutex> lock(mutex_);
    TORCH_CHECK(offset <= size() && n <= size() - offset, what_, ": read beyond the member");
    if (offset < position_) restart();
    char skip[16384];
    while (position_ < offset) {
      const uint64_t step = std::min<uint64_t>(sizeof(skip), offset - position_);
      produce(skip, step);
    }
    produce(dst, n);
  }

 private:
  void restart() {
    if (started_) inflateEnd(&z_);
    std::memset(&z_, 0, sizeof(z_));
    TORCH_CHECK(inflateInit2(&z_, -MAX_WBITS) == Z_OK, what_, ": zlib initialisation failed");
    started_ = true;
    z_.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(file_->data() + entry_.data_offset));
    consumed_ = 0;
    position_ = 0;
  }
  void produce(char* dst, uint64_t n) {
    uint64_t done = 0;
    while (done < n) {
      if (z_.avail_in == 0) {
        const uint64_t left = entry_.compressed_size - consumed_;
        const uint64_t chunk = std::min<uint64_t>(left, 1u << 30);
        z_.avail_in = static_cast<uInt>(chunk);
        consumed_ += chunk;
      }
      const uint64_t want = std::min<uint64_t>(n - done, 1u << 30);
      z_.next_out = reinterpret_cast<Bytef*>(dst + done);
      z_.avail_out = static_cast<uInt>(want);
      const int status = inflate(&z_, Z_NO_FLUSH);
      const uint64_t got = want - z_.avail_out;
      done += got;
      position_ += got;
      TORCH_CHECK(status == Z_OK || (status == Z_STREAM_END && done == n), what_,
                  ": the deflated data is corrupt or truncated (zlib status ", status, ")");
      TORCH_CHECK(got > 0 || z_.avail_in > 0 || consumed_ < entry_.compressed_size, what_,
                  ": the deflated data ends early");
    }
  }

  std::shared_ptr<MappedFile> file_;
  ZipEntry entry_;
  std::string what_;
  z_stream z_;
  bool started_ = false;
  uint64_t consumed_ = 0, position_ = 0;
  std::mutex mutex_;
};

}  // namespace detail

namespace {

at::ScalarType file_type(const NpyHeader& h) {
  switch (h.kind) {
    case 'f':
      return h.item_size == 2 ? at::kHalf : h.item_size == 4 ? at::kFloat : at::kDouble;
    case 'b':
      return at::kBool;
    case 'i':
      return h.item_size == 1   ? at::kChar
             : h.item_size == 2 ? at::kShort
             : h.item_size == 4 ? at::kInt
                                : at::kLong;
    default:                                            // 'u'
      return h.item_size == 1 ? at::kByte : at::kLong;  // wider unsigned: converted below
  }
}

// Reads the header from the first bytes of a source.
NpyHeader read_header(detail::ArraySource& source, const std::string& what) {
  const uint64_t probe = std::min<uint64_t>(source.size(), (1u << 20) + 12);
  std::string head(probe, '\0');
  source.read(0, probe, head.empty() ? nullptr : &head[0]);
  NpyHeader h = parse_npy_header(head.data(), head.size(), what);
  TORCH_CHECK(!h.fortran_order || h.shape.size() <= 1, what,
              ": Fortran-order arrays are not supported; save with np.ascontiguousarray");
  const uint64_t need =
      static_cast<uint64_t>(h.data_offset) + static_cast<uint64_t>(h.data_bytes());
  TORCH_CHECK(source.size() >= need, what, ": the data part is truncated (", source.size(),
              " bytes, the header announces ", need, ")");
  return h;
}

}  // namespace

NpyArray::NpyArray(std::shared_ptr<detail::ArraySource> source, NpyHeader header, std::string what)
    : source_(std::move(source)), header_(std::move(header)), what_(std::move(what)) {}

NpyArray NpyArray::open(const std::string& path) {
  auto file = std::make_shared<detail::MappedFile>(path);
  NpyHeader h = read_header(*file, path);
  return NpyArray(file, h, path);
}

int64_t NpyArray::size() const {
  if (source_ == nullptr) return 0;
  return header_.shape.empty() ? 1 : header_.shape[0];
}

at::Tensor NpyArray::rows(int64_t start, int64_t count, at::ScalarType type) const {
  TORCH_CHECK(source_ != nullptr, "NpyArray: not opened");
  TORCH_CHECK(start >= 0 && count >= 0 && start <= size() && count <= size() - start, what_,
              ": rows [", start, ", ", start + count, ") are outside the array's ", size(),
              " rows");
  std::vector<int64_t> shape = header_.shape;
  int64_t row_elements = 1;
  for (size_t d = 1; d < shape.size(); ++d) row_elements *= shape[d];
  if (shape.empty()) {
    shape = {};
  } else {
    shape[0] = count;
  }
  const uint64_t row_bytes = static_cast<uint64_t>(row_elements * header_.item_size);
  const uint64_t bytes = row_bytes * static_cast<uint64_t>(shape.empty() ? 1 : count);
  const bool wide_unsigned = header_.kind == 'u' && header_.item_size > 1;
  at::Tensor raw = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  source_->read(static_cast<uint64_t>(header_.data_offset) + row_bytes * start, bytes,
                reinterpret_cast<char*>(raw.data_ptr<uint8_t>()));
  if (!header_.little_endian) {
    // Big-endian file: reverse the bytes of each element.
    raw = raw.reshape({-1, header_.item_size}).flip(1).reshape({-1});
  }
  at::Tensor values;
  if (wide_unsigned) {
    // uint16/32/64 have no ATen type: widen through uint64 (values above 2^63 rejected).
    const int64_t n = static_cast<int64_t>(bytes / header_.item_size);
    values = at::empty({n}, at::kLong);
    const uint8_t* src = raw.data_ptr<uint8_t>();
    int64_t* dst = values.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      uint64_t v = 0;
      std::memcpy(&v, src + i * header_.item_size, static_cast<size_t>(header_.item_size));
      TORCH_CHECK(v <= static_cast<uint64_t>(INT64_MAX), what_, ": value ", v,
                  " does not fit int64");
      dst[i] = static_cast<int64_t>(v);
    }
  } else {
    values = raw.view(file_type(header_));
  }
  return values.reshape(shape).to(type);
}

NpzArchive NpzArchive::open(const std::string& path) {
  NpzArchive a;
  a.path_ = path;
  auto file = std::make_shared<detail::MappedFile>(path);
  a.entries_ = parse_zip_directory(file->data(), file->size(), path);
  a.file_ = file;
  return a;
}

std::vector<std::string> NpzArchive::names() const {
  std::vector<std::string> out;
  for (const auto& e : entries_) {
    const std::string& n = e.name;
    out.push_back(
        n.size() > 4 && n.compare(n.size() - 4, 4, ".npy") == 0 ? n.substr(0, n.size() - 4) : n);
  }
  return out;
}

bool NpzArchive::contains(const std::string& name) const {
  const auto all = names();
  return std::find(all.begin(), all.end(), name) != all.end();
}

NpyArray NpzArchive::array(const std::string& name) const {
  const auto all = names();
  for (size_t i = 0; i < entries_.size(); ++i) {
    if (all[i] != name) continue;
    const ZipEntry& e = entries_[i];
    const std::string what = path_ + ":" + e.name;
    auto mapped = std::static_pointer_cast<detail::MappedFile>(file_);
    std::shared_ptr<detail::ArraySource> source;
    if (e.method == 0) {
      TORCH_CHECK(e.compressed_size == e.uncompressed_size, what,
                  ": stored member with different sizes");
      source = std::make_shared<detail::Window>(file_, e.data_offset, e.uncompressed_size);
    } else {
      TORCH_CHECK(e.method == 8, what, ": compression method ", e.method,
                  " is not supported (stored or deflate)");
      source = std::make_shared<detail::Inflated>(mapped, e, what);
    }
    NpyHeader h = read_header(*source, what);
    return NpyArray(source, h, what);
  }
  std::string list;
  for (const auto& n : all) list += (list.empty() ? "" : ", ") + n;
  TORCH_CHECK(false, path_, " has no array '", name, "'; arrays: ", list);
}

NpzDataset NpzDataset::open(const std::string& path) {
  NpzArchive archive = NpzArchive::open(path);
  NpzDataset d;
  TORCH_CHECK(archive.contains("x"), path,
              ": an .npz data set needs an array 'x' (inputs, one example per row) and may have "
              "'y' (labels); np.savez(path, x=inputs, y=labels)");
  d.x_ = archive.array("x");
  TORCH_CHECK(!d.x_.shape().empty(), path, ": 'x' must have at least one dimension");
  if (archive.contains("y")) {
    d.y_ = archive.array("y");
    const auto& h = d.y_.header();
    TORCH_CHECK(h.kind == 'i' || h.kind == 'u', path, ": labels 'y' must be integers (int64 or ",
                "int32), got dtype ", h.descr());
    TORCH_CHECK(d.y_.shape().size() == 1 && d.y_.size() == d.x_.size(), path, ": 'y' has shape ",
                at::IntArrayRef(d.y_.shape()), "; expected [", d.x_.size(),
                "] (one label per row of 'x')");
    d.has_labels_ = true;
  }
  return d;
}

std::vector<int64_t> NpzDataset::example_shape() const {
  return std::vector<int64_t>(x_.shape().begin() + 1, x_.shape().end());
}

at::Tensor NpzDataset::labels(int64_t start, int64_t count) const {
  return has_labels_ ? y_.rows(start, count, at::kLong) : at::Tensor();
}

}  // namespace data
}  // namespace calq
