// The kernels of src/kernels/fake_quant_kernels.h called directly: outputs pre-filled with a
// sentinel so that an element a kernel forgets to write shows, every work decomposition
// (long slices, slices split across items, per-element rows, short slices), float and double.
#include "kernels/fake_quant_kernels.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <vector>

#include "quant/reference.h"
#include "quant/test_util.h"

namespace calq {
namespace {

using test::kSizes;
using test::same_values;

// Not a multiple of any scale used below and outside every quant range: never a valid output.
constexpr double kSentinel = -12345.678;

struct Shape {
  std::vector<int64_t> sizes;
  int64_t axis;  // -1: per tensor
};

std::vector<Shape> shapes() {
  std::vector<Shape> all;
  for (int64_t n : kSizes) {
    all.push_back({{n}, -1});
    if (n < 40000) {
      all.push_back({{3, 5, n}, 1});  // slices of n (per-element rows when n < 16)
      all.push_back({{n, 3}, 1});     // channels on the last axis
    }
  }
  all.push_back({{2, 3, 40000}, 1});  // slices longer than one work item
  all.push_back({{4000, 6}, 0});      // 4000 channels of 6 elements
  all.push_back({{2, 70000, 2}, 1});  // rows too long for per-element parameters
  return all;
}

kernels::Grid make_grid(const at::Tensor& x, const Shape& shape, Rounding rounding) {
  kernels::Grid grid;
  const int64_t channels = shape.axis < 0 ? 1 : x.size(shape.axis);
  grid.scale = (torch::rand({channels}, torch::kDouble) * 0.04 + 0.004);
  grid.zero_point = torch::randint(-3, 4, {channels}, torch::kLong);
  grid.quant_min = -128;
  grid.quant_max = 127;
  grid.rounding = rounding;
  grid.axis = shape.axis;
  return grid;
}

test::GridRef to_ref(const kernels::Grid& grid) {
  test::GridRef g;
  g.scale.assign(grid.scale.data_ptr<double>(), grid.scale.data_ptr<double>() + grid.scale.numel());
  g.zero_point.assign(grid.zero_point.data_ptr<int64_t>(),
                      grid.zero_point.data_ptr<int64_t>() + grid.zero_point.numel());
  g.quant_min = grid.quant_min;
  g.quant_max = grid.quant_max;
  g.rounding = grid.rounding;
  g.axis = grid.axis;
  return g;
}

template <typename T>
void check_all_shapes(at::ScalarType dtype) {
  torch::manual_seed(31);
  for (const Shape& shape : shapes()) {
    for (auto rounding : {Rounding::half_to_even, Rounding::half_up}) {
      const at::Tensor x = (torch::randn(shape.sizes) * 3).to(dtype);
      const at::Tensor dy = torch::randn(shape.sizes).to(dtype);
      const kernels::Grid grid = make_grid(x, shape, rounding);
      const test::GridRef g = to_ref(grid);

      at::Tensor y = torch::full(shape.sizes, kSentinel, x.options());
      kernels::fake_quant_forward(x, grid, y);
      EXPECT_TRUE(same_values(y, test::fake_quant_tensor_ref<T>(x, g))) << x.sizes();

      at::Tensor dx = torch::full(shape.sizes, kSentinel, x.options());
      kernels::fake_quant_backward(x, dy, grid, dx);
      const at::Tensor dx_ref = test::ste_tensor_ref<T>(x, dy, g);
      EXPECT_TRUE(same_values(dx, dx_ref)) << x.sizes();

      at::Tensor dx_lsq = torch::full(shape.sizes, kSentinel, x.options());
      at::Tensor dscale = torch::full({grid.scale.numel()}, kSentinel, torch::kDouble);
      kernels::lsq_backward(x, dy, grid, dx_lsq, dscale);
      EXPECT_TRUE(same_values(dx_lsq, dx_ref)) << x.sizes();
      const std::vector<double> ds_ref = test::lsq_scale_grad_tensor_ref<T>(x, dy, g);
      // See lsq_test.cpp for the float bound; 133 bounds |q'| (quant range plus zero point).
      const double tolerance =
          (sizeof(T) == 4 ? 1e-4 : 1e-12) * dy.abs().sum().item<double>() * 133;
      for (int64_t c = 0; c < dscale.numel(); ++c) {
        EXPECT_NEAR(dscale[c].item<double>(), ds_ref[c], tolerance) << x.sizes() << " c " << c;
      }
    }
    if (shape.axis < 0) {
      const at::Tensor x = (torch::randn(shape.sizes) * 3).to(dtype);
      const at::Tensor dy = torch::randn(shape.sizes).to(dtype);
      const double alpha = 2.0;
      const double scale = alpha / 127.5;
      at::Tensor y = torch::full(shape.sizes, kSentinel, x.options());
      kernels::pact_forward(x, alpha, scale, -128, 127, Rounding::half_to_even, y);
      at::Tensor y_ref = at::empty_like(x);
      for (int64_t i = 0; i < x.numel(); ++i) {
        y_ref.data_ptr<T>()[i] = test::pact_ref<T>(x.data_ptr<T>()[i], T(alpha), T(scale), -128,
                                                   127, Rounding::half_to_even);
      }
      EXPECT_TRUE(same_values(y, y_ref)) << x.sizes();
      at::Tensor dx = torch::full(shape.sizes, kSentinel, x.options());
      const double dalpha = kernels::pact_backward(x, dy, alpha, dx);
      const at::Tensor inside = (x > -alpha) & (x < alpha);
      EXPECT_TRUE(same_values(dx, dy * inside.to(dtype))) << x.sizes();
      const double dalpha_ref = (dy.to(at::kDouble) * (x >= alpha)).sum().item<double>() -
                                (dy.to(at::kDouble) * (x <= -alpha)).sum().item<double>();
      // Sums of at most numel values of |dy| < 6: float lanes lose ~1e-7 relative per add.
      const double tolerance = (sizeof(T) == 4 ? 1e-4 : 1e-12) * dy.abs().sum().item<double>();
      EXPECT_NEAR(dalpha, dalpha_ref, tolerance) << x.sizes();
    }
  }
}

TEST(FakeQuantKernels, FloatAllDecompositions) {
  check_all_shapes<float>(at::kFloat);
}
TEST(FakeQuantKernels, DoubleAllDecompositions) {
  check_all_shapes<double>(at::kDouble);
}

TEST(FakeQuantKernels, EmptyWritesNothingAndZeroesScaleGradient) {
  kernels::Grid grid;
  grid.scale = torch::full({1}, 0.1, torch::kDouble);
  grid.zero_point = torch::zeros({1}, torch::kLong);
  grid.quant_min = -128;
  grid.quant_max = 127;
  const at::Tensor x = torch::empty({0});
  at::Tensor y = torch::empty({0});
  at::Tensor dscale = torch::full({1}, kSentinel, torch::kDouble);
  kernels::fake_quant_forward(x, grid, y);
  kernels::lsq_backward(x, x, grid, y, dscale);
  EXPECT_EQ(dscale.item<double>(), 0.0);
  EXPECT_EQ(kernels::pact_backward(x, x, 1.0, y), 0.0);
}

}  // namespace
}  // namespace calq
