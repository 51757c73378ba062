// calq::analysis::Recipe: JSON and file round trips, plain QConfig files, errors, QAT
// switching, unsigned-grid presets, and apply_recipe's determinism.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "calq/analysis/recipe.h"
#include "calq/nn.h"

namespace {

using calq::analysis::Recipe;

// conv -> ReLU'd conv -> add (can be negative) -> linear.
struct SmallNetImpl : torch::nn::Module {
  calq::nn::QuantStub quant{register_module("quant", calq::nn::QuantStub())};
  calq::nn::ConvBnReLU2d conv1{register_module(
      "conv1", calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(1, 4, 3).padding(1).bias(false)))};
  calq::nn::ConvBn2d conv2{register_module(
      "conv2", calq::nn::ConvBn2d(calq::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)))};
  calq::nn::Add add{register_module("add", calq::nn::Add())};
  calq::nn::Flatten flatten{register_module("flatten", calq::nn::Flatten())};
  calq::nn::Linear fc{register_module("fc", calq::nn::Linear(4 * 6 * 6, 3))};
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor y = conv1(quant(x));
    return fc(flatten(add(conv2(y), y)));
  }
};
TORCH_MODULE(SmallNet);

Recipe sample_recipe() {
  Recipe r;
  r.global =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "percentile",
                                "min_max", {{"percentile", 99.9}}, {{"dtype", "qint4"}});
  r.overrides.by_type["Add"] = calq::qconfig_16bit_activation();
  calq::QConfig conv1 = r.global;
  conv1.activation->observer = "kl";
  conv1.activation->qkwargs = {{"unsigned", true}};
  r.overrides.by_name["conv1"] = conv1;
  r.overrides.by_name["fc"] = calq::qconfig_float_output();
  r.steps.cross_layer_equalization(true).bias_correction(true);
  r.steps.equalization(calq::analysis::EqualizationOptions()
                           .relu6(calq::analysis::Relu6Policy::to_relu)
                           .max_sweeps(7));
  return r;
}

TEST(Recipe, JsonRoundTrip) {
  const Recipe r = sample_recipe();
  const nlohmann::json j = r.to_json();
  EXPECT_EQ(j.at("calq_recipe"), 1);
  EXPECT_EQ(j.at("steps").at("cross_layer_equalization").at("relu6"), "to_relu");
  const Recipe back = Recipe::from_json(j);
  EXPECT_EQ(back, r);
  EXPECT_EQ(back.to_json(), j);
  EXPECT_EQ(back.steps.equalization().max_sweeps(), 7);
  // A change anywhere is seen.
  Recipe other = back;
  other.overrides.by_name["conv1"].activation->qkwargs["unsigned"] = false;
  EXPECT_NE(other, r);
  other = back;
  other.steps.bias_correction(false);
  EXPECT_NE(other, r);
}

TEST(Recipe, FileRoundTripAndPlainQConfig) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_recipe_test";
  std::filesystem::create_directories(dir);
  const Recipe r = sample_recipe();
  calq::analysis::save_recipe(r, (dir / "r.json").string());
  EXPECT_EQ(calq::analysis::load_recipe((dir / "r.json").string()), r);
  // A plain QConfig file is a recipe with only a global qconfig.
  calq::save_qconfig(calq::qconfig_16bit_activation(), (dir / "q.json").string());
  const Recipe plain = calq::analysis::load_recipe((dir / "q.json").string());
  EXPECT_EQ(plain.global, calq::qconfig_16bit_activation());
  EXPECT_TRUE(plain.overrides.by_name.empty());
  EXPECT_FALSE(plain.steps.cross_layer_equalization());
}

TEST(Recipe, ErrorsNameTheKey) {
  nlohmann::json j = sample_recipe().to_json();
  j["by_nmae"] = nlohmann::json::object();
  try {
    Recipe::from_json(j);
    FAIL() << "a misspelled key was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown key 'by_nmae'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("by_name"), std::string::npos) << e.what();
  }
  j = sample_recipe().to_json();
  j["steps"]["cross_layer_equalization"]["relu6"] = "clip";
  EXPECT_THROW(Recipe::from_json(j), c10::Error);
  j = sample_recipe().to_json();
  j["calq_recipe"] = 2;
  EXPECT_THROW(Recipe::from_json(j), c10::Error);
  j = sample_recipe().to_json();
  j["by_name"]["conv1"]["activation"]["qkwargs"]["percentil"] = 99.0;
  const Recipe bad = Recipe::from_json(j);
  EXPECT_THROW(bad.validate(), c10::Error);
}

