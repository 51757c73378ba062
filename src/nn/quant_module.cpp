#include "calq/nn/quant_module.h"

#include <c10/util/Exception.h>

#include "calq/quant/qparams.h"

namespace calq {
namespace nn {

namespace {
thread_local CallRecorder* active_recorder = nullptr;
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
    output_fake_quant_ = register_module("output_fake_quant", resolved.activation->create());
  }
  resolved_qconfig_ = resolved;
  prepared_ = true;
}

at::Tensor QuantModuleImpl::deployed_bias(const at::Tensor& bias) const {
  if (!bias.defined() || weight_fake_quant_.is_empty() || input_quantizer_.is_empty() ||
      weight_fake_quant_->state() != FakeQuantState::VALIDATION ||
      input_quantizer_->spec().per_channel()) {
    return bias;
  }
  at::NoGradGuard no_grad;
  const double input_scale = input_quantizer_->scale().item<double>();
  return quantize_bias(bias, input_scale, weight_fake_quant_->scale())
      .dequantized()
      .to(bias.scalar_type());
}

at::Tensor QuantModuleImpl::quantize_weight(const at::Tensor& weight) {
  return weight_fake_quant_.is_empty() ? weight : weight_fake_quant_->forward(weight);
}

at::Tensor QuantModuleImpl::quantize_output(const at::Tensor& output) {
  return output_fake_quant_.is_empty() ? output : output_fake_quant_->forward(output);
}

}  // namespace nn
}  // namespace calq
