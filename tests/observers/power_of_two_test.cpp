// The bernoulli march's power-of-two scales (docs/quantization.md eqs. 1b, 6b, 7b): rounding,
// the [2^-14, 2^-1] clamp, and every method keeping its scale on the grid while it learns.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "calq/fake_quantize.h"
#include "calq/observers/registry.h"
#include "calq/quant/fake_quant.h"
#include "calq/quant/qparams.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace {

using testing::value;

bool is_power_of_two(double v) {
  int exponent = 0;
  return v > 0 && std::frexp(v, &exponent) == 0.5;
}

void expect_all_powers_of_two(const at::Tensor& t, const std::string& what) {
  const at::Tensor values = t.detach().to(at::kDouble).reshape({-1}).contiguous();
  ASSERT_GT(values.numel(), 0) << what;
  for (int64_t i = 0; i < values.numel(); ++i) {
    const double v = values.data_ptr<double>()[i];
    EXPECT_TRUE(is_power_of_two(v)) << what << "[" << i << "] = " << v;
    EXPECT_GE(v, std::ldexp(1.0, kPowerOfTwoMinExponent)) << what;
    EXPECT_LE(v, std::ldexp(1.0, kPowerOfTwoMaxExponent)) << what;
  }
}

FakeQuantize make(FakeQuantMethod method, const std::string& observer, QuantSpec spec,
                  nlohmann::json observer_kwargs = nlohmann::json::object(),
                  nlohmann::json method_kwargs = nlohmann::json::object()) {
  return FakeQuantize(method, observers::make_observer(observer, spec, observer_kwargs),
                      fake_quantize_options(method, method_kwargs));
}

TEST(PowerOfTwo, RoundingByHand) {
  // Up: 0.3 -> 0.5, 0.25 stays, 0.0026 -> 2^-8 = 0.00390625.
  EXPECT_EQ(power_of_two_scale(0.3), 0.5);
  EXPECT_EQ(power_of_two_scale(0.25), 0.25);
  EXPECT_EQ(power_of_two_scale(0.0026), 0.00390625);
  // Nearest in the log domain: log2(0.3) = -1.74 -> 2^-2; log2(0.36) = -1.47 -> 2^-1;
  // the tie sqrt(2) * 2^-3 goes up.
  EXPECT_EQ(power_of_two_scale(0.3, PowerOfTwoRounding::nearest), 0.25);
  EXPECT_EQ(power_of_two_scale(0.36, PowerOfTwoRounding::nearest), 0.5);
  EXPECT_EQ(power_of_two_scale(std::sqrt(2.0) / 8.0, PowerOfTwoRounding::nearest), 0.25);
  // Clamp to [2^-14, 2^-1], reported.
  EXPECT_EQ(power_of_two_scale(3.0), 0.5);
  EXPECT_TRUE(power_of_two_clamped(3.0));
  EXPECT_EQ(power_of_two_scale(1e-7), std::ldexp(1.0, -14));
  EXPECT_TRUE(power_of_two_clamped(1e-7));
  EXPECT_FALSE(power_of_two_clamped(0.3));
  EXPECT_FALSE(power_of_two_clamped(std::ldexp(1.0, -14)));
  EXPECT_THROW(power_of_two_scale(0.0), c10::Error);
}

TEST(PowerOfTwo, ComputeQparamsClampsAndTheObserverReportsIt) {
  const QuantSpec spec = QuantSpec().power_of_two(true);
  // 100 / 127.5 = 0.78 -> 1 -> clamped to 0.5: int8 then saturates at 63.5.
  auto big = compute_qparams(torch::tensor({-100.0f}), torch::tensor({100.0f}), spec);
  EXPECT_EQ(value(big.first), 0.5);
  // 2.55 / 127.5 = 0.02 -> 2^-5.
  auto normal = compute_qparams(torch::tensor({-1.0f}), torch::tensor({2.55f}), spec);
  EXPECT_EQ(value(normal.first), 0.03125);

  auto observer = observers::make_observer("min_max", spec);
  observer->update(torch::tensor({-100.0f, 100.0f}));
  EXPECT_TRUE(observer->power_of_two_clamped());
  auto fine = observers::make_observer("min_max", spec);
  fine->update(torch::tensor({-1.0f, 2.55f}));
  EXPECT_FALSE(fine->power_of_two_clamped());
}

TEST(PowerOfTwo, FixedScaleRoundsUp) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant, "fixed_scale", QuantSpec().power_of_two(true),
                         {{"scale", 0.3}});
  fq->set_state(FakeQuantState::VALIDATION);
  EXPECT_EQ(value(fq->scale()), 0.5);
  EXPECT_FALSE(fq->scale_clamped());
  FakeQuantize clamped = make(FakeQuantMethod::fake_quant, "fixed_scale",
                              QuantSpec().power_of_two(true), {{"scale", 3.0}});
  EXPECT_EQ(value(clamped->scale()), 0.5);
  EXPECT_TRUE(clamped->scale_clamped());
  // On a free grid the user's scale is kept as given.
  FakeQuantize free_grid =
      make(FakeQuantMethod::fake_quant, "fixed_scale", QuantSpec(), {{"scale", 0.3}});
  EXPECT_FLOAT_EQ(value(free_grid->scale()), 0.3f);
}

