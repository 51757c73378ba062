#pragma once
// The integer reference engine (docs/deploy.md, "Integer engine"): runs an exported model's
// arithmetic on integers exactly as the deployed runtime does, independent of it. It is the
// exact statement of calq's deployment semantics; speed is not its goal.

#include <torch/nn/module.h>

#include <map>
#include <string>
#include <vector>

#include "calq/deploy/profile.h"
#include "calq/quant/integer_arithmetic.h"
#include "calq/trace.h"

namespace calq {
namespace graph {
class GraphImpl;
}  // namespace graph
namespace deploy {

// Requantization and requantization_from_string live with the arithmetic they select
// (calq/quant/integer_arithmetic.h).
using calq::Requantization;
using calq::requantization_from_string;

struct IntegerEngineOptions {
  /// The profile the model was exported with (storage types and zero points).
  TORCH_ARG(Profile, profile) = ort_cpu_profile();
  TORCH_ARG(Requantization, requantization) = Requantization::float_multiplier;
  /// Keep the integer tensor of every quantized value (IntegerResult::integers).
  TORCH_ARG(bool, keep_integers) = false;
};

/// One quantized value: its integers as stored by the runtime (uint8 activations shifted by
/// +128 when the profile stores them so) and the grid they are on.
struct IntegerTensor {
  at::Tensor values;       ///< int64, the stored integers
  at::Tensor scale;        ///< float32 {1}
  int64_t zero_point = 0;  ///< the stored zero point
};

struct IntegerResult {
  /// The model outputs as real numbers (float32): dequantized, or the float output layer's.
  std::vector<at::Tensor> outputs;
  /// Every quantized value by the path of the module that produced it (keep_integers).
  std::map<std::string, IntegerTensor> integers;
  /// The integers of each quantized model output (empty for float outputs).
  std::vector<c10::optional<IntegerTensor>> output_integers;
};

/// Runs `model` (prepared; read only) on `inputs` along `trace` (calq::trace of the same model):
/// per op the integer arithmetic of the profile's runtime, int32 accumulation for 8-bit
/// activations (int64 for 16-bit: int16 x int8 overflows int32 over long reductions). The
/// formulas are in docs/deploy.md. Throws naming the module for an op it cannot run.
IntegerResult run_integer(torch::nn::Module& model, const Trace& trace,
                          const std::vector<at::Tensor>& inputs,
                          const IntegerEngineOptions& options = {});

/// The same for a graph (an imported ONNX model; prepared, fused, read only), node by node as
/// the graph exporter writes it (export_qdq(ImportedModel)): calq::nn modules as above; other
/// nodes (FloatFunction) in float on their inputs' dequantized values, quantized where the
/// export puts a QuantizeLinear. IntegerResult::integers is keyed by node name ("name/k" for
/// the k-th output of a node with several).
IntegerResult run_integer(graph::GraphImpl& graph, const std::vector<at::Tensor>& inputs,
                          const IntegerEngineOptions& options = {});

}  // namespace deploy
}  // namespace calq
