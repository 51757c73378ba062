// lsq_fake_quantize (eq. 6): forward, input and scale gradients against the scalar reference,
// ATen's learnable fake quantize and finite differences of the straight-through surrogate.
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

using test::grid_ref;
using test::kSizes;
using test::same_values;
using test::throws_with;

// Float scale gradients are sums of float products accumulated in float within a block of at
// most 16384 elements (1024 additions per lane), then in double: each step loses at most half
// a float ulp (6e-8) of the running magnitude, so 1e-4 of the sum of |terms| bounds the error
// with a wide margin. The reference sums in double.
constexpr double kFloatSumTolerance = 1e-4;
// Double inputs: the same argument with double ulps.
constexpr double kDoubleSumTolerance = 1e-12;

struct Grads {
  at::Tensor y, dx, dscale;
};

Grads run_lsq(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zp,
              const QuantSpec& spec, const at::Tensor& dy, double grad_factor) {
  const at::Tensor leaf = x.detach().clone().requires_grad_(true);
  const at::Tensor s = scale.detach().clone().requires_grad_(true);
  const at::Tensor y = lsq_fake_quantize(leaf, s, zp, spec, grad_factor);
  const auto g = torch::autograd::grad({y}, {leaf, s}, {dy});
  return {y.detach(), g[0], g[1]};
}

// Sum of |dy| * max(|q'|) bound used to scale tolerances: |q'| <= max(|quant_min|, quant_max).
double magnitude(const at::Tensor& dy, double bound) {
  return dy.abs().sum().item<double>() * bound;
}

TEST(Lsq, MatchesReferencePerTensorAndPerChannel) {
  torch::manual_seed(11);
  struct Case {
    std::vector<int64_t> sizes;
    int64_t axis;  // -1: per tensor
  };
  std::vector<Case> cases;
  for (int64_t n : kSizes) {
    cases.push_back({{n}, -1});
    if (n < 40000) {
      cases.push_back({{3, 4, n}, 1});
      cases.push_back({{n, 6}, 1});
    }
  }
  cases.push_back({{2, 3, 20000}, 1});
  cases.push_back({{3000, 9}, 1});
  cases.push_back({{3, 70000, 1}, 1});
  for (const Case& c : cases) {
    for (auto dtype : {at::kFloat, at::kDouble}) {
      for (auto rounding : {Rounding::half_to_even, Rounding::half_up}) {
        QuantSpec spec = QuantSpec().rounding(rounding);
        const at::Tensor x = (torch::randn(c.sizes) * 3).to(dtype);
        const at::Tensor dy = torch::randn(c.sizes).to(dtype);
        int64_t channels = 1;
        if (c.axis >= 0) {
          spec.per_channel(true).ch_axis(c.axis);
          channels = x.size(c.axis);
        }
        // The scale in x's dtype, so that its gradient is not rounded to float for double x.
        const at::Tensor scale = (torch::rand({channels}) * 0.03 + 0.005).to(dtype);
        const at::Tensor zp = torch::randint(-5, 5, {channels}, torch::kInt);
        const auto g = grid_ref(scale, zp, spec, c.axis);
        const Grads got = run_lsq(x, scale, zp, spec, dy, 1.0);
        const bool is_float = dtype == at::kFloat;
        const at::Tensor y_ref = is_float ? test::fake_quant_tensor_ref<float>(x, g)
                                          : test::fake_quant_tensor_ref<double>(x, g);
        const at::Tensor dx_ref = is_float ? test::ste_tensor_ref<float>(x, dy, g)
                                           : test::ste_tensor_ref<double>(x, dy, g);
        const std::vector<double> ds_ref = is_float
                                               ? test::lsq_scale_grad_tensor_ref<float>(x, dy, g)
                                               : test::lsq_scale_grad_tensor_ref<double>(x, dy, g);
        EXPECT_TRUE(same_values(got.y, y_ref)) << x.sizes();
        EXPECT_TRUE(same_values(got.dx, dx_ref)) << x.sizes();
        ASSERT_EQ(got.dscale.sizes(), scale.sizes());
        const double tolerance = (is_float ? kFloatSumTolerance : kDoubleSumTolerance) *
                                 magnitude(dy.to(at::kDouble), 133);
        for (int64_t ch = 0; ch < channels; ++ch) {
          EXPECT_NEAR(got.dscale[ch].item<double>(), ds_ref[ch], tolerance)
              << x.sizes() << " channel " << ch;
        }
      }
    }
  }
}

