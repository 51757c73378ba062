// fake_quantize (eqs. 2, 3, 5): hand-computed ties and edges, scalar reference, ATen.
#include "calq/quant/fake_quant.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <vector>

#include "calq/quant/qparams.h"
#include "quant/reference.h"
#include "quant/test_util.h"

namespace calq {
namespace {

using test::grid_ref;
using test::kInf;
using test::kNaN;
using test::kSizes;
using test::same_values;
using test::throws_with;

at::Tensor values(std::vector<double> v, at::ScalarType dtype = at::kFloat) {
  return torch::tensor(v, torch::kDouble).to(dtype);
}

at::Tensor scale1(double s) {
  return torch::full({1}, s, torch::kFloat);
}
at::Tensor zp1(int64_t z = 0) {
  return torch::full({1}, z, torch::kInt);
}

at::Tensor input_grad(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zp,
                      const QuantSpec& spec, const at::Tensor& dy) {
  const at::Tensor leaf = x.detach().clone().requires_grad_(true);
  const at::Tensor y = fake_quantize(leaf, scale, zp, spec);
  return torch::autograd::grad({y}, {leaf}, {dy})[0];
}

// ---- Hand-computed cases (scale 1 and 0.5: their reciprocals are exact). ----

TEST(FakeQuantize, TiesHalfToEven) {
  const at::Tensor x = values({2.5, -2.5, 3.5, 0.5, -0.5, 1.5, 126.5, 127.5, -128.5, -127.5});
  const at::Tensor expected = values({2, -2, 4, 0, -0.0, 2, 126, 127, -128, -128});
  EXPECT_TRUE(same_values(fake_quantize(x, scale1(1), zp1(), QuantSpec()), expected));
  EXPECT_TRUE(same_values(fake_quantize(x * 0.5, scale1(0.5), zp1(), QuantSpec()), expected * 0.5));
}

TEST(FakeQuantize, TiesHalfUp) {
  const QuantSpec spec = QuantSpec().rounding(Rounding::half_up);
  const at::Tensor x = values({2.5, -2.5, 3.5, 0.5, -0.5, 1.5, 126.5, 127.5, -128.5, -127.5});
  const at::Tensor expected = values({3, -2, 4, 1, 0, 2, 127, 127, -128, -127});
  EXPECT_TRUE(same_values(fake_quantize(x, scale1(1), zp1(), spec), expected));
}

TEST(FakeQuantize, HalfUpIsFloorOfVPlusHalfInFloat) {
  // The largest float below 0.5: v + 0.5 rounds to 1.0f in float, so floor gives 1.
  const float below_half = std::nextafter(0.5f, 0.0f);
  const at::Tensor x = torch::tensor({below_half, -below_half});
  const at::Tensor y = fake_quantize(x, scale1(1), zp1(), QuantSpec().rounding(Rounding::half_up));
  EXPECT_EQ(y[0].item<float>(), std::floor(below_half + 0.5f));
  EXPECT_EQ(y[1].item<float>(), std::floor(-below_half + 0.5f));
}

TEST(FakeQuantize, SaturationEdgesAndMask) {
  // round(v) in [-128, 127] passes the gradient; 127.5 rounds to 128 (out) half-to-even.
  const at::Tensor x = values({127.4, 127.5, 128.0, -128.4, -128.5, -128.6, -129.0, 1e30});
  const at::Tensor dy = torch::ones_like(x);
  EXPECT_TRUE(same_values(fake_quantize(x, scale1(1), zp1(), QuantSpec()),
                          values({127, 127, 127, -128, -128, -128, -128, 127})));
  EXPECT_TRUE(same_values(input_grad(x, scale1(1), zp1(), QuantSpec(), dy),
                          values({1, 0, 0, 1, 1, 0, 0, 0})));
  const QuantSpec up = QuantSpec().rounding(Rounding::half_up);
  // floor(127.9) = 127 in, floor(128.0) = 128 out; floor(-128.0) = -128 in, floor(-128.1) out.
  EXPECT_TRUE(
      same_values(input_grad(x, scale1(1), zp1(), up, dy), values({1, 0, 0, 1, 1, 0, 0, 0})));
}

// A symmetric min_max scale maps the largest |x| to x/s = 127.5 (eq. 1: s = max|x| / 127.5),
// the rounding tie of the saturation mask: the last bit of the float quotient decides whether
// round(x/s) is 127 (gradient passes) or 128 (clamped, no gradient), while the forward value is
// 127 s either way. So two runs whose tensors differ by an ulp can pass different gradients to
// every tensor's extreme (why data-parallel QAT with min_max observers drifts from one process
// by more than float rounding: docs/distributed.md, section 8). 200 consecutive floats from 0.7.
TEST(FakeQuantize, MinMaxExtremeSitsOnTheMaskTie) {
  float x = 0.7f;
  int passed = 0, blocked = 0;
  for (int k = 0; k < 200; ++k, x = std::nextafter(x, 2.0f)) {
    const auto qparams = compute_qparams(torch::tensor({-x}), torch::tensor({x}), QuantSpec());
    const float s = qparams.first.item<float>();
    const float quotient = x / s;  // QuantizeLinear's division
    ASSERT_NEAR(quotient, 127.5f, 1e-4f);
    const bool passes = std::nearbyint(quotient) <= 127.0f;  // half to even: 127.5 -> 128
    const at::Tensor xt = torch::tensor({x});
    EXPECT_EQ(fake_quantize(xt, qparams.first, qparams.second, QuantSpec()).item<float>(),
              127.0f * s);
    const at::Tensor g =
        input_grad(xt, qparams.first, qparams.second, QuantSpec(), torch::ones_like(xt));
    EXPECT_EQ(g.item<float>(), passes ? 1.0f : 0.0f) << "x = " << x;
    (passes ? passed : blocked) += 1;
  }
  EXPECT_GT(passed, 0);
  EXPECT_GT(blocked, 0);
}

TEST(FakeQuantize, QuantRangeOverrideAndDtypes) {
  const at::Tensor x = values({-100, -8.6, -7.5, 6.5, 7.4, 100});
  EXPECT_TRUE(same_values(fake_quantize(x, scale1(1), zp1(), QuantSpec(QuantDtype::qint4)),
                          values({-8, -8, -8, 6, 7, 7})));
  EXPECT_TRUE(same_values(fake_quantize(x, scale1(1), zp1(), QuantSpec().quant_range(-7, 7)),
                          values({-7, -7, -7, 6, 7, 7})));
  const at::Tensor big = values({-40000, 32766.5, 40000});
  EXPECT_TRUE(same_values(fake_quantize(big, scale1(1), zp1(), QuantSpec(QuantDtype::qint16)),
                          values({-32768, 32766, 32767})));
}

TEST(FakeQuantize, NanAndInf) {
  const double s = 0.25;
  const at::Tensor dy = values({5, 5, 5, 5, 5});
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const at::Tensor x = values({kNaN, kInf, -kInf, 1.0, -kNaN}, dtype);
    const at::Tensor y = fake_quantize(x, scale1(s), zp1(), QuantSpec());
    EXPECT_TRUE(same_values(y, values({kNaN, 127 * s, -128 * s, 1.0, kNaN}, dtype)));
    EXPECT_TRUE(same_values(input_grad(x, scale1(s), zp1(), QuantSpec(), dy.to(dtype)),
                            values({0, 0, 0, 5, 0}, dtype)));
  }
}

TEST(FakeQuantize, EmptyTensors) {
  for (auto spec : {QuantSpec(), QuantSpec().per_channel(true).ch_axis(1)}) {
    const at::Tensor x = torch::empty({0, 3}).requires_grad_(true);
    const at::Tensor scale = spec.per_channel() ? torch::full({3}, 0.1f) : scale1(0.1);
    const at::Tensor y = fake_quantize(x, scale, at::Tensor(), spec);
    EXPECT_EQ(y.sizes(), x.sizes());
    const at::Tensor dx = torch::autograd::grad({y}, {x}, {torch::empty({0, 3})})[0];
    EXPECT_EQ(dx.sizes(), x.sizes());
  }
  // Zero channels.
  EXPECT_EQ(fake_quantize(torch::empty({2, 0}), torch::empty({0}), at::Tensor(),
                          QuantSpec().per_channel(true).ch_axis(1))
                .sizes(),
            (std::vector<int64_t>{2, 0}));
}

// ---- Reference and ATen over size sweeps. ----

TEST(FakeQuantize, PerTensorMatchesReferenceAndAten) {
  torch::manual_seed(1);
  for (int64_t n : kSizes) {
    for (auto rounding : {Rounding::half_to_even, Rounding::half_up}) {
      const QuantSpec spec = QuantSpec().rounding(rounding);
      for (auto dtype : {at::kFloat, at::kDouble}) {
        // Scale 0.02: |x| > 2.56 saturates, so both the range and the clamp are exercised.
        const at::Tensor x = (torch::randn({n}) * 3).to(dtype);
        const at::Tensor y = fake_quantize(x, scale1(0.02), zp1(), spec);
        const auto g = grid_ref(scale1(0.02), zp1(), spec, -1);
        const at::Tensor dy = torch::randn({n}).to(dtype);
        if (dtype == at::kDouble) {
          EXPECT_TRUE(same_values(y, test::fake_quant_tensor_ref<double>(x, g))) << n;
          EXPECT_TRUE(same_values(input_grad(x, scale1(0.02), zp1(), spec, dy),
                                  test::ste_tensor_ref<double>(x, dy, g)))
              << n;
        } else {
          EXPECT_TRUE(same_values(y, test::fake_quant_tensor_ref<float>(x, g))) << n;
          EXPECT_TRUE(same_values(input_grad(x, scale1(0.02), zp1(), spec, dy),
                                  test::ste_tensor_ref<float>(x, dy, g)))
              << n;
        }
        if (dtype == at::kFloat && rounding == Rounding::half_to_even) {
          EXPECT_TRUE(test::same_values_as_aten(
              y, at::fake_quantize_per_tensor_affine(x, 0.02, 0, -128, 127), x,
              torch::full({}, 0.02)))
              << "n=" << n;
        }
      }
    }
  }
}

TEST(FakeQuantize, AtenAgreesOnTiesAndZeroPoints) {
  // x / s exactly on ties (s = 0.5 has an exact reciprocal), with several zero points.
  const at::Tensor x = values({1.25, -1.25, 63.75, -64.25, 0.25, -0.25, 100, -100});
  for (int64_t zp : {0, 3, -5, 127, -128}) {
    const at::Tensor y = fake_quantize(x, scale1(0.5), zp1(zp), QuantSpec());
    EXPECT_TRUE(same_values(y, at::fake_quantize_per_tensor_affine(x, 0.5, zp, -128, 127)))
        << "zero_point " << zp;
    EXPECT_TRUE(same_values(
        y, test::fake_quant_tensor_ref<float>(x, grid_ref(scale1(0.5), zp1(zp), QuantSpec(), -1))));
  }
}

// Shapes whose channel slices are long (one scale per call), short (per-element rows), and
// short with too many channels for rows (one call per slice).
TEST(FakeQuantize, PerChannelMatchesReferenceAndAten) {
  torch::manual_seed(2);
  struct Shape {
    std::vector<int64_t> sizes;
    int64_t axis;
  };
  std::vector<Shape> shapes;
  for (int64_t n : kSizes) {
    if (n > 40000) {
      continue;
    }
    shapes.push_back({{3, 4, n}, 1});
    shapes.push_back({{n, 5}, -1});
    shapes.push_back({{4, n}, 0});
    shapes.push_back({{2, n, 3}, 1});
  }
  shapes.push_back({{2, 3, 20000}, 1});  // slices longer than one work item
  shapes.push_back({{5000, 7}, 1});      // many short rows
  shapes.push_back({{3, 70000, 1}, 1});  // rows too long for per-element parameters
  for (const Shape& shape : shapes) {
    const at::Tensor x = torch::randn(shape.sizes) * 3;
    const int64_t axis = shape.axis < 0 ? shape.axis + x.dim() : shape.axis;
    const int64_t channels = x.size(axis);
    const at::Tensor scale = torch::rand({channels}) * 0.05 + 0.005;
    const at::Tensor zp = torch::randint(-10, 10, {channels}, torch::kInt);
    for (auto rounding : {Rounding::half_to_even, Rounding::half_up}) {
      const QuantSpec spec = QuantSpec().per_channel(true).ch_axis(shape.axis).rounding(rounding);
      const auto g = grid_ref(scale, zp, spec, axis);
      const at::Tensor y = fake_quantize(x, scale, zp, spec);
      EXPECT_TRUE(same_values(y, test::fake_quant_tensor_ref<float>(x, g))) << x.sizes();
      const at::Tensor dy = torch::randn(shape.sizes);
      EXPECT_TRUE(
          same_values(input_grad(x, scale, zp, spec, dy), test::ste_tensor_ref<float>(x, dy, g)))
          << x.sizes();
      if (rounding == Rounding::half_to_even) {
        std::vector<int64_t> shape(x.dim(), 1);
        shape[axis] = -1;
        const at::Tensor scale_b = scale.reshape(shape);
        EXPECT_TRUE(test::same_values_as_aten(
            y, at::fake_quantize_per_channel_affine(x, scale, zp, axis, -128, 127), x, scale_b))
            << x.sizes();
        const at::Tensor leaf = x.clone().requires_grad_(true);
        const at::Tensor aten_dx = torch::autograd::grad(
            {at::fake_quantize_per_channel_affine(leaf, scale, zp, axis, -128, 127)}, {leaf},
            {dy})[0];
        EXPECT_TRUE(
            test::same_values_as_aten(input_grad(x, scale, zp, spec, dy), aten_dx, x, scale_b))
            << x.sizes();
      }
      const at::Tensor xd = x.to(at::kDouble);
      EXPECT_TRUE(same_values(fake_quantize(xd, scale, zp, spec),
                              test::fake_quant_tensor_ref<double>(xd, g)))
          << x.sizes();
    }
  }
}

TEST(FakeQuantize, OneElementChannels) {
  torch::manual_seed(3);
  for (const auto& sizes : std::vector<std::vector<int64_t>>{{6, 1}, {1, 6}, {6}, {6, 1, 1}}) {
    const at::Tensor x = torch::randn(sizes);
    const int64_t axis = sizes.size() == 2 && sizes[0] == 1 ? 1 : 0;
    const at::Tensor scale = torch::rand({6}) * 0.05 + 0.001;
    const QuantSpec spec = QuantSpec().per_channel(true).ch_axis(axis);
    const at::Tensor zp = torch::zeros({6}, torch::kInt);
    EXPECT_TRUE(
        same_values(fake_quantize(x, scale, zp, spec),
                    test::fake_quant_tensor_ref<float>(x, grid_ref(scale, zp, spec, axis))));
    std::vector<int64_t> shape(x.dim(), 1);
    shape[axis] = -1;
    EXPECT_TRUE(test::same_values_as_aten(
        fake_quantize(x, scale, zp, spec),
        at::fake_quantize_per_channel_affine(x, scale, zp, axis, -128, 127), x,
        scale.reshape(shape)));
  }
}

TEST(FakeQuantize, NonContiguousInputs) {
  torch::manual_seed(4);
  const at::Tensor base = torch::randn({33, 20}) * 2;
  const std::vector<at::Tensor> views = {base.t(), base.slice(1, 0, 20, 2),
                                         base.slice(0, 1, 33, 3).t()};
  for (const at::Tensor& x : views) {
    ASSERT_FALSE(x.is_contiguous());
    const at::Tensor y = fake_quantize(x, scale1(0.01), zp1(), QuantSpec());
    EXPECT_TRUE(same_values(y, fake_quantize(x.contiguous(), scale1(0.01), zp1(), QuantSpec())));
    const at::Tensor dy = torch::randn(x.sizes()).t().contiguous().t();  // non-contiguous dy too
    EXPECT_TRUE(same_values(
        input_grad(x, scale1(0.01), zp1(), QuantSpec(), dy),
        test::ste_tensor_ref<float>(x, dy, grid_ref(scale1(0.01), zp1(), QuantSpec(), -1))));
    const int64_t channels = x.size(1);
    const at::Tensor scale = torch::rand({channels}) * 0.02 + 0.001;
    const at::Tensor zp = torch::zeros({channels}, torch::kInt);
    const QuantSpec spec = QuantSpec().per_channel(true).ch_axis(1);
    EXPECT_TRUE(
        test::same_values_as_aten(fake_quantize(x, scale, zp, spec),
                                  at::fake_quantize_per_channel_affine(x, scale, zp, 1, -128, 127),
                                  x, scale.reshape({1, -1})));
  }
}

TEST(FakeQuantize, PowerOfTwoScales) {
  torch::manual_seed(5);
  const at::Tensor x = torch::randn({1000}) * 4;
  const QuantSpec spec = QuantSpec().power_of_two(true);
  const auto qparams = compute_qparams(x.min().reshape({1}), x.max().reshape({1}), spec);
  const float s = qparams.first.item<float>();
  int exponent = 0;
  EXPECT_EQ(std::frexp(s, &exponent), 0.5f) << s << " is not a power of two";
  const at::Tensor y = fake_quantize(x, qparams.first, qparams.second, spec);
  // A power-of-two scale makes y / s an exact integer in [-128, 127].
  const at::Tensor steps = y / s;
  EXPECT_TRUE(same_values(steps, steps.round()));
  EXPECT_GE(steps.min().item<float>(), -128);
  EXPECT_LE(steps.max().item<float>(), 127);
  EXPECT_TRUE(test::same_values_as_aten(y, at::fake_quantize_per_tensor_affine(x, s, 0, -128, 127),
                                        x, torch::full({}, s)));
}

TEST(FakeQuantize, DoubleAgreesWithFloatWithinOneStep) {
  torch::manual_seed(6);
  const at::Tensor x = torch::randn({4096}) * 3;
  const double s = 0.0173;
  const at::Tensor yf = fake_quantize(x, scale1(s), zp1(), QuantSpec());
  const at::Tensor yd = fake_quantize(x.to(at::kDouble), scale1(s), zp1(), QuantSpec());
  // float rounds x * (1/s) in float: a value within a float ulp of a tie may land on the other
  // side, one quantization step (s) away; the scale itself differs by float's rounding of s.
  const double kOneStep = s * (1 + 1e-6);
  EXPECT_LE((yf.to(at::kDouble) - yd).abs().max().item<double>(), kOneStep);
  // And nearly always agree exactly.
  EXPECT_GT(((yf.to(at::kDouble) - yd).abs() < 1e-6).to(at::kDouble).mean().item<double>(), 0.99);
}

TEST(FakeQuantize, NoGradientToScaleOrZeroPoint) {
  const at::Tensor x = torch::randn({10}, torch::requires_grad());
  const at::Tensor scale = torch::full({1}, 0.1f, torch::requires_grad());
  fake_quantize(x, scale, zp1(), QuantSpec()).sum().backward();
  EXPECT_TRUE(x.grad().defined());
  EXPECT_FALSE(scale.grad().defined());
}

TEST(FakeQuantize, StraightThroughIsTheSurrogateDerivative) {
  // Eq. 5 is the derivative of y~(x) = clamp(x / s + d, lo, hi) * s with the rounding offset
  // d = round(x / s) - x / s frozen at the evaluation point. Central differences in double.
  torch::manual_seed(7);
  const double s = 0.05;
  const at::Tensor x = (torch::randn({64}, torch::kDouble) * 4);
  const at::Tensor v = x / s;
  const at::Tensor d = v.round() - v;
  const auto surrogate = [&](const at::Tensor& xx) { return at::clamp(xx / s + d, -128, 127) * s; };
  // The surrogate is piecewise linear with kinks where round(x / s) sits on quant_min or
  // quant_max exactly; those elements are left out. Elsewhere a step this small never crosses
  // a kink and central differences of a linear function are exact up to rounding.
  constexpr double kStep = 1e-7;
  constexpr double kFiniteDifferenceTolerance = 1e-6;
  const at::Tensor fd = (surrogate(x + kStep) - surrogate(x - kStep)) / (2 * kStep);
  const at::Tensor dx = input_grad(x, scale1(s), zp1(), QuantSpec(), torch::ones_like(x));
  const at::Tensor kink = (v.round() == 127) | (v.round() == -128);
  EXPECT_TRUE(torch::allclose(dx.masked_fill(kink, 0), fd.masked_fill(kink, 0), 0,
                              kFiniteDifferenceTolerance));
  EXPECT_GT((dx == 0).sum().item<int64_t>(), 0) << "seed gives no saturated element";
}

// ---- Errors. ----

TEST(FakeQuantizeErrors, BadScales) {
  const at::Tensor x = torch::randn({4});
  for (double bad : {0.0, -0.1, kNaN, kInf}) {
    EXPECT_TRUE(throws_with([&] { fake_quantize(x, scale1(bad), zp1(), QuantSpec()); },
                            "must be finite and positive"))
        << bad;
  }
  EXPECT_TRUE(throws_with([&] { fake_quantize(x, scale1(1e-40), zp1(), QuantSpec()); },
                          "finite, normalized"));
  EXPECT_TRUE(
      throws_with([&] { fake_quantize(x, torch::full({2}, 0.1f), torch::zeros({2}), QuantSpec()); },
                  "per-tensor scale must have exactly one element"));
  EXPECT_TRUE(throws_with(
      [&] {
        fake_quantize(torch::randn({3, 4}), torch::full({3}, 0.1f), torch::zeros({3}),
                      QuantSpec().per_channel(true).ch_axis(1));
      },
      "per-channel scale must have shape {4}"));
  EXPECT_TRUE(throws_with(
      [&] {
        const at::Tensor s = torch::tensor({0.1f, -1.0f, 0.2f, 0.3f});
        fake_quantize(torch::randn({3, 4}), s, torch::zeros({4}),
                      QuantSpec().per_channel(true).ch_axis(1));
      },
      "scale[1] = -1"));
}

TEST(FakeQuantizeErrors, BadAxisDtypeAndZeroPoint) {
  const at::Tensor x = torch::randn({3, 4});
  for (int64_t axis : {2, -3}) {
    EXPECT_TRUE(throws_with(
        [&] {
          fake_quantize(x, torch::full({3}, 0.1f), torch::zeros({3}),
                        QuantSpec().per_channel(true).ch_axis(axis));
        },
        "is out of range for x with 2 dimensions"));
  }
  EXPECT_TRUE(throws_with(
      [&] { fake_quantize(torch::ones({3}, torch::kInt), scale1(0.1), zp1(), QuantSpec()); },
      "x must be float32 or float64, got Int"));
  EXPECT_TRUE(throws_with(
      [&] { fake_quantize(torch::ones({3}, torch::kHalf), scale1(0.1), zp1(), QuantSpec()); },
      "x must be float32 or float64, got Half"));
  EXPECT_TRUE(throws_with([&] { fake_quantize(x, scale1(0.1), zp1(128), QuantSpec()); },
                          "outside the quant range [-128, 127]"));
  EXPECT_TRUE(
      throws_with([&] { fake_quantize(x, scale1(0.1), torch::full({1}, 0.5f), QuantSpec()); },
                  "zero points must be integers"));
  EXPECT_TRUE(
      throws_with([&] { fake_quantize(x, scale1(0.1), zp1(), QuantSpec().quant_range(5, 5)); },
                  "must be less than quant_max"));
  EXPECT_TRUE(throws_with(
      [&] {
        fake_quantize(torch::scalar_tensor(1.0), scale1(0.1), zp1(), QuantSpec().per_channel(true));
      },
      "at least one dimension"));
}

TEST(FakeQuantizeErrors, DoubleBackwardRefused) {
  const at::Tensor x = torch::randn({4}, torch::requires_grad());
  const at::Tensor y = fake_quantize(x, scale1(0.1), zp1(), QuantSpec());
  EXPECT_TRUE(
      throws_with([&] { torch::autograd::grad({y.sum()}, {x}, {}, true, /*create_graph=*/true); },
                  "double backward"));
}

}  // namespace
}  // namespace calq
