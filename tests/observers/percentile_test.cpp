// percentile observer and the shared histogram machinery (histogram.h).

#include "calq/observers/percentile.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <iostream>

#include "calq/observers/histogram.h"
#include "calq/observers/registry.h"
#include "calq/quant/qparams.h"
#include "observers/histogram_kernels.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

using testing::value;

// Runs `body` once with each float binning kernel this CPU has, then restores the default.
template <typename Body>
void for_each_float_kernel(Body body) {
  using detail::FloatKernel;
  for (FloatKernel kernel : {FloatKernel::portable, FloatKernel::avx512}) {
    if (!detail::float_kernel_available(kernel)) {
      std::cout << "[   NOTE   ] this CPU has no AVX-512: only the portable binning kernel ran\n";
      continue;
    }
    const FloatKernel previous = detail::set_float_kernel(kernel);
    SCOPED_TRACE(kernel == FloatKernel::portable ? "portable kernel" : "avx512 kernel");
    body();
    detail::set_float_kernel(previous);
  }
}

AbsHistogram make_hist(std::vector<double> counts, double range, double max_abs) {
  AbsHistogram h;
  h.counts = torch::tensor(counts, torch::kDouble);
  h.range = range;
  h.max_abs = max_abs;
  return h;
}

TEST(Histogram, RangeIsNextPowerOfTwo) {
  EXPECT_EQ(histogram_range_for(0.0), 0.0);
  EXPECT_EQ(histogram_range_for(4.0), 4.0);
  EXPECT_EQ(histogram_range_for(4.5), 8.0);
  EXPECT_EQ(histogram_range_for(0.3), 0.5);
}

TEST(Histogram, RightClosedBinsByHand) {
  // range 4, 4 bins of width 1: (0,1] -> 0, (1,2] -> 1, ...; 0 -> bin 0; |x| is binned.
  at::Tensor counts = torch::zeros({4}, torch::kDouble);
  accumulate_abs_histogram(counts, 4.0,
                           torch::tensor({0.0f, 1.0f, 1.5f, -2.0f, 2.5f, 4.0f, -3.9f}));
  EXPECT_TRUE(at::equal(counts, torch::tensor({2.0, 2.0, 1.0, 2.0}, torch::kDouble)));
}

TEST(Histogram, KernelMatchesReferenceOverSizesAndBins) {
  for_each_float_kernel([] {
    torch::manual_seed(1);
    for (int64_t bins : {2, 7, 256, 2048}) {
      for (int64_t n : {1, 2, 5, 8, 9, 16, 20, 28, 32, 33, 100000}) {
        // Half the values exactly 0 (a ReLU's output) in the second variant.
        for (bool relu : {false, true}) {
          at::Tensor x = torch::randn({n}) * 3;
          if (relu) x = x.relu();
          const double range = histogram_range_for(x.abs().max().item<double>());
          at::Tensor fast = torch::zeros({bins}, torch::kDouble);
          at::Tensor ref = torch::zeros({bins}, torch::kDouble);
          accumulate_abs_histogram(fast, range, x);
          accumulate_abs_histogram_ref(ref, range, x);
          EXPECT_TRUE(at::equal(fast, ref)) << "bins " << bins << " n " << n << " relu " << relu;
          EXPECT_EQ(fast.sum().item<double>(), static_cast<double>(n));
        }
      }
    }
    // A range so small that bins / range overflows float32: the float64 path takes it, and
    // the one-pass form declines.
    {
      const at::Tensor tiny = torch::randn({1000}) * 1e-37;
      const double range = histogram_range_for(tiny.abs().max().item<double>());
      at::Tensor fast = torch::zeros({2048}, torch::kDouble);
      at::Tensor ref = torch::zeros({2048}, torch::kDouble);
      accumulate_abs_histogram(fast, range, tiny);
      accumulate_abs_histogram_ref(ref, range, tiny);
      EXPECT_TRUE(at::equal(fast, ref));
      float lo = 0, hi = 0;
      EXPECT_FALSE(accumulate_abs_histogram_in_range(fast, range, tiny, &lo, &hi));
    }
    // Values exactly on bin edges (powers of two times k are exact in float32).
    at::Tensor edges = torch::arange(0, 2049, torch::kFloat).repeat({3}) / 1024.0f;
    at::Tensor fast = torch::zeros({2048}, torch::kDouble);
    at::Tensor ref = torch::zeros({2048}, torch::kDouble);
    accumulate_abs_histogram(fast, 2.0, edges);
    accumulate_abs_histogram_ref(ref, 2.0, edges);
    EXPECT_TRUE(at::equal(fast, ref));
  });
}

