// Operators that move values or compute shapes: Reshape, Transpose, Slice, Split, Gather,
// Pad, Shape, Cast, constants, ... (opset differences noted where inputs replaced attributes).
#include <c10/util/Exception.h>

#include <algorithm>
#include <numeric>

#include "onnx/import/kernels.h"

namespace calq {
namespace onnx {
namespace detail {
namespace {

// Elements a shape computed at run time may have (2^28: a hostile file must not make calq
// allocate without bound; real models stay far below).
constexpr int64_t kMaxRuntimeElements = int64_t(1) << 28;

void check_size(at::IntArrayRef shape, const char* op) {
  int64_t n = 1;
  for (int64_t d : shape) {
    TORCH_CHECK(d >= 0, op, ": negative dimension ", d, " in shape ", shape);
    TORCH_CHECK(d == 0 || n <= kMaxRuntimeElements / d, op, ": shape ", shape,
                " has more than 2^28 elements");
    n *= d;
  }
}

Kernel identity(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) { return one(in[0]); };
}

Kernel reshape(const Node& node) {
  const bool allow_zero = node.attr_int("allowzero", 0) != 0;
  return [allow_zero](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    std::vector<int64_t> shape = int_list(in[1], "Reshape shape");
    int64_t inferred = -1;
    for (size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] == 0 && !allow_zero) {
        TORCH_CHECK(static_cast<int64_t>(i) < x.dim(), "Reshape: 0 at position ", i,
                    " copies a dimension the input (shape ", x.sizes(), ") does not have");
        shape[i] = x.size(static_cast<int64_t>(i));
      } else if (shape[i] == -1) {
        TORCH_CHECK(inferred < 0, "Reshape: more than one -1 in ", at::IntArrayRef(shape));
        inferred = static_cast<int64_t>(i);
      } else {
        TORCH_CHECK(shape[i] >= 0, "Reshape: invalid dimension ", shape[i], " in ",
                    at::IntArrayRef(shape));
      }
    }
    return one(x.reshape(shape));
  };
}

Kernel flatten(const Node& node) {
  const int64_t axis_attr = node.attr_int("axis", 1);
  return [node, axis_attr](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t rank = x.dim();
    const int64_t axis = axis_attr < 0 ? axis_attr + rank : axis_attr;
    TORCH_CHECK(axis >= 0 && axis <= rank, "Flatten: axis ", axis_attr, " out of range for rank ",
                rank);
    int64_t rows = 1;
    for (int64_t d = 0; d < axis; ++d) rows *= x.size(d);
    int64_t cols = 1;
    for (int64_t d = axis; d < rank; ++d) cols *= x.size(d);
    return one(x.reshape({rows, cols}));
  };
}

Kernel transpose(const Node& node) {
  const std::vector<int64_t> perm_attr = node.attr_ints("perm", {});
  return [perm_attr](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    std::vector<int64_t> perm = perm_attr;
    if (perm.empty()) {
      for (int64_t d = x.dim() - 1; d >= 0; --d) perm.push_back(d);
    }
    TORCH_CHECK(static_cast<int64_t>(perm.size()) == x.dim(), "Transpose: perm ",
                at::IntArrayRef(perm), " does not fit rank ", x.dim());
    return one(x.permute(perm));
  };
}

// Axes from the attribute (older opsets) or from input 1 (newer ones).
std::vector<int64_t> axes_of(const Node& node, const std::vector<at::Tensor>& in, size_t index,
                             const char* what) {
  if (in.size() > index && in[index].defined()) return int_list(in[index], what);
  return node.attr_ints("axes", {});
}

Kernel squeeze(const Node& node) {
  return [node](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    std::vector<int64_t> axes = axes_of(node, in, 1, "Squeeze axes");
    if (axes.empty()) return one(x.squeeze());
    std::vector<bool> drop(x.dim(), false);
    for (int64_t a : axes) {
      const int64_t axis = normalize_axis(a, x.dim(), node);
      TORCH_CHECK(x.size(axis) == 1, "Squeeze: dimension ", axis, " of shape ", x.sizes(),
                  " is not 1");
      drop[axis] = true;
    }
    std::vector<int64_t> shape;
    for (int64_t d = 0; d < x.dim(); ++d) {
      if (!drop[d]) shape.push_back(x.size(d));
    }
    return one(x.reshape(shape));
  };
}

Kernel unsqueeze(const Node& node) {
  return [node](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const std::vector<int64_t> axes = axes_of(node, in, 1, "Unsqueeze axes");
    TORCH_CHECK(!axes.empty(), "Unsqueeze: axes are required");
    const int64_t rank = x.dim() + static_cast<int64_t>(axes.size());
    std::vector<bool> inserted(rank, false);
    for (int64_t a : axes) {
      const int64_t axis = normalize_axis(a, rank, node);
      TORCH_CHECK(!inserted[axis], "Unsqueeze: axis ", a, " given twice");
      inserted[axis] = true;
    }
    std::vector<int64_t> shape;
    int64_t source = 0;
    for (int64_t d = 0; d < rank; ++d) shape.push_back(inserted[d] ? 1 : x.size(source++));
    return one(x.reshape(shape));
  };
}

Kernel concat(const Node& node) {
  TORCH_CHECK(node.has_attribute("axis"), node.describe(), ": axis is required");
  const int64_t axis_attr = node.attr_int("axis", 0);
  return [node, axis_attr](const std::vector<at::Tensor>& in, bool) {
    std::vector<at::Tensor> parts;
    for (const auto& t : in) {
      TORCH_CHECK(t.defined(), "Concat: every input must be given");
      parts.push_back(t);
    }
    const int64_t axis = normalize_axis(axis_attr, parts[0].dim(), node);
    return one(at::cat(parts, axis));
  };
}

Kernel split(const Node& node) {
  const int64_t axis_attr = node.attr_int("axis", 0);
  const std::vector<int64_t> split_attr = node.attr_ints("split", {});
  const int64_t num_outputs = node.attr_int("num_outputs", 0);
  const int64_t outputs = static_cast<int64_t>(node.outputs.size());
  if (node.has_attribute("num_outputs")) {
    TORCH_CHECK(num_outputs == outputs, node.describe(), ": num_outputs ", num_outputs,
                " differs from the ", outputs, " outputs");
  }
  return [node, axis_attr, split_attr, outputs](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t axis = normalize_axis(axis_attr, x.dim(), node);
    std::vector<int64_t> sizes = split_attr;
    if (in.size() > 1 && in[1].defined()) sizes = int_list(in[1], "Split split");
    const int64_t length = x.size(axis);
    if (sizes.empty()) {
      // Equal parts; from opset 18 the last part may be smaller (ceil division).
      const int64_t part = (length + outputs - 1) / outputs;
      TORCH_CHECK(node.opset >= 18 || length % outputs == 0, "Split: dimension ", length,
                  " does not split into ", outputs, " equal parts");
      for (int64_t i = 0; i < outputs; ++i) {
        sizes.push_back(std::max<int64_t>(0, std::min(part, length - i * part)));
      }
    }
    TORCH_CHECK(static_cast<int64_t>(sizes.size()) == outputs, "Split: ", sizes.size(),
                " sizes for ", outputs, " outputs");
    int64_t total = 0;
    for (int64_t s : sizes) {
      TORCH_CHECK(s >= 0, "Split: negative size ", s);
      total += s;
    }
    TORCH_CHECK(total == length, "Split: sizes ", at::IntArrayRef(sizes), " sum to ", total,
                ", the dimension has ", length);
    return x.split_with_sizes(sizes, axis);
  };
}

Kernel slice(const Node& node) {
  return [node](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const std::vector<int64_t> starts = int_list(in[1], "Slice starts");
    const std::vector<int64_t> ends = int_list(in[2], "Slice ends");
    std::vector<int64_t> axes, steps;
    if (in.size() > 3 && in[3].defined()) axes = int_list(in[3], "Slice axes");
    if (in.size() > 4 && in[4].defined()) steps = int_list(in[4], "Slice steps");
    if (axes.empty()) {
      for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    }
    if (steps.empty()) steps.assign(starts.size(), 1);
    TORCH_CHECK(starts.size() == ends.size() && starts.size() == axes.size() &&
                    starts.size() == steps.size(),
                "Slice: starts, ends, axes and steps must have the same length");
    at::Tensor y = x;
    std::vector<bool> seen(x.dim(), false);
    for (size_t i = 0; i < starts.size(); ++i) {
      const int64_t axis = normalize_axis(axes[i], x.dim(), node);
      TORCH_CHECK(!seen[axis], "Slice: axis ", axes[i], " given twice");
      seen[axis] = true;
      const int64_t dim = x.size(axis);
      const int64_t step = steps[i];
      TORCH_CHECK(step != 0, "Slice: step must not be 0");
      auto norm = [dim](int64_t v) {
        // Saturate before adding dim so INT64_MIN/MAX stay in range.
        v = std::max<int64_t>(std::min<int64_t>(v, int64_t(1) << 62), -(int64_t(1) << 62));
        return v < 0 ? v + dim : v;
      };
      int64_t start = norm(starts[i]), end = norm(ends[i]);
      if (step > 0) {
        start = std::min(std::max<int64_t>(start, 0), dim);
        end = std::min(std::max<int64_t>(end, 0), dim);
        if (end < start) end = start;
        y = y.slice(axis, start, end, step);
      } else {
        start = std::min(std::max<int64_t>(start, 0), dim - 1);
        end = std::min(std::max<int64_t>(end, -1), dim - 1);
        std::vector<int64_t> index;
        for (int64_t k = start; k > end; k += step) index.push_back(k);
        y = y.index_select(axis, at::tensor(index, at::kLong));
      }
    }
    return one(y);
  };
}

Kernel gather(const Node& node) {
  const int64_t axis_attr = node.attr_int("axis", 0);
  return [node, axis_attr](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    TORCH_CHECK(x.dim() >= 1, "Gather: data must have rank >= 1");
    const int64_t axis = normalize_axis(axis_attr, x.dim(), node);
    TORCH_CHECK(!in[1].is_floating_point(), "Gather: indices must be integers");
    at::Tensor index = in[1].to(at::kLong);
    const int64_t dim = x.size(axis);
    index = at::where(index < 0, index + dim, index);
    if (index.numel() > 0) {
      TORCH_CHECK(index.min().item<int64_t>() >= 0 && index.max().item<int64_t>() < dim,
                  "Gather: an index is out of range for dimension ", axis, " of size ", dim);
    }
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().begin() + axis);
    for (int64_t d : index.sizes()) shape.push_back(d);
    shape.insert(shape.end(), x.sizes().begin() + axis + 1, x.sizes().end());
    return one(x.index_select(axis, index.reshape({-1})).reshape(shape));
  };
}

