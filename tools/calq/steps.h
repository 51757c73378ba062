#pragma once
// The workflow steps the subcommands share: data, float model, calibration, QAT, checkpoints.

#include <nlohmann/json.hpp>

#include <string>

#include "calq/data/fashion_mnist.h"
#include "calq/distributed/process_group.h"
#include "calq/pipeline/training.h"
#include "calq/qconfig.h"
#include "calq/workflow.h"
#include "calq/zoo/models.h"
#include "config.h"

namespace calq {
namespace cli {

struct Workspace {
  RunConfig config;
  data::Dataset train;       ///< training images minus the validation split
  data::Dataset validation;  ///< --val-size training images held out for every choice
  data::Dataset test;
  /// The job this process is a rank of (started by --nproc or an external launcher), else
  /// null. Every rank runs the same steps; training, calibration and evaluation are shared
  /// between the ranks; only rank 0 writes files and prints results.
  std::shared_ptr<distributed::ProcessGroup> group;

  /// Whether this process writes files and prints results (rank 0, or the only process).
  bool writer() const;
  /// Waits until every rank got here (after rank 0 wrote files other ranks read); no-op in
  /// one process.
  void sync() const;
};

/// Reads the data set (limits applied), holds out the validation split, joins the job when a
/// launcher started this process (threads: --threads, or the cores divided among the local
/// ranks), and sets the thread count.
Workspace open_workspace(const RunConfig& config);

/// Steps 3-4: calibrate `model` on `batches`, sharded over the ranks of ws.group when there is
/// one (distributed::calibrate), else in this process (calq::calibrate).
void calibrate_model(const Workspace& ws, zoo::Classifier& model,
                     const std::vector<at::Tensor>& batches);

/// The calibration recipe: fake_quant everywhere, `observer` on activations, min_max on
/// weights, dtypes from --bits.
QConfig calibration_qconfig(const RunConfig& config, const std::string& observer);
/// The QAT recipe of `method`: activations `method` with --qat-observer; weights lsq for lsq,
/// else fake_quant; min_max weight observer.
QConfig qat_qconfig(const RunConfig& config, const std::string& method);

/// Where an interrupted QAT of `name` resumes from (removed once it finished).
std::string qat_resume_checkpoint(const RunConfig& config, const std::string& name);
/// Steps 9-10 for `name`: --qat-epochs of Adam in state QAT (weights at --qat-lr, quantizer
/// parameters at --qat-scale-lr, --qat-schedule, the last --qat-freeze-bn-epochs with batch
/// norm frozen), with a resumable checkpoint.
pipeline::TrainOptions qat_train_options(const RunConfig& config, const std::string& name);

/// A model as saved by calq: parameters in `path`, how to rebuild it in `path`.json.
struct ModelMeta {
  std::string model;
  bool prepared = false;
  QConfig qconfig;  ///< global recipe (prepared models)
  std::string march = "bayes";
  nlohmann::json to_json() const;
  static ModelMeta from_json(const nlohmann::json& j);
};

/// Builds the model of `meta` (fused and prepared when meta.prepared), with the last layer's
/// output kept float.
zoo::Classifier build_model(const ModelMeta& meta);
void save_model(zoo::ClassifierImpl& model, const ModelMeta& meta, const std::string& path);
/// Rebuilds and loads a model saved by save_model; errors name the file and the mismatch.
zoo::Classifier load_model(const std::string& path, ModelMeta* meta = nullptr);

/// Trains the float model, or reuses OUT/float_<model>.pt when it was trained with the same
/// settings. Returns the model; *seconds_per_epoch is 0 when reused.
zoo::Classifier float_model(const Workspace& ws, double* seconds_per_epoch, bool* reused);

/// A fresh prepared model holding the float model's weights (steps 2 and 7).
zoo::Classifier prepare_from_float(const RunConfig& config, zoo::ClassifierImpl& float_model,
                                   const QConfig& qconfig, ModelMeta* meta);

/// The calibration batches (images only) of step 4: --calib-batches batches of --batch-size
/// training images, drawn with --seed.
std::vector<at::Tensor> calibration_images(const Workspace& ws);

/// Every quantization point's scale and zero point, per module path.
nlohmann::json export_scales(zoo::ClassifierImpl& model);

}  // namespace cli
}  // namespace calq