TEST(Histogram, OnePassMatchesTwoPassesAtAnyThreadCount) {
  struct RestoreThreads {
    int threads = at::get_num_threads();
    ~RestoreThreads() { at::set_num_threads(threads); }
  } restore;
  for_each_float_kernel([] {
    torch::manual_seed(11);
    for (int t : {1, 2}) {
      at::set_num_threads(t);
      for (int64_t bins : {256, 2048}) {
        // Sizes around the 512-value staging block and the 32768-value parallel grain.
        for (int64_t n : {1, 7, 511, 512, 513, 4096, 40000, 100003}) {
          const at::Tensor x = torch::randn({n}) * 3;
          const double range = histogram_range_for(x.abs().max().item<double>());
          at::Tensor one_pass = torch::zeros({bins}, torch::kDouble);
          at::Tensor ref = torch::zeros({bins}, torch::kDouble);
          float lo = 0, hi = 0;
          ASSERT_TRUE(accumulate_abs_histogram_in_range(one_pass, range, x, &lo, &hi));
          accumulate_abs_histogram_ref(ref, range, x);
          EXPECT_TRUE(at::equal(one_pass, ref))
              << "bins " << bins << " n " << n << " threads " << t;
          EXPECT_EQ(lo, x.min().item<float>());
          EXPECT_EQ(hi, x.max().item<float>());
        }
      }
    }
  });
}

TEST(Histogram, OnePassDeclinesAndLeavesCountsUntouched) {
  for_each_float_kernel([] {
    torch::manual_seed(12);
    const at::Tensor base = torch::rand({1030}) * 2 - 1;  // |x| < 1: range 1 fits
    at::Tensor counts = torch::zeros({2048}, torch::kDouble);
    accumulate_abs_histogram(counts, 1.0, base);
    const at::Tensor before = counts.clone();
    float lo = 0, hi = 0;
    auto with = [&](int64_t at_index, float v) {
      at::Tensor x = base.clone();
      x[at_index] = v;
      return x;
    };
    // Bad values in the vector body (index 5) and in the scalar tail (index 1029).
    for (int64_t i : {5, 1029}) {
      for (float v : {NAN, INFINITY, -INFINITY, 1.5f, -3.0f}) {
        EXPECT_FALSE(accumulate_abs_histogram_in_range(counts, 1.0, with(i, v), &lo, &hi))
            << "value " << v << " at " << i;
        EXPECT_TRUE(at::equal(counts, before));
      }
    }
    EXPECT_FALSE(accumulate_abs_histogram_in_range(counts, 0.0, base * 0, &lo, &hi));  // no range
    EXPECT_FALSE(accumulate_abs_histogram_in_range(counts, 1.0, base.to(torch::kDouble), &lo, &hi));
    at::Tensor odd = torch::zeros({1000}, torch::kDouble);  // not a power of two
    EXPECT_FALSE(accumulate_abs_histogram_in_range(odd, 1.0, base, &lo, &hi));
    EXPECT_TRUE(at::equal(counts, before));
    // |x| == range exactly is in range (the last bin).
    EXPECT_TRUE(accumulate_abs_histogram_in_range(counts, 1.0, with(5, -1.0f), &lo, &hi));
    EXPECT_EQ(lo, -1.0f);
  });
}

