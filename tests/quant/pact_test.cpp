// pact_fake_quantize (eq. 7): forward against the scalar reference and ATen, hand-computed
// gradients, finite differences of the straight-through surrogate.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "calq/quant/fake_quant.h"
#include "quant/reference.h"
#include "quant/test_util.h"

namespace calq {
namespace {

using test::kInf;
using test::kNaN;
using test::kSizes;
using test::same_values;
using test::throws_with;

template <typename T>
at::Tensor pact_tensor_ref(const at::Tensor& x, double alpha, double scale, const QuantSpec& spec) {
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(xc.sizes(), xc.options());
  for (int64_t i = 0; i < xc.numel(); ++i) {
    y.data_ptr<T>()[i] =
        test::pact_ref<T>(xc.data_ptr<T>()[i], static_cast<T>(alpha), static_cast<T>(scale),
                          spec.quant_min(), spec.quant_max(), spec.rounding());
  }
  return y;
}

TEST(Pact, HandComputed) {
  // alpha 63.75 -> scale 63.75 / 127.5 = 0.5, exact.
  const at::Tensor alpha = torch::full({1}, 63.75f);
  const at::Tensor x = torch::tensor({100.0f, -100.0f, 1.25f, -1.25f, 63.75f, -63.75f, 0.75f});
  EXPECT_TRUE(same_values(pact_fake_quantize(x, alpha, QuantSpec()),
                          torch::tensor({63.5f, -64.0f, 1.0f, -1.0f, 63.5f, -64.0f, 1.0f})));
  // half_up: -alpha / s = -127.5 -> floor(-127.0) = -127.
  EXPECT_TRUE(same_values(pact_fake_quantize(x, alpha, QuantSpec().rounding(Rounding::half_up)),
                          torch::tensor({63.5f, -63.5f, 1.5f, -1.0f, 63.5f, -63.5f, 1.0f})));
}

TEST(Pact, GradientsHandComputed) {
  const at::Tensor x =
      torch::tensor({100.0, -100.0, 1.0, 63.75, -63.75, kNaN, kInf, -kInf}, torch::kDouble)
          .requires_grad_(true);
  const at::Tensor alpha = torch::full({1}, 63.75, torch::kDouble).requires_grad_(true);
  const at::Tensor dy = torch::tensor({1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0}, torch::kDouble);
  const at::Tensor y = pact_fake_quantize(x, alpha, QuantSpec());
  EXPECT_TRUE(std::isnan(y[5].item<double>()));
  EXPECT_EQ(y[6].item<double>(), 63.5);
  EXPECT_EQ(y[7].item<double>(), -64.0);
  const auto g = torch::autograd::grad({y}, {x, alpha}, {dy});
  EXPECT_TRUE(
      same_values(g[0], torch::tensor({0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0}, torch::kDouble)));
  // x >= alpha: 100, 63.75, +Inf (dy 1, 4, 7); x <= -alpha: -100, -63.75, -Inf (dy 2, 5, 8).
  EXPECT_EQ(g[1].item<double>(), (1.0 + 4.0 + 7.0) - (2.0 + 5.0 + 8.0));
  EXPECT_EQ(g[1].sizes(), alpha.sizes());
}

// Eq. 7c, the original PACT for non-negative activations: clip [0, alpha] on the unsigned
// grid, scale alpha / 15 at 4 bits. alpha 7.5 -> scale 0.5, exact.
TEST(Pact, UnsignedGridHandComputed) {
  const QuantSpec spec = QuantSpec().dtype(QuantDtype::qint4).unsigned_grid(true);
  ASSERT_EQ(spec.quant_min(), 0);
  ASSERT_EQ(spec.quant_max(), 15);
  EXPECT_EQ(pact_scale(7.5, spec), 0.5);
  EXPECT_EQ(pact_steps(spec), 15.0);
  const at::Tensor x =
      torch::tensor({-3.0, -0.2, 0.0, 0.74, 0.75, 1.3, 7.5, 9.0, kNaN, kInf, -kInf}, torch::kDouble)
          .requires_grad_(true);
  const at::Tensor alpha = torch::full({1}, 7.5, torch::kDouble).requires_grad_(true);
  const at::Tensor y = pact_fake_quantize(x, alpha, spec);
  // Brute force: clip to [0, 7.5], then round(c / 0.5) half to even, times 0.5.
  const std::vector<double> expected = {0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 7.5, 7.5, 0.0, 7.5, 0.0};
  for (size_t i = 0; i < expected.size(); ++i) {
    if (i == 8) {
      EXPECT_TRUE(std::isnan(y[8].item<double>()));
      continue;
    }
    EXPECT_EQ(y[i].item<double>(), expected[i]) << "x = " << x[i].item<double>();
  }
  const at::Tensor dy = torch::arange(1, 12, torch::kDouble);
  const auto g = torch::autograd::grad({y}, {x, alpha}, {dy});
  // dx passes for 0 <= x < alpha: 0.0, 0.74, 0.75, 1.3 (dy 3, 4, 5, 6).
  EXPECT_TRUE(same_values(
      g[0],
      torch::tensor({0.0, 0.0, 3.0, 4.0, 5.0, 6.0, 0.0, 0.0, 0.0, 0.0, 0.0}, torch::kDouble)));
  // Only the upper clip depends on alpha: 7.5, 9.0, +Inf (dy 7, 8, 10); nothing below 0 counts.
  EXPECT_EQ(g[1].item<double>(), 7.0 + 8.0 + 10.0);
}

TEST(Pact, MatchesReferenceAndAten) {
  torch::manual_seed(21);
  for (int64_t n : kSizes) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      for (auto rounding : {Rounding::half_to_even, Rounding::half_up}) {
        for (auto dtype_q : {QuantDtype::qint4, QuantDtype::qint8}) {
          const QuantSpec spec = QuantSpec(dtype_q).rounding(rounding);
          const at::Tensor x = (torch::randn({n}) * 3).to(dtype);
          const double alpha = 2.5;
          const double scale = alpha / ((spec.quant_max() - spec.quant_min()) / 2.0);
          const at::Tensor y = pact_fake_quantize(x, torch::full({1}, alpha), spec);
          const at::Tensor y_ref = dtype == at::kFloat
                                       ? pact_tensor_ref<float>(x, alpha, scale, spec)
                                       : pact_tensor_ref<double>(x, alpha, scale, spec);
          EXPECT_TRUE(same_values(y, y_ref)) << n;
          if (dtype == at::kFloat && rounding == Rounding::half_to_even) {
            const at::Tensor clipped = x.clamp(-alpha, alpha);
            EXPECT_TRUE(test::same_values_as_aten(
                y,
                at::fake_quantize_per_tensor_affine(clipped, static_cast<float>(scale), 0,
                                                    spec.quant_min(), spec.quant_max()),
                clipped, torch::full({}, static_cast<float>(scale)), /*any_ties=*/true))
                << n;
          }
        }
      }
    }
  }
}

