#pragma once
// Observer: statistics of a tensor stream -> scale and zero point (docs/quantization.md,
// section 2). Observers are torch::nn::Modules so their state (buffers) is part of a model's
// saved state; their parameters (percentile, bins, ...) are configuration, fixed at
// construction.

#include <torch/nn/module.h>

#include <memory>
#include <string>
#include <utility>

#include "calq/quant/quant_spec.h"

namespace calq {
namespace observers {

/// Options shared by every observer.
struct ObserverOptions {
  /* implicit */ ObserverOptions(QuantSpec spec = QuantSpec()) : spec_(std::move(spec)) {}
  /// Quantization grid the qparams are computed for.
  TORCH_ARG(QuantSpec, spec);
  /// Running min/max: v <- v + c * (cur - v); the first batch sets v. In [0, 1].
  /// Default 0.01 (some observers override, e.g. clip uses 1.0).
  TORCH_ARG(double, averaging_constant) = 0.01;
  /// Non-finite values (NaN, +-Inf) in a batch: false (default) -> error naming the
  /// observer; true -> skipped and counted in nonfinite_count().
  TORCH_ARG(bool, skip_nonfinite) = false;
};

/// Base class of the eight observers. Not thread-safe; one per quantization point.
class ObserverImpl : public torch::nn::Module {
 public:
  /// `kind` is the registry name ("min_max", "percentile", ...).
  ObserverImpl(std::string kind, ObserverOptions options);
  ~ObserverImpl() override = default;

  /// Accumulates one batch. x: floating, any shape (per-channel: dim > ch_axis). Throws on
  /// non-finite data unless skip_nonfinite, on an empty tensor, or on a channel-count change.
  void update(const at::Tensor& x);

  /// Scale (float32) and zero_point (int32) shaped {1} or {C}. Throws if no data was seen
  /// (except fixed_scale).
  std::pair<at::Tensor, at::Tensor> qparams() const;

  /// Makes this observer equal to one that saw this observer's stream and then `other`'s.
  /// Exact for min/max and histogram counts when averaging_constant is 1 for the running
  /// min/max... see each observer's note. Throws if kinds or configurations differ.
  void merge(const ObserverImpl& other);

  /// True once update() saw at least one batch (restored by load).
  bool has_data() const;
  /// Number of batches seen and non-finite values skipped (restored by load).
  int64_t batches_seen() const;
  int64_t nonfinite_count() const;

  const std::string& kind() const { return kind_; }
  const ObserverOptions& options() const { return options_; }
  const QuantSpec& spec() const { return options_.spec(); }

  /// A new observer of the same kind and configuration, without data.
  virtual std::shared_ptr<ObserverImpl> clone_empty() const = 0;

  void pretty_print(std::ostream& stream) const override;

 protected:
  /// Called with finite data only (non-finite values removed or rejected already).
  virtual void update_impl(const at::Tensor& x) = 0;
  virtual std::pair<at::Tensor, at::Tensor> qparams_impl() const = 0;
  virtual void merge_impl(const ObserverImpl& other) = 0;
  /// Whether qparams() needs data (false only for fixed_scale).
  virtual bool needs_data() const { return true; }

  std::string kind_;
  ObserverOptions options_;
  at::Tensor batches_;   ///< int64 {1}: batches seen.
  at::Tensor nonfinite_; ///< int64 {1}: non-finite values skipped.
};

TORCH_MODULE(Observer);

/// Builds an observer by registry name ("min_max", "fixed_scale", "clip", "percentile",
/// "clip_std", "mse", "kl", "mix") with keyword arguments (e.g. {"percentile": 99.9}).
/// Unknown names or keywords throw and list the valid ones.
Observer make_observer(const std::string& name, const QuantSpec& spec,
                       const nlohmann::json& kwargs);

}  // namespace observers
}  // namespace calq
