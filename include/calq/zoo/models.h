#pragma once
// Model zoo for 28x28 single-channel inputs (Fashion-MNIST), built from calq::nn modules.
// bench/compare_pytorch.py builds the same architectures in PyTorch.

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <vector>

namespace calq {
namespace zoo {

/// A classifier: [N, 1, 28, 28] float -> [N, num_classes] logits.
class ClassifierImpl : public torch::nn::Module {
 public:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
  /// Module path of the last layer (kept float by the default recipes: the seed's
  /// "32-bit output").
  virtual std::string output_layer() const = 0;
};
using Classifier = std::shared_ptr<ClassifierImpl>;

/// Names accepted by make_model: "cnn", "resnet", "mobilenet".
const std::vector<std::string>& model_names();

/// Builds an untrained model; unknown names throw and list the valid ones.
///   cnn:       2 x (Conv-BN-ReLU, MaxPool) -> Linear-ReLU 1568->128 -> Linear 128->C
///   resnet:    stem Conv-BN-ReLU 16 -> BasicBlocks 16, 32/2, 64/2 -> avg pool -> Linear 64->C
///   mobilenet: stem Conv-BN-ReLU6 16 -> 5 inverted residuals (expansion 4, depthwise 3x3)
///              -> Conv-BN-ReLU6 1x1 128 -> avg pool -> Linear 128->C
Classifier make_model(const std::string& name, int64_t num_classes = 10);

}  // namespace zoo
}  // namespace calq
