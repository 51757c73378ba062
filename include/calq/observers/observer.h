#pragma once
// Observer: statistics of a tensor stream -> a range -> scale and zero point
// (docs/observers.md; semantics section 2). Observers are torch::nn::Modules whose state lives
// in buffers, so torch::save / torch::load of a model round-trips it bit for bit; their
// parameters (percentile, bins, ...) are configuration fixed at construction.

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <ostream>
#include <string>
#include <utility>

#include "calq/quant/quant_spec.h"

namespace calq {
namespace observers {

/// Options shared by every observer.
struct ObserverOptions {
  /* implicit */ ObserverOptions(QuantSpec spec = QuantSpec()) : spec_(std::move(spec)) {}
  /// Quantization grid the qparams are computed for (dtype, per-channel axis, rounding,
  /// power-of-two, symmetric). Default: per-tensor symmetric qint8.
  TORCH_ARG(QuantSpec, spec);
  /// Non-finite values (NaN, +-Inf) in a batch: false (default) -> update() throws, naming the
  /// observer; true -> they are dropped and counted in nonfinite_count(). Per-tensor only
  /// (a per-channel observer cannot drop single elements without changing its channel shape).
  TORCH_ARG(bool, skip_nonfinite) = false;
};

/// Base class of the eight observers (registry.h lists them).
///
/// State (buffers, every one a defined tensor from construction on so torch::load can fill
/// it in place; names are the contract of load_observer_params):
///   "min_val", "max_val": float32 {1} or {C} (per-channel), empty {0} before data. The range
///       the qparams are computed from, i.e. the observer's result (for histogram observers the
///       clipped threshold range, for min_max the running min/max).
///   "batches": int64 {1}, batches seen.  "nonfinite": int64 {1}, non-finite values skipped.
/// Subclasses add their own buffers. Not thread-safe; one observer per quantization point.
class ObserverImpl : public torch::nn::Module {
 public:
  /// `kind` is the registry name ("min_max", "percentile", ...).
  ObserverImpl(std::string kind, ObserverOptions options);
  ~ObserverImpl() override = default;

  /// Accumulates one batch (the tensor is read, never kept; gradients are not tracked).
  /// x: float32/float64 (other floating types are converted), any shape with at least one
  /// element; per-channel: x.dim() > ch_axis and the channel count must stay the same.
  /// Non-finite values throw (naming the observer and the batch's min/max) unless
  /// skip_nonfinite; a batch that is entirely non-finite and skipped counts as no batch.
  void update(const at::Tensor& x);

  /// Scale (float32) and zero_point (int32) shaped {1} (per-tensor) or {C} (per-channel),
  /// from compute_qparams(min_val, max_val, spec). Throws if no data was seen (except
  /// fixed_scale, which never needs data). All-zero or constant data gives a finite scale.
  std::pair<at::Tensor, at::Tensor> qparams() const;

  /// Whether, on a power-of-two grid, some scale had to be clamped to [2^-14, 2^-1]
  /// (power_of_two_scale); false on a free grid or without data.
  virtual bool power_of_two_clamped() const;

  /// The result range (min_val, max_val) the qparams come from; throws without data.
  std::pair<at::Tensor, at::Tensor> range() const;

  /// Makes this observer equal to one that saw this observer's batches and then `other`'s.
  /// Counts (batches, nonfinite, histograms) and exact minima/maxima merge exactly; running
  /// averages follow the closed form in running_range.h (exact up to float rounding).
  /// Throws if the kinds, configurations or channel counts differ. Merging an observer
  /// without data is a no-op; merging into one without data copies `other`.
  void merge(const ObserverImpl& other);

  /// Makes this observer hold [min_val, max_val] as its result range, as if it had seen
  /// `batches` (>= 1) batches whose statistics it does not know: a calibrated range carried
  /// over from another kind of observer (load_observer_params). Kind-specific statistics are
  /// reset: running-range observers continue their average from this range (it also becomes
  /// their first-batch range), histogram observers start a fresh histogram with the next
  /// batch and keep this range until then. fixed_scale ignores it and returns false.
  /// min_val / max_val: floating, one value per tensor or per channel (C when per-channel),
  /// finite, min_val <= max_val; errors name the offending value.
  bool adopt_range(const at::Tensor& min_val, const at::Tensor& max_val, int64_t batches);

  /// True once update() saw at least one batch (restored by load).
  bool has_data() const;
  /// Whether qparams() needs data (false only for fixed_scale).
  virtual bool needs_data() const { return true; }
  /// True when qparams() can be called: has_data(), or an observer that needs no data.
  bool ready() const { return has_data() || !needs_data(); }
  int64_t batches_seen() const;
  int64_t nonfinite_count() const;

  const std::string& kind() const { return kind_; }
  const ObserverOptions& options() const { return options_; }
  const QuantSpec& spec() const { return options_.spec(); }

  /// The keyword arguments that rebuild this observer's configuration through make_observer
  /// (observer-specific keys only; spec and skip_nonfinite are separate).
  virtual nlohmann::json config() const = 0;

  /// A new observer of the same kind and configuration, without data.
  virtual std::shared_ptr<ObserverImpl> clone_empty() const = 0;

  void pretty_print(std::ostream& stream) const override;

 protected:
  /// Batch statistics computed once by update() and handed to update_impl.
  struct Batch {
    at::Tensor x;        ///< finite data, contiguous, float32 or float64
    at::Tensor min_val;  ///< float32 {1} or {C}
    at::Tensor max_val;  ///< float32 {1} or {C}
  };
  /// Accumulates a batch; batches_seen() still counts the earlier batches only.
  virtual void update_impl(const Batch& batch) = 0;
  /// Optional fast path for a per-tensor batch (x finite or not, contiguous, float32 or
  /// float64): accumulate x in a single read and return true, or return false (state
  /// untouched) to take the general path (batch statistics, non-finite checks, update_impl).
  /// Must leave exactly the state update_impl would. Default: false.
  virtual bool try_update_in_one_pass(const at::Tensor& x) { return false; }
  /// Merges `other` (same kind and configuration, has data) into this (has data).
  virtual void merge_impl(const ObserverImpl& other) = 0;
  /// Default: compute_qparams(min_val, max_val, spec).
  virtual std::pair<at::Tensor, at::Tensor> qparams_impl() const;
  /// Resets kind-specific statistics after adopt_range set min_val / max_val / batches.
  virtual void adopt_range_impl() {}

  /// Replaces a buffer's contents in place (never rebinding, so the registered buffer and
  /// the member stay one tensor).
  static void assign(at::Tensor& buffer, const at::Tensor& value);
  /// x viewed as {C, N} along the spec's channel axis (per-channel) or {1, N}.
  at::Tensor as_channels(const at::Tensor& x) const;
  /// Number of scales: 1, or C once per-channel data was seen (0 before).
  int64_t num_channels() const;

  std::string kind_;
  ObserverOptions options_;
  at::Tensor min_val_;
  at::Tensor max_val_;
  at::Tensor batches_;
  at::Tensor nonfinite_;
};

TORCH_MODULE(Observer);

/// An averaging constant check shared by the running-range observers: c in [0, 1].
void check_averaging_constant(const std::string& kind, double averaging_constant);

}  // namespace observers
}  // namespace calq
