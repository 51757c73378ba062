// Bias correction removes the output shift weight quantization adds, computed here by hand.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "calq/analysis/bias_correction.h"
#include "calq/nn.h"
#include "calq/workflow.h"

namespace {

// The per-channel symmetric int8 grid of a single-weight channel, written out: s = |w| / 127.5
// rounded to float32 (eq. 1), q = clamp(round_half_even(w / s), -128, 127) with the division in
// float32 (eq. 2). w / s is about +-127.5, so a weight loses or gains about half a step.
double quantized_weight(double w) {
  const float s = static_cast<float>(std::abs(w) / 127.5);
  const float v = static_cast<float>(w) / s;
  const float q = std::min(std::max(std::nearbyint(v), -128.0f), 127.0f);
  return static_cast<double>(q * s);
}

TEST(BiasCorrection, RemovesTheWeightQuantizationShift) {
  torch::manual_seed(8);
  auto model = calq::nn::Linear(1, 3);
  {
    torch::NoGradGuard no_grad;
    model->linear->weight.copy_(torch::tensor({{0.5f}, {-1.0f}, {2.0f}}));
    model->linear->bias.fill_(0.25);
  }
  calq::prepare_qat(*model, calq::qconfig_float_output());  // weight int8 per channel, output float
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(torch::rand({50, 1}));
  const calq::analysis::Forward forward = [&](const at::Tensor& x) { return model->forward(x); };
  calq::calibrate(model, batches);
  calq::set_fake_quantize(*model, calq::FakeQuantState::FLOAT);
  std::vector<at::Tensor> float_outputs;
  double mean_x = 0.0;
  for (const auto& x : batches) {
    float_outputs.push_back(model->forward(x));
    mean_x += x.to(torch::kDouble).sum().item<double>();
  }
  mean_x /= 200.0;

  const auto report = calq::analysis::correct_bias(*model, forward, batches);
  ASSERT_EQ(report.corrected.size(), 1u) << report.str();
  EXPECT_EQ(report.passes, 2);
  const double w[3] = {0.5, -1.0, 2.0};
  for (int c = 0; c < 3; ++c) {
    // Shift (w_q - w) E[x], removed from the bias.
    const double expected = 0.25 - (quantized_weight(w[c]) - w[c]) * mean_x;
    EXPECT_NEAR(model->linear->bias[c].item<double>(), expected, 1e-6) << c;
  }
  // The quantized model's mean output now equals the float model's.
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  at::Tensor diff = torch::zeros({3}, torch::kDouble);
  for (size_t i = 0; i < batches.size(); ++i) {
    diff += (model->forward(batches[i]) - float_outputs[i]).to(torch::kDouble).sum(0);
  }
  EXPECT_LT((diff / 200.0).abs().max().item<double>(), 1e-6);
}

TEST(BiasCorrection, ConvBnThroughBetaAndLayersWithoutBias) {
  struct NetImpl : torch::nn::Module {
    calq::nn::QuantStub quant{register_module("quant", calq::nn::QuantStub())};
    calq::nn::ConvBnReLU2d a{register_module(
        "a", calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(1, 3, 3).padding(1).bias(false)))};
    calq::nn::Conv2d b{
        register_module("b", calq::nn::Conv2d(calq::nn::Conv2dOptions(3, 2, 1).bias(false)))};
    at::Tensor forward(const at::Tensor& x) { return b(a(quant(x))); }
  };
  torch::manual_seed(1);
  auto model = std::make_shared<NetImpl>();
  calq::fuse(*model);
  calq::prepare_qat(*model, calq::get_default_qconfig(
                                std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                "min_max", {{"dtype", "qint4"}}, {{"dtype", "qint4"}}));
  std::vector<at::Tensor> batches = {torch::randn({8, 1, 5, 5}), torch::randn({8, 1, 5, 5})};
  const calq::analysis::Forward forward = [&](const at::Tensor& x) { return model->forward(x); };
  for (const auto& x : batches) {
    calq::set_fake_quantize(*model, calq::FakeQuantState::CALIBRATION);
    model->forward(x);
  }
  const at::Tensor beta = model->a->bn->bias.clone();
  const auto scale = model->a->output_fake_quant()->scale();
  const auto report = calq::analysis::correct_bias(*model, forward, batches);
  EXPECT_EQ(report.corrected.size(), 1u) << report.str();
  ASSERT_EQ(report.skipped.size(), 1u);
  EXPECT_NE(report.skipped[0].find("b: no bias"), std::string::npos) << report.skipped[0];
  EXPECT_FALSE(torch::equal(beta, model->a->bn->bias));  // the shift went into beta
  EXPECT_TRUE(torch::equal(scale, model->a->output_fake_quant()->scale()));  // scales kept
}

}  // namespace
