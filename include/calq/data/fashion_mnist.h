#pragma once
// Fashion-MNIST (Xiao et al., 2017) read from the gzip idx files of Debian's
// `dataset-fashion-mnist` package with zlib. No downloads.

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <string>

#include "calq/data/idx.h"

namespace calq {
namespace data {

/// Where Debian's `dataset-fashion-mnist` installs the files.
constexpr const char* kFashionMnistDefaultDir = "/usr/share/datasets/fashion-mnist";
/// Environment variable that overrides the default folder (an explicit root wins over it).
constexpr const char* kDataDirEnvVar = "CALQ_DATA_DIR";
/// Image geometry of every Fashion-MNIST example.
constexpr int64_t kFashionMnistRows = 28;
constexpr int64_t kFashionMnistCols = 28;
constexpr int64_t kFashionMnistClasses = 10;

/// The two files of the data set.
enum class Split { train, test };

/// "train" -> Split::train, "test" (or "t10k") -> Split::test; an unknown name throws and lists
/// the valid ones.
Split split_from_string(const std::string& name);
std::string to_string(Split split);

/// An in-memory labelled image set.
struct Dataset {
  /// float32 [N, 1, 28, 28], normalized.
  torch::Tensor images;
  /// int64 [N], class indices in [0, 10).
  torch::Tensor labels;

  /// Number of examples N.
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

/// How load_fashion_mnist finds and preprocesses the data.
///
///   calq::data::FashionMnistOptions().root("/data/fmnist").limit(1000)
struct FashionMnistOptions {
  /// Folder with `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`. Empty (default) = the
  /// environment variable CALQ_DATA_DIR if set, else kFashionMnistDefaultDir.
  TORCH_ARG(std::string, root) = "";
  /// Read only the first `limit` examples (must be >= 1). Default: all.
  TORCH_ARG(c10::optional<int64_t>, limit) = c10::nullopt;
  /// Normalization: pixel -> (pixel / 255 - mean) / std. Defaults are the training-set
  /// statistics of Fashion-MNIST. `std` must be finite and > 0, `mean` finite.
  TORCH_ARG(double, mean) = 0.2860;
  TORCH_ARG(double, std) = 0.3530;
};

/// The folder load_fashion_mnist reads: `root` if non-empty, else $CALQ_DATA_DIR if set and
/// non-empty, else kFashionMnistDefaultDir. Does not check that it exists.
std::string fashion_mnist_dir(const std::string& root = "");

/// Path of a split's image or label file inside `dir`: the `.gz` file if it exists, else the
/// uncompressed file if that exists, else the `.gz` path (so that errors name it).
std::string fashion_mnist_file(const std::string& dir, Split split, bool labels);

/// Reads one split. Throws c10::Error naming the file when the folder or a file is missing
/// (with how to install `dataset-fashion-mnist`), on a wrong magic number (2051 images, 2049
/// labels), dimensions other than 28x28, image and label counts that differ, a label outside
/// [0, 10), a gzip error or a truncated file.
Dataset load_fashion_mnist(Split split, const FashionMnistOptions& options = {});

/// uint8 [N, rows, cols] -> float32 [N, 1, rows, cols], (pixel / 255 - mean) / std.
torch::Tensor normalize_images(const torch::Tensor& pixels, double mean, double std);

}  // namespace data
}  // namespace calq
