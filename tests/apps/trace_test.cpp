// calq::trace on the zoo and on hand-written models: the recorded dataflow is the model's.

#include "calq/trace.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/deploy/integer_engine.h"
#include "calq/deploy/qdq_export.h"
#include "calq/nn.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace {

calq::Trace trace_of(calq::zoo::Classifier& model) {
  return calq::trace(
      *model, [&model](const at::Tensor& x) { return model->forward(x); },
      torch::randn({2, 1, 28, 28}));
}

const calq::TracedCall& call_at(const calq::Trace& t, const std::string& path) {
  for (const auto& call : t.calls) {
    if (call.path == path) return call;
  }
  throw std::runtime_error("no call " + path);
}

TEST(Trace, ResNetBlocksReadTheirShortcuts) {
  calq::zoo::Classifier model = calq::zoo::make_model("resnet");
  const calq::Trace t = trace_of(model);
  // quant, stem, 3 blocks of (conv1, conv2, [shortcut], add_relu), pool, flatten, fc, dequant.
  EXPECT_EQ(t.calls.size(), 17u);  // 1 + 1 + (3 + 4 + 4) + 4
  EXPECT_EQ(t.calls.front().path, "quant");
  EXPECT_EQ(t.calls.front().inputs, std::vector<int64_t>{t.inputs[0]});
  // layer1 has no shortcut: its add reads conv2's output and the block input (stem's output).
  const auto& add1 = call_at(t, "layer1.add_relu");
  EXPECT_EQ(t.producer(add1.inputs[0])->path, "layer1.conv2");
  EXPECT_EQ(t.producer(add1.inputs[1])->path, "stem");
  // layer2 has one: its add reads the shortcut convolution.
  const auto& add2 = call_at(t, "layer2.add_relu");
  EXPECT_EQ(t.producer(add2.inputs[1])->path, "layer2.shortcut");
  EXPECT_EQ(t.producer(call_at(t, "layer2.shortcut").inputs[0])->path, "layer1.add_relu");
  // The model's output is the DeQuantStub's (which returns fc's tensor itself).
  EXPECT_EQ(t.producer(t.outputs[0])->path, "dequant");
  EXPECT_EQ(t.values[t.outputs[0]].shape, (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(t.consumers(call_at(t, "stem").output).size(), 2u);
}

TEST(Trace, PreparedModelsTraceTheSameInEveryState) {
  for (const std::string& name : calq::zoo::model_names()) {
    calq::zoo::Classifier model = calq::zoo::make_model(name);
    const size_t float_calls = trace_of(model).calls.size();
    calq::fuse(*model);
    calq::prepare_qat(*model, calq::get_default_qconfig());
    calq::calibrate(model, std::vector<at::Tensor>{torch::randn({2, 1, 28, 28})});
    EXPECT_EQ(trace_of(model).calls.size(), float_calls) << name;
    calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
    EXPECT_EQ(trace_of(model).calls.size(), float_calls) << name;
  }
}

// The CLI traces every prepared model (to link biases to their input quantizers) before it
// calibrates. A trace that let its all-zero example reach the observers left min_max's
// running range near zero: the cnn's min_max calibration fell from ~60 % to 18 % top-1.
TEST(Trace, LeavesObserversAndQuantizerParametersUntouched) {
  for (const std::string& name : calq::zoo::model_names()) {
    calq::zoo::Classifier model = calq::zoo::make_model(name);
    calq::fuse(*model);
    calq::prepare_qat(*model, calq::get_default_qconfig());  // state QAT: observers update
    calq::trace(
        *model, [&model](const at::Tensor& x) { return model->forward(x); },
        torch::zeros({1, 1, 28, 28}));
    for (const auto& item : model->named_modules()) {
      if (auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get())) {
        EXPECT_FALSE(fq->observer().has_data()) << name << " " << item.key();
      }
    }
    // And on a model that has data: every buffer and parameter is unchanged.
    calq::calibrate(model, std::vector<at::Tensor>{torch::randn({4, 1, 28, 28})});
    calq::set_fake_quantize(*model, calq::FakeQuantState::QAT);
    model->train();  // batch norm would update its running statistics
    std::vector<at::Tensor> before;
    for (const auto& b : model->named_buffers()) before.push_back(b.value().clone());
    for (const auto& p : model->named_parameters()) before.push_back(p.value().detach().clone());
    calq::trace(
        *model, [&model](const at::Tensor& x) { return model->forward(x); },
        torch::zeros({1, 1, 28, 28}));
    EXPECT_TRUE(model->is_training()) << name;
    size_t i = 0;
    for (const auto& b : model->named_buffers()) {
      EXPECT_TRUE(before[i++].equal(b.value())) << name << " buffer " << b.key();
    }
    for (const auto& p : model->named_parameters()) {
      EXPECT_TRUE(before[i++].equal(p.value().detach())) << name << " parameter " << p.key();
    }
  }
}

class HiddenAddImpl : public torch::nn::Module {
 public:
  HiddenAddImpl() {
    quant = register_module("quant", calq::nn::QuantStub());
    conv = register_module("conv", calq::nn::Conv2d(calq::nn::Conv2dOptions(1, 2, 3).padding(1)));
    relu = register_module("relu", calq::nn::ReLU());
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor y = quant(x);
    return relu(conv(y) + y);  // a plain ATen add between modules
  }
  calq::nn::QuantStub quant{nullptr};
  calq::nn::Conv2d conv{nullptr};
  calq::nn::ReLU relu{nullptr};
};
TORCH_MODULE(HiddenAdd);

TEST(Trace, PlainAtenCodeBetweenModulesIsAnError) {
  HiddenAdd model;
  try {
    calq::trace(
        *model, [&model](const at::Tensor& x) { return model->forward(x); },
        torch::randn({1, 1, 4, 4}));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("ReLU 'relu' reads a tensor"), std::string::npos) << message;
    EXPECT_NE(message.find("plain ATen code"), std::string::npos) << message;
  }
}