Kernel expand(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    const std::vector<int64_t> shape = int_list(in[1], "Expand shape");
    std::vector<int64_t> target = at::infer_size(in[0].sizes(), shape);
    check_size(target, "Expand");
    return one(in[0].expand(target));
  };
}

Kernel tile(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    const std::vector<int64_t> repeats = int_list(in[1], "Tile repeats");
    TORCH_CHECK(static_cast<int64_t>(repeats.size()) == in[0].dim(), "Tile: ", repeats.size(),
                " repeats for rank ", in[0].dim());
    std::vector<int64_t> target;
    for (size_t d = 0; d < repeats.size(); ++d) {
      TORCH_CHECK(repeats[d] >= 0, "Tile: negative repeat ", repeats[d]);
      target.push_back(in[0].size(static_cast<int64_t>(d)) *
                       std::min<int64_t>(repeats[d], 1 << 30));
    }
    check_size(target, "Tile");
    return one(in[0].repeat(repeats));
  };
}

Kernel pad(const Node& node) {
  const std::string mode = node.attr_string("mode", "constant");
  TORCH_CHECK(mode == "constant" || mode == "reflect" || mode == "edge", node.describe(),
              ": mode must be constant, reflect or edge, got '", mode, "'");
  return [node, mode](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t rank = x.dim();
    const std::vector<int64_t> pads = int_list(in[1], "Pad pads");
    std::vector<int64_t> axes;
    if (in.size() > 3 && in[3].defined()) {
      for (int64_t a : int_list(in[3], "Pad axes")) axes.push_back(normalize_axis(a, rank, node));
    } else {
      for (int64_t d = 0; d < rank; ++d) axes.push_back(d);
    }
    TORCH_CHECK(pads.size() == 2 * axes.size(), "Pad: ", pads.size(), " pads for ", axes.size(),
                " axes (2 per axis)");
    std::vector<int64_t> begin(rank, 0), end(rank, 0);
    for (size_t i = 0; i < axes.size(); ++i) {
      begin[axes[i]] = pads[i];
      end[axes[i]] = pads[i + axes.size()];
    }
    std::vector<int64_t> target;
    for (int64_t d = 0; d < rank; ++d) {
      TORCH_CHECK(std::abs(begin[d]) < (int64_t(1) << 31) && std::abs(end[d]) < (int64_t(1) << 31),
                  "Pad: pads out of range");
      target.push_back(x.size(d) + begin[d] + end[d]);
    }
    check_size(target, "Pad");
    int64_t first = 0;  // first padded dim
    while (first < rank && begin[first] == 0 && end[first] == 0) ++first;
    std::vector<int64_t> flat;  // last dim first
    for (int64_t d = rank - 1; d >= first; --d) {
      flat.push_back(begin[d]);
      flat.push_back(end[d]);
    }
    if (flat.empty()) return one(x);
    if (mode == "constant") {
      double value = 0.0;
      if (in.size() > 2 && in[2].defined() && in[2].numel() > 0) {
        value = in[2].reshape({-1})[0].item<double>();
      }
      return one(at::constant_pad_nd(x, flat, value));
    }
    const int64_t padded_dims = rank - first;
    TORCH_CHECK(padded_dims <= 3 && rank >= padded_dims + 1, "Pad: mode '", mode,
                "' pads at most the last 3 dimensions of an input with a batch dimension");
    // reflection / replication kernels are floating-point only: integers go through double
    // (exact below 2^53).
    at::Tensor y = x.is_floating_point() ? x : x.to(at::kDouble);
    const bool reflect = mode == "reflect";
    if (padded_dims == 1)
      y = reflect ? at::reflection_pad1d(y, flat) : at::replication_pad1d(y, flat);
    if (padded_dims == 2)
      y = reflect ? at::reflection_pad2d(y, flat) : at::replication_pad2d(y, flat);
    if (padded_dims == 3)
      y = reflect ? at::reflection_pad3d(y, flat) : at::replication_pad3d(y, flat);
    return one(y.to(x.scalar_type()));
  };
}

