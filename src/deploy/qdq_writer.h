#pragma once
// The QDQ writing both exporters share (traced calq::nn models, qdq_export.cpp, and imported
// graphs, graph_export.cpp): QuantizeLinear -> DequantizeLinear on the profile's storage types,
// integer weights and int32 biases, the activation after a quantizer, the requantization of
// pass-through ops. The placement rules are in docs/deploy.md. Internal to the deploy layer.

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <onnx/onnx_pb.h>

#include <functional>
#include <string>
#include <vector>

#include "calq/deploy/qdq_export.h"
#include "calq/fake_quantize.h"
#include "calq/nn/conv.h"
#include "calq/nn/quant_module.h"
#include "deploy/onnx_builder.h"

namespace calq {
namespace deploy {
namespace detail {

/// The quantization of a value in the exported graph.
struct Quant {
  at::Tensor scale;       ///< float32 {1} or {C}
  at::Tensor zero_point;  ///< int32, same shape
  QuantSpec spec;
};

/// A value of the exported graph: the name of the tensor that holds its real (float) values,
/// and its quantization when it is the output of a DequantizeLinear.
struct Value {
  std::string name;
  c10::optional<Quant> quant;
};

/// Scale and zero point `fq` uses now (FakeQuantizeImpl::qparams), flattened.
Quant quant_of(const FakeQuantizeImpl& fq);

/// Writes the quantization of one model into `builder`'s graph and counts it in `report`.
class QdqWriter {
 public:
  QdqWriter(GraphBuilder& builder, const ExportOptions& options, ExportReport& report)
      : b_(builder), options_(options), report_(report) {}

  GraphBuilder& builder() { return b_; }
  const Profile& profile() const { return options_.profile(); }

  /// float tensor `input` -> QuantizeLinear -> DequantizeLinear (-> Clip to the grid's ends
  /// when the quant range is narrower than the storage type's: int4, narrowed ranges).
  Value quantize(const std::string& input, const Quant& q, const std::string& base);

  /// An op's float output closed by the module's output quantizer `quantizer` (empty: the
  /// output stays float and `path` is reported as a float output) and `activation`. With a
  /// quantizer and an activation the profile's quantize_before_relu writes
  /// op -> Q -> DQ -> activation -> Q -> DQ, so that the runtime fuses the op. `after_op`
  /// false: a standalone activation module (`op_output` is its input), written
  /// activation -> Q -> DQ: there is no op to fuse, and a Q right after the previous value's
  /// DQ would let ONNX Runtime merge the two pairs (its DoubleQDQPairsRemover) into one
  /// rounding of the float value, which is not the two roundings calq simulates.
  Value close(const std::string& path, const FakeQuantize& quantizer, const std::string& op_output,
              nn::Activation activation, bool after_op = true);

  /// Relu, or Clip(0, 6) for relu6; `activation` must not be none.
  std::string apply_activation(nn::Activation activation, const std::string& input,
                               const std::string& base);

  /// Names of a layer's weight and bias in the graph.
  struct WeightAndBias {
    std::string weight;
    std::string bias;  ///< "" when the layer has no bias
  };
  /// The weight of `module` (`weight` in the layout its weight quantizer sees, output
  /// channels along axis 0) and its bias ({C} or undefined). A quantized weight is written as
  /// the integers the simulation uses, `layout` applied (e.g. a transpose to ONNX's layout),
  /// with a DequantizeLinear along `axis` of that layout; the bias as int32 at
  /// s_x * s_w[c] (DequantizeLinear axis 0) when the input is quantized per tensor, else in
  /// float. Per-channel weights must be quantized along axis 0 of `weight` (checked, naming
  /// `path`).
  WeightAndBias weight_and_bias(const std::string& path, const nn::QuantModuleImpl& module,
                                const at::Tensor& weight, const at::Tensor& bias,
                                const Value& input, int64_t axis,
                                const std::function<at::Tensor(const at::Tensor&)>& layout = {});

  /// A pass-through op's output keeps its input's quantization: Q -> DQ with the same
  /// parameters after it (profile.requantize_pass_through) lets the runtime keep the op in
  /// integers; exact, since its values are already on that grid.
  Value pass_through(const std::string& path, const std::string& op_output, const Value& in);

  /// Declares a graph input or output: float32 unless `elem_type` says otherwise; dims from
  /// `shape`, the first one symbolic ("batch") with options.dynamic_batch.
  void add_value_info(::onnx::ValueInfoProto* info, const std::string& name,
                      const std::vector<int64_t>& shape,
                      int32_t elem_type = ::onnx::TensorProto::FLOAT);

 private:
  std::string qdq_domain(const QuantSpec& spec) const;
  std::pair<std::string, std::string> qparams(const std::string& base, const Quant& q,
                                              bool activation);

  GraphBuilder& b_;
  const ExportOptions& options_;
  ExportReport& report_;
};

}  // namespace detail
}  // namespace deploy
}  // namespace calq
