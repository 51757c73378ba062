#include "calq/nn/linear.h"

#include <ATen/ATen.h>

namespace calq {
namespace nn {
namespace detail {

LinearBlockImpl::LinearBlockImpl(std::string type_name, LinearOptions options, bool relu)
    : QuantModuleImpl(std::move(type_name)), relu_(relu) {
  linear = register_module("linear", torch::nn::Linear(std::move(options)));
}

at::Tensor LinearBlockImpl::forward(const at::Tensor& x) {
  if (integer_arithmetic()) {
    // QGemm / MatMulInteger: inputs of more than 2 dimensions ([N, T, K] of a transformer)
    // multiply over the last axis as rows of a 2-d accumulator.
    const int64_t k = x.size(-1);
    at::Tensor y = integer_weighted(
        x, linear->weight, linear->bias, relu_ ? Activation::relu : Activation::none,
        [k](const at::Tensor& xi, const at::Tensor& wi) {
          return at::mm(xi.reshape({-1, k}), wi.t());
        },
        /*float_output_in_integers=*/true);
    if (y.defined()) {
      std::vector<int64_t> shape = x.sizes().vec();
      shape.back() = y.size(1);
      return traced({x}, y.reshape(shape));
    }
  }
  const at::Tensor weight = quantize_weight(linear->weight, linear->bias);
  at::Tensor y = at::linear(x, weight, deployed_bias(linear->bias));
  return traced({x}, quantize_output(relu_ ? at::relu(y) : y));
}

}  // namespace detail
}  // namespace nn
}  // namespace calq
