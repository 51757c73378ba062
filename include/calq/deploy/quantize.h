#pragma once
// Post-training quantization of an ONNX model in one call (docs/deploy.md, "quantize_onnx"):
// import, calibrate on data read one batch at a time, export QDQ ONNX for ONNX Runtime.
//
//   calq::deploy::NpyCalibration data("calib.npy", /*batch_size=*/32);
//   auto report = calq::deploy::quantize_onnx("model.onnx", data, "model_int8.onnx");

#include <torch/arg.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "calq/data/arrays.h"
#include "calq/deploy/qdq_export.h"
#include "calq/onnx/import.h"
#include "calq/qconfig.h"
#include "calq/quant/quant_spec.h"
#include "calq/workflow.h"

namespace calq {
namespace deploy {

/// Calibration inputs, one batch at a time: a batch is dropped once the model has seen it, so
/// memory does not grow with the number of samples.
class CalibrationSource {
 public:
  virtual ~CalibrationSource() = default;
  /// The next batch (one tensor per model input), or an empty vector after the last one.
  virtual std::vector<at::Tensor> next() = 0;
  /// Samples in all (progress), or -1 if unknown.
  virtual int64_t size() const { return -1; }
};

/// The rows of a .npy file (calq::data::NpyArray: memory-mapped, pages released once read) in
/// batches of `batch_size` as float32, for a model with one input: rows [0, limit) (limit 0:
/// every row). Errors name the file (see NpyArray::open) and invalid sizes.
class NpyCalibration : public CalibrationSource {
 public:
  NpyCalibration(const std::string& path, int64_t batch_size, int64_t limit = 0);
  std::vector<at::Tensor> next() override;
  int64_t size() const override { return end_; }

 private:
  data::NpyArray array_;
  int64_t batch_size_;
  int64_t end_;
  int64_t position_ = 0;
};

/// "W/A" bit widths ("8/8", "4/8", "8/16"; 4, 8 or 16 each) -> (weight, activation) dtypes.
/// Anything else throws naming the value and the valid widths.
std::pair<QuantDtype, QuantDtype> bit_widths_from_string(const std::string& bits);

/// How quantize_onnx quantizes.
struct QuantizeOptions {
  /// Activation observer (observers/registry.h). Default "percentile".
  TORCH_ARG(std::string, observer) = "percentile";
  /// Weight format (per output channel, min_max observer). Default qint8.
  TORCH_ARG(QuantDtype, weight_dtype) = QuantDtype::qint8;
  /// Activation format (per tensor). Default qint8.
  TORCH_ARG(QuantDtype, activation_dtype) = QuantDtype::qint8;
  /// Target chip generation (bernoulli: power-of-two scales). Default bayes.
  TORCH_ARG(March, march) = March::bayes;
  /// A qconfig file (calq::load_qconfig) used instead of observer and the dtypes. Default:
  /// none.
  TORCH_ARG(std::string, qconfig_path) = "";
  /// ONNX node names kept float (no weight and no output quantizer: they run as float ops in
  /// the deployed model, and so do the layers that read their float outputs). Unknown names
  /// throw listing some valid ones.
  TORCH_ARG(std::vector<std::string>, exclude) = {};
  /// Keep the outputs of the modules that produce the model's outputs float (their weights
  /// stay quantized), the "32-bit output" of calq's workflow: the logits keep their
  /// precision and the runtime still runs the layer on integers (QGemm with a float output).
  /// Default true.
  TORCH_ARG(bool, float_outputs) = true;
  /// Stop after this many calibration batches (0: every batch of the source). Default 0.
  TORCH_ARG(int64_t, max_batches) = 0;
  /// Export target and graph options (ExportOptions::outputs does not apply).
  TORCH_ARG(ExportOptions, export_options) = {};
  /// Called after every calibration batch with the number of samples seen so far.
  TORCH_ARG(std::function<void(int64_t)>, on_batch) = nullptr;
};

/// What quantize_onnx did.
struct QuantizeReport {
  int64_t batches = 0;
  int64_t samples = 0;
  /// Wall time of the calibration forwards (observers updating), seconds.
  double calibration_seconds = 0.0;
  /// Module paths kept float by `exclude` and by `float_outputs`.
  std::vector<std::string> excluded;
  std::vector<std::string> float_outputs;
  ExportReport export_report;
  std::string str() const;
};

/// Imports a float ONNX model with one input and fuses it (what quantize_onnx prepares). A QDQ
/// model or a model with several inputs throws, saying why.
onnx::ImportedModel import_for_quantization(const std::string& input_path);

/// The global qconfig quantize_onnx prepares with: `options`' observer and dtypes (per-tensor
/// activations, per-channel min_max weights), or its qconfig file.
QConfig quantize_qconfig(const QuantizeOptions& options);

/// prepare_qat's overrides for `m` under `global`: `base`, then options.exclude() kept float,
/// then (options.float_outputs()) the modules producing the model's outputs with a float output
/// and their weight as `base` or else `global` quantizes it. Fills the report's `excluded` and
/// `float_outputs` when given. Unknown exclude names throw.
QConfigOverrides quantize_overrides(const onnx::ImportedModel& m, const QConfig& global,
                                    const QuantizeOptions& options,
                                    const QConfigOverrides& base = {},
                                    QuantizeReport* report = nullptr);

/// Imports `input_path` (a float ONNX model with one float input), fuses, prepares it
/// (observer / dtypes / march, or the qconfig file; `exclude` float), calibrates it on every
/// batch of `calibration` (checked against the model's declared input shape; nothing is kept
/// but the first sample, the export's example input), and writes it as QDQ ONNX to
/// `output_path` (export_qdq, atomically). A QDQ model as input is an error (re-quantizing
/// dequantized weights: import it with ImportOptions().keep_qdq(false) and calibrate that
/// instead), and so is a source without batches.
QuantizeReport quantize_onnx(const std::string& input_path, CalibrationSource& calibration,
                             const std::string& output_path, const QuantizeOptions& options = {});

}  // namespace deploy
}  // namespace calq
