// The integer engine against ONNX Runtime's integer kernels, bit for bit on every quantized
// tensor (per-layer sub-models keep the runtime's fusion), and against calq's simulation.

#include "calq/deploy/integer_engine.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "calq/deploy/onnxruntime.h"
#include "calq/deploy/profile.h"
#include "calq/deploy/qdq_export.h"
#include "calq/nn.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"

namespace {

std::string temp_path(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / "calq_engine_test";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

calq::zoo::Classifier calibrated(const std::string& name, calq::March march, bool float_output) {
  torch::manual_seed(5);
  calq::zoo::Classifier model = calq::zoo::make_model(name);
  {
    torch::NoGradGuard no_grad;
    for (auto& buffer : model->named_buffers()) {
      if (buffer.key().find("running_mean") != std::string::npos)
        buffer.value().uniform_(-0.2, 0.2);
      if (buffer.key().find("running_var") != std::string::npos) buffer.value().uniform_(0.5, 2.0);
    }
    for (auto& p : model->named_parameters()) {
      if (p.key().find("bias") != std::string::npos) p.value().uniform_(-0.3, 0.3);
    }
  }
  calq::fuse(*model);
  const calq::QConfig qconfig = calq::get_default_qconfig(
      std::string("fake_quant"), std::string("fake_quant"), "percentile", "min_max");
  calq::QConfigOverrides overrides;
  if (float_output) {
    calq::QConfig last = qconfig;
    last.activation = c10::nullopt;
    overrides.by_name[model->output_layer()] = last;
  }
  calq::prepare_qat(*model, qconfig, overrides, march);
  std::vector<at::Tensor> batches;
  for (int i = 0; i < 4; ++i) batches.push_back(torch::randn({16, 1, 28, 28}));
  calq::calibrate(model, batches);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  return model;
}

calq::Trace trace_of(calq::zoo::Classifier& model) {
  return calq::trace(
      *model, [&model](const at::Tensor& x) { return model->forward(x); },
      torch::randn({2, 1, 28, 28}));
}

TEST(IntegerEngine, QLinearAddRoundsLikeOnnxRuntime) {
  // ONNX Runtime issue #25512: a sum whose exact value is -112.50000794 rounds to -112 in the
  // runtime's fused formula (the zero points are folded into one float constant first). A
  // dequantize-add-quantize reference would give -113.
  const float sa = 0.0784313753f, sb = 0.0784313753f, sc = 0.156862751f;
  const int64_t za = 128, zb = 128, zc = 128;
  const float r_ac = sa / sc, r_bc = sb / sc;
  const float fixed = static_cast<float>(zc) - std::fma(r_ac, 128.0f, r_bc * 128.0f);
  // a + b - 256 = -225 -> -112.5 steps of the output before the zero point.
  const float v =
      std::fma(static_cast<float>(15), r_ac, std::fma(static_cast<float>(16), r_bc, fixed));
  EXPECT_EQ(std::nearbyint(v), 16.0f);  // 128 - 112 (ties to even), never 15
  (void)za;
  (void)zb;
}

TEST(IntegerEngine, BitForBitWithOnnxRuntimeOnEveryQuantizedTensor) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  torch::manual_seed(6);
  const at::Tensor x = torch::randn({8, 1, 28, 28});
  for (calq::March march : {calq::March::bayes, calq::March::bernoulli}) {
    for (const std::string& name : calq::zoo::model_names()) {
      SCOPED_TRACE(name + " " + calq::to_string(march));
      calq::zoo::Classifier model = calibrated(name, march, /*float_output=*/false);
      const calq::Trace t = trace_of(model);
      const auto engine = calq::deploy::run_integer(
          *model, t, {x}, calq::deploy::IntegerEngineOptions().keep_integers(true));
      int64_t compared = 0, differing = 0;
      for (const calq::TracedCall& call : t.calls) {
        if (call.module->output_fake_quant().is_empty()) continue;
        const auto& mine = engine.integers.at(call.path);
        const std::string path = temp_path(name + "_" + call.path + ".onnx");
        calq::deploy::export_qdq(*model, t, path,
                                 calq::deploy::ExportOptions().outputs({call.output}));
        const at::Tensor deployed = calq::deploy::run_onnxruntime(path, {x}).outputs.at(0);
        const at::Tensor levels =
            (deployed.to(at::kDouble) / mine.scale.item<double>()).round().to(at::kLong) +
            mine.zero_point;
        ASSERT_EQ(levels.sizes(), mine.values.sizes()) << call.path;
        const int64_t diff = levels.ne(mine.values).sum().item<int64_t>();
        EXPECT_EQ(diff, 0) << call.path << ": " << diff << " of " << levels.numel()
                           << " integers differ, max |diff| "
                           << (levels - mine.values).abs().max().item<int64_t>();
        compared += levels.numel();
        differing += diff;
      }
      std::cerr << name << " " << calq::to_string(march) << ": " << compared
                << " integers compared with ONNX Runtime, " << differing << " differ\n";
    }
  }
}

TEST(IntegerEngine, AgreesWithTheSimulation) {
  torch::manual_seed(7);
  const at::Tensor x = torch::randn({64, 1, 28, 28});
  for (const std::string& name : calq::zoo::model_names()) {
    SCOPED_TRACE(name);
    calq::zoo::Classifier model = calibrated(name, calq::March::bayes, /*float_output=*/false);
    const calq::Trace t = trace_of(model);
    calq::link_input_quantizers(t);
    at::Tensor simulated;
    {
      torch::NoGradGuard no_grad;
      simulated = model->forward(x);
    }
    const auto engine = calq::deploy::run_integer(*model, t, {x});
    const double step = model->named_modules()[model->output_layer()]
                            ->as<calq::nn::QuantModuleImpl>()
                            ->output_fake_quant()
                            ->scale()
                            .item<double>();
    const at::Tensor lsb = ((engine.outputs[0] - simulated).abs() / step).round();
    const double within_one = lsb.le(1).to(at::kDouble).mean().item<double>();
    const double agree =
        engine.outputs[0].argmax(1).eq(simulated.argmax(1)).to(at::kDouble).mean().item<double>();
    std::cerr << name << ": engine vs simulation: " << 100 * within_one
              << " % of outputs within 1 LSB (max " << lsb.max().item<double>()
              << "), argmax agreement " << agree << "\n";
    EXPECT_GE(within_one, 0.99);
    EXPECT_GE(agree, 0.98);
  }
}

}  // namespace

