// fixed_scale observer: the given scale, data ignored.

#include "calq/observers/fixed_scale.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/observers/registry.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

using testing::value;

TEST(FixedScaleObserver, ReturnsTheScaleWithOrWithoutData) {
  Observer obs = make_observer("fixed_scale", QuantSpec(), {{"scale", 0.3}});
  EXPECT_FLOAT_EQ(value(obs->qparams().first), 0.3f);  // the user's scale, data ignored
  obs->update(torch::tensor({100.0f}));
  EXPECT_FLOAT_EQ(value(obs->qparams().first), 0.3f);
  EXPECT_EQ(value(obs->qparams().second), 0);
  EXPECT_FLOAT_EQ(value(obs->range().second), 0.3f * 127.5f);
  // On a power-of-two grid (bernoulli) the scale is rounded up like every other scale.
  Observer pow2 = make_observer("fixed_scale", QuantSpec().power_of_two(true), {{"scale", 0.3}});
  EXPECT_EQ(value(pow2->qparams().first), 0.5);
  EXPECT_FLOAT_EQ(value(pow2->range().second), 0.5f * 127.5f);
  EXPECT_FLOAT_EQ(value(make_observer("fixed_scale", QuantSpec(), {})->qparams().first), 1.0f);
}

TEST(FixedScaleObserver, Errors) {
  EXPECT_THROW_WITH(make_observer("fixed_scale", QuantSpec(), {{"scale", 0.0}}), "scale = 0");
  EXPECT_THROW_WITH(make_observer("fixed_scale", QuantSpec(), {{"scale", -1.0}}), "scale = -1");
  EXPECT_THROW_WITH(make_observer("fixed_scale", QuantSpec().per_channel(true), {}),
                    "per-tensor only");
  EXPECT_THROW_WITH(make_observer("fixed_scale", QuantSpec(), {})->update(torch::tensor({NAN})),
                    "observer 'fixed_scale'");
}

TEST(FixedScaleObserver, RoundTrip) {
  Observer obs = make_observer("fixed_scale", QuantSpec(), {{"scale", 0.5}});
  obs->update(torch::ones({3}));
  Observer loaded = make_observer("fixed_scale", QuantSpec(), {{"scale", 0.5}});
  testing::round_trip(obs, loaded);
  testing::expect_same_state(*obs, *loaded);
}

}  // namespace
}  // namespace observers
}  // namespace calq
