#pragma once
// The workflow steps the subcommands share: data, models (a zoo network or an imported ONNX
// graph), calibration, QAT, checkpoints.

#include <nlohmann/json.hpp>

#include <string>

#include "calq/analysis/recipe.h"
#include "calq/data/source.h"
#include "calq/distributed/process_group.h"
#include "calq/onnx/import.h"
#include "calq/pipeline/training.h"
#include "calq/qconfig.h"
#include "calq/trace.h"
#include "calq/workflow.h"
#include "config.h"

namespace calq {
namespace cli {

/// The data of a run. Fashion-MNIST by default (training images minus the validation split,
/// and the test set); with --data, the user's file or folder (minus the validation split) and
/// --test-data if given.
struct Workspace {
  RunConfig config;
  data::SourcePtr train;       ///< calibration and QAT data
  data::SourcePtr validation;  ///< --val-size examples held out for every choice
  data::SourcePtr test;        ///< null when the user gave no test data
  /// Whether the data has labels (else evaluation is agreement with the float model and QAT
  /// distills from it).
  bool labelled = true;
  /// The job this process is a rank of (started by --nproc or an external launcher), else
  /// null. Every rank runs the same steps; training, calibration and evaluation are shared
  /// between the ranks; only rank 0 writes files and prints results.
  std::shared_ptr<distributed::ProcessGroup> group;
  nlohmann::json describe() const;

