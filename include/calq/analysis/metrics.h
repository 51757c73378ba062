#pragma once
// How far a quantized tensor is from its float reference, and how far a quantized model's
// output is from the float model's (docs/analysis.md, section 1). Every meter accumulates
// sums over any number of batches in float64, so a figure over a data set is the figure of
// the concatenated tensors, not a mean of per-batch figures.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>

#include "calq/fake_quantize.h"

namespace calq {
namespace analysis {

/// Similarity of a test tensor y to a reference x over all values seen:
///   cosine      = sum(x y) / sqrt(sum(x^2) sum(y^2))   (1 when both are all zero, 0 when only
///                 one is);
///   sqnr_db     = 10 log10(sum(x^2) / sum((x - y)^2))   (+inf when y == x everywhere; -inf
///                 when x is all zero and y is not);
///   max_abs_err = max |x - y|;
///   mse         = sum((x - y)^2) / count.
struct Similarity {
  int64_t count = 0;
  double cosine = 1.0;
  double sqnr_db = std::numeric_limits<double>::infinity();
  double max_abs_err = 0.0;
  double mse = 0.0;
};

/// Accumulates Similarity over batches: add(x, y) with x, y floating tensors of the same
/// shape (any; compared element by element). Non-finite values are an error naming the
/// tensor.
class SimilarityMeter {
 public:
  void add(const at::Tensor& reference, const at::Tensor& test);
  Similarity result() const;
  bool empty() const { return count_ == 0; }

 private:
  double dot_ = 0.0, reference_sq_ = 0.0, test_sq_ = 0.0, error_sq_ = 0.0, max_abs_ = 0.0;
  int64_t count_ = 0;
};

/// Counts the values a quantizer saturates: those with round(x / s) + z outside
/// [quant_min, quant_max], i.e. x / s + z < quant_min - 1/2 or > quant_max + 1/2 (values on
/// the half-step boundary itself count as in range). Per-channel scales apply along the
/// spec's channel axis.
class ClippingMeter {
 public:
  /// x: the quantizer's input; scale / zero_point as FakeQuantizeImpl::qparams() returns
  /// them; spec: its grid.
  void add(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
           const QuantSpec& spec);
  /// add() with the quantizer's current qparams.
  void add(const at::Tensor& x, const FakeQuantizeImpl& quantizer);
  /// Percent of the values seen that saturate (0 before any value).
  double percent() const;
  int64_t clipped() const { return clipped_; }
  int64_t count() const { return count_; }

 private:
  int64_t clipped_ = 0, count_ = 0;
};

/// How a model's output differs from the float model's on the same inputs.
///
/// Classifier outputs (2-d [N, C], C >= 2) also get, per sample,
///   kl              = KL(softmax(x) || softmax(y)) in nats (the float model's distribution
///                     first), averaged over the samples;
///   top1_agreement  = percent of samples whose argmax agrees (ties: the first maximum).
/// Every output gets sqnr_db over all values (Similarity above).
struct OutputDivergence {
  int64_t samples = 0;
  bool classifier = false;
  double kl = 0.0;
  double top1_agreement = 100.0;
  double sqnr_db = std::numeric_limits<double>::infinity();
  /// The number to rank by (larger = further from float): kl for classifiers, otherwise the
  /// noise-to-signal ratio sum((x - y)^2) / sum(x^2) (-sqnr_db in linear terms).
  double divergence() const;
  /// 100 - top1_agreement: the label-free top-1 "drop" (classifiers; 0 otherwise).
  double disagreement_pct() const { return classifier ? 100.0 - top1_agreement : 0.0; }
};

/// Accumulates OutputDivergence over batches. add(x, y): the float model's and the test
/// model's outputs on the same batch (same shape, first dimension = samples).
class DivergenceMeter {
 public:
  void add(const at::Tensor& reference, const at::Tensor& test);
  OutputDivergence result() const;

 private:
  SimilarityMeter similarity_;
  double kl_sum_ = 0.0;
  int64_t agree_ = 0, samples_ = 0;
  int classifier_ = -1;  // unknown until the first batch
};

/// Mean KL(softmax(reference) || softmax(test)) over the rows of two [N, C] logit tensors,
/// computed in float64 with log-softmax (finite for any finite logits). Shapes must agree.
double kl_divergence(const at::Tensor& reference_logits, const at::Tensor& test_logits);

/// Signal-to-quantization-noise ratio of one pair of tensors in dB (SimilarityMeter).
double sqnr_db(const at::Tensor& reference, const at::Tensor& test);

}  // namespace analysis
}  // namespace calq
