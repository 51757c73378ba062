#include "calq/util/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <streambuf>
#include <vector>

namespace calq {
namespace util {
namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

// std::streambuf over a POSIX file descriptor, so that the data can be fsync'ed before the
// rename (std::ofstream gives no access to its descriptor). Records the first write error.
class FdStreamBuf : public std::streambuf {
 public:
  explicit FdStreamBuf(int fd) : fd_(fd), buffer_(1 << 16) {
    setp(buffer_.data(), buffer_.data() + buffer_.size());
  }
  int error() const { return error_; }

  // Writes out the buffered bytes; false (and error() set) on failure.
  bool flush_buffer() {
    const char* data = pbase();
    size_t left = static_cast<size_t>(pptr() - pbase());
    while (left > 0 && error_ == 0) {
      const ssize_t written = ::write(fd_, data, left);
      if (written < 0) {
        if (errno == EINTR) continue;
        error_ = errno;
      } else {
        data += written;
        left -= static_cast<size_t>(written);
      }
    }
    setp(buffer_.data(), buffer_.data() + buffer_.size());
    return error_ == 0;
  }

 protected:
  int_type overflow(int_type ch) override {
    if (!flush_buffer()) return traits_type::eof();
    if (!traits_type::eq_int_type(ch, traits_type::eof())) {
      *pptr() = traits_type::to_char_type(ch);
      pbump(1);
    }
    return traits_type::not_eof(ch);
  }
  int sync() override { return flush_buffer() ? 0 : -1; }

 private:
  int fd_;
  std::vector<char> buffer_;
  int error_ = 0;
};

// A uniquely named temporary next to the target, removed on destruction unless committed.
class TempFile {
 public:
  explicit TempFile(const std::filesystem::path& target) : target_(target) {
    static std::atomic<uint64_t> counter{0};
    const std::string stem =
        "." + target.filename().string() + ".tmp." + std::to_string(::getpid()) + ".";
    for (int attempt = 0; attempt < 100 && fd_ < 0; ++attempt) {
      path_ = target.parent_path() / (stem + std::to_string(counter++));
      // 0666 so that the umask applies, as for any newly created file.
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ < 0 && errno != EEXIST) break;
    }
    TORCH_CHECK(fd_ >= 0, "cannot write '", target.string(), "': creating the temporary file '",
                path_.string(), "' failed: ", errno_text(errno));
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  int fd() const { return fd_; }

  // fsync + close + rename over the target + fsync of the folder (so the rename survives a
  // crash; best effort, some file systems refuse to fsync folders).
  void commit() {
    fail_if(::fsync(fd_) != 0, "flushing to disk (fsync) failed");
    const int fd = fd_;
    fd_ = -1;
    fail_if(::close(fd) != 0, "closing the temporary file failed");
    fail_if(::rename(path_.c_str(), target_.c_str()) != 0,
            "renaming the temporary file over it failed");
    committed_ = true;
    const std::string dir = target_.parent_path().empty() ? "." : target_.parent_path().string();
    const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
      ::fsync(dir_fd);
      ::close(dir_fd);
    }
  }

  void fail_if(bool failed, const char* step) const {
    if (failed) {
      const int err = errno;
      TORCH_CHECK(false, "cannot write '", target_.string(), "': ", step, ": ", errno_text(err));
    }
  }
  void fail_with(int err, const char* step) const {
    TORCH_CHECK(false, "cannot write '", target_.string(), "': ", step, ": ", errno_text(err));
  }

 private:
  std::filesystem::path target_;
  std::filesystem::path path_;
  int fd_ = -1;
  bool committed_ = false;
};

void create_parent_dirs(const std::filesystem::path& target) {
  const auto parent = target.parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(parent, ec);
  TORCH_CHECK(!ec, "cannot write '", target.string(), "': creating the folder '", parent.string(),
              "' failed: ", ec.message());
}

}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& writer) {
  TORCH_CHECK(!path.empty(), "write_file_atomic needs a non-empty path");
  const std::filesystem::path target(path);
  TORCH_CHECK(!target.filename().empty(), "cannot write '", path, "': the path names a folder");
  create_parent_dirs(target);
  TempFile temp(target);
  FdStreamBuf buffer(temp.fd());
  std::ostream out(&buffer);
  writer(out);
  out.flush();
  if (buffer.error() != 0) temp.fail_with(buffer.error(), "writing the data failed");
  TORCH_CHECK(out.good(), "cannot write '", path, "': the output stream failed");
  temp.commit();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic(path, [&bytes](std::ostream& out) {
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
}

void save_archive_atomic(torch::serialize::OutputArchive& archive, const std::string& path) {
  write_file_atomic(path, [&archive](std::ostream& out) { archive.save_to(out); });
}

void save_module_atomic(const torch::nn::Module& module, const std::string& path) {
  torch::serialize::OutputArchive archive;
  module.save(archive);
  save_archive_atomic(archive, path);
}

}  // namespace util
}  // namespace calq