Kernel depth_to_space(const Node& node) {
  const int64_t b = node.attr_int("blocksize", 0);
  TORCH_CHECK(b >= 1 && b <= 4096, node.describe(), ": blocksize must be >= 1, got ", b);
  const std::string mode = node.attr_string("mode", "DCR");
  TORCH_CHECK(mode == "DCR" || mode == "CRD", node.describe(), ": mode must be DCR or CRD");
  return [b, mode](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    TORCH_CHECK(x.dim() == 4, "DepthToSpace: input must be 4-d, got ", x.sizes());
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    TORCH_CHECK(c % (b * b) == 0, "DepthToSpace: channels ", c, " not divisible by blocksize^2");
    at::Tensor y = mode == "DCR"
                       ? x.reshape({n, b, b, c / (b * b), h, w}).permute({0, 3, 4, 1, 5, 2})
                       : x.reshape({n, c / (b * b), b, b, h, w}).permute({0, 1, 4, 2, 5, 3});
    return one(y.reshape({n, c / (b * b), h * b, w * b}));
  };
}

Kernel space_to_depth(const Node& node) {
  const int64_t b = node.attr_int("blocksize", 0);
  TORCH_CHECK(b >= 1 && b <= 4096, node.describe(), ": blocksize must be >= 1, got ", b);
  return [b](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    TORCH_CHECK(x.dim() == 4, "SpaceToDepth: input must be 4-d, got ", x.sizes());
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    TORCH_CHECK(h % b == 0 && w % b == 0, "SpaceToDepth: spatial size ", x.sizes(),
                " not divisible by blocksize ", b);
    return one(x.reshape({n, c, h / b, b, w / b, b})
                   .permute({0, 3, 5, 1, 2, 4})
                   .reshape({n, c * b * b, h / b, w / b}));
  };
}

