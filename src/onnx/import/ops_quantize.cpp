// QuantizeLinear / DequantizeLinear (default domain and com.microsoft) with ONNX Runtime's
// arithmetic (docs/deploy.md; /work notes "ort_facts" sections 1-2):
//   Q:  q = clamp(RNE(fr(x / s)) + z, lo, hi), NaN -> lo
//   DQ: x = fr(float(q - z) * s)
// The importer reads a Q -> DQ pair on an activation as a fake quantizer and folds a DQ of a
// constant into the float weight it represents; these kernels run every other use (and the
// folding). uint16 tensors are held as int64 (calq::onnx::to_tensor widens them).
#include <c10/util/Exception.h>

#include "onnx/import/kernels.h"

namespace calq {
namespace onnx {
namespace detail {
namespace {

// An integer storage type of quantized values.
struct Storage {
  at::ScalarType dtype;  // how calq holds it
  int64_t lo, hi;
  const char* name;
};

// The storage type a tensor of `dtype` holds (int64 stands for a widened uint16).
Storage storage_of(at::ScalarType dtype, const std::string& what) {
  switch (dtype) {
    case at::kByte:
      return {at::kByte, 0, 255, "uint8"};
    case at::kChar:
      return {at::kChar, -128, 127, "int8"};
    case at::kShort:
      return {at::kShort, -32768, 32767, "int16"};
    case at::kLong:
      return {at::kLong, 0, 65535, "uint16"};
    case at::kInt:
      return {at::kInt, INT32_MIN, INT32_MAX, "int32"};
    default:
      TORCH_CHECK(false, what, ": quantized values of type ", dtype,
                  " are not supported; calq reads uint8, int8, uint16, int16 (and int32 for "
                  "DequantizeLinear)");
  }
}

// Scale and zero point shaped to broadcast against x along `axis` (per-axis) or as scalars.
std::pair<at::Tensor, at::Tensor> broadcast_params(const at::Tensor& x, const at::Tensor& scale,
                                                   const at::Tensor& zero_point, int64_t axis,
                                                   const Node& node) {
  at::Tensor s = scale.to(at::kFloat);
  at::Tensor z = zero_point.defined() ? zero_point.to(at::kLong) : at::zeros({}, at::kLong);
  TORCH_CHECK(s.dim() <= 1, node.describe(), ": scale must be a scalar or 1-d, got shape ",
              s.sizes(), " (blocked quantization is not supported)");
  TORCH_CHECK(z.sizes() == s.sizes() || !zero_point.defined(), node.describe(),
              ": zero point shape ", z.sizes(), " differs from scale shape ", s.sizes());
  if (s.dim() == 1 && s.numel() > 1) {
    const int64_t a = normalize_axis(axis, x.dim(), node);
    TORCH_CHECK(x.size(a) == s.numel(), node.describe(), ": ", s.numel(), " scales for axis ", a,
                " of size ", x.size(a));
    std::vector<int64_t> shape(x.dim(), 1);
    shape[a] = -1;
    s = s.reshape(shape);
    z = zero_point.defined() ? z.reshape(shape) : z;
  } else {
    s = s.reshape({});
    z = z.reshape({});
  }
  return {s, z};
}

void check_blocks(const Node& node) {
  TORCH_CHECK(node.attr_int("block_size", 0) == 0, node.describe(),
              ": blocked quantization (block_size ", node.attr_int("block_size", 0),
              ") is not supported; calq reads per-tensor and per-axis quantization");
}

Kernel quantize_linear(const Node& node) {
  check_blocks(node);
  const int64_t axis = node.attr_int("axis", 1);
  const int64_t output_dtype = node.attr_int("output_dtype", 0);
  return [node, axis, output_dtype](const std::vector<at::Tensor>& in, bool) {
    const bool has_zero = in.size() > 2 && in[2].defined();
    Storage storage{at::kByte, 0, 255, "uint8"};  // the default without a zero point
    if (has_zero) {
      storage = storage_of(in[2].scalar_type(), node.describe());
    } else if (output_dtype != 0) {
      storage = storage_of(to_scalar_type(output_dtype, node.describe()), node.describe());
    }
    TORCH_CHECK(storage.dtype != at::kInt, node.describe(),
                ": QuantizeLinear to int32 is not defined");
    at::Tensor s, z;
    std::tie(s, z) = broadcast_params(in[0], in[1], has_zero ? in[2] : at::Tensor(), axis, node);
    TORCH_CHECK(s.gt(0).all().item<bool>(), node.describe(), ": scales must be > 0");
    // fr(x / s), rounded half to even, clamped to the range shifted by the zero point (as
    // ONNX Runtime's MLAS kernel: NaN becomes the lower end).
    at::Tensor v = at::div(in[0].to(at::kFloat), s).round();
    const at::Tensor lo = (storage.lo - z).to(at::kFloat);
    const at::Tensor hi = (storage.hi - z).to(at::kFloat);
    v = at::where(at::isnan(v), lo, at::minimum(at::maximum(v, lo), hi));
    return one((v.to(at::kLong) + z).to(storage.dtype));
  };
}

Kernel dequantize_linear(const Node& node) {
  check_blocks(node);
  const int64_t axis = node.attr_int("axis", 1);
  return [node, axis](const std::vector<at::Tensor>& in, bool) {
    storage_of(in[0].scalar_type(), node.describe());
    const bool has_zero = in.size() > 2 && in[2].defined();
    if (has_zero) {
      TORCH_CHECK(in[2].scalar_type() == in[0].scalar_type(), node.describe(), ": zero point type ",
                  in[2].scalar_type(), " differs from the input's ", in[0].scalar_type());
    }
    at::Tensor s, z;
    std::tie(s, z) = broadcast_params(in[0], in[1], has_zero ? in[2] : at::Tensor(), axis, node);
    // (q - z) in integers, then one float32 multiply.
    return one((in[0].to(at::kLong) - z).to(at::kFloat) * s);
  };
}

}  // namespace

void add_quantize_kernels(KernelTable& table) {
  table["QuantizeLinear"] = &quantize_linear;
  table["DequantizeLinear"] = &dequantize_linear;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
