// Unsigned grids (QuantSpec::unsigned_grid, eq. 1c): ranges, validation, scales, and fake
// quantization with zero point 0 and quant_min 0.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/quant/fake_quant.h"
#include "calq/quant/qparams.h"
#include "calq/quant/quant_spec.h"

namespace {

using calq::QuantDtype;
using calq::QuantSpec;

TEST(UnsignedGrid, RangesAndNames) {
  const QuantSpec u4 = QuantSpec(QuantDtype::qint4).unsigned_grid(true);
  EXPECT_EQ(u4.quant_min(), 0);
  EXPECT_EQ(u4.quant_max(), 15);
  EXPECT_EQ(QuantSpec(QuantDtype::qint8).unsigned_grid(true).quant_max(), 255);
  EXPECT_EQ(QuantSpec(QuantDtype::qint16).unsigned_grid(true).quant_max(), 65535);
  EXPECT_EQ(u4.str(), "quint4[0,15] per_tensor unsigned half_to_even");
  EXPECT_NE(u4, QuantSpec(QuantDtype::qint4));
  EXPECT_NO_THROW(u4.validate());
  EXPECT_NO_THROW(QuantSpec(QuantDtype::qint8).unsigned_grid(true).quant_range(0, 127).validate());
}

TEST(UnsignedGrid, Validation) {
  try {
    QuantSpec(QuantDtype::qint8).unsigned_grid(true).symmetric(false).validate();
    FAIL() << "unsigned + affine accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("zero point 0"), std::string::npos) << e.what();
  }
  try {
    QuantSpec(QuantDtype::qint8).unsigned_grid(true).quant_range(1, 255).validate();
    FAIL() << "an unsigned grid not starting at 0 accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("starts at 0"), std::string::npos) << e.what();
  }
  try {
    QuantSpec(QuantDtype::qint4).unsigned_grid(true).quant_range(0, 16).validate();
    FAIL() << "a range beyond quint4 accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("quint4 range [0, 15]"), std::string::npos) << e.what();
  }
}

TEST(UnsignedGrid, ScaleIsMaxOverQuantMax) {
  // eq. 1c: s = max(M, 0) / quant_max; the minimum is ignored (negatives saturate to 0).
  const QuantSpec u4 = QuantSpec(QuantDtype::qint4).unsigned_grid(true);
  auto q = calq::compute_qparams(torch::tensor({-3.0}), torch::tensor({7.5}), u4);
  EXPECT_FLOAT_EQ(q.first.item<float>(), 0.5f);
  EXPECT_EQ(q.second.item<int>(), 0);
  // All-negative data: the scale floor, never 0.
  q = calq::compute_qparams(torch::tensor({-3.0}), torch::tensor({-1.0}), u4);
  EXPECT_FLOAT_EQ(q.first.item<float>(), static_cast<float>(calq::kMinScale));
  // Power of two (eq. 1b, inside the clamp [2^-14, 2^-1]): 1.875 / 15 = 0.125 exactly stays,
  // 1.9 / 15 = 0.1267 rounds up to 0.25.
  q = calq::compute_qparams(torch::tensor({0.0}), torch::tensor({1.875}),
                            QuantSpec(u4).power_of_two(true));
  EXPECT_FLOAT_EQ(q.first.item<float>(), 0.125f);
  q = calq::compute_qparams(torch::tensor({0.0}), torch::tensor({1.9}),
                            QuantSpec(u4).power_of_two(true));
  EXPECT_FLOAT_EQ(q.first.item<float>(), 0.25f);
}

TEST(UnsignedGrid, FakeQuantizeKeepsSixteenLevelsOnThePositiveSide) {
  const QuantSpec u4 = QuantSpec(QuantDtype::qint4).unsigned_grid(true);
  const QuantSpec s4(QuantDtype::qint4);
  const at::Tensor x = torch::tensor({-2.0f, -0.2f, 0.0f, 0.74f, 3.3f, 7.26f, 7.6f, 20.0f});
  // Unsigned, threshold 7.5 -> s = 0.5: levels 0, 0.5, ..., 7.5.
  const at::Tensor y = calq::fake_quantize(x, torch::tensor({0.5f}), torch::tensor({0}), u4);
  const at::Tensor expected = torch::tensor({0.0f, 0.0f, 0.0f, 0.5f, 3.5f, 7.5f, 7.5f, 7.5f});
  EXPECT_TRUE(torch::equal(y, expected)) << y;
  // Signed, same threshold -> s = 1: levels 0, 1, ..., 7 on the positive side.
  const at::Tensor z = calq::fake_quantize(x, torch::tensor({1.0f}), torch::tensor({0}), s4);
  const at::Tensor expected_signed =
      torch::tensor({-2.0f, 0.0f, 0.0f, 1.0f, 3.0f, 7.0f, 7.0f, 7.0f});
  EXPECT_TRUE(torch::equal(z, expected_signed)) << z;
  const at::Tensor ramp = torch::linspace(0, 7.5, 1000);
  EXPECT_EQ(std::get<0>(torch::_unique(calq::fake_quantize(ramp, torch::tensor({0.5f}),
                                                           torch::tensor({0}), u4)))
                .numel(),
            16);
  EXPECT_EQ(std::get<0>(torch::_unique(calq::fake_quantize(ramp, torch::tensor({1.0f}),
                                                           torch::tensor({0}), s4)))
                .numel(),
            8);
}

}  // namespace
