// QDQ models -> fixed fake quantizers (docs/onnx.md, "QDQ models").
#include "onnx/import/qdq.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

#include "onnx/model/operators.h"

namespace calq {
namespace onnx {
namespace detail {
namespace {

// The range of a storage type and the shift that maps it onto calq's signed dtypes.
struct StorageRange {
  int64_t lo = 0, hi = 0;
  int64_t shift = 0;  // unsigned types: the grid's integers minus this are calq's
  bool sixteen = false;
};

c10::optional<StorageRange> storage_range(at::ScalarType type) {
  switch (type) {
    case at::kByte:
      return StorageRange{0, 255, 128, false};
    case at::kChar:
      return StorageRange{-128, 127, 0, false};
    case at::kShort:
      return StorageRange{-32768, 32767, 0, true};
    case at::kLong:  // uint16, widened
      return StorageRange{0, 65535, 32768, true};
    default:
      return c10::nullopt;
  }
}

bool is_quantize(const Node& n) {
  return n.op_type == "QuantizeLinear" && (n.domain.empty() || is_contrib_quantization(n));
}

bool is_dequantize(const Node& n) {
  return n.op_type == "DequantizeLinear" && (n.domain.empty() || is_contrib_quantization(n));
}

const at::Tensor* constant(const std::map<std::string, at::Tensor>& constants,
                           const std::string& name) {
  if (name.empty()) return nullptr;
  auto it = constants.find(name);
  return it == constants.end() ? nullptr : &it->second;
}

// The per-tensor (scale, zero point, storage) of a Q or DQ node whose parameters are
// constants; nullopt otherwise. `storage_hint`: the type without a zero point.
struct Params {
  float scale = 1.0f;
  int64_t zero_point = 0;
  at::ScalarType storage = at::kByte;
};

c10::optional<Params> per_tensor_params(const Node& n,
                                        const std::map<std::string, at::Tensor>& constants,
                                        at::ScalarType storage_hint) {
  if (n.attr_int("block_size", 0) != 0) return c10::nullopt;
  const at::Tensor* s = constant(constants, n.inputs.size() > 1 ? n.inputs[1] : "");
  if (s == nullptr || s->numel() != 1 || !s->is_floating_point()) return c10::nullopt;
  Params p;
  p.scale = s->to(at::kFloat).reshape({}).item<float>();
  if (!(p.scale > 0.0f) || !std::isfinite(p.scale)) return c10::nullopt;
  p.storage = storage_hint;
  if (n.has_input(2)) {
    const at::Tensor* z = constant(constants, n.inputs[2]);
    if (z == nullptr || z->numel() != 1) return c10::nullopt;
    p.zero_point = z->to(at::kLong).reshape({}).item<int64_t>();
    p.storage = z->scalar_type();
  }
  if (!storage_range(p.storage)) return c10::nullopt;
  return p;
}

}  // namespace

bool FixedQuant::operator==(const FixedQuant& other) const {
  return scale == other.scale && zero_point == other.zero_point && storage == other.storage &&
         quant_min == other.quant_min && quant_max == other.quant_max;
}

c10::optional<WeightQuant> weight_quant_of(const Node& dequantize,
                                           const std::vector<at::Tensor>& inputs) {
  if (!is_dequantize(dequantize) || dequantize.attr_int("block_size", 0) != 0) return c10::nullopt;
  if (inputs.size() < 2 || !inputs[0].defined() || !inputs[1].defined()) return c10::nullopt;
  if (!storage_range(inputs[0].scalar_type())) return c10::nullopt;  // int32 biases
  WeightQuant w;
  w.storage = inputs[0].scalar_type();
  w.scale = inputs[1].to(at::kFloat).contiguous();
  w.zero_point = inputs.size() > 2 && inputs[2].defined() ? inputs[2].to(at::kLong).contiguous()
                                                          : at::zeros_like(w.scale, at::kLong);
  w.axis = dequantize.attr_int("axis", 1);
  return w;
}

std::vector<QdqPair> find_qdq_pairs(std::vector<Node>& nodes, const std::vector<bool>& skip,
                                    const std::map<std::string, at::Tensor>& constants,
                                    const std::set<std::string>& activations,
                                    const std::set<std::string>& graph_outputs) {
  std::map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (skip[i]) continue;
    for (const auto& in : nodes[i].inputs) {
      if (in.empty()) continue;
      auto& list = readers[in];
      if (list.empty() || list.back() != i) list.push_back(i);
    }
  }
  auto readers_of = [&readers](const std::string& v) -> const std::vector<size_t>& {
    static const std::vector<size_t> none;
    auto it = readers.find(v);
    return it == readers.end() ? none : it->second;
  };
  std::vector<bool> removed(nodes.size(), false);
  std::vector<QdqPair> pairs;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (skip[i] || removed[i] || !is_quantize(nodes[i])) continue;
    const Node& q = nodes[i];
    const std::string x = q.inputs[0];
    if (activations.count(x) == 0 || graph_outputs.count(x) > 0) continue;
    if (readers_of(x) != std::vector<size_t>{i}) continue;
    at::ScalarType hint = at::kByte;  // the type without a zero point (or output_dtype)
    const int64_t output_dtype = q.attr_int("output_dtype", 0);
    if (output_dtype == 3) hint = at::kChar;
    if (output_dtype == 5) hint = at::kShort;
    if (output_dtype == 4) hint = at::kLong;
    if (output_dtype != 0 && output_dtype != 2 && output_dtype != 3 && output_dtype != 4 &&
        output_dtype != 5) {
      continue;
    }
    const auto qp = per_tensor_params(q, constants, hint);
    if (!qp) continue;
    const std::string& quantized = q.outputs[0];
    if (graph_outputs.count(quantized) > 0) continue;
    const std::vector<size_t> dqs = readers_of(quantized);
    bool matching = !dqs.empty();
    for (size_t d : dqs) {
      const Node& dq = nodes[d];
      if (!is_dequantize(dq) || dq.inputs[0] != quantized) {
        matching = false;
        break;
      }
      const auto dp = per_tensor_params(dq, constants, qp->storage);
      matching = matching && dp && dp->scale == qp->scale && dp->zero_point == qp->zero_point &&
                 dp->storage == qp->storage;
    }
    if (!matching) continue;
    const StorageRange range = *storage_range(qp->storage);
    QdqPair pair;
    pair.input = x;
    pair.nodes.push_back(i);
    pair.quant.scale = qp->scale;
    pair.quant.zero_point = qp->zero_point;
    pair.quant.storage = qp->storage;
    pair.quant.quant_min = range.lo;
    pair.quant.quant_max = range.hi;
    for (size_t d : dqs) {
      pair.nodes.push_back(d);
      pair.views.push_back(nodes[d].outputs[0]);
    }
    // A Clip to exact grid levels after the only DQ narrows the grid (calq writes int4 and
    // narrowed ranges so), unless a QuantizeLinear reads it (a ReLU6 between two pairs).
    if (dqs.size() == 1 && graph_outputs.count(pair.views[0]) == 0 &&
        readers_of(pair.views[0]).size() == 1) {
      const size_t c = readers_of(pair.views[0])[0];
      const Node& clip = nodes[c];
      const at::Tensor* lo =
          clip.op_type == "Clip" && clip.inputs.size() == 3 && clip.inputs[0] == pair.views[0]
              ? constant(constants, clip.inputs[1])
              : nullptr;
      const at::Tensor* hi = lo != nullptr ? constant(constants, clip.inputs[2]) : nullptr;
      if (lo != nullptr && hi != nullptr && lo->numel() == 1 && hi->numel() == 1 &&
          lo->is_floating_point() && hi->is_floating_point()) {
        auto level = [&](const at::Tensor& bound) -> c10::optional<int64_t> {
          const float b = bound.to(at::kFloat).reshape({}).item<float>();
          const int64_t l = static_cast<int64_t>(std::nearbyint(b / qp->scale)) + qp->zero_point;
          const float back = static_cast<float>(static_cast<double>(l - qp->zero_point) *
                                                static_cast<double>(qp->scale));
          if (back != b || l < range.lo || l > range.hi) return c10::nullopt;
          return l;
        };
        const auto l_lo = level(*lo);
        const auto l_hi = level(*hi);
        bool read_by_quantize = false;
        for (size_t r : readers_of(clip.outputs[0])) read_by_quantize |= is_quantize(nodes[r]);
        if (l_lo && l_hi && *l_lo < *l_hi && (*l_lo > range.lo || *l_hi < range.hi) &&
            !read_by_quantize) {
          pair.quant.quant_min = *l_lo;
          pair.quant.quant_max = *l_hi;
          pair.nodes.push_back(c);
          pair.views = {clip.outputs[0]};
        }
      }
    }
    // Every reader of the quantized views reads x itself from now on.
    std::vector<size_t>& x_readers = readers[x];
    x_readers.clear();
    for (const auto& view : pair.views) {
      for (size_t r : readers_of(view)) {
        for (auto& in : nodes[r].inputs) {
          if (in == view) in = x;
        }
        if (std::find(x_readers.begin(), x_readers.end(), r) == x_readers.end()) {
          x_readers.push_back(r);
        }
      }
      readers.erase(view);
    }
    std::sort(x_readers.begin(), x_readers.end());
    for (size_t n : pair.nodes) removed[n] = true;
    pairs.push_back(std::move(pair));
  }
  return pairs;
}

FakeQuantConfig activation_recipe(const FixedQuant& quant) {
  const StorageRange range = *storage_range(quant.storage);
  FakeQuantConfig c;
  c.method = "fake_quant";
  c.observer = "fixed_scale";
  c.is_weight = false;
  const int64_t zero = quant.zero_point - range.shift;
  c.qkwargs = {{"dtype", range.sixteen ? "qint16" : "qint8"},
               {"per_channel", false},
               {"symmetric", zero == 0},
               {"scale", quant.scale}};
  if (zero != 0) c.qkwargs["zero_point"] = zero;
  if (quant.quant_min != range.lo || quant.quant_max != range.hi) {
    c.qkwargs["quant_min"] = quant.quant_min - range.shift;
    c.qkwargs["quant_max"] = quant.quant_max - range.shift;
  }
  return c;
}

c10::optional<FakeQuantConfig> weight_recipe(const WeightQuant& quant, int64_t output_axis,
                                             int64_t rank, int64_t channels) {
  const StorageRange range = *storage_range(quant.storage);
  FakeQuantConfig c;
  c.method = "fake_quant";
  c.observer = "fixed_scale";
  c.is_weight = true;
  c.qkwargs = {{"dtype", range.sixteen ? "qint16" : "qint8"}};
  const at::Tensor zero = quant.zero_point.reshape({-1}) - range.shift;
  const at::Tensor scale = quant.scale.to(at::kDouble).reshape({-1});
  c.qkwargs["symmetric"] = zero.eq(0).all().item<bool>();
  if (scale.numel() == 1) {
    c.qkwargs["per_channel"] = false;
    c.qkwargs["scale"] = scale.item<double>();
    if (zero.item<int64_t>() != 0) c.qkwargs["zero_point"] = zero.item<int64_t>();
    return c;
  }
  const int64_t axis = quant.axis < 0 ? quant.axis + rank : quant.axis;
  if (axis != output_axis || channels % scale.numel() != 0) return c10::nullopt;
  const int64_t repeat = channels / scale.numel();
  const at::Tensor scales = scale.repeat({repeat}).contiguous();
  const at::Tensor zeros = zero.repeat({repeat}).contiguous();
  c.qkwargs["per_channel"] = true;
  c.qkwargs["ch_axis"] = 0;
  c.qkwargs["scale"] =
      std::vector<double>(scales.data_ptr<double>(), scales.data_ptr<double>() + scales.numel());
  if (!zeros.eq(0).all().item<bool>()) {
    c.qkwargs["zero_point"] =
        std::vector<int64_t>(zeros.data_ptr<int64_t>(), zeros.data_ptr<int64_t>() + zeros.numel());
  }
  return c;
}

}  // namespace detail
}  // namespace onnx
}  // namespace calq
