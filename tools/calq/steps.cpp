#include "steps.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/serialize.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "calq/data/batches.h"
#include "calq/pipeline/training.h"
#include "calq/util/atomic_file.h"

namespace calq {
namespace cli {
namespace {

QConfigOverrides float_output(const zoo::ClassifierImpl& model, const QConfig& global,
                              const QConfigOverrides& base = {}) {
  // The seed's "32-bit output": the classifier's logits stay float, its weight is quantized.
  QConfigOverrides overrides = base;
  auto found = base.by_name.find(model.output_layer());
  QConfig last = found != base.by_name.end() ? found->second : global;
  last.activation = c10::nullopt;
  overrides.by_name[model.output_layer()] = last;
  return overrides;
}

analysis::Forward forward_of(zoo::ClassifierImpl& model) {
  return [&model](const at::Tensor& x) { return model.forward(x); };
}

// Rebuilds the architecture change equalization made (ReLU6 -> ReLU), before a load.
void apply_architecture_steps(zoo::ClassifierImpl& model, const analysis::Recipe& recipe) {
  if (!recipe.steps.cross_layer_equalization() ||
      recipe.steps.equalization().relu6() != analysis::Relu6Policy::to_relu) {
    return;
  }
  model.eval();
  analysis::replace_relu6_for_equalization(
      model, forward_of(model),
      at::zeros({1, 1, data::kFashionMnistRows, data::kFashionMnistCols}));
}

nlohmann::json dtype_kwargs(QuantDtype dtype) {
  return {{"dtype", to_string(dtype)}};
}

std::string float_checkpoint(const RunConfig& c) {
  return c.out + "/float_" + c.model + ".pt";
}

nlohmann::json float_settings(const RunConfig& c) {
  return {{"model", c.model},
          {"epochs", c.epochs},
          {"seed", c.seed},
          {"lr", c.lr},
          {"batch_size", c.batch_size},
          {"limit_train", c.limit_train},
          {"val_size", c.val_size},
          {"data_dir", c.data_dir}};
}

}  // namespace

Workspace open_workspace(const RunConfig& config) {
  config.validate();
  const int threads = config.threads > 0 ? static_cast<int>(config.threads)
                                         : static_cast<int>(std::thread::hardware_concurrency());
  at::set_num_threads(std::max(threads, 1));
  torch::manual_seed(config.seed);
  Workspace ws;
  ws.config = config;
  data::FashionMnistOptions train_options, test_options;
  train_options.root(config.data_dir);
  test_options.root(config.data_dir);
  if (config.limit_train > 0) train_options.limit(config.limit_train);
  if (config.limit_test > 0) test_options.limit(config.limit_test);
  const data::Dataset train = data::load_fashion_mnist(data::Split::train, train_options);
  TORCH_CHECK(config.val_size < train.size(), "--val-size ", config.val_size,
              " leaves no training images of the ", train.size(), " available");
  data::HoldOut split = data::hold_out(train, config.val_size, config.seed);
  ws.train = std::move(split.rest);
  ws.validation = std::move(split.held_out);
  ws.test = data::load_fashion_mnist(data::Split::test, test_options);
  return ws;
}

QConfig calibration_qconfig(const RunConfig& config, const std::string& observer) {
  return get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), observer,
                             "min_max", dtype_kwargs(config.activation_dtype()),
                             dtype_kwargs(config.weight_dtype()));
}

analysis::Recipe with_run_options(const RunConfig& config, analysis::Recipe recipe) {
  if (config.unsigned_activations()) {
    zoo::Classifier shape = zoo::make_model(config.model);
    recipe.overrides =
        analysis::unsigned_activation_overrides(*shape, recipe.global, recipe.overrides);
  }
  if (config.cle) {
    recipe.steps.cross_layer_equalization(true);
    recipe.steps.equalization(analysis::EqualizationOptions().relu6(
        analysis::relu6_policy_from_string(config.cle_relu6)));
  }
  if (config.bias_correction) recipe.steps.bias_correction(true);
  return recipe;
}

analysis::Recipe calibration_recipe(const RunConfig& config, const std::string& observer) {
  analysis::Recipe recipe;
  recipe.global = calibration_qconfig(config, observer);
  return with_run_options(config, recipe);
}

