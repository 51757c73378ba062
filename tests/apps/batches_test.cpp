// Batches, seeded shuffling and the calibration subset, on a synthetic dataset whose image i
// is filled with the value i (so a batch's images and labels can be checked to stay paired).

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "calq/data/batches.h"

using calq::data::Batches;
using calq::data::BatchOptions;

namespace {

calq::data::Dataset make_dataset(int64_t n) {
  calq::data::Dataset data;
  data.images = torch::arange(n, torch::kFloat32).view({n, 1, 1, 1}).expand({n, 1, 2, 2}).clone();
  data.labels = torch::arange(n, torch::kInt64);
  return data;
}

std::vector<int64_t> to_vector(const torch::Tensor& t) {
  const auto c = t.contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

// Every batch's images carry the same rows as its labels.
void expect_paired(const calq::data::Batch& batch) {
  ASSERT_EQ(batch.images.size(0), batch.labels.size(0));
  const auto firsts = batch.images.flatten(1).select(1, 0).to(torch::kInt64);
  EXPECT_TRUE(firsts.equal(batch.labels));
}

template <typename Fn>
void expect_error(Fn fn, const std::string& part) {
  try {
    fn();
    FAIL() << "expected an error containing '" << part << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find(part), std::string::npos)
        << e.what_without_backtrace();
  }
}

TEST(Batches, SequentialSizesAndContents) {
  const auto data = make_dataset(10);
  const Batches batches(data, BatchOptions(4));
  ASSERT_EQ(batches.size(), 3);
  EXPECT_EQ(batches.num_examples(), 10);
  std::vector<int64_t> seen;
  std::vector<int64_t> sizes;
  for (const auto& batch : batches) {
    expect_paired(batch);
    sizes.push_back(batch.size());
    for (int64_t v : to_vector(batch.labels)) seen.push_back(v);
  }
  EXPECT_EQ(sizes, (std::vector<int64_t>{4, 4, 2}));
  EXPECT_EQ(seen, to_vector(torch::arange(10, torch::kInt64)));
}

TEST(Batches, DropLast) {
  const auto data = make_dataset(10);
  const Batches batches(data, BatchOptions(4).drop_last(true));
  ASSERT_EQ(batches.size(), 2);
  EXPECT_EQ(batches.num_examples(), 8);
  EXPECT_EQ(batches[1].size(), 4);
  EXPECT_EQ(Batches(data, BatchOptions(5).drop_last(true)).size(), 2);
  EXPECT_EQ(Batches(data, BatchOptions(11).drop_last(true)).size(), 0);
  EXPECT_EQ(Batches(data, BatchOptions(11)).size(), 1);
}

TEST(Batches, ShuffleIsAPairedPermutation) {
  const auto data = make_dataset(103);
  const Batches batches(data, BatchOptions(16).shuffle(true).seed(7));
  std::set<int64_t> seen;
  for (const auto& batch : batches) {
    expect_paired(batch);
    for (int64_t v : to_vector(batch.labels)) seen.insert(v);
  }
  EXPECT_EQ(seen.size(), 103u);
  EXPECT_NE(to_vector(batches.order()), to_vector(torch::arange(103, torch::kInt64)));
}

TEST(Batches, ShuffleDeterminism) {
  const auto data = make_dataset(1000);
  const auto order = [&](uint64_t seed, uint64_t epoch) {
    return to_vector(Batches(data, BatchOptions(32).shuffle(true).seed(seed).epoch(epoch)).order());
  };
  EXPECT_EQ(order(1, 0), order(1, 0));
  EXPECT_EQ(order(1, 3), order(1, 3));
  EXPECT_NE(order(1, 0), order(2, 0));
  EXPECT_NE(order(1, 0), order(1, 1));
  EXPECT_NE(order(1, 1), order(2, 0));
}

TEST(Batches, ShuffledIndicesArePinned) {
  // std::mt19937_64 is fully specified by the standard and the shuffle avoids the library's
  // distributions, so this order is the same with every compiler and standard library.
  EXPECT_EQ(to_vector(calq::data::shuffled_indices(10, 42, 0)),
            (std::vector<int64_t>{2, 0, 4, 7, 8, 3, 5, 1, 9, 6}));
  EXPECT_EQ(calq::data::shuffled_indices(0, 1).numel(), 0);
  EXPECT_EQ(to_vector(calq::data::shuffled_indices(1, 1)), std::vector<int64_t>{0});
}

TEST(Batches, ShuffleIsRoughlyUniform) {
  // Position of element 0 over 4000 shuffles of 4: each of the 4 places expects 1000; a
  // fair shuffle stays within +-150 (about 5.5 standard deviations of 27.4).
  std::vector<int> counts(4, 0);
  for (uint64_t seed = 0; seed < 4000; ++seed) {
    const auto order = to_vector(calq::data::shuffled_indices(4, seed));
    for (int p = 0; p < 4; ++p) counts[p] += order[p] == 0;
  }
  for (int p = 0; p < 4; ++p) EXPECT_NEAR(counts[p], 1000, 150) << "position " << p;
}

TEST(Batches, Errors) {
  const auto data = make_dataset(10);
  expect_error([&] { Batches(data, BatchOptions(0)); }, "batch_size must be >= 1, got 0");
  const Batches batches(data, BatchOptions(4));
  expect_error([&] { batches[3]; }, "batch index 3 out of range [0, 3)");
  calq::data::Dataset bad = data;
  bad.labels = bad.labels.narrow(0, 0, 9);
  expect_error([&] { Batches(bad, BatchOptions(4)); }, "must have the same number of rows");
}

TEST(CalibrationSubset, DeterministicDistinctBatches) {
  const auto data = make_dataset(1000);
  const auto a = calq::data::calibration_subset(data, 5, 64, 3);
  const auto b = calq::data::calibration_subset(data, 5, 64, 3);
  const auto c = calq::data::calibration_subset(data, 5, 64, 4);
  ASSERT_EQ(a.size(), 5u);
  std::set<int64_t> seen;
  for (size_t i = 0; i < a.size(); ++i) {
    expect_paired(a[i]);
    ASSERT_EQ(a[i].size(), 64);
    EXPECT_TRUE(a[i].images.equal(b[i].images));
    EXPECT_TRUE(a[i].labels.equal(b[i].labels));
    for (int64_t v : to_vector(a[i].labels)) seen.insert(v);
  }
  EXPECT_EQ(seen.size(), 5u * 64u);  // no example drawn twice
  EXPECT_FALSE(a[0].labels.equal(c[0].labels));
  // Not the first training batch of the same seed.
  const Batches train(data, BatchOptions(64).shuffle(true).seed(3));
  EXPECT_FALSE(a[0].labels.equal(train[0].labels));
  // A prefix of a longer subset with the same seed.
  const auto longer = calq::data::calibration_subset(data, 8, 64, 3);
  EXPECT_TRUE(longer[4].labels.equal(a[4].labels));
}

TEST(CalibrationSubset, Errors) {
  const auto data = make_dataset(100);
  expect_error([&] { calq::data::calibration_subset(data, 4, 32, 0); },
               "the dataset holds only 100; use at most 3 batches of 32");
  expect_error([&] { calq::data::calibration_subset(data, 0, 32, 0); },
               "num_batches >= 1 and batch_size >= 1");
}

}  // namespace
