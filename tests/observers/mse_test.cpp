// mse observer: candidate search on data whose best range is known; kernel vs reference.

#include "calq/observers/mse.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/observers/histogram.h"
#include "calq/observers/registry.h"
#include "calq/quant/qparams.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

using testing::value;

TEST(MSE, KernelMatchesReferenceOverSizes) {
  torch::manual_seed(8);
  for (Rounding rounding : {Rounding::half_to_even, Rounding::half_up}) {
    const QuantSpec spec = QuantSpec(QuantDtype::qint4).rounding(rounding);
    for (int64_t n : {1, 2, 5, 8, 9, 16, 20, 28, 32, 33, 5000}) {
      // Values on exact grid ties (k + 0.5) * 0.25 exercise the rounding mode.
      const at::Tensor x = torch::cat(
          {torch::randn({2, n}), torch::arange(-8, 8).add(0.5).mul(0.25).expand({2, 16})}, 1);
      const at::Tensor scale = torch::tensor({{0.25f, 0.5f}, {0.1f, 0.3f}});
      const at::Tensor zp = torch::zeros({2, 2}, torch::kInt);
      const at::Tensor fast = mse_candidate_errors(x, scale, zp, spec);
      const at::Tensor ref = mse_candidate_errors_ref(x, scale, zp, spec);
      // Float32 arithmetic with lane-wise float sums vs float64 reference: each squared error
      // carries about 1e-7 relative error; sums over at most 5016 values stay within 1e-5.
      EXPECT_TRUE(at::allclose(fast, ref, 1e-5, 1e-9)) << n << "\n" << fast << ref;
    }
  }
}

TEST(MSEObserver, FindsTheKnownBestRange) {
  // 100000 values 0.0001 * k in [0, 10) plus one outlier at 100. The full range (scale
  // 100 / 127.5 = 0.78) rounds the bulk coarsely (about N s^2 / 12 = 5100); clipping near 50
  // halves the step (about 1300) at an outlier cost of about 50^2 = 2500: an interior
  // candidate wins. The answer is the brute-force argmin with the reference kernel.
  std::vector<float> v;
  for (int k = 0; k < 100000; ++k) v.push_back(0.0001f * k);
  v.push_back(100.0f);
  const at::Tensor x = torch::tensor(v);
  Observer obs = make_observer("mse", QuantSpec(), {{"averaging_constant", 1.0}});
  obs->update(x);
  double best_error = INFINITY, best_hi = 0;
  for (int i = 0; i <= 94; ++i) {
    const double f = 1.0 - 0.01 * i;
    auto q = compute_qparams(torch::tensor({0.0 * f}), torch::tensor({100.0 * f}), QuantSpec());
    const double e = mse_candidate_errors_ref(x.view({1, -1}), q.first.view({1, 1}),
                                              q.second.view({1, 1}), QuantSpec())
                         .item<double>();
    if (e < best_error) best_error = e, best_hi = 100.0 * f;
  }
  EXPECT_FLOAT_EQ(value(obs->range().second), static_cast<float>(best_hi));
  EXPECT_LT(best_hi, 100.0);  // the outlier is worth clipping
}

TEST(MSEObserver, AllZeroDataGivesTheFloorScale) {
  // All-zero data: every candidate is [0, 0] and the scale is the floor, never 0 or NaN.
  Observer obs = make_observer("mse", QuantSpec(), {{"averaging_constant", 1.0}});
  obs->update(torch::zeros({16}));
  EXPECT_EQ(value(obs->range().second), 0.0);
  EXPECT_FLOAT_EQ(value(obs->qparams().first), static_cast<float>(kMinScale));
}

TEST(MSEObserver, PerChannelStrideAndRoundTrip) {
  torch::manual_seed(9);
  Observer obs = make_observer("mse", QuantSpec().per_channel(true), {{"stride", 5}});
  const at::Tensor w = torch::randn({4, 64}) * torch::tensor({{1.0f}, {2.0f}, {0.1f}, {5.0f}});
  obs->update(w);
  const at::Tensor hi = obs->range().second;
  ASSERT_EQ(hi.numel(), 4);
  // Each channel's range is one of its candidates (1 - 0.05 j) * max.
  const at::Tensor ratio = hi / std::get<1>(at::aminmax(w, 1));
  for (int c = 0; c < 4; ++c) {
    const double j = (1.0 - ratio[c].item<double>()) / 0.05;
    EXPECT_NEAR(j, std::round(j), 1e-4) << c;
  }
  Observer loaded = make_observer("mse", QuantSpec().per_channel(true), {{"stride", 5}});
  testing::round_trip(obs, loaded);
  testing::expect_same_state(*obs, *loaded);
}

TEST(MSE, HistogramRuleIsTheArgminOverCandidates) {
  // Laplace-like data: the widest candidate wastes levels on a sparse tail, so a narrower
  // candidate wins; the rule must return exactly the brute-force argmin of
  // histogram_l2_error over (1 - 0.01 i) * max (first on ties).
  torch::manual_seed(12);
  const at::Tensor x = torch::randn({200000}) * torch::randn({200000}).abs();
  const double max_abs = x.abs().max().item<double>();
  const double range = histogram_range_for(max_abs);
  at::Tensor counts = torch::zeros({2048}, torch::kDouble);
  accumulate_abs_histogram(counts, range, x);
  AbsHistogram h;
  h.counts = counts;
  h.range = range;
  h.max_abs = max_abs;
  for (int64_t stride : {1, 7}) {
    double best = INFINITY, best_t = 0;
    for (int i = 0; i <= 94; i += stride) {
      const double t = (1.0 - 0.01 * i) * max_abs;
      const double e = histogram_l2_error(h, t, QuantSpec());
      if (e < best) best = e, best_t = t;
    }
    EXPECT_DOUBLE_EQ(mse_threshold(h, QuantSpec(), stride), best_t) << stride;
    EXPECT_LT(best_t, max_abs) << stride;
  }
  EXPECT_THROW_WITH(mse_threshold(h, QuantSpec(), 0), "stride = 0");
}

TEST(MSEObserver, Errors) {
  EXPECT_THROW_WITH(make_observer("mse", QuantSpec(), {{"stride", 0}}), "stride = 0");
  EXPECT_THROW_WITH(make_observer("mse", QuantSpec(), {{"stride", 95}}), "stride = 95");
  EXPECT_THROW_WITH(make_observer("mse", QuantSpec(), {{"stride", 1.5}}), "must be an integer");
  EXPECT_THROW_WITH(make_observer("mse", QuantSpec(), {})->update(torch::tensor({NAN})),
                    "observer 'mse'");
}

}  // namespace
}  // namespace observers
}  // namespace calq
