// Fashion-MNIST idx reader: small gzip idx files written with zlib in a temp folder.

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "calq/data/fashion_mnist.h"
#include "calq/data/idx.h"
#include "calq/util/timer.h"

namespace fs = std::filesystem;
using calq::data::FashionMnistOptions;
using calq::data::Split;

namespace {

void put_be32(std::string& bytes, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back(static_cast<char>(value >> shift));
}

void write_gzip(const std::string& path, const std::string& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())),
            static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary).write(bytes.data(), bytes.size());
}

// Pixel k of image i: a pattern that covers all 256 values over a few images.
uint8_t pixel(int64_t i, int64_t k) {
  return static_cast<uint8_t>((i * 37 + k * 3) % 256);
}

std::string images_bytes(int64_t count, uint32_t magic = 2051, uint32_t rows = 28,
                         uint32_t cols = 28, int64_t stored = -1) {
  std::string bytes;
  put_be32(bytes, magic);
  put_be32(bytes, static_cast<uint32_t>(count));
  put_be32(bytes, rows);
  put_be32(bytes, cols);
  const int64_t n = stored < 0 ? count : stored;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t k = 0; k < rows * cols; ++k) bytes.push_back(static_cast<char>(pixel(i, k)));
  }
  return bytes;
}

std::string labels_bytes(const std::vector<int>& labels, uint32_t magic = 2049) {
  std::string bytes;
  put_be32(bytes, magic);
  put_be32(bytes, static_cast<uint32_t>(labels.size()));
  for (int label : labels) bytes.push_back(static_cast<char>(label));
  return bytes;
}

class FashionMnistTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "calq_fmnist_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  // A valid train split of 5 examples.
  void write_train(const std::vector<int>& labels = {3, 1, 4, 1, 5}) {
    write_gzip(path("train-images-idx3-ubyte.gz"), images_bytes(5));
    write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes(labels));
  }
  FashionMnistOptions options() const { return FashionMnistOptions().root(dir_); }

  std::string dir_;
};

// Runs `fn`, expects a c10::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    FAIL() << "expected an error containing '" << parts.front() << "'";
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    for (const auto& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos)
          << "message lacks '" << part << "': " << message;
    }
  }
}

TEST_F(FashionMnistTest, ReadsAndNormalizes) {
  write_train();
  const auto data = calq::data::load_fashion_mnist(Split::train, options());
  ASSERT_EQ(data.images.sizes(), (std::vector<int64_t>{5, 1, 28, 28}));
  ASSERT_EQ(data.images.scalar_type(), torch::kFloat32);
  ASSERT_EQ(data.labels.scalar_type(), torch::kInt64);
  EXPECT_EQ(data.size(), 5);
  EXPECT_TRUE(data.labels.equal(torch::tensor({3, 1, 4, 1, 5}, torch::kInt64)));
  const auto flat = data.images.reshape({5, 28 * 28});
  for (int64_t i = 0; i < 5; ++i) {
    for (int64_t k = 0; k < 28 * 28; ++k) {
      // The table entry is computed in double and rounded once to float.
      const auto expected = static_cast<float>((pixel(i, k) / 255.0 - 0.2860) / 0.3530);
      ASSERT_EQ(flat[i][k].item<float>(), expected) << "image " << i << " pixel " << k;
    }
  }
}

TEST_F(FashionMnistTest, CustomNormalization) {
  write_train();
  const auto data = calq::data::load_fashion_mnist(Split::train, options().mean(0.0).std(1.0));
  const auto raw = calq::data::read_idx_images(path("train-images-idx3-ubyte.gz"));
  const auto expected = (raw.to(torch::kFloat64) / 255.0).to(torch::kFloat32).unsqueeze(1);
  EXPECT_TRUE(data.images.equal(expected));
  EXPECT_EQ(data.images.min().item<float>(), 0.0f);
  EXPECT_EQ(data.images.max().item<float>(), 1.0f);
}

TEST_F(FashionMnistTest, RejectsBadNormalization) {
  write_train();
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options().std(0.0)); },
               {"std must be finite and > 0", "got 0"});
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options().mean(NAN)); },
               {"mean must be finite"});
}

