#include "calq/observers/running_range.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>

namespace calq {
namespace observers {

RunningRangeObserverImpl::RunningRangeObserverImpl(std::string kind, ObserverOptions options,
                                                   double averaging_constant)
    : ObserverImpl(std::move(kind), std::move(options)), averaging_constant_(averaging_constant) {
  check_averaging_constant(kind_, averaging_constant_);
  first_min_ = register_buffer("first_min", at::empty({0}, at::kFloat));
  first_max_ = register_buffer("first_max", at::empty({0}, at::kFloat));
}

void RunningRangeObserverImpl::update_impl(const Batch& batch) {
  at::Tensor cur_min, cur_max;
  std::tie(cur_min, cur_max) = batch_range(batch);
  if (!has_data()) {
    assign(min_val_, cur_min);
    assign(max_val_, cur_max);
    assign(first_min_, cur_min);
    assign(first_max_, cur_max);
    return;
  }
  const double c = averaging_constant_;
  // c = 1 keeps the latest range and c = 0 the first, exactly: v + 1 * (cur - v) rounds twice
  // and need not give cur back (v = 1, cur = 1e-8 gives 0), which would break the exact merge
  // (docs/observers.md) for c = 1.
  if (c == 1.0) {
    assign(min_val_, cur_min);
    assign(max_val_, cur_max);
    return;
  }
  if (c == 0.0) return;
  min_val_.add_(cur_min - min_val_, c);
  max_val_.add_(cur_max - max_val_, c);
}

void RunningRangeObserverImpl::adopt_range_impl() {
  assign(first_min_, min_val_);
  assign(first_max_, max_val_);
}

void RunningRangeObserverImpl::merge_impl(const ObserverImpl& other_base) {
  const auto& other = static_cast<const RunningRangeObserverImpl&>(other_base);
  TORCH_CHECK(other.first_min_.numel() == other.min_val_.numel(), "observer '", kind_,
              "' merge: the source has no first-batch range (first_min/first_max), e.g. a "
              "state loaded from another kind of observer; it cannot be merged exactly");
  // c = 0: the first range (a's) stays; c = 1: the latest (b's) wins. Exact, without the
  // rounding of the closed form.
  if (averaging_constant_ == 0.0) return;
  if (averaging_constant_ == 1.0) {
    assign(min_val_, other.min_val_);
    assign(max_val_, other.max_val_);
    return;
  }
  // v = v_b + (1 - c)^n_b * (v_a - first_b), in double to keep the rounding small.
  const double decay =
      std::pow(1.0 - averaging_constant_, static_cast<double>(other.batches_seen()));
  auto combine = [&](const at::Tensor& va, const at::Tensor& vb, const at::Tensor& first_b) {
    return (vb.to(at::kDouble) + (va.to(at::kDouble) - first_b.to(at::kDouble)) * decay)
        .to(at::kFloat);
  };
  assign(min_val_, combine(min_val_, other.min_val_, other.first_min_));
  assign(max_val_, combine(max_val_, other.max_val_, other.first_max_));
}

}  // namespace observers
}  // namespace calq
