// Prepared model + trace -> QDQ ONNX (docs/deploy.md, "Export").
#include "calq/deploy/qdq_export.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <sstream>

#include "calq/fake_quantize.h"
#include "calq/nn.h"
#include "calq/quant/fake_quant.h"
#include "calq/quant/qparams.h"
#include "calq/util/atomic_file.h"
#include "calq/workflow.h"
#include "deploy/onnx_builder.h"

namespace calq {
namespace deploy {
namespace {

using detail::Attribute;
using detail::GraphBuilder;

// The quantization of a value in the exported graph.
struct Quant {
  at::Tensor scale;       // float32 {1} or {C}
  at::Tensor zero_point;  // int32, same shape
  QuantSpec spec;
};

// A traced value in the ONNX graph: the name of the tensor that holds its real (float) values,
// and its quantization when it is the output of a DequantizeLinear.
struct Value {
  std::string name;
  c10::optional<Quant> quant;
};

std::vector<int64_t> dims(const torch::ExpandingArray<2>& a) {
  return std::vector<int64_t>(a->begin(), a->end());
}

int32_t storage_type(QuantDtype dtype) {
  switch (dtype) {
    case QuantDtype::qint4:  // int4 values in int8 storage (numerically identical after DQ)
    case QuantDtype::qint8:
      return onnx::TensorProto::INT8;
    case QuantDtype::qint16:
      return onnx::TensorProto::INT16;
  }
  TORCH_INTERNAL_ASSERT(false, "unknown dtype");
}

bool storage_range_is_quant_range(const QuantSpec& spec) {
  return spec.quant_min() == (spec.dtype() == QuantDtype::qint16 ? -32768 : -128) &&
         spec.quant_max() == (spec.dtype() == QuantDtype::qint16 ? 32767 : 127);
}

Quant quant_of(const FakeQuantizeImpl& fq) {
  Quant q;
  std::tie(q.scale, q.zero_point) = fq.qparams();
  q.scale = q.scale.to(at::kFloat).reshape({-1});
  q.zero_point = q.zero_point.to(at::kInt).reshape({-1});
  q.spec = fq.spec();
  return q;
}

// The integers a weight quantizer produces for `weight` (exactly what the simulation uses in
// VALIDATION): the simulated values divided by their scale, plus the zero point.
at::Tensor integer_weight(const FakeQuantizeImpl& fq, const at::Tensor& weight, const Quant& q) {
  at::Tensor simulated;
  if (fq.method() == FakeQuantMethod::pact) {
    simulated = pact_fake_quantize(weight, fq.named_parameters(false)["alpha"].detach(), q.spec);
  } else {
    simulated = fake_quantize(weight, q.scale, q.zero_point, q.spec);
  }
  at::Tensor scale = q.scale.to(at::kDouble);
  at::Tensor zero = q.zero_point.to(at::kDouble);
  if (q.spec.per_channel()) {
    std::vector<int64_t> shape(weight.dim(), 1);
    const int64_t axis = q.spec.ch_axis() < 0 ? q.spec.ch_axis() + weight.dim() : q.spec.ch_axis();
    shape[axis] = -1;
    scale = scale.reshape(shape);
    zero = zero.reshape(shape);
  }
  // level * s was rounded to float once: dividing recovers the level within far less than 1/2.
  return (simulated.to(at::kDouble) / scale).round() + zero;
}

class Exporter {
 public:
  Exporter(const Trace& trace, const ExportOptions& options, onnx::GraphProto* graph,
           ExportReport* report)
      : trace_(trace), options_(options), b_(graph), graph_(graph), report_(report) {}

  void run() {
    values_.resize(trace_.values.size());
    for (size_t i = 0; i < trace_.inputs.size(); ++i) {
      const int64_t id = trace_.inputs[i];
      const std::string name = io_name(options_.input_name(), i, trace_.inputs.size());
      values_[id].name = b_.unique(name);
      add_value_info(graph_->add_input(), values_[id].name, trace_.values[id].shape);
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
      const std::string name = io_name(options_.output_name(), i, outputs.size());
      const std::string out = b_.node("Identity", {values_[id].name}, name);
      add_value_info(graph_->add_output(), out, trace_.values[id].shape);
    }
  }