TEST(Pact, PowerOfTwoScale) {
  torch::manual_seed(22);
  const at::Tensor x = torch::randn({500}) * 2;
  const at::Tensor y =
      pact_fake_quantize(x, torch::full({1}, 1.0f), QuantSpec().power_of_two(true));
  // eq. 7b: 1 / 127.5 = 2^-6.99 goes to the nearest power of two in the log domain, 2^-7, and
  // the clip moves with it to 2^-7 * 127.5 = 0.99609375.
  const double scale = 1.0 / 128;
  const double clip = scale * 127.5;
  EXPECT_TRUE(same_values(y, pact_tensor_ref<float>(x, clip, scale, QuantSpec())));
  EXPECT_TRUE(same_values(y / scale, (y / scale).round()));
  // -alpha' / s = -127.5 rounds (half to even) to -128: the grid's ends are -128 s and 127 s.
  EXPECT_EQ(y.max().item<float>(), static_cast<float>(127 * scale));
  EXPECT_EQ(y.min().item<float>(), static_cast<float>(-128 * scale));
}

TEST(Pact, GradientsAreTheSurrogateDerivative) {
  // Eq. 7's gradients are those of y~(x, alpha) = clamp(x, -alpha, alpha) + d, with the
  // quantization error d = y - clamp(x, -alpha, alpha) frozen at the evaluation point.
  torch::manual_seed(23);
  const at::Tensor x = torch::randn({300}, torch::kDouble) * 3;
  const at::Tensor dy = torch::randn({300}, torch::kDouble);
  const double alpha = 2.0;
  const at::Tensor leaf = x.clone().requires_grad_(true);
  const at::Tensor a = torch::full({1}, alpha, torch::kDouble).requires_grad_(true);
  const auto g = torch::autograd::grad({pact_fake_quantize(leaf, a, QuantSpec())}, {leaf, a}, {dy});
  const auto loss = [&](const at::Tensor& xx, double aa) {
    return (dy * xx.clamp(-aa, aa)).sum().item<double>();
  };
  // No x lies within kStep of +-alpha for this seed (asserted), so the surrogate is linear in
  // a neighbourhood of both arguments and central differences are exact up to rounding.
  constexpr double kStep = 1e-6;
  constexpr double kFiniteDifferenceTolerance = 1e-6;
  ASSERT_GT(((x.abs() - alpha).abs()).min().item<double>(), kStep);
  const double fd_alpha = (loss(x, alpha + kStep) - loss(x, alpha - kStep)) / (2 * kStep);
  EXPECT_NEAR(g[1].item<double>(), fd_alpha, kFiniteDifferenceTolerance);
  for (int64_t i = 0; i < 300; i += 7) {
    at::Tensor up = x.clone();
    at::Tensor down = x.clone();
    up[i] += kStep;
    down[i] -= kStep;
    EXPECT_NEAR(g[0][i].item<double>(), (loss(up, alpha) - loss(down, alpha)) / (2 * kStep),
                kFiniteDifferenceTolerance)
        << i;
  }
}

TEST(Pact, Empty) {
  const at::Tensor x = torch::empty({0, 4}).requires_grad_(true);
  const at::Tensor alpha = torch::full({1}, 1.0f).requires_grad_(true);
  const at::Tensor y = pact_fake_quantize(x, alpha, QuantSpec());
  const auto g = torch::autograd::grad({y}, {x, alpha}, {torch::empty({0, 4})});
  EXPECT_EQ(g[0].sizes(), x.sizes());
  EXPECT_EQ(g[1].item<float>(), 0.0f);
}

TEST(PactErrors, BadArguments) {
  const at::Tensor x = torch::randn({4});
  for (double bad : {0.0, -1.0, kNaN, kInf}) {
    EXPECT_TRUE(throws_with([&] { pact_fake_quantize(x, torch::full({1}, bad), QuantSpec()); },
                            "alpha[0] = "))
        << bad;
  }
  EXPECT_TRUE(throws_with([&] { pact_fake_quantize(x, torch::full({2}, 1.0f), QuantSpec()); },
                          "alpha must be a floating tensor with one element"));
  EXPECT_TRUE(throws_with(
      [&] { pact_fake_quantize(x, torch::full({1}, 1.0f), QuantSpec().per_channel(true)); },
      "PACT is per-tensor only"));
  EXPECT_TRUE(
      throws_with([&] { pact_fake_quantize(x.to(at::kInt), torch::full({1}, 1.0f), QuantSpec()); },
                  "x must be float32 or float64"));
}

}  // namespace
}  // namespace calq
