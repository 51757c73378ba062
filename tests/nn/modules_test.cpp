// calq::nn modules compute exactly what their torch::nn counterparts compute in float, and
// fused Conv-BN blocks match the unfused ones.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/nn.h"
#include "calq/workflow.h"

namespace {

// Same operator sequence on the same data: identical up to the order of floating-point
// accumulation inside the convolution kernels (different code paths for folded weights).
constexpr double kFoldTolerance = 1e-5;

void copy_conv(const torch::nn::Conv2d& from, const torch::nn::Conv2d& to) {
  torch::NoGradGuard no_grad;
  to->weight.copy_(from->weight);
  if (from->bias.defined()) to->bias.copy_(from->bias);
}

struct ConvCase {
  int64_t in, out, kernel, stride, padding, dilation, groups;
  bool bias;
};

class Conv2dMatchesTorch : public ::testing::TestWithParam<ConvCase> {};

TEST_P(Conv2dMatchesTorch, SameOutputAndGradients) {
  const ConvCase c = GetParam();
  torch::manual_seed(1);
  auto options = calq::nn::Conv2dOptions(c.in, c.out, c.kernel)
                     .stride(c.stride)
                     .padding(c.padding)
                     .dilation(c.dilation)
                     .groups(c.groups)
                     .bias(c.bias);
  calq::nn::Conv2d ours(options);
  torch::nn::Conv2d reference(options);
  copy_conv(ours->conv, reference);
  auto x = torch::randn({2, c.in, 11, 9}, torch::requires_grad());
  auto y = ours(x);
  auto y_ref = reference(x);
  EXPECT_TRUE(torch::equal(y, y_ref));
  auto g = torch::autograd::grad({y.sum()}, {x})[0];
  auto g_ref = torch::autograd::grad({y_ref.sum()}, {x})[0];
  EXPECT_TRUE(torch::allclose(g, g_ref));
}

INSTANTIATE_TEST_SUITE_P(Shapes, Conv2dMatchesTorch,
                         ::testing::Values(ConvCase{3, 8, 3, 1, 1, 1, 1, true},
                                           ConvCase{3, 8, 3, 2, 0, 1, 1, false},
                                           ConvCase{4, 8, 3, 1, 2, 2, 2, true},
                                           ConvCase{8, 8, 3, 1, 1, 1, 8, false},
                                           ConvCase{1, 1, 1, 1, 0, 1, 1, true}));

TEST(Linear, MatchesTorch) {
  torch::manual_seed(2);
  calq::nn::Linear ours(7, 5);
  torch::nn::Linear reference(7, 5);
  {
    torch::NoGradGuard no_grad;
    reference->weight.copy_(ours->linear->weight);
    reference->bias.copy_(ours->linear->bias);
  }
  auto x = torch::randn({4, 7});
  EXPECT_TRUE(torch::equal(ours(x), reference(x)));
  calq::nn::LinearReLU fused(7, 5);
  {
    torch::NoGradGuard no_grad;
    fused->linear->weight.copy_(ours->linear->weight);
    fused->linear->bias.copy_(ours->linear->bias);
  }
  EXPECT_TRUE(torch::equal(fused(x), torch::relu(reference(x))));
}

TEST(ConvBn, UnfusedMatchesTorchSequenceInTrainAndEval) {
  torch::manual_seed(3);
  auto options = calq::nn::Conv2dOptions(3, 6, 3).padding(1).bias(false);
  calq::nn::ConvBnReLU2d ours(options);
  torch::nn::Conv2d conv(options);
  torch::nn::BatchNorm2d bn(6);
  copy_conv(ours->conv, conv);
  auto x = torch::randn({4, 3, 8, 8});
  for (bool training : {true, false}) {
    ours->train(training);
    conv->train(training);
    bn->train(training);
    EXPECT_TRUE(torch::equal(ours(x), torch::relu(bn(conv(x))))) << "training=" << training;
  }
  EXPECT_TRUE(torch::equal(ours->bn->running_mean, bn->running_mean));
  EXPECT_TRUE(torch::equal(ours->bn->running_var, bn->running_var));
}

// Gives a BN non-trivial statistics and affine parameters.
void randomize_bn(const torch::nn::BatchNorm2d& bn) {
  torch::NoGradGuard no_grad;
  bn->running_mean.uniform_(-0.5, 0.5);
  bn->running_var.uniform_(0.5, 2.0);
  bn->weight.uniform_(0.5, 1.5);
  bn->bias.uniform_(-0.3, 0.3);
}

TEST(ConvBn, FusedEqualsUnfusedInEvalAndTraining) {
  torch::manual_seed(4);
  for (bool with_bias : {false, true}) {
    auto options = calq::nn::Conv2dOptions(4, 6, 3).padding(1).bias(with_bias);
    calq::nn::ConvBnReLU6_2d unfused(options), fused(options);
    randomize_bn(unfused->bn);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : fused->named_parameters())
        p.value().copy_(unfused->named_parameters()[p.key()]);
      for (auto& b : fused->named_buffers()) b.value().copy_(unfused->named_buffers()[b.key()]);
    }
    fused->fuse();
    ASSERT_TRUE(fused->fused());
    auto x = torch::randn({5, 4, 7, 7}) * 2;
    unfused->eval();
    fused->eval();
    EXPECT_LT((fused(x) - unfused(x)).abs().max().item<double>(), kFoldTolerance);
    unfused->train();
    fused->train();
    EXPECT_LT((fused(x) - unfused(x)).abs().max().item<double>(), kFoldTolerance);
    // Both updated their running statistics the same way.
    EXPECT_LT((fused->bn->running_mean - unfused->bn->running_mean).abs().max().item<double>(),
              kFoldTolerance);
    EXPECT_LT((fused->bn->running_var - unfused->bn->running_var).abs().max().item<double>(),
              kFoldTolerance);
    EXPECT_EQ(fused->bn->num_batches_tracked.item<int64_t>(),
              unfused->bn->num_batches_tracked.item<int64_t>());
  }
}