 private:
  static std::string io_name(const std::string& base, size_t i, size_t n) {
    return n == 1 ? base : base + std::to_string(i);
  }

  void add_value_info(onnx::ValueInfoProto* info, const std::string& name,
                      const std::vector<int64_t>& shape) {
    info->set_name(name);
    auto* tensor = info->mutable_type()->mutable_tensor_type();
    tensor->set_elem_type(onnx::TensorProto::FLOAT);
    auto* dims = tensor->mutable_shape();
    for (size_t d = 0; d < shape.size(); ++d) {
      auto* dim = dims->add_dim();
      if (d == 0 && options_.dynamic_batch()) {
        dim->set_dim_param("batch");
      } else {
        dim->set_dim_value(shape[d]);
      }
    }
  }

  std::string qdq_domain(const QuantSpec& spec) const {
    return spec.dtype() == QuantDtype::qint16 ? options_.profile().int16_qdq_domain : "";
  }

  // Scale and zero point initializers of a quantization (scalars per tensor). Activations of
  // 8 bits may be stored shifted to uint8 (profile.uint8_activations).
  std::pair<std::string, std::string> qparams(const std::string& base, const Quant& q,
                                              bool activation) {
    const bool per_tensor = !q.spec.per_channel();
    const at::Tensor scale = per_tensor ? q.scale.reshape({}) : q.scale;
    at::Tensor zero = per_tensor ? q.zero_point.reshape({}) : q.zero_point;
    int32_t type = storage_type(q.spec.dtype());
    if (activation && type == onnx::TensorProto::INT8 && options_.profile().uint8_activations) {
      zero = zero.to(at::kInt) + 128;
      type = onnx::TensorProto::UINT8;
    }
    return {b_.initializer(base + "/scale", scale, onnx::TensorProto::FLOAT),
            b_.initializer(base + "/zero_point", zero, type)};
  }

  std::vector<Attribute> axis_attribute(const Quant& q, int64_t axis) const {
    if (!q.spec.per_channel()) return {};
    return {Attribute::integer("axis", axis)};
  }

  // float value -> QuantizeLinear -> DequantizeLinear (-> Clip to a narrower integer range).
  Value quantize(const std::string& input, const Quant& q, const std::string& base) {
    const auto names = qparams(base, q, /*activation=*/true);
    const std::string domain = qdq_domain(q.spec);
    const std::string quantized =
        b_.node("QuantizeLinear", {input, names.first, names.second}, base + "/q", {}, domain);
    std::string output =
        b_.node("DequantizeLinear", {quantized, names.first, names.second}, base, {}, domain);
    report_->quantize_nodes += 1;
    report_->dequantize_nodes += 1;
    if (!storage_range_is_quant_range(q.spec)) {
      // The storage type saturates at its own range; the grid ends earlier (int4, a narrowed
      // quant range): clip the dequantized values to the grid's ends, exact multiples of s.
      const double s = q.scale.item<double>();
      const double z = q.zero_point.item<double>();
      output = b_.node(
          "Clip",
          {output,
           b_.initializer(base + "/min", at::full({}, (q.spec.quant_min() - z) * s, at::kFloat),
                          onnx::TensorProto::FLOAT),
           b_.initializer(base + "/max", at::full({}, (q.spec.quant_max() - z) * s, at::kFloat),
                          onnx::TensorProto::FLOAT)},
          base + "/clip");
    }
    return Value{output, q};
  }

  // The op's float output, closed by the module's output quantizer (if any) and activation.
  Value close(const TracedCall& call, const std::string& op_output, const char* activation) {
    const FakeQuantize fq = call.module->output_fake_quant();
    if (fq.is_empty()) {
      report_->float_outputs.push_back(call.path);
      if (activation == nullptr) return Value{op_output, c10::nullopt};
      return Value{apply_activation(activation, op_output, call.path), c10::nullopt};
    }
    const Quant q = quant_of(*fq);
    if (!options_.profile().integer_activation(q.spec.dtype())) {
      report_->float_kernels.push_back(call.path);
    }
    if (activation == nullptr) return quantize(op_output, q, call.path);
    if (options_.profile().quantize_before_relu) {
      // op -> Q(s, z) -> DQ -> activation -> Q(s, z) -> DQ: the runtime fuses the first group
      // into its integer kernel; the activation of multiples of s requantizes exactly.
      const Value pre = quantize(op_output, q, call.path + "/pre_activation");
      return quantize(apply_activation(activation, pre.name, call.path), q, call.path);
    }
    return quantize(apply_activation(activation, op_output, call.path), q, call.path);
  }

