#pragma once
// User data for imported models: .npy arrays and .npz archives (numpy's formats), read on
// demand from a memory map (never loaded whole), and folders of PNG/JPEG images
// (calq/data/images.h).

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "calq/data/npy_format.h"

namespace calq {
namespace data {

namespace detail {
class ArraySource;
}

/// One array of a .npy file or of an .npz member, read a block of rows at a time.
///
///   auto x = calq::data::NpyArray::open("calib.npy");   // float32 [N, 3, 224, 224]
///   at::Tensor batch = x.rows(0, 32);                   // [32, 3, 224, 224], float32
///
/// The file is memory-mapped; a deflated .npz member is inflated as rows are read (reading
/// rows in increasing order streams it once; going back restarts the stream).
class NpyArray {
 public:
  /// An empty handle (size 0 until assigned from open()).
  NpyArray() = default;
  /// Opens a .npy file. Errors name the file: not a .npy, unsupported dtype (objects,
  /// strings, complex, structured), Fortran order with more than one dimension, a data part
  /// shorter than the header announces.
  static NpyArray open(const std::string& path);

  const NpyHeader& header() const { return header_; }
  const std::vector<int64_t>& shape() const { return header_.shape; }
  /// shape()[0] (1 for a 0-d array).
  int64_t size() const;
  /// Rows [start, start + count) as a tensor of `type` (float32 by default; any dtype the
  /// file's values convert to: integers and bools to float or int64, floats to float).
  /// Requires 0 <= start, count >= 0, start + count <= size().
  at::Tensor rows(int64_t start, int64_t count, at::ScalarType type = at::kFloat) const;
  /// Every row (small arrays: labels, references).
  at::Tensor read_all(at::ScalarType type = at::kFloat) const { return rows(0, size(), type); }

 private:
  friend class NpzArchive;
  NpyArray(std::shared_ptr<detail::ArraySource> source, NpyHeader header, std::string what);
  std::shared_ptr<detail::ArraySource> source_;
  NpyHeader header_;
  std::string what_;
};

/// An .npz archive (zip, members stored or deflated, zip64 included).
class NpzArchive {
 public:
  /// Errors name the file (not a zip, corrupt directory, truncated).
  static NpzArchive open(const std::string& path);
  /// Member names without the ".npy" suffix ("x", "y").
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  /// The member "<name>.npy"; an unknown name throws listing the members.
  NpyArray array(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<detail::ArraySource> file_;
  std::vector<ZipEntry> entries_;
};

/// A calibration / validation set from an .npz with an array "x" (inputs, one example per
/// row) and optionally "y" (int64 or int32 labels, one per row).
class NpzDataset {
 public:
  /// Errors name the file and say which array is missing or which sizes differ.
  static NpzDataset open(const std::string& path);
  int64_t size() const { return x_.size(); }
  bool has_labels() const { return has_labels_; }
  /// Shape of one example (x's shape without the first dim).
  std::vector<int64_t> example_shape() const;
  /// Inputs [count, ...] as float32, read on demand.
  at::Tensor inputs(int64_t start, int64_t count) const { return x_.rows(start, count); }
  /// Labels [count] as int64 (undefined without labels).
  at::Tensor labels(int64_t start, int64_t count) const;

 private:
  NpyArray x_;
  NpyArray y_;
  bool has_labels_ = false;
};

}  // namespace data
}  // namespace calq