TEST(Lsq, MatchesAtenLearnablePerTensor) {
  torch::manual_seed(12);
  for (int64_t n : kSizes) {
    const at::Tensor x = torch::randn({n}) * 3;
    const at::Tensor dy = torch::randn({n});
    const at::Tensor scale = torch::full({1}, 0.02f);
    const double grad_factor = 1.0 / std::sqrt(n * 127.0);
    const Grads got = run_lsq(x, scale, torch::zeros({1}, torch::kInt), QuantSpec(), dy, -1.0);
    const at::Tensor leaf = x.clone().requires_grad_(true);
    const at::Tensor s = scale.clone().requires_grad_(true);
    const at::Tensor y = at::_fake_quantize_learnable_per_tensor_affine(leaf, s, torch::zeros({1}),
                                                                        -128, 127, grad_factor);
    const auto aten = torch::autograd::grad({y}, {leaf, s}, {dy});
    EXPECT_TRUE(test::same_values_as_aten(got.y, y.detach(), x, scale.reshape({}))) << n;
    EXPECT_TRUE(test::same_values_as_aten(got.dx, aten[0], x, scale.reshape({}))) << n;
    // ATen forms q' as ((q * s) - x) * (1 / s) in float and sums in float.
    const double tolerance = kFloatSumTolerance * grad_factor * magnitude(dy, 128);
    EXPECT_NEAR(got.dscale.item<double>(), aten[1].item<double>(), tolerance) << n;
  }
}

TEST(Lsq, DefaultGradFactorUsesElementsPerScale) {
  torch::manual_seed(13);
  const at::Tensor x = torch::randn({4, 6, 5});
  const at::Tensor dy = torch::randn({4, 6, 5});
  const at::Tensor zp = torch::zeros({6}, torch::kInt);
  const at::Tensor scale = torch::rand({6}) * 0.02 + 0.01;
  const QuantSpec spec = QuantSpec(QuantDtype::qint4).per_channel(true).ch_axis(1);
  const Grads by_default = run_lsq(x, scale, zp, spec, dy, -1.0);
  const Grads unit = run_lsq(x, scale, zp, spec, dy, 1.0);
  // n = 120 / 6 = 20 elements per channel, quant_max = 7 for qint4.
  const double g = 1.0 / std::sqrt(20.0 * 7.0);
  EXPECT_TRUE(torch::allclose(by_default.dscale, unit.dscale * g, 1e-6, 0));
}

TEST(Lsq, ScaleGradientIsTheSurrogateDerivative) {
  // Eq. 6 is the derivative in s of y~(s) = clamp(x / s + d, lo, hi) * s with the rounding
  // offset d = round(x / s) - x / s frozen at the evaluation point.
  torch::manual_seed(14);
  for (int64_t axis : {-1, 0}) {
    const at::Tensor x = torch::randn({3, 200}, torch::kDouble) * 3;
    at::Tensor dy = torch::randn({3, 200}, torch::kDouble);
    QuantSpec spec;
    at::Tensor scale = torch::full({1}, 0.02, torch::kDouble);
    if (axis == 0) {
      spec.per_channel(true).ch_axis(0);
      scale = torch::tensor({0.015, 0.02, 0.03}, torch::kDouble);
    }
    const at::Tensor s_b = axis == 0 ? scale.reshape({3, 1}) : scale;
    const at::Tensor v = x / s_b;
    const at::Tensor d = v.round() - v;
    // Where round(x / s) sits exactly on quant_min or quant_max the surrogate has a kink in s;
    // those elements get no upstream gradient so that central differences stay valid.
    dy = dy.masked_fill((v.round() == 127) | (v.round() == -128), 0);
    const auto loss = [&](const at::Tensor& s) {
      const at::Tensor sb = axis == 0 ? s.reshape({3, 1}) : s;
      return (dy * at::clamp(x / sb + d, -128, 127) * sb).sum();
    };
    // Elsewhere the surrogate is smooth in s, so central differences are accurate to about
    // h^2 * |third derivative| plus rounding of the sums (~1e-15 / h).
    constexpr double kStep = 1e-8;
    constexpr double kFiniteDifferenceTolerance = 1e-5;
    at::Tensor fd = at::empty_like(scale);
    for (int64_t c = 0; c < scale.numel(); ++c) {
      at::Tensor up = scale.clone();
      at::Tensor down = scale.clone();
      up[c] += kStep;
      down[c] -= kStep;
      fd[c] = (loss(up) - loss(down)) / (2 * kStep);
    }
    const Grads got = run_lsq(x, scale, torch::zeros(scale.sizes(), torch::kInt), spec, dy, 1.0);
    EXPECT_TRUE(torch::allclose(got.dscale, fd, kFiniteDifferenceTolerance, 0)) << got.dscale << fd;
  }
}