  std::string apply_activation(const char* activation, const std::string& input,
                               const std::string& base) {
    if (std::string(activation) == "relu") return b_.node("Relu", {input}, base + "/relu");
    return b_.node(
        "Clip",
        {input,
         b_.initializer(base + "/relu6_min", at::zeros({}, at::kFloat), onnx::TensorProto::FLOAT),
         b_.initializer(base + "/relu6_max", at::full({}, 6.0, at::kFloat),
                        onnx::TensorProto::FLOAT)},
        base + "/relu6");
  }

  // The weight (quantized: int8 initializer + DequantizeLinear along `axis`) and the bias
  // (int32 + DequantizeLinear when both the input and the weight are quantized).
  std::pair<std::string, std::string> weight_and_bias(const TracedCall& call,
                                                      const at::Tensor& weight,
                                                      const at::Tensor& bias, const Value& input,
                                                      int64_t axis) {
    const FakeQuantize wfq = call.module->weight_fake_quant();
    if (wfq.is_empty()) {
      return {b_.initializer(call.path + "/weight", weight.detach(), onnx::TensorProto::FLOAT),
              b_.initializer(call.path + "/bias", bias.detach(), onnx::TensorProto::FLOAT)};
    }
    const Quant wq = quant_of(*wfq);
    TORCH_CHECK(!wq.spec.per_channel() || wq.spec.ch_axis() == 0 || wq.spec.ch_axis() == -4,
                call.path, ": per-channel weights must be quantized along the output channels ",
                "(ch_axis 0) to be exported; got ", wq.spec.str());
    const auto names = qparams(call.path + "/weight", wq, /*activation=*/false);
    const std::string w_int =
        b_.initializer(call.path + "/weight_quantized", integer_weight(*wfq, weight.detach(), wq),
                       storage_type(wq.spec.dtype()));
    // int16 weights need the profile's int16 DequantizeLinear (com.microsoft for ORT) too.
    const std::string w =
        b_.node("DequantizeLinear", {w_int, names.first, names.second}, call.path + "/weight",
                axis_attribute(wq, axis), qdq_domain(wq.spec));
    report_->dequantize_nodes += 1;
    report_->integer_weight_layers += 1;
    if (!input.quant || input.quant->spec.per_channel()) {
      return {w, b_.initializer(call.path + "/bias", bias.detach(), onnx::TensorProto::FLOAT)};
    }
    const QuantizedBias qb =
        quantize_bias(bias.detach(), input.quant->scale.item<double>(), wq.scale);
    if (qb.saturated > 0) {
      std::ostringstream message;
      message << call.path << ": " << qb.saturated << " of " << bias.numel()
              << " bias values saturated to int32 (|b / (s_x s_w)| up to " << qb.max_ratio << ")";
      report_->bias_saturations.push_back(message.str());
    }
    const std::string b_int =
        b_.initializer(call.path + "/bias_quantized", qb.values, onnx::TensorProto::INT32);
    const std::string b_scale =
        b_.initializer(call.path + "/bias/scale", qb.scale, onnx::TensorProto::FLOAT);
    const std::string b_zero =
        b_.initializer(call.path + "/bias/zero_point", at::zeros({bias.numel()}, at::kInt),
                       onnx::TensorProto::INT32);
    const std::string b = b_.node("DequantizeLinear", {b_int, b_scale, b_zero}, call.path + "/bias",
                                  {Attribute::integer("axis", 0)});
    report_->dequantize_nodes += 1;
    return {w, b};
  }

  const Value& input(const TracedCall& call, size_t i) const {
    TORCH_CHECK(i < call.inputs.size(), call.path, ": expected at least ", i + 1, " inputs");
    return values_[call.inputs[i]];
  }

  // A pass-through op's output keeps its input's quantization: Q -> DQ with the same
  // parameters after it lets the runtime keep the op in integers (exact: its values are
  // already on that grid).
  Value pass_through(const TracedCall& call, const std::string& op_output, const Value& in) {
    if (!in.quant || !options_.profile().requantize_pass_through) {
      return Value{op_output, in.quant};
    }
    return quantize(op_output, *in.quant, call.path);
  }

