#pragma once
// Reading the few values of a scale, zero point or range tensor. These run on every fake-quant
// call; a chain of ATen conversions (detach, to, contiguous, view) costs more there than the
// values themselves, so common CPU layouts are read with a plain loop.

#include <ATen/ATen.h>

#include <cstdint>

namespace calq {
namespace detail {

/// The values of t (any dtype, device or layout) as a fresh contiguous float64 CPU vector.
inline at::Tensor to_double_vector(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous()) {
    const int64_t n = t.numel();
    at::Tensor out = at::empty({n}, at::kDouble);
    double* o = out.data_ptr<double>();
    switch (t.scalar_type()) {
      case at::kFloat: {
        const float* p = t.data_ptr<float>();
        for (int64_t i = 0; i < n; ++i) o[i] = p[i];
        return out;
      }
      case at::kDouble: {
        const double* p = t.data_ptr<double>();
        for (int64_t i = 0; i < n; ++i) o[i] = p[i];
        return out;
      }
      case at::kInt: {
        const int32_t* p = t.data_ptr<int32_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = p[i];
        return out;
      }
      case at::kLong: {
        const int64_t* p = t.data_ptr<int64_t>();
        for (int64_t i = 0; i < n; ++i) o[i] = static_cast<double>(p[i]);
        return out;
      }
      default:
        break;
    }
  }
  return t.detach().to(at::kCPU, at::kDouble).contiguous().view({-1}).clone();
}

}  // namespace detail
}  // namespace calq
