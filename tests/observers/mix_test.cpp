// mix observer and the histogram L2 error.

#include "calq/observers/mix.h"

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <cmath>

#include "calq/observers/histogram.h"
#include "calq/observers/registry.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

AbsHistogram make_hist(const std::vector<double>& counts, double range, double max_abs) {
  AbsHistogram h;
  h.counts = torch::tensor(counts, torch::kDouble);
  h.range = range;
  h.max_abs = max_abs;
  return h;
}

TEST(HistogramL2Error, HandComputed) {
  // One value-density bin (0, 1] with count 1, qint8 symmetric, t = 127.5 -> scale 1.
  // Inside the grid: integral over [0, 1] of (u - round(u))^2 = 2 * (0.5^3 / 3) = 1/12.
  EXPECT_NEAR(histogram_l2_error(make_hist({1, 0}, 2.0, 2.0), 127.5, QuantSpec()), 1.0 / 12, 1e-12);
  // t = 1.275 -> scale s = 0.01; bin (1, 2]: on (1, 1.275] values round inside the grid, 27.5
  // cells of s^3 / 12 each; beyond (127 + 0.5) s = 1.275 they clamp to 1.27:
  // integral of (u - 1.27)^2 over [1.275, 2] = (0.73^3 - 0.005^3) / 3.
  const double expected = 27.5 * 1e-6 / 12 + (std::pow(0.73, 3) - std::pow(0.005, 3)) / 3.0;
  // The scale is float32 (0.01 to 1e-10): 1e-7 absolute covers the shifted clamp point.
  EXPECT_NEAR(histogram_l2_error(make_hist({0, 1}, 2.0, 2.0), 1.275, QuantSpec()), expected, 1e-7);
}

TEST(HistogramL2Error, AgreesWithSampledData) {
  // Many values spread uniformly inside bins: the bin-uniform model is then close to the
  // measured error of the data (statistical agreement within 2 %).
  torch::manual_seed(10);
  const at::Tensor x = torch::rand({400000}) * 4;
  at::Tensor counts = torch::zeros({2048}, torch::kDouble);
  accumulate_abs_histogram(counts, 4.0, x);
  const AbsHistogram h = make_hist({}, 4.0, x.max().item<double>());
  AbsHistogram hist = h;
  hist.counts = counts;
  for (double t : {4.0, 2.0, 0.5}) {
    const double s = t / 127.5;
    const at::Tensor q = (x / s).round().clamp(-128, 127) * s;
    const double measured = (x - q).pow(2).sum().item<double>();
    EXPECT_NEAR(histogram_l2_error(hist, t, QuantSpec()) / measured, 1.0, 0.02) << t;
  }
}

TEST(MixObserver, PicksTheLowestErrorPercentile) {
  // Brute force on the data: each candidate percentile's exact quantile of |x| and the exact
  // L2 error of fake-quantizing the data at that threshold (eq. 2, written here); the observer
  // must pick the same percentile, its threshold within one bin of that exact quantile.
  torch::manual_seed(11);
  const at::Tensor x = torch::randn({50000});
  Observer obs = make_observer("mix", QuantSpec(), {});
  obs->update(x);
  auto& mix = static_cast<MixObserverImpl&>(*obs);
  const at::Tensor sorted = std::get<0>(x.abs().to(torch::kDouble).sort());
  double best_error = INFINITY, best_quantile = 0;
  for (double p : {99.9, 99.99, 99.999, 99.9999}) {
    const int64_t rank =
        static_cast<int64_t>(std::ceil(p / 100.0 * static_cast<double>(x.numel()))) - 1;
    const double q = sorted[rank].item<double>();
    const double s = q / 127.5;
    const at::Tensor d = x.to(torch::kDouble);
    const double e = (d - (d / s).round().clamp(-128, 127) * s).pow(2).sum().item<double>();
    if (e < best_error) best_error = e, best_quantile = q;
  }
  EXPECT_NEAR(mix.threshold(), best_quantile, mix.histogram().bin_width());
}

TEST(MixObserver, MergeAndRoundTrip) {
  testing::expect_merge_equals_sequence_and_round_trips(
      [] {
        return make_observer("mix", QuantSpec(), {{"percentiles", {99.0, 99.9}}});
      },
      torch::randn({2000}), torch::randn({2000}) * 4);
}

TEST(MixObserver, Errors) {
  EXPECT_THROW_WITH(make_observer("mix", QuantSpec(), {{"percentiles", std::vector<double>{}}}),
                    "percentiles is empty");
  EXPECT_THROW_WITH(make_observer("mix", QuantSpec(), {{"percentiles", {99.0, 100.5}}}),
                    "percentile = 100.5");
  EXPECT_THROW_WITH(make_observer("mix", QuantSpec(), {{"percentiles", 99.0}}),
                    "must be a list of numbers");
  EXPECT_THROW_WITH(make_observer("mix", QuantSpec(), {{"bins", 1}}), "bins = 1");
}

}  // namespace
}  // namespace observers
}  // namespace calq
