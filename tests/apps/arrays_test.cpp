// .npy / .npz / image-folder readers on files numpy and torchvision wrote in the test setup
// (tests/onnx/make_models.py) and on hand-made bytes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>

#include "calq/data/arrays.h"
#include "calq/data/images.h"
#include "calq/onnx/import.h"

namespace {

const std::string kData = std::string(CALQ_TEST_MODELS) + "/data/";

void expect_error(const std::function<void()>& f, const std::vector<std::string>& fragments) {
  try {
    f();
    FAIL() << "expected an error containing '" << fragments[0] << "'";
  } catch (const c10::Error& e) {
    for (const auto& fragment : fragments) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  }
}

TEST(Npy, HandMadeFileGivesItsValues) {
  // Version 1.0 header padded to 128 bytes, int16 little-endian [2, 3].
  std::string header = "{'descr': '<i2', 'fortran_order': False, 'shape': (2, 3), }";
  header += std::string(128 - 10 - header.size() - 1, ' ') + "\n";
  std::string bytes = std::string("\x93NUMPY\x01\x00", 8);
  bytes += static_cast<char>(header.size());
  bytes += '\0';
  bytes += header;
  for (int16_t v : {1, -2, 3, 300, -500, 6}) bytes.append(reinterpret_cast<char*>(&v), 2);
  const std::string path = testing::TempDir() + "hand.npy";
  std::ofstream(path, std::ios::binary) << bytes;
  auto a = calq::data::NpyArray::open(path);
  EXPECT_EQ(a.header().descr(), "<i2");
  EXPECT_EQ(a.header().data_offset, 128);
  EXPECT_TRUE(torch::equal(a.read_all(at::kLong),
                           torch::tensor({1, -2, 3, 300, -500, 6}, at::kLong).reshape({2, 3})));
  EXPECT_TRUE(torch::equal(a.rows(1, 1), torch::tensor({300.f, -500.f, 6.f}).reshape({1, 3})));
}

TEST(Npy, EveryLayoutNumpyWritesReadsTheSameValues) {
  const at::Tensor x = calq::data::NpyArray::open(kData + "x.npy").read_all();
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{10, 1, 8, 8}));
  EXPECT_TRUE(torch::equal(calq::data::NpyArray::open(kData + "x_big.npy").read_all(), x));
  EXPECT_TRUE(torch::equal(calq::data::NpyArray::open(kData + "x_f64.npy").read_all(), x));
  // float16 keeps 11 significant bits: |error| <= 2^-11 |x| (+ subnormal spacing).
  const at::Tensor h = calq::data::NpyArray::open(kData + "x_f16.npy").read_all();
  EXPECT_TRUE(((h - x).abs() <= x.abs() * std::ldexp(1.0, -11) + 1e-7).all().item<bool>());
  // Rows on demand.
  auto array = calq::data::NpyArray::open(kData + "x.npy");
  EXPECT_TRUE(torch::equal(array.rows(3, 4), x.narrow(0, 3, 4)));
  EXPECT_EQ(array.rows(10, 0).size(0), 0);
  // 1-d Fortran order is the same as C order; unsigned 16-bit widens.
  EXPECT_TRUE(torch::equal(calq::data::NpyArray::open(kData + "u16.npy").read_all(at::kLong),
                           torch::arange(12, at::kLong).reshape({3, 4}) * 1000));
}

