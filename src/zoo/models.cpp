#include "calq/zoo/models.h"

#include <c10/util/Exception.h>

#include "calq/nn.h"

namespace calq {
namespace zoo {
namespace {

nn::Conv2dOptions conv_options(int64_t in, int64_t out, int64_t kernel, int64_t stride = 1,
                               int64_t groups = 1) {
  return nn::Conv2dOptions(in, out, kernel)
      .stride(stride)
      .padding(kernel / 2)
      .groups(groups)
      .bias(false);
}

class SmallCnnImpl : public ClassifierImpl {
 public:
  explicit SmallCnnImpl(int64_t num_classes) {
    quant = register_module("quant", nn::QuantStub());
    conv1 = register_module("conv1", nn::ConvBnReLU2d(conv_options(1, 16, 3)));
    pool1 = register_module("pool1", nn::MaxPool2d(nn::MaxPool2dOptions(2)));
    conv2 = register_module("conv2", nn::ConvBnReLU2d(conv_options(16, 32, 3)));
    pool2 = register_module("pool2", nn::MaxPool2d(nn::MaxPool2dOptions(2)));
    flatten = register_module("flatten", nn::Flatten());
    fc1 = register_module("fc1", nn::LinearReLU(32 * 7 * 7, 128));
    fc2 = register_module("fc2", nn::Linear(128, num_classes));
    dequant = register_module("dequant", nn::DeQuantStub());
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor y = pool1(conv1(quant(x)));
    y = flatten(pool2(conv2(y)));
    return dequant(fc2(fc1(y)));
  }
  std::string output_layer() const override { return "fc2"; }

