// Prepared model + trace -> QDQ ONNX (docs/deploy.md, "Export").
#include "calq/deploy/qdq_export.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <onnx/onnx_pb.h>

#include <sstream>

#include "calq/fake_quantize.h"
#include "calq/nn.h"
#include "calq/util/atomic_file.h"
#include "calq/workflow.h"
#include "deploy/onnx_builder.h"
#include "deploy/qdq_writer.h"

namespace calq {
namespace deploy {
namespace {

using detail::Attribute;
using detail::GraphBuilder;
using detail::QdqWriter;
using detail::Value;

std::vector<int64_t> dims(const torch::ExpandingArray<2>& a) {
  return std::vector<int64_t>(a->begin(), a->end());
}

class Exporter {
 public:
  Exporter(const Trace& trace, const ExportOptions& options, ::onnx::GraphProto* graph,
           ExportReport* report)
      : trace_(trace), options_(options), b_(graph), w_(b_, options, *report), graph_(graph) {}

  const GraphBuilder& builder() const { return b_; }

  void run() {
    TORCH_CHECK(options_.output_values().empty(),
                "export: ExportOptions::output_values names values of an imported graph; a traced "
                "model selects its outputs with ExportOptions::outputs (value ids)");
    values_.resize(trace_.values.size());
    for (size_t i = 0; i < trace_.inputs.size(); ++i) {
      const int64_t id = trace_.inputs[i];
      const std::string name = io_name(options_.input_name(), i, trace_.inputs.size());
      values_[id].name = b_.unique(name);
      w_.add_value_info(graph_->add_input(), values_[id].name, trace_.values[id].shape);
    }
    const std::vector<int64_t>& outputs =
        options_.outputs().empty() ? trace_.outputs : options_.outputs();
    int64_t last = -1;  // the last call the outputs need
    for (int64_t id : outputs) {
      TORCH_CHECK(id >= 0 && id < static_cast<int64_t>(trace_.values.size()),
                  "export: output value ", id, " is not a traced value");
      last = std::max(last, trace_.values[id].producer);
    }
    for (int64_t c = 0; c <= last; ++c) export_call(trace_.calls[c]);
    for (size_t i = 0; i < outputs.size(); ++i) {
      const int64_t id = outputs[i];
      TORCH_CHECK(!values_[id].name.empty(), "export: output ", i,
                  " is a parameter or buffer, not a model input or a calq::nn module's output");
      const std::string name = io_name(options_.output_name(), i, outputs.size());
      const std::string out = b_.node("Identity", {values_[id].name}, name);
      w_.add_value_info(graph_->add_output(), out, trace_.values[id].shape);
    }
  }

 private:
  static std::string io_name(const std::string& base, size_t i, size_t n) {
    return n == 1 ? base : base + std::to_string(i);
  }

  const Value& input(const TracedCall& call, size_t i) const {
    TORCH_CHECK(i < call.inputs.size(), call.path, ": expected at least ", i + 1, " inputs");
    const Value& v = values_[call.inputs[i]];
    TORCH_CHECK(!v.name.empty(), "export: ", call.path, " reads input ", i,
                " directly from a parameter or buffer, not from a model input or a calq::nn "
                "module; the exporter of traced models cannot write it. Compute it with a "
                "calq::nn module (an imported ONNX graph exports with export_qdq(ImportedModel))");
    return v;
  }

  Value close(const TracedCall& call, const std::string& op_output, nn::Activation activation,
              bool after_op = true) {
    return w_.close(call.path, call.module->output_fake_quant(), op_output, activation, after_op);
  }

