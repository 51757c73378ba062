#pragma once
// Histograms of |x| shared by the percentile, kl and mix observers, and the threshold rules
// that turn one histogram into a clipping threshold (docs/observers.md, "Histograms").
//
// Layout. `bins` right-closed bins over [0, range]: bin b holds |x| in (b*w, (b+1)*w], bin 0
// also holds 0, w = range / bins. range is the smallest power of two >= max|x| (or 0 while
// every value seen was 0). When a batch exceeds the range, the range doubles k times and old
// bins are merged 2:1 k times (bin b -> bin b >> k): this is exactly the histogram a direct
// binning over the new range gives, so counts are never split, accumulation order and
// process boundaries (merge) do not change a single count.
//
// Resolution. Since max|x| <= range < 2 max|x|, the bin width is below 2 max|x| / bins. A
// threshold taken at a bin centre is within w / 2 < max|x| / bins of the exact quantile of
// the data; thresholds are then clamped to max|x|.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "calq/quant/quant_spec.h"

namespace calq {
namespace observers {

/// A histogram of |x| as above. counts: float64 {bins}, contiguous (exact integers below
/// 2^53). max_abs: the exact max|x| seen (<= range).
struct AbsHistogram {
  at::Tensor counts;
  double range = 0.0;
  double max_abs = 0.0;

  int64_t bins() const { return counts.numel(); }
  double bin_width() const { return range / static_cast<double>(bins()); }
  /// Sum of the counts.
  double total() const;
};

/// Smallest power of two >= max_abs; 0 for 0. max_abs finite and >= 0.
double histogram_range_for(double max_abs);

/// Adds |x| of every element of x (float32 or float64, finite, |x| <= range) to counts
/// (float64 {bins}) over [0, range]. Bin index = ceil(|x| * bins / range) - 1, floored at 0.
/// Computed in float32 for float32 data when bins is a power of two (then exact: the
/// product is a power-of-two scaling), otherwise in float64 (exact for float32 data).
/// Runs in parallel with per-thread counts; the result does not depend on the thread count.
void accumulate_abs_histogram(at::Tensor& counts, double range, const at::Tensor& x);
/// The one-pass form for a histogram whose range is already known: when x is float32,
/// contiguous and non-empty, every value is finite with |x| <= range (> 0) and bins is a power
/// of two, adds x exactly as accumulate_abs_histogram does, sets *min_out / *max_out to the
/// extremes of x and returns true. Otherwise returns false and leaves counts untouched (the
/// caller then computes the range and takes the two-pass path).
bool accumulate_abs_histogram_in_range(at::Tensor& counts, double range, const at::Tensor& x,
                                       float* min_out, float* max_out);
/// Scalar twin of accumulate_abs_histogram, for tests.
void accumulate_abs_histogram_ref(at::Tensor& counts, double range, const at::Tensor& x);

/// counts over [0, range] re-expressed over [0, new_range], new_range = range * 2^k (or any
/// new_range when range is 0: every count then sits in bin 0). Bin b -> bin b >> k.
at::Tensor widen_histogram(const at::Tensor& counts, double range, double new_range);

/// a + b on the wider of the two ranges (exact). Same bins required.
AbsHistogram merge_histograms(const AbsHistogram& a, const AbsHistogram& b);

/// Semantics section 2, percentile: the first bin i whose cumulative count reaches
/// percentile / 100 of the total (relative tolerance 1e-12, because decimal percentiles such
/// as 99.99 are not exact in binary), threshold (i + 0.5) * w, clamped to max_abs.
/// percentile in (0, 100]. An empty histogram is an error.
double percentile_threshold(const AbsHistogram& h, double percentile);

/// Number of positive quantization levels the kl rule maps onto:
/// (quant_max - quant_min + 1) / 2 (128 for qint8, 8 for qint4, 32768 for qint16); on an
/// unsigned grid every level, quant_max - quant_min + 1 (256 for quint8, 16 for quint4).
int64_t kl_num_quantized_bins(const QuantSpec& spec);

/// Entropy calibration (the TensorRT rule), for every end bin i in [nq, bins]:
///   P = counts[0, i) with the outliers sum(counts[i, bins)) added to P[i-1];
///   Q = counts[0, i) merged into nq chunks of m = i / nq bins (the last chunk takes the
///       remainder), each chunk's sum spread evenly over the chunk's bins where P > 0;
///   divergence[i - nq] = KL(P / sum P || Q / sum Q), terms with P = 0 contribute 0, and
///       +inf if Q = 0 where P > 0 (all of a chunk's mass lies in the outliers).
/// Computed in O(nq) per end bin from prefix sums (docs/observers.md). Returns an empty
/// vector when bins < nq.
std::vector<double> kl_divergences(const AbsHistogram& h, int64_t num_quantized_bins);
/// The same rule on bare counts (float64 {bins}, contiguous) with `beyond` more values above
/// the last bin: they count as outliers of every end bin (added to P[i-1], never to Q).
std::vector<double> kl_divergences(const at::Tensor& counts, double beyond,
                                   int64_t num_quantized_bins);

/// The end bin i with the lowest divergence (the largest such i on ties) gives the threshold
/// i * w (the upper edge of the kept range), clamped to max_abs. With bins <= nq every bin
/// has its own level and the threshold is max_abs.
double kl_threshold(const AbsHistogram& h, int64_t num_quantized_bins);

/// Expected squared error (sum over values) of fake-quantizing the histogram's |x| with the
/// symmetric grid of `spec` for clipping threshold t (scale from compute_qparams(-t, t)),
/// under the model "values uniform inside each bin": per bin, the exact integral of
/// (u - q(u))^2 over the bin divided by its width. Uses the positive side only (the grid's
/// quant_max), since the histogram has no sign. t >= 0.
double histogram_l2_error(const AbsHistogram& h, double threshold, const QuantSpec& spec);
/// histogram_l2_error for several thresholds (one compute_qparams call).
std::vector<double> histogram_l2_errors(const AbsHistogram& h,
                                        const std::vector<double>& thresholds,
                                        const QuantSpec& spec);

/// The mse rule on a histogram: candidates (1 - 0.01 i) * max_abs, i = 0, stride, ... <= 94,
/// lowest histogram_l2_error wins (the first, i.e. widest, on ties). stride in [1, 94].
double mse_threshold(const AbsHistogram& h, const QuantSpec& spec, int64_t stride = 1);

/// The mix rule: percentile_threshold for each percentile, lowest histogram_l2_error wins
/// (the first listed on ties). percentiles non-empty, each in (0, 100].
double mix_threshold(const AbsHistogram& h, const QuantSpec& spec,
                     const std::vector<double>& percentiles);

}  // namespace observers
}  // namespace calq
