// Metrics of calq/analysis/metrics.h on cases computed by hand.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "calq/analysis/metrics.h"
#include "calq/quant/qparams.h"

namespace {

using calq::analysis::ClippingMeter;
using calq::analysis::DivergenceMeter;
using calq::analysis::SimilarityMeter;

// Sums of a handful of exactly representable values: float64 rounding only.
constexpr double kTight = 1e-12;

TEST(Similarity, HandComputedPair) {
  // x = (3, 4), y = (3, 4.5): signal 25, noise 0.25 -> SQNR 20 dB exactly.
  SimilarityMeter m;
  m.add(torch::tensor({3.0f, 4.0f}), torch::tensor({3.0f, 4.5f}));
  const auto s = m.result();
  EXPECT_EQ(s.count, 2);
  EXPECT_NEAR(s.sqnr_db, 20.0, kTight);
  EXPECT_NEAR(s.cosine, (9.0 + 18.0) / std::sqrt(25.0 * (9.0 + 20.25)), kTight);
  EXPECT_DOUBLE_EQ(s.max_abs_err, 0.5);
  EXPECT_DOUBLE_EQ(s.mse, 0.125);
}

TEST(Similarity, BatchesAccumulateAsOneTensor) {
  torch::manual_seed(3);
  const at::Tensor x = torch::randn({1000});
  const at::Tensor y = x + 0.05 * torch::randn({1000});
  SimilarityMeter whole, parts;
  whole.add(x, y);
  parts.add(x.narrow(0, 0, 300), y.narrow(0, 0, 300));
  parts.add(x.narrow(0, 300, 700).reshape({7, 100}), y.narrow(0, 300, 700).reshape({7, 100}));
  EXPECT_NEAR(whole.result().sqnr_db, parts.result().sqnr_db, 1e-9);
  EXPECT_NEAR(whole.result().cosine, parts.result().cosine, 1e-12);
  EXPECT_DOUBLE_EQ(whole.result().max_abs_err, parts.result().max_abs_err);
}

TEST(Similarity, EdgeCases) {
  SimilarityMeter exact;
  exact.add(torch::tensor({1.0f, -2.0f}), torch::tensor({1.0f, -2.0f}));
  EXPECT_TRUE(std::isinf(exact.result().sqnr_db) && exact.result().sqnr_db > 0);
  EXPECT_DOUBLE_EQ(exact.result().cosine, 1.0);
  SimilarityMeter zeros;
  zeros.add(torch::zeros({4}), torch::zeros({4}));
  EXPECT_DOUBLE_EQ(zeros.result().cosine, 1.0);
  SimilarityMeter one_zero;
  one_zero.add(torch::zeros({2}), torch::ones({2}));
  EXPECT_DOUBLE_EQ(one_zero.result().cosine, 0.0);
  EXPECT_TRUE(std::isinf(one_zero.result().sqnr_db) && one_zero.result().sqnr_db < 0);
  SimilarityMeter opposite;
  opposite.add(torch::tensor({1.0f, 2.0f}), torch::tensor({-1.0f, -2.0f}));
  EXPECT_NEAR(opposite.result().cosine, -1.0, kTight);
}

TEST(Similarity, Errors) {
  SimilarityMeter m;
  try {
    m.add(torch::zeros({2}), torch::zeros({3}));
    FAIL() << "shape mismatch accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("must agree"), std::string::npos) << e.what();
  }
  try {
    m.add(torch::tensor({std::nanf("")}), torch::zeros({1}));
    FAIL() << "NaN accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite"), std::string::npos) << e.what();
  }
}

// A quantizer's known SQNR: on a grid of step s, values placed a quarter step off the grid
// points all have error s / 4, so SQNR = 10 log10(mean(x^2) / (s / 4)^2).
TEST(Similarity, UniformQuantizationNoise) {
  const double s = 0.5;
  std::vector<float> values;
  for (int k = -20; k <= 20; ++k) values.push_back(static_cast<float>((k + 0.25) * s));
  const at::Tensor x = torch::tensor(values);
  const at::Tensor y = torch::round(x / s) * s;
  double signal = 0.0;
  for (float v : values) signal += static_cast<double>(v) * v;
  const double expected = 10.0 * std::log10(signal / values.size() / ((s / 4) * (s / 4)));
  EXPECT_NEAR(calq::analysis::sqnr_db(x, y), expected, 1e-6);
}

