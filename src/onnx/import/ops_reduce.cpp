// Reductions (axes as attribute, or as input 1 from opset 13 for ReduceSum and opset 18 for
// the others), ArgMax/ArgMin.
#include <c10/util/Exception.h>

#include "onnx/import/kernels.h"

namespace calq {
namespace onnx {
namespace detail {
namespace {

enum class Reduce { mean, sum, max, min, prod, l1, l2, sum_square, log_sum, log_sum_exp };

template <Reduce R>
Kernel reduce(const Node& node) {
  const bool keepdims = node.attr_int("keepdims", 1) != 0;
  const bool noop_with_empty_axes = node.attr_int("noop_with_empty_axes", 0) != 0;
  return [node, keepdims, noop_with_empty_axes](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    std::vector<int64_t> axes = node.attr_ints("axes", {});
    if (in.size() > 1 && in[1].defined()) axes = int_list(in[1], "reduce axes");
    if (axes.empty() && noop_with_empty_axes) return one(x);
    if (axes.empty()) {
      for (int64_t d = 0; d < x.dim(); ++d) axes.push_back(d);
    }
    std::vector<bool> seen(std::max<int64_t>(x.dim(), 1), false);
    for (int64_t& a : axes) {
      a = normalize_axis(a, std::max<int64_t>(x.dim(), 1), node);
      TORCH_CHECK(!seen[a], "reduce: axis ", a, " given twice");
      seen[a] = true;
    }
    if (x.dim() == 0) return one(x);
    switch (R) {
      case Reduce::mean:
        return one(x.mean(axes, keepdims));
      case Reduce::sum:
        return one(x.sum(axes, keepdims));
      case Reduce::l1:
        return one(x.abs().sum(axes, keepdims));
      case Reduce::l2:
        return one(x.pow(2).sum(axes, keepdims).sqrt());
      case Reduce::sum_square:
        return one(x.pow(2).sum(axes, keepdims));
      case Reduce::log_sum:
        return one(x.sum(axes, keepdims).log());
      case Reduce::log_sum_exp:
        return one(at::logsumexp(x, axes, keepdims));
      case Reduce::max:
        return one(x.amax(axes, keepdims));
      case Reduce::min:
        return one(x.amin(axes, keepdims));
      case Reduce::prod: {
        at::Tensor y = x;
        std::vector<int64_t> sorted = axes;
        std::sort(sorted.rbegin(), sorted.rend());
        for (int64_t a : sorted) y = y.prod(a, true);
        if (!keepdims) {
          for (int64_t a : sorted) y = y.squeeze(a);
        }
        return one(y);
      }
    }
    TORCH_INTERNAL_ASSERT(false, "unknown reduction");
  };
}

template <bool Max>
Kernel arg_reduce(const Node& node) {
  const int64_t axis_attr = node.attr_int("axis", 0);
  const bool keepdims = node.attr_int("keepdims", 1) != 0;
  const bool last = node.attr_int("select_last_index", 0) != 0;
  return [node, axis_attr, keepdims, last](const std::vector<at::Tensor>& in, bool) {
    const at::Tensor& x = in[0];
    const int64_t axis = normalize_axis(axis_attr, x.dim(), node);
    if (!last) return one(Max ? x.argmax(axis, keepdims) : x.argmin(axis, keepdims));
    at::Tensor flipped = x.flip(axis);
    at::Tensor index = Max ? flipped.argmax(axis, keepdims) : flipped.argmin(axis, keepdims);
    return one(x.size(axis) - 1 - index);
  };
}

}  // namespace

void add_reduce_kernels(KernelTable& t) {
  t["ReduceMean"] = reduce<Reduce::mean>;
  t["ReduceSum"] = reduce<Reduce::sum>;
  t["ReduceMax"] = reduce<Reduce::max>;
  t["ReduceMin"] = reduce<Reduce::min>;
  t["ReduceProd"] = reduce<Reduce::prod>;
  t["ReduceL1"] = reduce<Reduce::l1>;
  t["ReduceL2"] = reduce<Reduce::l2>;
  t["ReduceSumSquare"] = reduce<Reduce::sum_square>;
  t["ReduceLogSum"] = reduce<Reduce::log_sum>;
  t["ReduceLogSumExp"] = reduce<Reduce::log_sum_exp>;
  t["ArgMax"] = arg_reduce<true>;
  t["ArgMin"] = arg_reduce<false>;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
