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
  if (integer_arithmetic()) {
    const at::Tensor y = integer_binary(a, b, &integer::add);  // QLinearAdd
    if (y.defined()) return traced({a, b}, y);
  }
  return traced({a, b}, quantize_output(at::add(a, b)));
}

at::Tensor AddReLUImpl::forward(const at::Tensor& a, const at::Tensor& b) {
  if (integer_arithmetic()) {
    const at::Tensor y = integer_binary(a, b, &integer::add, Activation::relu);
    if (y.defined()) return traced({a, b}, y);
  }
  // In place on the fresh sum: one buffer instead of two (add's backward needs no output).
  return traced({a, b}, quantize_output(at::add(a, b).relu_()));
}

at::Tensor MulImpl::forward(const at::Tensor& a, const at::Tensor& b) {
  if (integer_arithmetic()) {
    const at::Tensor y = integer_binary(a, b, &integer::mul);  // QLinearMul
    if (y.defined()) return traced({a, b}, y);
  }
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

namespace {

// QLinearGlobalAveragePool for a window over the whole image, QLinearAveragePool otherwise.
at::Tensor integer_average(const at::Tensor& q, const StoredGrid& x, const StoredGrid& out,
                           std::vector<int64_t> kernel, std::vector<int64_t> stride,
                           std::vector<int64_t> pad, bool count_include_pad, bool ceil_mode) {
  const bool whole_image =
      kernel[0] == q.size(2) && kernel[1] == q.size(3) && pad[0] == 0 && pad[1] == 0;
  if (whole_image) return integer::global_average(q, x, out);
  return integer::window_average(q, x, out, kernel, stride, pad, count_include_pad, ceil_mode);
}

}  // namespace

at::Tensor AvgPool2dImpl::forward(const at::Tensor& x) {
  if (integer_arithmetic() && x.dim() == 4) {
    const auto& o = pool->options;
    const at::Tensor y = integer_unary(x, [&o](const at::Tensor& q, const StoredGrid& in,
                                               const StoredGrid& out) {
      const auto stride = o.stride();
      return integer_average(q, in, out, {(*o.kernel_size())[0], (*o.kernel_size())[1]},
                             {(*stride)[0], (*stride)[1]}, {(*o.padding())[0], (*o.padding())[1]},
                             o.count_include_pad(), o.ceil_mode());
    });
    if (y.defined()) return traced({x}, y);
  }
  return traced({x}, quantize_output(pool->forward(x)));
}

at::Tensor AdaptiveAvgPool2dImpl::forward(const at::Tensor& x) {
  if (integer_arithmetic() && x.dim() == 4) {
    // Whole windows only (output sizes that divide the input's): the export's AveragePool.
    const auto size = pool->options.output_size();
    const int64_t oh = (*size)[0].value_or(x.size(2)), ow = (*size)[1].value_or(x.size(3));
    if (oh > 0 && ow > 0 && x.size(2) % oh == 0 && x.size(3) % ow == 0) {
      const std::vector<int64_t> k = {x.size(2) / oh, x.size(3) / ow};
      const at::Tensor y =
          integer_unary(x, [&k](const at::Tensor& q, const StoredGrid& in, const StoredGrid& out) {
            return integer_average(q, in, out, k, k, {0, 0}, true, false);
          });
      if (y.defined()) return traced({x}, y);
    }
  }
  return traced({x}, quantize_output(pool->forward(x)));
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
