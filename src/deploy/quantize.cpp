// quantize_onnx: import -> prepare -> streaming calibration -> QDQ export (docs/deploy.md).
#include "calq/deploy/quantize.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <chrono>
#include <set>
#include <sstream>

#include "calq/graph/graph.h"
#include "calq/onnx/import.h"
#include "calq/qconfig.h"

namespace calq {
namespace deploy {
namespace {

QuantDtype dtype_of_width(const std::string& width, const std::string& bits, const char* which) {
  if (width == "4") return QuantDtype::qint4;
  if (width == "8") return QuantDtype::qint8;
  if (width == "16") return QuantDtype::qint16;
  TORCH_CHECK(false, "bit widths '", bits, "': the ", which, " width '", width,
              "' is not supported; valid widths: 4, 8, 16 (e.g. 8/8, 4/8, 8/16)");
}

// The modules whose output is a graph output (directly or through pass-through nodes).
std::vector<std::string> output_modules(const graph::GraphImpl& g) {
  std::map<std::string, const graph::Node*> producer;
  for (const auto& node : g.nodes()) {
    for (const auto& out : node.outputs) {
      if (!out.empty()) producer[out] = &node;
    }
  }
  std::vector<std::string> modules;
  for (std::string value : g.output_names()) {
    for (size_t step = 0; step <= producer.size(); ++step) {
      auto it = producer.find(value);
      if (it == producer.end()) break;
      const graph::Node& node = *it->second;
      const nn::QuantModuleImpl* q = node.quant_module();
      if (q != nullptr && q->is_quantization_point()) {
        modules.push_back(node.name);
        break;
      }
      if (!graph::is_pass_through(node) || node.inputs.empty()) break;
      value = node.inputs[0];
    }
  }
  return modules;
}

}  // namespace

NpyCalibration::NpyCalibration(const std::string& path, int64_t batch_size, int64_t limit)
    : array_(data::NpyArray::open(path)), batch_size_(batch_size) {
  TORCH_CHECK(batch_size >= 1, "calibration data '", path, "': batch size must be >= 1, got ",
              batch_size);
  TORCH_CHECK(limit >= 0, "calibration data '", path, "': limit must be >= 0 (0 = every row), got ",
              limit);
  TORCH_CHECK(array_.shape().size() >= 1 && array_.size() >= 1, "calibration data '", path,
              "' has no rows (shape ", c10::IntArrayRef(array_.shape()),
              "); it needs one sample per row");
  end_ = limit == 0 ? array_.size() : std::min(limit, array_.size());
}

std::vector<at::Tensor> NpyCalibration::next() {
  if (position_ >= end_) return {};
  const int64_t count = std::min(batch_size_, end_ - position_);
  at::Tensor batch = array_.rows(position_, count, at::kFloat);
  position_ += count;
  return {batch};
}

std::pair<QuantDtype, QuantDtype> bit_widths_from_string(const std::string& bits) {
  const auto slash = bits.find('/');
  TORCH_CHECK(slash != std::string::npos && bits.find('/', slash + 1) == std::string::npos,
              "bit widths must be WEIGHTS/ACTIVATIONS, e.g. 8/8 or 4/8; got '", bits, "'");
  return {dtype_of_width(bits.substr(0, slash), bits, "weight"),
          dtype_of_width(bits.substr(slash + 1), bits, "activation")};
}

std::string QuantizeReport::str() const {
  std::ostringstream out;
  out << "calibrated on " << samples << " samples (" << batches << " batches) in "
      << calibration_seconds << " s";
  if (!excluded.empty()) {
    out << "\n  kept float (exclude):";
    for (const auto& e : excluded) out << " " << e;
  }
  if (!float_outputs.empty()) {
    out << "\n  float outputs (weights quantized):";
    for (const auto& e : float_outputs) out << " " << e;
  }
  out << "\n" << export_report.str();
  return out.str();
}

QConfig quantize_qconfig(const QuantizeOptions& options) {
  if (!options.qconfig_path().empty()) return load_qconfig(options.qconfig_path());
  return get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"),
                             options.observer(), "min_max",
                             {{"dtype", to_string(options.activation_dtype())}},
                             {{"dtype", to_string(options.weight_dtype())}});
}

QConfigOverrides quantize_overrides(const onnx::ImportedModel& m, const QConfig& global,
                                    const QuantizeOptions& options, const QConfigOverrides& base,
                                    QuantizeReport* report) {
  QConfigOverrides overrides = base;
  const std::map<std::string, QConfig> excluded = m.keep_float(options.exclude());
  for (const auto& entry : excluded) {
    overrides.by_name[entry.first] = entry.second;
    if (report != nullptr) report->excluded.push_back(entry.first);
  }
  if (!options.float_outputs()) return overrides;
  for (const auto& name : output_modules(*m.graph)) {
    if (excluded.count(name) > 0) continue;
    // A recipe's own weight grid for the layer, if it has one (an automatic recipe's entry).
    const auto own = base.by_name.find(name);
    QConfig last = own != base.by_name.end() ? own->second : global;
    last.activation = c10::nullopt;
    overrides.by_name[name] = last;
    if (report != nullptr) report->float_outputs.push_back(name);
  }
  return overrides;
}

onnx::ImportedModel import_for_quantization(const std::string& input_path) {
  onnx::ImportedModel m = onnx::import(input_path);
  TORCH_CHECK(!m.qdq, "quantize_onnx: '", input_path,
              "' is already a QDQ model (it has QuantizeLinear / DequantizeLinear); calibrating "
              "it again would quantize dequantized weights. Quantize the float model, or import "
              "it with calq::onnx::ImportOptions().keep_qdq(false) to calibrate it anew");
  TORCH_CHECK(m.inputs.size() == 1, "quantize_onnx: '", input_path, "' has ", m.inputs.size(),
              " inputs; calibration data feeds models with one input");
  fuse(*m.graph);
  return m;
}

QuantizeReport quantize_onnx(const std::string& input_path, CalibrationSource& calibration,
                             const std::string& output_path, const QuantizeOptions& options) {
  onnx::ImportedModel m = import_for_quantization(input_path);
  QuantizeReport report;
  const QConfig global = quantize_qconfig(options);
  prepare_qat(*m.graph, global, quantize_overrides(m, global, options, {}, &report),
              options.march());

  set_fake_quantize(*m.graph, FakeQuantState::CALIBRATION);
  at::Tensor example;
  const auto started = std::chrono::steady_clock::now();
  {
    torch::NoGradGuard no_grad;
    while (options.max_batches() == 0 || report.batches < options.max_batches()) {
      std::vector<at::Tensor> batch = calibration.next();
      if (batch.empty()) break;
      TORCH_CHECK(batch.size() == 1, "quantize_onnx: the calibration source gave ", batch.size(),
                  " tensors per batch; the model has one input");
      onnx::check_input(m.inputs[0], batch[0]);
      if (!example.defined()) example = batch[0].slice(0, 0, 1).clone();
      m.graph->forward(batch[0]);
      report.batches += 1;
      report.samples += batch[0].size(0);
      if (options.on_batch()) options.on_batch()(report.samples);
    }
  }
  report.calibration_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  TORCH_CHECK(report.batches > 0, "quantize_onnx: the calibration source gave no batch");
  set_fake_quantize(*m.graph, FakeQuantState::VALIDATION);
  report.export_report = export_qdq(m, {example}, output_path, options.export_options());
  return report;
}

}  // namespace deploy
}  // namespace calq
