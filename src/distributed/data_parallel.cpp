#include "calq/distributed/data_parallel.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

#include "calq/distributed/observer_sync.h"
#include "calq/distributed/sync_batch_norm.h"
#include "calq/fake_quantize.h"
#include "calq/nn/conv.h"

namespace calq {
namespace distributed {
namespace {

bool is_batch_norm(const torch::nn::Module& m) {
  return dynamic_cast<const torch::nn::BatchNorm1dImpl*>(&m) != nullptr ||
         dynamic_cast<const torch::nn::BatchNorm2dImpl*>(&m) != nullptr ||
         dynamic_cast<const torch::nn::BatchNorm3dImpl*>(&m) != nullptr;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// 64-bit FNV-1a-style hash of a tensor's shape, dtype and bytes.
uint64_t hash_tensor(const at::Tensor& tensor) {
  const at::Tensor t = tensor.detach().contiguous();
  uint64_t h = 1469598103934665603ULL;
  auto mix = [&h](uint64_t v) {
    h ^= v;
    h *= 1099511628211ULL;
  };
  mix(static_cast<uint64_t>(t.scalar_type()));
  for (int64_t size : t.sizes()) mix(static_cast<uint64_t>(size));
  const auto* bytes = static_cast<const unsigned char*>(t.data_ptr());
  const size_t n = static_cast<size_t>(t.numel()) * t.element_size();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t word = 0;
    std::memcpy(&word, bytes + i, 8);
    mix(word);
  }
  for (; i < n; ++i) mix(bytes[i]);
  return h;
}

}  // namespace

std::string serialize_state(const torch::nn::Module& module) {
  torch::serialize::OutputArchive archive;
  module.save(archive);
  std::ostringstream out;
  archive.save_to(out);
  return out.str();
}

void deserialize_state(torch::nn::Module& module, const std::string& bytes) {
  torch::serialize::InputArchive archive;
  archive.load_from(bytes.data(), bytes.size());
  module.load(archive);
}

void broadcast_state(torch::nn::Module& module, ProcessGroup& group, int64_t root) {
  const std::string bytes =
      group.broadcast_bytes(group.rank() == root ? serialize_state(module) : std::string(), root);
  if (group.rank() != root) deserialize_state(module, bytes);
}

void check_replicas(const torch::nn::Module& module, ProcessGroup& group) {
  std::vector<std::string> names;
  std::vector<uint64_t> hashes;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    names.push_back(item.key());
    hashes.push_back(hash_tensor(item.value()));
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    names.push_back(item.key());
    hashes.push_back(hash_tensor(item.value()));
  }
  const std::string mine(reinterpret_cast<const char*>(hashes.data()),
                         hashes.size() * sizeof(uint64_t));
  const std::vector<std::string> all = group.all_gather_bytes(mine);
  for (size_t r = 0; r < all.size(); ++r) {
    TORCH_CHECK(all[r].size() == mine.size(), "check_replicas: rank ", r, " has ",
                all[r].size() / sizeof(uint64_t), " parameters and buffers, rank ", group.rank(),
                " has ", hashes.size());
    for (size_t i = 0; i < hashes.size(); ++i) {
      uint64_t theirs = 0;
      std::memcpy(&theirs, all[r].data() + i * sizeof(uint64_t), sizeof(uint64_t));
      TORCH_CHECK(theirs == hashes[i], "check_replicas: '", names[i], "' differs between rank ", r,
                  " and rank ", group.rank(),
                  "; the replicas of a data-parallel job must stay bit-identical");
    }
  }
}

DataParallel::DataParallel(torch::nn::Module& model, std::shared_ptr<ProcessGroup> group,
                           DataParallelOptions options)
    : model_(model), group_(std::move(group)) {
  TORCH_CHECK(group_, "DataParallel: the process group is null");
  std::set<const torch::nn::Module*> owned_batch_norms;
  for (const auto& item : model_.named_modules("", /*include_self=*/true)) {
    if (auto* block = dynamic_cast<nn::detail::ConvBlockImpl*>(item.value().get())) {
      if (block->has_bn()) {
        batch_norm_blocks_.push_back(block);
        owned_batch_norms.insert(block->bn.get());
      }
    }
  }
  for (const auto& item : model_.named_modules("", /*include_self=*/true)) {
    TORCH_CHECK(!is_batch_norm(*item.value()) || owned_batch_norms.count(item.value().get()) > 0,
                "DataParallel: '", item.key(),
                "' is a batch norm outside a calq::nn Conv-BN block; its statistics would differ "
                "between ranks. Build the model from calq::nn::ConvBn2d / ConvBnReLU2d blocks");
    if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(item.value().get())) {
      if (!ends_with(item.key(), "weight_fake_quant")) activation_quantizers_.push_back(fq);
    }
  }

  broadcast_state(model_, *group_);
  // Before the hooks: a constructor that throws leaves none behind.
  reducer_ = std::make_unique<GradientReducer>(
      model_.parameters(), group_,
      GradientReducerOptions().bucket_bytes(options.bucket_bytes()).overlap(options.overlap()));

  ProcessGroup* g = group_.get();
  for (auto* block : batch_norm_blocks_) {
    block->set_batch_norm_training(
        [g](const at::Tensor& input, torch::nn::BatchNorm2dImpl& bn, double momentum) {
          return sync_batch_norm(input, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                 momentum, bn.options.eps(), *g);
        });
  }
  for (auto* fq : activation_quantizers_) {
    fq->set_observer_input(
        [g, fq](const at::Tensor& x) { return global_observer_input(x, fq->observer(), *g); });
    if (fq->method() != FakeQuantMethod::lsq) continue;
    for (const auto& item : fq->named_parameters(/*recurse=*/false)) {
      if (item.key() != "scale" && item.key() != "log2_scale") continue;
      at::Tensor parameter = item.value();
      const unsigned handle = parameter.register_hook(
          [this](const at::Tensor& grad) { return grad * lsq_gradient_scale_; });
      lsq_scale_hooks_.emplace_back(parameter, handle);
    }
  }
}

void DataParallel::set_batch_share(int64_t local_rows, int64_t global_rows) {
  TORCH_CHECK(global_rows > 0 && local_rows >= 0 && local_rows <= global_rows,
              "DataParallel: invalid batch share ", local_rows, " of ", global_rows, " rows");
  lsq_gradient_scale_ =
      std::sqrt(static_cast<double>(local_rows) / static_cast<double>(global_rows));
}

DataParallel::~DataParallel() {
  for (auto& hook : lsq_scale_hooks_) hook.first.remove_hook(hook.second);
  for (auto* block : batch_norm_blocks_) block->set_batch_norm_training(nullptr);
  for (auto* fq : activation_quantizers_) fq->set_observer_input(nullptr);
}

}  // namespace distributed
}  // namespace calq
