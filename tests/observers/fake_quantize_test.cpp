// FakeQuantize: states, methods, lazy qparams, state names and round trip.

#include "calq/fake_quantize.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/observers/registry.h"
#include "calq/quant/fake_quant.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace {

using testing::value;

FakeQuantize make(FakeQuantMethod method, const std::string& observer = "min_max",
                  nlohmann::json observer_kwargs = nlohmann::json::object(),
                  nlohmann::json method_kwargs = nlohmann::json::object(),
                  QuantSpec spec = QuantSpec()) {
  return FakeQuantize(method, observers::make_observer(observer, spec, observer_kwargs),
                      fake_quantize_options(method, method_kwargs));
}

TEST(FakeQuantize, CalibrationObservesAndPassesThrough) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant);
  fq->set_state(FakeQuantState::CALIBRATION);
  const at::Tensor x = torch::tensor({-1.0f, 0.3f, 2.55f});
  const at::Tensor y = fq->forward(x);
  EXPECT_TRUE(y.is_same(x));
  EXPECT_EQ(fq->observer().batches_seen(), 1);
}

TEST(FakeQuantize, QatObservesAndQuantizes) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant, "min_max", {{"averaging_constant", 1.0}});
  const at::Tensor x = torch::tensor({-1.0f, 0.3f, 2.55f});
  const at::Tensor y = fq->forward(x);  // default state QAT
  EXPECT_EQ(fq->observer().batches_seen(), 1);
  const float s = 2.55f / 127.5f;  // = 0.02
  EXPECT_FLOAT_EQ(value(fq->scale()), s);
  EXPECT_TRUE(at::allclose(y, fake_quantize(x, fq->scale(), fq->zero_point(), QuantSpec())));
  // Scales follow the observer in QAT.
  fq->forward(x * 2);
  EXPECT_FLOAT_EQ(value(fq->scale()), 2 * s);
}

TEST(FakeQuantize, ValidationFreezesTheScale) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant, "min_max", {{"averaging_constant", 1.0}});
  fq->set_state(FakeQuantState::CALIBRATION);
  fq->forward(torch::tensor({-1.0f, 1.0f}));
  fq->set_state(FakeQuantState::VALIDATION);
  const at::Tensor y = fq->forward(torch::tensor({0.5f, 100.0f}));
  EXPECT_EQ(fq->observer().batches_seen(), 1);
  const float s = 1.0f / 127.5f;
  EXPECT_FLOAT_EQ(value(fq->scale()), s);
  EXPECT_FLOAT_EQ(y[1].item<float>(), 127 * s);  // saturated with the frozen scale
}

TEST(FakeQuantize, ValidationWithoutDataIsAnError) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant);
  fq->set_state(FakeQuantState::VALIDATION);
  EXPECT_THROW_WITH(fq->forward(torch::ones({2})), "observer has no data");
}

TEST(FakeQuantize, DoesNotDependOnTrainingMode) {
  FakeQuantize a = make(FakeQuantMethod::fake_quant), b = make(FakeQuantMethod::fake_quant);
  a->eval();
  b->train();
  const at::Tensor x = torch::randn({100});
  EXPECT_TRUE(at::equal(a->forward(x), b->forward(x)));
  EXPECT_EQ(a->observer().batches_seen(), 1);
}

TEST(FakeQuantize, KlUpdateIntervalHonoured) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant, "kl", {{"update_interval", 3}});
  fq->forward(torch::linspace(-1, 1, 1000));
  const float first = value(fq->scale());
  fq->forward(torch::linspace(-8, 8, 1000));  // batch 2: threshold not recomputed
  EXPECT_EQ(value(fq->scale()), first);
  fq->forward(torch::linspace(-8, 8, 1000));  // batch 3: recomputed
  EXPECT_GT(value(fq->scale()), first);
}

TEST(FakeQuantize, LsqInitialisesFromObserverAndLearns) {
  FakeQuantize fq = make(FakeQuantMethod::lsq, "min_max", {}, {{"grad_factor", 1.0}});
  auto params = fq->named_parameters();
  ASSERT_NE(params.find("scale"), nullptr);
  const at::Tensor x = torch::tensor({-1.0f, 0.3f, 2.55f});
  at::Tensor y = fq->forward(x);
  EXPECT_FLOAT_EQ(value(fq->scale()), 0.02f);
  EXPECT_TRUE(fq->initialized());
  y.sum().backward();
  const at::Tensor grad = params["scale"].grad();
  ASSERT_TRUE(grad.defined());
  // dy/ds = round(x/s) - x/s inside (grad_factor 1): x/s = -50, 15, 127.5 -> 127 clamped.
  // -50: 0; 15: 0; 127.5 rounds (half to even) to 128 -> clamped to 127 = quant_max.
  EXPECT_NEAR(value(grad), 127.0, 1e-3);
  // A later observer change does not overwrite the learned scale.
  fq->forward(x * 10);
  EXPECT_FLOAT_EQ(value(fq->scale()), 0.02f);
}