  void export_call(const TracedCall& call) {
    nn::QuantModuleImpl* m = call.module;
    const std::string& type = m->type_name();
    Value out;
    if (type == "QuantStub") {
      out = close(call, input(call, 0).name, nullptr);
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
      const auto wb = weight_and_bias(call, linear->linear->weight, bias, x, 0);
      const std::string y = b_.node("Gemm", {x.name, wb.first, wb.second}, call.path + "/gemm",
                                    {Attribute::integer("transB", 1)});
      out = close(call, y, linear->relu() ? "relu" : nullptr);
    } else if (type == "Add" || type == "AddReLU" || type == "Mul") {
      const std::string y =
          b_.node(type == "Mul" ? "Mul" : "Add", {input(call, 0).name, input(call, 1).name},
                  call.path + "/" + (type == "Mul" ? "mul" : "add"));
      out = close(call, y, type == "AddReLU" ? "relu" : nullptr);
    } else if (auto* cat = dynamic_cast<nn::CatImpl*>(m)) {
      std::vector<std::string> names;
      for (size_t i = 0; i < call.inputs.size(); ++i) names.push_back(input(call, i).name);
      const std::string y =
          b_.node("Concat", names, call.path + "/concat", {Attribute::integer("axis", cat->dim)});
      out = close(call, y, nullptr);
    } else if (type == "ReLU" || type == "ReLU6") {
      out = close(call, input(call, 0).name, type == "ReLU" ? "relu" : "relu6");
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
      out = pass_through(call, y, input(call, 0));
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
      out = close(call, y, nullptr);
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
      out = pass_through(call, y, input(call, 0));
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
    const auto wb = weight_and_bias(call, folded.first, folded.second, x, 0);
    const auto& o = conv.conv->options;
    const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
    const std::vector<int64_t> kernel = dims(o.kernel_size());
    const std::string y = b_.node(
        "Conv", {x.name, wb.first, wb.second}, call.path + "/conv",
        {Attribute::integers("kernel_shape", kernel),
         Attribute::integers("strides", dims(o.stride())),
         Attribute::integers("pads", {(*padding)[0], (*padding)[1], (*padding)[0], (*padding)[1]}),
         Attribute::integers("dilations", dims(o.dilation())),
         Attribute::integer("group", o.groups())});
    const char* activation = conv.activation() == nn::Activation::relu    ? "relu"
                             : conv.activation() == nn::Activation::relu6 ? "relu6"
                                                                          : nullptr;
    return close(call, y, activation);
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
    return close(call, y, nullptr);
  }

  const Trace& trace_;
  const ExportOptions& options_;
  GraphBuilder b_;
  onnx::GraphProto* graph_;
  ExportReport* report_;
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
  for (const auto& s : bias_saturations) out << "\n  warning: " << s;
  for (const auto& s : clamped_scales) out << "\n  warning: power-of-two scale clamped: " << s;
  return out.str();
}

std::string export_qdq_bytes(torch::nn::Module& model, const Trace& trace,
                             const ExportOptions& options, ExportReport* report_out) {
  at::NoGradGuard no_grad;
  ExportReport report;
  onnx::ModelProto proto;
  proto.set_ir_version(8);
  proto.set_producer_name("calq");
  proto.set_producer_version("0.1.0");
  onnx::GraphProto* graph = proto.mutable_graph();
  graph->set_name("calq_qdq");
  Exporter exporter(trace, options, graph, &report);
  exporter.run();
  onnx::OperatorSetIdProto* opset = proto.add_opset_import();
  opset->set_domain("");
  opset->set_version(options.profile().opset);
  for (const auto& domain : {std::string("com.microsoft")}) {
    bool used = false;
    for (const auto& node : graph->node()) used = used || node.domain() == domain;
    if (used) {
      onnx::OperatorSetIdProto* extra = proto.add_opset_import();
      extra->set_domain(domain);
      extra->set_version(1);
    }
  }
  report.nodes = graph->node_size();
  report.clamped_scales = clamped_scales(model);
  if (report_out != nullptr) *report_out = report;
  std::string bytes;
  TORCH_CHECK(proto.SerializeToString(&bytes), "export: the ONNX model could not be serialized");
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
