// clip_std observer: range clamped to mean +- std_scale * std.

#include "calq/observers/clip_std.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/observers/registry.h"
#include "calq/quant/qparams.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

using testing::value;

TEST(ClipStdObserver, HandComputedBand) {
  // {-1, -1, 1, 1, 10}: mean 2, population variance (9+9+1+1+64)/5 = 16.8.
  Observer obs = make_observer("clip_std", QuantSpec(), {{"std_scale", 1.0}});
  obs->update(torch::tensor({-1.0f, -1.0f, 1.0f, 1.0f, 10.0f}));
  const double band = std::sqrt(16.8);
  EXPECT_FLOAT_EQ(value(obs->range().first), -1.0f);  // max(min, 2 - 4.1) = -1
  EXPECT_FLOAT_EQ(value(obs->range().second), static_cast<float>(2.0 + band));
  // Large std_scale: plain min/max.
  Observer wide = make_observer("clip_std", QuantSpec(), {{"std_scale", 100.0}});
  wide->update(torch::tensor({-1.0f, -1.0f, 1.0f, 1.0f, 10.0f}));
  EXPECT_EQ(value(wide->range().second), 10.0);
}

TEST(ClipStdObserver, PerChannelAndConstantData) {
  Observer obs = make_observer("clip_std", QuantSpec().per_channel(true), {{"std_scale", 0.0}});
  obs->update(torch::tensor({{3.0f, 3.0f}, {1.0f, 3.0f}}));
  // std_scale 0: range collapses to the channel mean.
  EXPECT_TRUE(at::equal(obs->range().first, torch::tensor({3.0f, 2.0f})));
  EXPECT_TRUE(at::equal(obs->range().second, torch::tensor({3.0f, 2.0f})));
  Observer zero = make_observer("clip_std", QuantSpec(), {});
  zero->update(torch::zeros({8}));
  EXPECT_FLOAT_EQ(value(zero->qparams().first), static_cast<float>(kMinScale));
}

TEST(ClipStdObserver, MergeAndRoundTrip) {
  torch::manual_seed(7);
  auto make = [] { return make_observer("clip_std", QuantSpec(), {{"averaging_constant", 0.2}}); };
  Observer a = make(), b = make(), seq = make();
  for (int i = 0; i < 3; ++i) {
    const at::Tensor x = torch::randn({100}) * (i + 1);
    a->update(x), seq->update(x);
  }
  for (int i = 0; i < 2; ++i) {
    const at::Tensor x = torch::randn({100});
    b->update(x), seq->update(x);
  }
  a->merge(*b);
  EXPECT_TRUE(at::allclose(a->range().first, seq->range().first, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(a->range().second, seq->range().second, 1e-5, 1e-6));
  Observer loaded = make();
  testing::round_trip(seq, loaded);
  testing::expect_same_state(*seq, *loaded);
}

TEST(ClipStd, MomentsMatchATenInDouble) {
  torch::manual_seed(13);
  for (int64_t n : {1, 2, 5, 8, 9, 16, 20, 28, 32, 33, 4097, 100000}) {
    // A large mean next to a small spread: the case where E[x^2] - E[x]^2 cancels.
    const at::Tensor x = torch::randn({3, n}) * 0.01 + torch::tensor({{1000.0f}, {0.0f}, {-3.0f}});
    at::Tensor mean, var, ref_var, ref_mean;
    std::tie(mean, var) = channel_mean_var(x);
    std::tie(ref_var, ref_mean) = at::var_mean(x.to(torch::kDouble), {1}, false);
    // Float32 lane sums of d = x - x[0] over at most 512 terms per lane: relative error about
    // 512 * 6e-8 = 3e-5 of the spread; 1e-3 relative on the variance is a loose bound.
    EXPECT_TRUE(at::allclose(mean, ref_mean, 1e-7, 1e-7)) << n;
    EXPECT_TRUE(at::allclose(var, ref_var, 1e-3, 1e-12)) << n << " " << var << ref_var;
  }
}

TEST(ClipStdObserver, Errors) {
  EXPECT_THROW_WITH(make_observer("clip_std", QuantSpec(), {{"std_scale", -0.5}}),
                    "std_scale = -0.5");
  EXPECT_THROW_WITH(make_observer("clip_std", QuantSpec(), {})->qparams(), "before any data");
}

}  // namespace
}  // namespace observers
}  // namespace calq
