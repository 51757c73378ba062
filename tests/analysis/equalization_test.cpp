// Cross-layer equalization: the float function is unchanged, per-channel ranges of each pair
// match afterwards, and only the pairs it may scale are scaled.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/analysis/equalization.h"
#include "calq/nn.h"
#include "calq/workflow.h"

namespace {

using calq::analysis::EqualizationOptions;
using calq::analysis::Relu6Policy;

// conv (BN, ReLU) -> depthwise conv (BN, ReLU6) -> pointwise conv (no BN, ReLU) -> maxpool ->
// flatten -> linear (ReLU) -> linear.
struct ChainImpl : torch::nn::Module {
  calq::nn::ConvBnReLU2d conv1{register_module(
      "conv1", calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(2, 6, 3).padding(1).bias(false)))};
  calq::nn::ConvBnReLU6_2d depthwise{register_module(
      "depthwise",
      calq::nn::ConvBnReLU6_2d(calq::nn::Conv2dOptions(6, 6, 3).padding(1).groups(6).bias(false)))};
  calq::nn::ConvReLU2d pointwise{
      register_module("pointwise", calq::nn::ConvReLU2d(calq::nn::Conv2dOptions(6, 5, 1)))};
  calq::nn::MaxPool2d pool{
      register_module("pool", calq::nn::MaxPool2d(calq::nn::MaxPool2dOptions(2)))};
  calq::nn::Flatten flatten{register_module("flatten", calq::nn::Flatten())};
  calq::nn::LinearReLU fc1{register_module("fc1", calq::nn::LinearReLU(5 * 2 * 2, 7))};
  calq::nn::Linear fc2{register_module("fc2", calq::nn::Linear(7, 3))};
  at::Tensor forward(const at::Tensor& x) {
    return fc2(fc1(flatten(pool(pointwise(depthwise(conv1(x)))))));
  }
};
TORCH_MODULE(Chain);

// A trained-looking model with very uneven channel ranges and non-trivial BN statistics.
Chain make_chain() {
  torch::manual_seed(17);
  Chain m;
  torch::NoGradGuard no_grad;
  m->conv1->conv->weight.mul_(
      torch::tensor({0.05f, 1.0f, 8.0f, 0.3f, 2.0f, 20.0f}).reshape({-1, 1, 1, 1}));
  for (auto* bn : {m->conv1->bn.get(), m->depthwise->bn.get()}) {
    bn->running_mean.uniform_(-0.5, 0.5);
    bn->running_var.uniform_(0.5, 2.0);
    bn->weight.uniform_(0.5, 1.5);
    bn->bias.uniform_(-0.2, 0.2);
  }
  m->fc1->linear->weight.mul_(3.0);
  m->eval();
  return m;
}

// A small-magnitude input keeps the depthwise ReLU6 below 6, where ReLU and ReLU6 agree.
at::Tensor example(double magnitude) {
  torch::manual_seed(4);
  return magnitude * torch::randn({5, 2, 4, 4});
}

at::Tensor channel_ranges_out(const at::Tensor& w) {
  return w.abs().reshape({w.size(0), -1}).amax(1);
}

TEST(Equalization, KeepsTheFloatFunctionAndMatchesRanges) {
  Chain m = make_chain();
  calq::fuse(*m);
  const at::Tensor x = example(0.01);
  const at::Tensor before = m->forward(x);
  const auto report = calq::analysis::equalize(
      *m, [&](const at::Tensor& v) { return m->forward(v); }, x,
      EqualizationOptions().relu6(Relu6Policy::to_relu));
  // conv1 -> depthwise, depthwise -> pointwise (its ReLU6 became a ReLU), pointwise -> pool ->
  // flatten -> fc1, fc1 -> fc2.
  ASSERT_EQ(report.pairs.size(), 4u) << report.str();
  EXPECT_EQ(report.relu6_replaced, std::vector<std::string>{"depthwise"});
  EXPECT_EQ(report.pairs[2], "pointwise -> pool -> flatten -> fc1");
  EXPECT_TRUE(report.skipped.empty()) << report.str();
  EXPECT_GT(report.max_scale, 2.0);
  const at::Tensor after = m->forward(x);
  // Scaling by s and 1/s moves float32 rounding only.
  EXPECT_TRUE(torch::allclose(before, after, 1e-4, 1e-5))
      << (before - after).abs().max().item<float>();

  // fc1 -> fc2 (a chain end, converged): range of fc1's row c == range of fc2's column c.
  const at::Tensor r1 = channel_ranges_out(m->fc1->linear->weight);
  const at::Tensor r2 = m->fc2->linear->weight.abs().amax(0);
  EXPECT_TRUE(torch::allclose(r1, r2, 1e-3, 1e-6)) << r1 << r2;
  // conv1 -> depthwise (BN folded on both sides): per-channel ranges match.
  const at::Tensor w1 = m->conv1->folded_weight_and_bias().first;
  const at::Tensor w2 = m->depthwise->folded_weight_and_bias().first;
  EXPECT_TRUE(torch::allclose(channel_ranges_out(w1), channel_ranges_out(w2), 1e-2, 1e-6))
      << channel_ranges_out(w1) << channel_ranges_out(w2);
}

TEST(Equalization, Relu6PairsAreSkippedUnlessAllowed) {
  Chain m = make_chain();
  calq::fuse(*m);
  const at::Tensor x = example(3.0);  // large: the depthwise ReLU6 saturates
  const at::Tensor before = m->forward(x);
  const auto report = calq::analysis::equalize(
      *m, [&](const at::Tensor& v) { return m->forward(v); }, x);
  EXPECT_EQ(report.pairs.size(), 3u) << report.str();
  ASSERT_EQ(report.skipped.size(), 1u);
  EXPECT_NE(report.skipped[0].find("depthwise -> pointwise: ReLU6"), std::string::npos)
      << report.skipped[0];
  EXPECT_TRUE(report.relu6_replaced.empty());
  EXPECT_EQ(m->depthwise->activation(), calq::nn::Activation::relu6);
  // Without the ReLU6 change the function stays the same even where ReLU6 saturates.
  EXPECT_TRUE(torch::allclose(before, m->forward(x), 1e-4, 1e-5));
}

TEST(Equalization, QuantizationPointsAndBranchesBreakPairs) {
  // A tensor read twice (a residual) cannot be rescaled: nothing to equalize.
  struct BranchImpl : torch::nn::Module {
    calq::nn::Conv2d a{register_module("a", calq::nn::Conv2d(calq::nn::Conv2dOptions(1, 2, 1)))};
    calq::nn::Conv2d b{register_module("b", calq::nn::Conv2d(calq::nn::Conv2dOptions(2, 2, 1)))};
    calq::nn::Add add{register_module("add", calq::nn::Add())};
    at::Tensor forward(const at::Tensor& x) {
      const at::Tensor y = a(x);
      return add(b(y), y);
    }
  };
  auto m = std::make_shared<BranchImpl>();
  const auto report = calq::analysis::equalize(
      *m, [&](const at::Tensor& v) { return m->forward(v); }, torch::randn({1, 1, 2, 2}));
  EXPECT_TRUE(report.pairs.empty()) << report.str();
  EXPECT_DOUBLE_EQ(report.max_scale, 1.0);
}

TEST(Equalization, PolicyNames) {
  EXPECT_EQ(calq::analysis::relu6_policy_from_string("to_relu"), Relu6Policy::to_relu);
  try {
    calq::analysis::relu6_policy_from_string("clip");
    FAIL();
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("keep, to_relu"), std::string::npos);
  }
}

}  // namespace