Kernel shape(const Node& node) {
  const int64_t start_attr = node.attr_int("start", 0);
  const bool has_end = node.has_attribute("end");
  const int64_t end_attr = node.attr_int("end", 0);
  return [start_attr, has_end, end_attr](const std::vector<at::Tensor>& in, bool) {
    const int64_t rank = in[0].dim();
    auto clamp = [rank](int64_t v) {
      if (v < 0) v += rank;
      return std::min(std::max<int64_t>(v, 0), rank);
    };
    const int64_t start = clamp(start_attr), end = has_end ? clamp(end_attr) : rank;
    std::vector<int64_t> dims;
    for (int64_t d = start; d < end; ++d) dims.push_back(in[0].size(d));
    return one(at::tensor(dims, at::kLong));
  };
}

Kernel size(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    return one(at::scalar_tensor(in[0].numel(), at::kLong));
  };
}

Kernel cast(const Node& node) {
  TORCH_CHECK(node.has_attribute("to"), node.describe(), ": attribute 'to' is required");
  const at::ScalarType type = to_scalar_type(node.attr_int("to", 1), node.describe());
  return [type](const std::vector<at::Tensor>& in, bool) { return one(in[0].to(type)); };
}

Kernel cast_like(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) { return one(in[0].to(in[1].scalar_type())); };
}

