// load_observer_params across recipes (seed step 8): the QAT quantizer starts from the
// calibrated scale whatever its method, observer, dtype or march, or the report says why not
// (docs/observers.md, "Loading a calibration").

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "calq/nn.h"
#include "calq/quant/qparams.h"
#include "calq/workflow.h"

namespace {

// Ten quantization points (stub, three convs, add, add_relu, pool, fc1) plus weights.
class SmallNetImpl : public torch::nn::Module {
 public:
  SmallNetImpl() {
    using calq::nn::Conv2dOptions;
    quant = register_module("quant", calq::nn::QuantStub());
    conv1 = register_module("conv1",
                            calq::nn::ConvBnReLU2d(Conv2dOptions(1, 4, 3).padding(1).bias(false)));
    conv2 =
        register_module("conv2", calq::nn::ConvBn2d(Conv2dOptions(4, 4, 3).padding(1).bias(false)));
    conv3 = register_module(
        "conv3", calq::nn::ConvBnReLU6_2d(Conv2dOptions(4, 4, 3).padding(1).groups(4).bias(false)));
    add = register_module("add", calq::nn::Add());
    add_relu = register_module("add_relu", calq::nn::AddReLU());
    pool =
        register_module("pool", calq::nn::AdaptiveAvgPool2d(calq::nn::AdaptiveAvgPool2dOptions(1)));
    flatten = register_module("flatten", calq::nn::Flatten());
    fc1 = register_module("fc1", calq::nn::LinearReLU(4, 8));
    fc2 = register_module("fc2", calq::nn::Linear(8, 3));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor a = conv1(quant(x));
    at::Tensor b = add(conv2(a), a);
    at::Tensor c = add_relu(conv3(b), b);
    return fc2(fc1(flatten(pool(c))));
  }
  calq::nn::QuantStub quant{nullptr};
  calq::nn::ConvBnReLU2d conv1{nullptr};
  calq::nn::ConvBn2d conv2{nullptr};
  calq::nn::ConvBnReLU6_2d conv3{nullptr};
  calq::nn::Add add{nullptr};
  calq::nn::AddReLU add_relu{nullptr};
  calq::nn::AdaptiveAvgPool2d pool{nullptr};
  calq::nn::Flatten flatten{nullptr};
  calq::nn::LinearReLU fc1{nullptr};
  calq::nn::Linear fc2{nullptr};
};
TORCH_MODULE(SmallNet);

std::vector<at::Tensor> batches(int64_t count) {
  torch::manual_seed(5);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < count; ++i) out.push_back(torch::randn({4, 1, 6, 6}) * 2);
  return out;
}

SmallNet prepared(const calq::QConfig& qconfig, calq::March march = calq::March::bayes) {
  torch::manual_seed(1);
  SmallNet model;
  calq::fuse(*model);
  calq::QConfigOverrides overrides;
  calq::QConfig last = qconfig;
  last.activation = c10::nullopt;
  overrides.by_name["fc2"] = last;
  calq::prepare_qat(*model, qconfig, overrides, march);
  return model;
}

SmallNet calibrated(const std::string& observer, const nlohmann::json& activation_kwargs = {},
                    calq::March march = calq::March::bayes) {
  SmallNet model =
      prepared(calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                         observer, "min_max", activation_kwargs),
               march);
  calq::calibrate(model, batches(3));
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  return model;
}

std::map<std::string, calq::FakeQuantizeImpl*> quantizers(torch::nn::Module& model) {
  std::map<std::string, calq::FakeQuantizeImpl*> out;
  for (const auto& item : model.named_modules()) {
    if (auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get())) {
      out[item.key()] = fq;
    }
  }
  return out;
}

std::string saved(torch::nn::Module& model) {
  std::ostringstream out;
  torch::serialize::OutputArchive archive;
  model.save(archive);
  archive.save_to(out);
  return out.str();
}