// A parameter read directly as a module's input (an imported graph's constants are such
// reads): the trace records it as a value without producer that is not a model input; the
// exporter of traced models, which cannot write it, says so instead of writing a broken file.
struct ParameterAddImpl : torch::nn::Module {
  ParameterAddImpl() {
    quant = register_module("quant", calq::nn::QuantStub());
    conv = register_module("conv", calq::nn::Conv2d(calq::nn::Conv2dOptions(1, 2, 3).padding(1)));
    add = register_module("add", calq::nn::Add());
    offset = register_parameter("offset", torch::randn({1, 2, 4, 4}));
  }
  at::Tensor forward(const at::Tensor& x) { return add(conv(quant(x)), offset); }
  calq::nn::QuantStub quant{nullptr};
  calq::nn::Conv2d conv{nullptr};
  calq::nn::Add add{nullptr};
  at::Tensor offset;
};
TORCH_MODULE(ParameterAdd);

TEST(Trace, ParameterReadDirectlyIsAValueWithoutProducerThatExportRefuses) {
  ParameterAdd model;
  calq::prepare_qat(*model, calq::get_default_qconfig());
  const auto forward = [&model](const at::Tensor& x) { return model->forward(x); };
  calq::set_fake_quantize(*model, calq::FakeQuantState::CALIBRATION);
  {
    torch::NoGradGuard no_grad;
    forward(torch::randn({4, 1, 4, 4}));
  }
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  const calq::Trace t = calq::trace(*model, forward, torch::randn({1, 1, 4, 4}));
  ASSERT_EQ(t.calls.size(), 3u);
  const calq::TracedCall& add = t.calls[2];
  ASSERT_EQ(add.inputs.size(), 2u);
  EXPECT_EQ(t.producer(add.inputs[1]), nullptr);
  EXPECT_EQ(t.values[add.inputs[1]].shape, (std::vector<int64_t>{1, 2, 4, 4}));
  ASSERT_EQ(t.inputs.size(), 1u);
  EXPECT_NE(t.inputs[0], add.inputs[1]) << "a parameter is not a model input";
  try {
    calq::deploy::export_qdq_bytes(*model, t);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("directly from a parameter or buffer"), std::string::npos)
        << e.what();
  }
  try {
    calq::deploy::run_integer(*model, t, {torch::randn({1, 1, 4, 4})});
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("reads a parameter or buffer directly"), std::string::npos)
        << e.what();
  }
}

}  // namespace
