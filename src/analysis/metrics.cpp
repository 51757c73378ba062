#include "calq/analysis/metrics.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace calq {
namespace analysis {
namespace {

void check_pair(const at::Tensor& reference, const at::Tensor& test, const char* what) {
  TORCH_CHECK(reference.defined() && test.defined(), what, ": both tensors must be defined");
  TORCH_CHECK(at::isFloatingType(reference.scalar_type()) && at::isFloatingType(test.scalar_type()),
              what, ": tensors must be floating, got ", reference.scalar_type(), " and ",
              test.scalar_type());
  TORCH_CHECK(reference.sizes() == test.sizes(), what, ": the reference has shape ",
              reference.sizes(), " and the test tensor ", test.sizes(), "; they must agree");
}

double ratio_db(double signal, double noise) {
  if (noise == 0.0) return std::numeric_limits<double>::infinity();
  if (signal == 0.0) return -std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(signal / noise);
}

}  // namespace

void SimilarityMeter::add(const at::Tensor& reference, const at::Tensor& test) {
  check_pair(reference, test, "SimilarityMeter");
  if (reference.numel() == 0) return;
  at::NoGradGuard no_grad;
  const at::Tensor x = reference.detach().to(at::kDouble).reshape({-1});
  const at::Tensor y = test.detach().to(at::kDouble).reshape({-1});
  const at::Tensor e = x - y;
  const double dot = at::dot(x, y).item<double>();
  const double xx = at::dot(x, x).item<double>();
  const double yy = at::dot(y, y).item<double>();
  const double ee = at::dot(e, e).item<double>();
  TORCH_CHECK(std::isfinite(xx) && std::isfinite(yy), "SimilarityMeter: non-finite values in the ",
              std::isfinite(xx) ? "test" : "reference",
              " tensor; similarities are defined for finite data only");
  dot_ += dot;
  reference_sq_ += xx;
  test_sq_ += yy;
  error_sq_ += ee;
  max_abs_ = std::max(max_abs_, e.abs().max().item<double>());
  count_ += x.numel();
}

Similarity SimilarityMeter::result() const {
  Similarity s;
  s.count = count_;
  if (count_ == 0) return s;
  if (reference_sq_ == 0.0 && test_sq_ == 0.0) {
    s.cosine = 1.0;
  } else if (reference_sq_ == 0.0 || test_sq_ == 0.0) {
    s.cosine = 0.0;
  } else {
    s.cosine = std::min(1.0, std::max(-1.0, dot_ / std::sqrt(reference_sq_ * test_sq_)));
  }
  s.sqnr_db = ratio_db(reference_sq_, error_sq_);
  s.max_abs_err = max_abs_;
  s.mse = error_sq_ / static_cast<double>(count_);
  return s;
}

void ClippingMeter::add(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                        const QuantSpec& spec) {
  TORCH_CHECK(x.defined() && at::isFloatingType(x.scalar_type()),
              "ClippingMeter: x must be a defined floating tensor");
  if (x.numel() == 0) return;
  at::NoGradGuard no_grad;
  at::Tensor s = scale.detach().to(at::kDouble).reshape({-1});
  at::Tensor z = zero_point.detach().to(at::kDouble).reshape({-1});
  TORCH_CHECK(s.numel() == z.numel() && s.numel() >= 1,
              "ClippingMeter: scale and zero_point need the same number (>= 1) of elements");
  if (spec.per_channel() && s.numel() > 1) {
    const int64_t axis = spec.ch_axis() < 0 ? spec.ch_axis() + x.dim() : spec.ch_axis();
    TORCH_CHECK(axis >= 0 && axis < x.dim() && x.size(axis) == s.numel(),
                "ClippingMeter: ", s.numel(), " scales along axis ", spec.ch_axis(),
                " of a tensor of shape ", x.sizes());
    std::vector<int64_t> shape(x.dim(), 1);
    shape[axis] = -1;
    s = s.reshape(shape);
    z = z.reshape(shape);
  }
  const at::Tensor v = x.detach().to(at::kDouble) / s + z;
  const double lo = static_cast<double>(spec.quant_min()) - 0.5;
  const double hi = static_cast<double>(spec.quant_max()) + 0.5;
  clipped_ += ((v < lo) | (v > hi)).sum().item<int64_t>();
  count_ += x.numel();
}

void ClippingMeter::add(const at::Tensor& x, const FakeQuantizeImpl& quantizer) {
  at::Tensor scale, zero_point;
  std::tie(scale, zero_point) = quantizer.qparams();
  add(x, scale, zero_point, quantizer.spec());
}

double ClippingMeter::percent() const {
  return count_ == 0 ? 0.0 : 100.0 * static_cast<double>(clipped_) / static_cast<double>(count_);
}

double OutputDivergence::divergence() const {
  if (classifier) return kl;
  if (std::isinf(sqnr_db)) return sqnr_db > 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::pow(10.0, -sqnr_db / 10.0);
}

double kl_divergence(const at::Tensor& reference_logits, const at::Tensor& test_logits) {
  check_pair(reference_logits, test_logits, "kl_divergence");
  TORCH_CHECK(reference_logits.dim() == 2 && reference_logits.size(0) > 0,
              "kl_divergence: logits must be [N, C] with N >= 1, got ", reference_logits.sizes());
  at::NoGradGuard no_grad;
  const at::Tensor p_log = at::log_softmax(reference_logits.detach().to(at::kDouble), 1);
  const at::Tensor q_log = at::log_softmax(test_logits.detach().to(at::kDouble), 1);
  return (p_log.exp() * (p_log - q_log)).sum(1).mean().item<double>();
}

void DivergenceMeter::add(const at::Tensor& reference, const at::Tensor& test) {
  check_pair(reference, test, "DivergenceMeter");
  TORCH_CHECK(reference.dim() >= 1 && reference.size(0) > 0,
              "DivergenceMeter: outputs need a first (sample) dimension with at least one sample, "
              "got shape ",
              reference.sizes());
  const bool classifier = reference.dim() == 2 && reference.size(1) >= 2;
  TORCH_CHECK(classifier_ < 0 || classifier_ == static_cast<int>(classifier),
              "DivergenceMeter: every batch must have the same kind of output");
  classifier_ = classifier ? 1 : 0;
  similarity_.add(reference, test);
  const int64_t n = reference.size(0);
  if (classifier) {
    at::NoGradGuard no_grad;
    kl_sum_ += kl_divergence(reference, test) * static_cast<double>(n);
    agree_ += (reference.argmax(1) == test.argmax(1)).sum().item<int64_t>();
  }
  samples_ += n;
}

OutputDivergence DivergenceMeter::result() const {
  OutputDivergence d;
  d.samples = samples_;
  d.classifier = classifier_ == 1;
  d.sqnr_db = similarity_.result().sqnr_db;
  if (samples_ > 0 && d.classifier) {
    d.kl = kl_sum_ / static_cast<double>(samples_);
    d.top1_agreement = 100.0 * static_cast<double>(agree_) / static_cast<double>(samples_);
  }
  return d;
}

double sqnr_db(const at::Tensor& reference, const at::Tensor& test) {
  SimilarityMeter meter;
  meter.add(reference, test);
  return meter.result().sqnr_db;
}

}  // namespace analysis
}  // namespace calq
