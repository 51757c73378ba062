// The seed's eleven steps for every recipe pair a user can take: calibration observer x QAT
// method x bit widths x march, on a small model with every module kind. After the load every
// QAT quantizer starts from exactly the calibrated scale; after a few QAT steps every scale is
// finite, positive and on its grid (a power of two under bernoulli), and every quantized tensor
// lies on its grid and equals an independent fake-quant reference written here.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "calq/nn.h"
#include "calq/workflow.h"

namespace {

using calq::FakeQuantizeImpl;
using calq::QuantSpec;

// quant -> conv (bias) -> depthwise Conv-BN-ReLU6 -> pointwise Conv-BN-ReLU -> add(pw, conv)
// -> add_relu(add, pw) -> cat(add_relu, conv) -> maxpool -> avgpool -> global pool -> flatten
// -> Linear-ReLU -> Linear (float output).
class MatrixNetImpl : public torch::nn::Module {
 public:
  MatrixNetImpl() {
    using calq::nn::Conv2dOptions;
    quant = register_module("quant", calq::nn::QuantStub());
    conv = register_module("conv", calq::nn::Conv2d(Conv2dOptions(1, 4, 3).padding(1)));
    depthwise = register_module(
        "depthwise",
        calq::nn::ConvBnReLU6_2d(Conv2dOptions(4, 4, 3).padding(1).groups(4).bias(false)));
    pointwise =
        register_module("pointwise", calq::nn::ConvBnReLU2d(Conv2dOptions(4, 4, 1).bias(false)));
    add = register_module("add", calq::nn::Add());
    add_relu = register_module("add_relu", calq::nn::AddReLU());
    cat = register_module("cat", calq::nn::Cat(1));
    maxpool = register_module("maxpool", calq::nn::MaxPool2d(calq::nn::MaxPool2dOptions(2)));
    avgpool = register_module("avgpool", calq::nn::AvgPool2d(calq::nn::AvgPool2dOptions(2)));
    gap =
        register_module("gap", calq::nn::AdaptiveAvgPool2d(calq::nn::AdaptiveAvgPool2dOptions(1)));
    flatten = register_module("flatten", calq::nn::Flatten());
    fc1 = register_module("fc1", calq::nn::LinearReLU(8, 8));
    fc2 = register_module("fc2", calq::nn::Linear(8, 3));
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor c = conv(quant(x));
    const at::Tensor p = pointwise(depthwise(c));
    const at::Tensor r = add_relu(add(p, c), p);
    const at::Tensor y = gap(avgpool(maxpool(cat->forward({r, c}))));
    return fc2(fc1(flatten(y)));
  }
  calq::nn::QuantStub quant{nullptr};
  calq::nn::Conv2d conv{nullptr};
  calq::nn::ConvBnReLU6_2d depthwise{nullptr};
  calq::nn::ConvBnReLU2d pointwise{nullptr};
  calq::nn::Add add{nullptr};
  calq::nn::AddReLU add_relu{nullptr};
  calq::nn::Cat cat{nullptr};
  calq::nn::MaxPool2d maxpool{nullptr};
  calq::nn::AvgPool2d avgpool{nullptr};
  calq::nn::AdaptiveAvgPool2d gap{nullptr};
  calq::nn::Flatten flatten{nullptr};
  calq::nn::LinearReLU fc1{nullptr};
  calq::nn::Linear fc2{nullptr};
};
TORCH_MODULE(MatrixNet);

// The float model: random weights and non-trivial batch-norm statistics (default statistics
// would make batch norm an identity).
MatrixNet float_model() {
  torch::manual_seed(7);
  MatrixNet model;
  torch::NoGradGuard no_grad;
  for (auto* bn : {&model->depthwise->bn, &model->pointwise->bn}) {
    (*bn)->running_mean.uniform_(-0.3, 0.3);
    (*bn)->running_var.uniform_(0.5, 2.0);
    (*bn)->weight.uniform_(0.5, 1.5);
    (*bn)->bias.uniform_(-0.2, 0.2);
  }
  return model;
}

std::vector<at::Tensor> data(int64_t count, int64_t seed) {
  torch::manual_seed(seed);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < count; ++i) out.push_back(torch::randn({4, 1, 8, 8}) * 1.5);
  return out;
}

struct Bits {
  const char* name;
  const char* weight;
  const char* activation;
};

MatrixNet prepared_copy(MatrixNet& source, const calq::QConfig& qconfig, calq::March march) {
  MatrixNet model;
  calq::copy_float_state(*source, *model);
  calq::fuse(*model);
  calq::QConfigOverrides overrides;
  calq::QConfig last = qconfig;
  last.activation = c10::nullopt;  // float logits: the seed's "32-bit output"
  overrides.by_name["fc2"] = last;
  calq::prepare_qat(*model, qconfig, overrides, march);
  return model;
}

std::map<std::string, FakeQuantizeImpl*> quantizers(torch::nn::Module& model) {
  std::map<std::string, FakeQuantizeImpl*> out;
  for (const auto& item : model.named_modules()) {
    if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(item.value().get())) out[item.key()] = fq;
  }
  return out;
}

