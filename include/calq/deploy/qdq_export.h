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
namespace deploy {

struct ExportOptions {
  /// The target. Default: ONNX Runtime's CPU provider.
  TORCH_ARG(Profile, profile) = ort_cpu_profile();
  /// Names of the model's inputs and outputs in the ONNX graph (defaults "input", "output";
  /// more than one get an index suffix).
  TORCH_ARG(std::string, input_name) = "input";
  TORCH_ARG(std::string, output_name) = "output";
  /// Leave the first dimension of inputs and outputs symbolic ("batch"). Default true.
  TORCH_ARG(bool, dynamic_batch) = true;
  /// Traced values to make the graph's outputs instead of the model's (e.g. one intermediate
  /// tensor, to compare a runtime's integer result layer by layer without changing its
  /// fusion). Empty (default): the model's outputs.
  TORCH_ARG(std::vector<int64_t>, outputs) = {};
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
  /// "layer: n of C bias values saturated to int32 (b / (s_x s_w) up to ...)".
  std::vector<std::string> bias_saturations;
  /// Quantizers whose power-of-two scale is clamped to [2^-14, 2^-1].
  std::vector<std::string> clamped_scales;
  std::string str() const;
};

/// Writes `model` (prepared, any state; read only: scales through FakeQuantize::qparams,
/// BN-folded weights) as QDQ ONNX to `path`, atomically. `trace` is calq::trace of the same
/// model (its module calls in order; shapes from its example). Weights: the integers the
/// simulation's weight quantizer produces, per output channel (axis 0 for Conv and for Gemm
/// with transB = 1); bias: int32 round_half_even(b / (s_x * s_w[c])), saturated and reported;
/// scales as float32 (powers of two stay exact). Throws naming the module for anything the
/// format cannot express (e.g. an adaptive pool whose input size is not a multiple of its
/// output size).
ExportReport export_qdq(torch::nn::Module& model, const Trace& trace, const std::string& path,
                        const ExportOptions& options = {});
/// The same model as serialized bytes (an onnx ModelProto).
std::string export_qdq_bytes(torch::nn::Module& model, const Trace& trace,
                             const ExportOptions& options = {}, ExportReport* report = nullptr);

}  // namespace deploy
}  // namespace calq
