#pragma once
// Training and evaluation loops of the workflow (float training, QAT, validation), with
// progress bars and resumable, atomically written checkpoints. They drive any module with a
// forward(Tensor) -> logits: zoo classifiers, imported graphs, users' models.

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "calq/data/fashion_mnist.h"
#include "calq/data/source.h"
#include "calq/zoo/models.h"

namespace calq {
namespace distributed {
class ProcessGroup;
}  // namespace distributed

namespace pipeline {

/// images [N, ...] -> logits [N, classes].
using Forward = std::function<at::Tensor(const at::Tensor&)>;

struct TrainOptions {
  /// Passes over the training set. Default 1.
  TORCH_ARG(int64_t, epochs) = 1;
  TORCH_ARG(int64_t, batch_size) = 128;
  /// Adam learning rate of the weights. Default 1e-3.
  TORCH_ARG(double, lr) = 1e-3;
  /// Adam learning rate of the quantizer parameters (lsq scales and log2 scales, pact
  /// alphas), which form their own parameter group without weight decay: Adam normalizes each
  /// parameter's step, which cancels LSQ's gradient scale, so a step of the weights' size
  /// moves a small per-channel scale by a large fraction of itself. <= 0: the weights' lr.
  /// Default 0.
  TORCH_ARG(double, quantizer_lr) = 0.0;
  /// Cosine decay of both learning rates to 0 over all steps (else constant). Default true.
  TORCH_ARG(bool, cosine) = true;
  /// The last N epochs run with batch norm frozen (folded Conv-BN blocks use, and stop
  /// updating, their running statistics: the deployed arithmetic). Default 0.
  TORCH_ARG(int64_t, freeze_bn_epochs) = 0;
  /// Seed of the shuffling (epoch e uses (seed, e)). Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// true: the model is prepared; train in state QAT (observers update, fake quant on) and
  /// project the quantizer parameters after every step. false: float training
  /// (model.train()). Default false.
  TORCH_ARG(bool, quantized) = false;
  /// Progress label, e.g. "float" or "qat lsq".
  TORCH_ARG(std::string, label) = "train";
  /// If non-empty, a checkpoint (model, optimizer, finished epochs) is written atomically
  /// after every epoch to this path.
  TORCH_ARG(std::string, checkpoint) = "";
  /// Continue from `checkpoint` if it exists (its epoch count must be < epochs).
  TORCH_ARG(bool, resume) = false;
  /// Called after every finished epoch (after its checkpoint was written) with the number of
  /// finished epochs; an exception thrown there stops training. Default: none.
  TORCH_ARG(std::function<void(int64_t finished_epochs)>, on_epoch_end) = nullptr;

