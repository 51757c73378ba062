// The seed's eleven-step workflow on a small CNN with batch norm and dropout, asserting the
// effect of every step, and the misuse errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "calq/nn.h"
#include "calq/workflow.h"

namespace {

class TinyNetImpl : public torch::nn::Module {
 public:
  TinyNetImpl() {
    quant = register_module("quant", calq::nn::QuantStub());
    conv1 = register_module(
        "conv1", calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(1, 4, 3).padding(1).bias(false)));
    pool = register_module("pool", calq::nn::MaxPool2d(calq::nn::MaxPool2dOptions(2)));
    conv2 = register_module(
        "conv2", calq::nn::ConvBn2d(calq::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)));
    add = register_module("add", calq::nn::Add());
    relu = register_module("relu", calq::nn::ReLU());
    dropout = register_module("dropout", torch::nn::Dropout(0.5));
    flatten = register_module("flatten", calq::nn::Flatten());
    fc = register_module("fc", calq::nn::Linear(4 * 4 * 4, 3));
    dequant = register_module("dequant", calq::nn::DeQuantStub());
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = pool(conv1(quant(x)));
    y = relu(add(conv2(y), y));
    return dequant(fc(flatten(dropout(y))));
  }
  calq::nn::QuantStub quant{nullptr};
  calq::nn::ConvBnReLU2d conv1{nullptr};
  calq::nn::MaxPool2d pool{nullptr};
  calq::nn::ConvBn2d conv2{nullptr};
  calq::nn::Add add{nullptr};
  calq::nn::ReLU relu{nullptr};
  torch::nn::Dropout dropout{nullptr};
  calq::nn::Flatten flatten{nullptr};
  calq::nn::Linear fc{nullptr};
  calq::nn::DeQuantStub dequant{nullptr};
};
TORCH_MODULE(TinyNet);

std::vector<at::Tensor> synthetic_batches(int64_t count, int64_t seed) {
  torch::manual_seed(seed);
  std::vector<at::Tensor> batches;
  for (int64_t i = 0; i < count; ++i) batches.push_back(torch::randn({8, 1, 8, 8}));
  return batches;
}

// A float model trained a few steps so that batch norm has non-trivial statistics.
TinyNet trained_float_model() {
  torch::manual_seed(11);
  TinyNet model;
  torch::optim::SGD optimizer(model->parameters(), 0.05);
  model->train();
  for (const auto& x : synthetic_batches(10, 12)) {
    optimizer.zero_grad();
    auto target = (x.mean({1, 2, 3}) > 0).to(torch::kLong);
    torch::nn::functional::cross_entropy(model(x), target).backward();
    optimizer.step();
  }
  return model;
}

TinyNet fresh_copy(TinyNet& from) {
  TinyNet model;
  calq::copy_float_state(*from, *model);
  return model;
}

calq::QConfig calibration_qconfig() {
  return calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                   "percentile", "min_max");
}

std::map<std::string, at::Tensor> fake_quant_scales(torch::nn::Module& model) {
  std::map<std::string, at::Tensor> scales;
  for (const auto& item : model.named_modules()) {
    if (auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get())) {
      scales[item.key()] = fq->scale().detach().clone();
    }
  }
  return scales;
}

