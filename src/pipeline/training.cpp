#include "calq/pipeline/training.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "calq/data/batches.h"
#include "calq/distributed/data_parallel.h"
#include "calq/distributed/process_group.h"
#include "calq/nn/conv.h"
#include "calq/util/atomic_file.h"
#include "calq/util/progress.h"
#include "calq/util/timer.h"
#include "calq/workflow.h"

namespace calq {
namespace pipeline {
namespace {

constexpr double kPi = 3.14159265358979323846;

void save_checkpoint(const std::string& path, torch::nn::Module& model,
                     torch::optim::Adam& optimizer, int64_t finished_epochs) {
  torch::serialize::OutputArchive archive, model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.write("finished_epochs", at::full({1}, finished_epochs, at::kLong));
  util::save_archive_atomic(archive, path);
}

// `bytes`: the checkpoint's contents (a distributed resume: read on rank 0, broadcast);
// empty: read `path`.
int64_t load_checkpoint(const std::string& path, torch::nn::Module& model,
                        torch::optim::Adam& optimizer, const std::string& bytes = "") {
  torch::serialize::InputArchive archive, model_archive, optimizer_archive;
  try {
    if (bytes.empty()) {
      archive.load_from(path);
    } else {
      archive.load_from(bytes.data(), bytes.size());
    }
    archive.read("model", model_archive);
    archive.read("optimizer", optimizer_archive);
    model.load(model_archive);
    optimizer.load(optimizer_archive);
    at::Tensor finished;
    archive.read("finished_epochs", finished);
    return finished.item<int64_t>();
  } catch (const c10::Error& error) {
    TORCH_CHECK(false, "cannot resume from checkpoint '", path, "': it does not match this ",
                "model or is corrupt (", error.what_without_backtrace(),
                "); delete it to start over");
  }
}

// Whether a parameter belongs to a quantizer (its own optimizer group).
bool is_quantizer_parameter(const std::string& name) {
  return name.find("fake_quant.") != std::string::npos;
}

void set_group_lrs(torch::optim::Adam& optimizer, double weight_lr, double quantizer_lr) {
  auto& groups = optimizer.param_groups();
  static_cast<torch::optim::AdamOptions&>(groups[0].options()).lr(weight_lr);
  if (groups.size() > 1)
    static_cast<torch::optim::AdamOptions&>(groups[1].options()).lr(quantizer_lr);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "cannot open checkpoint '", path, "' for reading");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}
}  // namespace

void freeze_batch_norm(torch::nn::Module& model, bool frozen) {
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    if (auto* block = dynamic_cast<nn::detail::ConvBlockImpl*>(item.value().get())) {
      if (block->has_bn() && block->fused()) block->freeze_bn(frozen);
    }
  }
}

TrainResult train(zoo::ClassifierImpl& model, const data::Dataset& dataset,
                  const TrainOptions& options) {
  return train(
      model, [&model](const at::Tensor& x) { return model.forward(x); }, dataset, options);
}

TrainResult train(torch::nn::Module& model, const Forward& forward, const data::Dataset& dataset,
                  const TrainOptions& options) {
  return train(model, forward, data::in_memory(dataset, nlohmann::json::object()), options);
}

namespace {

// The training loss of one batch: cross-entropy on the labels, or distillation from the
// teacher's outputs.
at::Tensor batch_loss(const at::Tensor& output, const data::Batch& batch, const Forward* teacher) {
  if (teacher == nullptr) return at::cross_entropy_loss(output, batch.labels);
  at::Tensor target;
  {
    torch::NoGradGuard no_grad;
    target = (*teacher)(batch.images).detach();
  }
  TORCH_CHECK(target.sizes() == output.sizes(), "train: the teacher's output ", target.sizes(),
              " and the model's ", output.sizes(), " differ; distillation needs the same shape");
  if (output.dim() == 2) {
    // KL(softmax(teacher) || softmax(student)), averaged over the batch.
    return at::kl_div(at::log_softmax(output, 1), at::log_softmax(target, 1), at::Reduction::Sum,
                      /*log_target=*/true) /
           static_cast<double>(output.size(0));
  }
  return at::mse_loss(output, target);
}

}  // namespace