  /// Data-parallel training on this process group (docs/distributed.md): every rank calls
  /// train with the same model, data, teacher and options. `batch_size` is then the global
  /// batch: rank r trains on the r-th contiguous part of every batch of the epoch's shuffled
  /// order (distributed::shard; data::SourceBatches::part) and reads only those rows, its mean
  /// loss weighted by its share of the rows, and the gradients are summed over the ranks, so
  /// a step equals one process's step on the whole batch up to float rounding (batch norm and
  /// observers see the global batch: distributed::DataParallel). Every rank holds the same
  /// parameters after every step; only rank 0 writes the checkpoint, and a resume reads it on
  /// rank 0 and broadcasts it. A last batch with fewer rows than ranks is skipped. Needs
  /// batch_size >= world size. Default: none (one process).
  TORCH_ARG(std::shared_ptr<distributed::ProcessGroup>, process_group) = nullptr;
  /// With a process group: the gradient bucket size in bytes
  /// (distributed::GradientReducerOptions). Default 4 MiB.
  TORCH_ARG(int64_t, bucket_bytes) = int64_t{4} << 20;
  /// With a process group: verify every N steps that all ranks hold bit-identical parameters
  /// and buffers (distributed::check_replicas; one small all-gather); it is always verified
  /// after every epoch. 0: after epochs only. Default 0.
  TORCH_ARG(int64_t, check_replicas_every) = 0;
};

struct TrainResult {
  int64_t first_epoch = 0;         ///< 0, or the epoch a resumed run started at
  int64_t epochs_run = 0;          ///< epochs trained by this call
  int64_t steps_run = 0;           ///< optimizer steps taken by this call
  double seconds_per_epoch = 0.0;  ///< mean wall time of the epochs trained by this call
  double final_loss = 0.0;         ///< mean training loss of the last epoch
};

/// Trains `model` (whose logits `forward` computes) with Adam: cross-entropy on the labels, or,
/// with a `teacher` (the float model: distillation, the default for data without labels), the
/// divergence from the teacher's outputs: KL(softmax(teacher) || softmax(student)) for 2-d
/// outputs (logits), mean squared error otherwise. Throws on empty data, data without labels
/// and no teacher, a non-finite loss (naming the epoch and step) or a checkpoint that does not
/// fit the model.
TrainResult train(torch::nn::Module& model, const Forward& forward, const data::SourcePtr& data,
                  const TrainOptions& options, const Forward* teacher = nullptr);
TrainResult train(torch::nn::Module& model, const Forward& forward, const data::Dataset& dataset,
                  const TrainOptions& options);
TrainResult train(zoo::ClassifierImpl& model, const data::Dataset& dataset,
                  const TrainOptions& options);

/// Top-1 accuracy (against the labels, or against a reference model's top-1: agreement) and
/// which images were right.
struct Evaluation {
  double top1 = 0.0;             ///< percent
  std::vector<uint8_t> correct;  ///< per image, in data order
  /// Against a reference: SQNR in dB of the outputs (10 log10 sum ref^2 / sum (out - ref)^2).
  double sqnr_db = 0.0;
};

/// Evaluates `model` on `data` (quantized: VALIDATION, else eval mode). Without `reference`
/// the labels decide (data without labels is an error); with it, agreement of top-1 with the
/// reference model (run in eval mode, float) and the output SQNR. With a process group every
/// rank calls it with the same model and data; rank r evaluates the r-th contiguous part of the
/// batches (distributed::shard) and every rank returns the whole result, bit for bit the one
/// process's (the same batches, their sums added in the same order).
Evaluation evaluate_each(torch::nn::Module& model, const Forward& forward,
                         const data::SourcePtr& data, bool quantized,
                         const Forward* reference = nullptr, int64_t batch_size = 512,
                         const std::string& label = "eval",
                         const std::shared_ptr<distributed::ProcessGroup>& group = nullptr);

/// Evaluates `model` on `dataset`. quantized: in state VALIDATION (fake quantization on,
/// scales frozen), else in eval mode. Throws on an empty dataset. With a process group: as
/// above.
Evaluation evaluate_each(torch::nn::Module& model, const Forward& forward,
                         const data::Dataset& dataset, bool quantized, int64_t batch_size = 512,
                         const std::string& label = "eval",
                         const std::shared_ptr<distributed::ProcessGroup>& group = nullptr);
Evaluation evaluate_each(zoo::ClassifierImpl& model, const data::Dataset& dataset, bool quantized,
                         int64_t batch_size = 512, const std::string& label = "eval",
                         const std::shared_ptr<distributed::ProcessGroup>& group = nullptr);
/// Top-1 accuracy in percent (evaluate_each(...).top1).
double evaluate(zoo::ClassifierImpl& model, const data::Dataset& dataset, bool quantized,
                int64_t batch_size = 512, const std::string& label = "eval",
                const std::shared_ptr<distributed::ProcessGroup>& group = nullptr);

/// Freezes (or unfreezes) batch norm in every folded Conv-BN block of `model`.
void freeze_batch_norm(torch::nn::Module& model, bool frozen = true);

}  // namespace pipeline
}  // namespace calq
