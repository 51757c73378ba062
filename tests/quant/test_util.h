#pragma once
// Small helpers shared by the quant tests.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace calq {
namespace test {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Lengths that exercise the vector body and every remainder of 8- and 16-wide loops, and
// one length above the kernels' 16384-element work item.
inline const std::vector<int64_t> kSizes = {1, 2, 5, 8, 9, 16, 20, 28, 32, 33, 100003};

// Elementwise equality that treats NaN == NaN (and -0 == +0); shapes and dtypes must match.
inline ::testing::AssertionResult same_values(const at::Tensor& actual,
                                              const at::Tensor& expected) {
  if (actual.sizes() != expected.sizes() || actual.scalar_type() != expected.scalar_type()) {
    return ::testing::AssertionFailure()
           << "shape/dtype " << actual.sizes() << " " << actual.scalar_type() << " vs "
           << expected.sizes() << " " << expected.scalar_type();
  }
  const at::Tensor a = actual.reshape({-1});
  const at::Tensor e = expected.reshape({-1});
  const at::Tensor ok = (a == e) | (a.isnan() & e.isnan());
  if (ok.all().item<bool>()) {
    return ::testing::AssertionSuccess();
  }
  const at::Tensor bad = (~ok).nonzero();
  const int64_t first = bad[0][0].item<int64_t>();
  return ::testing::AssertionFailure()
         << bad.size(0) << " of " << a.numel() << " elements differ; first at flat index " << first
         << ": " << a[first].item<double>() << " vs " << e[first].item<double>();
}

// Elements where ATen's x * (1 / s) rounds to another integer than calq's (and ONNX's) true
// quotient x / s: only within an ulp of a rounding tie. `scale` broadcasts against x.
inline at::Tensor reciprocal_ties(const at::Tensor& x, const at::Tensor& scale) {
  const at::Tensor s = scale.to(x.scalar_type());
  return (x / s).round() != (x * (1 / s)).round();
}

// same_values outside the reciprocal ties of x, which must be rare on random data (at most 2
// or 0.1 %; `any_ties` lifts the limit for data built on ties, e.g. values clipped at alpha).
inline ::testing::AssertionResult same_values_as_aten(const at::Tensor& calq,
                                                      const at::Tensor& aten, const at::Tensor& x,
                                                      const at::Tensor& scale,
                                                      bool any_ties = false) {
  const at::Tensor ties = reciprocal_ties(x, scale).reshape(calq.sizes());
  const int64_t count = ties.sum().item<int64_t>();
  if (!any_ties && count > std::max<int64_t>(2, x.numel() / 1000)) {
    return ::testing::AssertionFailure() << count << " reciprocal ties of " << x.numel();
  }
  const at::Tensor keep = ~ties;
  return same_values(calq.masked_select(keep), aten.masked_select(keep));
}

// Runs fn and checks that it throws c10::Error whose message contains `needle`.
inline ::testing::AssertionResult throws_with(const std::function<void()>& fn,
                                              const std::string& needle) {
  try {
    fn();
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    if (message.find(needle) != std::string::npos) {
      return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "message '" << message << "' lacks '" << needle << "'";
  }
  return ::testing::AssertionFailure() << "no c10::Error thrown (expected '" << needle << "')";
}

}  // namespace test
}  // namespace calq
