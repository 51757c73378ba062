// The small modules: activations, arithmetic, pooling, shape. Each is a one-line forward
// around its ATen operator, kept in one translation unit to save compile time.
#include <ATen/ATen.h>

#include "calq/nn/activation.h"
#include "calq/nn/arithmetic.h"
#include "calq/nn/pooling.h"
#include "calq/nn/shape.h"

namespace calq {
namespace nn {

at::Tensor ReLUImpl::forward(const at::Tensor& x) {
  return traced({x}, quantize_output(at::relu(x)));
}

at::Tensor ReLU6Impl::forward(const at::Tensor& x) {
  return traced({x}, quantize_output(at::hardtanh(x, 0.0, 6.0)));
}

at::Tensor AddImpl::forward(const at::Tensor& a, const at::Tensor& b) {
  return traced({a, b}, quantize_output(at::add(a, b)));
}

at::Tensor AddReLUImpl::forward(const at::Tensor& a, const at::Tensor& b) {
  // In place on the fresh sum: one buffer instead of two (add's backward needs no output).
  return traced({a, b}, quantize_output(at::add(a, b).relu_()));
}

at::Tensor MulImpl::forward(const at::Tensor& a, const at::Tensor& b) {
  return traced({a, b}, quantize_output(at::mul(a, b)));
}

at::Tensor CatImpl::forward(const std::vector<at::Tensor>& tensors) {
  return traced(tensors, quantize_output(at::cat(tensors, dim)));
}

MaxPool2dImpl::MaxPool2dImpl(MaxPool2dOptions options) : QuantModuleImpl("MaxPool2d") {
  pool = register_module("pool", torch::nn::MaxPool2d(std::move(options)));
}

AvgPool2dImpl::AvgPool2dImpl(AvgPool2dOptions options) : QuantModuleImpl("AvgPool2d") {
  pool = register_module("pool", torch::nn::AvgPool2d(std::move(options)));
}

AdaptiveAvgPool2dImpl::AdaptiveAvgPool2dImpl(AdaptiveAvgPool2dOptions options)
    : QuantModuleImpl("AdaptiveAvgPool2d") {
  pool = register_module("pool", torch::nn::AdaptiveAvgPool2d(std::move(options)));
}

FlattenImpl::FlattenImpl(FlattenOptions options) : QuantModuleImpl("Flatten") {
  flatten = register_module("flatten", torch::nn::Flatten(std::move(options)));
}

}  // namespace nn
}  // namespace calq