TEST(Histogram, WideningEqualsDirectBinning) {
  torch::manual_seed(2);
  const at::Tensor small = torch::randn({5000}), large = torch::randn({5000}) * 37;
  for (int64_t bins : {2048, 1000, 3}) {
    const double r1 = histogram_range_for(small.abs().max().item<double>());
    const double r2 = histogram_range_for(large.abs().max().item<double>());
    at::Tensor grown = torch::zeros({bins}, torch::kDouble);
    accumulate_abs_histogram(grown, r1, small);
    grown = widen_histogram(grown, r1, r2);
    accumulate_abs_histogram(grown, r2, large);
    at::Tensor direct = torch::zeros({bins}, torch::kDouble);
    accumulate_abs_histogram_ref(direct, r2, torch::cat({small, large}));
    EXPECT_TRUE(at::equal(grown, direct)) << bins;
  }
  // Powers of two on the edges: 2.0 is in the last bin of range 2, and in bin 1 (of 4) after
  // doubling to 4, as direct binning puts it.
  at::Tensor c = torch::zeros({4}, torch::kDouble);
  accumulate_abs_histogram(c, 2.0, torch::tensor({2.0f}));
  EXPECT_TRUE(
      at::equal(widen_histogram(c, 2.0, 4.0), torch::tensor({0.0, 1.0, 0.0, 0.0}, torch::kDouble)));
  EXPECT_THROW_WITH(widen_histogram(c, 2.0, 3.0), "power of two");
}

TEST(Histogram, PercentileByHand) {
  // 10 values: counts 5, 3, 0, 2 over range 4 (width 1), max 3.5.
  const AbsHistogram h = make_hist({5, 3, 0, 2}, 4.0, 3.5);
  EXPECT_DOUBLE_EQ(percentile_threshold(h, 50), 0.5);  // 5 of 10 reached in bin 0
  EXPECT_DOUBLE_EQ(percentile_threshold(h, 51), 1.5);
  EXPECT_DOUBLE_EQ(percentile_threshold(h, 80), 1.5);     // 8 of 10 in bin 1
  EXPECT_DOUBLE_EQ(percentile_threshold(h, 80.01), 3.5);  // bin 3 centre 3.5 = max
  EXPECT_DOUBLE_EQ(percentile_threshold(h, 100), 3.5);
  // Clamped to max|x|: max 3.2 < bin centre 3.5.
  EXPECT_DOUBLE_EQ(percentile_threshold(make_hist({5, 3, 0, 2}, 4.0, 3.2), 100), 3.2);
  // 99.99 of 10000: the 9999th value; decimal percentiles are matched with tolerance.
  std::vector<double> counts(4, 0.0);
  counts[0] = 9999;
  counts[3] = 1;
  EXPECT_DOUBLE_EQ(percentile_threshold(make_hist(counts, 4.0, 4.0), 99.99), 0.5);
  EXPECT_THROW_WITH(percentile_threshold(h, 0.0), "percentile = 0");
  EXPECT_THROW_WITH(percentile_threshold(h, 100.5), "(0, 100]");
}

TEST(PercentileObserver, ThresholdOnKnownData) {
  // 1..1000 (step 1): range 1024, 1024 bins of width 1, value v in bin v - 1.
  Observer obs = make_observer("percentile", QuantSpec(), {{"percentile", 99.0}, {"bins", 1024}});
  obs->update(torch::arange(1, 1001, torch::kFloat));
  // 990 values (99%) are reached at value 990 -> bin 989, centre 989.5.
  EXPECT_DOUBLE_EQ(static_cast<PercentileObserverImpl&>(*obs).threshold(), 989.5);
  EXPECT_FLOAT_EQ(value(obs->qparams().first), 989.5f / 127.5f);
  auto r = obs->range();
  EXPECT_EQ(value(r.first), 1.0);  // data_min 1 > -989.5
  EXPECT_EQ(value(r.second), 989.5);
}