TEST(ConvBn, FrozenBnUsesRunningStatisticsInTraining) {
  torch::manual_seed(5);
  calq::nn::ConvBn2d block(calq::nn::Conv2dOptions(2, 3, 3).padding(1).bias(false));
  randomize_bn(block->bn);
  block->fuse();
  block->freeze_bn();
  auto mean_before = block->bn->running_mean.clone();
  auto x = torch::randn({3, 2, 5, 5});
  block->train();
  auto y_train = block(x);
  block->eval();
  EXPECT_TRUE(torch::allclose(y_train, block(x)));
  EXPECT_TRUE(torch::equal(mean_before, block->bn->running_mean));
}

TEST(Layers, MatchTorchFunctional) {
  auto a = torch::randn({2, 3, 6, 6}) * 4;
  auto b = torch::randn({2, 3, 6, 6});
  EXPECT_TRUE(torch::equal(calq::nn::ReLU()(a), torch::relu(a)));
  EXPECT_TRUE(torch::equal(calq::nn::ReLU6()(a), torch::nn::ReLU6()(a)));
  EXPECT_TRUE(torch::equal(calq::nn::Add()(a, b), a + b));
  EXPECT_TRUE(torch::equal(calq::nn::AddReLU()(a, b), torch::relu(a + b)));
  EXPECT_TRUE(torch::equal(calq::nn::Mul()(a, b), a * b));
  EXPECT_TRUE(torch::equal(calq::nn::Cat(1)->forward({a, b}), torch::cat({a, b}, 1)));
  EXPECT_TRUE(torch::equal(calq::nn::MaxPool2d(calq::nn::MaxPool2dOptions(2))(a),
                           torch::nn::MaxPool2d(torch::nn::MaxPool2dOptions(2))(a)));
  EXPECT_TRUE(torch::equal(calq::nn::AvgPool2d(calq::nn::AvgPool2dOptions(3).stride(2))(a),
                           torch::nn::AvgPool2d(torch::nn::AvgPool2dOptions(3).stride(2))(a)));
  EXPECT_TRUE(
      torch::equal(calq::nn::AdaptiveAvgPool2d(calq::nn::AdaptiveAvgPool2dOptions(1))(a),
                   torch::nn::AdaptiveAvgPool2d(torch::nn::AdaptiveAvgPool2dOptions(1))(a)));
  EXPECT_TRUE(torch::equal(calq::nn::Flatten()(a), torch::nn::Flatten()(a)));
  EXPECT_TRUE(torch::equal(calq::nn::Identity()(a), a));
  EXPECT_TRUE(torch::equal(calq::nn::QuantStub()(a), a));
  EXPECT_TRUE(torch::equal(calq::nn::DeQuantStub()(a), a));
}

