// Imported ONNX model (calq::graph::Graph) -> QDQ ONNX (docs/deploy.md, "Imported models").
// The graph is walked node by node; quantization is written by the same QdqWriter as for
// traced models, layers from their modules, every other node as its ONNX operator(s).
#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <map>

#include "calq/deploy/qdq_export.h"
#include "calq/graph/graph.h"
#include "calq/nn.h"
#include "calq/onnx/import.h"
#include "calq/util/atomic_file.h"
#include "calq/workflow.h"
#include "deploy/onnx_builder.h"
#include "deploy/qdq_writer.h"
#include "deploy/validation_scope.h"

namespace calq {
namespace deploy {
namespace {

using detail::Attribute;
using detail::GraphBuilder;
using detail::QdqWriter;
using detail::Value;

// Shape and element type of a value in the example run.
struct Meta {
  std::vector<int64_t> shape;
  at::ScalarType dtype = at::kFloat;
};

Attribute to_attribute(const std::string& name, const graph::AttributeValue& value) {
  if (const auto* v = c10::get_if<int64_t>(&value)) return Attribute::integer(name, *v);
  if (const auto* v = c10::get_if<double>(&value)) {
    return Attribute::real(name, static_cast<float>(*v));
  }
  if (const auto* v = c10::get_if<std::string>(&value)) return Attribute::string(name, *v);
  if (const auto* v = c10::get_if<std::vector<int64_t>>(&value)) {
    return Attribute::integers(name, *v);
  }
  if (const auto* v = c10::get_if<std::vector<double>>(&value)) {
    return Attribute::reals(name, std::vector<float>(v->begin(), v->end()));
  }
  if (const auto* v = c10::get_if<std::vector<std::string>>(&value)) {
    return Attribute::string_list(name, *v);
  }
  return Attribute::tensor(name, c10::get<at::Tensor>(value));
}

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

class GraphExporter {
 public:
  GraphExporter(const onnx::ImportedModel& model, const ExportOptions& options,
                ::onnx::GraphProto* graph, ExportReport* report)
      : model_(model),
        g_(*model.graph.ptr()),
        options_(options),
        b_(graph),
        w_(b_, options, *report),
        graph_(graph),
        opset_(std::max(options.profile().opset, model.opset)) {}

  const GraphBuilder& builder() const { return b_; }
  int64_t opset() const { return opset_; }

  void run(const std::vector<at::Tensor>& example_inputs) {
    TORCH_CHECK(options_.outputs().empty(),
                "export: ExportOptions::outputs selects traced values; an imported model exports "
                "its graph outputs");
    TORCH_CHECK(model_.inputs.size() == g_.input_names().size() &&
                    model_.outputs.size() == g_.output_names().size(),
                "export: the ImportedModel's input/output lists do not match its graph");
    run_example(example_inputs);
    // The graph's outputs under the file's names, or the chosen values under their own.
    const bool chosen = !options_.output_values().empty();
    std::vector<std::string> output_values = chosen ? options_.output_values() : g_.output_names();
    std::vector<std::string> output_names = chosen ? options_.output_values() : model_.outputs;
    for (const auto& name : output_names) b_.reserve(name);
    for (size_t i = 0; i < model_.inputs.size(); ++i) {
      const onnx::InputInfo& info = model_.inputs[i];
      b_.reserve(info.name);
      declare_input(info);
      values_[g_.input_names()[i]] = Value{info.name, c10::nullopt};
    }
    for (const graph::Node& node : g_.nodes()) export_node(node);
    for (size_t i = 0; i < output_values.size(); ++i) {
      const std::string& value = output_values[i];
      TORCH_CHECK(meta_.count(value) > 0, "export: output value '", value,
                  "' is not a value the graph computes");
      const Value& v = lookup(value, "graph output");
      b_.node("Identity", {v.name}, output_names[i] + "/identity");
      // The graph output keeps the file's name exactly.
      graph_->mutable_node(graph_->node_size() - 1)->set_output(0, output_names[i]);
      const Meta& m = meta_.at(value);
      ::onnx::ValueInfoProto* info = graph_->add_output();
      info->set_name(output_names[i]);
      auto* tensor = info->mutable_type()->mutable_tensor_type();
      tensor->set_elem_type(detail::onnx_type(m.dtype, "output '" + output_names[i] + "'"));
      auto* dims = tensor->mutable_shape();
      for (size_t d = 0; d < m.shape.size(); ++d) {
        auto* dim = dims->add_dim();
        if (d == 0 && batch_dynamic() && m.shape[0] == example_batch_) {
          dim->set_dim_param(batch_symbol_);
        } else {
          dim->set_dim_value(m.shape[d]);
        }
      }
    }
  }

