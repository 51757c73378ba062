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
  const at::Tensor weight = quantize_weight(linear->weight);
  at::Tensor y = at::linear(x, weight, deployed_bias(linear->bias));
  return traced({x}, quantize_output(relu_ ? at::relu(y) : y));
}

}  // namespace detail
}  // namespace nn
}  // namespace calq
