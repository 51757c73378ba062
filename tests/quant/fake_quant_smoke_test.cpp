// Quick agreement with ATen for the three methods; the full suite is in the other files.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/quant/fake_quant.h"
#include "calq/quant/qparams.h"

namespace calq {
namespace {

TEST(FakeQuantSmoke, PerTensorMatchesAten) {
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({4, 3, 17, 19}) * 3;
  const at::Tensor scale = torch::full({1}, 0.05f);
  const at::Tensor zp = torch::zeros({1}, torch::kInt);
  const at::Tensor y = fake_quantize(x, scale, zp, QuantSpec());
  EXPECT_TRUE(torch::equal(y, at::fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)));
}

TEST(FakeQuantSmoke, PerChannelMatchesAten) {
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({5, 6, 7}) * 3;
  const at::Tensor scale = torch::rand({6}) * 0.1 + 0.01;
  const at::Tensor zp = torch::zeros({6}, torch::kInt);
  const at::Tensor y = fake_quantize(x, scale, zp, QuantSpec().per_channel(true).ch_axis(1));
  EXPECT_TRUE(torch::equal(y, at::fake_quantize_per_channel_affine(x, scale, zp, 1, -128, 127)));
}

TEST(FakeQuantSmoke, LsqAndPactRun) {
  torch::manual_seed(0);
  const at::Tensor x = torch::randn({1000}, torch::requires_grad());
  const at::Tensor scale = torch::full({1}, 0.02f, torch::requires_grad());
  const at::Tensor alpha = torch::full({1}, 2.0f, torch::requires_grad());
  const at::Tensor y = lsq_fake_quantize(x, scale, at::Tensor(), QuantSpec()) +
                       pact_fake_quantize(x, alpha, QuantSpec());
  y.sum().backward();
  EXPECT_TRUE(scale.grad().defined());
  EXPECT_TRUE(alpha.grad().defined());
  EXPECT_EQ(x.grad().sizes(), x.sizes());
}

TEST(FakeQuantSmoke, QparamsInt8Divisor) {
  const auto qp = compute_qparams(torch::full({1}, -2.0), torch::full({1}, 1.0), QuantSpec());
  EXPECT_FLOAT_EQ(qp.first.item<float>(), static_cast<float>(2.0 / 127.5));
}

}  // namespace
}  // namespace calq