TEST(PercentileObserver, AccumulatesAcrossRangesAndMergesExactly) {
  torch::manual_seed(3);
  std::vector<at::Tensor> a_batches = {torch::randn({1000}), torch::randn({1000}) * 10};
  std::vector<at::Tensor> b_batches = {torch::randn({1000}) * 0.1, torch::randn({1000}) * 100};
  auto make = [] { return make_observer("percentile", QuantSpec(), {{"percentile", 99.9}}); };
  Observer a = make(), b = make(), seq = make();
  for (auto& x : a_batches) a->update(x), seq->update(x);
  for (auto& x : b_batches) b->update(x), seq->update(x);
  a->merge(*b);
  testing::expect_same_state(*a, *seq);
  // Counts were never lost: the histogram equals direct binning of everything.
  auto& h = static_cast<PercentileObserverImpl&>(*seq);
  const AbsHistogram hist = h.histogram();
  at::Tensor direct = torch::zeros({2048}, torch::kDouble);
  at::Tensor all = torch::cat({a_batches[0], a_batches[1], b_batches[0], b_batches[1]});
  accumulate_abs_histogram_ref(direct, hist.range, all);
  EXPECT_TRUE(at::equal(hist.counts, direct));
  // Threshold within one bin width of the exact quantile (docs/observers.md bound).
  const double exact = std::get<0>(all.abs().sort()).index({3996 - 1}).item<double>();
  EXPECT_LE(std::abs(h.threshold() - exact), hist.bin_width());
}

TEST(PercentileObserver, OnePassUpdatesLeaveTheGeneralPathState) {
  // Batch 1 sets the range (general path), 2 fits it (one pass), 3 widens it, 4 holds a NaN
  // (skipped), 5 is float64, 6 fits again. Merging single-batch observers (each takes the
  // general path only) must give the same state as the sequence.
  torch::manual_seed(13);
  at::Tensor with_nan = torch::randn({3000});
  with_nan[17] = NAN;
  const std::vector<at::Tensor> batches = {torch::randn({3000}),
                                           torch::randn({3000}) * 0.5,
                                           torch::randn({3000}) * 9,
                                           with_nan,
                                           torch::randn({3000}, torch::kDouble),
                                           torch::randn({3000})};
  auto make = [] {
    return make_observer("percentile", QuantSpec(),
                         {{"percentile", 99.0}, {"skip_nonfinite", true}});
  };
  // The one-pass path adds into the histogram buffer in place; the general path replaces its
  // storage. Which path each batch took shows in the buffer's data pointer.
  const std::vector<bool> one_pass = {false, true, false, false, false, true};
  Observer seq = make(), merged = make();
  for (size_t i = 0; i < batches.size(); ++i) {
    const void* before = i == 0 ? nullptr : seq->named_buffers()["histogram"].storage().data();
    seq->update(batches[i]);
    if (i > 0) {
      EXPECT_EQ(seq->named_buffers()["histogram"].storage().data() == before, one_pass[i])
          << "batch " << i + 1;
    }
    Observer single = make();
    single->update(batches[i]);
    merged->merge(*single);
  }
  testing::expect_same_state(*seq, *merged);
  EXPECT_EQ(seq->nonfinite_count(), 1);
  EXPECT_EQ(seq->batches_seen(), 6);
  // Every value as binned: float32 batches widened exactly, the float64 batch as it is.
  const at::Tensor finite_exact = torch::cat(
      {batches[0].to(torch::kDouble), batches[1].to(torch::kDouble), batches[2].to(torch::kDouble),
       with_nan.index({torch::isfinite(with_nan)}).to(torch::kDouble), batches[4],
       batches[5].to(torch::kDouble)});
  const at::Tensor finite = finite_exact.to(torch::kFloat);  // data_min / data_max are float32
  auto& h = static_cast<PercentileObserverImpl&>(*seq);
  at::Tensor direct = torch::zeros({2048}, torch::kDouble);
  accumulate_abs_histogram_ref(direct, h.histogram().range, finite_exact);
  EXPECT_TRUE(at::equal(h.histogram().counts, direct));
  auto r = seq->range();
  EXPECT_EQ(value(r.first), std::max(finite.min().item<double>(), -h.threshold()));
  EXPECT_EQ(value(r.second), std::min(finite.max().item<double>(), h.threshold()));
}

// Exact L2 error of fake-quantizing the data with the symmetric int8 grid of threshold t,
// written here from eq. 2 (independent of histogram_l2_error's bin model).
double data_l2_error(const at::Tensor& x, double t) {
  const double s = t / 127.5;
  const at::Tensor d = x.to(torch::kDouble);
  return (d - (d / s).round().clamp(-128, 127) * s).pow(2).sum().item<double>();
}