  void export_call(const TracedCall& call) {
    nn::QuantModuleImpl* m = call.module;
    const std::string& type = m->type_name();
    Value out;
    if (type == "QuantStub") {
      out = close(call, input(call, 0).name, nn::Activation::none);
    } else if (type == "DeQuantStub" || type == "Identity") {
      out = input(call, 0);
    } else if (auto* conv = dynamic_cast<nn::detail::ConvBlockImpl*>(m)) {
      out = export_conv(call, *conv);
    } else if (auto* linear = dynamic_cast<nn::detail::LinearBlockImpl*>(m)) {
      const Value& x = input(call, 0);
      TORCH_CHECK(trace_.values[call.inputs[0]].shape.size() == 2, call.path,
                  ": Linear is exported as Gemm and needs a 2-d input [N, features]; got shape ",
                  c10::IntArrayRef(trace_.values[call.inputs[0]].shape));
      const at::Tensor bias = linear->linear->bias.defined()
                                  ? linear->linear->bias
                                  : at::zeros({linear->linear->weight.size(0)});
      const auto wb = w_.weight_and_bias(call.path, *linear, linear->linear->weight, bias, x, 0);
      const std::string y = b_.node("Gemm", {x.name, wb.weight, wb.bias}, call.path + "/gemm",
                                    {Attribute::integer("transB", 1)});
      out = close(call, y, linear->relu() ? nn::Activation::relu : nn::Activation::none);
    } else if (type == "Add" || type == "AddReLU" || type == "Mul") {
      const std::string y =
          b_.node(type == "Mul" ? "Mul" : "Add", {input(call, 0).name, input(call, 1).name},
                  call.path + "/" + (type == "Mul" ? "mul" : "add"));
      out = close(call, y, type == "AddReLU" ? nn::Activation::relu : nn::Activation::none);
    } else if (auto* cat = dynamic_cast<nn::CatImpl*>(m)) {
      std::vector<std::string> names;
      for (size_t i = 0; i < call.inputs.size(); ++i) names.push_back(input(call, i).name);
      const std::string y =
          b_.node("Concat", names, call.path + "/concat", {Attribute::integer("axis", cat->dim)});
      out = close(call, y, nn::Activation::none);
    } else if (type == "ReLU" || type == "ReLU6") {
      out = close(call, input(call, 0).name,
                  type == "ReLU" ? nn::Activation::relu : nn::Activation::relu6,
                  /*after_op=*/false);
    } else if (auto* pool = dynamic_cast<nn::MaxPool2dImpl*>(m)) {
      const auto& o = pool->pool->options;
      const std::vector<int64_t> kernel = dims(o.kernel_size());
      const std::vector<int64_t> stride = dims(o.stride());
      const std::vector<int64_t> pad = dims(o.padding());
      const std::vector<int64_t> dilation = dims(o.dilation());
      const std::string y = b_.node(
          "MaxPool", {input(call, 0).name}, call.path + "/maxpool",
          {Attribute::integers("kernel_shape", kernel), Attribute::integers("strides", stride),
           Attribute::integers("pads", {pad[0], pad[1], pad[0], pad[1]}),
           Attribute::integers("dilations", dilation),
           Attribute::integer("ceil_mode", o.ceil_mode() ? 1 : 0)});
      out = w_.pass_through(call.path, y, input(call, 0));
    } else if (auto* pool = dynamic_cast<nn::AvgPool2dImpl*>(m)) {
      const auto& o = pool->pool->options;
      TORCH_CHECK(!o.divisor_override(), call.path,
                  ": AvgPool2d with divisor_override has no ONNX AveragePool equivalent");
      const std::vector<int64_t> kernel = dims(o.kernel_size());
      const std::vector<int64_t> stride = dims(o.stride());
      const std::vector<int64_t> pad = dims(o.padding());
      const std::string y = b_.node(
          "AveragePool", {input(call, 0).name}, call.path + "/avgpool",
          {Attribute::integers("kernel_shape", kernel), Attribute::integers("strides", stride),
           Attribute::integers("pads", {pad[0], pad[1], pad[0], pad[1]}),
           Attribute::integer("count_include_pad", o.count_include_pad() ? 1 : 0),
           Attribute::integer("ceil_mode", o.ceil_mode() ? 1 : 0)});
      out = close(call, y, nn::Activation::none);
    } else if (auto* pool = dynamic_cast<nn::AdaptiveAvgPool2dImpl*>(m)) {
      out = export_adaptive_pool(call, *pool);
    } else if (auto* flatten = dynamic_cast<nn::FlattenImpl*>(m)) {
      const auto& o = flatten->flatten->options;
      const int64_t rank = static_cast<int64_t>(trace_.values[call.inputs[0]].shape.size());
      const int64_t end = o.end_dim() < 0 ? o.end_dim() + rank : o.end_dim();
      TORCH_CHECK(end == rank - 1, call.path, ": Flatten up to dimension ", o.end_dim(),
                  " (not the last) is not exported; flatten to the end");
      const std::string y = b_.node("Flatten", {input(call, 0).name}, call.path + "/flatten",
                                    {Attribute::integer("axis", o.start_dim())});
      out = w_.pass_through(call.path, y, input(call, 0));
    } else {
      TORCH_CHECK(false, "export: ", type, " '", call.path,
                  "' has no QDQ export; exported calq::nn modules: QuantStub, DeQuantStub, "
                  "Identity, Conv2d, ConvReLU2d, ConvBn2d, ConvBnReLU2d, ConvBnReLU6_2d, Linear, "
                  "LinearReLU, Add, AddReLU, Mul, Cat, ReLU, ReLU6, MaxPool2d, AvgPool2d, "
                  "AdaptiveAvgPool2d, Flatten");
    }
    values_[call.output] = out;
  }