analysis::Recipe qat_recipe(const RunConfig& config, const std::string& method,
                            const analysis::Recipe* calibrated) {
  const std::string weight_method = method == "lsq" ? "lsq" : "fake_quant";
  if (calibrated != nullptr) return calibrated->for_qat(method, weight_method, config.qat_observer);
  analysis::Recipe recipe;
  recipe.global = qat_qconfig(config, method);
  if (config.unsigned_activations()) {
    zoo::Classifier shape = zoo::make_model(config.model);
    recipe.overrides = analysis::unsigned_activation_overrides(*shape, recipe.global);
  }
  return recipe;
}

QConfig qat_qconfig(const RunConfig& config, const std::string& method) {
  const std::string weight_method = method == "lsq" ? "lsq" : "fake_quant";
  return get_default_qconfig(method, weight_method, config.qat_observer, "min_max",
                             dtype_kwargs(config.activation_dtype()),
                             dtype_kwargs(config.weight_dtype()));
}

std::string qat_resume_checkpoint(const RunConfig& config, const std::string& name) {
  return config.out + "/qat/" + name + ".resume.pt";
}

pipeline::TrainOptions qat_train_options(const RunConfig& config, const std::string& name) {
  return pipeline::TrainOptions()
      .epochs(config.qat_epochs)
      .batch_size(config.batch_size)
      .lr(config.qat_lr)
      .quantizer_lr(config.qat_scale_lr)
      .cosine(config.qat_schedule == "cosine")
      .freeze_bn_epochs(config.qat_freeze_bn_epochs)
      .seed(config.seed + 1)
      .quantized(true)
      .label("qat " + name)
      .checkpoint(qat_resume_checkpoint(config, name))
      .resume(config.resume);
}

nlohmann::json ModelMeta::to_json() const {
  nlohmann::json j = {{"model", model},
                      {"prepared", prepared},
                      {"qconfig", recipe.global.to_json()},
                      {"march", march}};
  if (!recipe.overrides.by_name.empty() || !recipe.overrides.by_type.empty() ||
      recipe.steps.cross_layer_equalization() || recipe.steps.bias_correction()) {
    analysis::Recipe stored = recipe;
    stored.notes = nullptr;
    j["recipe"] = stored.to_json();  // per-layer recipes (auto, unsigned grids, steps)
  }
  return j;
}

ModelMeta ModelMeta::from_json(const nlohmann::json& j) {
  ModelMeta meta;
  try {
    meta.model = j.at("model").get<std::string>();
    meta.prepared = j.at("prepared").get<bool>();
    if (meta.prepared && j.contains("recipe")) {
      meta.recipe = analysis::Recipe::from_json(j.at("recipe"));
    } else if (meta.prepared) {
      meta.recipe.global = QConfig::from_json(j.at("qconfig"));
    }
    meta.march = j.value("march", std::string("bayes"));
  } catch (const nlohmann::json::exception& error) {
    TORCH_CHECK(false, "model description is incomplete: ", error.what());
  }
  return meta;
}

zoo::Classifier build_model(const ModelMeta& meta) {
  zoo::Classifier model = zoo::make_model(meta.model);
  if (meta.prepared) {
    fuse(*model);
    apply_architecture_steps(*model, meta.recipe);
    prepare_qat(*model, meta.recipe.global,
                float_output(*model, meta.recipe.global, meta.recipe.overrides),
                march_from_string(meta.march));
  }
  return model;
}

void save_model(zoo::ClassifierImpl& model, const ModelMeta& meta, const std::string& path) {
  util::save_module_atomic(model, path);
  util::write_file_atomic(path + ".json", meta.to_json().dump(2) + "\n");
}

zoo::Classifier load_model(const std::string& path, ModelMeta* meta_out) {
  TORCH_CHECK(std::filesystem::exists(path), "model file '", path, "' does not exist");
  TORCH_CHECK(std::filesystem::exists(path + ".json"), "model file '", path,
              "' has no description '", path, ".json' next to it; save models with calq");
  ModelMeta meta = ModelMeta::from_json(read_json_file(path + ".json"));
  zoo::Classifier model = build_model(meta);
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    model->load(archive);
  } catch (const c10::Error& error) {
    TORCH_CHECK(false, "cannot load '", path, "' into a ", meta.model,
                meta.prepared ? " prepared" : " float", " model: ", error.what_without_backtrace());
  }
  if (meta_out != nullptr) *meta_out = meta;
  return model;
}

