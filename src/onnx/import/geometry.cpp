#include "onnx/import/geometry.h"

#include <c10/util/Exception.h>

namespace calq {
namespace onnx {
namespace detail {
namespace {

std::vector<int64_t> positive_list(const Node& node, const char* key, int64_t n, int64_t fallback,
                                   const std::vector<int64_t>& given) {
  std::vector<int64_t> v = node.attr_ints(key, {});
  if (v.empty()) v = given.empty() ? std::vector<int64_t>(n, fallback) : given;
  TORCH_CHECK(static_cast<int64_t>(v.size()) == n, node.describe(), ": ", key, " has ", v.size(),
              " values, expected ", n, " (one per spatial dimension)");
  for (int64_t x : v) {
    TORCH_CHECK(x >= 1 && x <= (int64_t(1) << 20), node.describe(), ": ", key,
                " values must be in [1, 2^20], got ", x);
  }
  return v;
}

}  // namespace

Window Window::read(const Node& node, int64_t spatial, const std::vector<int64_t>& weight_kernel) {
  TORCH_CHECK(spatial >= 1 && spatial <= 3, node.describe(), ": ", spatial,
              " spatial dimensions; calq supports 1 to 3");
  Window w;
  w.spatial = spatial;
  w.kernel = positive_list(node, "kernel_shape", spatial, 1, weight_kernel);
  TORCH_CHECK(node.has_attribute("kernel_shape") || !weight_kernel.empty(), node.describe(),
              ": kernel_shape is required");
  w.strides = positive_list(node, "strides", spatial, 1, {});
  w.dilations = positive_list(node, "dilations", spatial, 1, {});
  w.auto_pad = node.attr_string("auto_pad", "NOTSET");
  TORCH_CHECK(w.auto_pad == "NOTSET" || w.auto_pad == "SAME_UPPER" || w.auto_pad == "SAME_LOWER" ||
                  w.auto_pad == "VALID",
              node.describe(), ": auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got '",
              w.auto_pad, "'");
  w.pads = node.attr_ints("pads", std::vector<int64_t>(2 * spatial, 0));
  TORCH_CHECK(static_cast<int64_t>(w.pads.size()) == 2 * spatial, node.describe(), ": pads has ",
              w.pads.size(), " values, expected ", 2 * spatial);
  for (int64_t p : w.pads) {
    TORCH_CHECK(p >= 0 && p <= (int64_t(1) << 20), node.describe(),
                ": pads must be in [0, 2^20], got ", p);
  }
  w.ceil_mode = node.attr_int("ceil_mode", 0) != 0;
  return w;
}

bool Window::symmetric() const {
  if (auto_pad != "NOTSET" && auto_pad != "VALID") return false;
  for (int64_t i = 0; i < spatial; ++i) {
    if (auto_pad == "NOTSET" && pads[i] != pads[i + spatial]) return false;
  }
  return true;
}

std::vector<std::pair<int64_t, int64_t>> Window::resolve(at::IntArrayRef in) const {
  std::vector<std::pair<int64_t, int64_t>> out(spatial, {0, 0});
  for (int64_t i = 0; i < spatial; ++i) {
    if (auto_pad == "NOTSET") {
      out[i] = {pads[i], pads[i + spatial]};
    } else if (auto_pad != "VALID") {
      const int64_t size = (in[i] + strides[i] - 1) / strides[i];
      const int64_t extent = (kernel[i] - 1) * dilations[i] + 1;
      const int64_t total = std::max<int64_t>(0, (size - 1) * strides[i] + extent - in[i]);
      const int64_t small = total / 2, large = total - total / 2;
      out[i] =
          auto_pad == "SAME_UPPER" ? std::make_pair(small, large) : std::make_pair(large, small);
    }
  }
  return out;
}

at::Tensor pad_spatial(const at::Tensor& x, const std::vector<std::pair<int64_t, int64_t>>& pads,
                       double value) {
  std::vector<int64_t> flat;
  bool any = false;
  for (auto it = pads.rbegin(); it != pads.rend(); ++it) {  // last dim first, as ATen
    flat.push_back(it->first);
    flat.push_back(it->second);
    any = any || it->first != 0 || it->second != 0;
  }
  return any ? at::constant_pad_nd(x, flat, value) : x;
}

TransposedWindow TransposedWindow::read(const Node& node, int64_t spatial,
                                        const std::vector<int64_t>& weight_kernel) {
  TransposedWindow t;
  t.window = Window::read(node, spatial, weight_kernel);
  t.output_padding = node.attr_ints("output_padding", std::vector<int64_t>(spatial, 0));
  TORCH_CHECK(static_cast<int64_t>(t.output_padding.size()) == spatial, node.describe(),
              ": output_padding has ", t.output_padding.size(), " values, expected ", spatial);
  for (int64_t p : t.output_padding) {
    TORCH_CHECK(p >= 0 && p <= (int64_t(1) << 20), node.describe(),
                ": output_padding must be in [0, 2^20], got ", p);
  }
  t.output_shape = node.attr_ints("output_shape", {});
  if (!t.output_shape.empty()) {
    // output_shape may list the spatial dims only, or N and C too.
    if (static_cast<int64_t>(t.output_shape.size()) == spatial + 2) {
      t.output_shape.erase(t.output_shape.begin(), t.output_shape.begin() + 2);
    }
    TORCH_CHECK(static_cast<int64_t>(t.output_shape.size()) == spatial, node.describe(),
                ": output_shape has ", t.output_shape.size(), " values, expected ", spatial);
    for (int64_t s : t.output_shape) {
      TORCH_CHECK(s >= 0 && s <= (int64_t(1) << 30), node.describe(),
                  ": output_shape values must be in [0, 2^30], got ", s);
    }
  }
  return t;
}

std::vector<std::pair<int64_t, int64_t>> TransposedWindow::resolve(at::IntArrayRef in) const {
  const Window& w = window;
  std::vector<std::pair<int64_t, int64_t>> out(w.spatial, {0, 0});
  for (int64_t i = 0; i < w.spatial; ++i) {
    const int64_t full =
        w.strides[i] * (in[i] - 1) + output_padding[i] + (w.kernel[i] - 1) * w.dilations[i] + 1;
    int64_t target = -1;
    if (!output_shape.empty()) {
      target = output_shape[i];
    } else if (w.auto_pad == "SAME_UPPER" || w.auto_pad == "SAME_LOWER") {
      target = in[i] * w.strides[i];
    }
    if (target < 0) {
      if (w.auto_pad == "NOTSET") out[i] = {w.pads[i], w.pads[i + w.spatial]};
      continue;
    }
    const int64_t total = full - target;
    // Floor division, as ONNX's definition (Python //): total may be negative.
    const int64_t half = total >= 0 ? total / 2 : -((-total + 1) / 2), rest = total - half;
    // ONNX: SAME_UPPER puts the smaller half at the beginning.
    out[i] = w.auto_pad == "SAME_UPPER" ? std::make_pair(half, rest) : std::make_pair(rest, half);
  }
  return out;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
