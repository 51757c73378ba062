#include "calq/data/images.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <memory>

// stb_image, compiled into this translation unit only (static functions): PNG and JPEG.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_NO_STDIO_OPEN_WARNING
#include <stb/stb_image.h>

namespace calq {
namespace data {
namespace {

bool is_dir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_image(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
  for (const char* ext : {".png", ".jpg", ".jpeg"}) {
    const size_t n = std::strlen(ext);
    if (lower.size() > n && lower.compare(lower.size() - n, n, ext) == 0) return true;
  }
  return false;
}

std::vector<std::string> list(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  TORCH_CHECK(d != nullptr, "cannot read image folder '", dir, "'");
  while (dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name != "." && name != "..") out.push_back(name);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<double> per_channel(const std::vector<double>& v, int64_t channels, const char* what) {
  TORCH_CHECK(v.size() == 1 || static_cast<int64_t>(v.size()) == channels, "ImageOptions: ", what,
              " needs 1 or ", channels, " values, got ", v.size());
  return v.size() == 1 ? std::vector<double>(channels, v[0]) : v;
}

}  // namespace

at::Tensor load_image(const std::string& path, const ImageOptions& o) {
  int w = 0, h = 0, n = 0;
  const int channels = static_cast<int>(o.channels());
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load(path.c_str(), &w, &h, &n, channels),
                                                   stbi_image_free);
  TORCH_CHECK(pixels != nullptr, "cannot decode image '", path, "': ", stbi_failure_reason());
  at::Tensor img = at::from_blob(pixels.get(), {h, w, channels}, at::kByte)
                       .permute({2, 0, 1})
                       .to(at::kFloat)
                       .div_(255.0)
                       .unsqueeze(0);
  if (h != o.size()[0] || w != o.size()[1]) {
    img = at::upsample_bilinear2d(img, {o.size()[0], o.size()[1]}, /*align_corners=*/false);
  }
  img = img.squeeze(0);
  if (channels == 3 && o.order() == "BGR") img = img.flip(0);
  const auto mean = per_channel(o.mean(), channels, "mean");
  const auto std = per_channel(o.std(), channels, "std");
  std::vector<float> m(mean.begin(), mean.end()), s(std.begin(), std.end());
  at::Tensor mt = at::tensor(m).reshape({channels, 1, 1});
  at::Tensor st = at::tensor(s).reshape({channels, 1, 1});
  return (img - mt) / st;
}

ImageFolder::ImageFolder(const std::string& root, ImageOptions options)
    : options_(std::move(options)) {
  TORCH_CHECK(options_.size().size() == 2 && options_.size()[0] > 0 && options_.size()[1] > 0 &&
                  options_.size()[0] <= 16384 && options_.size()[1] <= 16384,
              "ImageOptions: size must be {height, width} in [1, 16384], got ",
              at::IntArrayRef(options_.size()));
  TORCH_CHECK(options_.channels() == 1 || options_.channels() == 3,
              "ImageOptions: channels must be 1 or 3, got ", options_.channels());
  TORCH_CHECK(options_.order() == "RGB" || options_.order() == "BGR",
              "ImageOptions: order must be RGB or BGR, got '", options_.order(), "'");
  for (double v : per_channel(options_.std(), options_.channels(), "std")) {
    TORCH_CHECK(std::isfinite(v) && v > 0, "ImageOptions: std must be finite and > 0, got ", v);
  }
  for (double v : per_channel(options_.mean(), options_.channels(), "mean")) {
    TORCH_CHECK(std::isfinite(v), "ImageOptions: mean must be finite, got ", v);
  }
  TORCH_CHECK(is_dir(root), "image folder '", root, "' does not exist or is not a folder");
  const auto entries = list(root);
  for (const auto& name : entries) {
    if (is_dir(root + "/" + name)) classes_.push_back(name);
  }
  if (classes_.empty()) {
    for (const auto& name : entries) {
      if (is_image(name)) files_.push_back(root + "/" + name);
    }
  } else {
    for (size_t c = 0; c < classes_.size(); ++c) {
      for (const auto& name : list(root + "/" + classes_[c])) {
        if (!is_image(name)) continue;
        files_.push_back(root + "/" + classes_[c] + "/" + name);
        labels_.push_back(static_cast<int64_t>(c));
      }
    }
  }
  TORCH_CHECK(!files_.empty(), "image folder '", root,
              "' holds no .png / .jpg / .jpeg image (directly or in class sub-folders)");
}

at::Tensor ImageFolder::images(int64_t start, int64_t count) const {
  TORCH_CHECK(start >= 0 && count >= 0 && start <= size() && count <= size() - start,
              "ImageFolder: images [", start, ", ", start + count, ") are outside the ", size(),
              " images");
  std::vector<at::Tensor> out;
  for (int64_t i = start; i < start + count; ++i) out.push_back(load_image(files_[i], options_));
  if (out.empty()) {
    return at::empty({0, options_.channels(), options_.size()[0], options_.size()[1]});
  }
  return at::stack(out);
}

at::Tensor ImageFolder::labels(int64_t start, int64_t count) const {
  if (classes_.empty()) return at::Tensor();
  TORCH_CHECK(start >= 0 && count >= 0 && start <= size() && count <= size() - start,
              "ImageFolder: labels [", start, ", ", start + count, ") are outside the ", size(),
              " images");
  return at::tensor(std::vector<int64_t>(labels_.begin() + start, labels_.begin() + start + count),
                    at::kLong);
}

}  // namespace data
}  // namespace calq
