#include "calq/nn/quant_module.h"

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <c10/util/Exception.h>

#include "calq/quant/qparams.h"

namespace calq {
namespace nn {

namespace {
thread_local CallRecorder* active_recorder = nullptr;

// The closing activation on stored integers: ReLU as max(q, z); ReLU6 as the export writes it
// (op -> Q -> DQ -> Clip(0, 6) -> Q).
at::Tensor activate_integers(const at::Tensor& q, const StoredGrid& grid, Activation activation) {
  switch (activation) {
    case Activation::none:
      return q;
    case Activation::relu:
      return integer::relu(q, grid);
    case Activation::relu6:
      return integer::relu6(q, grid);
  }
  TORCH_INTERNAL_ASSERT(false, "unknown activation");
}

}  // namespace

RecordingScope::RecordingScope(CallRecorder* recorder) : previous_(active_recorder) {
  active_recorder = recorder;
}

RecordingScope::~RecordingScope() {
  active_recorder = previous_;
}

at::Tensor QuantModuleImpl::traced(const std::vector<at::Tensor>& inputs,
                                   const at::Tensor& output) const {
  if (active_recorder != nullptr) active_recorder->record(*this, inputs, output);
  return output;
}

QuantModuleImpl::QuantModuleImpl(std::string type_name) : type_name_(std::move(type_name)) {}

void QuantModuleImpl::prepare(const QConfig& resolved) {
  TORCH_CHECK(!prepared_, type_name_, " is already prepared: prepare_qat may be called once per ",
              "model; build a fresh model from the float one to prepare it again");
  resolved.validate();
  if (has_weight() && resolved.weight) {
    weight_fake_quant_ = register_module("weight_fake_quant", resolved.weight->create());
  }
  if (is_quantization_point() && resolved.activation) {
    TORCH_CHECK(!resolved.activation->spec().unsigned_grid() || output_non_negative(), type_name_,
                ": an unsigned activation grid (\"unsigned\": true) needs an output ",
                "known to be non-negative (a closing ReLU / ReLU6: ConvBnReLU2d, LinearReLU, ",
                "AddReLU, ReLU, ...); this output can be negative. Give this module a signed ",
                "recipe (e.g. unsigned only in per-type or per-name overrides)");
    output_fake_quant_ = register_module("output_fake_quant", resolved.activation->create());
  }
  resolved_qconfig_ = resolved;
  prepared_ = true;
}

c10::optional<double> QuantModuleImpl::bias_input_scale(const at::Tensor& bias) const {
  const FakeQuantize input = input_quantizer();
  if (!bias.defined() || weight_fake_quant_.is_empty() || input.is_empty() ||
      weight_fake_quant_->state() != FakeQuantState::VALIDATION || input->spec().per_channel()) {
    return c10::nullopt;
  }
  return input->scale().item<double>();
}

at::Tensor QuantModuleImpl::deployed_bias(const at::Tensor& bias) const {
  const c10::optional<double> input_scale = bias_input_scale(bias);
  if (!input_scale) return bias;
  at::NoGradGuard no_grad;
  return quantize_bias(bias, *input_scale, deployed_weight_scale(bias, *input_scale))
      .dequantized()
      .to(bias.scalar_type());
}

at::Tensor QuantModuleImpl::deployed_weight_scale(const at::Tensor& bias,
                                                  double input_scale) const {
  TORCH_CHECK(!weight_fake_quant_.is_empty(), type_name_,
              ": the weight is float; a deployed weight scale needs a weight quantizer");
  const at::Tensor scale = weight_fake_quant_->scale();
  if (!bias.defined()) return scale;
  at::NoGradGuard no_grad;
  return bias_fitting_weight_scale(bias.detach(), input_scale, scale,
                                   weight_fake_quant_->spec().power_of_two());
}

at::Tensor QuantModuleImpl::deployed_weight(const at::Tensor& weight, const at::Tensor& bias,
                                            double input_scale) {
  TORCH_CHECK(!weight_fake_quant_.is_empty(), type_name_,
              ": the weight is float; a deployed weight needs a weight quantizer");
  const at::Tensor own = weight_fake_quant_->forward(weight);  // taps see the weight
  if (!bias.defined()) return own;
  int64_t raised = 0;
  at::Tensor fitted;
  {
    at::NoGradGuard no_grad;
    fitted = bias_fitting_weight_scale(bias.detach(), input_scale, weight_fake_quant_->scale(),
                                       weight_fake_quant_->spec().power_of_two(), &raised);
  }
  if (raised == 0) return own;  // the usual case: nothing to redo
  return weight_fake_quant_->fake_quantize_at(weight, fitted);
}

IntegerWeights QuantModuleImpl::integer_weights(const at::Tensor& weight, const at::Tensor& bias,
                                                float input_scale) const {
  TORCH_CHECK(!weight_fake_quant_.is_empty(), type_name_,
              ": the weight is float; integer weights need a weight quantizer");
  at::NoGradGuard no_grad;
  at::Tensor s, z;
  std::tie(s, z) = weight_fake_quant_->qparams();
  const QuantSpec& spec = weight_fake_quant_->spec();
  TORCH_CHECK(!spec.per_channel() || spec.ch_axis() == 0 || spec.ch_axis() == -weight.dim(),
              type_name_, ": integer weights need per-channel scales along the output channels ",
              "(ch_axis 0); got ", spec.str());
  std::vector<int64_t> shape(weight.dim(), 1);
  shape[0] = -1;
  IntegerWeights out;
  const int64_t channels = weight.size(0);
  const at::Tensor b = bias.defined() ? bias : at::zeros({channels}, weight.options());
  s = deployed_weight_scale(b, input_scale);
  out.values = weight_fake_quant_->integer_levels(weight, s) -
               z.to(at::kDouble).reshape(spec.per_channel() ? shape : std::vector<int64_t>{1});
  const at::Tensor sv = s.to(at::kFloat).reshape({-1}).contiguous();
  const float* ps = sv.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) out.scale.push_back(ps[sv.numel() == 1 ? 0 : c]);
  out.bias = quantize_bias(b, input_scale, s).values.to(at::kDouble);
  return out;
}

bool QuantModuleImpl::on_integer_grid(const FakeQuantizeImpl& fq) const {
  // A range narrower than the storage type is exported with a Clip after its
  // DequantizeLinear: the runtime computes the op reading it in float.
  const QuantSpec& spec = fq.spec();
  return fq.state() == FakeQuantState::VALIDATION && !spec.per_channel() &&
         spans_storage_range(spec) && integer_arithmetic_->computes_in_integers(spec.dtype());
}

bool QuantModuleImpl::integer_call(std::initializer_list<const at::Tensor*> tensors) const {
  // Inference only: training mode, a trace (quantizers passing values through) and autograd
  // through a parameter or input keep the float simulation, whose gradients are defined.
  if (!integer_arithmetic_ || is_training() || PassThroughScope::active()) return false;
  if (at::GradMode::is_enabled()) {
    for (const at::Tensor* t : tensors) {
      if (t->defined() && t->requires_grad()) return false;
    }
  }
  return true;
}

c10::optional<QuantModuleImpl::IntegerValue> QuantModuleImpl::integer_input(
    size_t index, const at::Tensor& x) const {
  if (!integer_arithmetic_ || index >= input_quantizers_.size()) return c10::nullopt;
  const FakeQuantize& fq = input_quantizers_[index];
  if (fq.is_empty() || !on_integer_grid(*fq)) return c10::nullopt;
  if (!x.defined() || x.scalar_type() != at::kFloat) return c10::nullopt;
  IntegerValue v;
  v.grid = fq->stored_grid(integer_arithmetic_->uint8_activations);
  v.q = integer::quantize_linear(x, v.grid);
  // Only a tensor exactly on the grid is its integers' value: a constant Pad off the grid,
  // or a float computation between, leaves the float simulation in charge.
  if (!integer::dequantize_linear(v.q, v.grid).equal(x)) return c10::nullopt;
  return v;
}

c10::optional<StoredGrid> QuantModuleImpl::integer_output_grid() const {
  const FakeQuantize& fq = output_fake_quant_;
  if (!integer_arithmetic_ || fq.is_empty() || !on_integer_grid(*fq)) return c10::nullopt;
  return fq->stored_grid(integer_arithmetic_->uint8_activations);
}

at::Tensor QuantModuleImpl::integer_weighted(const at::Tensor& x, const at::Tensor& weight,
                                             const at::Tensor& bias, Activation activation,
                                             const Accumulate& accumulate,
                                             bool float_output_in_integers) const {
  if (!integer_call({&x, &weight, &bias}) || weight_fake_quant_.is_empty() ||
      weight_fake_quant_->state() != FakeQuantState::VALIDATION) {
    return at::Tensor();
  }
  // Without an output quantizer the runtime keeps an integer kernel only where it has one
  // with a float output (QGemm); otherwise it dequantizes and runs the op in float.
  if (output_fake_quant_.is_empty() && !float_output_in_integers) return at::Tensor();
  // Weights wider than 8 bits are dequantized by the runtime unless it states integer kernels
  // for that width.
  if (weight_fake_quant_->spec().dtype() == QuantDtype::qint16 &&
      !integer_arithmetic_->computes_in_integers(QuantDtype::qint16)) {
    return at::Tensor();
  }
  const c10::optional<IntegerValue> in = integer_input(0, x);
  if (!in) return at::Tensor();
  c10::optional<StoredGrid> out;
  if (!output_fake_quant_.is_empty()) {
    out = integer_output_grid();
    if (!out) return at::Tensor();
  }
  at::NoGradGuard no_grad;
  const IntegerWeights w = integer_weights(weight, bias, in->grid.scale);
  const at::Tensor xi = in->q - static_cast<double>(in->grid.zero);  // float32 integers
  // float32 sums integers exactly while every partial sum stays below 2^24, whatever the
  // order: guaranteed when max|x| * max_c sum|w_c| + max|bias| < 2^24 (8-bit layers of
  // ordinary width) and the kernels multiply in full float32 precision (no reduced-precision
  // matmul mode); float64 (exact to 2^53) otherwise.
  const double bound =
      xi.abs().max().item<double>() * w.values.abs().flatten(1).sum(1).max().item<double>() +
      w.bias.abs().max().item<double>();
  const bool full_precision =
      at::globalContext().float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST;
  const auto type = bound < 16777216.0 && full_precision ? at::kFloat : at::kDouble;
  ++integer_calls_;
  at::Tensor acc = accumulate(xi.to(type), w.values.to(type));
  std::vector<int64_t> shape(acc.dim(), 1);
  shape[1] = -1;
  acc = acc + w.bias.to(type).reshape(shape);
  if (!out) {  // QGemm with a float output
    const at::Tensor y = integer::float_output(acc, in->grid.scale, w.scale);
    if (activation == Activation::relu) return at::relu(y);
    if (activation == Activation::relu6) return at::clamp(y, 0.0, 6.0);
    return y;
  }
  const at::Tensor q = integer::requantize(
      acc, integer::requantization_multipliers(in->grid.scale, w.scale, out->scale), *out,
      integer_arithmetic_->requantization);
  return integer::dequantize_linear(activate_integers(q, *out, activation), *out);
}

at::Tensor QuantModuleImpl::integer_binary(const at::Tensor& a, const at::Tensor& b,
                                           IntegerBinary op, Activation activation) const {
  if (!integer_call({&a, &b})) return at::Tensor();
  const c10::optional<StoredGrid> out = integer_output_grid();
  if (!out) return at::Tensor();
  const c10::optional<IntegerValue> qa = integer_input(0, a);
  if (!qa) return at::Tensor();
  const c10::optional<IntegerValue> qb = integer_input(1, b);
  if (!qb) return at::Tensor();
  ++integer_calls_;
  const at::Tensor q = op(qa->q, qa->grid, qb->q, qb->grid, *out);
  return integer::dequantize_linear(activate_integers(q, *out, activation), *out);
}

at::Tensor QuantModuleImpl::integer_unary(const at::Tensor& x, const IntegerUnary& op) const {
  if (!integer_call({&x})) return at::Tensor();
  const c10::optional<StoredGrid> out = integer_output_grid();
  if (!out) return at::Tensor();
  const c10::optional<IntegerValue> in = integer_input(0, x);
  if (!in) return at::Tensor();
  ++integer_calls_;
  return integer::dequantize_linear(op(in->q, in->grid, *out), *out);
}

at::Tensor QuantModuleImpl::quantize_weight(const at::Tensor& weight, const at::Tensor& bias) {
  if (weight_fake_quant_.is_empty()) return weight;
  const c10::optional<double> input_scale = bias_input_scale(bias);
  if (!input_scale) return weight_fake_quant_->forward(weight);
  return deployed_weight(weight, bias, *input_scale);
}

at::Tensor QuantModuleImpl::quantize_output(const at::Tensor& output) {
  return output_fake_quant_.is_empty() ? output : output_fake_quant_->forward(output);
}

}  // namespace nn
}  // namespace calq
