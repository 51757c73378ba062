#pragma once
// A prepared calq model -> QDQ ONNX (docs/deploy.md): integer weights in int8 initializers
// with DequantizeLinear, int32 biases, QuantizeLinear -> DequantizeLinear at every
// quantization point, placed for the profile's integer kernels.

#include <torch/nn/module.h>

#include <string>
#include <vector>

#include "calq/deploy/profile.h"
#include "calq/trace.h"

namespace calq {
namespace onnx {
struct ImportedModel;
}  // namespace onnx
namespace deploy {

struct ExportOptions {
  /// The target. Default: ONNX Runtime's CPU provider.
  TORCH_ARG(Profile, profile) = ort_cpu_profile();
  /// Names of the model's inputs and outputs in the ONNX graph (defaults "input", "output";
  /// more than one get an index suffix). Traced models only: an imported model keeps the
  /// names of its file.
  TORCH_ARG(std::string, input_name) = "input";
  TORCH_ARG(std::string, output_name) = "output";
  /// Leave the first dimension of inputs and outputs symbolic ("batch"). Default true.
  TORCH_ARG(bool, dynamic_batch) = true;
  /// Traced values to make the graph's outputs instead of the model's (e.g. one intermediate
  /// tensor, to compare a runtime's integer result layer by layer without changing its
  /// fusion). Empty (default): the model's outputs. Traced models only.
  TORCH_ARG(std::vector<int64_t>, outputs) = {};
  /// The same for an imported graph: value names of the graph (GraphImpl's, as in the file)
  /// to make the outputs, each under its own name. Empty (default): the graph's outputs.
  TORCH_ARG(std::vector<std::string>, output_values) = {};
};

/// What the export wrote and what a user should know about it.
struct ExportReport {
  int64_t nodes = 0;
  int64_t quantize_nodes = 0;
  int64_t dequantize_nodes = 0;
  /// Conv / Gemm nodes with int8 weights (the runtime's integer kernels when their input and
  /// output are int8 too).
  int64_t integer_weight_layers = 0;
  /// Layers whose output the qconfig keeps float (no QuantizeLinear after them).
  std::vector<std::string> float_outputs;
  /// Layers with activations the profile runs as DQ -> float -> Q (int16, int4).
  std::vector<std::string> float_kernels;
  /// "layer: n of C bias values saturated to int32 (b / (s_x s_w) up to ...)" (only where a
  /// weight scale cannot be raised enough; see weight_scales_raised).
  std::vector<std::string> bias_saturations;
  /// "layer: n of C weight scales raised (up to x R) so that the int32 bias fits": the
  /// deployed weight scale (calq::bias_fitting_weight_scale), which VALIDATION simulates too.
  std::vector<std::string> weight_scales_raised;
  /// Quantizers whose power-of-two scale is clamped to [2^-14, 2^-1].
  std::vector<std::string> clamped_scales;
  std::string str() const;
};

/// Writes `model` (prepared, any state; read only: scales through FakeQuantize::qparams,
/// BN-folded weights) as QDQ ONNX to `path`, atomically. `trace` is calq::trace of the same
/// model (its module calls in order; shapes from its example). Weights: the integers the
/// simulation's weight quantizer produces, per output channel (axis 0 for Conv and for Gemm
/// with transB = 1); bias: int32 round_half_even(b / (s_x * s_w[c])), with s_w[c] raised where
/// it would overflow (QuantModuleImpl::deployed_weight_scale; reported);
/// scales as float32 (powers of two stay exact). Throws naming the module for anything the
/// format cannot express (e.g. an adaptive pool whose input size is not a multiple of its
/// output size).
ExportReport export_qdq(torch::nn::Module& model, const Trace& trace, const std::string& path,
                        const ExportOptions& options = {});
/// The same model as serialized bytes (an onnx ModelProto).
std::string export_qdq_bytes(torch::nn::Module& model, const Trace& trace,
                             const ExportOptions& options = {}, ExportReport* report = nullptr);

/// Writes an imported ONNX model (calq::onnx::import, then fuse / prepare_qat / calibrate like
/// any model; any state; read only) as QDQ ONNX to `path`, atomically, walking its graph
/// instead of a trace. Layers, Q/DQ, weights and biases follow the same rules as for traced
/// models: Conv blocks keep their node's attributes (asymmetric and automatic pads included),
/// Linear from Gemm is written as Gemm (transB = 1), Linear from MatMul as MatMul with the
/// [K, N] weight (DequantizeLinear axis 1) and an Add for the bias, ConvTranspose2d with its
/// weight's output channels on axis 1. Every other node is written as its ONNX operator(s)
/// with the node's attributes (fused SiLU / HardSwish / GELU as their ONNX ops), in float, a
/// Q -> DQ after it where it is a quantization point; value-moving ops (Reshape, MaxPool,
/// Slice, ...) keep their input's quantization, with a Q -> DQ of the same parameters after
/// them; shape computations are written again as they were (dynamic batch sizes keep
/// working). The opset is the profile's or the file's, whichever is higher; attributes that
/// became inputs at opset 13 (Squeeze/Unsqueeze axes, Split split, ReduceSum axes) and
/// Softmax / LogSoftmax of opsets < 13 are converted. `example_inputs` (one per graph input,
/// e.g. one calibration sample) are run once with every quantizer in VALIDATION and the model
/// in eval mode (states restored afterwards) for the shapes and element types of the values.
/// Throws naming the node for what ONNX cannot express.
ExportReport export_qdq(const onnx::ImportedModel& model,
                        const std::vector<at::Tensor>& example_inputs, const std::string& path,
                        const ExportOptions& options = {});
/// The same model as serialized bytes.
std::string export_qdq_bytes(const onnx::ImportedModel& model,
                             const std::vector<at::Tensor>& example_inputs,
                             const ExportOptions& options = {}, ExportReport* report = nullptr);

}  // namespace deploy
}  // namespace calq
