#include "calq/data/source.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <filesystem>

#include "calq/data/arrays.h"

namespace calq {
namespace data {
namespace {

// The same salts as batches.cpp: a source's split and calibration subset are the in-memory
// data set's.
constexpr uint64_t kHoldOutSalt = 0x401d0070e0000000ULL;
constexpr uint64_t kCalibrationSalt = 0xca11b4a7e0000000ULL;

void check_indices(const std::vector<int64_t>& indices, int64_t size, const char* what) {
  for (int64_t i : indices) {
    TORCH_CHECK(i >= 0 && i < size, what, ": example index ", i, " is out of range [0, ", size,
                ")");
  }
}

// Calls read(start, count) for each run of consecutive indices and concatenates in order.
at::Tensor read_runs(const std::vector<int64_t>& indices,
                     const std::function<at::Tensor(int64_t, int64_t)>& read) {
  std::vector<at::Tensor> parts;
  size_t i = 0;
  while (i < indices.size()) {
    size_t j = i + 1;
    while (j < indices.size() && indices[j] == indices[j - 1] + 1) ++j;
    parts.push_back(read(indices[i], static_cast<int64_t>(j - i)));
    i = j;
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 0);
}

class InMemory : public Source {
 public:
  InMemory(Dataset dataset, nlohmann::json description)
      : dataset_(std::move(dataset)), description_(std::move(description)) {}
  // Counted by the images: a data set without labels (distillation) has examples too.
  int64_t size() const override { return dataset_.images.defined() ? dataset_.images.size(0) : 0; }
  std::vector<int64_t> example_shape() const override {
    return dataset_.images.sizes().slice(1).vec();
  }
  bool has_labels() const override { return dataset_.labels.defined(); }
  Batch gather(const std::vector<int64_t>& indices) const override {
    check_indices(indices, size(), "data set");
    const at::Tensor idx = at::tensor(indices, at::kLong);
    return {dataset_.images.index_select(0, idx),
            has_labels() ? dataset_.labels.index_select(0, idx) : at::Tensor()};
  }
  nlohmann::json describe() const override { return description_; }

 private:
  Dataset dataset_;
  nlohmann::json description_;
};

class Subset : public Source {
 public:
  Subset(SourcePtr source, std::vector<int64_t> indices)
      : source_(std::move(source)), indices_(std::move(indices)) {
    check_indices(indices_, source_->size(), "subset");
  }
  int64_t size() const override { return static_cast<int64_t>(indices_.size()); }
  std::vector<int64_t> example_shape() const override { return source_->example_shape(); }
  bool has_labels() const override { return source_->has_labels(); }
  Batch gather(const std::vector<int64_t>& indices) const override {
    check_indices(indices, size(), "subset");
    std::vector<int64_t> mapped;
    mapped.reserve(indices.size());
    for (int64_t i : indices) mapped.push_back(indices_[i]);
    return source_->gather(mapped);
  }
  nlohmann::json describe() const override { return source_->describe(); }

 private:
  SourcePtr source_;
  std::vector<int64_t> indices_;
};

class NpzSource : public Source {
 public:
  explicit NpzSource(const std::string& path) : path_(path), data_(NpzDataset::open(path)) {}
  int64_t size() const override { return data_.size(); }
  std::vector<int64_t> example_shape() const override { return data_.example_shape(); }
  bool has_labels() const override { return data_.has_labels(); }
  Batch gather(const std::vector<int64_t>& indices) const override {
    check_indices(indices, size(), path_.c_str());
    Batch b;
    b.images = read_runs(indices, [&](int64_t s, int64_t n) { return data_.inputs(s, n); });
    if (has_labels()) {
      b.labels = read_runs(indices, [&](int64_t s, int64_t n) { return data_.labels(s, n); });
    }
    return b;
  }
  nlohmann::json describe() const override {
    return {{"file", path_}, {"format", "npz"}, {"labels", has_labels()}};
  }

 private:
  std::string path_;
  NpzDataset data_;
};

class NpySource : public Source {
 public:
  explicit NpySource(const std::string& path) : path_(path), array_(NpyArray::open(path)) {
    TORCH_CHECK(array_.shape().size() >= 2, "'", path, "' holds an array of shape ",
                c10::IntArrayRef(array_.shape()),
                "; inputs need one example per row (at least 2 dimensions)");
  }
  int64_t size() const override { return array_.size(); }
  std::vector<int64_t> example_shape() const override {
    return std::vector<int64_t>(array_.shape().begin() + 1, array_.shape().end());
  }
  bool has_labels() const override { return false; }
  Batch gather(const std::vector<int64_t>& indices) const override {
    check_indices(indices, size(), path_.c_str());
    Batch b;
    b.images = read_runs(indices, [&](int64_t s, int64_t n) { return array_.rows(s, n); });
    return b;
  }
  nlohmann::json describe() const override {
    return {{"file", path_}, {"format", "npy"}, {"labels", false}};
  }