TEST(Npz, StoredAndDeflatedArchivesStreamRowsAndLabels) {
  const at::Tensor x = calq::data::NpyArray::open(kData + "x.npy").read_all();
  const at::Tensor y = torch::arange(10, at::kLong).remainder(3);
  for (const char* name : {"stored.npz", "deflated.npz"}) {
    SCOPED_TRACE(name);
    auto d = calq::data::NpzDataset::open(kData + name);
    EXPECT_EQ(d.size(), 10);
    EXPECT_TRUE(d.has_labels());
    EXPECT_EQ(d.example_shape(), (std::vector<int64_t>{1, 8, 8}));
    // Forward, then backwards (the deflated member restarts its stream).
    EXPECT_TRUE(torch::equal(d.inputs(0, 4), x.narrow(0, 0, 4)));
    EXPECT_TRUE(torch::equal(d.inputs(6, 4), x.narrow(0, 6, 4)));
    EXPECT_TRUE(torch::equal(d.inputs(2, 3), x.narrow(0, 2, 3)));
    EXPECT_TRUE(torch::equal(d.labels(0, 10), y));
  }
  auto archive = calq::data::NpzArchive::open(kData + "stored.npz");
  EXPECT_EQ(archive.names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_FALSE(calq::data::NpzDataset::open(kData + "nolabels.npz").has_labels());
}

TEST(Npz, BadFilesAreErrorsNamingTheProblem) {
  expect_error([] { calq::data::NpyArray::open(kData + "truncated.npy"); },
               {"truncated.npy", "truncated"});
  expect_error([] { calq::data::NpyArray::open(kData + "strings.npy"); }, {"strings.npy", "dtype"});
  expect_error([] { calq::data::NpyArray::open(kData + "x_fortran.npy"); }, {"Fortran"});
  expect_error([] { calq::data::NpzArchive::open(kData + "truncated.npz"); }, {"truncated.npz"});
  expect_error([] { calq::data::NpzDataset::open(kData + "badlabels.npz"); },
               {"'y' has shape [5]", "expected [10]"});
  expect_error([] { calq::data::NpzDataset::open(kData + "floatlabels.npz"); },
               {"must be integers", "<f4"});
  expect_error([] { calq::data::NpzDataset::open(kData + "nox.npz"); }, {"array 'x'"});
  expect_error([] { calq::data::NpyArray::open(kData + "missing.npy"); }, {"missing.npy"});
  expect_error([] { calq::data::NpyArray::open(kData + "x.npy").rows(8, 3); },
               {"outside the array's 10 rows"});
}

TEST(Images, FolderDecodesResizesAndNormalizesAsTorchvision) {
  auto options =
      calq::data::ImageOptions().size({8, 6}).mean({0.5, 0.4, 0.3}).std({0.2, 0.25, 0.3});
  calq::data::ImageFolder folder(kData + "images", options);
  ASSERT_EQ(folder.size(), 3);
  EXPECT_EQ(folder.classes(), (std::vector<std::string>{"cat", "dog"}));
  EXPECT_TRUE(torch::equal(folder.labels(0, 3), torch::tensor({0, 0, 1}, at::kLong)));
  const at::Tensor ref = calq::data::NpyArray::open(kData + "images_ref.npy").read_all();
  const at::Tensor got = folder.images(0, 3);
  EXPECT_EQ(got.sizes(), (std::vector<int64_t>{3, 3, 8, 6}));
  // PNG is lossless: the same pixels, the same bilinear resize (to float rounding).
  EXPECT_LT((got[0] - ref[0]).abs().max().item<double>(), 1e-5);
  EXPECT_LT((got[2] - ref[2]).abs().max().item<double>(), 1e-5);
  // JPEG: stb_image and libjpeg may differ by a few levels per pixel (IDCT and chroma
  // upsampling): 8 levels / 255 / smallest std 0.2.
  EXPECT_LT((got[1] - ref[1]).abs().max().item<double>(), 8.0 / 255 / 0.2);
  // BGR reverses the channels (of the normalized image, with the means reversed too).
  auto bgr = options;
  bgr.order("BGR").mean({0.3, 0.4, 0.5}).std({0.3, 0.25, 0.2});
  EXPECT_LT((calq::data::ImageFolder(kData + "images", bgr).images(0, 1)[0] - ref[0].flip(0))
                .abs()
                .max()
                .item<double>(),
            1e-5);
}

TEST(Images, ErrorsNameTheFileAndTheRule) {
  calq::data::ImageFolder flat(kData + "flat", calq::data::ImageOptions().size({4, 4}));
  EXPECT_FALSE(flat.has_labels());
  ASSERT_EQ(flat.size(), 2);
  expect_error([&] { flat.images(0, 2); }, {"broken.png", "cannot decode"});
  expect_error([] { calq::data::ImageFolder(kData + "nowhere"); }, {"nowhere", "does not exist"});
  expect_error(
      [] { calq::data::ImageFolder(kData + "images", calq::data::ImageOptions().std({0.0})); },
      {"std"});
}

TEST(Data, InputThatDoesNotFitTheModelNamesBothShapes) {
  calq::onnx::InputInfo info;
  info.name = "input";
  info.shape = {-1, 3, 32, 32};
  info.symbols = {"batch", "", "", ""};
  auto d = calq::data::NpzDataset::open(kData + "stored.npz");
  expect_error([&] { calq::onnx::check_input(info, d.inputs(0, 2)); },
               {"[2, 1, 8, 8]", "[batch, 3, 32, 32]"});
  calq::onnx::check_input(info, torch::zeros({5, 3, 32, 32}));
}

}  // namespace