  Value export_conv(const TracedCall& call, nn::detail::ConvBlockImpl& conv) {
    const Value& x = input(call, 0);
    TORCH_CHECK(!conv.has_bn() || conv.fused(), call.path,
                ": a Conv-BN block must be fused (calq::fuse) before export");
    const auto folded = conv.folded_weight_and_bias();
    const auto wb = w_.weight_and_bias(call.path, conv, folded.first, folded.second, x, 0);
    const auto& o = conv.conv->options;
    const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
    const std::vector<int64_t> kernel = dims(o.kernel_size());
    const std::string y = b_.node(
        "Conv", {x.name, wb.weight, wb.bias}, call.path + "/conv",
        {Attribute::integers("kernel_shape", kernel),
         Attribute::integers("strides", dims(o.stride())),
         Attribute::integers("pads", {(*padding)[0], (*padding)[1], (*padding)[0], (*padding)[1]}),
         Attribute::integers("dilations", dims(o.dilation())),
         Attribute::integer("group", o.groups())});
    return close(call, y, conv.activation());
  }

  Value export_adaptive_pool(const TracedCall& call, nn::AdaptiveAvgPool2dImpl& pool) {
    const std::vector<int64_t>& in = trace_.values[call.inputs[0]].shape;
    const std::vector<int64_t>& out_shape = trace_.values[call.output].shape;
    TORCH_CHECK(in.size() == 4 && out_shape.size() == 4, call.path,
                ": AdaptiveAvgPool2d needs a 4-d input");
    std::string y;
    if (out_shape[2] == 1 && out_shape[3] == 1) {
      y = b_.node("GlobalAveragePool", {input(call, 0).name}, call.path + "/gap");
    } else {
      TORCH_CHECK(in[2] % out_shape[2] == 0 && in[3] % out_shape[3] == 0, call.path,
                  ": AdaptiveAvgPool2d from ", in[2], "x", in[3], " to ", out_shape[2], "x",
                  out_shape[3],
                  " has no AveragePool equivalent (the input size must be a "
                  "multiple of the output size)");
      const std::vector<int64_t> k = {in[2] / out_shape[2], in[3] / out_shape[3]};
      y = b_.node("AveragePool", {input(call, 0).name}, call.path + "/avgpool",
                  {Attribute::integers("kernel_shape", k), Attribute::integers("strides", k)});
    }
    return close(call, y, nn::Activation::none);
  }

  const Trace& trace_;
  const ExportOptions& options_;
  GraphBuilder b_;
  QdqWriter w_;
  ::onnx::GraphProto* graph_;
  std::vector<Value> values_;
};

}  // namespace

std::string ExportReport::str() const {
  std::ostringstream out;
  out << nodes << " nodes (" << quantize_nodes << " QuantizeLinear, " << dequantize_nodes
      << " DequantizeLinear), " << integer_weight_layers << " layers with integer weights";
  if (!float_outputs.empty()) {
    out << "\n  float outputs (qconfig):";
    for (const auto& s : float_outputs) out << " " << s;
  }
  if (!float_kernels.empty()) {
    out << "\n  run as DQ -> float -> Q by the runtime (16-bit activations):";
    for (const auto& s : float_kernels) out << " " << s;
  }
  for (const auto& s : weight_scales_raised) out << "\n  note: " << s;
  for (const auto& s : bias_saturations) out << "\n  warning: " << s;
  for (const auto& s : clamped_scales) out << "\n  warning: power-of-two scale clamped: " << s;
  return out.str();
}

std::string export_qdq_bytes(torch::nn::Module& model, const Trace& trace,
                             const ExportOptions& options, ExportReport* report_out) {
  at::NoGradGuard no_grad;
  ExportReport report;
  ::onnx::ModelProto proto;
  ::onnx::GraphProto* graph = proto.mutable_graph();
  graph->set_name("calq_qdq");
  Exporter exporter(trace, options, graph, &report);
  exporter.run();
  report.nodes = graph->node_size();
  report.clamped_scales = clamped_scales(model);
  const std::string bytes =
      detail::serialize_model(proto, exporter.builder(), options.profile().opset);
  if (report_out != nullptr) *report_out = report;
  return bytes;
}

ExportReport export_qdq(torch::nn::Module& model, const Trace& trace, const std::string& path,
                        const ExportOptions& options) {
  ExportReport report;
  const std::string bytes = export_qdq_bytes(model, trace, options, &report);
  util::write_file_atomic(path, bytes);
  return report;
}

}  // namespace deploy
}  // namespace calq
