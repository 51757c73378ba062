#pragma once
// "mse": the candidate range with the lowest fake-quantization L2 error (semantics section 2).

#include <ATen/core/Tensor.h>

#include "calq/observers/running_range.h"

namespace calq {
namespace observers {

struct MSEObserverOptions {
  /// Candidate step: i = 0, stride, 2 * stride, ... <= 94. In [1, 94]. Default 1.
  TORCH_ARG(int64_t, stride) = 1;
  /// v <- v + c * (cur - v) after the first batch. In [0, 1]. Default 0.01.
  TORCH_ARG(double, averaging_constant) = 0.01;
};

/// Per batch and per channel (or per tensor): candidates (1 - 0.01 i) * [min, max]; each gives
/// qparams through compute_qparams(spec) and the candidate whose fake-quantized data has the
/// lowest sum of squared errors is the batch's range (the first, i.e. widest, on ties). Then
/// the running average of running_range.h. The error uses q = clamp(round(x * (1 / scale)) +
/// zero_point, quant_min, quant_max) with the spec's rounding; multiplying by the reciprocal
/// instead of dividing can move a value that lies exactly on a rounding tie, which changes an
/// error by at most one rounding step for that value.
class MSEObserverImpl : public RunningRangeObserverImpl {
 public:
  explicit MSEObserverImpl(ObserverOptions common = {}, MSEObserverOptions options = {});
  nlohmann::json config() const override;
  std::shared_ptr<ObserverImpl> clone_empty() const override;

 protected:
  std::pair<at::Tensor, at::Tensor> batch_range(const Batch& batch) override;

 private:
  MSEObserverOptions mse_options_;
};

/// Sum of squared fake-quantization errors per channel and candidate.
/// x: float32 {C, N}; scale: float32 {K, C}; zero_point: int32 {K, C}. Returns float64 {C, K}.
at::Tensor mse_candidate_errors(const at::Tensor& x, const at::Tensor& scale,
                                const at::Tensor& zero_point, const QuantSpec& spec);
/// Scalar twin of mse_candidate_errors (division, std::nearbyint / floor), for tests.
at::Tensor mse_candidate_errors_ref(const at::Tensor& x, const at::Tensor& scale,
                                    const at::Tensor& zero_point, const QuantSpec& spec);

}  // namespace observers
}  // namespace calq