namespace {

// ONNX Runtime's numerics on this machine's x86 provider: uint8 activations, 8-bit integer
// kernels, float multipliers.
calq::IntegerArithmetic ort_arithmetic() {
  return calq::deploy::integer_arithmetic(calq::deploy::ort_cpu_profile());
}

at::Tensor forward_no_grad(calq::zoo::Classifier& model, const at::Tensor& x) {
  torch::NoGradGuard no_grad;
  return model->forward(x);
}

TEST(IntegerArithmetic, SimulationComputesWhatTheEngineComputesBitForBit) {
  torch::manual_seed(8);
  const at::Tensor x = torch::randn({64, 1, 28, 28});
  for (calq::March march : {calq::March::bayes, calq::March::bernoulli}) {
    for (bool float_output : {false, true}) {
      for (const std::string& name : calq::zoo::model_names()) {
        SCOPED_TRACE(name + " " + calq::to_string(march) + (float_output ? " float output" : ""));
        calq::zoo::Classifier model = calibrated(name, march, float_output);
        const calq::Trace t = trace_of(model);
        calq::link_input_quantizers(t);
        const at::Tensor float_simulation = forward_no_grad(model, x);
        for (calq::Requantization mode :
             {calq::Requantization::float_multiplier, calq::Requantization::fixed_point}) {
          calq::IntegerArithmetic arithmetic = ort_arithmetic();
          arithmetic.requantization = mode;
          EXPECT_GT(calq::set_integer_arithmetic(*model, arithmetic), 0);
          std::map<std::string, int64_t> calls_before;
          for (const auto& m : model->named_modules()) {
            if (const auto* q = m.value()->as<calq::nn::QuantModuleImpl>()) {
              calls_before[m.key()] = q->integer_calls();
            }
          }
          const at::Tensor simulated = forward_no_grad(model, x);
          calq::set_integer_arithmetic(*model, c10::nullopt);
          // Every weighted layer, add and average pool ran the runtime's integer kernel (none
          // fell back to the float simulation).
          for (const auto& m : model->named_modules()) {
            const auto* q = m.value()->as<calq::nn::QuantModuleImpl>();
            if (q == nullptr) continue;
            const std::string& type = q->type_name();
            const bool integer_kernel = q->has_weight() || type == "Add" || type == "AddReLU" ||
                                        type == "AvgPool2d" || type == "AdaptiveAvgPool2d";
            if (integer_kernel) {
              EXPECT_EQ(q->integer_calls(), calls_before[m.key()] + 1) << m.key() << " " << type;
            }
          }
          const auto engine = calq::deploy::run_integer(
              *model, t, {x}, calq::deploy::IntegerEngineOptions().requantization(mode));
          ASSERT_EQ(simulated.sizes(), engine.outputs[0].sizes());
          EXPECT_TRUE(simulated.equal(engine.outputs[0]))
              << "max |diff| " << (simulated - engine.outputs[0]).abs().max().item<double>();
        }
        // Unset again: the float simulation, unchanged.
        EXPECT_TRUE(forward_no_grad(model, x).equal(float_simulation));
      }
    }
  }
}

TEST(IntegerArithmetic, SimulationEqualsOnnxRuntimeBitForBit) {
  std::string why;
  if (!calq::deploy::onnxruntime_available(&why)) GTEST_SKIP() << why;
  torch::manual_seed(9);
  const at::Tensor x = torch::randn({256, 1, 28, 28});
  for (const std::string& name : calq::zoo::model_names()) {
    SCOPED_TRACE(name);
    calq::zoo::Classifier model = calibrated(name, calq::March::bayes, /*float_output=*/true);
    const calq::Trace t = trace_of(model);
    calq::link_input_quantizers(t);
    const std::string path = temp_path(name + "_whole.onnx");
    calq::deploy::export_qdq(*model, t, path);
    const at::Tensor deployed = calq::deploy::run_onnxruntime(path, {x}).outputs.at(0);
    const at::Tensor float_simulation = forward_no_grad(model, x);
    calq::set_integer_arithmetic(*model, ort_arithmetic());
    const at::Tensor simulated = forward_no_grad(model, x);
    EXPECT_TRUE(simulated.equal(deployed))
        << "max |diff| " << (simulated - deployed).abs().max().item<double>();
    std::cerr << name << ": float simulation vs ONNX Runtime max |diff| "
              << (float_simulation - deployed).abs().max().item<double>()
              << "; integer arithmetic vs ONNX Runtime max |diff| "
              << (simulated - deployed).abs().max().item<double>() << "\n";
  }
}

}  // namespace