TEST(PercentileObserver, OtherRulesOnTheCollectedHistogram) {
  Observer obs = make_observer("percentile", QuantSpec(), {});
  const at::Tensor x = torch::arange(1, 1001, torch::kFloat);
  obs->update(x);
  const AbsHistogram h = static_cast<PercentileObserverImpl&>(*obs).histogram();
  // Same data, another percentile, without running the data again: width 1024/2048 = 0.5,
  // value v in bin 2v - 1; 500 values reached at v = 500 -> bin 999, centre 499.75.
  EXPECT_DOUBLE_EQ(percentile_threshold(h, 50), 499.75);
  // mse on the histogram against a brute force on the data: every candidate (1 - 0.01 i) max
  // scored by its exact error; the histogram's choice must be within 1 % of the best error
  // (the bin-uniform model is an approximation of the 1000 values).
  double best = INFINITY;
  for (int i = 0; i <= 94; ++i) best = std::min(best, data_l2_error(x, (1 - 0.01 * i) * 1000));
  EXPECT_LE(data_l2_error(x, mse_threshold(h, QuantSpec())), best * 1.01);
  // mix over {50, 99, 99.9}: exact quantiles 500, 990, 999; uniform data is best kept whole.
  const double t = mix_threshold(h, QuantSpec(), {50.0, 99.0, 99.9});
  EXPECT_NEAR(t, 999.0, h.bin_width());
}

TEST(PercentileObserver, SaveLoadRoundTripsBitForBit) {
  Observer obs = make_observer("percentile", QuantSpec(), {});
  obs->update(torch::randn({3000}));
  obs->update(torch::randn({3000}) * 5);
  Observer loaded = make_observer("percentile", QuantSpec(), {});
  testing::round_trip(obs, loaded);
  testing::expect_same_state(*obs, *loaded);
  const at::Tensor x = torch::randn({100}) * 20;
  obs->update(x);
  loaded->update(x);
  testing::expect_same_state(*obs, *loaded);
}

TEST(PercentileObserver, ZeroAndConstantData) {
  Observer obs = make_observer("percentile", QuantSpec(), {});
  obs->update(torch::zeros({100}));
  EXPECT_FLOAT_EQ(value(obs->qparams().first), static_cast<float>(kMinScale));
  obs->update(torch::full({100}, 2.0f));  // range grows from 0: zeros stay in bin 0
  EXPECT_EQ(static_cast<PercentileObserverImpl&>(*obs).histogram().counts[0].item<double>(), 100);
  // 99.99 % of 200 values is reached in the bin of 2.0: range 2, width 2/2048, 2.0 in bin 2047,
  // centre 2047.5 / 1024 (the rule's threshold, below 2 but above the smallest magnitude 0).
  EXPECT_DOUBLE_EQ(static_cast<PercentileObserverImpl&>(*obs).threshold(), 2047.5 / 1024);
  EXPECT_FLOAT_EQ(value(obs->qparams().first), static_cast<float>(2047.5 / 1024 / 127.5));
}

TEST(PercentileObserver, Errors) {
  EXPECT_THROW_WITH(make_observer("percentile", QuantSpec(), {{"percentile", 0.0}}),
                    "percentile = 0");
  EXPECT_THROW_WITH(make_observer("percentile", QuantSpec(), {{"percentile", 101.0}}),
                    "percentile = 101");
  EXPECT_THROW_WITH(make_observer("percentile", QuantSpec(), {{"bins", 1}}), "bins = 1");
  EXPECT_THROW_WITH(make_observer("percentile", QuantSpec().per_channel(true), {}),
                    "per-tensor only");
  Observer obs = make_observer("percentile", QuantSpec(), {});
  EXPECT_THROW_WITH(obs->qparams(), "before any data");
  EXPECT_THROW_WITH(obs->update(torch::tensor({NAN})), "observer 'percentile'");
}

}  // namespace
}  // namespace observers
}  // namespace calq
