#include "onnx/model/operators.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <sstream>

namespace calq {
namespace onnx {
namespace detail {
namespace {

using Kind = Attribute::Kind;

// "name:kind ..." with kinds f, i, s, t, fs, is, ss.
std::map<std::string, Kind> parse_attributes(const std::string& spec) {
  std::map<std::string, Kind> out;
  std::istringstream in(spec);
  std::string item;
  while (in >> item) {
    const size_t colon = item.find(':');
    TORCH_INTERNAL_ASSERT(colon != std::string::npos, "bad attribute spec ", item);
    const std::string kind = item.substr(colon + 1);
    Kind k = kind == "f"    ? Kind::float_
             : kind == "i"  ? Kind::int_
             : kind == "s"  ? Kind::string
             : kind == "t"  ? Kind::tensor
             : kind == "fs" ? Kind::floats
             : kind == "is" ? Kind::ints
                            : Kind::strings;
    TORCH_INTERNAL_ASSERT(k != Kind::strings || kind == "ss", "bad attribute kind ", item);
    out[item.substr(0, colon)] = k;
  }
  return out;
}

OperatorSchema op(const std::string& name, int min_in, int max_in, int min_out, int max_out,
                  const std::string& attributes = "", int64_t since = kMinOpset) {
  OperatorSchema s;
  s.op_type = name;
  s.since_opset = since;
  s.min_inputs = min_in;
  s.max_inputs = max_in;
  s.min_outputs = min_out;
  s.max_outputs = max_out;
  s.attributes = parse_attributes(attributes);
  return s;
}

std::vector<OperatorSchema> build_schemas() {
  const std::string conv = "auto_pad:s dilations:is group:i kernel_shape:is pads:is strides:is";
  const std::string pool = "auto_pad:s ceil_mode:i kernel_shape:is pads:is strides:is";
  const std::string reduce = "axes:is keepdims:i noop_with_empty_axes:i";
  std::vector<OperatorSchema> v = {
      // Element-wise, one input.
      op("Abs", 1, 1, 1, 1),
      op("Neg", 1, 1, 1, 1),
      op("Exp", 1, 1, 1, 1),
      op("Log", 1, 1, 1, 1),
      op("Sqrt", 1, 1, 1, 1),
      op("Reciprocal", 1, 1, 1, 1),
      op("Erf", 1, 1, 1, 1),
      op("Tanh", 1, 1, 1, 1),
      op("Sigmoid", 1, 1, 1, 1),
      op("Relu", 1, 1, 1, 1),
      op("Floor", 1, 1, 1, 1),
      op("Ceil", 1, 1, 1, 1),
      op("Round", 1, 1, 1, 1),
      op("Sign", 1, 1, 1, 1),
      op("Not", 1, 1, 1, 1),
      op("Sin", 1, 1, 1, 1),
      op("Cos", 1, 1, 1, 1),
      op("Softplus", 1, 1, 1, 1),
      op("Softsign", 1, 1, 1, 1),
      op("HardSigmoid", 1, 1, 1, 1, "alpha:f beta:f"),
      op("HardSwish", 1, 1, 1, 1, "", 14),
      op("LeakyRelu", 1, 1, 1, 1, "alpha:f"),
      op("Elu", 1, 1, 1, 1, "alpha:f"),
      op("Selu", 1, 1, 1, 1, "alpha:f gamma:f"),
      op("Celu", 1, 1, 1, 1, "alpha:f", 12),
      op("Mish", 1, 1, 1, 1, "", 18),
      op("Gelu", 1, 1, 1, 1, "approximate:s", 20),
      op("PRelu", 2, 2, 1, 1),
      op("Clip", 1, 3, 1, 1),
      // Element-wise, two or more inputs (broadcasting).
      op("Add", 2, 2, 1, 1),
      op("Sub", 2, 2, 1, 1),
      op("Mul", 2, 2, 1, 1),
      op("Div", 2, 2, 1, 1),
      op("Pow", 2, 2, 1, 1),
      op("Mod", 2, 2, 1, 1, "fmod:i"),
      op("Equal", 2, 2, 1, 1),
      op("Less", 2, 2, 1, 1),
      op("Greater", 2, 2, 1, 1),
      op("LessOrEqual", 2, 2, 1, 1, "", 12),
      op("GreaterOrEqual", 2, 2, 1, 1, "", 12),
      op("And", 2, 2, 1, 1),
      op("Or", 2, 2, 1, 1),
      op("Xor", 2, 2, 1, 1),
      op("Where", 3, 3, 1, 1),
      op("Max", 1, -1, 1, 1),
      op("Min", 1, -1, 1, 1),
      op("Sum", 1, -1, 1, 1),
      op("Mean", 1, -1, 1, 1),
      // Layers with weights.
      op("Conv", 2, 3, 1, 1, conv),
      op("ConvTranspose", 2, 3, 1, 1, conv + " output_padding:is output_shape:is"),
      op("Gemm", 2, 3, 1, 1, "alpha:f beta:f transA:i transB:i"),
      op("MatMul", 2, 2, 1, 1),
      // Opsets 9-13: Y, mean, var, saved_mean, saved_var; 14+: Y, running_mean, running_var.
      op("BatchNormalization", 5, 5, 1, 5, "epsilon:f momentum:f training_mode:i"),
      op("InstanceNormalization", 3, 3, 1, 1, "epsilon:f"),
      op("LayerNormalization", 2, 3, 1, 3, "axis:i epsilon:f stash_type:i", 17),
      // Pooling and reductions.
      op("MaxPool", 1, 1, 1, 2, pool + " dilations:is storage_order:i"),
      op("AveragePool", 1, 1, 1, 1, pool + " count_include_pad:i dilations:is"),
      op("GlobalAveragePool", 1, 1, 1, 1),
      op("GlobalMaxPool", 1, 1, 1, 1),
      op("ReduceMean", 1, 2, 1, 1, reduce),
      op("ReduceSum", 1, 2, 1, 1, reduce),
      op("ReduceMax", 1, 2, 1, 1, reduce),
      op("ReduceMin", 1, 2, 1, 1, reduce),
      op("ReduceProd", 1, 2, 1, 1, reduce),
      op("ReduceL1", 1, 2, 1, 1, reduce),
      op("ReduceL2", 1, 2, 1, 1, reduce),
      op("ReduceSumSquare", 1, 2, 1, 1, reduce),
      op("ReduceLogSum", 1, 2, 1, 1, reduce),
      op("ReduceLogSumExp", 1, 2, 1, 1, reduce),
      op("ArgMax", 1, 1, 1, 1, "axis:i keepdims:i select_last_index:i"),
      op("ArgMin", 1, 1, 1, 1, "axis:i keepdims:i select_last_index:i"),
      op("Softmax", 1, 1, 1, 1, "axis:i"),
      op("LogSoftmax", 1, 1, 1, 1, "axis:i"),
      // Moving values.
      op("Identity", 1, 1, 1, 1),
      op("Dropout", 1, 3, 1, 2, "ratio:f seed:i"),
      op("Reshape", 2, 2, 1, 1, "allowzero:i"),
      op("Flatten", 1, 1, 1, 1, "axis:i"),
      op("Transpose", 1, 1, 1, 1, "perm:is"),
      op("Squeeze", 1, 2, 1, 1, "axes:is"),
      op("Unsqueeze", 1, 2, 1, 1, "axes:is"),
      op("Concat", 1, -1, 1, 1, "axis:i"),
      op("Split", 1, 2, 1, -1, "axis:i split:is num_outputs:i"),
      op("Slice", 3, 5, 1, 1),
      op("Gather", 2, 2, 1, 1, "axis:i"),
      op("Expand", 2, 2, 1, 1),
      op("Tile", 2, 2, 1, 1),
      op("Pad", 2, 4, 1, 1, "mode:s"),
      op("DepthToSpace", 1, 1, 1, 1, "blocksize:i mode:s"),
      op("SpaceToDepth", 1, 1, 1, 1, "blocksize:i"),
      op("Resize", 1, 4, 1, 1,
         "antialias:i axes:is coordinate_transformation_mode:s cubic_coeff_a:f "
         "exclude_outside:i extrapolation_value:f keep_aspect_ratio_policy:s mode:s "
         "nearest_mode:s"),
      // Shapes and constants.
      op("Shape", 1, 1, 1, 1, "start:i end:i"),
      op("Size", 1, 1, 1, 1),
      op("Cast", 1, 1, 1, 1, "to:i saturate:i"),
      op("CastLike", 2, 2, 1, 1, "saturate:i", 15),
      op("Constant", 0, 0, 1, 1, "value:t value_float:f value_floats:fs value_int:i value_ints:is"),
      op("ConstantOfShape", 1, 1, 1, 1, "value:t"),
      op("Range", 3, 3, 1, 1),
      // Quantization (QDQ models; also in domain com.microsoft, see validate_support).
      op("QuantizeLinear", 2, 3, 1, 1, "axis:i block_size:i output_dtype:i saturate:i"),
      op("DequantizeLinear", 2, 3, 1, 1, "axis:i block_size:i"),
  };
  std::sort(v.begin(), v.end(),
            [](const OperatorSchema& a, const OperatorSchema& b) { return a.op_type < b.op_type; });
  return v;
}

}  // namespace

const std::vector<OperatorSchema>& schemas() {
  static const std::vector<OperatorSchema> table = build_schemas();
  return table;
}

const OperatorSchema* find_schema(const std::string& op_type) {
  const auto& table = schemas();
  auto it = std::lower_bound(
      table.begin(), table.end(), op_type,
      [](const OperatorSchema& s, const std::string& name) { return s.op_type < name; });
  return it != table.end() && it->op_type == op_type ? &*it : nullptr;
}

bool is_contrib_quantization(const Node& node) {
  return node.domain == kContribDomain &&
         (node.op_type == "QuantizeLinear" || node.op_type == "DequantizeLinear");
}

void validate_support(const Node& node) {
  TORCH_CHECK(node.domain.empty() || is_contrib_quantization(node),
              "unsupported operator: ", node.describe(), " is in domain '", node.domain,
              "'; calq supports the default ONNX domain (and QuantizeLinear / DequantizeLinear "
              "of ",
              kContribDomain, "), operators: ", supported_operator_list());
  const OperatorSchema* schema = find_schema(node.op_type);
  // ONNX Runtime's contrib Q/DQ (version 1): the default domain's operators with 16-bit types
  // at any opset.
  if (is_contrib_quantization(node)) return;
  TORCH_CHECK(schema != nullptr, "unsupported operator: ", node.describe(),
              "; supported operators: ", supported_operator_list());
  TORCH_CHECK(node.opset >= schema->since_opset && node.opset <= schema->until_opset,
              "unsupported operator: ", node.describe(), ": calq implements ", node.op_type,
              " for opsets ", schema->since_opset, " to ", schema->until_opset,
              "; supported operators: ", supported_operator_list());
}

void validate_node(const Node& node) {
  validate_support(node);
  const OperatorSchema* schema = find_schema(node.op_type);
  const int inputs = static_cast<int>(node.inputs.size());
  TORCH_CHECK(
      inputs >= schema->min_inputs && (schema->max_inputs < 0 || inputs <= schema->max_inputs),
      node.describe(), " has ", inputs, " inputs; ", node.op_type, " takes ", schema->min_inputs,
      " to ",
      schema->max_inputs < 0 ? std::string("any number") : std::to_string(schema->max_inputs));
  for (int i = 0; i < schema->min_inputs; ++i) {
    TORCH_CHECK(!node.inputs[i].empty(), node.describe(), ": input ", i,
                " is required but given as empty");
  }
  const int outputs = static_cast<int>(node.outputs.size());
  TORCH_CHECK(
      outputs >= schema->min_outputs && (schema->max_outputs < 0 || outputs <= schema->max_outputs),
      node.describe(), " has ", outputs, " outputs; ", node.op_type, " gives ", schema->min_outputs,
      " to ",
      schema->max_outputs < 0 ? std::string("any number") : std::to_string(schema->max_outputs));
  for (const auto& entry : node.attributes) {
    auto found = schema->attributes.find(entry.first);
    TORCH_CHECK(found != schema->attributes.end(), node.describe(), ": unknown attribute '",
                entry.first, "' for ", node.op_type);
    TORCH_CHECK(found->second == entry.second.kind, node.describe(), ": attribute '", entry.first,
                "' must be of kind ", to_string(found->second), ", got ",
                to_string(entry.second.kind));
  }
}

}  // namespace detail

const std::vector<OperatorSupport>& supported_operators() {
  static const std::vector<OperatorSupport> list = [] {
    std::vector<OperatorSupport> out;
    for (const auto& s : detail::schemas()) {
      out.push_back({s.op_type, s.since_opset, s.until_opset});
    }
    return out;
  }();
  return list;
}

std::string supported_operator_list() {
  std::string out;
  for (const auto& s : supported_operators()) out += (out.empty() ? "" : ", ") + s.op_type;
  return out;
}

}  // namespace onnx
}  // namespace calq