void expect_error(const std::function<void()>& f, const std::string& fragment) {
  try {
    f();
    FAIL() << "expected an error containing '" << fragment << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Workflow, ElevenSteps) {
  // 1. float model.
  TinyNet float_model = trained_float_model();
  float_model->eval();
  const auto batches = synthetic_batches(4, 21);
  const at::Tensor probe = synthetic_batches(1, 99)[0];
  const at::Tensor float_output = float_model(probe);

  // 2. fuse, march, qconfig, prepare.
  TinyNet calib_model = fresh_copy(float_model);
  EXPECT_EQ(calq::fuse(*calib_model), 2);
  calq::QConfigOverrides overrides;
  calq::QConfig last = calibration_qconfig();
  last.activation = c10::nullopt;
  overrides.by_name["fc"] = last;
  calq::prepare_qat(*calib_model, calibration_qconfig(), overrides);
  EXPECT_TRUE(calib_model->fc->output_fake_quant().is_empty());
  EXPECT_FALSE(calib_model->fc->weight_fake_quant().is_empty());
  EXPECT_FALSE(calib_model->conv1->output_fake_quant().is_empty());
  EXPECT_TRUE(calib_model->pool->output_fake_quant().is_empty());

  // 3-4. calibration: float output (BN running stats, dropout off), BN stats untouched.
  const at::Tensor running_mean = calib_model->conv1->bn->running_mean.clone();
  calq::calibrate(calib_model, batches);
  EXPECT_FALSE(calib_model->is_training());
  EXPECT_TRUE(torch::equal(running_mean, calib_model->conv1->bn->running_mean));
  {
    torch::NoGradGuard no_grad;
    EXPECT_LT((calib_model(probe) - float_output).abs().max().item<double>(), 1e-5)
        << "CALIBRATION must compute the float function";
  }

  // 5-6. validation: quantized output, scales frozen.
  calq::set_fake_quantize(*calib_model, calq::FakeQuantState::VALIDATION);
  const auto scales_before = fake_quant_scales(*calib_model);
  at::Tensor validated = calib_model(probe).detach();
  for (const auto& x : batches) calib_model(x * 10);  // large data must not move scales
  const auto scales_after = fake_quant_scales(*calib_model);
  ASSERT_EQ(scales_before.size(), scales_after.size());
  for (const auto& entry : scales_before) {
    EXPECT_TRUE(torch::equal(entry.second, scales_after.at(entry.first))) << entry.first;
  }
  EXPECT_FALSE(torch::equal(validated, float_output)) << "VALIDATION must quantize";
  EXPECT_LT((validated - float_output).abs().max().item<double>(), 0.5);

  // 7-8. fresh QAT model with the same recipe; load the calibration.
  TinyNet qat_model = fresh_copy(float_model);
  calq::fuse(*qat_model);
  calq::prepare_qat(*qat_model, calibration_qconfig(), overrides);
  calq::LoadReport report = calq::load_observer_params(*calib_model, *qat_model);
  EXPECT_TRUE(report.ok()) << report.str();
  EXPECT_FALSE(report.copied.empty());
  calq::set_fake_quantize(*qat_model, calq::FakeQuantState::VALIDATION);
  EXPECT_TRUE(torch::equal(qat_model(probe), validated))
      << "a fresh model with the loaded calibration must validate identically";

  // 9-11. QAT with lsq moves the learned scales; validation afterwards is finite.
  TinyNet lsq_model = fresh_copy(float_model);
  calq::fuse(*lsq_model);
  calq::prepare_qat(*lsq_model, calq::get_default_qconfig(std::string("lsq"), std::string("lsq")),
                    overrides);
  calq::load_observer_params(*calib_model, *lsq_model);
  calq::set_fake_quantize(*lsq_model, calq::FakeQuantState::QAT);
  EXPECT_TRUE(lsq_model->is_training());
  lsq_model(probe);  // initialises the learned scales
  const auto lsq_before = fake_quant_scales(*lsq_model);
  torch::optim::Adam optimizer(lsq_model->parameters(), 1e-4);
  for (const auto& x : batches) {
    optimizer.zero_grad();
    lsq_model(x).pow(2).mean().backward();
    optimizer.step();
  }
  const auto lsq_after = fake_quant_scales(*lsq_model);
  int moved = 0;
  for (const auto& entry : lsq_before)
    moved += !torch::equal(entry.second, lsq_after.at(entry.first));
  EXPECT_GT(moved, 0) << "QAT must move LSQ scales";
  calq::set_fake_quantize(*lsq_model, calq::FakeQuantState::VALIDATION);
  EXPECT_TRUE(torch::isfinite(lsq_model(probe)).all().item<bool>());
}

TEST(Workflow, PactAlphaMovesInQat) {
  TinyNet model = trained_float_model();
  calq::fuse(*model);
  // A small initial clip so that activations exceed it and alpha receives a gradient.
  calq::prepare_qat(*model, calq::get_default_qconfig(
                                std::string("pact"), std::string("fake_quant"), "min_max",
                                "min_max", {{"alpha", 0.25}, {"init_alpha_from_observer", false}}));
  calq::set_fake_quantize(*model, calq::FakeQuantState::QAT);
  const auto batches = synthetic_batches(3, 5);
  model(batches[0]);
  auto alpha_of = [&] {
    std::vector<at::Tensor> alphas;
    for (const auto& p : model->named_parameters()) {
      if (p.key().find("output_fake_quant.alpha") != std::string::npos) {
        alphas.push_back(p.value().detach().clone());
      }
    }
    return alphas;
  };
  const auto before = alpha_of();
  ASSERT_FALSE(before.empty());
  torch::optim::SGD optimizer(model->parameters(), 1e-3);
  for (const auto& x : batches) {
    optimizer.zero_grad();
    model(x).pow(2).mean().backward();
    optimizer.step();
  }
  const auto after = alpha_of();
  int moved = 0;
  for (size_t i = 0; i < before.size(); ++i) moved += !torch::equal(before[i], after[i]);
  EXPECT_GT(moved, 0);
}

TEST(Workflow, LearnedScaleSteppedAcrossZeroIsProjectedBack) {
  auto fq = calq::FakeQuantConfig{"lsq", "min_max", nlohmann::json::object(), false}.create();
  fq->set_state(calq::FakeQuantState::QAT);
  const at::Tensor x = torch::linspace(-1, 1, 64);
  fq->forward(x);
  at::Tensor scale = fq->named_parameters()["scale"];
  {
    torch::NoGradGuard no_grad;
    scale.fill_(-0.01f);  // as an optimizer step past zero would leave it
  }
  const at::Tensor y = fq->forward(x);
  EXPECT_FLOAT_EQ(scale.item<float>(), 0.01f);
  EXPECT_TRUE(torch::equal(y, torch::clamp(torch::round(x / 0.01f), -128, 127) * 0.01f));
}

TEST(Workflow, QuantStubWithFixedInputScaleIgnoresTheData) {
  torch::nn::Sequential model(calq::nn::QuantStub(calq::nn::QuantStubOptions().fixed_scale(0.25)),
                              calq::nn::ReLU());
  calq::prepare_qat(*model, calibration_qconfig());
  calq::calibrate(model, synthetic_batches(2, 4));
  auto stub = model[0]->as<calq::nn::QuantStubImpl>();
  ASSERT_NE(stub, nullptr);
  EXPECT_EQ(stub->output_fake_quant()->observer().kind(), "fixed_scale");
  EXPECT_FLOAT_EQ(stub->output_fake_quant()->scale().item<float>(), 0.25f);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  const at::Tensor x = torch::tensor({0.1f, 0.3f, -40.0f});
  EXPECT_TRUE(torch::equal(stub->forward(x), torch::tensor({0.0f, 0.25f, -32.0f})));
  EXPECT_THROW(calq::nn::QuantStub(calq::nn::QuantStubOptions().fixed_scale(-1.0)), c10::Error);
}

TEST(Workflow, ValidationComputesTheDeployedFoldedConvolution) {
  TinyNet model = trained_float_model();
  calq::fuse(*model);
  calq::prepare_qat(*model, calibration_qconfig());
  calq::calibrate(model, synthetic_batches(2, 3));
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  auto& block = *model->conv1;
  const at::Tensor x = torch::randn({2, 1, 8, 8});
  auto folded = block.folded_weight_and_bias();
  const at::Tensor weight_q = block.weight_fake_quant()->forward(folded.first);
  at::Tensor expected = torch::relu(torch::conv2d(x, weight_q, folded.second, 1, 1));
  expected = block.output_fake_quant()->forward(expected);
  EXPECT_TRUE(torch::equal(block.forward(x), expected));
}

TEST(Workflow, SaveLoadRoundTripsBitForBit) {
  TinyNet model = trained_float_model();
  calq::fuse(*model);
  calq::prepare_qat(*model, calibration_qconfig());
  calq::calibrate(model, synthetic_batches(3, 7));
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  const at::Tensor probe = torch::randn({2, 1, 8, 8});
  const at::Tensor expected = model(probe);
  std::stringstream stream;
  torch::save(model, stream);

  TinyNet restored;
  calq::fuse(*restored);
  calq::prepare_qat(*restored, calibration_qconfig());
  torch::load(restored, stream);
  auto a = model->named_buffers();
  auto b = restored->named_buffers();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& entry : a) {
    EXPECT_TRUE(torch::equal(entry.value(), b[entry.key()])) << entry.key();
  }
  calq::set_fake_quantize(*restored, calq::FakeQuantState::VALIDATION);
  EXPECT_TRUE(torch::equal(restored(probe), expected));
}

