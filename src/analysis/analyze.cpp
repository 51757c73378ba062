#include "calq/analysis/analyze.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "calq/observers/histogram_observer.h"
#include "calq/observers/registry.h"
#include "calq/util/timer.h"

namespace calq {
namespace analysis {
namespace {

// Float64 JSON numbers cannot hold infinities: an exact match (SQNR +inf) is written as null.
nlohmann::json number(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

nlohmann::json similarity_json(const Similarity& s) {
  if (s.count == 0) return nullptr;
  return {{"sqnr_db", number(s.sqnr_db)},
          {"cosine", number(s.cosine)},
          {"max_abs_err", number(s.max_abs_err)},
          {"mse", number(s.mse)},
          {"values", s.count}};
}

nlohmann::json divergence_json(const OutputDivergence& d) {
  nlohmann::json j = {{"samples", d.samples}, {"sqnr_db", number(d.sqnr_db)}};
  if (d.classifier) {
    j["kl"] = number(d.kl);
    j["top1_agreement_pct"] = d.top1_agreement;
    j["disagreement_pct"] = d.disagreement_pct();
  }
  return j;
}

// Every quantizer must have a scale before analysis: name the point that has none.
void check_calibrated(const std::vector<QuantPoint>& points) {
  for (const auto& p : points) {
    for (const auto& fq : {p.weight, p.output}) {
      if (fq == nullptr) continue;
      try {
        fq->qparams();
      } catch (const c10::Error& error) {
        TORCH_CHECK(false, "analyze: quantization point '", p.name,
                    "' has no scale yet; calibrate the model first (",
                    error.what_without_backtrace(), ")");
      }
    }
  }
}

// Per-point accumulators.
struct Meters {
  SimilarityMeter own, accumulated, weight_only, activation_only, weight;
  ClippingMeter clipped, weight_clipped;
  DivergenceMeter only_quantized, only_float;
  observers::Observer histogram{nullptr};
};

// Outputs of one pass, per module, in call order.
using CallOutputs = std::map<const nn::QuantModuleImpl*, std::vector<at::Tensor>>;

CallOutputs by_module(const OutputRecorder& recorder) {
  CallOutputs out;
  for (const auto& call : recorder.calls()) out[call.module].push_back(call.output);
  return out;
}

const std::vector<at::Tensor>& outputs_of(const CallOutputs& outputs,
                                          const nn::QuantModuleImpl* module) {
  static const std::vector<at::Tensor> none;
  auto found = outputs.find(module);
  return found == outputs.end() ? none : found->second;
}

void compare_calls(const std::vector<at::Tensor>& reference, const std::vector<at::Tensor>& test,
                   SimilarityMeter& meter, const std::string& point) {
  TORCH_CHECK(reference.size() == test.size(), "analyze: point '", point, "' ran ",
              reference.size(), " times in the float pass and ", test.size(),
              " times in a quantized pass; the forward must not depend on the quantizers' state");
  for (size_t k = 0; k < reference.size(); ++k) meter.add(reference[k], test[k]);
}

}  // namespace

std::vector<size_t> Analysis::ranking() const {
  std::vector<size_t> order;
  for (size_t i = 0; i < points.size(); ++i) {
    if (points[i].sensitivity_rank > 0) order.push_back(i);
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return points[a].sensitivity_rank < points[b].sensitivity_rank;
  });
  return order;
}

nlohmann::json Analysis::to_json() const {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& p : points) {
    nlohmann::json j = {{"name", p.name},
                        {"type", p.type},
                        {"weight_spec", p.weight_spec},
                        {"output_spec", p.output_spec}};
    // The point's own error at the top level (the schema), nested copies below.
    const Similarity& headline = p.own.count > 0 ? p.own : p.accumulated;
    j["sqnr_db"] = number(headline.sqnr_db);
    j["cosine"] = number(headline.cosine);
    j["max_abs_err"] = number(headline.max_abs_err);
    j["clipped_pct"] = p.clipped_pct;
    j["own"] = similarity_json(p.own);
    j["accumulated"] = similarity_json(p.accumulated);
    j["weight_only"] = similarity_json(p.weight_only);
    j["activation_only"] = similarity_json(p.activation_only);
    j["weight"] = similarity_json(p.weight);
    j["weight_clipped_pct"] = p.weight_clipped_pct;
    if (!p.output_spec.empty()) {
      j["scale"] = p.scale;
      j["range"] = {p.range_lo, p.range_hi};
    }
    if (p.sensitivity_rank > 0) {
      j["sensitivity_rank"] = p.sensitivity_rank;
      j["sensitivity"] = divergence_json(p.only_quantized);
      j["left_float"] = divergence_json(p.only_float);
      j["sensitivity_sqnr_db"] = number(p.only_quantized.sqnr_db);
      if (p.only_quantized.classifier) {
        j["sensitivity_kl"] = number(p.only_quantized.kl);
        j["sensitivity_top1"] = p.only_quantized.disagreement_pct();
        j["left_float_kl"] = number(p.only_float.kl);
        j["left_float_top1"] = p.only_float.disagreement_pct();
      }
    }
    list.push_back(j);
  }
  nlohmann::json ranking_json = nlohmann::json::array();
  for (size_t i : ranking()) ranking_json.push_back(points[i].name);
  return {{"points", list},
          {"ranking", ranking_json},
          {"model", divergence_json(all_quantized)},
          {"cost",
           {{"passes", passes},
            {"passes_formula", points.empty() ? "" : (passes > 2 ? "2N + 2" : "2")},
            {"points", points.size()},
            {"batches", batches},
            {"samples", samples},
            {"seconds", seconds}}}};
}

Analysis analyze(torch::nn::Module& model, const Forward& forward,
                 const std::vector<at::Tensor>& batches, const AnalyzeOptions& options) {
  TORCH_CHECK(!batches.empty(), "analyze: no batches were given; pass at least one");
  TORCH_CHECK(options.histogram_bins() >= 2, "analyze: histogram_bins = ", options.histogram_bins(),
              " must be >= 2");
  util::Timer timer;
  set_all(model, FakeQuantState::FLOAT);
  const std::vector<QuantPoint> points = quantization_points(model, forward, batches[0]);
  check_calibrated(points);
  const size_t n = points.size();

  std::vector<const nn::QuantModuleImpl*> modules;
  for (const auto& p : points) modules.push_back(p.module);
  OutputRecorder recorder(modules);
  std::vector<Meters> meters(n);
  if (options.histograms()) {
    for (size_t i = 0; i < n; ++i) {
      if (!points[i].has_output()) continue;
      meters[i].histogram =
          observers::make_observer("percentile", QuantSpec(), {{"bins", options.histogram_bins()}});
    }
  }
  DivergenceMeter all;
  Analysis result;

  for (const at::Tensor& x : batches) {
    // Float reference: every quantizer a pass-through.
    set_all(model, FakeQuantState::FLOAT);
    const at::Tensor float_output = recorder.run(forward, x);
    const CallOutputs reference = by_module(recorder);
    for (size_t i = 0; i < n; ++i) {
      if (meters[i].histogram.is_empty()) continue;
      for (const at::Tensor& y : outputs_of(reference, points[i].module)) {
        meters[i].histogram->update(y);
      }
    }

    // Every point quantized; the weight quantizers' taps see float and quantized weights.
    set_all(model, FakeQuantState::VALIDATION);
    for (size_t i = 0; i < n; ++i) {
      if (!points[i].has_weight()) continue;
      Meters& m = meters[i];
      FakeQuantizeImpl* fq = points[i].weight.get();
      points[i].weight->set_tap([&m, fq](const at::Tensor& in, const at::Tensor& out) {
        m.weight.add(in, out);
        m.weight_clipped.add(in, *fq);
      });
    }
    const at::Tensor quantized_output = recorder.run(forward, x);
    for (const auto& p : points) {
      if (p.has_weight()) p.weight->set_tap(nullptr);
    }
    all.add(float_output, quantized_output);
    const CallOutputs quantized = by_module(recorder);
    for (size_t i = 0; i < n; ++i) {
      compare_calls(outputs_of(reference, points[i].module),
                    outputs_of(quantized, points[i].module), meters[i].accumulated, points[i].name);
    }
    result.passes += 2;
    if (!options.sensitivity()) continue;

    for (size_t i = 0; i < n; ++i) {
      const QuantPoint& p = points[i];
      Meters& m = meters[i];
      // Only this point quantized: its own error, split at the output quantizer.
      set_all(model, FakeQuantState::FLOAT);
      p.set_state(FakeQuantState::VALIDATION);
      std::vector<at::Tensor> before, after;
      if (p.has_output()) {
        p.output->set_tap([&before, &after](const at::Tensor& in, const at::Tensor& out) {
          before.push_back(in.detach());
          after.push_back(out.detach());
        });
      }
      const at::Tensor only_quantized = recorder.run(forward, x);
      if (p.has_output()) p.output->set_tap(nullptr);
      m.only_quantized.add(float_output, only_quantized);
      const CallOutputs own = by_module(recorder);
      const auto& ref = outputs_of(reference, p.module);
      compare_calls(ref, outputs_of(own, p.module), m.own, p.name);
      if (p.has_output()) {
        compare_calls(ref, before, m.weight_only, p.name);
        for (size_t k = 0; k < before.size(); ++k) {
          m.activation_only.add(before[k], after[k]);
          m.clipped.add(before[k], *p.output);
        }
      }

      // Every point quantized but this one.
      set_all(model, FakeQuantState::VALIDATION);
      p.set_state(FakeQuantState::FLOAT);
      m.only_float.add(float_output, recorder.run(forward, x));
      result.passes += 2;
    }
  }
  set_all(model, FakeQuantState::VALIDATION);

  for (size_t i = 0; i < n; ++i) {
    const QuantPoint& p = points[i];
    Meters& m = meters[i];
    PointAnalysis a;
    a.name = p.name;
    a.type = p.type;
    if (p.has_weight()) a.weight_spec = p.weight->spec().str();
    if (p.has_output()) {
      a.output_spec = p.output->spec().str();
      a.scale = p.output->scale().max().item<double>();
      const auto range = p.output->represented_range();
      a.range_lo = range.first.min().item<double>();
      a.range_hi = range.second.max().item<double>();
    }
    a.own = m.own.result();
    a.accumulated = m.accumulated.result();
    if (p.has_output()) {
      a.weight_only = m.weight_only.result();
      a.activation_only = m.activation_only.result();
    } else {
      a.weight_only = a.own;  // a weight-only point: its whole own error is the weight's
    }
    if (!p.has_weight()) a.weight_only = Similarity();
    a.weight = m.weight.result();
    a.clipped_pct = m.clipped.percent();
    a.weight_clipped_pct = m.weight_clipped.percent();
    a.only_quantized = m.only_quantized.result();
    a.only_float = m.only_float.result();
    if (!m.histogram.is_empty() && m.histogram->has_data()) {
      a.histogram = dynamic_cast<observers::HistogramObserverImpl&>(*m.histogram).histogram();
    }
    result.points.push_back(std::move(a));
  }
  if (options.sensitivity()) {
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      const double da = result.points[a].only_quantized.divergence();
      const double db = result.points[b].only_quantized.divergence();
      if (da != db) return da > db;
      return result.points[a].name < result.points[b].name;
    });
    for (size_t r = 0; r < n; ++r) result.points[order[r]].sensitivity_rank = r + 1;
  }
  result.all_quantized = all.result();
  result.batches = static_cast<int64_t>(batches.size());
  result.samples = result.all_quantized.samples;
  result.passes /= result.batches;  // passes over the whole data
  result.seconds = timer.seconds();
  return result;
}

}  // namespace analysis
}  // namespace calq
