#pragma once
// Inference semantics for the deployment code that runs a model (the graph exporter's example
// run, the integer engine): every quantizer in VALIDATION (no observer updates, weights
// quantized as exported) and every module in eval mode (Dropout the identity, batch norm on
// its running statistics), each module's own state restored afterwards, also when the run
// throws.

#include <torch/nn/module.h>

#include <memory>
#include <utility>
#include <vector>

#include "calq/fake_quantize.h"

namespace calq {
namespace deploy {
namespace detail {

class ValidationScope {
 public:
  explicit ValidationScope(torch::nn::Module& model) : model_(&model) {
    modules_ = model.modules(/*include_self=*/false);
    self_training_ = model.is_training();
    for (const auto& m : modules_) {
      training_.push_back(m->is_training());
      if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(m.get())) {
        states_.emplace_back(fq, fq->state());
        fq->set_state(FakeQuantState::VALIDATION);
      }
    }
    model.eval();
  }
  ~ValidationScope() {
    model_->train(self_training_);
    // modules() lists parents before their children: each train() call resets the subtree,
    // then the children set their own modes again.
    for (size_t i = 0; i < modules_.size(); ++i) modules_[i]->train(training_[i]);
    for (const auto& s : states_) s.first->set_state(s.second);
  }
  ValidationScope(const ValidationScope&) = delete;
  ValidationScope& operator=(const ValidationScope&) = delete;

 private:
  torch::nn::Module* model_;
  bool self_training_ = false;
  std::vector<std::shared_ptr<torch::nn::Module>> modules_;
  std::vector<bool> training_;
  std::vector<std::pair<FakeQuantizeImpl*, FakeQuantState>> states_;
};

}  // namespace detail
}  // namespace deploy
}  // namespace calq
