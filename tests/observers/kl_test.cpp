// kl observer: entropy calibration against hand-computed cases and a plain implementation.

#include "calq/observers/kl.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "calq/observers/histogram.h"
#include "calq/observers/log_histogram.h"
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

// ---- The kl observer against a brute force on the raw data. ----

// The whole rule of kl.h written from its definition on the raw values: the search range from
// the exact (1 - 1e-4) quantile, a left-closed linear histogram of the raw |x|, values beyond
// it as outliers, bin 0 replaced by bin 1 (the default zero-bin rule), the plain O(bins^2)
// divergence above, a moving average over 9 end bins (the default smoothing, truncated at the
// ends), lowest divergence (largest end bin on ties). Returns the threshold and fills the
// (smoothed) divergences.
struct BruteForce {
  double range = 0.0;
  double threshold = 0.0;
  std::vector<double> divergence;
};

BruteForce brute_force_kl(const at::Tensor& x, int64_t bins, int64_t nq) {
  std::vector<double> a;
  const at::Tensor values = x.abs().to(torch::kFloat).to(torch::kDouble).reshape({-1});
  for (int64_t i = 0; i < values.numel(); ++i) a.push_back(values[i].item<double>());
  std::sort(a.begin(), a.end());
  const double max_abs = a.back();
  const size_t rank = static_cast<size_t>(std::ceil((1.0 - 1e-4) * a.size())) - 1;
  auto power_of_two_above = [](double v) { return std::pow(2.0, std::floor(std::log2(v)) + 1); };
  BruteForce out;
  out.range = std::min(power_of_two_above(2.0 * a[rank]), power_of_two_above(max_abs));
  const double w = out.range / static_cast<double>(bins);
  std::vector<double> h(bins, 0.0);
  double beyond = 0.0;
  for (double v : a) {
    if (v >= out.range) {
      beyond += 1;
    } else {
      h[static_cast<size_t>(std::floor(v / w))] += 1;
    }
  }
  h[0] = h[1];
  // Outliers beyond the range go to P[i-1] of every candidate: the plain rule with the beyond
  // count appended as one more bin that no candidate keeps.
  std::vector<double> with_beyond = h;
  with_beyond.push_back(beyond);
  std::vector<double> raw = plain_kl(with_beyond, nq);
  raw.pop_back();  // the candidate that would keep the appended bin
  const int64_t count = static_cast<int64_t>(raw.size());
  for (int64_t i = 0; i < count; ++i) {
    double sum = 0.0;
    int64_t n = 0;
    for (int64_t j = std::max<int64_t>(0, i - 4); j <= std::min(count - 1, i + 4); ++j) {
      sum += raw[j];
      ++n;
    }
    out.divergence.push_back(sum / static_cast<double>(n));
  }
  size_t best = 0;
  for (size_t j = 1; j < out.divergence.size(); ++j) {
    if (out.divergence[j] <= out.divergence[best]) best = j;
  }
  out.threshold = std::min(static_cast<double>(nq + best) * w, max_abs);
  return out;
}

void expect_matches_brute_force(const at::Tensor& x, const std::string& what) {
  SCOPED_TRACE(what);
  Observer obs = make_observer("kl", QuantSpec(), {});
  // Two batches: the histogram's window slides when the second one raises the maximum.
  const int64_t half = x.numel() / 2;
  obs->update(x.narrow(0, 0, half));
  obs->update(x.narrow(0, half, x.numel() - half));
  auto& kl = static_cast<KLObserverImpl&>(*obs);
  const BruteForce expected = brute_force_kl(x, 2048, 128);
  ASSERT_EQ(kl.search_range(), expected.range);
  // Same counts on both sides; the divergences are computed differently (prefix sums vs
  // direct sums), so the observer's choice must be a minimum of the plain divergence (within
  // the 1e-10 that separates the two computations).
  const double t = kl.threshold();
  const double w = expected.range / 2048.0;
  const double min_divergence =
      *std::min_element(expected.divergence.begin(), expected.divergence.end());
  if (t == expected.threshold) return;
  const int64_t chosen = static_cast<int64_t>(std::llround(t / w)) - 128;
  ASSERT_GE(chosen, 0);
  ASSERT_LT(chosen, static_cast<int64_t>(expected.divergence.size()));
  EXPECT_NEAR(expected.divergence[chosen], min_divergence, 1e-10)
      << "observer " << t << " vs brute force " << expected.threshold;
}

TEST(KLObserver, MatchesBruteForceWithOutliersFrom10To1000Sigma) {
  for (double outlier : {10.0, 40.0, 100.0, 1000.0}) {
    torch::manual_seed(5);
    const at::Tensor normal = torch::randn({200000});
    expect_matches_brute_force(torch::cat({normal, torch::tensor({static_cast<float>(outlier)})}),
                               "N(0,1) + one outlier at " + std::to_string(outlier));
    // A cluster of 10 outliers (0.005 % of the values) of both signs.
    const at::Tensor cluster = torch::full({10}, static_cast<float>(outlier)) *
                               (torch::arange(10) % 2 * 2 - 1).to(torch::kFloat);
    expect_matches_brute_force(torch::cat({normal, cluster}),
                               "N(0,1) + 10 outliers at +-" + std::to_string(outlier));
    // ReLU'd Laplace (half exact zeros) with one outlier.
    const at::Tensor laplace =
        torch::relu(-torch::log(torch::rand({200000})) * (torch::rand({200000}) - 0.5).sign());
    expect_matches_brute_force(torch::cat({laplace, torch::tensor({static_cast<float>(outlier)})}),
                               "ReLU(Laplace) + one outlier at " + std::to_string(outlier));
  }
}

