// clip observer: running min/max clamped to [xmin, xmax].

#include "calq/observers/clip.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "calq/observers/registry.h"
#include "observers/observer_test_util.h"

namespace calq {
namespace observers {
namespace {

using testing::value;

TEST(ClipObserver, ClampsAndKeepsLatestByDefault) {
  Observer obs = make_observer("clip", QuantSpec(), {{"xmin", -2.0}, {"xmax", 3.0}});
  obs->update(torch::tensor({-5.0f, 1.0f, 10.0f}));
  EXPECT_EQ(value(obs->range().first), -2.0);
  EXPECT_EQ(value(obs->range().second), 3.0);
  obs->update(torch::tensor({-1.0f, 0.5f}));  // averaging_constant 1: latest batch
  EXPECT_EQ(value(obs->range().first), -1.0);
  EXPECT_EQ(value(obs->range().second), 0.5);
  EXPECT_FLOAT_EQ(value(obs->qparams().first), 1.0f / 127.5f);
}

TEST(ClipObserver, DefaultsAndPerChannel) {
  Observer obs = make_observer("clip", QuantSpec().per_channel(true), {});
  EXPECT_EQ(obs->config()["averaging_constant"], 1.0);
  obs->update(torch::tensor({{-5.0f, 0.5f}, {0.25f, 0.75f}}));
  EXPECT_TRUE(at::equal(obs->range().first, torch::tensor({-1.0f, 0.25f})));
  EXPECT_TRUE(at::equal(obs->range().second, torch::tensor({0.5f, 0.75f})));
}

TEST(ClipObserver, MergeAndRoundTrip) {
  auto make = [] { return make_observer("clip", QuantSpec(), {{"averaging_constant", 0.5}}); };
  Observer a = make(), b = make(), seq = make();
  for (float m : {0.5f, 2.0f})
    a->update(torch::tensor({-m, m})), seq->update(torch::tensor({-m, m}));
  for (float m : {0.25f, 0.75f})
    b->update(torch::tensor({-m, m})), seq->update(torch::tensor({-m, m}));
  a->merge(*b);
  EXPECT_TRUE(at::allclose(a->range().second, seq->range().second, 1e-6, 1e-7));
  Observer loaded = make();
  testing::round_trip(seq, loaded);
  testing::expect_same_state(*seq, *loaded);
}

TEST(ClipObserver, Errors) {
  EXPECT_THROW_WITH(make_observer("clip", QuantSpec(), {{"xmin", 2.0}, {"xmax", 1.0}}),
                    "xmin <= xmax");
  EXPECT_THROW_WITH(make_observer("clip", QuantSpec(), {{"averaging_constant", 2.0}}),
                    "averaging_constant = 2");
  EXPECT_THROW_WITH(make_observer("clip", QuantSpec(), {})->update(torch::tensor({NAN})),
                    "observer 'clip'");
}

}  // namespace
}  // namespace observers
}  // namespace calq
