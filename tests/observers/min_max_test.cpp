// min_max and the shared observer machinery: averaging rule, per-channel, merge, state
// round trip, robustness.

#include "calq/observers/min_max.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/observers/registry.h"
#include "calq/quant/qparams.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

using testing::value;

Observer make(double c, QuantSpec spec = QuantSpec()) {
  return make_observer("min_max", spec, {{"averaging_constant", c}});
}

TEST(MinMaxObserver, FirstBatchSetsThenAverages) {
  Observer obs = make(0.25);
  obs->update(torch::tensor({-2.0f, 1.0f, 4.0f}));
  auto r = obs->range();
  EXPECT_EQ(value(r.first), -2.0);
  EXPECT_EQ(value(r.second), 4.0);
  obs->update(torch::tensor({-6.0f, 0.0f}));
  r = obs->range();
  // v <- v + c (cur - v): min -2 + 0.25 * (-6 + 2) = -3; max 4 + 0.25 * (0 - 4) = 3.
  EXPECT_FLOAT_EQ(value(r.first), -3.0);
  EXPECT_FLOAT_EQ(value(r.second), 3.0);
  // Symmetric qint8: scale = max(|min|, |max|) / 127.5.
  EXPECT_FLOAT_EQ(value(obs->qparams().first), 3.0f / 127.5f);
  EXPECT_EQ(value(obs->qparams().second), 0);
  EXPECT_EQ(obs->batches_seen(), 2);
}

TEST(MinMaxObserver, ZeroFreezesOneKeepsLatest) {
  Observer frozen = make(0.0), latest = make(1.0);
  for (float m : {1.0f, 5.0f, 3.0f}) {
    frozen->update(torch::tensor({-m, m}));
    latest->update(torch::tensor({-m, m}));
  }
  EXPECT_EQ(value(frozen->range().second), 1.0);
  EXPECT_EQ(value(latest->range().second), 3.0);
}

TEST(MinMaxObserver, PerChannelAlongAxis) {
  QuantSpec spec = QuantSpec().per_channel(true).ch_axis(1);
  Observer obs = make(1.0, spec);
  // {2, 3}: channels are columns.
  obs->update(torch::tensor({{1.0f, -4.0f, 0.0f}, {-2.0f, 3.0f, 0.0f}}));
  auto r = obs->range();
  EXPECT_TRUE(at::equal(r.first, torch::tensor({-2.0f, -4.0f, 0.0f})));
  EXPECT_TRUE(at::equal(r.second, torch::tensor({1.0f, 3.0f, 0.0f})));
  auto q = obs->qparams();
  ASSERT_EQ(q.first.numel(), 3);
  // All-zero channel: finite, floored scale.
  EXPECT_FLOAT_EQ(q.first[2].item<float>(), static_cast<float>(kMinScale));
  EXPECT_THROW_WITH(obs->update(torch::ones({2, 4})), "channel count changed from 3 to 4");
}

TEST(MinMaxObserver, SmallTensorLoopAgreesWithTheReduction) {
  // Up to 2^16 float32 values the extremes come from a plain loop; float64 data always takes
  // at::aminmax. Both must give the same range, per tensor and per channel, and the loop must
  // see NaN and Inf wherever they are.
  torch::manual_seed(21);
  for (bool per_channel : {false, true}) {
    const QuantSpec spec = QuantSpec().per_channel(per_channel).ch_axis(0);
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{1}, {16, 3, 3, 3}, {64, 1024}}) {
      const at::Tensor x = torch::randn(shape) * 5;
      Observer loop = make(1.0, spec), reduction = make(1.0, spec);
      loop->update(x);
      reduction->update(x.to(torch::kDouble));
      EXPECT_TRUE(torch::equal(loop->range().first, reduction->range().first))
          << at::IntArrayRef(shape);
      EXPECT_TRUE(torch::equal(loop->range().second, reduction->range().second))
          << at::IntArrayRef(shape);
    }
  }
  const QuantSpec per_channel = QuantSpec().per_channel(true).ch_axis(0);
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    at::Tensor w = torch::randn({4, 9});
    w[2][8] = bad;
    Observer obs = make(1.0, per_channel);
    EXPECT_THROW_WITH(obs->update(w), "non-finite");
  }
}

