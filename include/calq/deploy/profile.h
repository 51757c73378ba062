#pragma once
// An export target: where the deployed runtime computes in integers and how it places
// QuantizeLinear / DequantizeLinear (docs/deploy.md). The exporter asks the profile; a TensorRT-,
// QNN- or vendor-style placement is another profile, not another exporter.

#include <string>

#include "calq/quant/integer_arithmetic.h"
#include "calq/quant/quant_spec.h"

namespace calq {
namespace deploy {

/// Placement rules and numerics of one runtime.
struct Profile {
  /// Registry name, e.g. "ort-cpu".
  std::string name;
  /// ONNX opset of the default domain.
  int64_t opset = 13;
  /// Whether an activation of this dtype runs in the runtime's integer kernels. Others run as
  /// DequantizeLinear -> float op -> QuantizeLinear (the exporter writes the same graph; the
  /// runtime decides, and this tells the report).
  bool (*integer_activation)(QuantDtype dtype) = nullptr;
  /// Q/DQ of 16-bit activations: written in this domain ("com.microsoft" for ONNX Runtime's
  /// contrib QuantizeLinear / DequantizeLinear, which accept int16 at opset 13; "" for the
  /// standard operators, which need opset 21).
  std::string int16_qdq_domain = "com.microsoft";
  /// A Relu / Clip between an op and its QuantizeLinear is fused into the integer op only when
  /// the Q zero point is the type's minimum (ONNX Runtime's QDQ selectors). With symmetric
  /// activations (zero point 0) the group would stay float; true writes the exact equivalent
  /// op -> Q(s, z) -> DQ -> Relu -> Q(s, z) -> DQ instead (ReLU of a multiple of s is one).
  bool quantize_before_relu = true;
  /// 8-bit activations are stored as uint8 with zero point z + 128 (the same grid shifted:
  /// numerically identical). ONNX Runtime's x86 integer kernels are U8S8; its own int8 -> uint8
  /// rewrite (QDQS8ToU8Transformer) converts only a QuantizeLinear with a single
  /// DequantizeLinear, so an int8 activation read by two nodes (a residual block's input)
  /// stayed int8 and its convolution stayed float.
  bool uint8_activations = true;
  /// Whether activations may use unsigned grids (QuantSpec::unsigned_grid, eq. 1c: [0, 2^b - 1]
  /// with zero point 0, for outputs after ReLU / ReLU6). ONNX Runtime: 8 bits as uint8 (its
  /// integer kernels, with the Relu fused since zero point 0 is the type's minimum), 4 bits as
  /// uint8 with a Clip (a native UINT4 needs opset 21), 16 bits as com.microsoft uint16.
  /// The accelerator's grids are signed: calq::analysis's automatic recipe uses unsigned grids
  /// only for a target that sets this.
  bool unsigned_activations = true;
  /// Pass-through ops (MaxPool, Flatten, Reshape) get Q -> DQ with their input's scale after
  /// them, so that the runtime sees a quantized group and keeps them in integers.
  bool requantize_pass_through = true;
};

/// ONNX Runtime's CPU execution provider: int8 activations and weights in its integer kernels
/// (QLinearConv, QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool / AveragePool,
/// int8 MaxPool); 16-bit activations and 4-bit weights (stored in int8) as DQ -> float -> Q.
Profile ort_cpu_profile();

/// The profile's integer arithmetic, for VALIDATION that computes what the runtime computes
/// (calq::set_integer_arithmetic): its activation storage, the widths it runs in integer
/// kernels, and `requantization`.
IntegerArithmetic integer_arithmetic(
    const Profile& profile, Requantization requantization = Requantization::float_multiplier);

/// Profiles by name; an unknown name throws and lists the valid ones.
Profile profile_from_string(const std::string& name);

}  // namespace deploy
}  // namespace calq