TEST_F(FashionMnistTest, LimitReadsThePrefix) {
  write_train();
  const auto all = calq::data::load_fashion_mnist(Split::train, options());
  const auto three = calq::data::load_fashion_mnist(Split::train, options().limit(3));
  ASSERT_EQ(three.size(), 3);
  EXPECT_TRUE(three.images.equal(all.images.narrow(0, 0, 3)));
  EXPECT_TRUE(three.labels.equal(all.labels.narrow(0, 0, 3)));
  EXPECT_EQ(calq::data::load_fashion_mnist(Split::train, options().limit(100)).size(), 5);
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options().limit(0)); },
               {"limit must be >= 1", "got 0"});
}

TEST_F(FashionMnistTest, LimitSkipsTheCorruptTail) {
  // Only the requested prefix is read: a file truncated after 3 images still gives 3.
  write_gzip(path("train-images-idx3-ubyte.gz"), images_bytes(5, 2051, 28, 28, /*stored=*/3));
  write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes({0, 1, 2, 3, 4}));
  EXPECT_EQ(calq::data::load_fashion_mnist(Split::train, options().limit(3)).size(), 3);
}

TEST_F(FashionMnistTest, TestSplitAndUncompressedFiles) {
  write_raw(path("t10k-images-idx3-ubyte"), images_bytes(2));
  write_raw(path("t10k-labels-idx1-ubyte"), labels_bytes({9, 0}));
  EXPECT_EQ(calq::data::fashion_mnist_file(dir_, Split::test, true),
            path("t10k-labels-idx1-ubyte"));
  const auto data = calq::data::load_fashion_mnist(Split::test, options());
  EXPECT_TRUE(data.labels.equal(torch::tensor({9, 0}, torch::kInt64)));
  EXPECT_EQ(calq::data::split_from_string("t10k"), Split::test);
  EXPECT_EQ(calq::data::to_string(calq::data::split_from_string("train")), "train");
  expect_error([] { calq::data::split_from_string("validation"); },
               {"unknown data split 'validation'", "train, test"});
}

TEST_F(FashionMnistTest, WrongMagicNumber) {
  write_gzip(path("train-images-idx3-ubyte.gz"), images_bytes(5, /*magic=*/2049));
  write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes({3, 1, 4, 1, 5}));
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options()); },
               {path("train-images-idx3-ubyte.gz"), "magic number 2049, expected 2051"});
  write_gzip(path("train-images-idx3-ubyte.gz"), images_bytes(5));
  write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes({3, 1, 4, 1, 5}, 2051));
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options()); },
               {path("train-labels-idx1-ubyte.gz"), "magic number 2051, expected 2049"});
}

TEST_F(FashionMnistTest, WrongGeometry) {
  write_gzip(path("train-images-idx3-ubyte.gz"), images_bytes(5, 2051, 28, 27));
  write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes({3, 1, 4, 1, 5}));
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options()); },
               {path("train-images-idx3-ubyte.gz"), "images of 28x27, expected 28x28"});
}

TEST_F(FashionMnistTest, TruncatedData) {
  // Header announces 5 images, 4 and a half are stored.
  std::string bytes = images_bytes(5);
  bytes.resize(bytes.size() - 28 * 14);
  write_gzip(path("train-images-idx3-ubyte.gz"), bytes);
  write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes({3, 1, 4, 1, 5}));
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options()); },
               {"truncated idx file", path("train-images-idx3-ubyte.gz"),
                "expected 3920 bytes of pixel data (5 images of 28x28), found only 3528"});
}

TEST_F(FashionMnistTest, TruncatedHeader) {
  write_gzip(path("train-labels-idx1-ubyte.gz"), std::string("\0\0\x08", 3));
  expect_error([&] { calq::data::read_idx_labels(path("train-labels-idx1-ubyte.gz")); },
               {"truncated idx file", "header field 'magic'", "found only 3"});
}

TEST_F(FashionMnistTest, TruncatedGzipStream) {
  const std::string file = path("train-images-idx3-ubyte.gz");
  write_gzip(file, images_bytes(5));
  fs::resize_file(file, fs::file_size(file) / 2);
  expect_error([&] { calq::data::read_idx_images(file); },
               {"truncated idx file", file, "unexpected end of file"});
}

TEST_F(FashionMnistTest, GzipChecksumMismatch) {
  // The gzip trailer is CRC-32 then size (4 bytes each); a flipped CRC byte leaves the data
  // intact, so only the end-of-stream check can catch it.
  const std::string file = path("train-labels-idx1-ubyte.gz");
  write_gzip(file, labels_bytes({3, 1, 4, 1, 5}));
  std::fstream stream(file, std::ios::in | std::ios::out | std::ios::binary);
  stream.seekg(-8, std::ios::end);
  const char crc = static_cast<char>(stream.get());
  stream.seekp(-8, std::ios::end);
  stream.put(static_cast<char>(crc ^ 0x5a));
  stream.close();
  expect_error([&] { calq::data::read_idx_labels(file); },
               {"corrupt idx file", file, "incorrect data check"});
}