TEST(LoadObserverParams, PactStartsFromTheCalibratedThreshold) {
  SmallNet calibration = calibrated("percentile");
  SmallNet qat = prepared(calq::get_default_qconfig(std::string("pact")));
  const calq::LoadReport report = calq::load_observer_params(*calibration, *qat);
  EXPECT_TRUE(report.ok()) << report.str();
  auto from = quantizers(*calibration);
  int checked = 0;
  for (const auto& item : quantizers(*qat)) {
    if (item.second->method() != calq::FakeQuantMethod::pact) continue;
    const double calibrated_scale = from.at(item.first)->scale().item<double>();
    const double alpha = item.second->named_parameters()["alpha"].item<double>();
    // alpha is the calibrated threshold (a float32 parameter: within one float ulp).
    EXPECT_NEAR(alpha, calibrated_scale * 127.5, 1e-6 * alpha) << item.first;
    EXPECT_NEAR(item.second->scale().item<double>(), calibrated_scale, 1e-6 * calibrated_scale)
        << item.first;
    EXPECT_TRUE(item.second->initialized());
    ++checked;
  }
  EXPECT_EQ(checked, 8);  // every activation quantizer but the float output
  // The first QAT forward keeps it (no re-initialization from the QAT batch).
  calq::set_fake_quantize(*qat, calq::FakeQuantState::QAT);
  const double before = qat->conv1->output_fake_quant()->scale().item<double>();
  qat->forward(batches(1)[0] * 5);
  EXPECT_EQ(qat->conv1->output_fake_quant()->scale().item<double>(), before);
}

