#include "calq/analysis/equalization.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "calq/nn/conv.h"
#include "calq/nn/linear.h"
#include "calq/trace.h"

namespace calq {
namespace analysis {
namespace {

using nn::detail::ConvBlockImpl;
using nn::detail::LinearBlockImpl;

bool weighted(const nn::QuantModuleImpl* m) {
  return dynamic_cast<const ConvBlockImpl*>(m) != nullptr ||
         dynamic_cast<const LinearBlockImpl*>(m) != nullptr;
}

// Modules that commute with a positive per-channel scale and keep channel c as channel c
// (Flatten: as the block of features c * HW .. (c + 1) * HW - 1).
bool commutes_with_scale(const nn::QuantModuleImpl* m) {
  const std::string& t = m->type_name();
  return t == "MaxPool2d" || t == "AvgPool2d" || t == "AdaptiveAvgPool2d" || t == "Identity" ||
         t == "Flatten";
}

// One pair: first's output channels feed second's input channels, `block` input features per
// channel (1, or H*W through a Flatten).
struct Pair {
  nn::QuantModuleImpl* first = nullptr;
  nn::QuantModuleImpl* second = nullptr;
  std::string first_path, second_path, via;
  int64_t channels = 0;
  int64_t block = 1;
};

// The float weight the layer computes with (BN folded), as [C_out, ...].
at::Tensor folded_weight(nn::QuantModuleImpl* m) {
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) return conv->folded_weight_and_bias().first;
  auto* linear = dynamic_cast<LinearBlockImpl*>(m);
  TORCH_INTERNAL_ASSERT(linear != nullptr);
  return linear->linear->weight;
}

int64_t out_channels(nn::QuantModuleImpl* m) {
  return folded_weight(m).size(0);
}

// max |W[c, ...]| per output channel c.
at::Tensor output_channel_ranges(nn::QuantModuleImpl* m) {
  const at::Tensor w = folded_weight(m).detach();
  return w.abs().reshape({w.size(0), -1}).amax(1).to(at::kDouble);
}

// max |W| over the weights that read input channel c (block features per channel).
at::Tensor input_channel_ranges(nn::QuantModuleImpl* m, int64_t channels, int64_t block) {
  const at::Tensor w = folded_weight(m).detach().abs();
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) {
    const int64_t groups = conv->conv->options.groups();
    const int64_t in_per_group = w.size(1);
    const int64_t out_per_group = w.size(0) / groups;
    at::Tensor r = at::zeros({channels}, at::kDouble);
    // [G, out/G, in/G, kh, kw] -> max over out and kernel: [G, in/G] -> channel g * in/G + i.
    r = w.reshape({groups, out_per_group, in_per_group, -1}).amax({1, 3}).reshape({-1});
    return r.to(at::kDouble);
  }
  // Linear: [out, C * block] -> [out, C, block] -> max over out and block.
  return w.reshape({w.size(0), channels, block}).amax({0, 2}).to(at::kDouble);
}

// Multiplies output channel c of m by factor[c].
void scale_outputs(nn::QuantModuleImpl* m, const at::Tensor& factor) {
  torch::NoGradGuard no_grad;
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) {
    if (conv->has_bn()) {
      const at::Tensor f = factor.to(conv->bn->weight.scalar_type());
      conv->bn->weight.mul_(f);
      conv->bn->bias.mul_(f);
      return;
    }
    conv->conv->weight.mul_(factor.to(conv->conv->weight.scalar_type()).reshape({-1, 1, 1, 1}));
    if (conv->conv->bias.defined())
      conv->conv->bias.mul_(factor.to(conv->conv->bias.scalar_type()));
    return;
  }
  auto* linear = dynamic_cast<LinearBlockImpl*>(m);
  linear->linear->weight.mul_(factor.to(linear->linear->weight.scalar_type()).reshape({-1, 1}));
  if (linear->linear->bias.defined()) {
    linear->linear->bias.mul_(factor.to(linear->linear->bias.scalar_type()));
  }
}

// Multiplies every weight that reads input channel c of m by factor[c].
void scale_inputs(nn::QuantModuleImpl* m, const at::Tensor& factor, int64_t block) {
  torch::NoGradGuard no_grad;
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) {
    at::Tensor& w = conv->conv->weight;
    const int64_t groups = conv->conv->options.groups();
    const int64_t in_per_group = w.size(1);
    const int64_t out_per_group = w.size(0) / groups;
    const at::Tensor f = factor.to(w.scalar_type()).reshape({groups, 1, in_per_group, 1});
    w.view({groups, out_per_group, in_per_group, -1}).mul_(f);
    return;
  }
  auto* linear = dynamic_cast<LinearBlockImpl*>(m);
  at::Tensor& w = linear->linear->weight;
  w.view({w.size(0), -1, block}).mul_(factor.to(w.scalar_type()).reshape({1, -1, 1}));
}

