#pragma once
// Float semantics of every supported ONNX operator as a function of tensors (LibTorch ops,
// so autograd runs through them). The importer runs these for float operations and
// side computations, and to fold constant subgraphs; layers with weights and quantization
// points become calq::nn modules instead (lower.cpp), whose float forward computes the same.

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "calq/onnx/model.h"

namespace calq {
namespace onnx {
namespace detail {

/// Outputs from inputs (an undefined tensor for an omitted optional input). `training`: the
/// module's training mode (Dropout).
using Kernel =
    std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>& inputs, bool training)>;
using KernelFactory = Kernel (*)(const Node& node);
using KernelTable = std::map<std::string, KernelFactory>;

/// The kernel of `node` (attributes read and checked once, here). Errors name the node.
Kernel make_kernel(const Node& node);
/// Op types with a kernel.
const KernelTable& kernel_table();

void add_elementwise_kernels(KernelTable& table);
void add_layer_kernels(KernelTable& table);
void add_shape_kernels(KernelTable& table);
void add_reduce_kernels(KernelTable& table);
void add_resize_kernels(KernelTable& table);
void add_quantize_kernels(KernelTable& table);

// Helpers shared by the kernel files.

/// A constant as a tensor (a copy of the bytes).
at::Tensor to_tensor(const TensorData& data);
/// ONNX TensorProto.DataType number -> ATen dtype; errors name `what`.
at::ScalarType to_scalar_type(int64_t onnx_type, const std::string& what);
/// Values of an integer (or integral-valued) 0-d/1-d tensor.
std::vector<int64_t> int_list(const at::Tensor& t, const char* what);
/// axis in [-rank, rank) -> [0, rank); errors name the node.
int64_t normalize_axis(int64_t axis, int64_t rank, const Node& node);
/// Single-output kernels.
inline std::vector<at::Tensor> one(at::Tensor t) {
  return {std::move(t)};
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