TEST(PowerOfTwo, LsqLearnsTheLogarithmAndStaysOnTheGrid) {
  const QuantSpec spec = QuantSpec().power_of_two(true);
  FakeQuantize fq = make(FakeQuantMethod::lsq, "min_max", spec, {}, {{"grad_factor", 1.0}});
  auto params = fq->named_parameters();
  ASSERT_NE(params.find("log2_scale"), nullptr);
  EXPECT_EQ(params.find("scale"), nullptr);
  const at::Tensor x = torch::tensor({-1.0f, 0.3f, 2.55f});
  at::Tensor y = fq->forward(x);  // observer: 2.55 / 127.5 = 0.02 -> 2^-5
  EXPECT_EQ(value(fq->scale()), 0.03125);
  EXPECT_EQ(value(params["log2_scale"]), -5.0);
  // eq. 6b: dL/dl = dL/ds * s * ln 2. With y.sum(): x/s = -32, 9.6, 81.6, all inside, so
  // dL/ds = sum(round(x/s) - x/s) = 0 + 0.4 + 0.4 = 0.8 (grad_factor 1).
  y.sum().backward();
  const double expected = (10.0 - 9.6 + 82.0 - 81.6) * 0.03125 * std::log(2.0);
  EXPECT_NEAR(value(params["log2_scale"].grad()), expected, 1e-5);

  // Large steps of Adam: whatever the latent value, the scale used and stored is on the grid.
  torch::optim::Adam optimizer(fq->parameters(), torch::optim::AdamOptions(0.3));
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    fq->forward(torch::randn({64}) * 3).pow(2).sum().backward();
    optimizer.step();
    expect_all_powers_of_two(fq->scale(), "qparams scale");
    expect_all_powers_of_two(fq->named_buffers()["scale"], "stored scale");
  }
}

TEST(PowerOfTwo, LsqPerChannelWeights) {
  const QuantSpec spec = QuantSpec().power_of_two(true).per_channel(true);
  FakeQuantize fq = make(FakeQuantMethod::lsq, "min_max", spec);
  at::Tensor w = torch::randn({4, 3, 3, 3}) * 0.1;
  fq->forward(w).sum().backward();
  expect_all_powers_of_two(fq->scale(), "per-channel scale");
  EXPECT_EQ(fq->named_parameters()["log2_scale"].grad().numel(), 4);
}

TEST(PowerOfTwo, PactAlphaOnTheGrid) {
  const QuantSpec spec = QuantSpec().power_of_two(true);
  // alpha 6: 6 / 127.5 = 0.047 -> nearest 2^-4 = 0.0625, clip 0.0625 * 127.5 = 7.96875.
  FakeQuantize fq = make(FakeQuantMethod::pact, "min_max", spec);
  at::Tensor x = torch::tensor({-100.0f, 0.1f, 7.0f, 100.0f}, torch::requires_grad());
  at::Tensor y = fq->forward(x);
  EXPECT_EQ(value(fq->scale()), 0.0625);
  EXPECT_FLOAT_EQ(y[3].item<float>(), 127.0f * 0.0625f);  // 7.96875 / s = 127.5 -> 128 -> 127
  EXPECT_FLOAT_EQ(y[0].item<float>(), -128.0f * 0.0625f);
  y.sum().backward();
  // Straight through to alpha: +1 from 100 >= alpha', -1 from -100 <= -alpha'.
  EXPECT_DOUBLE_EQ(value(fq->named_parameters()["alpha"].grad()), 0.0);
  EXPECT_FLOAT_EQ(x.grad()[2].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(x.grad()[3].item<float>(), 0.0f);

  torch::optim::SGD optimizer(fq->parameters(), torch::optim::SGDOptions(0.5));
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    fq->forward(torch::randn({64}) * 5).sum().backward();
    optimizer.step();
    expect_all_powers_of_two(fq->scale(), "pact scale");
    expect_all_powers_of_two(fq->named_buffers()["scale"], "pact stored scale");
  }
}

TEST(PowerOfTwo, PactFunctionClipsAtTheGridAlpha) {
  // alpha 3 at qint8: 3 / 127.5 = 0.0235 -> nearest 2^-5 = 0.03125; clip at 3.984375.
  const QuantSpec spec = QuantSpec().power_of_two(true);
  EXPECT_EQ(pact_scale(3.0, spec), 0.03125);
  const at::Tensor alpha = torch::tensor({3.0f}, torch::requires_grad());
  const at::Tensor x = torch::tensor({3.5f, 3.99f, -5.0f});
  const at::Tensor y = pact_fake_quantize(x, alpha, spec);
  EXPECT_FLOAT_EQ(y[0].item<float>(), 112.0f * 0.03125f);  // 3.5 / s = 112: not clipped at 3
  EXPECT_FLOAT_EQ(y[1].item<float>(), 127.0f * 0.03125f);
  EXPECT_FLOAT_EQ(y[2].item<float>(), -128.0f * 0.03125f);
  y.sum().backward();
  // 3.99 >= 3.984375: +1; -5 <= -3.984375: -1.
  EXPECT_DOUBLE_EQ(value(alpha.grad()), 0.0);
}

}  // namespace
}  // namespace calq