TEST(Clipping, CountsValuesBeyondTheGrid) {
  // qint4 [-8, 7], scale 1: in range while x in [-8.5, 7.5].
  const calq::QuantSpec spec(calq::QuantDtype::qint4);
  ClippingMeter m;
  m.add(torch::tensor({-9.0f, -8.5f, -8.0f, 0.0f, 7.5f, 7.6f, 100.0f, 3.0f}), torch::tensor({1.0f}),
        torch::tensor({0}), spec);
  EXPECT_EQ(m.clipped(), 3);
  EXPECT_EQ(m.count(), 8);
  EXPECT_DOUBLE_EQ(m.percent(), 37.5);
}

TEST(Clipping, PerChannelAndUnsignedGrids) {
  // Two channels along axis 0 with scales 1 and 10, qint8.
  const calq::QuantSpec spec = calq::QuantSpec(calq::QuantDtype::qint8).per_channel(true);
  ClippingMeter m;
  m.add(torch::tensor({{200.0f, 100.0f}, {200.0f, 2000.0f}}), torch::tensor({1.0f, 10.0f}),
        torch::tensor({0, 0}), spec);
  // Channel 0 (scale 1): 200 clips, 100 does not; channel 1 (scale 10): 200 -> 20 does not,
  // 2000 -> 200 clips. A per-tensor scale of 1 would clip three.
  EXPECT_EQ(m.clipped(), 2);
  ClippingMeter per_tensor;
  per_tensor.add(torch::tensor({{200.0f, 100.0f}, {200.0f, 2000.0f}}), torch::tensor({1.0f}),
                 torch::tensor({0}), calq::QuantSpec(calq::QuantDtype::qint8));
  EXPECT_EQ(per_tensor.clipped(), 3);
  // Unsigned quint4 [0, 15]: negative values below -1/2 step saturate to 0.
  const calq::QuantSpec u = calq::QuantSpec(calq::QuantDtype::qint4).unsigned_grid(true);
  ClippingMeter m3;
  m3.add(torch::tensor({-1.0f, -0.4f, 15.4f, 15.6f}), torch::tensor({1.0f}), torch::tensor({0}), u);
  EXPECT_EQ(m3.clipped(), 2);
}

TEST(Divergence, KlAgreementAndSqnrOfLogits) {
  // Row 1: p = softmax(0, 0) = (1/2, 1/2) against q = softmax(0, ln 3) = (1/4, 3/4):
  // KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3). Row 2: identical rows, KL 0.
  const at::Tensor reference = torch::tensor({{0.0, 0.0}, {5.0, 1.0}}, torch::kDouble);
  const at::Tensor test = torch::tensor({{0.0, std::log(3.0)}, {5.0, 1.0}}, torch::kDouble);
  EXPECT_NEAR(calq::analysis::kl_divergence(reference, test), 0.25 * std::log(4.0 / 3.0), kTight);
  DivergenceMeter m;
  m.add(reference.narrow(0, 0, 1), test.narrow(0, 0, 1));
  m.add(reference.narrow(0, 1, 1), test.narrow(0, 1, 1));
  const auto d = m.result();
  EXPECT_TRUE(d.classifier);
  EXPECT_EQ(d.samples, 2);
  EXPECT_NEAR(d.kl, 0.25 * std::log(4.0 / 3.0), kTight);
  EXPECT_DOUBLE_EQ(d.top1_agreement, 50.0);  // row 1: argmax 0 (first of a tie) vs 1
  EXPECT_DOUBLE_EQ(d.disagreement_pct(), 50.0);
  EXPECT_DOUBLE_EQ(d.divergence(), d.kl);
  // SQNR over every value: signal 26, noise (ln 3)^2.
  EXPECT_NEAR(d.sqnr_db, 10.0 * std::log10(26.0 / (std::log(3.0) * std::log(3.0))), 1e-9);
}

TEST(Divergence, NonClassifierOutputsUseSqnr) {
  DivergenceMeter m;
  m.add(torch::tensor({{3.0f}, {4.0f}}), torch::tensor({{3.0f}, {4.5f}}));
  const auto d = m.result();
  EXPECT_FALSE(d.classifier);
  EXPECT_NEAR(d.sqnr_db, 20.0, kTight);
  EXPECT_NEAR(d.divergence(), 0.01, 1e-12);  // noise / signal = 0.25 / 25
  EXPECT_DOUBLE_EQ(d.disagreement_pct(), 0.0);
}

}  // namespace