bool power_of_two(double v) {
  int exponent = 0;
  return v > 0 && std::frexp(v, &exponent) == 0.5;
}

// Eq. 2 (and eq. 7 for pact) written from the definitions, element by element in float32 as
// docs/quantization.md states them: v = x / s, round half to even, clamp, times s.
at::Tensor reference(const at::Tensor& x_in, const FakeQuantizeImpl& fq) {
  const QuantSpec& spec = fq.spec();
  const at::Tensor x = x_in.detach().to(at::kFloat).contiguous();
  const at::Tensor scale = fq.scale().to(at::kFloat).contiguous();
  const at::Tensor zero_point = fq.zero_point().to(at::kLong).contiguous();
  const int64_t axis = spec.per_channel() ? spec.ch_axis() : -1;
  const int64_t channels = axis < 0 ? 1 : x.size(axis);
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < x.dim(); ++d) inner *= x.size(d);
  if (axis < 0) inner = x.numel();
  const double half_steps = (spec.quant_max() - spec.quant_min()) / 2.0;
  float clip = std::numeric_limits<float>::infinity();
  if (fq.method() == calq::FakeQuantMethod::pact) {
    clip = spec.power_of_two() ? static_cast<float>(scale.item<double>() * half_steps)
                               : static_cast<float>(fq.named_parameters()["alpha"].item<double>());
  }
  at::Tensor y = at::empty_like(x);
  const float* px = x.data_ptr<float>();
  float* py = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t c = axis < 0 ? 0 : (i / inner) % channels;
    const float s = scale.data_ptr<float>()[c];
    const int64_t z = zero_point.data_ptr<int64_t>()[c];
    const float v = std::min(std::max(px[i], -clip), clip) / s;
    float q =
        spec.rounding() == calq::Rounding::half_to_even ? std::nearbyint(v) : std::floor(v + 0.5f);
    q = std::min(std::max(q + static_cast<float>(z), static_cast<float>(spec.quant_min())),
                 static_cast<float>(spec.quant_max()));
    py[i] = (q - static_cast<float>(z)) * s;
  }
  return y;
}

void expect_on_grid(const at::Tensor& y_in, const FakeQuantizeImpl& fq, const std::string& name) {
  const QuantSpec& spec = fq.spec();
  const at::Tensor y = y_in.detach().to(at::kDouble).contiguous();
  const at::Tensor scale = fq.scale().to(at::kDouble);
  const at::Tensor zero_point = fq.zero_point().to(at::kDouble);
  const int64_t axis = spec.per_channel() ? spec.ch_axis() : -1;
  const int64_t channels = axis < 0 ? 1 : y.size(axis);
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < y.dim(); ++d) inner *= y.size(d);
  if (axis < 0) inner = y.numel();
  const double* p = y.data_ptr<double>();
  for (int64_t i = 0; i < y.numel(); ++i) {
    const int64_t c = axis < 0 ? 0 : (i / inner) % channels;
    const double level = p[i] / scale[c].item<double>() + zero_point[c].item<double>();
    // y = level * s in float32: level is recovered within float32 rounding.
    // Within float32 rounding of the level (2^-23 relative, 1e-3 absolute for small levels).
    ASSERT_NEAR(level, std::nearbyint(level), std::max(1e-3, std::abs(level) * 2.4e-7))
        << name << "[" << i << "]";
    ASSERT_GE(std::nearbyint(level), spec.quant_min()) << name;
    ASSERT_LE(std::nearbyint(level), spec.quant_max()) << name;
  }
}