TEST(KLObserver, ThresholdDoesNotDependOnTheOutlier) {
  // The first candidate no longer moves with the outlier: the same Gaussian gets the same
  // threshold whether its one outlier sits at 10, 40, 1000 or 3000 standard deviations.
  torch::manual_seed(8);
  const at::Tensor normal = torch::randn({200000});
  std::vector<double> thresholds;
  for (double outlier : {10.0, 40.0, 1000.0, 3000.0}) {
    Observer obs = make_observer("kl", QuantSpec(), {});
    obs->update(torch::cat({normal, torch::tensor({static_cast<float>(outlier)})}));
    thresholds.push_back(static_cast<KLObserverImpl&>(*obs).threshold());
  }
  for (double t : thresholds) EXPECT_EQ(t, thresholds.front());
  // Entropy calibration of N(0, 1) at int8 clips inside the Gaussian's own extremes.
  EXPECT_GT(thresholds.front(), 3.0);
  EXPECT_LT(thresholds.front(), 6.0);
  std::cerr << "kl threshold of N(0,1) + outlier: " << thresholds.front() << "\n";
}

TEST(LogHistogram, BinsMatchTheScalarReferenceAndSlideExactly) {
  torch::manual_seed(9);
  for (int64_t n : {1, 2, 5, 8, 9, 16, 33, 1000, 300000}) {
    const at::Tensor small = torch::randn({n}) * 0.01;
    const at::Tensor large = torch::randn({n}) * 1e4;
    LogHistogram fast = make_log_histogram(), ref = make_log_histogram(), direct;
    for (const at::Tensor& x : {small, large}) {
      const double m = x.abs().max().item<double>();
      raise_max(fast, m);
      raise_max(ref, m);
      accumulate_log_histogram(fast, x);
      accumulate_log_histogram_ref(ref, x);
    }
    EXPECT_TRUE(at::equal(fast.counts, ref.counts)) << n;
    EXPECT_EQ(fast.below, ref.below) << n;
    // Binning both batches directly on the final window gives the same counts.
    direct = make_log_histogram();
    raise_max(direct, std::max(small.abs().max().item<double>(), large.abs().max().item<double>()));
    accumulate_log_histogram_ref(direct, torch::cat({small, large}));
    EXPECT_TRUE(at::equal(fast.counts, direct.counts)) << n;
    EXPECT_EQ(fast.below, direct.below) << n;
    EXPECT_EQ(fast.total(), 2.0 * n);
  }
}

TEST(LogHistogram, LinearCountsEqualDirectLinearBinning) {
  torch::manual_seed(10);
  const at::Tensor x = torch::cat({torch::randn({100000}) * 3, torch::tensor({500.0f, 0.0f})});
  LogHistogram h = make_log_histogram();
  raise_max(h, x.abs().max().item<double>());
  accumulate_log_histogram(h, x);
  for (double range : {4.0, 8.0, 16.0, 1024.0}) {
    for (int64_t bins : {256, 2048}) {
      double beyond = -1.0;
      const at::Tensor counts = linear_counts(h, range, bins, &beyond);
      const at::Tensor a = x.abs().to(torch::kDouble);
      const at::Tensor inside = a.lt(range);
      const at::Tensor expected =
          torch::bincount(torch::floor(a.masked_select(inside) / (range / bins)).to(torch::kLong),
                          {}, bins)
              .to(torch::kDouble);
      EXPECT_TRUE(at::equal(counts, expected)) << range << " " << bins;
      EXPECT_EQ(beyond, (~inside).sum().item<double>()) << range;
    }
  }
}

TEST(LogHistogram, QuantileByHand) {
  LogHistogram h = make_log_histogram();
  raise_max(h, 3.0);
  // 9 values at 1.0 and one at 3.0: bin of 1.0 is [1, 1 + 2^-10), of 3.0 is [3, 3 + 2^-9).
  accumulate_log_histogram_ref(h, torch::cat({torch::ones({9}), torch::tensor({3.0f})}));
  EXPECT_EQ(log_histogram_quantile(h, 0.1), 1.0 + std::ldexp(1.0, -10));
  EXPECT_EQ(log_histogram_quantile(h, 0.0), 3.0 + std::ldexp(1.0, -9));
}

TEST(LogHistogram, MergeEqualsSequence) {
  torch::manual_seed(11);
  testing::expect_merge_equals_sequence_and_round_trips(
      [] { return make_observer("kl", QuantSpec(), {}); }, torch::randn({30000}) * 1e-3,
      torch::randn({30000}) * 1e3);
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
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"bins", 4096}}), "bins = 4096");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"smoothing", 2}}), "smoothing = 2");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"zero_bin_as_neighbour", 1.5}}),
                    "zero_bin_as_neighbour");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"update_interval", 0}}),
                    "update_interval = 0");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {{"percentile", 99.0}}),
                    "valid keywords: bins, update_interval, zero_bin_as_neighbour, smoothing, "
                    "skip_nonfinite");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {})->qparams(), "before any data");
  EXPECT_THROW_WITH(make_observer("kl", QuantSpec(), {})->update(torch::tensor({-INFINITY})),
                    "observer 'kl'");
}

}  // namespace
}  // namespace observers
}  // namespace calq
