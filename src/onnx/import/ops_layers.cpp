// Layers: convolutions, Gemm/MatMul, normalizations, pooling, softmax, dropout (float
// semantics; lower.cpp maps the common forms to calq::nn modules).
#include <c10/util/Exception.h>

#include <limits>

#include "onnx/import/geometry.h"
#include "onnx/import/kernels.h"

namespace calq {
namespace onnx {
namespace detail {
namespace {

int64_t spatial_of(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 3 && x.dim() <= 5, op, ": input must be [N, C, spatial...] with 1 to 3 ",
              "spatial dims, got shape ", x.sizes());
  return x.dim() - 2;
}

std::vector<int64_t> weight_kernel(const at::Tensor& w) {
  return std::vector<int64_t>(w.sizes().begin() + 2, w.sizes().end());
}

Kernel conv(const Node& node) {
  const int64_t group = node.attr_int("group", 1);
  TORCH_CHECK(group >= 1, node.describe(), ": group must be >= 1, got ", group);
  return [node, group](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const at::Tensor& w = in[1];
    const int64_t spatial = spatial_of(x, "Conv");
    TORCH_CHECK(w.dim() == x.dim(), "Conv: weight shape ", w.sizes(), " does not fit input shape ",
                x.sizes());
    const Window win = Window::read(node, spatial, weight_kernel(w));
    TORCH_CHECK(at::IntArrayRef(win.kernel) == w.sizes().slice(2), "Conv: kernel_shape ",
                at::IntArrayRef(win.kernel), " differs from the weight's ", w.sizes());
    const auto pads = win.resolve(x.sizes().slice(2));
    at::Tensor bias = in.size() > 2 ? in[2] : at::Tensor();
    return one(at::convolution(pad_spatial(x, pads, 0.0), w, bias, win.strides,
                               std::vector<int64_t>(spatial, 0), win.dilations, false,
                               std::vector<int64_t>(spatial, 0), group));
  };
}

Kernel conv_transpose(const Node& node) {
  const int64_t group = node.attr_int("group", 1);
  TORCH_CHECK(group >= 1, node.describe(), ": group must be >= 1, got ", group);
  return [node, group](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const at::Tensor& w = in[1];
    const int64_t spatial = spatial_of(x, "ConvTranspose");
    TORCH_CHECK(w.dim() == x.dim(), "ConvTranspose: weight shape ", w.sizes(),
                " does not fit input shape ", x.sizes());
    const TransposedWindow t = TransposedWindow::read(node, spatial, weight_kernel(w));
    const auto pads = t.resolve(x.sizes().slice(2));
    // Full transposed convolution without bias, then crop (or extend) to the ONNX window,
    // then the bias everywhere (extended positions get the bias only, as ONNX defines).
    at::Tensor y =
        at::convolution(x, w, at::Tensor(), t.window.strides, std::vector<int64_t>(spatial, 0),
                        t.window.dilations, true, std::vector<int64_t>(spatial, 0), group);
    std::vector<std::pair<int64_t, int64_t>> crop(spatial);
    for (int64_t i = 0; i < spatial; ++i) {
      crop[i] = {-pads[i].first, t.output_padding[i] - pads[i].second};
    }
    y = pad_spatial(y, crop, 0.0);
    if (in.size() > 2 && in[2].defined()) {
      std::vector<int64_t> shape(y.dim(), 1);
      shape[1] = -1;
      y = y + in[2].reshape(shape);
    }
    return one(y);
  };
}

Kernel gemm(const Node& node) {
  const double alpha = node.attr_float("alpha", 1.0), beta = node.attr_float("beta", 1.0);
  const bool trans_a = node.attr_int("transA", 0) != 0, trans_b = node.attr_int("transB", 0) != 0;
  return [=](const std::vector<at::Tensor>& in, bool) {
    TORCH_CHECK(in[0].dim() == 2 && in[1].dim() == 2, "Gemm: A and B must be 2-d, got ",
                in[0].sizes(), " and ", in[1].sizes());
    at::Tensor a = trans_a ? in[0].t() : in[0];
    at::Tensor b = trans_b ? in[1].t() : in[1];
    at::Tensor y = at::matmul(a, b);
    if (alpha != 1.0) y = y * alpha;
    if (in.size() > 2 && in[2].defined()) y = y + (beta == 1.0 ? in[2] : in[2] * beta);
    return one(y);
  };
}

Kernel matmul(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    TORCH_CHECK(in[0].dim() >= 1 && in[1].dim() >= 1, "MatMul: operands must have rank >= 1");
    return one(at::matmul(in[0], in[1]));
  };
}

std::vector<int64_t> channel_shape(const at::Tensor& x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = -1;
  return shape;
}

Kernel batch_norm(const Node& node) {
  const double eps = node.attr_float("epsilon", 1e-5);
  const double momentum = node.attr_float("momentum", 0.9);
  const bool training_mode = node.attr_int("training_mode", 0) != 0;
  return [=](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    TORCH_CHECK(x.dim() >= 2, "BatchNormalization: input must have rank >= 2, got ", x.sizes());
    const auto shape = channel_shape(x);
    if (!training_mode) {
      at::Tensor inv = at::rsqrt(in[4] + eps) * in[1];
      return one((x - in[3].reshape(shape)) * inv.reshape(shape) + in[2].reshape(shape));
    }
    std::vector<int64_t> dims = {0};
    for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
    at::Tensor mean = x.mean(dims);
    at::Tensor var = (x - mean.reshape(shape)).pow(2).mean(dims);
    at::Tensor y =
        (x - mean.reshape(shape)) * at::rsqrt(var.reshape(shape) + eps) * in[1].reshape(shape) +
        in[2].reshape(shape);
    return std::vector<at::Tensor>{y, in[3] * momentum + mean * (1 - momentum),
                                   in[4] * momentum + var * (1 - momentum)};
  };
}

Kernel instance_norm(const Node& node) {
  const double eps = node.attr_float("epsilon", 1e-5);
  return [eps](const std::vector<at::Tensor>& in, bool) {
    TORCH_CHECK(in[0].dim() >= 3, "InstanceNormalization: input must have rank >= 3, got ",
                in[0].sizes());
    return one(at::instance_norm(in[0], in[1], in[2], {}, {}, true, 0.0, eps, false));
  };
}

Kernel layer_norm(const Node& node) {
  const int64_t axis_attr = node.attr_int("axis", -1);
  const double eps = node.attr_float("epsilon", 1e-5);
  return [node, axis_attr, eps](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t axis = normalize_axis(axis_attr, x.dim(), node);
    std::vector<int64_t> dims;
    for (int64_t d = axis; d < x.dim(); ++d) dims.push_back(d);
    const at::IntArrayRef normalized = x.sizes().slice(axis);
    at::Tensor mean = x.mean(dims, true);
    at::Tensor centered = x - mean;
    at::Tensor inv_std = at::rsqrt(centered.pow(2).mean(dims, true) + eps);
    at::Tensor y = centered * inv_std * in[1].expand(normalized);
    if (in.size() > 2 && in[2].defined()) y = y + in[2].expand(normalized);
    return std::vector<at::Tensor>{y, mean, inv_std};
  };
}

at::Scalar lowest(at::ScalarType type) {
  if (at::isFloatingType(type)) return -std::numeric_limits<double>::infinity();
  switch (type) {
    case at::kByte:
      return 0;
    case at::kChar:
      return std::numeric_limits<int8_t>::min();
    case at::kShort:
      return std::numeric_limits<int16_t>::min();
    case at::kInt:
      return std::numeric_limits<int32_t>::min();
    default:
      return std::numeric_limits<int64_t>::min();
  }
}

Kernel max_pool(const Node& node) {
  TORCH_CHECK(node.outputs.size() < 2 || node.outputs[1].empty(), node.describe(),
              ": the Indices output is not supported");
  TORCH_CHECK(node.attr_int("storage_order", 0) == 0, node.describe(),
              ": storage_order 1 is not supported");
  return [node](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t spatial = spatial_of(x, "MaxPool");
    const Window win = Window::read(node, spatial, {});
    const auto pads = win.resolve(x.sizes().slice(2));
    at::Tensor padded = x;
    bool any = false;
    for (auto p : pads) any = any || p.first != 0 || p.second != 0;
    if (any) {
      std::vector<int64_t> flat;
      for (auto it = pads.rbegin(); it != pads.rend(); ++it) {
        flat.push_back(it->first);
        flat.push_back(it->second);
      }
      padded = at::constant_pad_nd(x, flat, lowest(x.scalar_type()));
    }
    const std::vector<int64_t> zero(spatial, 0);
    if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) {
      // Integer pooling: through float (exact for 8 and 16-bit values).
      padded = padded.to(at::kFloat);
    }
    at::Tensor y =
        spatial == 1
            ? at::max_pool1d(padded, win.kernel, win.strides, zero, win.dilations, win.ceil_mode)
        : spatial == 2
            ? at::max_pool2d(padded, win.kernel, win.strides, zero, win.dilations, win.ceil_mode)
            : at::max_pool3d(padded, win.kernel, win.strides, zero, win.dilations, win.ceil_mode);
    return one(y.to(x.scalar_type()));
  };
}

at::Tensor sum_pool(const at::Tensor& x, const Window& win, int64_t spatial) {
  // Average with padding 0 times the window size: the window sums (divisor_override).
  int64_t area = 1;
  for (int64_t k : win.kernel) area *= k;
  const std::vector<int64_t> zero(spatial, 0);
  if (spatial == 1) {
    return at::avg_pool1d(x, win.kernel, win.strides, zero, win.ceil_mode, true) * area;
  }
  if (spatial == 2) {
    return at::avg_pool2d(x, win.kernel, win.strides, zero, win.ceil_mode, true, area);
  }
  return at::avg_pool3d(x, win.kernel, win.strides, zero, win.ceil_mode, true, area);
}

Kernel average_pool(const Node& node) {
  const bool count_pad = node.attr_int("count_include_pad", 0) != 0;
  for (int64_t d : node.attr_ints("dilations", {})) {
    TORCH_CHECK(d == 1, node.describe(), ": dilated average pooling is not supported");
  }
  return [node, count_pad](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t spatial = spatial_of(x, "AveragePool");
    const Window win = Window::read(node, spatial, {});
    const auto pads = win.resolve(x.sizes().slice(2));
    // Sum over each window of the zero-padded input, divided by the number of positions
    // counted: every position of the padded input (count_include_pad) or only input ones.
    at::Tensor sums = sum_pool(pad_spatial(x, pads, 0.0), win, spatial);
    std::vector<int64_t> ones_shape(x.dim(), 1);
    for (int64_t d = 2; d < x.dim(); ++d) ones_shape[d] = x.size(d);
    at::Tensor mask = at::ones(ones_shape, x.options());
    at::Tensor counts = count_pad ? sum_pool(pad_spatial(mask, pads, 1.0), win, spatial)
                                  : sum_pool(pad_spatial(mask, pads, 0.0), win, spatial);
    return one(sums / counts);
  };
}

Kernel global_average_pool(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    TORCH_CHECK(in[0].dim() >= 3, "GlobalAveragePool: input must have rank >= 3, got ",
                in[0].sizes());
    std::vector<int64_t> dims;
    for (int64_t d = 2; d < in[0].dim(); ++d) dims.push_back(d);
    return one(in[0].mean(dims, true));
  };
}