TEST(MinMaxObserver, MergeEqualsSequentialFeeding) {
  torch::manual_seed(0);
  std::vector<at::Tensor> a_batches, b_batches;
  for (int i = 0; i < 3; ++i) a_batches.push_back(torch::randn({8, 5}) * (i + 1));
  for (int i = 0; i < 4; ++i) b_batches.push_back(torch::randn({8, 5}) * (3 - i % 2));
  const QuantSpec spec = QuantSpec().per_channel(true);
  for (double c : {0.0, 0.01, 0.3, 1.0}) {
    Observer a = make(c, spec), b = make(c, spec), seq = make(c, spec);
    for (auto& x : a_batches) a->update(x), seq->update(x);
    for (auto& x : b_batches) b->update(x), seq->update(x);
    a->merge(*b);
    EXPECT_EQ(a->batches_seen(), 7);
    if (c == 0.0 || c == 1.0) {
      EXPECT_TRUE(at::equal(a->range().first, seq->range().first)) << c;
      EXPECT_TRUE(at::equal(a->range().second, seq->range().second)) << c;
    } else {
      // Closed form vs recurrence: a few float32 roundings apart.
      EXPECT_TRUE(at::allclose(a->range().first, seq->range().first, 1e-5, 1e-6)) << c;
      EXPECT_TRUE(at::allclose(a->range().second, seq->range().second, 1e-5, 1e-6)) << c;
    }
  }
  // Merging into an empty observer copies; merging an empty one changes nothing.
  Observer empty = make(0.01), full = make(0.01);
  full->update(torch::tensor({1.0f, -3.0f}));
  empty->merge(*full);
  EXPECT_EQ(value(empty->range().first), -3.0);
  full->merge(*make(0.01));
  EXPECT_EQ(full->batches_seen(), 1);
  EXPECT_THROW_WITH(full->merge(*make(0.5)), "configurations differ");
  EXPECT_THROW_WITH(full->merge(*make_observer("clip", QuantSpec())), "kinds differ");
}

TEST(MinMaxObserver, SaveLoadRoundTripsBitForBit) {
  Observer obs = make(0.1, QuantSpec().per_channel(true));
  obs->update(torch::randn({4, 3}));
  obs->update(torch::randn({4, 3}) * 2);
  Observer loaded = make(0.1, QuantSpec().per_channel(true));
  testing::round_trip(obs, loaded);
  testing::expect_same_state(*obs, *loaded);
  EXPECT_TRUE(at::equal(obs->qparams().first, loaded->qparams().first));
  // The loaded state keeps working: same next step.
  const at::Tensor x = torch::randn({4, 3});
  obs->update(x);
  loaded->update(x);
  testing::expect_same_state(*obs, *loaded);
}

TEST(MinMaxObserver, Errors) {
  Observer obs = make(0.01);
  EXPECT_THROW_WITH(obs->qparams(), "before any data");
  EXPECT_THROW_WITH(obs->update(torch::tensor({1.0f, NAN})), "'min_max'");
  EXPECT_THROW_WITH(obs->update(torch::tensor({1.0f, INFINITY})), "non-finite");
  EXPECT_THROW_WITH(obs->update(torch::empty({0})), "empty tensor");
  EXPECT_THROW_WITH(obs->update(torch::tensor({1, 2})), "floating tensor");
  EXPECT_THROW_WITH(make(1.5), "averaging_constant = 1.5");
  EXPECT_THROW_WITH(make(-0.1), "averaging_constant");
  EXPECT_THROW_WITH(make_observer("min_max", QuantSpec(), {{"percentile", 99.0}}),
                    "valid keywords: averaging_constant, skip_nonfinite");
  EXPECT_THROW_WITH(
      make_observer("minmax", QuantSpec(), {}),
      "valid observers: min_max, fixed_scale, clip, percentile, clip_std, mse, kl, mix");
  EXPECT_THROW_WITH(make_observer("min_max", QuantSpec(), {{"averaging_constant", "x"}}),
                    "must be a number");
}

TEST(MinMaxObserver, SkipNonfiniteDropsAndCounts) {
  Observer obs = make_observer("min_max", QuantSpec(), {{"skip_nonfinite", true}});
  obs->update(torch::tensor({1.0f, NAN, -2.0f, INFINITY, -INFINITY}));
  EXPECT_EQ(obs->nonfinite_count(), 3);
  EXPECT_EQ(value(obs->range().first), -2.0);
  EXPECT_EQ(value(obs->range().second), 1.0);
  obs->update(torch::tensor({NAN}));  // nothing finite: not a batch
  EXPECT_EQ(obs->batches_seen(), 1);
  EXPECT_EQ(obs->nonfinite_count(), 4);
  EXPECT_THROW_WITH(
      make_observer("min_max", QuantSpec().per_channel(true), {{"skip_nonfinite", true}}),
      "per-tensor only");
}

TEST(MinMaxObserver, ConstantAndZeroDataGiveFiniteScale) {
  Observer zero = make(0.01), constant = make(0.01);
  zero->update(torch::zeros({10}));
  constant->update(torch::full({10}, -3.0f));
  EXPECT_FLOAT_EQ(value(zero->qparams().first), static_cast<float>(kMinScale));
  EXPECT_FLOAT_EQ(value(constant->qparams().first), 3.0f / 127.5f);
}

}  // namespace
}  // namespace observers
}  // namespace calq
