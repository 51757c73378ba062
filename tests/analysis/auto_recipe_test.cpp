// The automatic recipe on a small hand-made network: never below its single-observer
// candidates on the held-out data, reproducible from its JSON, promotions until a target drop.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/analysis/auto_recipe.h"
#include "calq/nn.h"

namespace {

using calq::analysis::AutoOptions;
using calq::analysis::Recipe;

struct MlpImpl : torch::nn::Module {
  calq::nn::QuantStub quant{register_module("quant", calq::nn::QuantStub())};
  calq::nn::LinearReLU fc1{register_module("fc1", calq::nn::LinearReLU(8, 32))};
  calq::nn::LinearReLU fc2{register_module("fc2", calq::nn::LinearReLU(32, 32))};
  calq::nn::Linear fc3{register_module("fc3", calq::nn::Linear(32, 5))};
  at::Tensor forward(const at::Tensor& x) { return fc3(fc2(fc1(quant(x)))); }
};
TORCH_MODULE(Mlp);

// Heavy-tailed inputs: clipping matters, so the observers disagree.
std::vector<at::Tensor> batches(int count, uint64_t seed) {
  torch::manual_seed(seed);
  std::vector<at::Tensor> out;
  for (int i = 0; i < count; ++i) {
    const at::Tensor x = torch::randn({64, 8});
    out.push_back(x * (1.0 + 9.0 * (torch::rand({64, 8}) < 0.01).to(torch::kFloat)));
  }
  return out;
}

class AutoRecipe : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(21);
    reference_ = Mlp();
    calibration_ = batches(6, 1);
    held_out_ = batches(8, 2);
    factory_ = [this](const Recipe& recipe) {
      Mlp m;
      torch::NoGradGuard no_grad;
      for (const auto& p : reference_->named_parameters()) {
        m->named_parameters()[p.key()].copy_(p.value());
      }
      calq::QConfigOverrides overrides = recipe.overrides;
      calq::QConfig output_float =
          overrides.by_name.count("fc3") ? overrides.by_name["fc3"] : recipe.global;
      output_float.activation = c10::nullopt;
      overrides.by_name["fc3"] = output_float;
      calq::prepare_qat(*m, recipe.global, overrides);
      return std::shared_ptr<torch::nn::Module>(m.ptr());
    };
    forward_ = [](torch::nn::Module& m, const at::Tensor& x) {
      return static_cast<MlpImpl&>(m).forward(x);
    };
  }

  Recipe base(const std::string& activation_dtype, bool quantize_weights = true) const {
    Recipe r;
    r.global = calq::get_default_qconfig(
        std::string("fake_quant"),
        quantize_weights ? c10::optional<std::string>("fake_quant") : c10::optional<std::string>(),
        "min_max", "min_max", {{"dtype", activation_dtype}});
    return r;
  }

  Mlp reference_{nullptr};
  std::vector<at::Tensor> calibration_, held_out_;
  calq::analysis::ModelFactory factory_;
  calq::analysis::ModuleForward forward_;
};

std::vector<std::pair<std::string, at::Tensor>> scales(torch::nn::Module& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : m.named_modules()) {
    if (auto* fq = dynamic_cast<calq::FakeQuantizeImpl*>(item.value().get())) {
      out.emplace_back(item.key(), fq->scale());
    }
  }
  return out;
}

TEST_F(AutoRecipe, NeverBelowItsCandidatesAndReproducible) {
  const auto result =
      calq::analysis::auto_recipe(factory_, forward_, base("qint4"), calibration_, held_out_);
  // Every single-observer recipe is a scored candidate; the choice has at least the best
  // top-1 agreement of them and the lowest output KL of all candidates that have it.
  int uniform = 0;
  double floor = 0.0;
  for (const auto& c : result.candidates) {
    for (const auto& choice : calq::analysis::default_observer_choices()) {
      if (c.name == choice.label()) {
        ++uniform;
        floor = std::max(floor, c.held_out.top1_agreement);
      }
    }
    EXPECT_DOUBLE_EQ(c.score, -c.held_out.kl) << c.name;
  }
  EXPECT_GE(result.held_out.top1_agreement, floor);
  for (const auto& c : result.candidates) {
    if (c.held_out.top1_agreement >= floor) EXPECT_GE(c.held_out.kl, result.held_out.kl) << c.name;
  }
  EXPECT_EQ(uniform, 6);
  int chosen = 0;
  for (const auto& c : result.candidates) chosen += c.chosen;
  EXPECT_EQ(chosen, 1);
  EXPECT_EQ(result.points.size(), 3u);  // quant, fc1, fc2 (fc3's output is float)

  // The recipe alone rebuilds the same model: JSON round trip, factory, apply_recipe.
  const Recipe recipe = Recipe::from_json(result.recipe.to_json());
  EXPECT_EQ(recipe, result.recipe);
  auto rebuilt = factory_(recipe);
  calq::analysis::apply_recipe(
      *rebuilt, [&](const at::Tensor& x) { return forward_(*rebuilt, x); }, recipe, calibration_);
  const auto a = scales(*result.model), b = scales(*rebuilt);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].first, b[i].first);
    EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
  }
  EXPECT_TRUE(
      torch::equal(forward_(*result.model, held_out_[0]), forward_(*rebuilt, held_out_[0])));
  const std::string summary = result.summary();
  EXPECT_NE(summary.find("auto: chose"), std::string::npos) << summary;
}

