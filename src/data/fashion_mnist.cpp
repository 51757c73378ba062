#include "calq/data/fashion_mnist.h"

#include <ATen/Parallel.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <filesystem>

namespace calq {
namespace data {
namespace {

const char* const kInstallHint =
    "install the data with `apt-get install dataset-fashion-mnist`, or pass the folder that "
    "holds the idx files (FashionMnistOptions::root, the CLI's data directory option, or the "
    "environment variable CALQ_DATA_DIR)";

std::string file_stem(Split split, bool labels) {
  const std::string prefix = split == Split::train ? "train" : "t10k";
  return prefix + (labels ? "-labels-idx1-ubyte" : "-images-idx3-ubyte");
}

std::string resolve_file(const std::string& dir, Split split, bool labels) {
  const std::string path = fashion_mnist_file(dir, split, labels);
  TORCH_CHECK(std::filesystem::is_regular_file(path), "Fashion-MNIST file '", path,
              "' not found (the ", to_string(split), " ", labels ? "labels" : "images", "); ",
              kInstallHint);
  return path;
}

}  // namespace

Split split_from_string(const std::string& name) {
  if (name == "train") return Split::train;
  if (name == "test" || name == "t10k") return Split::test;
  TORCH_CHECK(false, "unknown data split '", name, "'; valid: train, test (alias t10k)");
}

std::string to_string(Split split) {
  return split == Split::train ? "train" : "test";
}

std::string fashion_mnist_dir(const std::string& root) {
  if (!root.empty()) return root;
  const char* env = std::getenv(kDataDirEnvVar);
  if (env != nullptr && env[0] != '\0') return env;
  return kFashionMnistDefaultDir;
}

std::string fashion_mnist_file(const std::string& dir, Split split, bool labels) {
  const std::filesystem::path base = std::filesystem::path(dir) / file_stem(split, labels);
  const std::string gz = base.string() + ".gz";
  if (std::filesystem::is_regular_file(gz)) return gz;
  if (std::filesystem::is_regular_file(base)) return base.string();
  return gz;
}

torch::Tensor normalize_images(const torch::Tensor& pixels, double mean, double std) {
  TORCH_CHECK(pixels.scalar_type() == torch::kUInt8 && pixels.dim() == 3,
              "normalize_images expects uint8 [N, rows, cols] pixels, got ", pixels.scalar_type(),
              " ", pixels.sizes());
  TORCH_CHECK(std::isfinite(mean), "normalization mean must be finite, got ", mean);
  TORCH_CHECK(std::isfinite(std) && std > 0, "normalization std must be finite and > 0, got ", std);
  // 256 possible inputs: a table makes the pass one load per pixel and gives bit-identical
  // results whatever the thread split.
  std::array<float, 256> table{};
  for (int v = 0; v < 256; ++v) {
    table[v] = static_cast<float>((v / 255.0 - mean) / std);
  }
  const auto input = pixels.contiguous();
  auto out = torch::empty({pixels.size(0), 1, pixels.size(1), pixels.size(2)}, torch::kFloat32);
  const uint8_t* in = input.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, input.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) dst[i] = table[in[i]];
  });
  return out;
}

Dataset load_fashion_mnist(Split split, const FashionMnistOptions& options) {
  const std::string dir = fashion_mnist_dir(options.root());
  TORCH_CHECK(std::filesystem::is_directory(dir), "Fashion-MNIST folder '", dir,
              "' does not exist; ", kInstallHint);
  const std::string images_path = resolve_file(dir, split, /*labels=*/false);
  const std::string labels_path = resolve_file(dir, split, /*labels=*/true);
  const int64_t image_count = read_idx_count(images_path, /*labels=*/false);
  const int64_t label_count = read_idx_count(labels_path, /*labels=*/true);
  TORCH_CHECK(image_count == label_count, "Fashion-MNIST ", to_string(split), " files disagree: '",
              images_path, "' holds ", image_count, " images but '", labels_path, "' holds ",
              label_count, " labels; expected the same count");
  Dataset dataset;
  dataset.images = normalize_images(read_idx_images(images_path, options.limit()), options.mean(),
                                    options.std());
  dataset.labels = read_idx_labels(labels_path, options.limit());
  return dataset;
}

}  // namespace data
}  // namespace calq
