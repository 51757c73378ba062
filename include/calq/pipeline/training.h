#pragma once
// Training and evaluation loops of the workflow (float training, QAT, validation), with
// progress bars and resumable, atomically written checkpoints.

#include <torch/arg.h>

#include <cstdint>
#include <string>

#include "calq/data/fashion_mnist.h"
#include "calq/zoo/models.h"

namespace calq {
namespace pipeline {

struct TrainOptions {
  /// Passes over the training set. Default 1.
  TORCH_ARG(int64_t, epochs) = 1;
  TORCH_ARG(int64_t, batch_size) = 128;
  /// Adam learning rate. Default 1e-3.
  TORCH_ARG(double, lr) = 1e-3;
  /// Cosine decay of the learning rate to 0 over all steps (else constant). Default true.
  TORCH_ARG(bool, cosine) = true;
  /// Seed of the shuffling (epoch e uses (seed, e)). Default 0.
  TORCH_ARG(uint64_t, seed) = 0;
  /// true: the model is prepared; train in state QAT (observers update, fake quant on).
  /// false: float training (model.train()). Default false.
  TORCH_ARG(bool, quantized) = false;
  /// Progress label, e.g. "float" or "qat lsq".
  TORCH_ARG(std::string, label) = "train";
  /// If non-empty, a checkpoint (model, optimizer, finished epochs) is written atomically
  /// after every epoch to this path.
  TORCH_ARG(std::string, checkpoint) = "";
  /// Continue from `checkpoint` if it exists (its epoch count must be < epochs).
  TORCH_ARG(bool, resume) = false;
};

struct TrainResult {
  int64_t first_epoch = 0;         ///< 0, or the epoch a resumed run started at
  int64_t epochs_run = 0;          ///< epochs trained by this call
  double seconds_per_epoch = 0.0;  ///< mean wall time of the epochs trained by this call
  double final_loss = 0.0;         ///< mean training loss of the last epoch
};

/// Trains `model` with Adam and cross-entropy. Throws on an empty dataset, a non-finite loss
/// (naming the epoch and step) or a checkpoint that does not fit the model.
TrainResult train(zoo::ClassifierImpl& model, const data::Dataset& dataset,
                  const TrainOptions& options);

/// Top-1 accuracy in percent. quantized: evaluate in state VALIDATION (fake quantization on,
/// scales frozen), else in eval mode. Throws on an empty dataset.
double evaluate(zoo::ClassifierImpl& model, const data::Dataset& dataset, bool quantized,
                int64_t batch_size = 512, const std::string& label = "eval");

}  // namespace pipeline
}  // namespace calq
