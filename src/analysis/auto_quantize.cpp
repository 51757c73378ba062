// auto_quantize_onnx: import -> auto_recipe on in-memory samples -> QDQ export.
#include "calq/analysis/auto_quantize.h"

#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <cmath>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>

#include "calq/analysis/equalization.h"
#include "calq/graph/graph.h"
#include "calq/util/timer.h"

namespace calq {
namespace analysis {
namespace {

// Up to max_samples (0: all) samples of `source` as batches, each checked against the model's
// input; counts them in *samples.
std::vector<at::Tensor> read_batches(deploy::CalibrationSource& source,
                                     const onnx::ImportedModel& model, int64_t max_samples,
                                     int64_t* samples,
                                     const std::function<void(int64_t)>& on_batch) {
  std::vector<at::Tensor> batches;
  while (max_samples == 0 || *samples < max_samples) {
    std::vector<at::Tensor> batch = source.next();
    if (batch.empty()) break;
    TORCH_CHECK(batch.size() == 1, "auto_quantize_onnx: a data source gave ", batch.size(),
                " tensors per batch; the model has one input");
    onnx::check_input(model.inputs[0], batch[0]);
    at::Tensor x = batch[0];
    if (max_samples > 0 && *samples + x.size(0) > max_samples) {
      x = x.slice(0, 0, max_samples - *samples);
    }
    *samples += x.size(0);
    batches.push_back(x.contiguous());
    if (on_batch) on_batch(*samples);
  }
  return batches;
}

// Batch i is held out where floor((i + 1) f) passes an integer (every 1/f-th batch, spread over
// the file, so that a file sorted by class does not hold out only its last classes); at
// least one batch each way.
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> split_held_out(
    std::vector<at::Tensor> batches, double fraction) {
  std::vector<at::Tensor> calibrate, held_out;
  for (size_t i = 0; i < batches.size(); ++i) {
    // (1e-9: 3 * (1 / 3.0) must count as 1)
    const bool hold = std::floor(static_cast<double>(i + 1) * fraction + 1e-9) >
                      std::floor(static_cast<double>(i) * fraction + 1e-9);
    (hold ? held_out : calibrate).push_back(std::move(batches[i]));
  }
  if (held_out.empty()) {
    held_out.push_back(std::move(calibrate.back()));
    calibrate.pop_back();
  }
  if (calibrate.empty()) {
    calibrate.push_back(std::move(held_out.front()));
    held_out.erase(held_out.begin());
  }
  return {std::move(calibrate), std::move(held_out)};
}

}  // namespace

AutoQuantizeReport auto_quantize_onnx(const std::string& input_path,
                                      deploy::CalibrationSource& calibration,
                                      const std::string& output_path,
                                      const deploy::QuantizeOptions& options,
                                      const AutoQuantizeOptions& auto_options,
                                      deploy::CalibrationSource* held_out_source) {
  TORCH_CHECK(auto_options.max_samples() >= 0,
              "auto_quantize_onnx: max_samples must be >= 0 (0 = every sample), got ",
              auto_options.max_samples());
  TORCH_CHECK(auto_options.held_out_fraction() > 0.0 && auto_options.held_out_fraction() < 1.0,
              "auto_quantize_onnx: held_out_fraction must be in (0, 1), got ",
              auto_options.held_out_fraction());
  // Checked before any data is read: the model must be a float model with one input.
  const onnx::ImportedModel first = deploy::import_for_quantization(input_path);

  int64_t samples = 0;
  std::vector<at::Tensor> batches =
      read_batches(calibration, first, auto_options.max_samples(), &samples, options.on_batch());
  std::vector<at::Tensor> held_out;
  int64_t held_samples = 0;
  if (held_out_source != nullptr) {
    held_out =
        read_batches(*held_out_source, first, auto_options.max_samples(), &held_samples, nullptr);
    TORCH_CHECK(!held_out.empty(), "auto_quantize_onnx: the held-out source gave no batch");
    TORCH_CHECK(!batches.empty(), "auto_quantize_onnx: the calibration source gave no batch");
  } else {
    TORCH_CHECK(
        batches.size() >= 2, "auto_quantize_onnx: the calibration source gave ", batches.size(),
        " batch(es) (", samples,
        " samples); the automatic recipe needs at least two, one to calibrate on and one "
        "held out to choose with. Give more samples",
        auto_options.max_samples() > 0
            ? " (max_samples reads at most " + std::to_string(auto_options.max_samples()) + ")"
            : std::string(),
        ", a smaller batch size or held-out data");
    std::tie(batches, held_out) =
        split_held_out(std::move(batches), auto_options.held_out_fraction());
  }

  const deploy::Profile& profile = options.export_options().profile();
  Recipe base;
  deploy::QuantizeOptions grid = options;
  if (grid.qconfig_path().empty()) grid.observer("min_max");  // the grid; auto picks observers
  base.global = deploy::quantize_qconfig(grid);

  // Every candidate is a fresh import (independent weights); the file's names and values,
  // which the export needs, are the same for all of them.
  const at::Tensor example = batches.front().slice(0, 0, 1).clone();
  const ModelFactory factory = [&input_path, &options, &example](const Recipe& r) {
    onnx::ImportedModel m = deploy::import_for_quantization(input_path);
    if (r.steps.cross_layer_equalization() &&
        r.steps.equalization().relu6() == Relu6Policy::to_relu) {
      // Before prepare: the fused ConvReLU6 modules prepare makes cannot be changed afterwards.
      graph::Graph g = m.graph;
      replace_relu6_for_equalization(
          *m.graph, [g](const at::Tensor& x) mutable { return g->forward(x); }, example);
    }
    prepare_qat(*m.graph, r.global, deploy::quantize_overrides(m, r.global, options, r.overrides),
                options.march());
    return std::static_pointer_cast<torch::nn::Module>(m.graph.ptr());
  };
  const ModuleForward forward = [](torch::nn::Module& model, const at::Tensor& x) {
    return dynamic_cast<graph::GraphImpl&>(model).forward(x);
  };
  AutoOptions search = auto_options.search();
  search.unsigned_activations(profile.unsigned_activations);

  AutoQuantizeReport report;
  util::Timer timer;
  report.search = auto_recipe(factory, forward, base, batches, held_out, search);
  report.quantize.calibration_seconds = timer.seconds();
  report.quantize.batches = static_cast<int64_t>(batches.size());
  for (const auto& b : batches) report.quantize.samples += b.size(0);
  report.held_out_batches = static_cast<int64_t>(held_out.size());
  for (const auto& b : held_out) report.held_out_samples += b.size(0);

  onnx::ImportedModel chosen = first;
  auto chosen_graph = std::dynamic_pointer_cast<graph::GraphImpl>(report.search.model);
  TORCH_CHECK(chosen_graph != nullptr, "auto_quantize_onnx: the chosen model is not a graph");
  chosen.graph = graph::Graph(chosen_graph);
  // What the chosen recipe kept float (the same overrides the factory gave it).
  deploy::quantize_overrides(chosen, report.search.recipe.global, options,
                             report.search.recipe.overrides, &report.quantize);
  report.quantize.export_report =
      deploy::export_qdq(chosen, {example}, output_path, options.export_options());
  return report;
}

std::string AutoQuantizeReport::str(const deploy::Profile& profile) const {
  std::ostringstream out;
  out << search.summary(profile) << "held out " << held_out_samples << " samples ("
      << held_out_batches << " batches) to choose with; the search ";
  out << quantize.str();
  return out.str();
}

}  // namespace analysis
}  // namespace calq