  nn::QuantStub quant{nullptr};
  nn::ConvBnReLU2d conv1{nullptr}, conv2{nullptr};
  nn::MaxPool2d pool1{nullptr}, pool2{nullptr};
  nn::Flatten flatten{nullptr};
  nn::LinearReLU fc1{nullptr};
  nn::Linear fc2{nullptr};
  nn::DeQuantStub dequant{nullptr};
};

// conv3x3-BN-ReLU -> conv3x3-BN -> add the shortcut and ReLU (one AddReLU quantization point,
// as torchvision's quantizable ResNet and integer accelerators fuse them).
class BasicBlockImpl : public torch::nn::Module {
 public:
  BasicBlockImpl(int64_t in, int64_t out, int64_t stride) {
    conv1 = register_module("conv1", nn::ConvBnReLU2d(conv_options(in, out, 3, stride)));
    conv2 = register_module("conv2", nn::ConvBn2d(conv_options(out, out, 3)));
    if (stride != 1 || in != out) {
      shortcut = register_module("shortcut", nn::ConvBn2d(conv_options(in, out, 1, stride)));
    }
    add_relu = register_module("add_relu", nn::AddReLU());
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor identity = shortcut.is_empty() ? x : shortcut(x);
    return add_relu(conv2(conv1(x)), identity);
  }
  nn::ConvBnReLU2d conv1{nullptr};
  nn::ConvBn2d conv2{nullptr}, shortcut{nullptr};
  nn::AddReLU add_relu{nullptr};
};
TORCH_MODULE(BasicBlock);

class ResNetImpl : public ClassifierImpl {
 public:
  explicit ResNetImpl(int64_t num_classes) {
    quant = register_module("quant", nn::QuantStub());
    stem = register_module("stem", nn::ConvBnReLU2d(conv_options(1, 16, 3)));
    layer1 = register_module("layer1", BasicBlock(16, 16, 1));
    layer2 = register_module("layer2", BasicBlock(16, 32, 2));
    layer3 = register_module("layer3", BasicBlock(32, 64, 2));
    pool = register_module("pool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions(1)));
    flatten = register_module("flatten", nn::Flatten());
    fc = register_module("fc", nn::Linear(64, num_classes));
    dequant = register_module("dequant", nn::DeQuantStub());
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor y = layer3(layer2(layer1(stem(quant(x)))));
    return dequant(fc(flatten(pool(y))));
  }
  std::string output_layer() const override { return "fc"; }

  nn::QuantStub quant{nullptr};
  nn::ConvBnReLU2d stem{nullptr};
  BasicBlock layer1{nullptr}, layer2{nullptr}, layer3{nullptr};
  nn::AdaptiveAvgPool2d pool{nullptr};
  nn::Flatten flatten{nullptr};
  nn::Linear fc{nullptr};
  nn::DeQuantStub dequant{nullptr};
};

// expand 1x1 -> depthwise 3x3 -> project 1x1 (linear bottleneck), residual add when shapes
// allow (MobileNetV2).
class InvertedResidualImpl : public torch::nn::Module {
 public:
  InvertedResidualImpl(int64_t in, int64_t out, int64_t stride, int64_t expansion) {
    const int64_t hidden = in * expansion;
    expand = register_module("expand", nn::ConvBnReLU6_2d(conv_options(in, hidden, 1)));
    depthwise = register_module(
        "depthwise", nn::ConvBnReLU6_2d(conv_options(hidden, hidden, 3, stride, hidden)));
    project = register_module("project", nn::ConvBn2d(conv_options(hidden, out, 1)));
    if (stride == 1 && in == out) add = register_module("add", nn::Add());
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = project(depthwise(expand(x)));
    return add.is_empty() ? y : add(y, x);
  }
  nn::ConvBnReLU6_2d expand{nullptr}, depthwise{nullptr};
  nn::ConvBn2d project{nullptr};
  nn::Add add{nullptr};
};
TORCH_MODULE(InvertedResidual);

class MobileNetImpl : public ClassifierImpl {
 public:
  explicit MobileNetImpl(int64_t num_classes) {
    quant = register_module("quant", nn::QuantStub());
    stem = register_module("stem", nn::ConvBnReLU6_2d(conv_options(1, 16, 3)));
    blocks = register_module(
        "blocks",
        torch::nn::Sequential(InvertedResidual(16, 16, 1, 4), InvertedResidual(16, 24, 2, 4),
                              InvertedResidual(24, 24, 1, 4), InvertedResidual(24, 32, 2, 4),
                              InvertedResidual(32, 32, 1, 4)));
    head = register_module("head", nn::ConvBnReLU6_2d(conv_options(32, 128, 1)));
    pool = register_module("pool", nn::AdaptiveAvgPool2d(nn::AdaptiveAvgPool2dOptions(1)));
    flatten = register_module("flatten", nn::Flatten());
    fc = register_module("fc", nn::Linear(128, num_classes));
    dequant = register_module("dequant", nn::DeQuantStub());
  }
  at::Tensor forward(const at::Tensor& x) override {
    at::Tensor y = head(blocks->forward(stem(quant(x))));
    return dequant(fc(flatten(pool(y))));
  }
  std::string output_layer() const override { return "fc"; }

  nn::QuantStub quant{nullptr};
  nn::ConvBnReLU6_2d stem{nullptr}, head{nullptr};
  torch::nn::Sequential blocks{nullptr};
  nn::AdaptiveAvgPool2d pool{nullptr};
  nn::Flatten flatten{nullptr};
  nn::Linear fc{nullptr};
  nn::DeQuantStub dequant{nullptr};
};

}  // namespace

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = {"cnn", "resnet", "mobilenet"};
  return names;
}

Classifier make_model(const std::string& name, int64_t num_classes) {
  TORCH_CHECK(num_classes > 0, "make_model: num_classes must be > 0, got ", num_classes);
  if (name == "cnn") return std::make_shared<SmallCnnImpl>(num_classes);
  if (name == "resnet") return std::make_shared<ResNetImpl>(num_classes);
  if (name == "mobilenet") return std::make_shared<MobileNetImpl>(num_classes);
  std::string valid;
  for (const auto& n : model_names()) valid += (valid.empty() ? "" : ", ") + n;
  TORCH_CHECK(false, "unknown model '", name, "'; valid models: ", valid);
}

}  // namespace zoo
}  // namespace calq