zoo::Classifier float_model(const Workspace& ws, double* seconds_per_epoch, bool* reused) {
  const RunConfig& c = ws.config;
  const std::string path = float_checkpoint(c);
  const std::string settings_path = c.out + "/float_" + c.model + ".settings.json";
  *seconds_per_epoch = 0.0;
  *reused = false;
  if (std::filesystem::exists(path) && std::filesystem::exists(settings_path) &&
      read_json_file(settings_path) == float_settings(c)) {
    *reused = true;
    return load_model(path);
  }
  torch::manual_seed(c.seed);
  zoo::Classifier model = zoo::make_model(c.model);
  auto result = pipeline::train(*model, ws.train,
                                pipeline::TrainOptions()
                                    .epochs(c.epochs)
                                    .batch_size(c.batch_size)
                                    .lr(c.lr)
                                    .seed(c.seed)
                                    .label("float")
                                    .checkpoint(c.out + "/float_" + c.model + ".resume.pt")
                                    .resume(c.resume));
  *seconds_per_epoch = result.seconds_per_epoch;
  ModelMeta meta;
  meta.model = c.model;
  save_model(*model, meta, path);
  util::write_file_atomic(settings_path, float_settings(c).dump(2) + "\n");
  std::filesystem::remove(c.out + "/float_" + c.model + ".resume.pt");
  return model;
}

zoo::Classifier prepare_from_float(const RunConfig& config, zoo::ClassifierImpl& float_model,
                                   const QConfig& qconfig, ModelMeta* meta_out) {
  analysis::Recipe recipe;
  recipe.global = qconfig;
  return prepare_from_float(config, float_model, recipe, meta_out);
}

zoo::Classifier prepare_from_float(const RunConfig& config, zoo::ClassifierImpl& float_model,
                                   const analysis::Recipe& recipe, ModelMeta* meta_out) {
  ModelMeta meta;
  meta.model = config.model;
  meta.prepared = false;
  zoo::Classifier model = build_model(meta);
  copy_float_state(float_model, *model);
  fuse(*model);
  apply_architecture_steps(*model, recipe);
  prepare_qat(*model, recipe.global, float_output(*model, recipe.global, recipe.overrides),
              march_from_string(config.march));
  meta.prepared = true;
  meta.recipe = recipe;
  meta.march = config.march;
  if (meta_out != nullptr) *meta_out = meta;
  return model;
}

analysis::RecipeApplication calibrate_with(zoo::ClassifierImpl& model,
                                           const analysis::Recipe& recipe,
                                           const std::vector<at::Tensor>& images) {
  analysis::RecipeApplication done =
      analysis::apply_recipe(model, forward_of(model), recipe, images);
  if (done.equalized) std::cerr << "cross-layer equalization: " << done.equalization.str() << "\n";
  if (done.bias_corrected) std::cerr << "bias correction: " << done.bias_correction.str() << "\n";
  return done;
}

std::vector<at::Tensor> validation_images(const Workspace& ws, int64_t batch_size) {
  std::vector<at::Tensor> out;
  for (const auto& batch : data::Batches(ws.validation, data::BatchOptions(batch_size))) {
    out.push_back(batch.images);
  }
  return out;
}

std::vector<at::Tensor> calibration_images(const Workspace& ws) {
  std::vector<at::Tensor> images;
  for (const auto& batch : data::calibration_subset(ws.train, ws.config.calib_batches,
                                                    ws.config.batch_size, ws.config.seed)) {
    images.push_back(batch.images);
  }
  return images;
}

nlohmann::json export_scales(zoo::ClassifierImpl& model) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& item : model.named_modules()) {
    auto* fq = dynamic_cast<FakeQuantizeImpl*>(item.value().get());
    if (fq == nullptr) continue;
    at::Tensor scale = fq->scale().detach().to(at::kDouble).contiguous();
    at::Tensor zero_point = fq->zero_point().to(at::kLong).contiguous();
    out[item.key()] = {
        {"method", to_string(fq->method())},
        {"observer", fq->observer().kind()},
        {"spec", fq->spec().str()},
        {"quant_min", fq->spec().quant_min()},
        {"quant_max", fq->spec().quant_max()},
        {"scale",
         std::vector<double>(scale.data_ptr<double>(), scale.data_ptr<double>() + scale.numel())},
        {"zero_point", std::vector<int64_t>(zero_point.data_ptr<int64_t>(),
                                            zero_point.data_ptr<int64_t>() + zero_point.numel())}};
  }
  return out;
}

}  // namespace cli
}  // namespace calq