TEST(FakeQuantize, LsqKeepsALoadedScale) {
  FakeQuantize calibrated = make(FakeQuantMethod::lsq);
  calibrated->forward(torch::tensor({-1.0f, 2.55f}));
  FakeQuantize fresh = make(FakeQuantMethod::lsq);
  testing::round_trip(calibrated, fresh);
  EXPECT_TRUE(fresh->initialized());
  fresh->forward(torch::tensor({-100.0f, 100.0f}));
  EXPECT_FLOAT_EQ(value(fresh->scale()), 0.02f);
}

TEST(FakeQuantize, PactAlphaFromCalibrationOrDefault) {
  FakeQuantize fresh = make(FakeQuantMethod::pact);
  fresh->forward(torch::tensor({-1.0f, 2.0f}));  // QAT without prior data: alpha stays 6
  EXPECT_FLOAT_EQ(value(fresh->named_parameters()["alpha"]), 6.0f);
  EXPECT_FLOAT_EQ(value(fresh->scale()), 6.0f / 127.5f);

  // averaging_constant 0: the QAT batch does not move the calibrated range.
  FakeQuantize calibrated = make(FakeQuantMethod::pact, "min_max", {{"averaging_constant", 0.0}});
  calibrated->set_state(FakeQuantState::CALIBRATION);
  calibrated->forward(torch::tensor({-3.0f, 2.0f}));
  calibrated->set_state(FakeQuantState::QAT);
  at::Tensor y = calibrated->forward(torch::tensor({-5.0f, 1.0f}));
  EXPECT_FLOAT_EQ(value(calibrated->named_parameters()["alpha"]), 3.0f);
  // Clipped to -alpha = -3, then -3 / (3 / 127.5) = -127.5 rounds (half to even) to -128.
  EXPECT_FLOAT_EQ(y[0].item<float>(), -128.0f * 3.0f / 127.5f);
  y.sum().backward();
  EXPECT_TRUE(calibrated->named_parameters()["alpha"].grad().defined());

  FakeQuantize opted_out = make(FakeQuantMethod::pact, "min_max", {},
                                {{"alpha", 4.0}, {"init_alpha_from_observer", false}});
  opted_out->set_state(FakeQuantState::CALIBRATION);
  opted_out->forward(torch::tensor({-3.0f, 2.0f}));
  opted_out->set_state(FakeQuantState::QAT);
  opted_out->forward(torch::tensor({-3.0f, 2.0f}));
  EXPECT_FLOAT_EQ(value(opted_out->named_parameters()["alpha"]), 4.0f);
}

TEST(FakeQuantize, StateNamesAreStableAndRoundTrip) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant, "percentile");
  std::vector<std::string> names;
  for (const auto& b : fq->named_buffers()) names.push_back(b.key());
  for (const char* expected : {"scale", "zero_point", "initialized", "observer.min_val",
                               "observer.max_val", "observer.batches", "observer.histogram"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
  }
  fq->forward(torch::randn({1000}));
  FakeQuantize loaded = make(FakeQuantMethod::fake_quant, "percentile");
  testing::round_trip(fq, loaded);
  testing::expect_same_state(*fq, *loaded);
  loaded->set_state(FakeQuantState::VALIDATION);
  fq->set_state(FakeQuantState::VALIDATION);
  const at::Tensor x = torch::randn({50});
  EXPECT_TRUE(at::equal(fq->forward(x), loaded->forward(x)));
}

TEST(FakeQuantize, PerChannelWeights) {
  FakeQuantize fq = make(FakeQuantMethod::fake_quant, "min_max", {}, {},
                         QuantSpec().per_channel(true).ch_axis(0));
  const at::Tensor w = torch::tensor({{1.0f, -0.5f}, {0.0f, 0.0f}, {-2.55f, 1.0f}});
  fq->forward(w);
  const at::Tensor s = fq->scale();
  ASSERT_EQ(s.numel(), 3);
  EXPECT_FLOAT_EQ(s[2].item<float>(), 0.02f);
  EXPECT_TRUE(std::isfinite(s[1].item<float>()));
}

TEST(FakeQuantize, NamesAndKwargsErrors) {
  EXPECT_THROW_WITH(fake_quant_method_from_string("lsq2"), "valid methods: fake_quant, lsq, pact");
  EXPECT_THROW_WITH(fake_quant_state_from_string("train"),
                    "valid states: qat, calibration, validation");
  EXPECT_EQ(fake_quant_state_from_string("VALIDATION"), FakeQuantState::VALIDATION);
  EXPECT_THROW_WITH(make(FakeQuantMethod::lsq, "min_max", {}, {{"alpha", 1.0}}),
                    "valid keywords: grad_factor");
  EXPECT_THROW_WITH(make(FakeQuantMethod::pact, "min_max", {}, {{"alpha", -1.0}}), "alpha = -1");
  EXPECT_THROW_WITH(make(FakeQuantMethod::pact, "min_max", {}, {}, QuantSpec().per_channel(true)),
                    "per-tensor");
}

}  // namespace
}  // namespace calq