TEST_F(AutoRecipe, TargetDropPromotesToFloatUntilMet) {
  // Float weights and float promotions: promoting every point gives the float model itself,
  // so a target of 0 is always reachable.
  const auto result = calq::analysis::auto_recipe(
      factory_, forward_, base("qint4", /*quantize_weights=*/false), calibration_, held_out_,
      AutoOptions().per_layer(false).target_drop(0.0).promotion(
          calq::analysis::Promotion::keep_float));
  EXPECT_TRUE(result.target_met);
  EXPECT_DOUBLE_EQ(result.held_out.top1_agreement, 100.0);
  ASSERT_FALSE(result.promoted.empty());
  for (const auto& name : result.promoted) {
    ASSERT_EQ(result.recipe.overrides.by_name.count(name), 1u) << name;
    EXPECT_FALSE(result.recipe.overrides.by_name.at(name).activation.has_value()) << name;
  }
}

TEST_F(AutoRecipe, Int16PromotionAndUnsignedGrids) {
  const auto result = calq::analysis::auto_recipe(
      factory_, forward_, base("qint4"), calibration_, held_out_,
      AutoOptions().unsigned_activations(true).target_drop(0.0).search_batches(2));
  // ReLU outputs got unsigned grids, the input (can be negative) did not.
  auto* m = dynamic_cast<MlpImpl*>(result.model.get());
  ASSERT_NE(m, nullptr);
  EXPECT_TRUE(m->fc1->output_fake_quant()->spec().unsigned_grid());
  EXPECT_TRUE(m->fc2->output_fake_quant()->spec().unsigned_grid());
  EXPECT_FALSE(m->quant->output_fake_quant()->spec().unsigned_grid());
  for (const auto& name : result.promoted) {
    const auto& q = result.recipe.overrides.by_name.at(name);
    if (name != "fc3") {  // fc3's output stays float (the factory's rule)
      ASSERT_TRUE(q.activation.has_value()) << name;
      EXPECT_EQ(q.activation->qkwargs.at("dtype"), "qint16") << name;
      EXPECT_EQ(q.activation->observer, "min_max") << name;
    }
    if (name != "quant") {  // a weighted layer: its weight is promoted with its output
      ASSERT_TRUE(q.weight.has_value()) << name;
      EXPECT_EQ(q.weight->qkwargs.at("dtype"), "qint16") << name;
    }
  }
  if (!result.promoted.empty()) {
    EXPECT_NE(result.summary().find("int16 activations run as DequantizeLinear"),
              std::string::npos);
  }
}

// 16-bit activations and 4-bit weights: promoting outputs alone cannot help, the weights can.
// A point is promoted whole, so the target is reached by widening the weighted layers.
TEST_F(AutoRecipe, TargetDropPromotesTheWeightsOfAPointToo) {
  Recipe r;
  r.global =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                "min_max", {{"dtype", "qint16"}}, {{"dtype", "qint4"}});
  const auto plain = calq::analysis::auto_recipe(factory_, forward_, r, calibration_, held_out_,
                                                 AutoOptions().per_layer(false));
  ASSERT_LT(plain.held_out.top1_agreement, 100.0) << "4-bit weights gave no disagreement";
  const auto result = calq::analysis::auto_recipe(factory_, forward_, r, calibration_, held_out_,
                                                  AutoOptions().per_layer(false).target_drop(0.0));
  ASSERT_FALSE(result.promoted.empty());
  EXPECT_GT(result.held_out.top1_agreement, plain.held_out.top1_agreement);
  auto* m = dynamic_cast<MlpImpl*>(result.model.get());
  ASSERT_NE(m, nullptr);
  int widened = 0;
  for (const auto& name : result.promoted) {
    calq::nn::QuantModuleImpl* layer =
        name == "fc1"   ? static_cast<calq::nn::QuantModuleImpl*>(m->fc1.get())
        : name == "fc2" ? static_cast<calq::nn::QuantModuleImpl*>(m->fc2.get())
        : name == "fc3" ? static_cast<calq::nn::QuantModuleImpl*>(m->fc3.get())
                        : nullptr;
    if (layer == nullptr) continue;
    EXPECT_EQ(layer->weight_fake_quant()->spec().dtype(), calq::QuantDtype::qint16) << name;
    ++widened;
  }
  EXPECT_GT(widened, 0);
  if (result.target_met) EXPECT_DOUBLE_EQ(result.held_out.top1_agreement, 100.0);
}

TEST_F(AutoRecipe, Errors) {
  EXPECT_THROW(calq::analysis::auto_recipe(factory_, forward_, base("qint8"), calibration_, {}),
               c10::Error);
  try {
    calq::analysis::auto_recipe(factory_, forward_, base("qint8"), calibration_, held_out_,
                                AutoOptions().choices({{"percentile", {{"percentil", 99.0}}}}));
    FAIL() << "a misspelled keyword was accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("percentil"), std::string::npos) << e.what();
  }
}

}  // namespace
