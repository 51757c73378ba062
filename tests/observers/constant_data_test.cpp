// Constant and near-constant data (a saturated ReLU6, a bias map, an all-zero channel): every
// observer gives a finite scale that represents the value within half a step.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "calq/fake_quantize.h"
#include "calq/observers/registry.h"
#include "calq/quant/fake_quant.h"

namespace calq {
namespace {

// Observers whose definition keeps the data's range (clip clamps to [xmin, xmax] by
// definition, fixed_scale ignores the data).
const std::vector<std::string> kDataObservers = {"min_max", "percentile", "clip_std",
                                                 "mse",     "kl",         "mix"};

struct Case {
  QuantDtype dtype;
  bool power_of_two;
};

// |fq(x) - x| for the quantizer's scale, checked against half a step (plus the data's own
// spread for near-constant data, which no single level can represent better).
void expect_represented(const std::string& observer, const at::Tensor& data, double spread,
                        const Case& c) {
  SCOPED_TRACE(observer + " " + to_string(c.dtype) + (c.power_of_two ? " pow2" : "") + " value " +
               std::to_string(data.mean().item<double>()));
  const QuantSpec spec = QuantSpec(c.dtype).power_of_two(c.power_of_two);
  FakeQuantize fq(FakeQuantMethod::fake_quant, observers::make_observer(observer, spec));
  fq->set_state(FakeQuantState::CALIBRATION);
  fq->forward(data);
  fq->forward(data);
  fq->set_state(FakeQuantState::VALIDATION);
  at::Tensor y;
  ASSERT_NO_THROW(y = fq->forward(data));
  const double scale = fq->scale().item<double>();
  ASSERT_TRUE(std::isfinite(scale) && scale > 0) << scale;
  const double value = data.abs().max().item<double>();
  // A power-of-two scale clamped at 2^-1 cannot reach large values (reported as clamped).
  if (c.power_of_two && fq->scale_clamped()) return;
  const double error = (y - data).abs().max().item<double>();
  // level * scale is computed in float32: allow two float32 ulps of the value beyond s / 2.
  EXPECT_LE(error, scale / 2 + value * 2.4e-7 + spread) << "scale " << scale << " value " << value;
}

TEST(ConstantData, EveryObserverRepresentsTheValue) {
  for (const Case& c : {Case{QuantDtype::qint8, false}, Case{QuantDtype::qint4, false},
                        Case{QuantDtype::qint16, false}, Case{QuantDtype::qint8, true}}) {
    for (const std::string& observer : kDataObservers) {
      for (double v : {3.0, 6.0, -2.0, 0.0, 1e-3, -0.37}) {
        expect_represented(observer, torch::full({4, 8, 8}, v), 0.0, c);
      }
      // Near-constant: 6 - |N(0, 1e-4)|, one-sided like a ReLU6 in saturation.
      torch::manual_seed(3);
      const at::Tensor near = 6.0 - torch::randn({4, 8, 8}).abs() * 1e-4;
      expect_represented(observer, near, (near.max() - near.min()).item<double>(), c);
    }
  }
}

TEST(ConstantData, PercentileOfOneBinKeepsTheValue) {
  // Every value in one bin: the bin centre (2.999...) lies below the data; the observer keeps
  // [3, 3] instead of returning min > max.
  auto observer = observers::make_observer("percentile", QuantSpec());
  observer->update(torch::full({100}, 3.0f));
  at::Tensor lo, hi;
  std::tie(lo, hi) = observer->range();
  EXPECT_EQ(lo.item<float>(), 3.0f);
  EXPECT_EQ(hi.item<float>(), 3.0f);
  auto negative = observers::make_observer("mix", QuantSpec());
  negative->update(torch::full({100}, -2.0f));
  std::tie(lo, hi) = negative->range();
  EXPECT_EQ(lo.item<float>(), -2.0f);
  EXPECT_EQ(hi.item<float>(), -2.0f);
}

}  // namespace
}  // namespace calq
