#pragma once
// Reading QDQ models (docs/onnx.md, "QDQ models"): QuantizeLinear -> DequantizeLinear pairs on
// activations become fixed fake quantizers, a DequantizeLinear of constant integers the float
// weight it represents with a fixed weight quantizer. The importer (import.cpp) calls these.

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "calq/onnx/model.h"
#include "calq/qconfig.h"

namespace calq {
namespace onnx {
namespace detail {

/// The quantization a Q -> DQ pair applies to an activation (per tensor), in the file's
/// storage type.
struct FixedQuant {
  double scale = 1.0;
  int64_t zero_point = 0;
  /// kByte (uint8), kChar (int8), kShort (int16) or kLong (uint16, widened as calq holds it).
  at::ScalarType storage = at::kByte;
  /// The grid's ends in the storage type: the type's range, narrowed by a Clip after the pair
  /// (how calq writes int4 and narrowed ranges).
  int64_t quant_min = 0, quant_max = 255;
  bool operator==(const FixedQuant& other) const;
  bool operator!=(const FixedQuant& other) const { return !(*this == other); }
};

/// The quantization of a weight that a constant DequantizeLinear was folded from.
struct WeightQuant {
  at::Tensor scale;       ///< float32, {} / {1} per tensor or {C} along `axis`
  at::Tensor zero_point;  ///< int64, the same shape
  int64_t axis = 1;       ///< the DequantizeLinear's axis attribute (as written)
  at::ScalarType storage = at::kChar;
};

/// The WeightQuant of a DequantizeLinear node whose inputs are the constants `inputs` (its
/// integer data, scale, optional zero point); nullopt for int32 data (biases) or blocked
/// quantization.
c10::optional<WeightQuant> weight_quant_of(const Node& dequantize,
                                           const std::vector<at::Tensor>& inputs);

/// A recognized pair.
struct QdqPair {
  std::string input;               ///< the value it quantizes
  std::vector<size_t> nodes;       ///< the QuantizeLinear, its DequantizeLinears, a Clip
  std::vector<std::string> views;  ///< the values that were x quantized (DQ / Clip outputs)
  FixedQuant quant;
};

/// Finds every QuantizeLinear (default or com.microsoft domain, not in `skip`) whose input x
/// is an activation that only it reads (and no graph output), whose output is read only by
/// DequantizeLinear nodes with the same per-tensor scale and zero point (and is no graph
/// output), optionally followed (one DQ) by a Clip to exact grid levels that no
/// QuantizeLinear reads. Rewrites every reader of the DQ (or Clip) outputs in `nodes` to read
/// x, so that the rest of the importer sees the float model; the pair's nodes are to be
/// skipped. Per-axis and mismatched pairs are left alone (their kernels compute them exactly).
std::vector<QdqPair> find_qdq_pairs(std::vector<Node>& nodes, const std::vector<bool>& skip,
                                    const std::map<std::string, at::Tensor>& constants,
                                    const std::set<std::string>& activations,
                                    const std::set<std::string>& graph_outputs);

/// The recipe of a fixed activation quantizer (fake_quant with the fixed_scale observer):
/// 8-bit types as qint8 and 16-bit as qint16, unsigned ones with the zero point and range
/// shifted by 128 / 32768 (the same grid).
FakeQuantConfig activation_recipe(const FixedQuant& quant);

/// The recipe of a fixed weight quantizer for a weight whose calq module quantizes it per
/// output channel along axis 0 of its own layout. `output_axis` is the axis of the file's
/// weight (of rank `rank`) that holds the output channels, `channels` the module's output
/// channel count (per-channel scales are repeated to reach it: ConvTranspose groups). nullopt
/// when the file's quantization is not per tensor and not along `output_axis`.
c10::optional<FakeQuantConfig> weight_recipe(const WeightQuant& quant, int64_t output_axis,
                                             int64_t rank, int64_t channels);

}  // namespace detail
}  // namespace onnx
}  // namespace calq
