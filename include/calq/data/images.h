#pragma once
// A folder of PNG / JPEG images as model inputs, decoded on demand with stb_image (Debian's
// libstb-dev): resized, normalized per channel, NCHW float32.

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace calq {
namespace data {

/// How ImageFolder turns files into tensors.
///
///   calq::data::ImageOptions().size({224, 224}).mean({0.485, 0.456, 0.406})
///       .std({0.229, 0.224, 0.225})
struct ImageOptions {
  /// Output height and width (bilinear resize, half-pixel centres, as
  /// torch.nn.functional.interpolate(align_corners=False)). Default 224 x 224.
  TORCH_ARG(std::vector<int64_t>, size) = {224, 224};
  /// Channels: 3 (colour) or 1 (grey, decoded as luminance). Default 3.
  TORCH_ARG(int64_t, channels) = 3;
  /// Channel order of colour images: "RGB" (default) or "BGR".
  TORCH_ARG(std::string, order) = "RGB";
  /// Pixel -> (pixel / 255 - mean[c]) / std[c]; one value or one per channel. Defaults: 0 and
  /// 1 (pixels in [0, 1]).
  TORCH_ARG(std::vector<double>, mean) = {0.0};
  TORCH_ARG(std::vector<double>, std) = {1.0};
};

/// The images of a folder (files ending .png, .jpg, .jpeg, any case), sorted by path. With
/// sub-folders, each sub-folder is a class (labels are the sorted sub-folder indices, as
/// torchvision's ImageFolder); otherwise the images are unlabelled.
class ImageFolder {
 public:
  /// Lists the files (does not decode them). Errors: the folder does not exist, holds no
  /// image, or options are invalid (naming the option and the rule).
  ImageFolder(const std::string& root, ImageOptions options = {});

  int64_t size() const { return static_cast<int64_t>(files_.size()); }
  const std::vector<std::string>& files() const { return files_; }
  /// Sorted class names (empty when unlabelled).
  const std::vector<std::string>& classes() const { return classes_; }
  bool has_labels() const { return !classes_.empty(); }
  /// Images [start, start + count) decoded now: float32 [count, C, H, W]. A file that does
  /// not decode is an error naming it and stb's reason.
  at::Tensor images(int64_t start, int64_t count) const;
  /// Labels [count] int64 (undefined when unlabelled).
  at::Tensor labels(int64_t start, int64_t count) const;
  const ImageOptions& options() const { return options_; }

 private:
  ImageOptions options_;
  std::vector<std::string> files_;
  std::vector<int64_t> labels_;
  std::vector<std::string> classes_;
};

/// Decodes one image file into float32 [C, H, W] as ImageFolder does.
at::Tensor load_image(const std::string& path, const ImageOptions& options);

}  // namespace data
}  // namespace calq