namespace {

// Two quantized inputs and their sum, every grid fixed by hand.
class TwoInputAddImpl : public torch::nn::Module {
 public:
  TwoInputAddImpl() {
    qa = register_module("qa", calq::nn::QuantStub());
    qb = register_module("qb", calq::nn::QuantStub());
    add = register_module("add", calq::nn::Add());
  }
  at::Tensor forward(const at::Tensor& a, const at::Tensor& b) { return add(qa(a), qb(b)); }
  calq::nn::QuantStub qa{nullptr}, qb{nullptr};
  calq::nn::Add add{nullptr};
};
TORCH_MODULE(TwoInputAdd);

calq::QConfig fixed(double scale) {
  return calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                                   "fixed_scale", "min_max", {{"scale", scale}});
}

TwoInputAdd prepared_add(float sa, float sb, float sc) {
  TwoInputAdd model;
  calq::QConfigOverrides overrides;
  overrides.by_name["qa"] = fixed(sa);
  overrides.by_name["qb"] = fixed(sb);
  overrides.by_name["add"] = fixed(sc);
  calq::prepare_qat(*model, calq::get_default_qconfig(), overrides);
  calq::set_fake_quantize(*model, calq::FakeQuantState::VALIDATION);
  const calq::Trace t = calq::trace(*model,
                                    [&model](const std::vector<at::Tensor>& in) {
                                      return std::vector<at::Tensor>{model->forward(in[0], in[1])};
                                    },
                                    {torch::zeros({1}), torch::zeros({1})});
  calq::link_input_quantizers(t);
  return model;
}

