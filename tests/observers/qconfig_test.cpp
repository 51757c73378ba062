// QConfig: get_default_qconfig rules, presets, validation, JSON round trip.

#include "calq/qconfig.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>

#include "observers/observer_test_util.h"

namespace calq {
namespace {

TEST(QConfig, DefaultsFollowTheSeed) {
  const QConfig q = get_default_qconfig();
  ASSERT_TRUE(q.activation && q.weight);
  EXPECT_EQ(q.activation->method, "fake_quant");
  EXPECT_EQ(q.activation->observer, "min_max");
  EXPECT_FALSE(q.activation->spec().per_channel());
  const QuantSpec w = q.weight->spec();
  EXPECT_TRUE(w.per_channel());
  EXPECT_EQ(w.ch_axis(), 0);
  EXPECT_TRUE(w.symmetric());
  EXPECT_EQ(w.dtype(), QuantDtype::qint8);
  FakeQuantize fq = q.weight->create();
  EXPECT_EQ(fq->observer().kind(), "min_max");
  EXPECT_TRUE(fq->spec().per_channel());
}

TEST(QConfig, QkwargsReachSpecObserverAndMethod) {
  const QConfig q = get_default_qconfig(
      std::string("pact"), std::string("lsq"), "percentile", "mse",
      {{"dtype", "qint16"}, {"percentile", 99.9}, {"alpha", 3.0}, {"rounding", "half_up"}},
      {{"averaging_constant", 0}, {"stride", 2}});
  FakeQuantize a = q.activation->create();
  EXPECT_EQ(a->spec().dtype(), QuantDtype::qint16);
  EXPECT_EQ(a->spec().rounding(), Rounding::half_up);
  EXPECT_EQ(a->observer().config()["percentile"], 99.9);
  EXPECT_FLOAT_EQ(a->named_parameters()["alpha"].item<float>(), 3.0f);
  FakeQuantize w = q.weight->create();
  EXPECT_EQ(w->method(), FakeQuantMethod::lsq);
  EXPECT_EQ(w->observer().config()["stride"], 2);
  EXPECT_EQ(w->observer().config()["averaging_constant"], 0.0);
}

TEST(QConfig, NullFakeQuantLeavesFloat) {
  const QConfig q = get_default_qconfig(c10::nullopt);
  EXPECT_FALSE(q.activation.has_value());
  EXPECT_TRUE(q.weight.has_value());
  EXPECT_EQ(qconfig_float_output(), q);
}

TEST(QConfig, Presets) {
  const QConfig calib = get_default_calib_qconfig();
  ASSERT_TRUE(calib.activation);
  EXPECT_FALSE(calib.weight);
  EXPECT_EQ(calib.activation->observer, "percentile");
  FakeQuantize fq = calib.activation->create();
  EXPECT_EQ(fq->observer().config()["bins"], 2048);
  EXPECT_EQ(fq->observer().config()["percentile"], 99.99);
  EXPECT_EQ(qconfig_8bit(), get_default_qconfig());
  EXPECT_EQ(qconfig_16bit_activation().activation->spec().dtype(), QuantDtype::qint16);
  EXPECT_EQ(qconfig_16bit_activation().weight->spec().dtype(), QuantDtype::qint8);
  FakeQuantize fixed = qconfig_fixed_activation_scale(0.5).activation->create();
  EXPECT_FLOAT_EQ(fixed->scale().item<float>(), 0.5f);
}

TEST(QConfig, ValidationListsValidChoices) {
  EXPECT_THROW_WITH(get_default_qconfig(std::string("fq")), "valid methods: fake_quant, lsq, pact");
  EXPECT_THROW_WITH(
      get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "minmax"),
      "valid observers: min_max, fixed_scale, clip");
  EXPECT_THROW_WITH(get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                        "min_max", "min_max", {{"percentile", 99.0}}),
                    "unknown keyword 'percentile'");
  EXPECT_THROW_WITH(get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                        "percentile", "min_max", {{"percentile", 120.0}}),
                    "percentile = 120");
  EXPECT_THROW_WITH(get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                        "min_max", "percentile"),
                    "per-tensor only");
  EXPECT_THROW_WITH(get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                        "min_max", "min_max", {{"dtype", "qint9"}}),
                    "qint9");
  EXPECT_THROW_WITH(get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "kl",
                                        "min_max", {{"bins", 128}}),
                    "bins = 128");
  EXPECT_THROW_WITH(get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                        "clip_std", "min_max", {{"std_scale", -1.0}}),
                    "std_scale = -1");
}

TEST(QConfig, PactWeightsArePerTensorOnly) {
  // The default weight recipe is per-channel; PACT learns one clip per tensor, so the
  // combination is rejected where the qconfig is made, naming the valid choices.
  EXPECT_THROW_WITH(get_default_qconfig(std::string("pact"), std::string("pact")),
                    "For weights use fake_quant or lsq, or set per_channel false");
  // Per-tensor PACT weights are a valid recipe.
  const QConfig q = get_default_qconfig(std::string("pact"), std::string("pact"), "min_max",
                                        "min_max", {}, {{"per_channel", false}});
  EXPECT_EQ(q.weight->create()->method(), FakeQuantMethod::pact);
}

TEST(QConfig, JsonRoundTripThroughAFile) {
  const QConfig q = get_default_qconfig(std::string("lsq"), c10::nullopt, "mix", "min_max",
                                        {{"percentiles", {99.0, 99.9}}, {"dtype", "qint16"}});
  const std::string path = ::testing::TempDir() + "calq_qconfig_test.json";
  save_qconfig(q, path);
  EXPECT_EQ(load_qconfig(path), q);
  EXPECT_EQ(QConfig::from_json(q.to_json()), q);
  // No temporary file is left behind.
  std::ifstream tmp(path + ".tmp." + std::to_string(::getpid()));
  EXPECT_FALSE(tmp.good());
  std::remove(path.c_str());
}

TEST(QConfig, JsonErrors) {
  EXPECT_THROW_WITH(QConfig::from_json({{"activation", nullptr}}),
                    "keys 'activation' and 'weight'");
  EXPECT_THROW_WITH(QConfig::from_json({{"activation", nullptr}, {"weight", nullptr}, {"x", 1}}),
                    "unknown keyword 'x'");
  EXPECT_THROW_WITH(load_qconfig("/nonexistent/q.json"), "cannot open");
  const std::string path = ::testing::TempDir() + "calq_qconfig_bad.json";
  std::ofstream(path) << "{\"activation\": {\"method\": \"fake_quant\", \"observer\": \"klx\"},"
                         " \"weight\": null}";
  EXPECT_THROW_WITH(load_qconfig(path), "valid observers");
  std::remove(path.c_str());
}

}  // namespace
}  // namespace calq