TEST(LoadObserverParams, CrossObserverLoadIsCleanAndExact) {
  SmallNet calibration = calibrated("percentile");
  SmallNet qat = prepared(
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max"));
  const calq::LoadReport report = calq::load_observer_params(*calibration, *qat);
  EXPECT_TRUE(report.ok()) << report.str();
  EXPECT_TRUE(report.missing.empty());
  EXPECT_TRUE(report.unexpected.empty());
  EXPECT_TRUE(report.converted.empty()) << report.str();
  // The percentile histogram and extremes do not apply to min_max: listed, not a problem.
  bool histogram_listed = false;
  for (const auto& entry : report.not_applicable) {
    histogram_listed |= entry == "conv1.output_fake_quant.observer.histogram";
  }
  EXPECT_TRUE(histogram_listed) << report.str();
  auto from = quantizers(*calibration);
  for (const auto& item : quantizers(*qat)) {
    EXPECT_TRUE(at::equal(item.second->scale(), from.at(item.first)->scale())) << item.first;
  }
  // VALIDATION right after the load computes what the calibrated model computes.
  calq::set_fake_quantize(*qat, calq::FakeQuantState::VALIDATION);
  torch::NoGradGuard no_grad;
  const at::Tensor x = batches(1)[0];
  EXPECT_TRUE(at::equal(qat->forward(x), calibration->forward(x)));
}

TEST(LoadObserverParams, ReadingTheSourceChangesNothing) {
  SmallNet calibration = calibrated("kl");
  const std::string before = saved(*calibration);
  for (const auto& item : quantizers(*calibration)) (void)item.second->scale();
  SmallNet qat = prepared(calq::get_default_qconfig(std::string("lsq"), std::string("lsq")));
  calq::load_observer_params(*calibration, *qat);
  EXPECT_EQ(saved(*calibration), before);
}

TEST(LoadObserverParams, Int8CalibrationIntoInt16IsConverted) {
  SmallNet calibration = calibrated("min_max");
  SmallNet qat = prepared(calq::get_default_qconfig(std::string("lsq"), std::string("fake_quant"),
                                                    "min_max", "min_max", {{"dtype", "qint16"}}));
  const calq::LoadReport report = calq::load_observer_params(*calibration, *qat);
  EXPECT_TRUE(report.ok()) << report.str();
  EXPECT_EQ(report.converted.size(), 8u) << report.str();
  auto from = quantizers(*calibration);
  for (const auto& item : quantizers(*qat)) {
    const auto* source = from.at(item.first);
    if (item.second->spec().dtype() != calq::QuantDtype::qint16) continue;
    // Same real range, 32767.5 / 127.5 = 257 times finer steps.
    const double expected = source->observer().range().second.abs().max().item<double>();
    const double lower = source->observer().range().first.abs().max().item<double>();
    EXPECT_NEAR(item.second->scale().item<double>(), std::max(expected, lower) / 32767.5,
                1e-6 * std::max(expected, lower) / 32767.5)
        << item.first;
  }
}

TEST(LoadObserverParams, FreeCalibrationIntoBernoulliIsConvertedToPowersOfTwo) {
  SmallNet calibration = calibrated("percentile");
  SmallNet qat = prepared(calq::get_default_qconfig(std::string("lsq"), std::string("lsq")),
                          calq::March::bernoulli);
  const calq::LoadReport report = calq::load_observer_params(*calibration, *qat);
  EXPECT_TRUE(report.ok()) << report.str();
  EXPECT_FALSE(report.converted.empty());
  auto from = quantizers(*calibration);
  for (const auto& item : quantizers(*qat)) {
    const at::Tensor got = item.second->scale().to(at::kDouble);
    const at::Tensor calibrated_scale = from.at(item.first)->scale().to(at::kDouble);
    for (int64_t i = 0; i < got.numel(); ++i) {
      const double s = got[i].item<double>();
      // Rounded up from the calibrated scale (the range is kept), clamped to [2^-14, 2^-1].
      EXPECT_EQ(s, calq::power_of_two_scale(calibrated_scale[i].item<double>()))
          << item.first << "[" << i << "]";
    }
  }
}

TEST(LoadObserverParams, IncompatibleLayoutsAreMismatchedAndNotCopied) {
  SmallNet calibration = calibrated("min_max");
  // Per-tensor weights in the QAT model: the per-channel calibration does not fit.
  SmallNet qat =
      prepared(calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                         "min_max", "min_max", {}, {{"per_channel", false}}));
  const calq::LoadReport report = calq::load_observer_params(*calibration, *qat);
  EXPECT_FALSE(report.ok());
  ASSERT_EQ(report.mismatched.size(), 5u) << report.str();  // conv1..3, fc1, fc2 weights
  EXPECT_NE(report.mismatched[0].find("per-channel calibration into a per-tensor"),
            std::string::npos)
      << report.mismatched[0];
  EXPECT_FALSE(qat->conv1->weight_fake_quant()->initialized());
}

TEST(LoadObserverParams, MissingAndUnexpectedQuantizers) {
  SmallNet calibration = calibrated("min_max");
  // The QAT model quantizes fc2's output too: that quantizer has no calibration.
  torch::manual_seed(1);
  SmallNet qat;
  calq::fuse(*qat);
  calq::prepare_qat(*qat, calq::get_default_qconfig());
  calq::LoadReport report = calq::load_observer_params(*calibration, *qat);
  EXPECT_FALSE(report.ok());
  EXPECT_EQ(report.missing, std::vector<std::string>{"fc2.output_fake_quant"});
  report = calq::load_observer_params(*qat, *calibration);
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"fc2.output_fake_quant"});
}

TEST(LoadObserverParams, ClampedBernoulliScalesAreReported) {
  // Inputs of magnitude 1000: the stub's power-of-two scale would be 8, clamped to 2^-1.
  SmallNet model = prepared(calq::get_default_qconfig(), calq::March::bernoulli);
  calq::calibrate(model, std::vector<at::Tensor>{torch::randn({4, 1, 6, 6}) * 1000});
  const auto clamped = calq::clamped_scales(*model);
  ASSERT_FALSE(clamped.empty());
  EXPECT_EQ(clamped.front(), "quant.output_fake_quant");
  EXPECT_EQ(model->quant->output_fake_quant()->scale().item<double>(), 0.5);
}

}  // namespace
