#pragma once
// Reading the few values of a scale, zero point or range tensor. These run on every fake-quant
// call and observer update; a chain of ATen conversions (detach, to, contiguous, view) costs more
// there than the values themselves, so common CPU layouts are read with a plain loop.

#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace calq {
namespace detail {

template <typename T>
void copy_widened(const at::Tensor& t, double* out) {
  const T* p = t.data_ptr<T>();
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = static_cast<double>(p[i]);
}

/// The values of t (any dtype, device or layout) as a fresh contiguous float64 CPU vector.
inline at::Tensor to_double_vector(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous()) {
    at::Tensor out = at::empty({t.numel()}, at::kDouble);
    double* o = out.data_ptr<double>();
    switch (t.scalar_type()) {
      case at::kFloat:
        copy_widened<float>(t, o);
        return out;
      case at::kDouble:
        copy_widened<double>(t, o);
        return out;
      case at::kInt:
        copy_widened<int32_t>(t, o);
        return out;
      case at::kLong:
        copy_widened<int64_t>(t, o);
        return out;
      default:
        break;
    }
  }
  return t.detach().to(at::kCPU, at::kDouble).contiguous().view({-1}).clone();
}

/// Whether pred holds for every value of t, read directly when t is a contiguous float32 CPU
/// tensor (a handful of scales or extremes, checked on every step); nullopt for any other
/// tensor, which the caller then checks with ATen.
template <typename Pred>
c10::optional<bool> all_float_values(const at::Tensor& t, Pred pred) {
  if (!t.device().is_cpu() || !t.is_contiguous() || t.scalar_type() != at::kFloat) {
    return c10::nullopt;
  }
  const float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    if (!pred(p[i])) return false;
  }
  return true;
}

}  // namespace detail
}  // namespace calq
