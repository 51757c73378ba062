#pragma once
// TensorProto -> TensorData: element type, dims and data checked against each other;
// external data read from beside the model, confined to its folder.

#include <onnx/onnx_pb.h>

#include <string>

#include "calq/onnx/model.h"

namespace calq {
namespace onnx {
namespace detail {

/// Converts `proto` (an initializer or a tensor attribute; `what` says which, for errors).
/// External data is read relative to `base_dir`; an empty base_dir makes it an error.
TensorData read_tensor(const ::onnx::TensorProto& proto, const std::string& what,
                       const std::string& base_dir);

/// Reads `length` bytes at `offset` of `location` (relative to `base_dir`; -1 length: to the
/// end of the file). The resolved path (symlinks followed) must be a regular file inside
/// base_dir; offset and length must lie within it. Errors name the tensor and the rule.
std::string read_external_data(const std::string& base_dir, const std::string& location,
                               int64_t offset, int64_t length, const std::string& what);

}  // namespace detail
}  // namespace onnx
}  // namespace calq