TEST_F(FashionMnistTest, TrailingBytes) {
  write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes({3, 1, 4}) + "xx");
  expect_error([&] { calq::data::read_idx_labels(path("train-labels-idx1-ubyte.gz")); },
               {"more bytes than its header announces (3)"});
}

TEST_F(FashionMnistTest, MismatchedCounts) {
  write_gzip(path("train-images-idx3-ubyte.gz"), images_bytes(5));
  write_gzip(path("train-labels-idx1-ubyte.gz"), labels_bytes({3, 1, 4, 1}));
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options()); },
               {"holds 5 images but", "holds 4 labels", path("train-labels-idx1-ubyte.gz")});
}

TEST_F(FashionMnistTest, LabelOutOfRange) {
  write_train({3, 1, 10, 1, 5});
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options()); },
               {path("train-labels-idx1-ubyte.gz"), "label 10 at index 2",
                "expected a class index in [0, 10)"});
}

TEST_F(FashionMnistTest, MissingFolderOrFile) {
  expect_error(
      [&] { calq::data::load_fashion_mnist(Split::train, options().root(path("nowhere"))); },
      {path("nowhere"), "does not exist", "apt-get install dataset-fashion-mnist",
       "CALQ_DATA_DIR"});
  write_gzip(path("train-images-idx3-ubyte.gz"), images_bytes(5));
  expect_error([&] { calq::data::load_fashion_mnist(Split::train, options()); },
               {path("train-labels-idx1-ubyte.gz"), "not found", "train labels",
                "apt-get install dataset-fashion-mnist"});
  expect_error([&] { calq::data::read_idx_count(path("t10k-images-idx3-ubyte.gz"), false); },
               {path("t10k-images-idx3-ubyte.gz"), "does not exist"});
}

TEST_F(FashionMnistTest, DataDirResolution) {
  const char* saved = std::getenv(calq::data::kDataDirEnvVar);
  const std::string saved_value = saved != nullptr ? saved : "";
  ::unsetenv(calq::data::kDataDirEnvVar);
  EXPECT_EQ(calq::data::fashion_mnist_dir(), calq::data::kFashionMnistDefaultDir);
  ::setenv(calq::data::kDataDirEnvVar, dir_.c_str(), 1);
  EXPECT_EQ(calq::data::fashion_mnist_dir(), dir_);
  EXPECT_EQ(calq::data::fashion_mnist_dir("/explicit"), "/explicit");
  write_train();
  EXPECT_EQ(calq::data::load_fashion_mnist(Split::train).size(), 5);
  if (saved != nullptr) {
    ::setenv(calq::data::kDataDirEnvVar, saved_value.c_str(), 1);
  } else {
    ::unsetenv(calq::data::kDataDirEnvVar);
  }
}

// The real data of Debian's dataset-fashion-mnist, when installed.
TEST(FashionMnistRealData, TestSetShapeClassesAndStatistics) {
  const std::string dir = calq::data::kFashionMnistDefaultDir;
  if (!fs::exists(calq::data::fashion_mnist_file(dir, Split::test, false))) {
    GTEST_SKIP() << "dataset-fashion-mnist not installed in " << dir;
  }
  const auto test = calq::data::load_fashion_mnist(Split::test, FashionMnistOptions().root(dir));
  ASSERT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_TRUE(torch::bincount(test.labels).equal(torch::full({10}, 1000, torch::kInt64)));

  calq::util::Timer timer;
  const auto train = calq::data::load_fashion_mnist(Split::train, FashionMnistOptions().root(dir));
  std::cout << "[ info     ] read 60000 training images in " << timer.milliseconds() << " ms\n";
  ASSERT_EQ(train.size(), 60000);
  EXPECT_TRUE(torch::bincount(train.labels).equal(torch::full({10}, 6000, torch::kInt64)));
  // The default mean/std are the training-set statistics (rounded to 4 digits), so the
  // normalized training set has mean ~0 and std ~1; 2e-3 covers that rounding.
  const auto pixels = train.images.to(torch::kFloat64);
  EXPECT_NEAR(pixels.mean().item<double>(), 0.0, 2e-3);
  EXPECT_NEAR(pixels.std().item<double>(), 1.0, 2e-3);
}

}  // namespace
