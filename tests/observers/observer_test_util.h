#pragma once
// Helpers shared by the observer tests.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>
#include <string>

#include "calq/observers/observer.h"

namespace calq {
namespace testing {

/// Runs `statement` and expects a c10::Error whose message contains `needle`.
#define EXPECT_THROW_WITH(statement, needle)                                        \
  do {                                                                              \
    try {                                                                           \
      statement;                                                                    \
      ADD_FAILURE() << "expected an error containing '" << (needle) << "'";         \
    } catch (const c10::Error& e) {                                                 \
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what(); \
    }                                                                               \
  } while (0)

/// Saves `from` with torch::save and loads it into `to` (both modules of the same layout).
template <typename ModuleHolder>
void round_trip(const ModuleHolder& from, ModuleHolder& to) {
  std::stringstream stream;
  torch::save(from, stream);
  torch::load(to, stream);
}

/// Every buffer and parameter of a and b: same names, dtypes, shapes and bytes.
inline void expect_same_state(const torch::nn::Module& a, const torch::nn::Module& b) {
  auto ab = a.named_buffers();
  auto bb = b.named_buffers();
  ASSERT_EQ(ab.size(), bb.size());
  for (const auto& item : ab) {
    const at::Tensor* other = bb.find(item.key());
    ASSERT_NE(other, nullptr) << item.key();
    EXPECT_EQ(item.value().scalar_type(), other->scalar_type()) << item.key();
    EXPECT_TRUE(item.value().sizes().equals(other->sizes())) << item.key();
    EXPECT_TRUE(at::equal(item.value(), *other)) << item.key();
  }
  auto ap = a.named_parameters();
  auto bp = b.named_parameters();
  ASSERT_EQ(ap.size(), bp.size());
  for (const auto& item : ap) {
    const at::Tensor* other = bp.find(item.key());
    ASSERT_NE(other, nullptr) << item.key();
    EXPECT_TRUE(at::equal(item.value(), *other)) << item.key();
  }
}

/// The properties every mergeable observer has: observer a fed x1 merged with observer b fed
/// x2 equals one observer fed x1 then x2, bit for bit; and that state survives torch::save /
/// torch::load into a fresh observer. `make` builds a fresh observer of the kind under test.
template <typename Make>
void expect_merge_equals_sequence_and_round_trips(const Make& make, const at::Tensor& x1,
                                                  const at::Tensor& x2) {
  auto a = make(), b = make(), sequence = make();
  a->update(x1);
  sequence->update(x1);
  b->update(x2);
  sequence->update(x2);
  a->merge(*b);
  expect_same_state(*a, *sequence);
  auto loaded = make();
  round_trip(sequence, loaded);
  expect_same_state(*sequence, *loaded);
}

/// The first element of a one-element tensor as double.
inline double value(const at::Tensor& t) {
  return t.reshape({-1})[0].item<double>();
}

}  // namespace testing
}  // namespace calq
