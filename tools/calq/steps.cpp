#include "steps.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <torch/serialize.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "calq/data/batches.h"
#include "calq/distributed/observer_sync.h"
#include "calq/pipeline/training.h"
#include "calq/util/atomic_file.h"
#include "calq/util/progress.h"

namespace calq {
namespace cli {
namespace {

QConfigOverrides float_output(const zoo::ClassifierImpl& model, const QConfig& global) {
  // The seed's "32-bit output": the classifier's logits stay float, its weight is quantized.
  QConfigOverrides overrides;
  QConfig last = global;
  last.activation = c10::nullopt;
  overrides.by_name[model.output_layer()] = last;
  return overrides;
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

bool Workspace::writer() const {
  return !group || group->rank() == 0;
}

void Workspace::sync() const {
  if (group) group->barrier();
}

Workspace open_workspace(const RunConfig& config) {
  config.validate();
  Workspace ws;
  int64_t local_ranks = 1;
  if (distributed::launched_by_environment()) {
    distributed::ProcessGroupOptions options = distributed::options_from_environment();
    options.timeout(std::chrono::milliseconds(static_cast<int64_t>(config.dist_timeout * 1000.0)));
    ws.group = std::make_shared<distributed::ProcessGroup>(options);
    if (const char* local = std::getenv("LOCAL_WORLD_SIZE")) {
      local_ranks = std::max<int64_t>(1, std::atoll(local));
    }
    if (!ws.writer()) util::Progress::set_globally_quiet(true);
  }
  // Without --threads the cores are divided among this machine's ranks.
  const int64_t threads =
      config.threads > 0 ? config.threads
                         : static_cast<int64_t>(std::thread::hardware_concurrency()) / local_ranks;
  at::set_num_threads(static_cast<int>(std::max<int64_t>(threads, 1)));
  torch::manual_seed(config.seed);
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
  return {
      {"model", model}, {"prepared", prepared}, {"qconfig", qconfig.to_json()}, {"march", march}};
}

ModelMeta ModelMeta::from_json(const nlohmann::json& j) {
  ModelMeta meta;
  try {
    meta.model = j.at("model").get<std::string>();
    meta.prepared = j.at("prepared").get<bool>();
    if (meta.prepared) meta.qconfig = QConfig::from_json(j.at("qconfig"));
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
    prepare_qat(*model, meta.qconfig, float_output(*model, meta.qconfig),
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
  bool reuse = std::filesystem::exists(path) && std::filesystem::exists(settings_path) &&
               read_json_file(settings_path) == float_settings(c);
  if (ws.group) {  // rank 0 decides, so that every rank takes the same branch
    reuse = !ws.group->broadcast_bytes(reuse ? "1" : "").empty();
  }
  if (reuse) {
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
                                    .resume(c.resume)
                                    .process_group(ws.group));
  *seconds_per_epoch = result.seconds_per_epoch;
  ModelMeta meta;
  meta.model = c.model;
  if (ws.writer()) {
    save_model(*model, meta, path);
    util::write_file_atomic(settings_path, float_settings(c).dump(2) + "\n");
    std::filesystem::remove(c.out + "/float_" + c.model + ".resume.pt");
  }
  ws.sync();
  return model;
}

void calibrate_model(const Workspace& ws, zoo::Classifier& model,
                     const std::vector<at::Tensor>& batches) {
  if (ws.group) {
    distributed::calibrate(model, batches, *ws.group);
  } else {
    calibrate(model, batches);
  }
}

zoo::Classifier prepare_from_float(const RunConfig& config, zoo::ClassifierImpl& float_model,
                                   const QConfig& qconfig, ModelMeta* meta_out) {
  ModelMeta meta;
  meta.model = config.model;
  meta.prepared = false;
  zoo::Classifier model = build_model(meta);
  copy_float_state(float_model, *model);
  fuse(*model);
  prepare_qat(*model, qconfig, float_output(*model, qconfig), march_from_string(config.march));
  meta.prepared = true;
  meta.qconfig = qconfig;
  meta.march = config.march;
  if (meta_out != nullptr) *meta_out = meta;
  return model;
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