TEST(Lsq, NanAndInf) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const at::Tensor x =
      torch::tensor({std::numeric_limits<double>::quiet_NaN(), kInf, -kInf, 0.26}, torch::kDouble);
  const at::Tensor dy = torch::tensor({1.0, 2.0, 3.0, 4.0}, torch::kDouble);
  const Grads got =
      run_lsq(x, torch::full({1}, 0.1, torch::kDouble), torch::zeros({1}), QuantSpec(), dy, 1.0);
  EXPECT_TRUE(same_values(got.dx, torch::tensor({0.0, 0.0, 0.0, 4.0}, torch::kDouble)));
  // NaN: nothing; +Inf: 127 * 2; -Inf: -128 * 3; 0.26 / 0.1 = 2.6 -> 3: (3 - 2.6) * 4.
  const double expected = 127 * 2.0 - 128 * 3.0 + (3.0 - 0.26 * (1 / 0.1)) * 4.0;
  constexpr double kExactUpToRounding = 1e-12;
  EXPECT_NEAR(got.dscale.item<double>(), expected, kExactUpToRounding);
}

TEST(Lsq, EmptyAndScaleShapes) {
  const Grads empty = run_lsq(torch::empty({0}), torch::full({1}, 0.1f), torch::zeros({1}),
                              QuantSpec(), torch::empty({0}), -1.0);
  EXPECT_EQ(empty.dscale.item<float>(), 0.0f);
  // Zero channels: no elements share a scale, no division by zero.
  const Grads no_channels =
      run_lsq(torch::empty({3, 0}), torch::empty({0}), torch::empty({0}),
              QuantSpec().per_channel(true).ch_axis(1), torch::empty({3, 0}), -1.0);
  EXPECT_EQ(no_channels.dscale.sizes(), (std::vector<int64_t>{0}));
  // A 0-dim double scale gets a 0-dim double gradient.
  const Grads scalar = run_lsq(torch::randn({7}), torch::scalar_tensor(0.1, torch::kDouble),
                               torch::zeros({}), QuantSpec(), torch::ones({7}), 1.0);
  EXPECT_EQ(scalar.dscale.dim(), 0);
  EXPECT_EQ(scalar.dscale.scalar_type(), at::kDouble);
}

TEST(Lsq, SameScaleGradientForAnyThreadCount) {
  torch::manual_seed(15);
  const at::Tensor x = torch::randn({1 << 18}) * 3;
  const at::Tensor dy = torch::randn({1 << 18});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const Grads one = run_lsq(x, torch::full({1}, 0.02f), torch::zeros({1}), QuantSpec(), dy, 1.0);
  at::set_num_threads(std::max(2, threads));
  const Grads many = run_lsq(x, torch::full({1}, 0.02f), torch::zeros({1}), QuantSpec(), dy, 1.0);
  at::set_num_threads(threads);
  EXPECT_EQ(one.dscale.item<float>(), many.dscale.item<float>());
  EXPECT_TRUE(same_values(one.dx, many.dx));
}

TEST(LsqErrors, BadArguments) {
  const at::Tensor x = torch::randn({4});
  EXPECT_TRUE(
      throws_with([&] { lsq_fake_quantize(x, torch::full({1}, -1.0f), at::Tensor(), QuantSpec()); },
                  "must be finite and positive"));
  EXPECT_TRUE(throws_with(
      [&] {
        lsq_fake_quantize(x, torch::full({1}, 0.1f), at::Tensor(), QuantSpec(),
                          std::numeric_limits<double>::infinity());
      },
      "grad_factor"));
  EXPECT_TRUE(throws_with(
      [&] {
        lsq_fake_quantize(x, torch::full({1}, 0.1f), torch::full({1}, -4),
                          QuantSpec().quant_range(-8, -1));
      },
      "needs quant_max > 0"));
}

}  // namespace
}  // namespace calq
