#pragma once
// Scalar reference ("_ref") twins of docs/quantization.md, used only by tests. Written as
// directly from the equations as possible: std::nearbyint / std::floor, no clamping tricks.

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "calq/quant/quant_spec.h"

namespace calq {
namespace test {

// Eq. 3.
template <typename T>
T round_ref(T v, Rounding rounding) {
  return rounding == Rounding::half_to_even ? std::nearbyint(v) : std::floor(v + T(0.5));
}

// round(x / s) + z, with x / s a true division in T, as ONNX's QuantizeLinear
// (docs/quantization.md, eq. 2).
template <typename T>
T quantized_ref(T x, T scale, int64_t zero_point, Rounding rounding) {
  return round_ref(x / scale, rounding) + static_cast<T>(zero_point);
}

// Eq. 2.
template <typename T>
T fake_quant_ref(T x, T scale, int64_t zero_point, int64_t quant_min, int64_t quant_max,
                 Rounding rounding) {
  if (std::isnan(x)) {
    return std::numeric_limits<T>::quiet_NaN();
  }
  T q = quantized_ref(x, scale, zero_point, rounding);
  q = std::min(std::max(q, static_cast<T>(quant_min)), static_cast<T>(quant_max));
  return (q - static_cast<T>(zero_point)) * scale;
}

// Eq. 5.
template <typename T>
T ste_ref(T x, T dy, T scale, int64_t zero_point, int64_t quant_min, int64_t quant_max,
          Rounding rounding) {
  const T q = quantized_ref(x, scale, zero_point, rounding);
  const bool inside = q >= static_cast<T>(quant_min) && q <= static_cast<T>(quant_max);
  return inside ? dy : T(0);
}

// Eq. 6, one element, without the grad factor: dy * d(fake_quant)/ds.
template <typename T>
double lsq_scale_grad_ref(T x, T dy, T scale, int64_t zero_point, int64_t quant_min,
                          int64_t quant_max, Rounding rounding) {
  if (std::isnan(x)) {
    return 0.0;
  }
  const T q = quantized_ref(x, scale, zero_point, rounding);
  if (q < static_cast<T>(quant_min)) {
    return static_cast<double>(dy) * static_cast<double>(quant_min - zero_point);
  }
  if (q > static_cast<T>(quant_max)) {
    return static_cast<double>(dy) * static_cast<double>(quant_max - zero_point);
  }
  const T v = x * (T(1) / scale);
  return static_cast<double>(dy) * static_cast<double>((q - static_cast<T>(zero_point)) - v);
}

// Eq. 7, forward.
template <typename T>
T pact_ref(T x, T alpha, T scale, int64_t quant_min, int64_t quant_max, Rounding rounding) {
  if (std::isnan(x)) {
    return std::numeric_limits<T>::quiet_NaN();
  }
  const T c = std::min(std::max(x, -alpha), alpha);
  return fake_quant_ref(c, scale, 0, quant_min, quant_max, rounding);
}

// Tensor-level twins: x any shape; scale / zero_point one value (axis < 0) or one per
// channel along `axis`. Outputs are contiguous, of x's dtype.
struct GridRef {
  std::vector<double> scale;
  std::vector<int64_t> zero_point;
  int64_t quant_min = -128;
  int64_t quant_max = 127;
  Rounding rounding = Rounding::half_to_even;
  int64_t axis = -1;
};

// The GridRef of a (scale, zero_point, spec) triple as the fake-quant functions receive it.
inline GridRef grid_ref(const at::Tensor& scale, const at::Tensor& zp, const QuantSpec& spec,
                        int64_t axis) {
  GridRef g;
  const at::Tensor s = scale.to(at::kDouble).contiguous();
  const at::Tensor z = zp.to(at::kLong).contiguous();
  g.scale.assign(s.data_ptr<double>(), s.data_ptr<double>() + s.numel());
  g.zero_point.assign(z.data_ptr<int64_t>(), z.data_ptr<int64_t>() + z.numel());
  g.quant_min = spec.quant_min();
  g.quant_max = spec.quant_max();
  g.rounding = spec.rounding();
  g.axis = axis;
  return g;
}

inline int64_t channel_of(const at::Tensor& x, int64_t index, int64_t axis) {
  if (axis < 0) {
    return 0;
  }
  int64_t inner = 1;
  for (int64_t d = axis + 1; d < x.dim(); ++d) {
    inner *= x.size(d);
  }
  return (index / inner) % x.size(axis);
}

template <typename T>
at::Tensor fake_quant_tensor_ref(const at::Tensor& x, const GridRef& g) {
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(xc.sizes(), xc.options());
  const T* xp = xc.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  for (int64_t i = 0; i < xc.numel(); ++i) {
    const int64_t c = channel_of(xc, i, g.axis);
    yp[i] = fake_quant_ref<T>(xp[i], static_cast<T>(g.scale[c]), g.zero_point[c], g.quant_min,
                              g.quant_max, g.rounding);
  }
  return y;
}

template <typename T>
at::Tensor ste_tensor_ref(const at::Tensor& x, const at::Tensor& dy, const GridRef& g) {
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = dy.contiguous();
  at::Tensor dx = at::empty(xc.sizes(), xc.options());
  for (int64_t i = 0; i < xc.numel(); ++i) {
    const int64_t c = channel_of(xc, i, g.axis);
    dx.data_ptr<T>()[i] =
        ste_ref<T>(xc.data_ptr<T>()[i], gc.data_ptr<T>()[i], static_cast<T>(g.scale[c]),
                   g.zero_point[c], g.quant_min, g.quant_max, g.rounding);
  }
  return dx;
}

// Per-scale sums of eq. 6 (without the grad factor), in double.
template <typename T>
std::vector<double> lsq_scale_grad_tensor_ref(const at::Tensor& x, const at::Tensor& dy,
                                              const GridRef& g) {
  const at::Tensor xc = x.contiguous();
  const at::Tensor gc = dy.contiguous();
  std::vector<double> sums(g.scale.size(), 0.0);
  for (int64_t i = 0; i < xc.numel(); ++i) {
    const int64_t c = channel_of(xc, i, g.axis);
    sums[c] +=
        lsq_scale_grad_ref<T>(xc.data_ptr<T>()[i], gc.data_ptr<T>()[i], static_cast<T>(g.scale[c]),
                              g.zero_point[c], g.quant_min, g.quant_max, g.rounding);
  }
  return sums;
}

}  // namespace test
}  // namespace calq
