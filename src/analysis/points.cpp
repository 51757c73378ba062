#include "calq/analysis/points.h"

#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <set>

#include "calq/workflow.h"

namespace calq {
namespace analysis {

void QuantPoint::set_state(FakeQuantState state) const {
  if (has_weight()) weight->set_state(state);
  if (has_output()) output->set_state(state);
}

std::vector<QuantPoint> quantization_points(torch::nn::Module& model) {
  std::vector<QuantPoint> points;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    auto* module = dynamic_cast<nn::QuantModuleImpl*>(item.value().get());
    if (module == nullptr) continue;
    QuantPoint point;
    point.name = item.key();
    point.type = module->type_name();
    point.module = module;
    if (!module->weight_fake_quant().is_empty()) point.weight = module->weight_fake_quant().ptr();
    if (!module->output_fake_quant().is_empty()) point.output = module->output_fake_quant().ptr();
    if (point.has_weight() || point.has_output()) points.push_back(point);
  }
  TORCH_CHECK(!points.empty(), "quantization_points: the model has no quantizer; prepare it with ",
              "calq::prepare_qat (and calibrate it) first");
  return points;
}

std::vector<QuantPoint> quantization_points(torch::nn::Module& model, const Forward& forward,
                                            const at::Tensor& example) {
  const std::vector<QuantPoint> registered = quantization_points(model);
  std::vector<const nn::QuantModuleImpl*> modules;
  for (const auto& p : registered) modules.push_back(p.module);
  OutputRecorder recorder(modules);
  recorder.run(forward, example);
  std::vector<QuantPoint> ordered;
  std::set<const nn::QuantModuleImpl*> seen;
  for (const auto& call : recorder.calls()) {
    if (!seen.insert(call.module).second) continue;
    for (const auto& p : registered) {
      if (p.module == call.module) ordered.push_back(p);
    }
  }
  TORCH_CHECK(!ordered.empty(), "quantization_points: the forward ran none of the model's ",
              registered.size(), " quantization points");
  return ordered;
}

void set_all(torch::nn::Module& model, FakeQuantState state) {
  set_fake_quantize(model, state);
}

class OutputRecorder::Impl : public nn::CallRecorder {
 public:
  explicit Impl(const std::vector<const nn::QuantModuleImpl*>& modules)
      : modules_(modules.begin(), modules.end()) {}
  // The analysis compares what quantized and float forwards compute: quantizers must act.
  void record(const nn::QuantModuleImpl& module, const std::vector<at::Tensor>& inputs,
              const at::Tensor& output) override {
    if (modules_.count(&module) == 0) return;
    std::vector<at::Tensor> detached;
    // A graph's float function may have omitted optional inputs (undefined tensors).
    for (const at::Tensor& x : inputs) detached.push_back(x.defined() ? x.detach() : x);
    calls_.push_back({&module, std::move(detached), output.detach()});
  }
  std::set<const nn::QuantModuleImpl*> modules_;
  std::vector<Call> calls_;
};

OutputRecorder::OutputRecorder(const std::vector<const nn::QuantModuleImpl*>& modules)
    : impl_(std::make_unique<Impl>(modules)) {}

OutputRecorder::~OutputRecorder() = default;

at::Tensor OutputRecorder::run(const Forward& forward, const at::Tensor& x) {
  impl_->calls_.clear();
  torch::NoGradGuard no_grad;
  nn::RecordingScope scope(impl_.get());
  return forward(x).detach();
}

const std::vector<OutputRecorder::Call>& OutputRecorder::calls() const {
  return impl_->calls_;
}

}  // namespace analysis
}  // namespace calq