 private:
  std::string path_;
  NpyArray array_;
};

class ImageSource : public Source {
 public:
  ImageSource(const std::string& path, const ImageOptions& options)
      : path_(path), folder_(path, options) {}
  int64_t size() const override { return folder_.size(); }
  std::vector<int64_t> example_shape() const override {
    const auto& size = folder_.options().size();
    return {folder_.options().channels(), size[0], size[1]};
  }
  bool has_labels() const override { return folder_.has_labels(); }
  Batch gather(const std::vector<int64_t>& indices) const override {
    check_indices(indices, size(), path_.c_str());
    Batch b;
    b.images = read_runs(indices, [&](int64_t s, int64_t n) { return folder_.images(s, n); });
    if (has_labels()) {
      b.labels = read_runs(indices, [&](int64_t s, int64_t n) { return folder_.labels(s, n); });
    }
    return b;
  }
  nlohmann::json describe() const override {
    const ImageOptions& o = folder_.options();
    return {{"folder", path_},
            {"format", "images"},
            {"labels", has_labels()},
            {"classes", folder_.classes()},
            {"size", o.size()},
            {"channels", o.channels()},
            {"order", o.order()},
            {"mean", o.mean()},
            {"std", o.std()},
            {"layout", "NCHW"},
            {"resize", "bilinear, half-pixel centres"}};
  }

 private:
  std::string path_;
  ImageFolder folder_;
};

std::vector<int64_t> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

SourcePtr in_memory(Dataset dataset, nlohmann::json description) {
  return std::make_shared<InMemory>(std::move(dataset), std::move(description));
}

SourcePtr subset(SourcePtr source, std::vector<int64_t> indices) {
  return std::make_shared<Subset>(std::move(source), std::move(indices));
}

SourcePtr open_source(const std::string& path, const ImageOptions& images) {
  TORCH_CHECK(std::filesystem::exists(path), "--data: '", path, "' does not exist");
  if (std::filesystem::is_directory(path)) return std::make_shared<ImageSource>(path, images);
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".npz") return std::make_shared<NpzSource>(path);
  if (ext == ".npy") return std::make_shared<NpySource>(path);
  TORCH_CHECK(false, "--data: '", path, "' is neither a .npz file (arrays x, y), a .npy file ",
              "(inputs) nor a folder of PNG / JPEG images");
}

std::pair<SourcePtr, SourcePtr> hold_out(SourcePtr source, int64_t held_out_size, uint64_t seed) {
  const int64_t n = source->size();
  TORCH_CHECK(held_out_size >= 1 && held_out_size < n, "hold_out: cannot hold out ", held_out_size,
              " of ", n,
              " examples; the held-out part and the rest must both be "
              "non-empty");
  const at::Tensor order = shuffled_indices(n, seed, kHoldOutSalt);
  const at::Tensor chosen = std::get<0>(order.narrow(0, 0, held_out_size).sort());
  at::Tensor mask = at::ones({n}, at::kBool);
  mask.index_fill_(0, chosen, false);
  const at::Tensor rest = mask.nonzero().reshape({-1});
  return {subset(source, to_vector(rest)), subset(source, to_vector(chosen))};
}

SourceBatches::SourceBatches(SourcePtr source, const BatchOptions& options)
    : source_(std::move(source)) {
  TORCH_CHECK(options.batch_size() >= 1, "batch_size must be >= 1, got ", options.batch_size());
  const int64_t n = source_->size();
  const at::Tensor order = options.shuffle() ? shuffled_indices(n, options.seed(), options.epoch())
                                             : at::arange(n, at::kLong);
  const std::vector<int64_t> all = to_vector(order);
  const int64_t b = options.batch_size();
  for (int64_t start = 0; start < n; start += b) {
    if (options.drop_last() && start + b > n) break;
    chunks_.emplace_back(all.begin() + start, all.begin() + std::min(n, start + b));
  }
}

Batch SourceBatches::operator[](int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "batch index ", i, " out of range [0, ", size(), ")");
  return source_->gather(chunks_[i]);
}

int64_t SourceBatches::rows(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "batch index ", i, " out of range [0, ", size(), ")");
  return static_cast<int64_t>(chunks_[i].size());
}

Batch SourceBatches::part(int64_t i, int64_t begin, int64_t end) const {
  const int64_t n = rows(i);
  TORCH_CHECK(begin >= 0 && begin <= end && end <= n, "rows [", begin, ", ", end, ") of batch ", i,
              " are not within its ", n, " rows");
  return source_->gather(
      std::vector<int64_t>(chunks_[i].begin() + begin, chunks_[i].begin() + end));
}

SourceBatches SourceBatches::calibration(SourcePtr source, int64_t num_batches, int64_t batch_size,
                                         uint64_t seed) {
  TORCH_CHECK(num_batches >= 1 && batch_size >= 1,
              "calibration needs num_batches >= 1 and batch_size >= 1, got num_batches=",
              num_batches, " batch_size=", batch_size);
  TORCH_CHECK(num_batches * batch_size <= source->size(), "calibration asks for ", num_batches,
              " batches of ", batch_size, " = ", num_batches * batch_size,
              " examples but the data holds only ", source->size(), "; use at most ",
              source->size() / batch_size, " batches of ", batch_size);
  const std::vector<int64_t> order =
      to_vector(shuffled_indices(source->size(), seed, kCalibrationSalt));
  std::vector<std::vector<int64_t>> chunks;
  for (int64_t i = 0; i < num_batches; ++i) {
    chunks.emplace_back(order.begin() + i * batch_size, order.begin() + (i + 1) * batch_size);
  }
  return SourceBatches(std::move(source), std::move(chunks));
}

}  // namespace data
}  // namespace calq
