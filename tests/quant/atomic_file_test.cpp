// Atomic writes: content, parent folders, no leftover temporaries, old file kept on failure.

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "calq/util/atomic_file.h"

namespace fs = std::filesystem;

namespace {

class AtomicFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "calq_atomic_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add);
    fs::remove_all(dir_);
  }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  static std::string read(const std::string& file) {
    std::ifstream in(file, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
  }
  // Names of everything under the temp folder (recursive), to spot leftover temporaries.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::recursive_directory_iterator(dir_)) {
      names.push_back(fs::relative(entry.path(), dir_).string());
    }
    std::sort(names.begin(), names.end());
    return names;
  }

  std::string dir_;
};

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  ADD_FAILURE() << "expected a c10::Error";
  return "";
}

TEST_F(AtomicFileTest, WritesBytesAndCreatesFolders) {
  const std::string bytes("binary\0data\n", 12);
  const std::string file = path("a/b/c.bin");
  calq::util::write_file_atomic(file, bytes);
  EXPECT_EQ(read(file), bytes);
  EXPECT_EQ(listing(), (std::vector<std::string>{"a", "a/b", "a/b/c.bin"}));
  calq::util::write_file_atomic(file, "second");
  EXPECT_EQ(read(file), "second");
  calq::util::write_file_atomic(file, "");
  EXPECT_EQ(read(file), "");
  EXPECT_EQ(listing(), (std::vector<std::string>{"a", "a/b", "a/b/c.bin"}));
}

TEST_F(AtomicFileTest, LargeStreamedWrite) {
  // Larger than the 64 KiB stream buffer, so several flushes happen.
  const std::string file = path("big.txt");
  calq::util::write_file_atomic(file, [](std::ostream& out) {
    for (int i = 0; i < 100000; ++i) out << i << '\n';
  });
  std::ifstream in(file);
  int value = -1;
  int count = 0;
  while (in >> value) ASSERT_EQ(value, count++);
  EXPECT_EQ(count, 100000);
}

TEST_F(AtomicFileTest, UsesUmaskPermissions) {
  const mode_t mask = ::umask(022);
  calq::util::write_file_atomic(path("mode.txt"), "x");
  ::umask(mask);
  struct stat info {};
  ASSERT_EQ(::stat(path("mode.txt").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u);
}

TEST_F(AtomicFileTest, ThrowingWriterKeepsOldFile) {
  const std::string file = path("model.pt");
  calq::util::write_file_atomic(file, "old");
  EXPECT_THROW(calq::util::write_file_atomic(file,
                                             [](std::ostream& out) {
                                               out << std::string(200000, 'x');
                                               throw std::runtime_error("writer failed");
                                             }),
               std::runtime_error);
  EXPECT_EQ(read(file), "old");
  EXPECT_EQ(listing(), std::vector<std::string>{"model.pt"});
}

TEST_F(AtomicFileTest, TargetIsAFolder) {
  fs::create_directories(path("taken/inner"));
  const std::string message = error_of([&] { calq::util::write_file_atomic(path("taken"), "x"); });
  EXPECT_NE(message.find("cannot write '" + path("taken") + "'"), std::string::npos) << message;
  EXPECT_NE(message.find("renaming the temporary file over it failed: Is a directory"),
            std::string::npos)
      << message;
  EXPECT_EQ(listing(), (std::vector<std::string>{"taken", "taken/inner"}));
}

TEST_F(AtomicFileTest, ParentIsAFile) {
  calq::util::write_file_atomic(path("plain"), "x");
  const std::string message =
      error_of([&] { calq::util::write_file_atomic(path("plain/sub/file"), "y"); });
  EXPECT_NE(message.find("creating the folder '" + path("plain/sub") + "' failed"),
            std::string::npos)
      << message;
  EXPECT_EQ(read(path("plain")), "x");
}

TEST_F(AtomicFileTest, UnwritableFolderKeepsOldFile) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores folder permissions";
  const std::string file = path("ro/keep.txt");
  calq::util::write_file_atomic(file, "old");
  fs::permissions(path("ro"), fs::perms::owner_read | fs::perms::owner_exec);
  const std::string message = error_of([&] { calq::util::write_file_atomic(file, "new"); });
  fs::permissions(path("ro"), fs::perms::owner_all);
  EXPECT_NE(message.find("creating the temporary file"), std::string::npos) << message;
  EXPECT_NE(message.find("Permission denied"), std::string::npos) << message;
  EXPECT_EQ(read(file), "old");
  EXPECT_EQ(listing(), (std::vector<std::string>{"ro", "ro/keep.txt"}));
}

TEST_F(AtomicFileTest, FailedWriteKeepsOldFile) {
  // A file-size limit makes write() fail with EFBIG, for root too (SIGXFSZ ignored so that
  // the error is returned instead of the process being killed).
  const std::string file = path("limit.txt");
  calq::util::write_file_atomic(file, "old");
  struct rlimit saved {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string message =
      error_of([&] { calq::util::write_file_atomic(file, std::string(1 << 20, 'x')); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_NE(message.find("cannot write '" + file + "': writing the data failed: File too large"),
            std::string::npos)
      << message;
  EXPECT_EQ(read(file), "old");
  EXPECT_EQ(listing(), std::vector<std::string>{"limit.txt"});
}

TEST_F(AtomicFileTest, EmptyPathOrFolderPath) {
  EXPECT_NE(error_of([] { calq::util::write_file_atomic("", "x"); }).find("non-empty path"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              calq::util::write_file_atomic(dir_ + "/", "x");
            }).find("the path names a folder"),
            std::string::npos);
}

TEST_F(AtomicFileTest, SaveModuleAndTensorRoundTrip) {
  torch::manual_seed(0);
  torch::nn::Linear saved(3, 2);
  calq::util::save_module_atomic(*saved, path("ckpt/linear.pt"));
  torch::nn::Linear loaded(3, 2);
  torch::load(loaded, path("ckpt/linear.pt"));
  EXPECT_TRUE(loaded->weight.equal(saved->weight));
  EXPECT_TRUE(loaded->bias.equal(saved->bias));

  calq::util::save_atomic(saved, path("ckpt/holder.pt"));
  torch::nn::Linear from_holder(3, 2);
  torch::load(from_holder, path("ckpt/holder.pt"));
  EXPECT_TRUE(from_holder->weight.equal(saved->weight));

  const auto tensor = torch::randn({4, 5});
  calq::util::save_atomic(tensor, path("ckpt/tensor.pt"));
  torch::Tensor back;
  torch::load(back, path("ckpt/tensor.pt"));
  EXPECT_TRUE(back.equal(tensor));
  EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt", "ckpt/holder.pt", "ckpt/linear.pt",
                                                 "ckpt/tensor.pt"}));
}

}  // namespace