std::string activation_name(nn::QuantModuleImpl* m) {
  if (auto* conv = dynamic_cast<ConvBlockImpl*>(m)) {
    switch (conv->activation()) {
      case nn::Activation::none:
        return "none";
      case nn::Activation::relu:
        return "relu";
      case nn::Activation::relu6:
        return "relu6";
    }
  }
  return dynamic_cast<LinearBlockImpl*>(m)->relu() ? "relu" : "none";
}

// Walks the trace for consecutive weighted layers. Pairs whose only obstacle is a ReLU6 are
// returned in `relu6` (and not in pairs) so that the caller decides.
void find_pairs(const Trace& trace, std::vector<Pair>* pairs, std::vector<Pair>* relu6,
                std::vector<std::string>* skipped) {
  auto single_reader = [&](int64_t value) -> const TracedCall* {
    for (int64_t out : trace.outputs) {
      if (out == value) return nullptr;  // also a model output
    }
    const std::vector<int64_t> readers = trace.consumers(value);
    if (readers.size() != 1) return nullptr;
    return &trace.calls[readers[0]];
  };
  for (const TracedCall& call : trace.calls) {
    if (!weighted(call.module)) continue;
    Pair pair;
    pair.first = call.module;
    pair.first_path = call.path;
    pair.channels = out_channels(call.module);
    int64_t value = call.output;
    const TracedCall* next = single_reader(value);
    std::string via;
    bool broken = false;
    while (next != nullptr && !weighted(next->module)) {
      if (!commutes_with_scale(next->module) || next->inputs.size() != 1) {
        broken = true;
        break;
      }
      if (next->module->type_name() == "Flatten") {
        const std::vector<int64_t>& shape = trace.values[value].shape;
        if (shape.size() < 2 || shape[1] != pair.channels) {
          broken = true;
          break;
        }
        int64_t block = 1;
        for (size_t d = 2; d < shape.size(); ++d) block *= shape[d];
        pair.block *= block;
      }
      via += " -> " + next->path;
      value = next->output;
      next = single_reader(value);
    }
    if (broken || next == nullptr) continue;  // not a chain of two weighted layers
    pair.second = next->module;
    pair.second_path = next->path;
    pair.via = via;
    const std::string name = pair.first_path + via + " -> " + pair.second_path;
    if (next->inputs.size() != 1) {
      skipped->push_back(name + ": the second layer reads more than one tensor");
      continue;
    }
    const at::Tensor w2 = folded_weight(pair.second);
    const int64_t in_features =
        dynamic_cast<ConvBlockImpl*>(pair.second) != nullptr
            ? w2.size(1) * dynamic_cast<ConvBlockImpl*>(pair.second)->conv->options.groups()
            : w2.size(1);
    if (in_features != pair.channels * pair.block) {
      skipped->push_back(name + ": " + std::to_string(pair.channels) +
                         " channels do not map onto " + std::to_string(in_features) + " inputs");
      continue;
    }
    auto* conv = dynamic_cast<ConvBlockImpl*>(pair.first);
    if (conv != nullptr && conv->has_bn() && !conv->bn->weight.defined()) {
      skipped->push_back(name + ": batch norm without affine parameters cannot be scaled");
      continue;
    }
    const std::string act = activation_name(pair.first);
    if (act == "relu6") {
      relu6->push_back(pair);
      continue;
    }
    pairs->push_back(pair);
  }
}

Trace trace_model(torch::nn::Module& model, const Forward& forward, const at::Tensor& example) {
  return trace(
      model, [&forward](const at::Tensor& x) { return forward(x); }, example);
}

}  // namespace

Relu6Policy relu6_policy_from_string(const std::string& name) {
  if (name == "keep") return Relu6Policy::keep;
  if (name == "to_relu") return Relu6Policy::to_relu;
  TORCH_CHECK(false, "unknown ReLU6 policy '", name, "'; valid policies: keep, to_relu");
}

std::string to_string(Relu6Policy policy) {
  return policy == Relu6Policy::keep ? "keep" : "to_relu";
}

