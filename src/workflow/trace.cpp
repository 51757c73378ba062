#include "calq/trace.h"

#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <map>

namespace calq {
namespace {

class Recorder : public nn::CallRecorder {
 public:
  Recorder(torch::nn::Module& model, const std::vector<at::Tensor>& inputs) {
    for (const auto& item : model.named_modules("", /*include_self=*/true)) {
      paths_[item.value().get()] = item.key();
    }
    for (const at::Tensor& x : inputs) trace_.inputs.push_back(new_value(x, -1));
    // A parameter or buffer read as a module input (an imported graph's constants: a Reshape's
    // shape, a Clip's bounds, an added bias) is a value without producer, like a model input
    // but not one of trace_.inputs.
    for (const auto& p : model.named_parameters(/*recurse=*/true)) constant(p.value());
    for (const auto& b : model.named_buffers(/*recurse=*/true)) constant(b.value());
  }

  void record(const nn::QuantModuleImpl& module, const std::vector<at::Tensor>& inputs,
              const at::Tensor& output) override {
    auto found = paths_.find(&module);
    TORCH_CHECK(found != paths_.end(), "trace: a ", module.type_name(),
                " module that is not part of the traced model was called");
    TracedCall call;
    call.path = found->second;
    call.module = const_cast<nn::QuantModuleImpl*>(&module);
    for (const at::Tensor& x : inputs) {
      if (!x.defined()) {  // an omitted optional input (graphs): a constant without value
        if (undefined_ < 0) undefined_ = new_value(x, -1);
        call.inputs.push_back(undefined_);
        continue;
      }
      auto id = ids_.find(x.unsafeGetTensorImpl());
      TORCH_CHECK(id != ids_.end(), "trace: ", module.type_name(), " '", call.path,
                  "' reads a tensor of shape ", x.sizes(),
                  " that is neither a model input nor the output of a calq::nn module: it was "
                  "computed by plain ATen code between modules. Use calq::nn modules for it "
                  "(Add, Mul, Cat, Flatten, Identity, ...) so that export and analysis see it");
      call.inputs.push_back(id->second);
    }
    call.output = new_value(output, static_cast<int64_t>(trace_.calls.size()));
    trace_.calls.push_back(std::move(call));
  }

  int64_t id_of(const at::Tensor& x) const {
    auto id = ids_.find(x.unsafeGetTensorImpl());
    TORCH_CHECK(id != ids_.end(), "trace: the model returned a tensor of shape ", x.sizes(),
                " that no calq::nn module produced (computed by plain ATen code after the last "
                "module?)");
    return id->second;
  }

  Trace take() { return std::move(trace_); }

 private:
  void constant(const at::Tensor& x) {
    if (x.defined() && ids_.count(x.unsafeGetTensorImpl()) == 0) new_value(x, -1);
  }

  int64_t new_value(const at::Tensor& x, int64_t producer) {
    TracedValue value;
    value.id = static_cast<int64_t>(trace_.values.size());
    if (x.defined()) value.shape = x.sizes().vec();
    value.producer = producer;
    trace_.values.push_back(value);
    // A module may return its input (Identity): the newest value of a tensor wins, which is
    // what later readers see. Tensors are kept alive so that addresses are never reused.
    ids_[x.unsafeGetTensorImpl()] = value.id;
    alive_.push_back(x);
    return value.id;
  }

  Trace trace_;
  std::map<const torch::nn::Module*, std::string> paths_;
  std::map<const c10::TensorImpl*, int64_t> ids_;
  std::vector<at::Tensor> alive_;
  int64_t undefined_ = -1;
};

}  // namespace

std::vector<int64_t> Trace::consumers(int64_t id) const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < calls.size(); ++i) {
    for (int64_t input : calls[i].inputs) {
      if (input == id) {
        out.push_back(static_cast<int64_t>(i));
        break;
      }
    }
  }
  return out;
}

