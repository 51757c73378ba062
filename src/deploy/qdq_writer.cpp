// QDQ writing shared by the exporters (docs/deploy.md, "Placement").
#include "deploy/qdq_writer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <sstream>

#include "calq/quant/integer_arithmetic.h"
#include "calq/quant/qparams.h"

namespace calq {
namespace deploy {
namespace detail {
namespace {

int32_t storage_type(const QuantSpec& spec) {
  switch (spec.dtype()) {
    case QuantDtype::qint4:  // 4-bit values in 8-bit storage (numerically identical after DQ)
    case QuantDtype::qint8:
      return spec.unsigned_grid() ? ::onnx::TensorProto::UINT8 : ::onnx::TensorProto::INT8;
    case QuantDtype::qint16:
      return spec.unsigned_grid() ? ::onnx::TensorProto::UINT16 : ::onnx::TensorProto::INT16;
  }
  TORCH_INTERNAL_ASSERT(false, "unknown dtype");
}

}  // namespace

Quant quant_of(const FakeQuantizeImpl& fq) {
  Quant q;
  std::tie(q.scale, q.zero_point) = fq.qparams();
  q.scale = q.scale.to(at::kFloat).reshape({-1});
  q.zero_point = q.zero_point.to(at::kInt).reshape({-1});
  q.spec = fq.spec();
  return q;
}

void QdqWriter::add_value_info(::onnx::ValueInfoProto* info, const std::string& name,
                               const std::vector<int64_t>& shape, int32_t elem_type) {
  info->set_name(name);
  auto* tensor = info->mutable_type()->mutable_tensor_type();
  tensor->set_elem_type(elem_type);
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

std::string QdqWriter::qdq_domain(const QuantSpec& spec) const {
  return spec.dtype() == QuantDtype::qint16 ? options_.profile().int16_qdq_domain : "";
}

// Scale and zero point initializers of a quantization (scalars per tensor). Activations of
// 8 bits may be stored shifted to uint8 (profile.uint8_activations).
std::pair<std::string, std::string> QdqWriter::qparams(const std::string& base, const Quant& q,
                                                       bool activation) {
  const bool per_tensor = !q.spec.per_channel();
  const at::Tensor scale = per_tensor ? q.scale.reshape({}) : q.scale;
  at::Tensor zero = per_tensor ? q.zero_point.reshape({}) : q.zero_point;
  int32_t type = storage_type(q.spec);
  if (activation && type == ::onnx::TensorProto::INT8 && options_.profile().uint8_activations) {
    zero = zero.to(at::kInt) + 128;
    type = ::onnx::TensorProto::UINT8;
  }
  return {b_.initializer(base + "/scale", scale, ::onnx::TensorProto::FLOAT),
          b_.initializer(base + "/zero_point", zero, type)};
}

Value QdqWriter::quantize(const std::string& input, const Quant& q, const std::string& base) {
  TORCH_CHECK(!q.spec.per_channel(), base,
              ": per-channel activation quantization has no QDQ export (ONNX Runtime's integer "
              "kernels take one scale per activation); use a per-tensor activation recipe");
  const auto names = qparams(base, q, /*activation=*/true);
  const std::string domain = qdq_domain(q.spec);
  const std::string quantized =
      b_.node("QuantizeLinear", {input, names.first, names.second}, base + "/q", {}, domain);
  std::string output =
      b_.node("DequantizeLinear", {quantized, names.first, names.second}, base, {}, domain);
  report_.quantize_nodes += 1;
  report_.dequantize_nodes += 1;
  if (!spans_storage_range(q.spec)) {
    // The storage type saturates at its own range; the grid ends earlier (int4, a narrowed
    // quant range): clip the dequantized values to the grid's ends, exact multiples of s.
    const double s = q.scale.item<double>();
    const double z = q.zero_point.item<double>();
    output = b_.node(
        "Clip",
        {output,
         b_.initializer(base + "/min", at::full({}, (q.spec.quant_min() - z) * s, at::kFloat),
                        ::onnx::TensorProto::FLOAT),
         b_.initializer(base + "/max", at::full({}, (q.spec.quant_max() - z) * s, at::kFloat),
                        ::onnx::TensorProto::FLOAT)},
        base + "/clip");
  }
  return Value{output, q};
}

Value QdqWriter::close(const std::string& path, const FakeQuantize& quantizer,
                       const std::string& op_output, nn::Activation activation, bool after_op) {
  if (quantizer.is_empty()) {
    report_.float_outputs.push_back(path);
    if (activation == nn::Activation::none) return Value{op_output, c10::nullopt};
    return Value{apply_activation(activation, op_output, path), c10::nullopt};
  }
  const Quant q = quant_of(*quantizer);
  if (!options_.profile().integer_activation(q.spec.dtype())) {
    report_.float_kernels.push_back(path);
  }
  if (activation == nn::Activation::none) return quantize(op_output, q, path);
  if (after_op && options_.profile().quantize_before_relu && !q.spec.unsigned_grid()) {
    // op -> Q(s, z) -> DQ -> activation -> Q(s, z) -> DQ: the runtime fuses the first group
    // into its integer kernel; the activation of multiples of s requantizes exactly. (An
    // unsigned grid's zero point is the type's minimum: the runtime fuses op -> Relu -> Q.)
    const Value pre = quantize(op_output, q, path + "/pre_activation");
    return quantize(apply_activation(activation, pre.name, path), q, path);
  }
  return quantize(apply_activation(activation, op_output, path), q, path);
}

std::string QdqWriter::apply_activation(nn::Activation activation, const std::string& input,
                                        const std::string& base) {
  TORCH_INTERNAL_ASSERT(activation != nn::Activation::none);
  if (activation == nn::Activation::relu) return b_.node("Relu", {input}, base + "/relu");
  return b_.node(
      "Clip",
      {input,
       b_.initializer(base + "/relu6_min", at::zeros({}, at::kFloat), ::onnx::TensorProto::FLOAT),
       b_.initializer(base + "/relu6_max", at::full({}, 6.0, at::kFloat),
                      ::onnx::TensorProto::FLOAT)},
      base + "/relu6");
}

QdqWriter::WeightAndBias QdqWriter::weight_and_bias(
    const std::string& path, const nn::QuantModuleImpl& module, const at::Tensor& weight,
    const at::Tensor& bias, const Value& input, int64_t axis,
    const std::function<at::Tensor(const at::Tensor&)>& layout) {
  auto onnx_layout = [&layout](const at::Tensor& t) { return layout ? layout(t) : t; };
  const FakeQuantize wfq = module.weight_fake_quant();
  if (wfq.is_empty()) {
    return {
        b_.initializer(path + "/weight", onnx_layout(weight.detach()), ::onnx::TensorProto::FLOAT),
        bias.defined() ? b_.initializer(path + "/bias", bias.detach(), ::onnx::TensorProto::FLOAT)
                       : std::string()};
  }
  Quant wq = quant_of(*wfq);
  const bool integer_bias = bias.defined() && input.quant && !input.quant->spec.per_channel();
  if (integer_bias) {
    // The weight scale the simulation uses too: raised where the int32 bias would overflow.
    const at::Tensor fitted =
        module.deployed_weight_scale(bias.detach(), input.quant->scale.item<double>());
    const at::Tensor raised = fitted.reshape({-1}) != wq.scale.reshape({-1});
    if (raised.any().item<bool>()) {
      std::ostringstream message;
      message << path << ": " << raised.sum().item<int64_t>() << " of " << wq.scale.numel()
              << " weight scales raised (up to x"
              << (fitted.reshape({-1}) / wq.scale.reshape({-1})).max().item<double>()
              << ") so that the int32 bias fits";
      report_.weight_scales_raised.push_back(message.str());
    }
    wq.scale = fitted.reshape(wq.scale.sizes());
  }
  TORCH_CHECK(
      !wq.spec.per_channel() || wq.spec.ch_axis() == 0 || wq.spec.ch_axis() == -weight.dim(), path,
      ": per-channel weights must be quantized along the output channels ",
      "(ch_axis 0) to be exported; got ", wq.spec.str());
  const auto names = qparams(path + "/weight", wq, /*activation=*/false);
  const std::string w_int = b_.initializer(
      path + "/weight_quantized", onnx_layout(wfq->integer_levels(weight.detach(), wq.scale)),
      storage_type(wq.spec));
  std::vector<Attribute> axis_attribute;
  if (wq.spec.per_channel()) axis_attribute.push_back(Attribute::integer("axis", axis));
  // int16 weights need the profile's int16 DequantizeLinear (com.microsoft for ORT) too.
  const std::string w = b_.node("DequantizeLinear", {w_int, names.first, names.second},
                                path + "/weight", axis_attribute, qdq_domain(wq.spec));
  report_.dequantize_nodes += 1;
  report_.integer_weight_layers += 1;
  if (!bias.defined()) return {w, std::string()};
  if (!integer_bias) {
    return {w, b_.initializer(path + "/bias", bias.detach(), ::onnx::TensorProto::FLOAT)};
  }
  const QuantizedBias qb =
      quantize_bias(bias.detach(), input.quant->scale.item<double>(), wq.scale);
  if (qb.saturated > 0) {
    std::ostringstream message;
    message << path << ": " << qb.saturated << " of " << bias.numel()
            << " bias values saturated to int32 (|b / (s_x s_w)| up to " << qb.max_ratio << ")";
    report_.bias_saturations.push_back(message.str());
  }
  const std::string b_int =
      b_.initializer(path + "/bias_quantized", qb.values, ::onnx::TensorProto::INT32);
  const std::string b_scale =
      b_.initializer(path + "/bias/scale", qb.scale, ::onnx::TensorProto::FLOAT);
  const std::string b_zero = b_.initializer(
      path + "/bias/zero_point", at::zeros({bias.numel()}, at::kInt), ::onnx::TensorProto::INT32);
  const std::string b = b_.node("DequantizeLinear", {b_int, b_scale, b_zero}, path + "/bias",
                                {Attribute::integer("axis", 0)});
  report_.dequantize_nodes += 1;
  return {w, b};
}

Value QdqWriter::pass_through(const std::string& path, const std::string& op_output,
                              const Value& in) {
  if (!in.quant || !options_.profile().requantize_pass_through) {
    return Value{op_output, in.quant};
  }
  return quantize(op_output, *in.quant, path);
}

}  // namespace detail
}  // namespace deploy
}  // namespace calq
