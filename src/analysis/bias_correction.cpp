#include "calq/analysis/bias_correction.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <cmath>
#include <map>
#include <sstream>

#include "calq/nn/conv.h"
#include "calq/nn/linear.h"
#include "calq/util/timer.h"

namespace calq {
namespace analysis {
namespace {

using nn::detail::ConvBlockImpl;
using nn::detail::LinearBlockImpl;

// The layer's folded float weight and bias.
std::pair<at::Tensor, at::Tensor> weight_and_bias(nn::QuantModuleImpl* m) {
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) return conv->folded_weight_and_bias();
  auto* linear = dynamic_cast<LinearBlockImpl*>(m);
  TORCH_INTERNAL_ASSERT(linear != nullptr);
  const at::Tensor& w = linear->linear->weight;
  const at::Tensor b =
      linear->linear->bias.defined() ? linear->linear->bias : at::zeros({w.size(0)}, w.options());
  return {w, b};
}

// The layer's output before its activation, as [rows, C].
at::Tensor pre_activation(nn::QuantModuleImpl* m, const at::Tensor& x, const at::Tensor& w,
                          const at::Tensor& b) {
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) {
    const auto& o = conv->conv->options;
    const auto& padding = c10::get<torch::ExpandingArray<2>>(o.padding());
    const at::Tensor y = at::conv2d(x, w, b, *o.stride(), *padding, *o.dilation(), o.groups());
    return y.transpose(0, 1).reshape({y.size(1), -1}).t();
  }
  const at::Tensor y = at::linear(x, w, b);
  return y.reshape({-1, y.size(-1)});
}

bool has_bias(nn::QuantModuleImpl* m) {
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) {
    return conv->has_bn() ? conv->bn->bias.defined() : conv->conv->bias.defined();
  }
  return dynamic_cast<LinearBlockImpl*>(m)->linear->bias.defined();
}

// Subtracts d (per output channel) from the layer's bias.
void subtract_from_bias(nn::QuantModuleImpl* m, const at::Tensor& d) {
  torch::NoGradGuard no_grad;
  at::Tensor bias;
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) {
    bias = conv->has_bn() ? conv->bn->bias : conv->conv->bias;  // beta enters b_fold as is
  } else {
    bias = dynamic_cast<LinearBlockImpl*>(m)->linear->bias;
  }
  bias.sub_(d.to(bias.scalar_type()));
}

// Per-channel sums of a [rows, C] tensor (float64).
struct ChannelMoments {
  at::Tensor sum, sum_sq;
  int64_t rows = 0;
  void add(const at::Tensor& y) {
    const at::Tensor v = y.to(at::kDouble);
    const at::Tensor s = v.sum(0), q = (v * v).sum(0);
    sum = sum.defined() ? sum + s : s;
    sum_sq = sum_sq.defined() ? sum_sq + q : q;
    rows += v.size(0);
  }
  at::Tensor mean() const { return sum / static_cast<double>(rows); }
  at::Tensor std() const {
    const at::Tensor m = mean();
    return (sum_sq / static_cast<double>(rows) - m * m).clamp_min(0.0).sqrt();
  }
};

}  // namespace

std::string BiasCorrectionReport::str() const {
  std::ostringstream out;
  out << corrected.size() << " layers corrected in " << passes << " passes (" << seconds << " s)";
  for (const auto& c : corrected) out << "\n  " << c;
  for (const auto& s : skipped) out << "\n  skipped " << s;
  return out.str();
}

BiasCorrectionReport correct_bias(torch::nn::Module& model, const Forward& forward,
                                  const std::vector<at::Tensor>& batches) {
  TORCH_CHECK(!batches.empty(), "correct_bias: no batches were given; pass calibration batches");
  util::Timer timer;
  torch::NoGradGuard no_grad;
  BiasCorrectionReport report;
  set_all(model, FakeQuantState::FLOAT);
  std::vector<QuantPoint> layers;
  for (const QuantPoint& p : quantization_points(model, forward, batches[0])) {
    if (dynamic_cast<ConvBlockImpl*>(p.module) == nullptr &&
        dynamic_cast<LinearBlockImpl*>(p.module) == nullptr) {
      continue;
    }
    if (!has_bias(p.module)) {
      report.skipped.push_back(p.name + ": no bias to hold the correction");
      continue;
    }
    layers.push_back(p);
  }
  if (layers.empty()) return report;
  std::vector<const nn::QuantModuleImpl*> modules;
  for (const auto& p : layers) modules.push_back(p.module);

  // Float means of every layer's pre-activation output, before any correction.
  std::map<const nn::QuantModuleImpl*, ChannelMoments> reference;
  {
    OutputRecorder recorder(modules);
    for (const at::Tensor& x : batches) {
      recorder.run(forward, x);
      for (const auto& call : recorder.calls()) {
        auto* m = const_cast<nn::QuantModuleImpl*>(call.module);
        const auto wb = weight_and_bias(m);
        reference[call.module].add(pre_activation(m, call.inputs.at(0), wb.first, wb.second));
      }
    }
    report.passes += 1;
  }

  set_all(model, FakeQuantState::VALIDATION);
  for (const QuantPoint& layer : layers) {
    auto wb = weight_and_bias(layer.module);
    // The weight as VALIDATION computes it (its deployed scale: raised where the int32 bias
    // would overflow).
    const at::Tensor w_q =
        layer.has_weight() ? layer.module->simulated_weight(wb.first, wb.second) : wb.first;
    ChannelMoments quantized;
    OutputRecorder recorder({layer.module});
    for (const at::Tensor& x : batches) {
      recorder.run(forward, x);
      for (const auto& call : recorder.calls()) {
        quantized.add(pre_activation(layer.module, call.inputs.at(0), w_q, wb.second));
      }
    }
    report.passes += 1;
    const ChannelMoments& f = reference.at(layer.module);
    TORCH_CHECK(quantized.rows == f.rows, "correct_bias: layer '", layer.name, "' saw ", f.rows,
                " positions in the float pass and ", quantized.rows,
                " in the quantized pass; the forward must not depend on the quantizers' state");
    const at::Tensor shift = quantized.mean() - f.mean();
    subtract_from_bias(layer.module, shift);
    const double max_shift = shift.abs().max().item<double>();
    const double std = f.std().mean().item<double>();
    std::ostringstream line;
    line << layer.name << ": max |shift| " << max_shift << " ("
         << (std > 0 ? 100.0 * max_shift / std : 0.0) << " % of the mean channel std)";
    report.corrected.push_back(line.str());
  }
  report.seconds = timer.seconds();
  return report;
}

}  // namespace analysis
}  // namespace calq