void run_combination(MatrixNet& float_net, const std::string& observer, const std::string& method,
                     const Bits& bits, calq::March march) {
  SCOPED_TRACE(observer + " -> " + method + " W" + bits.weight + "/A" + bits.activation + " " +
               calq::to_string(march));
  const nlohmann::json activation_kwargs = {{"dtype", bits.activation}};
  const nlohmann::json weight_kwargs = {{"dtype", bits.weight}};

  // Steps 2-6: calibration recipe, calibrate, validate.
  MatrixNet calibration = prepared_copy(
      float_net,
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), observer,
                                "min_max", activation_kwargs, weight_kwargs),
      march);
  calq::calibrate(calibration, data(3, 11));
  calq::set_fake_quantize(*calibration, calq::FakeQuantState::VALIDATION);

  // Steps 7-8: a fresh QAT model with another recipe, loaded from the calibration.
  const std::string weight_method = method == "lsq" ? "lsq" : "fake_quant";
  MatrixNet qat =
      prepared_copy(float_net,
                    calq::get_default_qconfig(method, weight_method, "min_max", "min_max",
                                              activation_kwargs, weight_kwargs),
                    march);
  const calq::LoadReport report = calq::load_observer_params(*calibration, *qat);
  ASSERT_TRUE(report.ok()) << report.str();
  EXPECT_TRUE(report.converted.empty()) << report.str();
  auto calibrated = quantizers(*calibration);
  auto loaded = quantizers(*qat);
  ASSERT_EQ(calibrated.size(), loaded.size());
  for (const auto& item : loaded) {
    const at::Tensor expected = calibrated.at(item.first)->scale();
    const at::Tensor got = item.second->scale();
    if (item.second->method() == calq::FakeQuantMethod::pact &&
        !item.second->spec().power_of_two()) {
      // pact keeps alpha = s * half_steps as a float32 parameter: within one float ulp.
      EXPECT_NEAR(got.item<double>(), expected.item<double>(), expected.item<double>() * 1.2e-7)
          << item.first;
    } else {
      EXPECT_TRUE(at::equal(got, expected)) << item.first << ": " << got << " vs " << expected;
    }
    EXPECT_TRUE(at::equal(item.second->zero_point(), calibrated.at(item.first)->zero_point()));
  }

  // Steps 9-10: a few QAT steps.
  calq::set_fake_quantize(*qat, calq::FakeQuantState::QAT);
  torch::optim::Adam optimizer(qat->parameters(), torch::optim::AdamOptions(1e-2));
  int64_t step = 0;
  for (const at::Tensor& x : data(3, 12)) {
    optimizer.zero_grad();
    const at::Tensor target = torch::arange(x.size(0)) % 3;
    at::Tensor loss = torch::nn::functional::cross_entropy(qat->forward(x), target);
    ASSERT_TRUE(std::isfinite(loss.item<double>())) << "step " << step;
    loss.backward();
    optimizer.step();
    calq::project_quantizer_parameters(*qat);  // as pipeline::train does after every step
    ++step;
  }

  // Step 11: VALIDATION. Every scale (as used and as stored) valid and on its grid.
  calq::set_fake_quantize(*qat, calq::FakeQuantState::VALIDATION);
  const bool bernoulli = march == calq::March::bernoulli;
  for (const auto& item : quantizers(*qat)) {
    const at::Tensor used = item.second->scale().to(at::kDouble);
    std::vector<at::Tensor> scales = {used};
    for (const auto& entry : item.second->named_parameters(/*recurse=*/false)) {
      if (entry.key() == "scale") scales.push_back(entry.value().detach().to(at::kDouble));
    }
    for (const auto& entry : item.second->named_buffers(/*recurse=*/false)) {
      if (entry.key() == "scale") scales.push_back(entry.value().to(at::kDouble));
    }
    for (const at::Tensor& s : scales) {
      for (int64_t i = 0; i < s.numel(); ++i) {
        const double v = s[i].item<double>();
        ASSERT_TRUE(std::isfinite(v) && v > 0) << item.first << " scale " << v;
        if (bernoulli) ASSERT_TRUE(power_of_two(v)) << item.first << " scale " << v;
      }
    }
  }
  // Every quantized tensor (weights and outputs) on its grid and equal to the reference.
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> seen;
  for (const auto& item : quantizers(*qat)) {
    const std::string name = item.first;
    item.second->set_tap([&seen, name](const at::Tensor& in, const at::Tensor& out) {
      seen[name] = {in.detach().clone(), out.detach().clone()};
    });
  }
  {
    torch::NoGradGuard no_grad;
    qat->forward(data(1, 13)[0]);
  }
  ASSERT_EQ(seen.size(), quantizers(*qat).size());
  for (const auto& item : quantizers(*qat)) {
    const auto& io = seen.at(item.first);
    expect_on_grid(io.second, *item.second, item.first);
    const at::Tensor expected = reference(io.first, *item.second);
    EXPECT_TRUE(at::equal(io.second.to(at::kFloat), expected))
        << item.first << ": max diff " << (io.second - expected).abs().max().item<double>();
    if (!at::equal(io.second.to(at::kFloat), expected)) {
      const at::Tensor bad = (io.second - expected).abs().argmax();
      const int64_t k = bad.item<int64_t>();
      std::cerr << "x " << io.first.reshape(-1)[k].item<double>() << " y "
                << io.second.reshape(-1)[k].item<double>() << " ref "
                << expected.reshape(-1)[k].item<double>() << " scale "
                << item.second->scale().item<double>() << " alpha "
                << item.second->named_parameters()["alpha"].item<double>() << "\n";
    }
    item.second->set_tap(nullptr);
  }
}

TEST(Matrix, EveryRecipePairBitsAndMarch) {
  at::set_num_threads(1);
  MatrixNet float_net = float_model();
  const std::vector<Bits> all_bits = {
      {"8/8", "qint8", "qint8"}, {"4/4", "qint4", "qint4"}, {"8/16", "qint8", "qint16"}};
  int64_t combinations = 0;
  for (calq::March march : {calq::March::bayes, calq::March::bernoulli}) {
    for (const Bits& bits : all_bits) {
      for (const std::string observer : {"min_max", "percentile", "kl", "mse", "mix", "clip_std"}) {
        for (const std::string method : {"fake_quant", "lsq", "pact"}) {
          run_combination(float_net, observer, method, bits, march);
          ++combinations;
          if (HasFatalFailure()) return;
        }
      }
    }
  }
  EXPECT_EQ(combinations, 108);
}

}  // namespace
