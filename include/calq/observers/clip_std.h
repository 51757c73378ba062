#pragma once
// "clip_std": min/max clamped to mean +- std_scale * std (semantics section 2).

#include "calq/observers/running_range.h"

namespace calq {
namespace observers {

struct ClipStdObserverOptions {
  /// Width of the kept band in standard deviations. Finite, >= 0. Default 3.
  TORCH_ARG(double, std_scale) = 3.0;
  /// v <- v + c * (cur - v) after the first batch. In [0, 1]. Default 0.01.
  TORCH_ARG(double, averaging_constant) = 0.01;
};

/// Per batch (per tensor or per channel): cur_min = max(min, mean - k * std),
/// cur_max = min(max, mean + k * std), k = std_scale, std the population standard deviation
/// (divides by n, so a one-element batch gives std 0 rather than NaN); then the running
/// average of running_range.h. Constant data gives cur_min = cur_max = the constant.
class ClipStdObserverImpl : public RunningRangeObserverImpl {
 public:
  explicit ClipStdObserverImpl(ObserverOptions common = {}, ClipStdObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

 protected:
  std::pair<at::Tensor, at::Tensor> batch_range(const Batch& batch) override;

 private:
  ClipStdObserverOptions std_options_;
};

/// Per-channel mean and population variance of x (float32 or float64 {C, N}, N > 0), both
/// float64 {C}. One pass: blocks of float32 lane sums of d = x - x[c][0] and d^2, combined in
/// double in a fixed order (the result does not depend on the thread count). About 10x
/// faster than at::var_mean on float32 here.
std::pair<at::Tensor, at::Tensor> channel_mean_var(const at::Tensor& x);

}  // namespace observers
}  // namespace calq