  /// Whether this process writes files and prints results (rank 0, or the only process).
  bool writer() const;
  /// Waits until every rank got here (after rank 0 wrote files other ranks read); no-op in
  /// one process.
  void sync() const;
};

/// Reads the data (limits applied), holds out the validation split, joins the job when a
/// launcher started this process (threads: --threads, or the cores divided among the local
/// ranks), and sets the thread count.
Workspace open_workspace(const RunConfig& config);

/// A model of the CLI: what the loops drive.
struct Model {
  std::shared_ptr<torch::nn::Module> module;
  pipeline::Forward forward;
  /// Every output of the model, in output_names order (imported graphs may have several).
  std::function<std::vector<at::Tensor>(const at::Tensor&)> forward_all;
  std::vector<std::string> output_names = {"output"};
  /// Module path of the layer whose output stays float by default ("32-bit output").
  std::string output_layer;
  /// One example's shape (no batch dimension), for traces.
  std::vector<int64_t> example_shape;
  /// The declared input shape without the batch dimension (-1: dynamic), and its name.
  std::vector<int64_t> input_shape;
  std::string input_name = "input";
  /// For imported models: ONNX node names -> module overrides of --exclude.
  std::function<std::map<std::string, QConfig>(const std::vector<std::string>&)> keep_float;
  bool imported = false;
  /// The ONNX import behind an imported model (its graph is `module`); export walks it.
  std::shared_ptr<onnx::ImportedModel> imported_model;
};

/// Checks that examples of `example_shape` (no batch dimension) fit the model's input (rank and
/// every static size); the error names both shapes and the options that change the data's.
void check_data_fits(const Model& model, const std::vector<int64_t>& example_shape,
                     const std::string& what);

/// check_data_fits for the training (and validation) and test data of `ws`.
void check_workspace_fits(const Model& model, const Workspace& ws);

/// Whether --model names an ONNX file rather than a zoo network.
bool is_onnx_path(const std::string& model);

/// The calibration recipe: fake_quant everywhere, `observer` on activations, min_max on
/// weights, dtypes from --bits.
QConfig calibration_qconfig(const RunConfig& config, const std::string& observer);
/// The QAT recipe of `method`: activations `method` with --qat-observer ("calibrated": the
/// observer the loaded calibration used, `calibrated_observer`); weights lsq for lsq, else
/// fake_quant; min_max weight observer.
QConfig qat_qconfig(const RunConfig& config, const std::string& method,
                    const std::string& calibrated_observer);

/// Where an interrupted QAT of `name` resumes from (removed once it finished).
std::string qat_resume_checkpoint(const RunConfig& config, const std::string& name);
/// Steps 9-10 for `name`: --qat-epochs of Adam in state QAT (weights at --qat-lr, quantizer
/// parameters at --qat-scale-lr, --qat-schedule, the last --qat-freeze-bn-epochs with batch
/// norm frozen), with a resumable checkpoint.
pipeline::TrainOptions qat_train_options(const RunConfig& config, const std::string& name);

/// A model as saved by calq: parameters in `path`, how to rebuild it in `path`.json.
struct ModelMeta {
  std::string model;  ///< zoo name or ONNX file (absolute path)
  bool prepared = false;
  QConfig qconfig;  ///< global recipe (prepared models)
  std::string march = "bayes";
  std::vector<std::string> exclude;  ///< kept float (--exclude)
  /// Beyond `qconfig` (calq::analysis::Recipe; empty for a plain calibration): per-type and
  /// per-name overrides (auto's observers and promotions, unsigned grids) and the steps that
  /// changed the float weights (an equalization's ReLU6 -> ReLU rebuilds the architecture).
  QConfigOverrides overrides;
  analysis::RecipeSteps steps;
  /// qconfig, overrides and steps as one recipe.
  analysis::Recipe recipe() const;
  nlohmann::json to_json() const;
  static ModelMeta from_json(const nlohmann::json& j);
};

/// Builds the model of `meta` (fused, prepared and linked for deployment when prepared), with
/// the last layer's output and the --exclude layers kept float.
Model build_model(const ModelMeta& meta);
/// The arithmetic of VALIDATION that --arithmetic names: nullopt for float (the simulation), a
/// profile's integer kernels otherwise.
c10::optional<IntegerArithmetic> arithmetic_of(const RunConfig& config);
/// Sets it on `model` (calq::set_integer_arithmetic).
void use_arithmetic(const RunConfig& config, const Model& model);
void save_model(const Model& model, const ModelMeta& meta, const std::string& path);
/// Rebuilds and loads a model saved by save_model; errors name the file and the mismatch.
Model load_model(const std::string& path, ModelMeta* meta = nullptr);
/// An ONNX file as `evaluate --checkpoint` and `infer --model` take it: a float model as it
/// is; a QDQ model (calq's export or another tool's) prepared with the file's own quantization
/// (every Q -> DQ pair a fixed fake quantizer, docs/deploy.md) and in VALIDATION, so that it
/// computes what the file computes. *quantized says which.
Model load_onnx_model(const std::string& path, bool* quantized);

/// The float model: a zoo network trained (or reused from OUT/float_<model>.pt when trained
/// with the same settings), or the imported ONNX model as it is. *seconds_per_epoch is 0 and
/// *reused true when nothing was trained.
Model float_model(const Workspace& ws, double* seconds_per_epoch, bool* reused);

/// A fresh prepared model holding the float model's weights (steps 2 and 7).
Model prepare_from_float(const RunConfig& config, const Model& float_model, const QConfig& qconfig,
                         ModelMeta* meta);
/// The same with a per-layer recipe (its steps are not run here: the architecture change of
/// an equalization with relu6 to_relu is; recipe_steps.h calibrates with the steps).
Model prepare_from_float(const RunConfig& config, const Model& float_model,
                         const analysis::Recipe& recipe, ModelMeta* meta);

/// Step 3-4 on `model`: CALIBRATION state, the calibration batches of `ws` (--calib-batches
/// of --batch-size training examples, drawn with --seed), read one batch at a time. In a job
/// (ws.group), each rank reads and observes its contiguous shard of the batches and the
/// observers merge in rank order (distributed::calibrate).
void calibrate_model(const Workspace& ws, Model& model);

/// Every quantization point's scale and zero point, per module path.
nlohmann::json export_scales(torch::nn::Module& model);

/// The trace of a model on a zero example (batch 1).
Trace trace_model(const Model& model);

}  // namespace cli
}  // namespace calq