TEST(Recipe, ForQatKeepsGridsAndSwitchesMethods) {
  const Recipe r = sample_recipe();
  const Recipe q = r.for_qat("lsq", "lsq", "min_max");
  EXPECT_EQ(q.global.activation->method, "lsq");
  EXPECT_EQ(q.global.activation->observer, "min_max");
  EXPECT_FALSE(q.global.activation->qkwargs.contains("percentile"));  // not a min_max keyword
  EXPECT_EQ(q.global.weight->method, "lsq");
  EXPECT_EQ(q.global.weight->qkwargs.at("dtype"), "qint4");
  EXPECT_EQ(q.overrides.by_name.at("conv1").activation->qkwargs.at("unsigned"), true);
  EXPECT_EQ(q.overrides.by_type.at("Add").activation->qkwargs.at("dtype"), "qint16");
  EXPECT_FALSE(q.overrides.by_name.at("fc").activation.has_value());
  EXPECT_TRUE(q.steps.cross_layer_equalization());  // kept: how the weights were made
  // No observer given: every layer keeps its calibration's observer and keywords.
  const Recipe own = r.for_qat("fake_quant", "fake_quant", "");
  EXPECT_EQ(own.global.activation->observer, "percentile");
  EXPECT_EQ(own.global.activation->qkwargs.at("percentile"), 99.9);
  EXPECT_EQ(own.overrides.by_name.at("conv1").activation->observer, "kl");
  EXPECT_EQ(own.overrides.by_name.at("conv1").activation->qkwargs.at("unsigned"), true);
}

TEST(Recipe, UnsignedOverridesOnlyWhereNonNegative) {
  SmallNet model;
  const calq::QConfig global = calq::get_default_qconfig();
  calq::QConfigOverrides base;
  base.by_name["fc"] = calq::qconfig_float_output();
  const auto o = calq::analysis::unsigned_activation_overrides(*model, global, base);
  ASSERT_EQ(o.by_name.count("conv1"), 1u);  // ConvBnReLU2d
  EXPECT_EQ(o.by_name.at("conv1").activation->qkwargs.at("unsigned"), true);
  EXPECT_EQ(o.by_name.count("conv2"), 0u);  // ConvBn2d: negative outputs
  EXPECT_EQ(o.by_name.count("add"), 0u);
  EXPECT_EQ(o.by_name.count("quant"), 0u);
  EXPECT_FALSE(o.by_name.at("fc").activation.has_value());  // kept as given
  calq::fuse(*model);
  calq::prepare_qat(*model, global, o);
  EXPECT_TRUE(model->conv1->output_fake_quant()->spec().unsigned_grid());
  EXPECT_EQ(model->conv1->output_fake_quant()->spec().quant_min(), 0);
  EXPECT_EQ(model->conv1->output_fake_quant()->spec().quant_max(), 255);
}

TEST(Recipe, PrepareRefusesUnsignedWhereOutputsCanBeNegative) {
  SmallNet model;
  calq::fuse(*model);
  calq::QConfigOverrides o;
  calq::QConfig q = calq::get_default_qconfig();
  q.activation->qkwargs["unsigned"] = true;
  o.by_name["add"] = q;
  try {
    calq::prepare_qat(*model, calq::get_default_qconfig(), o);
    FAIL() << "an unsigned grid on an Add output was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("known to be non-negative"), std::string::npos)
        << e.what();
  }
}

TEST(Recipe, ApplyRecipeIsDeterministic) {
  torch::manual_seed(2);
  SmallNet reference;
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 3; ++i) batches.push_back(torch::randn({8, 1, 6, 6}));
  Recipe r = sample_recipe();
  r.global.weight->qkwargs["dtype"] = "qint8";
  auto build = [&]() {
    SmallNet m;
    torch::NoGradGuard no_grad;
    for (const auto& p : reference->named_parameters())
      m->named_parameters()[p.key()].copy_(p.value());
    for (const auto& b : reference->named_buffers()) m->named_buffers()[b.key()].copy_(b.value());
    calq::fuse(*m);
    calq::prepare_qat(*m, r.global, r.overrides);
    return m;
  };
  SmallNet a = build(), b = build();
  const auto done = calq::analysis::apply_recipe(
      *a, [&](const at::Tensor& x) { return a->forward(x); }, r, batches);
  calq::analysis::apply_recipe(
      *b, [&](const at::Tensor& x) { return b->forward(x); }, r, batches);
  EXPECT_TRUE(done.equalized);
  EXPECT_TRUE(done.bias_corrected);
  const at::Tensor ya = a->forward(batches[0]), yb = b->forward(batches[0]);
  EXPECT_TRUE(torch::equal(ya, yb));
  EXPECT_EQ(a->conv1->output_fake_quant()->state(), calq::FakeQuantState::VALIDATION);
}

}  // namespace
