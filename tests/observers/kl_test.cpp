// kl observer: entropy calibration against hand-computed cases and a plain implementation.

#include "calq/observers/kl.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "calq/observers/histogram.h"
#include "calq/observers/registry.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

// The definition of histogram.h written out directly: O(i) per end bin, explicit P and Q.
std::vector<double> plain_kl(const std::vector<double>& h, int64_t nq) {
  const int64_t bins = static_cast<int64_t>(h.size());
  std::vector<double> out;
  for (int64_t i = nq; i <= bins; ++i) {
    std::vector<double> p(h.begin(), h.begin() + i);
    for (int64_t j = i; j < bins; ++j) p[i - 1] += h[j];
    const int64_t m = i / nq;
    std::vector<double> q(i, 0.0);
    for (int64_t c = 0; c < nq; ++c) {
      const int64_t start = c * m, stop = c == nq - 1 ? i : start + m;
      double sum = 0.0, nonzero = 0.0;
      for (int64_t j = start; j < stop; ++j) {
        sum += h[j];
        nonzero += p[j] > 0 ? 1 : 0;
      }
      for (int64_t j = start; j < stop; ++j) q[j] = p[j] > 0 ? sum / nonzero : 0.0;
    }
    double sp = 0.0, sq = 0.0;
    for (int64_t j = 0; j < i; ++j) sp += p[j], sq += q[j];
    double kl = 0.0;
    for (int64_t j = 0; j < i; ++j) {
      if (p[j] == 0) continue;
      if (q[j] == 0) {
        kl = std::numeric_limits<double>::infinity();
        break;
      }
      kl += p[j] / sp * std::log((p[j] / sp) / (q[j] / sq));
    }
    out.push_back(kl);
  }
  return out;
}

AbsHistogram make_hist(const std::vector<double>& counts, double range, double max_abs) {
  AbsHistogram h;
  h.counts = torch::tensor(counts, torch::kDouble);
  h.range = range;
  h.max_abs = max_abs;
  return h;
}

TEST(KL, HandComputedTwoLevels) {
  // nq = 2, 4 bins of width 1, counts {4, 0, 2, 2}.
  // i = 2: P = {4, 4} (outliers 4 folded into bin 1), Q chunks {4}, {0} -> Q = {4, 0}: P > 0
  //        where Q = 0 -> +inf.
  // i = 3: m = 1, P = {4, 0, 4}, chunks {0}, {1, 2}: Q = {4, 0, 2}; normalized P = {.5, 0, .5},
  //        Q = {4/6, 0, 2/6}: KL = .5 ln(.5 / (2/3)) + .5 ln(.5 / (1/3)) = .5 ln(9/8).
  // i = 4: m = 2, P = {4, 0, 2, 2}, chunks {0,1} -> 4 over 1 non-empty bin, {2,3} -> 4 over 2:
  //        Q = P, KL = 0 -> threshold 4 * w = 4, clamped to max 3.7.
  const AbsHistogram h = make_hist({4, 0, 2, 2}, 4.0, 3.7);
  const std::vector<double> d = kl_divergences(h, 2);
  ASSERT_EQ(d.size(), 3u);
  EXPECT_TRUE(std::isinf(d[0]));
  EXPECT_NEAR(d[1], 0.5 * std::log(9.0 / 8.0), 1e-12);
  EXPECT_NEAR(d[2], 0.0, 1e-12);
  EXPECT_DOUBLE_EQ(kl_threshold(h, 2), 3.7);
}

