#pragma once
// ONNX model -> calq::graph::Graph ("bring your own model"): the float model a user trained
// elsewhere, as a module that calibrates, trains (QAT) and saves like a calq::nn model.
// docs/onnx.md lists the operators and how each maps to calq.

#include <torch/arg.h>

#include <map>
#include <string>
#include <vector>

#include "calq/graph/graph.h"
#include "calq/onnx/model.h"
#include "calq/qconfig.h"

namespace calq {
namespace onnx {

/// How import() builds the graph.
///
///   calq::onnx::ImportOptions().check_shapes(false)
struct ImportOptions {
  /// Fuse Conv [-> BatchNormalization] [-> Relu | Clip(0, 6)] into one calq block, MatMul +
  /// Add(bias) and Gemm into Linear, Add -> Relu into AddReLU, x * Sigmoid(x) into SiLU,
  /// x * HardSigmoid(x) into HardSwish and the Erf form of GELU into GELU. Default true.
  /// Without fusion every ONNX node is its own module (still correct in float, but with a
  /// quantization point between a convolution and its activation).
  TORCH_ARG(bool, fuse) = true;
  /// Register floating-point constants that are data operands (a position embedding, a
  /// class token, a layer-scale vector) as trainable parameters, so QAT trains them as the
  /// original model did. Scalars and shape values are buffers either way. Default true.
  TORCH_ARG(bool, trainable_constants) = true;
  /// After building, run one float forward on zeros of the declared input shapes (symbolic
  /// or unknown dims as 1) so that shapes that do not fit are reported at import, naming the
  /// node. Skipped when an input's rank is unknown or it has more than 2^22 elements.
  /// Default true.
  TORCH_ARG(bool, check_shapes) = true;
  /// Run libonnx's checker (opsets <= 17) after calq's own validation. Default true.
  TORCH_ARG(bool, run_checker) = true;
  /// QDQ models (QuantizeLinear / DequantizeLinear of the default domain or com.microsoft;
  /// uint8, int8, uint16, int16; per tensor, and per axis for weights), e.g. written by
  /// calq::deploy::export_qdq or ONNX Runtime's quantize_static. true (default): every
  /// Q -> DQ pair on an activation becomes a fixed fake quantizer (the fixed_scale observer
  /// with the file's scale and zero point; a Clip to grid levels after it narrows the range)
  /// of the module that produces the value (a QuantStub of its own after a pass-through op),
  /// every weight given as integers + DequantizeLinear becomes the float weight it represents
  /// with a fixed weight quantizer, and every module's own qconfig (QuantModuleImpl::qconfig,
  /// which wins in prepare_qat) holds these, float where the file has no Q/DQ: after
  /// prepare_qat (any qconfig) and set_fake_quantize(VALIDATION) the graph computes what the
  /// file computes, and QAT fine-tunes it. false: the pairs are dropped and the weights
  /// dequantized, a float model to calibrate anew. Pairs with per-axis activation scales or
  /// different parameters on the two sides, and lone Q or DQ nodes, are computed by their
  /// kernels (ONNX Runtime's arithmetic) either way.
  TORCH_ARG(bool, keep_qdq) = true;
};

/// A graph input as declared in the file.
struct InputInfo {
  /// The ONNX value name.
  std::string name;
  /// Declared dims; -1 where dynamic (symbolic or unknown). Empty if the rank is unknown.
  std::vector<int64_t> shape;
  /// The dim_param of each dim ("" if none), e.g. "batch_size".
  std::vector<std::string> symbols;
  ElementType type = ElementType::float32;
};

/// How one ONNX node maps to calq.
struct NodeMapping {
  /// The ONNX node name (as in the file; generated "<op>_<index>" when the file has none).
  std::string onnx_name;
  std::string op_type;
  /// Module path of the graph node that implements it (named_modules() key; "" when the node
  /// was folded into a constant at import).
  std::string module;
  /// Whether that module is a quantization point (its output gets an output fake-quant
  /// when prepared) and whether it has a quantized weight.
  bool quantization_point = false;
  bool has_weight = false;
};

/// The imported model and its description.
struct ImportedModel {
  graph::Graph graph{nullptr};
  std::vector<InputInfo> inputs;
  /// Output value names, forward's outputs in this order.
  std::vector<std::string> outputs;
  int64_t opset = 0;
  int64_t ir_version = 0;
  std::string producer;
  /// A QDQ model read with ImportOptions::keep_qdq: every module carries the file's
  /// quantization as its own qconfig.
  bool qdq = false;
  /// Every ONNX node in graph order.
  std::vector<NodeMapping> nodes;

  /// Module path implementing ONNX node `onnx_name`. Throws if there is no such node (listing
  /// a few names) or if it was folded into a constant.
  std::string module_path(const std::string& onnx_name) const;
  /// Module paths of every quantization point and weighted module (what prepare_qat fills),
  /// in graph order.
  std::vector<std::string> quantized_modules() const;
  /// QConfigOverrides::by_name entries that keep the given ONNX nodes float (no weight and no
  /// output fake-quant), e.g. the last classifier layer or a sensitive attention block.
  /// Unknown names throw.
  std::map<std::string, QConfig> keep_float(const std::vector<std::string>& onnx_names) const;
};

/// Reads `path` (external data from its folder) and builds the graph. Errors are
/// c10::Error naming the file and the problem (see parse_model_file, plus node-level
/// problems: a weight that is not constant, attribute values calq does not implement,
/// shapes that do not fit).
ImportedModel import(const std::string& path, const ImportOptions& options = {});
/// The same from bytes (external data is an error).
ImportedModel import_bytes(const void* data, size_t size, const ImportOptions& options = {});
/// The same from a parsed model.
ImportedModel import_model(const Model& model, const ImportOptions& options = {});

/// A constant from a file (TensorData of parse_tensor_bytes, an initializer) as a tensor
/// (a copy; uint16/32/64 widen to int64).
at::Tensor to_tensor(const TensorData& data);

/// Checks `input` against a declared input (rank, each static dim, floating dtype); the
/// error names both shapes. Used by readers of user data before a forward.
void check_input(const InputInfo& info, const at::Tensor& input);

}  // namespace onnx
}  // namespace calq