const TracedCall* Trace::producer(int64_t id) const {
  TORCH_CHECK(id >= 0 && id < static_cast<int64_t>(values.size()), "trace: value ", id,
              " does not exist");
  const int64_t call = values[id].producer;
  return call < 0 ? nullptr : &calls[call];
}

FakeQuantize quantizer_of(const Trace& trace, int64_t id) {
  const TracedCall* call = trace.producer(id);
  while (call != nullptr) {
    if (!call->module->output_fake_quant().is_empty()) return call->module->output_fake_quant();
    if (call->module->is_quantization_point() || call->inputs.size() != 1) {
      return FakeQuantize(nullptr);  // a float output (e.g. the "32-bit output" layer)
    }
    call = trace.producer(call->inputs[0]);
  }
  return FakeQuantize(nullptr);
}

int64_t link_input_quantizers(const Trace& trace) {
  int64_t linked = 0;
  // A module called more than once keeps an input's quantizer only where every call agrees
  // (a shared block fed from two grids has no single input grid).
  std::map<nn::QuantModuleImpl*, std::vector<FakeQuantize>> links;
  for (const TracedCall& call : trace.calls) {
    std::vector<FakeQuantize> quantizers;
    for (int64_t id : call.inputs) quantizers.push_back(quantizer_of(trace, id));
    auto found = links.find(call.module);
    if (found == links.end()) {
      links.emplace(call.module, std::move(quantizers));
      continue;
    }
    std::vector<FakeQuantize>& agreed = found->second;
    for (size_t i = 0; i < agreed.size(); ++i) {
      const auto* a = agreed[i].is_empty() ? nullptr : agreed[i].get();
      const auto* b =
          i >= quantizers.size() || quantizers[i].is_empty() ? nullptr : quantizers[i].get();
      if (a != b) {
        agreed[i] = FakeQuantize(nullptr);
      }
    }
  }
  for (auto& [module, quantizers] : links) {
    if (module->has_weight() && !quantizers.empty() && !quantizers[0].is_empty()) ++linked;
    module->set_input_quantizers(std::move(quantizers));
  }
  return linked;
}

Trace trace(torch::nn::Module& model, const TraceForward& forward,
            const std::vector<at::Tensor>& inputs) {
  TORCH_CHECK(!inputs.empty(), "trace: give at least one example input");
  Recorder recorder(model, inputs);
  std::vector<at::Tensor> outputs;
  {
    // Eval mode: batch norm in training mode would fold the example input into its running
    // statistics. Each module's own flag is restored (train() recurses, so parents first).
    std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> modes;
    for (const auto& m : model.modules(/*include_self=*/false))
      modes.emplace_back(m, m->is_training());
    const bool was_training = model.is_training();
    model.eval();
    struct RestoreModes {
      torch::nn::Module& model;
      bool was_training;
      std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>>& modes;
      ~RestoreModes() {
        model.train(was_training);
        for (auto& [m, training] : modes) m->train(training);
      }
    } restore{model, was_training, modes};
    torch::NoGradGuard no_grad;
    PassThroughScope pass_through;  // observers see nothing, lsq / pact stay as they are
    nn::RecordingScope scope(&recorder);
    outputs = forward(inputs);
  }
  std::vector<int64_t> ids;
  for (const at::Tensor& y : outputs) ids.push_back(recorder.id_of(y));
  Trace result = recorder.take();
  result.outputs = ids;
  TORCH_CHECK(!result.calls.empty(),
              "trace: the forward called no calq::nn module; build the "
              "model from calq::nn modules");
  return result;
}

Trace trace(torch::nn::Module& model, const std::function<at::Tensor(const at::Tensor&)>& forward,
            const at::Tensor& input) {
  return trace(
      model,
      [&forward](const std::vector<at::Tensor>& xs) {
        return std::vector<at::Tensor>{forward(xs[0])};
      },
      std::vector<at::Tensor>{input});
}

}  // namespace calq
