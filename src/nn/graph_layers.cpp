// The modules imported graphs add to calq::nn: FloatFunction, MatMul, ReduceMean, LayerNorm.
// Small forwards around their ATen operators, kept in one translation unit to save compile
// time (as layers.cpp).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "calq/nn/float_function.h"
#include "calq/nn/matmul.h"
#include "calq/nn/normalization.h"
#include "calq/nn/reduce.h"

namespace calq {
namespace nn {

FloatFunctionImpl::FloatFunctionImpl(std::string type_name, Function function,
                                     bool quantization_point)
    : QuantModuleImpl(std::move(type_name)),
      function_(std::move(function)),
      quantization_point_(quantization_point) {
  TORCH_CHECK(function_, "FloatFunction '", this->type_name(), "': the function is empty");
}

std::vector<at::Tensor> FloatFunctionImpl::forward(const std::vector<at::Tensor>& inputs) {
  std::vector<at::Tensor> outputs = function_(inputs, is_training());
  if (quantization_point_ && !output_fake_quant().is_empty()) {
    for (auto& y : outputs) {
      if (y.defined() && y.is_floating_point()) y = quantize_output(y);
    }
  }
  // Traced as one call per output (a Split appears once per part), so that the layers that
  // read a graph's float functions (a Flatten before a Gemm) can be traced too.
  for (const at::Tensor& y : outputs) {
    if (y.defined()) traced(inputs, y);
  }
  return outputs;
}

const std::vector<std::string>& float_function_type_names() {
  static const std::vector<std::string> names = {
      // Float operations (quantization points where they feed quantized operations).
      "Abs", "BatchNorm", "CELU", "Ceil", "Clip", "Cos", "Div", "ELU", "Erf", "Exp", "Floor",
      "GELU", "HardSigmoid", "HardSwish", "InstanceNorm", "LeakyReLU", "Log", "LogSoftmax", "Max",
      "Mean", "Min", "Mish", "Neg", "PReLU", "Pow", "Reciprocal", "ReduceL1", "ReduceL2",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Resize",
      "Round", "SELU", "SiLU", "Sigmoid", "Sign", "Sin", "Softmax", "Softplus", "Softsign", "Sqrt",
      "Sub", "Sum", "Tanh", "Where", "Mod", "Compare", "Logical", "Cast", "ArgMax", "ArgMin",
      "LayerNorm", "QuantizeLinear", "DequantizeLinear",
      // Layers kept in float when calq has no quantized module for them (1-d/3-d
      // convolutions, weights computed at run time).
      "Conv", "ConvTranspose", "Gemm",
      // Value-moving operations (pass their input's quantization through).
      "DepthToSpace", "Dropout", "Expand", "Gather", "GlobalMaxPool", "MaxPool", "Pad", "ReduceMax",
      "ReduceMin", "Reshape", "Slice", "SpaceToDepth", "Split", "Squeeze", "Tile", "Transpose",
      "Unsqueeze", "AvgPool", "Concat",
      // Side computations on shapes and indices (never quantized).
      "ShapeComputation"};
  return names;
}

at::Tensor MatMulImpl::forward(const at::Tensor& a, const at::Tensor& b) {
  if (integer_arithmetic()) {
    const at::Tensor y = integer_binary(a, b, &integer::matmul);  // QLinearMatMul
    if (y.defined()) return traced({a, b}, y);
  }
  return traced({a, b}, quantize_output(at::matmul(a, b)));
}

ReduceMeanImpl::ReduceMeanImpl(ReduceMeanOptions options_)
    : QuantModuleImpl("ReduceMean"), options(std::move(options_)) {
  TORCH_CHECK(!options.dims().empty(), "ReduceMean: dims must not be empty (a mean over every ",
              "dimension lists them all)");
}

at::Tensor ReduceMeanImpl::forward(const at::Tensor& x) {
  return traced({x}, quantize_output(x.mean(options.dims(), options.keepdim())));
}

LayerNormImpl::LayerNormImpl(LayerNormOptions options_)
    : QuantModuleImpl("LayerNorm"), options(std::move(options_)) {
  TORCH_CHECK(!options.normalized_shape().empty(), "LayerNorm: normalized_shape must not be empty");
  for (int64_t d : options.normalized_shape()) {
    TORCH_CHECK(d > 0, "LayerNorm: normalized_shape sizes must be > 0, got ",
                at::IntArrayRef(options.normalized_shape()));
  }
  if (options.elementwise_affine()) {
    weight = register_parameter("weight", at::ones(options.normalized_shape()));
    if (options.bias()) bias = register_parameter("bias", at::zeros(options.normalized_shape()));
  }
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  return traced({x}, quantize_output(at::layer_norm(x, options.normalized_shape(), weight, bias,
                                                    options.eps())));
}

}  // namespace nn
}  // namespace calq