TEST(AddReLU, GradientsMatchReluOfSumAndOutputIsOneQuantizationPoint) {
  torch::manual_seed(4);
  auto a = torch::randn({2, 3, 5, 5}, torch::requires_grad());
  auto b = torch::randn({2, 3, 5, 5}, torch::requires_grad());
  auto a2 = a.detach().clone().requires_grad_(), b2 = b.detach().clone().requires_grad_();
  const auto g = torch::randn({2, 3, 5, 5});
  (calq::nn::AddReLU()(a, b) * g).sum().backward();
  (torch::relu(a2 + b2) * g).sum().backward();
  EXPECT_TRUE(torch::equal(a.grad(), a2.grad()));
  EXPECT_TRUE(torch::equal(b.grad(), b2.grad()));

  // Prepared: the quantizer sees the sum after the ReLU, so its range starts at 0.
  calq::nn::AddReLU add_relu;
  calq::prepare_qat(*add_relu, calq::get_default_qconfig());
  ASSERT_FALSE(add_relu->output_fake_quant().is_empty());
  calq::set_fake_quantize(*add_relu, calq::FakeQuantState::CALIBRATION);
  const auto x = torch::randn({4, 8}) * 3;
  EXPECT_TRUE(torch::equal(add_relu(x, -x * 0.5), torch::relu(x * 0.5)));
  const auto range = add_relu->output_fake_quant()->observer().range();
  EXPECT_EQ(range.first.item<float>(), 0.0f);
  EXPECT_EQ(range.second.item<float>(), torch::relu(x * 0.5).max().item<float>());
}

TEST(ConvBn, QatWithAZeroGammaChannelStaysFinite) {
  // A pruned channel (gamma 0) makes the BN factor 0: the folded QAT weight must not become
  // 0 / 0, and batch norm then outputs beta on that channel, as the float block does.
  torch::manual_seed(5);
  calq::nn::ConvBnReLU2d block(calq::nn::Conv2dOptions(3, 4, 3).padding(1).bias(false));
  {
    torch::NoGradGuard no_grad;
    block->bn->weight[1] = 0.0;
    block->bn->bias[1] = 0.25;
  }
  calq::fuse(*block);
  calq::prepare_qat(*block, calq::get_default_qconfig());
  block->train();
  const auto x = torch::randn({2, 3, 6, 6});
  const auto y = block(x);
  ASSERT_TRUE(torch::isfinite(y).all().item<bool>());
  const auto channel = y.select(1, 1);
  const auto out_scale = block->output_fake_quant()->scale().item<float>();
  EXPECT_LE((channel - 0.25).abs().max().item<float>(), out_scale / 2 + 1e-6);
  y.sum().backward();
  EXPECT_TRUE(torch::isfinite(block->conv->weight.grad()).all().item<bool>());
  EXPECT_TRUE(torch::isfinite(block->bn->weight.grad()).all().item<bool>());
}

TEST(Conv2d, RejectsUnsupportedOptions) {
  try {
    calq::nn::Conv2d conv(calq::nn::Conv2dOptions(1, 1, 3).padding(torch::kSame));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("padding must be explicit"), std::string::npos);
  }
  try {
    calq::nn::Conv2d conv(calq::nn::Conv2dOptions(1, 1, 3).padding_mode(torch::kReflect));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("padding_mode must be zeros"), std::string::npos);
  }
}

TEST(Fuse, CountsBlocksAndIsIdempotent) {
  torch::nn::Sequential model(calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(1, 2, 3)),
                              calq::nn::Conv2d(calq::nn::Conv2dOptions(2, 2, 1)),
                              calq::nn::ConvBn2d(calq::nn::Conv2dOptions(2, 2, 1)));
  EXPECT_EQ(calq::fuse(*model), 2);
  EXPECT_EQ(calq::fuse(*model), 0);
}

}  // namespace