TrainResult train(torch::nn::Module& model, const Forward& forward, const data::SourcePtr& data,
                  const TrainOptions& options, const Forward* teacher) {
  TORCH_CHECK(data && data->size() > 0, "train: the training set is empty");
  TORCH_CHECK(teacher != nullptr || data->has_labels(), "train: the data has no labels; give a ",
              "teacher (the float model) to train by distillation");
  const int64_t dataset_size = data->size();
  TORCH_CHECK(options.epochs() >= 1, "train: epochs must be >= 1, got ", options.epochs());
  TORCH_CHECK(options.batch_size() >= 1, "train: batch_size must be >= 1, got ",
              options.batch_size());
  TORCH_CHECK(std::isfinite(options.lr()) && options.lr() > 0, "train: lr must be finite and ",
              "> 0, got ", options.lr());
  const double quantizer_lr = options.quantizer_lr() > 0 ? options.quantizer_lr() : options.lr();
  TORCH_CHECK(std::isfinite(quantizer_lr), "train: quantizer_lr must be finite");
  // Two groups: weights, then quantizer parameters (no weight decay in either: Adam's default).
  std::vector<at::Tensor> weights, quantizer;
  for (const auto& p : model.named_parameters()) {
    (is_quantizer_parameter(p.key()) ? quantizer : weights).push_back(p.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(weights, std::make_unique<torch::optim::AdamOptions>(options.lr()));
  if (!quantizer.empty()) {
    groups.emplace_back(quantizer, std::make_unique<torch::optim::AdamOptions>(quantizer_lr));
  }
  torch::optim::Adam optimizer(groups, torch::optim::AdamOptions(options.lr()));

  const std::shared_ptr<distributed::ProcessGroup>& group = options.process_group();
  TORCH_CHECK(!group || options.batch_size() >= group->size(), "train: batch_size ",
              options.batch_size(), " is smaller than the ", group ? group->size() : 1,
              " ranks of the job; every rank needs at least one row of every batch");
  const bool writer = !group || group->rank() == 0;
  TrainResult result;
  if (options.resume() && !options.checkpoint().empty()) {
    if (!group) {
      if (std::filesystem::exists(options.checkpoint())) {
        result.first_epoch = load_checkpoint(options.checkpoint(), model, optimizer);
      }
    } else {
      // Rank 0 reads its checkpoint; every rank restores the same bytes.
      const std::string bytes = group->broadcast_bytes(
          writer && std::filesystem::exists(options.checkpoint()) ? read_file(options.checkpoint())
                                                                  : std::string());
      if (!bytes.empty()) {
        result.first_epoch = load_checkpoint(options.checkpoint(), model, optimizer, bytes);
      }
    }
    TORCH_CHECK(result.first_epoch <= options.epochs(), "cannot resume from '",
                options.checkpoint(), "': it finished ", result.first_epoch,
                " epochs, more than the ", options.epochs(), " asked for");
  }
  std::unique_ptr<distributed::DataParallel> parallel;
  if (group) {
    parallel = std::make_unique<distributed::DataParallel>(
        model, group, distributed::DataParallelOptions().bucket_bytes(options.bucket_bytes()));
  }
  const int64_t steps_per_epoch = (dataset_size + options.batch_size() - 1) / options.batch_size();
  const int64_t total_steps = steps_per_epoch * options.epochs();
  double seconds = 0.0;
  TORCH_CHECK(options.freeze_bn_epochs() >= 0 && options.freeze_bn_epochs() <= options.epochs(),
              "train: freeze_bn_epochs must lie in [0, epochs = ", options.epochs(), "], got ",
              options.freeze_bn_epochs());
  for (int64_t epoch = result.first_epoch; epoch < options.epochs(); ++epoch) {
    if (options.quantized()) {
      set_fake_quantize(model, FakeQuantState::QAT);
    } else {
      model.train(true);
    }
    freeze_batch_norm(model, epoch >= options.epochs() - options.freeze_bn_epochs());
    data::SourceBatches batches(data, data::BatchOptions(options.batch_size())
                                          .shuffle(true)
                                          .seed(options.seed())
                                          .epoch(static_cast<uint64_t>(epoch)));
    util::Progress progress(options.label() + " epoch " + std::to_string(epoch + 1) + "/" +
                                std::to_string(options.epochs()),
                            dataset_size, "img");
    util::Timer timer;
    double loss_sum = 0.0;
    int64_t step = 0;
    for (int64_t index = 0; index < batches.size(); ++index) {
      // With a process group, this rank's contiguous part of the global batch (the rows of
      // batch `index` one process would train on, in the same order).
      const int64_t global_rows = batches.rows(index);
      data::Batch batch;
      int64_t rows = global_rows;
      if (parallel) {
        if (global_rows < group->size()) continue;  // some rank would get no row
        const auto part = distributed::shard(global_rows, group->rank(), group->size());
        batch = batches.part(index, part.first, part.second);
        rows = part.second - part.first;
        parallel->set_batch_share(rows, global_rows);
      } else {
        batch = batches[index];
      }
      if (options.cosine()) {
        const double t = static_cast<double>(epoch * steps_per_epoch + step) / total_steps;
        const double decay = 0.5 * (1.0 + std::cos(kPi * t));
        set_group_lrs(optimizer, options.lr() * decay, quantizer_lr * decay);
      }
      optimizer.zero_grad();
      at::Tensor loss = batch_loss(forward(batch.images), batch, teacher);
      double value = 0.0;
      if (!parallel) {
        value = loss.item<double>();
        TORCH_CHECK(std::isfinite(value), options.label(), ": the training loss became ", value,
                    " at epoch ", epoch + 1, ", step ", step + 1,
                    "; lower the learning rate or check the data");
        loss.backward();
      } else {
        // The global batch's mean loss is the sum over ranks of each rank's mean loss weighted
        // by its share of the rows; so are its gradients (summed by the reducer).
        const at::Tensor weighted =
            loss * (static_cast<double>(rows) / static_cast<double>(global_rows));
        at::Tensor global_loss = weighted.detach().to(at::kDouble).reshape({1}).clone();
        auto pending = group->all_reduce_async({global_loss}, "training loss all-reduce");
        weighted.backward();
        parallel->finish_gradients();
        pending.wait();
        value = global_loss.item<double>();
        TORCH_CHECK(std::isfinite(value), options.label(), ": the training loss became ", value,
                    " at epoch ", epoch + 1, ", step ", step + 1, " (global batch over ",
                    group->size(), " ranks); lower the learning rate or check the data");
      }
      optimizer.step();
      if (options.quantized()) project_quantizer_parameters(model);
      loss_sum += value;
      ++step;
      progress.advance(global_rows);
      if (parallel && options.check_replicas_every() > 0 &&
          step % options.check_replicas_every() == 0) {
        distributed::check_replicas(model, *group);
      }
    }
    progress.finish();
    seconds += timer.seconds();
    result.final_loss = loss_sum / std::max<int64_t>(step, 1);
    result.steps_run += step;
    ++result.epochs_run;
    if (parallel) distributed::check_replicas(model, *group);
    if (!options.checkpoint().empty() && writer) {
      save_checkpoint(options.checkpoint(), model, optimizer, epoch + 1);
    }
    if (options.on_epoch_end()) options.on_epoch_end()(epoch + 1);
  }
  result.seconds_per_epoch = result.epochs_run > 0 ? seconds / result.epochs_run : 0.0;
  return result;
}

Evaluation evaluate_each(torch::nn::Module& model, const Forward& forward,
                         const data::SourcePtr& data, bool quantized, const Forward* reference,
                         int64_t batch_size, const std::string& label,
                         const std::shared_ptr<distributed::ProcessGroup>& group) {
  TORCH_CHECK(data && data->size() > 0, "evaluate: the evaluation set is empty");
  TORCH_CHECK(reference != nullptr || data->has_labels(),
              "evaluate: the data has no labels; compare with a reference model instead");
  if (quantized) {
    set_fake_quantize(model, FakeQuantState::VALIDATION);
  } else {
    model.eval();
  }
  torch::NoGradGuard no_grad;
  Evaluation result;
  result.correct.reserve(static_cast<size_t>(data->size()));
  // Per batch: the sums of squares of the reference's outputs and of the differences, added
  // in batch order at the end, so that a sharded evaluation adds the same numbers in the same
  // order as one process.
  std::vector<double> energies;
  util::Progress progress(label, data->size(), "img");
  const data::SourceBatches batches(data, data::BatchOptions(batch_size));
  const auto part = group ? distributed::shard(batches.size(), group->rank(), group->size())
                          : std::make_pair(int64_t{0}, batches.size());
  for (int64_t index = part.first; index < part.second; ++index) {
    const data::Batch batch = batches[index];
    const at::Tensor output = forward(batch.images);
    at::Tensor right;
    if (reference != nullptr) {
      const at::Tensor expected = (*reference)(batch.images);
      right = output.argmax(1).eq(expected.argmax(1)).to(at::kByte);
      energies.push_back(expected.to(at::kDouble).pow(2).sum().item<double>());
      energies.push_back((output - expected).to(at::kDouble).pow(2).sum().item<double>());
    } else {
      right = output.argmax(1).eq(batch.labels).to(at::kByte);
    }
    const uint8_t* p = right.contiguous().data_ptr<uint8_t>();
    result.correct.insert(result.correct.end(), p, p + right.numel());
    progress.advance(group ? batch.images.size(0) * group->size() : batch.images.size(0));
  }
  if (group) {  // every rank's part, in rank order: the whole data set in order
    const auto all =
        group->all_gather_bytes(std::string(result.correct.begin(), result.correct.end()));
    result.correct.clear();
    for (const auto& bytes : all)
      result.correct.insert(result.correct.end(), bytes.begin(), bytes.end());
    if (reference != nullptr) {
      const auto parts = group->all_gather_bytes(std::string(
          reinterpret_cast<const char*>(energies.data()), energies.size() * sizeof(double)));
      energies.clear();
      for (const auto& bytes : parts) {
        const auto* values = reinterpret_cast<const double*>(bytes.data());
        energies.insert(energies.end(), values, values + bytes.size() / sizeof(double));
      }
    }
  }
  progress.finish();
  int64_t correct = 0;
  for (uint8_t right : result.correct) correct += right;
  result.top1 = 100.0 * static_cast<double>(correct) / static_cast<double>(data->size());
  if (reference != nullptr) {
    double signal = 0.0, noise = 0.0;
    for (size_t i = 0; i + 1 < energies.size(); i += 2) {
      signal += energies[i];
      noise += energies[i + 1];
    }
    result.sqnr_db =
        noise > 0 ? 10.0 * std::log10(signal / noise) : std::numeric_limits<double>::infinity();
  }
  return result;
}

Evaluation evaluate_each(torch::nn::Module& model, const Forward& forward,
                         const data::Dataset& dataset, bool quantized, int64_t batch_size,
                         const std::string& label,
                         const std::shared_ptr<distributed::ProcessGroup>& group) {
  return evaluate_each(model, forward, data::in_memory(dataset, nlohmann::json::object()),
                       quantized, nullptr, batch_size, label, group);
}

Evaluation evaluate_each(zoo::ClassifierImpl& model, const data::Dataset& dataset, bool quantized,
                         int64_t batch_size, const std::string& label,
                         const std::shared_ptr<distributed::ProcessGroup>& group) {
  return evaluate_each(
      model, [&model](const at::Tensor& x) { return model.forward(x); }, dataset, quantized,
      batch_size, label, group);
}

double evaluate(zoo::ClassifierImpl& model, const data::Dataset& dataset, bool quantized,
                int64_t batch_size, const std::string& label,
                const std::shared_ptr<distributed::ProcessGroup>& group) {
  return evaluate_each(model, dataset, quantized, batch_size, label, group).top1;
}

}  // namespace pipeline
}  // namespace calq
