#pragma once
// NumPy .npy files (format version 1.0/2.0/3.0, C order): the exchange format with ONNX
// Runtime's driver (tools/ort/run.js), Python references and users' data.

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace calq {
namespace util {

/// Writes a float32, float64, int64, int32, int8 or uint8 tensor (any shape; made contiguous)
/// as a version 1.0 .npy file, atomically.
void write_npy(const std::string& path, const at::Tensor& tensor);

/// Writes named tensors as a .npz archive (a zip of stored NAME.npy members, as numpy.savez),
/// atomically; names must be non-empty and free of '/'.
void write_npz(const std::string& path,
               const std::vector<std::pair<std::string, at::Tensor>>& arrays);

/// Reads a whole .npy file (little-endian <f4, <f8, <i8, <i4, |i1, |u1; C order) into a tensor
/// of the same dtype and shape. Errors name the file and what is wrong (magic, version,
/// header, dtype, Fortran order, size).
at::Tensor read_npy(const std::string& path);

}  // namespace util
}  // namespace calq