 private:
  bool batch_dynamic() const { return options_.dynamic_batch() && !batch_symbol_.empty(); }

  // One forward of the graph on the example inputs, node by node, recording every value.
  void run_example(const std::vector<at::Tensor>& inputs) {
    TORCH_CHECK(inputs.size() == g_.input_names().size(), "export: the model takes ",
                g_.input_names().size(), " inputs; got ", inputs.size(), " example inputs");
    detail::ValidationScope scope(g_);
    at::NoGradGuard no_grad;
    std::map<std::string, at::Tensor> values;
    for (size_t i = 0; i < inputs.size(); ++i) values[g_.input_names()[i]] = inputs[i];
    if (!inputs.empty() && inputs[0].dim() > 0) example_batch_ = inputs[0].size(0);
    for (const graph::Node& node : g_.nodes()) {
      std::vector<at::Tensor> args;
      for (const auto& in : node.inputs) {
        if (in.empty()) {
          args.emplace_back();
        } else if (g_.is_constant(in)) {
          args.push_back(g_.constant(in));
        } else {
          args.push_back(values.at(in));
        }
      }
      std::vector<at::Tensor> results;
      try {
        results = node.function(*node.module, args);
      } catch (const c10::Error& e) {
        TORCH_CHECK(false, "export: running node '", node.name, "' (", node.op_type,
                    ") on the example input failed: ", e.what_without_backtrace());
      }
      for (size_t k = 0; k < node.outputs.size() && k < results.size(); ++k) {
        if (node.outputs[k].empty() || !results[k].defined()) continue;
        values[node.outputs[k]] = results[k];
      }
    }
    for (const auto& entry : values) {
      meta_[entry.first] = Meta{entry.second.sizes().vec(), entry.second.scalar_type()};
    }
  }