TEST(Workflow, OverrideOrderGlobalTypeNameOwn) {
  TinyNet model;
  calq::fuse(*model);
  auto with_dtype = [](const char* dtype) {
    return calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                     "min_max", "min_max", {{"dtype", dtype}}, {{"dtype", dtype}});
  };
  calq::QConfigOverrides overrides;
  overrides.by_type["ConvBnReLU2d"] = with_dtype("qint16");
  overrides.by_type["ConvBn2d"] = with_dtype("qint16");
  overrides.by_name["conv2"] = with_dtype("qint4");
  model->add->qconfig = with_dtype("qint4");
  overrides.by_name["add"] = with_dtype("qint16");
  calq::prepare_qat(*model, with_dtype("qint8"), overrides);
  EXPECT_EQ(model->quant->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint8);
  EXPECT_EQ(model->conv1->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint16);
  EXPECT_EQ(model->conv2->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint4);
  EXPECT_EQ(model->add->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint4);
}

TEST(Workflow, BernoulliGivesPowerOfTwoScales) {
  TinyNet model = trained_float_model();
  calq::fuse(*model);
  calq::prepare_qat(*model, calibration_qconfig(), {}, calq::March::bernoulli);
  calq::calibrate(model, synthetic_batches(2, 8));
  for (const auto& entry : fake_quant_scales(*model)) {
    at::Tensor log2 = torch::log2(entry.second.to(torch::kDouble));
    EXPECT_TRUE(torch::equal(log2, torch::round(log2))) << entry.first;
  }
}

