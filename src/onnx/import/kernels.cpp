#include "onnx/import/kernels.h"

#include <c10/util/Exception.h>

#include <cstring>

namespace calq {
namespace onnx {
namespace detail {

const KernelTable& kernel_table() {
  static const KernelTable table = [] {
    KernelTable t;
    add_elementwise_kernels(t);
    add_layer_kernels(t);
    add_shape_kernels(t);
    add_reduce_kernels(t);
    add_resize_kernels(t);
    add_quantize_kernels(t);
    return t;
  }();
  return table;
}

Kernel make_kernel(const Node& node) {
  auto it = kernel_table().find(node.op_type);
  TORCH_CHECK(it != kernel_table().end(), "unsupported operator: ", node.describe(),
              "; supported operators: ", supported_operator_list());
  return it->second(node);
}

at::ScalarType to_scalar_type(int64_t onnx_type, const std::string& what) {
  switch (onnx_type) {
    case 1:
      return at::kFloat;
    case 2:
      return at::kByte;
    case 3:
      return at::kChar;
    case 5:
      return at::kShort;
    case 6:
      return at::kInt;
    case 7:
      return at::kLong;
    case 9:
      return at::kBool;
    case 10:
      return at::kHalf;
    case 11:
      return at::kDouble;
    case 16:
      return at::kBFloat16;
    default:
      TORCH_CHECK(false, what, ": element type ", onnx_type,
                  " has no LibTorch equivalent calq computes with (uint16/32/64, strings, ",
                  "complex are not supported)");
  }
}

at::Tensor to_tensor(const TensorData& data) {
  const std::string what = "tensor '" + data.name + "'";
  at::ScalarType type;
  switch (data.type) {
    case ElementType::uint16:
    case ElementType::uint32:
    case ElementType::uint64: {
      // No unsigned 16/32/64-bit LibTorch types: widen to int64 (values beyond 2^63 are
      // rejected).
      const size_t size = element_size(data.type);
      at::Tensor out = at::empty(data.dims, at::kLong);
      int64_t* dst = out.data_ptr<int64_t>();
      for (int64_t i = 0; i < data.numel(); ++i) {
        uint64_t v = 0;
        std::memcpy(&v, data.bytes.data() + i * size, size);
        TORCH_CHECK(v <= static_cast<uint64_t>(INT64_MAX), what, ": value ", v,
                    " does not fit int64");
        dst[i] = static_cast<int64_t>(v);
      }
      return out;
    }
    default:
      type = to_scalar_type(static_cast<int64_t>(data.type), what);
  }
  at::Tensor out = at::empty(data.dims, at::TensorOptions().dtype(type));
  TORCH_INTERNAL_ASSERT(static_cast<size_t>(out.nbytes()) == data.bytes.size(), what,
                        ": byte count differs from the dims");
  if (!data.bytes.empty()) std::memcpy(out.data_ptr(), data.bytes.data(), data.bytes.size());
  return out;
}

std::vector<int64_t> int_list(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.defined(), what, " is missing");
  TORCH_CHECK(t.dim() <= 1, what, " must be a scalar or 1-d, got shape ", t.sizes());
  TORCH_CHECK(!t.is_floating_point() && t.scalar_type() != at::kBool, what,
              " must hold integers, got ", t.scalar_type());
  at::Tensor v = t.to(at::kLong).contiguous().reshape({-1});
  return std::vector<int64_t>(v.data_ptr<int64_t>(), v.data_ptr<int64_t>() + v.numel());
}

int64_t normalize_axis(int64_t axis, int64_t rank, const Node& node) {
  TORCH_CHECK(axis >= -rank && axis < rank, node.describe(), ": axis ", axis,
              " is out of range for rank ", rank);
  return axis < 0 ? axis + rank : axis;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