  void declare_input(const onnx::InputInfo& info) {
    ::onnx::ValueInfoProto* proto = graph_->add_input();
    proto->set_name(info.name);
    auto* tensor = proto->mutable_type()->mutable_tensor_type();
    tensor->set_elem_type(static_cast<int32_t>(info.type));
    if (info.shape.empty() && info.symbols.empty()) return;  // rank unknown
    auto* dims = tensor->mutable_shape();
    for (size_t d = 0; d < info.shape.size(); ++d) {
      auto* dim = dims->add_dim();
      if (info.shape[d] >= 0) {
        dim->set_dim_value(info.shape[d]);
      } else if (!info.symbols[d].empty()) {
        dim->set_dim_param(info.symbols[d]);
      }
      if (d == 0 && info.shape[d] < 0 && batch_symbol_.empty()) {
        batch_symbol_ = info.symbols[d].empty() ? "batch" : info.symbols[d];
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // Values.
  const Value& lookup(const std::string& value, const char* what) {
    auto it = values_.find(value);
    if (it != values_.end()) return it->second;
    TORCH_CHECK(g_.is_constant(value), "export: ", what, " '", value,
                "' is neither a graph input, a node output nor a constant");
    const std::string name = b_.initializer(value, g_.constant(value).detach());
    return values_.emplace(value, Value{name, c10::nullopt}).first->second;
  }

  Value in(const graph::Node& node, size_t i) {
    TORCH_CHECK(i < node.inputs.size() && !node.inputs[i].empty(), "export: node '", node.name,
                "' (", node.op_type, ") needs input ", i);
    return lookup(node.inputs[i], "input");
  }

  const Meta& meta(const std::string& value) const {
    auto it = meta_.find(value);
    TORCH_CHECK(it != meta_.end(), "export: value '", value,
                "' was not computed by the example run (an unused optional output?)");
    return it->second;
  }

  void set(const graph::Node& node, size_t k, Value v) {
    if (k < node.outputs.size() && !node.outputs[k].empty())
      values_[node.outputs[k]] = std::move(v);
  }

  std::string int64_initializer(const std::string& base, const std::vector<int64_t>& v) {
    return b_.initializer(base, at::tensor(v, at::kLong), ::onnx::TensorProto::INT64);
  }

  std::string float_initializer(const std::string& base, double v) {
    return b_.initializer(base, at::full({}, v, at::kFloat), ::onnx::TensorProto::FLOAT);
  }

  // The node's attributes named in `keep` (those present).
  std::vector<Attribute> attributes(const graph::Node& node,
                                    const std::vector<std::string>& keep) const {
    std::vector<Attribute> out;
    for (const auto& name : keep) {
      auto it = node.attributes.find(name);
      if (it != node.attributes.end()) out.push_back(to_attribute(name, it->second));
    }
    return out;
  }

  // ---------------------------------------------------------------------------------------
  // Nodes.
  void export_node(const graph::Node& node) {
    nn::QuantModuleImpl* q = node.quant_module();
    TORCH_CHECK(q != nullptr, "export: node '", node.name, "' (", node.op_type,
                ") holds a module that is not a calq::nn module; only calq::nn modules and "
                "FloatFunctions are exported");
    const std::string& path = node.name;
    const std::string& type = q->type_name();
    const FakeQuantize fq = q->output_fake_quant();
    if (type == "QuantStub") {
      set(node, 0, w_.close(path, fq, in(node, 0).name, nn::Activation::none));
    } else if (type == "DeQuantStub" || type == "Identity") {
      set(node, 0, in(node, 0));
    } else if (auto* conv = dynamic_cast<nn::detail::ConvBlockImpl*>(q)) {
      export_conv(node, *conv);
    } else if (auto* linear = dynamic_cast<nn::detail::LinearBlockImpl*>(q)) {
      export_linear(node, *linear);
    } else if (auto* ct = dynamic_cast<nn::ConvTranspose2dImpl*>(q)) {
      export_conv_transpose(node, *ct);
    } else if (type == "Add" || type == "AddReLU" || type == "Mul" || type == "MatMul") {
      const std::string op = type == "AddReLU" ? "Add" : type;
      const std::string y = b_.node(op, {in(node, 0).name, in(node, 1).name}, path + "/" + op);
      set(node, 0,
          w_.close(path, fq, y, type == "AddReLU" ? nn::Activation::relu : nn::Activation::none));
    } else if (auto* cat = dynamic_cast<nn::CatImpl*>(q)) {
      std::vector<std::string> names;
      for (size_t i = 0; i < node.inputs.size(); ++i) names.push_back(in(node, i).name);
      const std::string y =
          b_.node("Concat", names, path + "/concat", {Attribute::integer("axis", cat->dim)});
      set(node, 0, w_.close(path, fq, y, nn::Activation::none));
    } else if (type == "ReLU" || type == "ReLU6") {
      set(node, 0,
          w_.close(path, fq, in(node, 0).name,
                   type == "ReLU" ? nn::Activation::relu : nn::Activation::relu6,
                   /*after_op=*/false));
    } else if (type == "AdaptiveAvgPool2d" && node.op_type == "GlobalAveragePool") {
      const std::string y = b_.node("GlobalAveragePool", {in(node, 0).name}, path + "/gap");
      set(node, 0, w_.close(path, fq, y, nn::Activation::none));
    } else if (type == "AvgPool2d" && node.op_type == "AveragePool") {
      const std::string y =
          b_.node("AveragePool", {in(node, 0).name}, path + "/avgpool",
                  attributes(node, {"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                    "kernel_shape", "pads", "strides"}));
      set(node, 0, w_.close(path, fq, y, nn::Activation::none));
    } else if (auto* mean = dynamic_cast<nn::ReduceMeanImpl*>(q)) {
      const std::string y = reduce_mean(in(node, 0).name, mean->options.dims(),
                                        mean->options.keepdim(), path + "/reduce_mean");
      set(node, 0, w_.close(path, fq, y, nn::Activation::none));
    } else if (auto* norm = dynamic_cast<nn::LayerNormImpl*>(q)) {
      set(node, 0,
          w_.close(path, fq, layer_norm(in(node, 0).name, *norm, path), nn::Activation::none));
    } else if (auto* ff = dynamic_cast<nn::FloatFunctionImpl*>(q)) {
      export_float_function(node, *ff);
    } else {
      TORCH_CHECK(false, "export: node '", node.name, "' (", node.op_type, ", module ", type,
                  ") has no QDQ export; exported: QuantStub, Conv blocks, Linear (Gemm / "
                  "MatMul), ConvTranspose2d, Add, AddReLU, Mul, MatMul, Cat, ReLU, ReLU6, "
                  "GlobalAveragePool, AveragePool, ReduceMean, LayerNorm, FloatFunction");
    }
  }

  void export_conv(const graph::Node& node, nn::detail::ConvBlockImpl& conv) {
    TORCH_CHECK(!conv.has_bn() || conv.fused(), "export: node '", node.name,
                "': a Conv-BN block must be fused (calq::fuse) before export");
    const Value x = in(node, 0);
    const auto folded = conv.folded_weight_and_bias();
    const auto wb = w_.weight_and_bias(node.name, conv, folded.first, folded.second, x, 0);
    // The node's own geometry (asymmetric and automatic pads included: the module pads the
    // input explicitly for those).
    const std::string y = b_.node(
        "Conv", {x.name, wb.weight, wb.bias}, node.name + "/conv",
        attributes(node, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"}));
    set(node, 0, w_.close(node.name, conv.output_fake_quant(), y, conv.activation()));
  }

  void export_linear(const graph::Node& node, nn::detail::LinearBlockImpl& linear) {
    const Value x = in(node, 0);
    const torch::nn::LinearImpl& l = *linear.linear;
    std::string y;
    if (starts_with(node.op_type, "Gemm")) {
      TORCH_CHECK(meta(node.inputs[0]).shape.size() == 2, "export: node '", node.name,
                  "' (Gemm) needs a 2-d input");
      const at::Tensor bias = l.bias.defined() ? l.bias : at::zeros({l.weight.size(0)});
      // The module's weight is alpha * B' (transB applied), its bias beta * C: Gemm with
      // transB = 1, alpha = beta = 1.
      const auto wb = w_.weight_and_bias(node.name, linear, l.weight, bias, x, 0);
      y = b_.node("Gemm", {x.name, wb.weight, wb.bias}, node.name + "/gemm",
                  {Attribute::integer("transB", 1)});
    } else {
      TORCH_CHECK(starts_with(node.op_type, "MatMul"), "export: node '", node.name, "' (",
                  node.op_type, ") is a Linear module from an operator calq does not export");
      // ONNX's [K, N] layout: output channels along axis 1.
      const auto wb = w_.weight_and_bias(node.name, linear, l.weight, l.bias, x, 1,
                                         [](const at::Tensor& t) { return t.t().contiguous(); });
      y = b_.node("MatMul", {x.name, wb.weight}, node.name + "/matmul");
      if (!wb.bias.empty()) y = b_.node("Add", {y, wb.bias}, node.name + "/bias_add");
    }
    set(node, 0,
        w_.close(node.name, linear.output_fake_quant(), y,
                 linear.relu() ? nn::Activation::relu : nn::Activation::none));
  }

  void export_conv_transpose(const graph::Node& node, nn::ConvTranspose2dImpl& ct) {
    const Value x = in(node, 0);
    const at::Tensor& weight = ct.conv->weight;  // [in, out / groups, kH, kW]
    const int64_t groups = ct.conv->options.groups();
    const int64_t in_channels = weight.size(0);
    const FakeQuantize wfq = ct.weight_fake_quant();
    const bool regroup = groups > 1 && !wfq.is_empty() && wfq->spec().per_channel();
    const at::Tensor output_major = nn::conv_transpose_output_major(weight, groups);
    std::function<at::Tensor(const at::Tensor&)> layout;
    if (!regroup) {
      // One group (or one scale): the output channels lie along axis 1 of ONNX's layout.
      layout = [groups, in_channels](const at::Tensor& t) {
        return nn::conv_transpose_input_major(t, groups, in_channels);
      };
    }
    auto wb =
        w_.weight_and_bias(node.name, ct, output_major, ct.conv->bias, x, regroup ? 0 : 1, layout);
    if (regroup) {
      // Per-channel scales of several groups: dequantize in the output-major layout (axis 0),
      // then permute to ONNX's [in, out / groups, kH, kW].
      const int64_t out = output_major.size(0), in_per_group = output_major.size(1);
      const int64_t kh = output_major.size(2), kw = output_major.size(3);
      std::string w =
          b_.node("Reshape",
                  {wb.weight, int64_initializer(node.name + "/weight/groups",
                                                {groups, out / groups, in_per_group, kh, kw})},
                  node.name + "/weight/grouped");
      w = b_.node("Transpose", {w}, node.name + "/weight/swapped",
                  {Attribute::integers("perm", {0, 2, 1, 3, 4})});
      wb.weight = b_.node(
          "Reshape",
          {w, int64_initializer(node.name + "/weight/shape", {in_channels, out / groups, kh, kw})},
          node.name + "/weight/onnx_layout");
    }
    std::vector<std::string> inputs = {x.name, wb.weight};
    if (!wb.bias.empty()) inputs.push_back(wb.bias);
    const std::string y =
        b_.node("ConvTranspose", inputs, node.name + "/conv_transpose",
                attributes(node, {"auto_pad", "dilations", "group", "kernel_shape",
                                  "output_padding", "output_shape", "pads", "strides"}));
    set(node, 0, w_.close(node.name, ct.output_fake_quant(), y, nn::Activation::none));
  }

  std::string reduce_mean(const std::string& x, const std::vector<int64_t>& axes, bool keepdims,
                          const std::string& base) {
    if (opset_ >= 18) {  // axes became an input
      return b_.node("ReduceMean", {x, int64_initializer(base + "/axes", axes)}, base,
                     {Attribute::integer("keepdims", keepdims ? 1 : 0)});
    }
    return b_.node(
        "ReduceMean", {x}, base,
        {Attribute::integers("axes", axes), Attribute::integer("keepdims", keepdims ? 1 : 0)});
  }

  std::string layer_norm(const std::string& x, nn::LayerNormImpl& norm, const std::string& base) {
    const auto& o = norm.options;
    const int64_t k = static_cast<int64_t>(o.normalized_shape().size());
    const std::string weight = norm.weight.defined()
                                   ? b_.initializer(base + "/scale", norm.weight.detach())
                                   : std::string();
    const std::string bias =
        norm.bias.defined() ? b_.initializer(base + "/shift", norm.bias.detach()) : std::string();
    if (opset_ >= 17) {
      std::vector<std::string> inputs = {x};
      inputs.push_back(weight.empty() ? b_.initializer(base + "/scale",
                                                       at::ones(o.normalized_shape(), at::kFloat))
                                      : weight);
      if (!bias.empty()) inputs.push_back(bias);
      return b_.node("LayerNormalization", inputs, base + "/layer_norm",
                     {Attribute::integer("axis", -k),
                      Attribute::real("epsilon", static_cast<float>(o.eps()))});
    }
    // Opsets < 17: the operators torch.onnx writes for a layer norm.
    std::vector<int64_t> axes;
    for (int64_t i = -k; i < 0; ++i) axes.push_back(i);
    const std::string mean = reduce_mean(x, axes, true, base + "/mean");
    const std::string d = b_.node("Sub", {x, mean}, base + "/centered");
    const std::string sq = b_.node("Mul", {d, d}, base + "/squared");
    const std::string var = reduce_mean(sq, axes, true, base + "/variance");
    const std::string eps = float_initializer(base + "/epsilon", o.eps());
    const std::string stddev =
        b_.node("Sqrt", {b_.node("Add", {var, eps}, base + "/variance_eps")}, base + "/std");
    std::string y = b_.node("Div", {d, stddev}, base + "/normalized");
    if (!weight.empty()) y = b_.node("Mul", {y, weight}, base + "/scaled");
    if (!bias.empty()) y = b_.node("Add", {y, bias}, base + "/shifted");
    return y;
  }

  // ---------------------------------------------------------------------------------------
  // Float functions: value-moving ops, float ops, shape computations.
  void export_float_function(const graph::Node& node, nn::FloatFunctionImpl& ff) {
    std::vector<std::string> outputs;
    const std::string& op = node.op_type;
    if (op == "Sigmoid+Mul") {
      const std::string x = in(node, 0).name;
      outputs = {b_.node("Mul", {x, b_.node("Sigmoid", {x}, node.name + "/sigmoid")},
                         node.name + "/silu")};
    } else if (op == "HardSigmoid+Mul") {
      const std::string x = in(node, 0).name;
      if (opset_ >= 14) {
        outputs = {b_.node("HardSwish", {x}, node.name + "/hardswish")};
      } else {
        const std::string h =
            b_.node("HardSigmoid", {x}, node.name + "/hardsigmoid",
                    {Attribute::real("alpha", 1.0f / 6.0f), Attribute::real("beta", 0.5f)});
        outputs = {b_.node("Mul", {x, h}, node.name + "/hardswish")};
      }
    } else if (op == "Div+Erf+Add+Mul+Mul") {
      const std::string x = in(node, 0).name;
      if (opset_ >= 20) {
        outputs = {b_.node("Gelu", {x}, node.name + "/gelu")};
      } else {
        const std::string base = node.name + "/gelu";
        std::string t = b_.node("Div", {x, float_initializer(base + "/sqrt2", std::sqrt(2.0))},
                                base + "/scaled");
        t = b_.node("Erf", {t}, base + "/erf");
        t = b_.node("Add", {t, float_initializer(base + "/one", 1.0)}, base + "/erf_plus_one");
        t = b_.node("Mul", {x, t}, base + "/product");
        outputs = {b_.node("Mul", {t, float_initializer(base + "/half", 0.5)}, base)};
      }
    } else {
      TORCH_CHECK(op.find('+') == std::string::npos, "export: node '", node.name,
                  "' is a fused pattern (", op, ") without an ONNX export");
      outputs = emit_operator(node);
    }
    const FakeQuantize fq = ff.output_fake_quant();
    const bool pass_through = graph::is_pass_through(node);
    c10::optional<Value> source;
    if (pass_through && !node.inputs.empty() && !node.inputs[0].empty()) source = in(node, 0);
    for (size_t k = 0; k < node.outputs.size() && k < outputs.size(); ++k) {
      if (node.outputs[k].empty()) continue;
      const bool floating = at::isFloatingType(meta(node.outputs[k]).dtype);
      const std::string path =
          node.outputs.size() == 1 ? node.name : node.name + "/" + std::to_string(k);
      if (!fq.is_empty() && floating) {
        set(node, k, w_.close(path, fq, outputs[k], nn::Activation::none));
      } else if (pass_through && floating && source && source->quant) {
        // The values stay on the input's grid; a Pad with a value off the grid keeps the
        // grid for what reads it (as the simulation's input quantizer) without requantizing.
        set(node, k,
            pads_off_grid(node) ? Value{outputs[k], source->quant}
                                : w_.pass_through(path, outputs[k], *source));
      } else {
        set(node, k, Value{outputs[k], c10::nullopt});
      }
    }
  }

  bool pads_off_grid(const graph::Node& node) {
    if (node.op_type != "Pad" || node.inputs.size() < 3 || node.inputs[2].empty()) return false;
    auto mode = node.attributes.find("mode");
    if (mode != node.attributes.end() && c10::get<std::string>(mode->second) != "constant") {
      return false;
    }
    if (!g_.is_constant(node.inputs[2])) return true;
    return g_.constant(node.inputs[2]).to(at::kDouble).reshape({}).item<double>() != 0.0;
  }

  // Writes `node` as its own ONNX operator (attributes as in the file), converting what
  // changed at opset 13 when the file's opset is older. Returns the output names.
  std::vector<std::string> emit_operator(const graph::Node& node) {
    std::string op = node.op_type;
    std::string domain;
    std::vector<std::string> inputs;
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      inputs.push_back(node.inputs[i].empty() ? std::string() : in(node, i).name);
    }
    graph::Attributes attrs = node.attributes;
    std::vector<std::string> bases;
    for (size_t k = 0; k < node.outputs.size(); ++k) {
      bases.push_back(node.outputs[k].empty() ? std::string()
                                              : node.name + "/out" + std::to_string(k));
    }
    if (op == "Dropout") {
      // Inference: the identity (the mask output has no inference meaning).
      TORCH_CHECK(node.outputs.size() < 2 || node.outputs[1].empty(), "export: node '", node.name,
                  "' (Dropout) uses its mask output, which has no inference export");
      return {b_.node("Identity", {inputs.at(0)}, bases.at(0))};
    }
    if (model_.opset < 13) convert_to_opset13(node, &op, &inputs, &attrs, &bases);
    if (op == "Softmax" || op == "LogSoftmax") {
      if (model_.opset < 13) return softmax_before_13(node, op, inputs.at(0), attrs, bases.at(0));
    }
    if (op == "QuantizeLinear" || op == "DequantizeLinear") {
      // 16-bit types need opset 21 or ONNX Runtime's contrib domain.
      const std::string& typed = op == "QuantizeLinear" ? node.outputs.at(0) : node.inputs.at(0);
      const bool sixteen = g_.is_constant(typed) ? g_.constant(typed).element_size() >= 2
                                                 : at::elementSize(meta(typed).dtype) >= 2;
      if (sixteen && opset_ < 21) domain = options_.profile().int16_qdq_domain;
    }
    std::vector<Attribute> list;
    for (const auto& a : attrs) list.push_back(to_attribute(a.first, a.second));
    while (!inputs.empty() && inputs.back().empty()) inputs.pop_back();
    return b_.node(op, inputs, bases, list, domain);
  }

  // Attributes that became inputs at opset 13.
  void convert_to_opset13(const graph::Node& node, std::string* op,
                          std::vector<std::string>* inputs, graph::Attributes* attrs,
                          std::vector<std::string>* bases) {
    auto move_to_input = [&](const char* attribute, size_t position) {
      auto it = attrs->find(attribute);
      if (it == attrs->end()) return;
      const auto& values = c10::get<std::vector<int64_t>>(it->second);
      inputs->resize(std::max(inputs->size(), position + 1));
      (*inputs)[position] = int64_initializer(node.name + "/" + attribute, values);
      attrs->erase(it);
    };
    if (*op == "Squeeze" || *op == "Unsqueeze" || *op == "ReduceSum") move_to_input("axes", 1);
    if (*op == "Split") move_to_input("split", 1);
  }

  // Softmax / LogSoftmax of opsets < 13: the input is coerced to 2-d at `axis` (default 1)
  // and normalized over the second dimension. Written as Flatten -> op(axis -1) -> Reshape
  // unless the axis is already the last one.
  std::vector<std::string> softmax_before_13(const graph::Node& node, const std::string& op,
                                             const std::string& x, const graph::Attributes& attrs,
                                             const std::string& base) {
    const int64_t rank = static_cast<int64_t>(meta(node.inputs[0]).shape.size());
    auto it = attrs.find("axis");
    int64_t axis = it == attrs.end() ? 1 : c10::get<int64_t>(it->second);
    if (axis < 0) axis += rank;
    if (axis == rank - 1) {
      return {b_.node(op, {x}, base, {Attribute::integer("axis", -1)})};
    }
    const std::string flat =
        b_.node("Flatten", {x}, node.name + "/flatten", {Attribute::integer("axis", axis)});
    const std::string y =
        b_.node(op, {flat}, node.name + "/" + op, {Attribute::integer("axis", -1)});
    const std::string shape = b_.node("Shape", {x}, node.name + "/shape");
    return {b_.node("Reshape", {y, shape}, base)};
  }

  const onnx::ImportedModel& model_;
  graph::GraphImpl& g_;
  const ExportOptions& options_;
  GraphBuilder b_;
  QdqWriter w_;
  ::onnx::GraphProto* graph_;
  int64_t opset_;
  std::map<std::string, Value> values_;
  std::map<std::string, Meta> meta_;
  std::string batch_symbol_;
  int64_t example_batch_ = -1;
};

}  // namespace

std::string export_qdq_bytes(const onnx::ImportedModel& model,
                             const std::vector<at::Tensor>& example_inputs,
                             const ExportOptions& options, ExportReport* report_out) {
  TORCH_CHECK(!model.graph.is_empty(), "export: the ImportedModel has no graph");
  at::NoGradGuard no_grad;
  ExportReport report;
  ::onnx::ModelProto proto;
  ::onnx::GraphProto* graph = proto.mutable_graph();
  graph->set_name("calq_qdq");
  GraphExporter exporter(model, options, graph, &report);
  exporter.run(example_inputs);
  report.nodes = graph->node_size();
  report.clamped_scales = clamped_scales(*model.graph);
  const std::string bytes = detail::serialize_model(proto, exporter.builder(), exporter.opset());
  if (report_out != nullptr) *report_out = report;
  return bytes;
}

ExportReport export_qdq(const onnx::ImportedModel& model,
                        const std::vector<at::Tensor>& example_inputs, const std::string& path,
                        const ExportOptions& options) {
  ExportReport report;
  const std::string bytes = export_qdq_bytes(model, example_inputs, options, &report);
  util::write_file_atomic(path, bytes);
  return report;
}

}  // namespace deploy
}  // namespace calq