TEST(KL, HandComputedClipsAnOutlier) {
  // nq = 2, counts {8, 8, 0, 0, 0, 0, 0, 1}, width 1, max 8.
  // i = 2: P = {8, 9}, Q = {8, 8}: KL = 8/17 ln((8/17)/(1/2)) + 9/17 ln((9/17)/(1/2)).
  const AbsHistogram h = make_hist({8, 8, 0, 0, 0, 0, 0, 1}, 8.0, 8.0);
  const std::vector<double> d = kl_divergences(h, 2);
  const double expected = 8.0 / 17 * std::log(16.0 / 17) + 9.0 / 17 * std::log(18.0 / 17);
  EXPECT_NEAR(d[0], expected, 1e-12);
  const std::vector<double> plain = plain_kl({8, 8, 0, 0, 0, 0, 0, 1}, 2);
  ASSERT_EQ(plain.size(), d.size());
  size_t best = 0;
  for (size_t j = 0; j < d.size(); ++j) {
    if (std::isinf(plain[j])) {
      EXPECT_TRUE(std::isinf(d[j])) << j;
    } else {
      EXPECT_NEAR(d[j], plain[j], 1e-12) << j;
    }
    if (d[j] <= d[best]) best = j;
  }
  EXPECT_DOUBLE_EQ(kl_threshold(h, 2), static_cast<double>(2 + best));
}

TEST(KL, MatchesPlainImplementationOnRandomHistograms) {
  torch::manual_seed(4);
  for (int trial = 0; trial < 6; ++trial) {
    const int64_t bins = trial < 3 ? 512 : 2048;
    // Heavy-tailed data with empty bins in the tail.
    const at::Tensor x = torch::randn({200000}) * torch::rand({200000}).pow(4 + trial) * 10;
    const double range = histogram_range_for(x.abs().max().item<double>());
    at::Tensor counts = torch::zeros({bins}, torch::kDouble);
    accumulate_abs_histogram(counts, range, x);
    const AbsHistogram h = make_hist({}, range, x.abs().max().item<double>());
    AbsHistogram hist = h;
    hist.counts = counts;
    std::vector<double> c(counts.data_ptr<double>(), counts.data_ptr<double>() + bins);
    const std::vector<double> fast = kl_divergences(hist, 128);
    const std::vector<double> plain = plain_kl(c, 128);
    ASSERT_EQ(fast.size(), plain.size());
    for (size_t j = 0; j < fast.size(); ++j) {
      if (std::isinf(plain[j])) {
        EXPECT_TRUE(std::isinf(fast[j]));
      } else {
        // Prefix-sum form vs direct sum: cancellation of terms of size log N (about 12)
        // costs a few 1e-15 relative; 1e-10 absolute leaves room and still separates
        // candidates (divergences differ by far more).
        EXPECT_NEAR(fast[j], plain[j], 1e-10) << "trial " << trial << " end bin " << j + 128;
      }
    }
  }
}

TEST(KLObserver, ThresholdClipsTheTailOfAGaussian) {
  torch::manual_seed(5);
  Observer obs = make_observer("kl", QuantSpec(), {{"bins", 2048}});
  obs->update(torch::randn({100000}));
  auto& kl = static_cast<KLObserverImpl&>(*obs);
  const double t = kl.threshold();
  EXPECT_EQ(t, kl_threshold(kl.histogram(), 128));
  // Entropy calibration of N(0, 1) at int8 clips well inside the max (|x| max about 4.4).
  EXPECT_GT(t, 2.0);
  EXPECT_LT(t, kl.histogram().max_abs);
}

TEST(KLObserver, Qint16FitsEveryBin) {
  Observer obs = make_observer("kl", QuantSpec(QuantDtype::qint16), {});
  obs->update(torch::tensor({0.5f, -3.0f, 1.0f}));
  EXPECT_DOUBLE_EQ(static_cast<KLObserverImpl&>(*obs).threshold(), 3.0);
}

TEST(KLObserver, MergeAndRoundTrip) {
  torch::manual_seed(6);
  testing::expect_merge_equals_sequence_and_round_trips(
      [] { return make_observer("kl", QuantSpec(), {}); }, torch::randn({3000}),
      torch::randn({3000}) * 9);
}

TEST(KLObserver, Errors) {
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"bins", 255}}), "bins = 255");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"update_interval", 0}}),
                    "update_interval = 0");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"percentile", 99.0}}),
                    "valid keywords: bins, update_interval, skip_nonfinite");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {})->qparams(), "before any data");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {})->update(torch::tensor({-INFINITY})),
                    "observer 'kl'");
}

}  // namespace
}  // namespace observers
}  // namespace calq