// ONNX Runtime issue #25512, by hand: a = -113 sa, b = -112 sb with sa = sb = sc / 2 sums to
// -112.50000794 output steps. Dequantize-add-quantize (the float simulation) rounds it to
// -113; QLinearAdd folds the zero points (128 each: uint8 storage) into one float constant
// first and rounds to -112 (stored 16). The integer arithmetic gives the runtime's -112.
TEST(IntegerArithmetic, AddRoundsAsOnnxRuntimeWhereTheFloatSimulationDoesNot) {
  const float sa = 0.0784313753f, sb = 0.0784313753f, sc = 0.156862751f;
  TwoInputAdd model = prepared_add(sa, sb, sc);
  const at::Tensor a = torch::full({1}, -113.0f * sa);
  const at::Tensor b = torch::full({1}, -112.0f * sb);
  torch::NoGradGuard no_grad;
  EXPECT_FLOAT_EQ(model->forward(a, b).item<float>(), -113.0f * sc);
  calq::set_integer_arithmetic(*model,
                               calq::deploy::integer_arithmetic(calq::deploy::ort_cpu_profile()));
  EXPECT_FLOAT_EQ(model->forward(a, b).item<float>(), -112.0f * sc);
  EXPECT_EQ(model->add->integer_calls(), 1);
  // Signed storage (no uint8 shift, zero points 0): fr(sa / sc) is exactly 0.5, so the
  // formula meets the exact tie -112.5 and rounds it to even, -112, too.
  calq::IntegerArithmetic signed_storage =
      calq::deploy::integer_arithmetic(calq::deploy::ort_cpu_profile());
  signed_storage.uint8_activations = false;
  calq::set_integer_arithmetic(*model, signed_storage);
  EXPECT_FLOAT_EQ(model->forward(a, b).item<float>(), -112.0f * sc);
}

// The integer path is inference only: training mode, a trace and autograd through a parameter
// or input keep the float simulation; an input off its grid too.
TEST(IntegerArithmetic, FallsBackToTheFloatSimulationWhereItDoesNotApply) {
  const float sa = 0.0784313753f, sb = 0.0784313753f, sc = 0.156862751f;
  TwoInputAdd model = prepared_add(sa, sb, sc);
  calq::set_integer_arithmetic(*model,
                               calq::deploy::integer_arithmetic(calq::deploy::ort_cpu_profile()));
  const at::Tensor a = torch::full({1}, -113.0f * sa);
  const at::Tensor b = torch::full({1}, -112.0f * sb);
  {
    // Autograd through an input.
    const at::Tensor tracked = a.clone().requires_grad_(true);
    const at::Tensor y = model->add(tracked, b);
    EXPECT_FLOAT_EQ(y.item<float>(), -113.0f * sc);
    EXPECT_TRUE(y.requires_grad());
  }
  torch::NoGradGuard no_grad;
  {
    // An input off its grid: the float simulation.
    EXPECT_FLOAT_EQ(model->add(a + 0.01f, b).item<float>(),
                    std::nearbyint((-113.0f * sa + 0.01f - 112.0f * sb) / sc) * sc);
  }
  model->add->train();
  EXPECT_FLOAT_EQ(model->add(a, b).item<float>(), -113.0f * sc);
  model->add->eval();
  EXPECT_EQ(model->add->integer_calls(), 0);
  EXPECT_FLOAT_EQ(model->add(a, b).item<float>(), -112.0f * sc);
  EXPECT_EQ(model->add->integer_calls(), 1);
}

}  // namespace