bool EqualizationOptions::operator==(const EqualizationOptions& other) const {
  return relu6_ == other.relu6_ && max_sweeps_ == other.max_sweeps_ &&
         tolerance_ == other.tolerance_ && max_scale_ == other.max_scale_;
}

std::string EqualizationReport::str() const {
  std::ostringstream out;
  out << pairs.size() << " pairs equalized in " << sweeps << " sweeps (scales " << min_scale
      << " .. " << max_scale << ")";
  if (!relu6_replaced.empty()) out << ", " << relu6_replaced.size() << " ReLU6 -> ReLU";
  if (!skipped.empty()) out << ", " << skipped.size() << " skipped";
  for (const auto& s : skipped) out << "\n  skipped " << s;
  return out.str();
}

std::vector<std::string> replace_relu6_for_equalization(torch::nn::Module& model,
                                                        const Forward& forward,
                                                        const at::Tensor& example) {
  std::vector<Pair> pairs, relu6;
  std::vector<std::string> skipped, replaced;
  find_pairs(trace_model(model, forward, example), &pairs, &relu6, &skipped);
  for (const Pair& p : relu6) {
    auto* conv = dynamic_cast<ConvBlockImpl*>(p.first);
    TORCH_INTERNAL_ASSERT(conv != nullptr);
    if (conv->activation() != nn::Activation::relu6) continue;  // a block in two pairs
    conv->set_activation(nn::Activation::relu);
    replaced.push_back(p.first_path);
  }
  return replaced;
}

EqualizationReport equalize(torch::nn::Module& model, const Forward& forward,
                            const at::Tensor& example, const EqualizationOptions& options) {
  TORCH_CHECK(options.max_sweeps() >= 1, "equalize: max_sweeps must be >= 1, got ",
              options.max_sweeps());
  TORCH_CHECK(options.max_scale() >= 1.0 && std::isfinite(options.max_scale()),
              "equalize: max_scale must be finite and >= 1, got ", options.max_scale());
  EqualizationReport report;
  if (options.relu6() == Relu6Policy::to_relu) {
    report.relu6_replaced = replace_relu6_for_equalization(model, forward, example);
  }
  std::vector<Pair> pairs, relu6;
  find_pairs(trace_model(model, forward, example), &pairs, &relu6, &report.skipped);
  for (const Pair& p : relu6) {
    report.skipped.push_back(p.first_path + p.via + " -> " + p.second_path +
                             ": ReLU6 between them does not commute with a scale (relu6 policy "
                             "'to_relu' replaces it by ReLU)");
  }
  for (const Pair& p : pairs) report.pairs.push_back(p.first_path + p.via + " -> " + p.second_path);
  if (pairs.empty()) return report;

  std::vector<at::Tensor> total(pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) total[i] = at::ones({pairs[i].channels}, at::kDouble);
  for (int64_t sweep = 0; sweep < options.max_sweeps(); ++sweep) {
    double moved = 0.0;
    for (size_t i = 0; i < pairs.size(); ++i) {
      const Pair& p = pairs[i];
      const at::Tensor r1 = output_channel_ranges(p.first);
      const at::Tensor r2 = input_channel_ranges(p.second, p.channels, p.block);
      // s = sqrt(r1 / r2); a channel with a zero range on either side keeps s = 1.
      const at::Tensor usable = (r1 > 0) & (r2 > 0);
      at::Tensor s = at::where(usable, at::sqrt(r1 / at::where(usable, r2, at::ones_like(r2))),
                               at::ones_like(r1));
      s = s.clamp(1.0 / options.max_scale(), options.max_scale());
      const at::Tensor limit_low = 1.0 / options.max_scale() / total[i];
      const at::Tensor limit_high = options.max_scale() / total[i];
      s = at::max(at::min(s, limit_high), limit_low);  // the total stays within the clamp
      moved = std::max(moved, (s - 1.0).abs().max().item<double>());
      scale_outputs(p.first, 1.0 / s);
      scale_inputs(p.second, s, p.block);
      total[i] = total[i] * s;
    }
    report.sweeps = sweep + 1;
    if (moved <= options.tolerance()) break;
  }
  report.min_scale = std::numeric_limits<double>::infinity();
  report.max_scale = 0.0;
  for (const at::Tensor& t : total) {
    report.min_scale = std::min(report.min_scale, t.min().item<double>());
    report.max_scale = std::max(report.max_scale, t.max().item<double>());
  }
  return report;
}

}  // namespace analysis
}  // namespace calq
