#pragma once
// The deployed runtime's integer arithmetic, one function per integer kernel
// (docs/deploy.md, "Integer engine"). The integer engine (calq::deploy::run_integer) and the
// modules' VALIDATION in integer arithmetic (QuantModuleImpl::set_integer_arithmetic) both
// compute with these, so that the simulation, the engine and ONNX Runtime agree bit for bit.
//
// Stored integers (uint8 activations shifted by +128 where the runtime stores them so) are
// returned as float32 tensors of integer values (exact: they are below 2^16), which keeps the
// simulation's integer arithmetic as fast as its float arithmetic; inputs may be of any real or
// integer dtype. Accumulators are floating tensors holding integers. Every float32 step of the
// runtime is one float32 operation here (`fr` in the docs).

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "calq/quant/quant_spec.h"

namespace calq {

/// How an integer accumulator is brought onto the output grid.
enum class Requantization {
  /// ONNX Runtime's: float(acc) * fr(fr(s_x * s_w) / s_y) in float32, rounded half to even.
  float_multiplier,
  /// A fixed-point multiplier and shift, as integer-only accelerators do:
  /// M = m * 2^-(31 + n) with m in [2^30, 2^31), y = (acc * m + 2^(30 + n)) >> (31 + n) (ties
  /// round up, unlike float_multiplier); a power-of-two M (the bernoulli march) is a pure shift.
  fixed_point,
};
/// "float" / "fixed"; unknown names throw listing them.
Requantization requantization_from_string(const std::string& name);

/// The numerics of a deployed runtime that VALIDATION can compute instead of the float
/// simulation.
struct IntegerArithmetic {
  Requantization requantization = Requantization::float_multiplier;
  /// Signed 8-bit activations are stored as uint8 with zero point + 128 (ONNX Runtime on x86).
  /// Numerically the same grid, but QLinearAdd's float formula sees the stored values.
  bool uint8_activations = true;
  /// Activation widths the runtime computes in integer kernels; an op with another width runs
  /// as DequantizeLinear -> float op -> QuantizeLinear (ONNX Runtime: int16 and 4-bit), which
  /// the float simulation already is.
  std::vector<QuantDtype> integer_dtypes = {QuantDtype::qint8};

  bool computes_in_integers(QuantDtype dtype) const;
};

/// A quantized value's grid as the runtime stores it.
struct StoredGrid {
  float scale = 1.0f;
  int64_t zero = 0;        ///< stored zero point
  int64_t lo = 0, hi = 0;  ///< stored range
};

/// Whether `spec`'s range is its whole storage type ([-128, 127], [0, 255], [-32768, 32767],
/// [0, 65535]); a narrower range is exported with a Clip after its DequantizeLinear, which the
/// runtime then computes in float.
bool spans_storage_range(const QuantSpec& spec);

/// The stored grid of `spec` with scale and zero point (shifted by 128 for a signed 8-bit
/// grid when `uint8_activations`).
StoredGrid stored_grid(const QuantSpec& spec, float scale, int64_t zero_point,
                       bool uint8_activations);

namespace integer {

/// QuantizeLinear: clamp(RNE(fr(x / s)) + z).
at::Tensor quantize_linear(const at::Tensor& x, const StoredGrid& grid);
/// DequantizeLinear: fr(float(q - z) * s), float32.
at::Tensor dequantize_linear(const at::Tensor& q, const StoredGrid& grid);

/// M_c = fr(fr(s_x * s_w[c]) / s_y).
std::vector<float> requantization_multipliers(float s_x, const std::vector<float>& s_w, float s_y);

/// Exact accumulators (a floating tensor holding integers; output channel c on axis 1) brought
/// onto `out` with multipliers M_c.
at::Tensor requantize(const at::Tensor& acc, const std::vector<float>& multiplier,
                      const StoredGrid& out, Requantization mode);

/// A weighted kernel with a float output (QGemm / MatMulIntegerToFloat): fr(float(acc) *
/// fr(s_x * s_w[c])).
at::Tensor float_output(const at::Tensor& acc, float s_x, const std::vector<float>& s_w);

/// QLinearAdd (ONNX Runtime's kernel): rAC = fr(sa / sc), rBC = fr(sb / sc),
/// FP = fr(zc - fma(rAC, za, fr(rBC * zb))), v = fma(a, rAC, fma(b, rBC, FP)), RNE, saturate.
/// Broadcasts a and b.
at::Tensor add(const at::Tensor& a, const StoredGrid& ga, const at::Tensor& b, const StoredGrid& gb,
               const StoredGrid& out);

/// QLinearMul: RNE(fr(fr(float((a - za)(b - zb)) * fr(fr(sa * sb) / sc)) + zc)), saturate.
at::Tensor mul(const at::Tensor& a, const StoredGrid& ga, const at::Tensor& b, const StoredGrid& gb,
               const StoredGrid& out);

/// QLinearMatMul of two activations: exact integer products summed, then
/// RNE(fr(float(acc) * fr(fr(sa * sb) / sy))) + zy, saturated.
at::Tensor matmul(const at::Tensor& a, const StoredGrid& ga, const at::Tensor& b,
                  const StoredGrid& gb, const StoredGrid& out);

/// QLinearGlobalAveragePool over axes 2 and 3 (kept):
/// RNE(fr(float(sum - N zx) * fr(sx / fr(sy N)))) + zy.
at::Tensor global_average(const at::Tensor& q, const StoredGrid& x, const StoredGrid& out);

/// QLinearAveragePool (a window smaller than the image, or with pads): dequantize, sum in
/// float in h, w order, divide by the count, nearbyintf(avg / sy + zy), saturate.
at::Tensor window_average(const at::Tensor& q, const StoredGrid& x, const StoredGrid& out,
                          const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                          const std::vector<int64_t>& pad, bool count_include_pad, bool ceil_mode);

/// ReLU on integers: max(q, z).
at::Tensor relu(const at::Tensor& q, const StoredGrid& grid);
/// ReLU6 after an op whose output is on the grid (op -> Q -> DQ -> Clip(0, 6) -> Q):
/// Q(clamp(DQ(q), 0, 6)).
at::Tensor relu6(const at::Tensor& q, const StoredGrid& grid);

}  // namespace integer
}  // namespace calq