Kernel global_max_pool(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    TORCH_CHECK(in[0].dim() >= 3, "GlobalMaxPool: input must have rank >= 3, got ", in[0].sizes());
    at::Tensor y = in[0];
    for (int64_t d = 2; d < in[0].dim(); ++d) y = std::get<0>(y.max(d, true));
    return one(y);
  };
}

template <bool Log>
Kernel softmax(const Node& node) {
  const int64_t axis_attr = node.attr_int("axis", node.opset < 13 ? 1 : -1);
  const bool coerce_2d = node.opset < 13;
  return [node, axis_attr, coerce_2d](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t axis = normalize_axis(axis_attr, std::max<int64_t>(x.dim(), 1), node);
    if (!coerce_2d) return one(Log ? at::log_softmax(x, axis) : at::softmax(x, axis));
    // Opsets < 13: the input is seen as 2-d [prod(dims < axis), prod(dims >= axis)].
    int64_t rows = 1;
    for (int64_t d = 0; d < axis; ++d) rows *= x.size(d);
    at::Tensor flat = x.reshape({rows, -1});
    return one((Log ? at::log_softmax(flat, 1) : at::softmax(flat, 1)).reshape(x.sizes()));
  };
}

Kernel dropout(const Node& node) {
  const double ratio_attr = node.attr_float("ratio", 0.5);
  const bool wants_mask = node.outputs.size() > 1 && !node.outputs[1].empty();
  return [ratio_attr, wants_mask](const std::vector<at::Tensor>& in, bool training) {
    double ratio = ratio_attr;
    if (in.size() > 1 && in[1].defined()) {
      TORCH_CHECK(in[1].numel() == 1, "Dropout: ratio must be a scalar");
      ratio = in[1].reshape({}).item<double>();
    }
    TORCH_CHECK(ratio >= 0.0 && ratio < 1.0, "Dropout: ratio must be in [0, 1), got ", ratio);
    // Dropout is active when the module trains (QAT), as torch::nn::Dropout; the file's
    // training_mode input describes the exported graph, not calq's state.
    at::Tensor y = training && ratio > 0 ? at::dropout(in[0], ratio, true) : in[0];
    if (!wants_mask) return one(y);
    at::Tensor mask = training && ratio > 0 ? (y != 0) : at::ones_like(in[0], at::kBool);
    return std::vector<at::Tensor>{y, mask};
  };
}

}  // namespace

void add_layer_kernels(KernelTable& t) {
  t["Conv"] = conv;
  t["ConvTranspose"] = conv_transpose;
  t["Gemm"] = gemm;
  t["MatMul"] = matmul;
  t["BatchNormalization"] = batch_norm;
  t["InstanceNormalization"] = instance_norm;
  t["LayerNormalization"] = layer_norm;
  t["MaxPool"] = max_pool;
  t["AveragePool"] = average_pool;
  t["GlobalAveragePool"] = global_average_pool;
  t["GlobalMaxPool"] = global_max_pool;
  t["Softmax"] = softmax<false>;
  t["LogSoftmax"] = softmax<true>;
  t["Dropout"] = dropout;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