TEST(Workflow, CheckQconfigListsEveryQuantizationPoint) {
  TinyNet model;
  auto rows = calq::check_qconfig(*model);
  bool saw_unfused = false, saw_dropout = false;
  for (const auto& row : rows) {
    saw_unfused |= row.unfused;
    saw_dropout |= row.foreign && row.name == "dropout";
  }
  EXPECT_TRUE(saw_unfused);
  EXPECT_TRUE(saw_dropout);
  calq::fuse(*model);
  calq::prepare_qat(*model, calibration_qconfig());
  const std::string table = calq::format_qconfig_table(calq::check_qconfig(*model));
  EXPECT_NE(table.find("conv1"), std::string::npos);
  EXPECT_NE(table.find("percentile"), std::string::npos);
  EXPECT_NE(table.find("pass-through"), std::string::npos);
}

TEST(Workflow, MisuseGivesClearErrors) {
  TinyNet model;
  expect_error([&] { calq::set_fake_quantize(*model, calq::FakeQuantState::QAT); }, "not prepared");
  expect_error([&] { calq::prepare_qat(*model, calibration_qconfig()); }, "not fused");
  calq::fuse(*model);
  calq::QConfigOverrides bad_name;
  bad_name.by_name["nope"] = calibration_qconfig();
  expect_error([&] { calq::prepare_qat(*model, calibration_qconfig(), bad_name); }, "'nope'");
  calq::QConfigOverrides bad_type;
  bad_type.by_type["Conv3d"] = calibration_qconfig();
  expect_error([&] { calq::prepare_qat(*model, calibration_qconfig(), bad_type); }, "valid types");
  calq::prepare_qat(*model, calibration_qconfig());
  expect_error([&] { calq::prepare_qat(*model, calibration_qconfig()); }, "already prepared");
  expect_error([] { calq::march_from_string("pascal"); }, "bernoulli");
  torch::nn::Sequential plain(torch::nn::Linear(2, 2));
  expect_error([&] { calq::prepare_qat(*plain, calibration_qconfig()); }, "no calq::nn module");
}

TEST(Workflow, LoadBetweenIncompatibleModelsReportsTheMismatch) {
  TinyNet a = trained_float_model();
  calq::fuse(*a);
  calq::prepare_qat(*a, calibration_qconfig());
  calq::calibrate(a, synthetic_batches(2, 1));
  torch::nn::Sequential other(
      calq::nn::QuantStub(),
      calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(1, 6, 3).padding(1).bias(false)));
  calq::fuse(*other);
  calq::prepare_qat(*other, calibration_qconfig());
  calq::LoadReport report = calq::load_observer_params(*a, *other);
  EXPECT_FALSE(report.ok());
  EXPECT_FALSE(report.missing.empty());
  EXPECT_FALSE(report.unexpected.empty());
  EXPECT_NE(report.str().find("missing"), std::string::npos);
}

}  // namespace