Kernel constant(const Node& node) {
  at::Tensor value;
  int given = 0;
  if (auto t = node.attr_tensor("value")) {
    value = to_tensor(*t);
    ++given;
  }
  if (node.has_attribute("value_float")) {
    value = at::scalar_tensor(node.attr_float("value_float", 0), at::kFloat);
    ++given;
  }
  if (node.has_attribute("value_floats")) {
    value = at::tensor(node.attr_floats("value_floats"), at::kDouble).to(at::kFloat);
    ++given;
  }
  if (node.has_attribute("value_int")) {
    value = at::scalar_tensor(node.attr_int("value_int", 0), at::kLong);
    ++given;
  }
  if (node.has_attribute("value_ints")) {
    value = at::tensor(node.attr_ints("value_ints"), at::kLong);
    ++given;
  }
  TORCH_CHECK(given == 1, node.describe(), ": exactly one value attribute is required, got ",
              given);
  return [value](const std::vector<at::Tensor>&, bool) { return one(value); };
}

Kernel constant_of_shape(const Node& node) {
  at::Tensor value = at::zeros({1}, at::kFloat);
  if (auto t = node.attr_tensor("value")) {
    value = to_tensor(*t);
    TORCH_CHECK(value.numel() == 1, node.describe(), ": value must hold one element");
  }
  return [value](const std::vector<at::Tensor>& in, bool) {
    const std::vector<int64_t> shape = int_list(in[0], "ConstantOfShape shape");
    check_size(shape, "ConstantOfShape");
    return one(value.reshape({}).expand(shape).contiguous());
  };
}

Kernel range(const Node&) {
  return [](const std::vector<at::Tensor>& in, bool) {
    for (int i = 0; i < 3; ++i) {
      TORCH_CHECK(in[i].numel() == 1, "Range: start, limit and delta must be scalars");
    }
    const at::ScalarType type = in[0].scalar_type();
    const double start = in[0].reshape({}).item<double>();
    const double limit = in[1].reshape({}).item<double>();
    const double delta = in[2].reshape({}).item<double>();
    TORCH_CHECK(delta != 0 && std::isfinite(start) && std::isfinite(limit) && std::isfinite(delta),
                "Range: delta must be non-zero and the values finite");
    const double count = std::max(std::ceil((limit - start) / delta), 0.0);
    TORCH_CHECK(count <= static_cast<double>(kMaxRuntimeElements), "Range: ", count,
                " elements exceed 2^28");
    // start + i * delta in the input type, as ONNX defines it.
    at::Tensor i = at::arange(static_cast<int64_t>(count), at::kDouble);
    if (at::isFloatingType(type)) {
      return one(
          (in[0].to(at::kDouble).reshape({}) + i * in[2].to(at::kDouble).reshape({})).to(type));
    }
    return one(in[0].reshape({}) +
               at::arange(static_cast<int64_t>(count), at::kLong).to(type) * in[2].reshape({}));
  };
}

}  // namespace

void add_shape_kernels(KernelTable& t) {
  t["Identity"] = identity;
  t["Reshape"] = reshape;
  t["Flatten"] = flatten;
  t["Transpose"] = transpose;
  t["Squeeze"] = squeeze;
  t["Unsqueeze"] = unsqueeze;
  t["Concat"] = concat;
  t["Split"] = split;
  t["Slice"] = slice;
  t["Gather"] = gather;
  t["Expand"] = expand;
  t["Tile"] = tile;
  t["Pad"] = pad;
  t["DepthToSpace"] = depth_to_space;
  t["SpaceToDepth"] = space_to_depth;
  t["Shape"] = shape;
  t["Size"] = size;
  t["Cast"] = cast;
  t["CastLike"] = cast_like;
  t["Constant"] = constant;
  t["ConstantOfShape"] = constant_of_shape;
  t["Range"] = range;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
