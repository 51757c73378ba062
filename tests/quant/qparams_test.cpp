// compute_qparams and round_scale_to_power_of_two (eqs. 1 and 4).
#include "calq/quant/qparams.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "quant/test_util.h"

namespace calq {
namespace {

using test::same_values;
using test::throws_with;

at::Tensor t(const std::vector<double>& v) {
  return torch::tensor(v, torch::kDouble);
}

TEST(Qparams, SymmetricDivisorIsHalfTheSteps) {
  const auto [s8, z8] = compute_qparams(t({-2.0}), t({1.0}), QuantSpec());
  EXPECT_EQ(s8.item<float>(), static_cast<float>(2.0 / 127.5));
  EXPECT_EQ(z8.item<int32_t>(), 0);
  EXPECT_EQ(s8.scalar_type(), at::kFloat);
  EXPECT_EQ(z8.scalar_type(), at::kInt);
  const auto s4 = compute_qparams(t({-1.0}), t({3.0}), QuantSpec(QuantDtype::qint4)).first;
  EXPECT_EQ(s4.item<float>(), static_cast<float>(3.0 / 7.5));
  const auto s16 = compute_qparams(t({-1.0}), t({3.0}), QuantSpec(QuantDtype::qint16)).first;
  EXPECT_EQ(s16.item<float>(), static_cast<float>(3.0 / 32767.5));
  // A quant range override changes the divisor: [-127, 127] -> 127.
  const auto s127 = compute_qparams(t({-1.0}), t({1.0}), QuantSpec().quant_range(-127, 127));
  EXPECT_EQ(s127.first.item<float>(), static_cast<float>(1.0 / 127.0));
}

TEST(Qparams, PerChannelAndFloor) {
  const auto [scale, zp] =
      compute_qparams(t({-1.0, 0.0, -0.5, 0.0}), t({0.5, 0.0, 2.0, 1e-12}), QuantSpec());
  EXPECT_TRUE(same_values(
      scale, torch::tensor({static_cast<float>(1.0 / 127.5), static_cast<float>(kMinScale),
                            static_cast<float>(2.0 / 127.5), static_cast<float>(kMinScale)})));
  EXPECT_TRUE(same_values(zp, torch::zeros({4}, torch::kInt)));
  EXPECT_EQ(kMinScale, std::numeric_limits<float>::epsilon());
}

TEST(Qparams, PowerOfTwo) {
  const QuantSpec spec = QuantSpec().power_of_two(true);
  // 1 / 127.5 = 0.00784 -> 2^-7 = 0.0078125 is below, so 2^-6.
  EXPECT_EQ(compute_qparams(t({-1.0}), t({1.0}), spec).first.item<float>(), 1.0f / 64);
  // Already a power of two: unchanged (127.5 * 2^-5).
  EXPECT_EQ(compute_qparams(t({-127.5 / 32}), t({0.0}), spec).first.item<float>(), 1.0f / 32);
  // Rounded up, then clamped to [2^-14, 2^-1] (the plugin's shift range 1..14).
  EXPECT_TRUE(same_values(round_scale_to_power_of_two(torch::tensor({0.3f, 0.25f, 3.0f, 1e-30f})),
                          torch::tensor({0.5f, 0.25f, 0.5f, std::ldexp(1.0f, -14)})));
  EXPECT_TRUE(same_values(round_scale_to_power_of_two(torch::tensor({1e-300}, torch::kDouble)),
                          torch::tensor({std::ldexp(1.0, -14)}, torch::kDouble)));
  // Through compute_qparams: a range of 100 would need 2^0, clamped to 2^-1.
  EXPECT_EQ(compute_qparams(t({-100.0}), t({100.0}), spec).first.item<float>(), 0.5f);
  EXPECT_TRUE(throws_with([] { round_scale_to_power_of_two(torch::tensor({0.0f})); },
                          "must be finite and positive"));
}

TEST(Qparams, AffineWidensToZero) {
  const QuantSpec spec = QuantSpec().symmetric(false);
  // [0.5, 2.0] widens to [0, 2]: scale 2 / 255, zero point -128 - round(0) = -128.
  auto [scale, zp] = compute_qparams(t({0.5}), t({2.0}), spec);
  EXPECT_EQ(scale.item<float>(), static_cast<float>(2.0 / 255));
  EXPECT_EQ(zp.item<int32_t>(), -128);
  // [-1, 3]: scale 4 / 255, zero point -128 - round(-1 / (4 / 255)) = -128 + 64 = -64.
  std::tie(scale, zp) = compute_qparams(t({-1.0}), t({3.0}), spec);
  EXPECT_EQ(scale.item<float>(), static_cast<float>(4.0 / 255));
  EXPECT_EQ(zp.item<int32_t>(),
            -128 - static_cast<int>(std::nearbyint(-1.0 / scale.item<float>())));
  EXPECT_EQ(zp.item<int32_t>(), -64);
}

TEST(Qparams, Errors) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(
      throws_with([&] { compute_qparams(t({kNaN}), t({1.0}), QuantSpec()); }, "is not finite"));
  EXPECT_TRUE(throws_with([&] { compute_qparams(t({2.0}), t({1.0}), QuantSpec()); },
                          "min_val (2) > max_val (1)"));
  EXPECT_TRUE(throws_with(
      [&] {
        compute_qparams(t({0.0, 1.0}), t({1.0}), QuantSpec());
      },
      "differs from max_val shape"));
  EXPECT_TRUE(
      throws_with([&] { compute_qparams(torch::zeros({1}, torch::kInt), t({1.0}), QuantSpec()); },
                  "must be floating tensors"));
}

// The int32 bias of a 16-bit layer: b / (s_x s_w) can pass 2^31 - 1. The weight scale of that
// channel alone is raised to the smallest float32 that holds it (ONNX Runtime's margin 1e-4);
// checked against the definition by brute force on the float32 neighbours.
TEST(BiasFittingWeightScale, RaisesOnlyTheOverflowingChannelToTheSmallestFit) {
  const double s_x = 1e-4;
  const at::Tensor s_w = torch::tensor({1e-5f, 1e-5f, 2e-5f});
  const at::Tensor bias = torch::tensor({1.0, -1000.0, 0.0}, torch::kDouble);
  int64_t widened = -1;
  const at::Tensor fitted = bias_fitting_weight_scale(bias, s_x, s_w, false, &widened);
  EXPECT_EQ(widened, 1);
  ASSERT_EQ(fitted.scalar_type(), at::kFloat);
  EXPECT_EQ(fitted[0].item<float>(), 1e-5f);  // 1 / 1e-9 = 1e9 fits int32
  EXPECT_EQ(fitted[2].item<float>(), 2e-5f);
  const float w = fitted[1].item<float>();
  const double limit = 2147483647.0 / 1.0001;
  auto ratio = [&](float scale) {
    return 1000.0 / static_cast<double>(static_cast<float>(s_x) * scale);
  };
  EXPECT_LE(ratio(w), limit);
  EXPECT_GT(ratio(std::nextafter(w, 0.0f)), limit);  // the smallest that fits
  EXPECT_NEAR(w, 1000.0 / (1e-4 * limit), 1e-9);
  const QuantizedBias q = quantize_bias(bias, s_x, fitted);
  EXPECT_EQ(q.saturated, 0);
  EXPECT_EQ(q.values[1].item<int32_t>(), static_cast<int32_t>(std::nearbyint(-ratio(w))));
  // Without the fit, the same bias saturates.
  EXPECT_EQ(quantize_bias(bias, s_x, s_w).saturated, 1);
}

TEST(BiasFittingWeightScale, PerTensorScaleAndPowersOfTwo) {
  const at::Tensor bias = torch::tensor({1e-5, -5000.0}, torch::kDouble);
  const double s_x = std::ldexp(1.0, -14);
  // One scale for both channels: raised for the largest |b|.
  const at::Tensor one = bias_fitting_weight_scale(bias, s_x, torch::tensor({1e-6f}), false);
  ASSERT_EQ(one.numel(), 1);
  EXPECT_LE(5000.0 / (static_cast<float>(s_x) * one.item<float>()), 2147483647.0);
  // Power of two: the smallest power of two that fits (bernoulli grids stay shifts).
  const at::Tensor p2 =
      bias_fitting_weight_scale(bias, s_x, torch::tensor({0x1p-20f, 0x1p-20f}), true);
  const float w = p2[1].item<float>();
  int exponent = 0;
  EXPECT_EQ(std::frexp(w, &exponent), 0.5f) << w;
  EXPECT_LE(5000.0 / (s_x * w), 2147483647.0 / 1.0001);
  EXPECT_GT(5000.0 / (s_x * w / 2), 2147483647.0 / 1.0001);
  EXPECT_EQ(p2[0].item<float>(), 0x1p-20f);
  // Nothing to raise: the scales come back unchanged.
  int64_t widened = -1;
  EXPECT_TRUE(bias_fitting_weight_scale(bias, 1.0, torch::tensor({0.1f, 0.2f}), false, &widened)
                  .equal(torch::tensor({0.1f, 0.2f})));
  EXPECT_EQ(widened, 0);
  EXPECT_TRUE(
      throws_with([&] { bias_fitting_weight_scale(bias, 0.0, one, false); }, "input scale"));
  EXPECT_TRUE(throws_with(
      [&] {
        bias_fitting_weight_scale(bias, 1.0, torch::tensor({0.1f, 0.2f, 0.3f}), false);
      },
      "need 1 or 2"));
}

}  // namespace
}  // namespace calq
