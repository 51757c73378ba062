// Resize (opsets 11-21): nearest, linear and cubic interpolation as ONNX defines them, one
// resized dimension at a time (the modes are separable). Each output position reads a few
// input positions (taps) with weights computed here from the coordinate transformation
// mode; nearest reads one tap with weight 1, so it only moves values.
#include <c10/util/Exception.h>

#include <cmath>

#include "onnx/import/kernels.h"

namespace calq {
namespace onnx {
namespace detail {
namespace {

struct ResizeAttributes {
  std::string mode, transform, nearest_mode;
  double cubic_a = -0.75;
  bool exclude_outside = false;
  std::vector<int64_t> axes;
};

// Coordinate in the input of output position x (ONNX coordinate_transformation_mode).
// `length` is the resized length before flooring (in * scale when scales are given), as
// ONNX's reference uses it for align_corners.
double source_coordinate(const ResizeAttributes& a, double x, double scale, int64_t in, int64_t out,
                         double length) {
  const std::string& t = a.transform;
  if (t == "half_pixel") return (x + 0.5) / scale - 0.5;
  if (t == "pytorch_half_pixel") return out > 1 ? (x + 0.5) / scale - 0.5 : 0.0;
  if (t == "align_corners") return length == 1 ? 0.0 : x * (in - 1) / (length - 1);
  if (t == "asymmetric") return x / scale;
  return (x + 0.5) / scale;  // tf_half_pixel_for_nn
}

int64_t nearest_index(const ResizeAttributes& a, double v) {
  const std::string& m = a.nearest_mode;
  if (m == "floor") return static_cast<int64_t>(std::floor(v));
  if (m == "ceil") return static_cast<int64_t>(std::ceil(v));
  const double fl = std::floor(v);
  if (v - fl == 0.5) return static_cast<int64_t>(m == "round_prefer_ceil" ? fl + 1 : fl);
  return static_cast<int64_t>(std::round(v));
}

double cubic_weight(double s, double a) {
  s = std::abs(s);
  if (s <= 1) return ((a + 2) * s - (a + 3)) * s * s + 1;
  if (s < 2) return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a;
  return 0.0;
}

// Resizes dimension `dim` of x from in to out positions.
at::Tensor resize_dim(const at::Tensor& x, int64_t dim, int64_t out, double scale, double length,
                      const ResizeAttributes& a) {
  const int64_t in = x.size(dim);
  TORCH_CHECK(in > 0 || out == 0, "Resize: cannot resize an empty dimension to ", out);
  const int taps = a.mode == "nearest" ? 1 : a.mode == "linear" ? 2 : 4;
  std::vector<std::vector<int64_t>> index(taps, std::vector<int64_t>(out));
  std::vector<std::vector<double>> weight(taps, std::vector<double>(out));
  auto clamp = [in](int64_t i) { return std::min(std::max<int64_t>(i, 0), in - 1); };
  for (int64_t o = 0; o < out; ++o) {
    const double v = source_coordinate(a, static_cast<double>(o), scale, in, out, length);
    if (taps == 1) {
      index[0][o] = clamp(nearest_index(a, v));
      weight[0][o] = 1.0;
    } else if (taps == 2) {
      const double c = std::min(std::max(v, 0.0), static_cast<double>(in - 1));
      const int64_t i0 = static_cast<int64_t>(std::floor(c));
      const double f = c - i0;
      index[0][o] = clamp(i0);
      index[1][o] = clamp(i0 + 1);
      weight[0][o] = 1 - f;
      weight[1][o] = f;
    } else {
      const int64_t i0 = static_cast<int64_t>(std::floor(v));
      const double f = v - i0;
      double total = 0;
      for (int k = 0; k < 4; ++k) {
        const int64_t i = i0 - 1 + k;
        double w = cubic_weight(f - (k - 1), a.cubic_a);
        if (a.exclude_outside && (i < 0 || i >= in)) w = 0;
        index[k][o] = clamp(i);
        weight[k][o] = w;
        total += w;
      }
      if (a.exclude_outside && total != 0) {
        for (int k = 0; k < 4; ++k) weight[k][o] /= total;
      }
    }
  }
  std::vector<int64_t> shape(x.dim(), 1);
  shape[dim] = out;
  at::Tensor y;
  for (int k = 0; k < taps; ++k) {
    at::Tensor gathered = x.index_select(dim, at::tensor(index[k], at::kLong));
    if (taps == 1) return gathered;
    at::Tensor w = at::tensor(weight[k], at::kDouble).to(x.scalar_type()).reshape(shape);
    y = k == 0 ? gathered * w : y + gathered * w;
  }
  return y;
}

Kernel resize(const Node& node) {
  ResizeAttributes a;
  a.mode = node.attr_string("mode", "nearest");
  TORCH_CHECK(a.mode == "nearest" || a.mode == "linear" || a.mode == "cubic", node.describe(),
              ": mode must be nearest, linear or cubic, got '", a.mode, "'");
  a.transform = node.attr_string("coordinate_transformation_mode", "half_pixel");
  TORCH_CHECK(a.transform == "half_pixel" || a.transform == "pytorch_half_pixel" ||
                  a.transform == "align_corners" || a.transform == "asymmetric" ||
                  a.transform == "tf_half_pixel_for_nn",
              node.describe(), ": coordinate_transformation_mode '", a.transform,
              "' is not supported (half_pixel, pytorch_half_pixel, align_corners, asymmetric, ",
              "tf_half_pixel_for_nn)");
  a.nearest_mode = node.attr_string("nearest_mode", "round_prefer_floor");
  TORCH_CHECK(a.nearest_mode == "round_prefer_floor" || a.nearest_mode == "round_prefer_ceil" ||
                  a.nearest_mode == "floor" || a.nearest_mode == "ceil",
              node.describe(), ": unknown nearest_mode '", a.nearest_mode, "'");
  a.cubic_a = node.attr_float("cubic_coeff_a", -0.75);
  a.exclude_outside = node.attr_int("exclude_outside", 0) != 0;
  TORCH_CHECK(node.attr_int("antialias", 0) == 0, node.describe(), ": antialias is not supported");
  const std::string policy = node.attr_string("keep_aspect_ratio_policy", "stretch");
  TORCH_CHECK(policy == "stretch", node.describe(), ": keep_aspect_ratio_policy '", policy,
              "' is not supported (stretch)");
  a.axes = node.attr_ints("axes", {});
  return [node, a](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t rank = x.dim();
    std::vector<int64_t> axes;
    for (int64_t axis : a.axes) axes.push_back(normalize_axis(axis, rank, node));
    if (axes.empty()) {
      for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
    }
    const bool has_sizes = in.size() > 3 && in[3].defined() && in[3].numel() > 0;
    const bool has_scales = in.size() > 2 && in[2].defined() && in[2].numel() > 0;
    TORCH_CHECK(has_sizes != has_scales, "Resize: exactly one of scales and sizes must be given");
    std::vector<int64_t> out(rank);
    std::vector<double> scale(rank, 1.0), length(rank, 0.0);
    for (int64_t d = 0; d < rank; ++d) out[d] = x.size(d);
    if (has_sizes) {
      const std::vector<int64_t> sizes = int_list(in[3], "Resize sizes");
      TORCH_CHECK(sizes.size() == axes.size(), "Resize: ", sizes.size(), " sizes for ", axes.size(),
                  " axes");
      for (size_t i = 0; i < axes.size(); ++i) {
        TORCH_CHECK(sizes[i] >= 0 && sizes[i] <= (int64_t(1) << 24), "Resize: size ", sizes[i],
                    " out of range");
        out[axes[i]] = sizes[i];
        length[axes[i]] = static_cast<double>(sizes[i]);
        scale[axes[i]] = x.size(axes[i]) > 0 ? static_cast<double>(sizes[i]) / x.size(axes[i]) : 1;
      }
    } else {
      at::Tensor s = in[2].to(at::kDouble).contiguous().reshape({-1});
      TORCH_CHECK(s.numel() == static_cast<int64_t>(axes.size()), "Resize: ", s.numel(),
                  " scales for ", axes.size(), " axes");
      for (size_t i = 0; i < axes.size(); ++i) {
        const double v = s[static_cast<int64_t>(i)].item<double>();
        TORCH_CHECK(std::isfinite(v) && v > 0 && v * x.size(axes[i]) <= double(int64_t(1) << 24),
                    "Resize: scale ", v, " must be finite, > 0 and keep sizes below 2^24");
        scale[axes[i]] = v;
        out[axes[i]] = static_cast<int64_t>(std::floor(x.size(axes[i]) * v));
        length[axes[i]] = x.size(axes[i]) * v;
      }
    }
    double total = 1;
    for (int64_t d = 0; d < rank; ++d) total *= static_cast<double>(out[d]);
    TORCH_CHECK(total <= double(int64_t(1) << 28), "Resize: the output would have ", total,
                " elements (more than 2^28)");
    at::Tensor y = x;
    for (int64_t d : axes) {
      if (out[d] == x.size(d) && scale[d] == 1.0) continue;  // identity in every mode
      y = resize_dim(y, d, out[d], scale[d], length[d], a);
    }
    return one(y);
  };
}

}  // namespace

void add_resize_kernels(KernelTable& t) {
  t["Resize"] = resize;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
