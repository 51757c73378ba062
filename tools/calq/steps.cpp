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

#include "calq/analysis/equalization.h"
#include "calq/deploy/profile.h"
#include "calq/distributed/observer_sync.h"
#include "calq/graph/graph.h"
#include "calq/nn/quant_module.h"
#include "calq/onnx/import.h"
#include "calq/pipeline/training.h"
#include "calq/trace.h"
#include "calq/util/atomic_file.h"
#include "calq/util/progress.h"
#include "calq/zoo/models.h"

namespace calq {
namespace cli {
namespace {

nlohmann::json dtype_kwargs(QuantDtype dtype) {
  return {{"dtype", to_string(dtype)}};
}

std::string model_stem(const RunConfig& c) {
  return is_onnx_path(c.model) ? std::filesystem::path(c.model).stem().string() : c.model;
}

std::string float_checkpoint(const RunConfig& c) {
  return c.out + "/float_" + model_stem(c) + ".pt";
}

nlohmann::json float_settings(const RunConfig& c) {
  return {{"model", c.model},
          {"epochs", c.epochs},
          {"seed", c.seed},
          {"lr", c.lr},
          {"batch_size", c.batch_size},
          {"limit_train", c.limit_train},
          {"val_size", c.val_size},
          {"data", c.data},
          {"data_dir", c.data_dir}};
}

// The module path whose output is a graph output: the node producing it, or, through
// value-moving nodes (Flatten, Reshape, ...), the nearest quantization point before it.
std::string output_layer_of(const onnx::ImportedModel& m) {
  const auto& nodes = m.graph->nodes();
  std::string value = m.outputs.empty() ? std::string() : m.outputs[0];
  for (size_t guard = 0; guard < nodes.size() && !value.empty(); ++guard) {
    const graph::Node* producer = nullptr;
    for (const auto& node : nodes) {
      for (const auto& out : node.outputs) {
        if (out == value) producer = &node;
      }
    }
    if (producer == nullptr) break;
    auto* q = dynamic_cast<nn::QuantModuleImpl*>(producer->module.get());
    if (q != nullptr && (q->is_quantization_point() || q->has_weight())) return producer->name;
    if (producer->inputs.empty()) break;
    value = producer->inputs[0];
  }
  return "";
}

Model make_float_model(const std::string& name) {
  Model model;
  if (is_onnx_path(name)) {
    onnx::ImportedModel imported = onnx::import(name);
    graph::Graph graph = imported.graph;
    model.module = graph.ptr();
    model.forward = [graph](const at::Tensor& x) mutable { return graph->forward(x); };
    model.forward_all = [graph](const at::Tensor& x) mutable {
      return graph->forward(std::vector<at::Tensor>{x});
    };
    model.output_names = graph->output_names();
    model.output_layer = output_layer_of(imported);
    TORCH_CHECK(!imported.inputs.empty() && !imported.inputs[0].shape.empty(), "'", name,
                "' declares no input shape; calq needs the rank and sizes of its input");
    const auto& shape = imported.inputs[0].shape;
    model.input_shape.assign(shape.begin() + 1, shape.end());
    model.input_name = imported.inputs[0].name;
    model.example_shape = model.input_shape;
    for (int64_t& d : model.example_shape) d = d < 0 ? 1 : d;
    auto shared = std::make_shared<onnx::ImportedModel>(std::move(imported));
    model.keep_float = [shared](const std::vector<std::string>& names) {
      return shared->keep_float(names);
    };
    model.imported = true;
    model.imported_model = shared;
    return model;
  }
  zoo::Classifier classifier = zoo::make_model(name);
  model.module = classifier;
  model.forward = [classifier](const at::Tensor& x) mutable { return classifier->forward(x); };
  model.forward_all = [classifier](const at::Tensor& x) mutable {
    return std::vector<at::Tensor>{classifier->forward(x)};
  };
  model.output_layer = classifier->output_layer();
  model.example_shape = {1, data::kFashionMnistRows, data::kFashionMnistCols};
  model.input_shape = model.example_shape;
  model.keep_float = [](const std::vector<std::string>& names) {
    std::map<std::string, QConfig> out;
    for (const auto& n : names) out[n] = QConfig{};
    return out;
  };
  return model;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    out += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
  }
  return out + "]";
}

QConfigOverrides overrides_for(const Model& model, const QConfig& global,
                               const std::vector<std::string>& exclude,
                               const QConfigOverrides& base = {}) {
  // The seed's "32-bit output": the classifier's output stays float, its weight is quantized
  // (with a recipe's own weight grid for that layer, if it has one).
  QConfigOverrides overrides = base;
  if (!model.output_layer.empty()) {
    const auto own = base.by_name.find(model.output_layer);
    QConfig last = own != base.by_name.end() ? own->second : global;
    last.activation = c10::nullopt;
    overrides.by_name[model.output_layer] = last;
  }
  for (const auto& entry : model.keep_float(exclude)) overrides.by_name[entry.first] = entry.second;
  return overrides;
}

// Rebuilds the architecture change of an equalization (ReLU6 -> ReLU) before prepare.
void apply_architecture_steps(const Model& model, const analysis::RecipeSteps& steps) {
  if (!steps.cross_layer_equalization() ||
      steps.equalization().relu6() != analysis::Relu6Policy::to_relu) {
    return;
  }
  std::vector<int64_t> shape = {1};
  shape.insert(shape.end(), model.example_shape.begin(), model.example_shape.end());
  analysis::replace_relu6_for_equalization(*model.module, model.forward, at::zeros(shape));
}

// Links each weighted module to its input quantizer (deployment bias in VALIDATION).
void link_for_deployment(const Model& model) {
  if (model.imported) return;  // graphs: linked from their edges (the deploy layer), not traced
  link_input_quantizers(trace_model(model));
}

data::ImageOptions image_options(const RunConfig& c) {
  return data::ImageOptions()
      .size(c.size)
      .channels(c.channels)
      .order(c.order)
      .mean(c.mean)
      .std(c.std);
}

// The first `limit` examples of a source (all with limit 0).
data::SourcePtr limited(data::SourcePtr source, int64_t limit) {
  if (limit <= 0 || limit >= source->size()) return source;
  std::vector<int64_t> first(static_cast<size_t>(limit));
  for (int64_t i = 0; i < limit; ++i) first[i] = i;
  return data::subset(source, first);
}

}  // namespace

void check_data_fits(const Model& model, const std::vector<int64_t>& example,
                     const std::string& what) {
  bool fits = example.size() == model.input_shape.size();
  for (size_t i = 0; fits && i < example.size(); ++i) {
    fits = model.input_shape[i] < 0 || model.input_shape[i] == example[i];
  }
  TORCH_CHECK(fits, what, ": the examples have shape ", shape_str(example),
              " but the model's input '", model.input_name, "' takes [N, ",
              shape_str(model.input_shape).substr(1),
              " (? = any size); for an image folder set --size, --channels and --order, for "
              ".npy/.npz data reshape the arrays");
}

void check_workspace_fits(const Model& model, const Workspace& ws) {
  check_data_fits(model, ws.train->example_shape(),
                  ws.config.data.empty() ? "Fashion-MNIST" : "--data");
  if (ws.test) check_data_fits(model, ws.test->example_shape(), "--test-data");
}

bool is_onnx_path(const std::string& model) {
  return model.size() > 5 && model.substr(model.size() - 5) == ".onnx";
}

nlohmann::json Workspace::describe() const {
  return {{"train", train->describe()},
          {"train_examples", train->size()},
          {"validation_examples", validation->size()},
          {"test", test ? test->describe() : nlohmann::json(nullptr)},
          {"test_examples", test ? test->size() : 0},
          {"labels", labelled}};
}

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
  data::SourcePtr all;
  if (config.data.empty()) {
    data::FashionMnistOptions train_options, test_options;
    train_options.root(config.data_dir);
    test_options.root(config.data_dir);
    if (config.limit_train > 0) train_options.limit(config.limit_train);
    if (config.limit_test > 0) test_options.limit(config.limit_test);
    const nlohmann::json fmnist = {{"data", "Fashion-MNIST"},
                                   {"folder", data::fashion_mnist_dir(config.data_dir)},
                                   {"preprocessing", "pixel / 255, mean 0.2860, std 0.3530"},
                                   {"layout", "N x 1 x 28 x 28"}};
    all = data::in_memory(data::load_fashion_mnist(data::Split::train, train_options), fmnist);
    ws.test = data::in_memory(data::load_fashion_mnist(data::Split::test, test_options), fmnist);
  } else {
    all = limited(data::open_source(config.data, image_options(config)), config.limit_train);
    if (!config.test_data.empty()) {
      ws.test =
          limited(data::open_source(config.test_data, image_options(config)), config.limit_test);
    }
  }
  TORCH_CHECK(config.val_size < all->size(), "--val-size ", config.val_size,
              " leaves no training examples of the ", all->size(), " available");
  std::tie(ws.train, ws.validation) = data::hold_out(all, config.val_size, config.seed);
  ws.labelled = all->has_labels() && (!ws.test || ws.test->has_labels());
  return ws;
}

QConfig calibration_qconfig(const RunConfig& config, const std::string& observer) {
  return get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), observer,
                             "min_max", dtype_kwargs(config.activation_dtype()),
                             dtype_kwargs(config.weight_dtype()));
}

QConfig qat_qconfig(const RunConfig& config, const std::string& method,
                    const std::string& calibrated_observer) {
  const std::string weight_method = method == "lsq" ? "lsq" : "fake_quant";
  // "calibrated": QAT goes on observing with the calibration's own observer, whose loaded
  // state (a histogram, a clipped range) it continues. A different observer would pull
  // fake_quant's scale away from the calibrated one: with min_max during QAT, fake_quant at
  // 4/4 ended 0.78 pt below its percentile calibration (3 seeds).
  const std::string observer =
      config.qat_observer == "calibrated" ? calibrated_observer : config.qat_observer;
  return get_default_qconfig(method, weight_method, observer, "min_max",
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

analysis::Recipe ModelMeta::recipe() const {
  analysis::Recipe r;
  r.global = qconfig;
  r.overrides = overrides;
  r.steps = steps;
  return r;
}

nlohmann::json ModelMeta::to_json() const {
  nlohmann::json j = {{"model", model},
                      {"prepared", prepared},
                      {"qconfig", qconfig.to_json()},
                      {"march", march},
                      {"exclude", exclude}};
  if (!overrides.by_name.empty() || !overrides.by_type.empty() ||
      steps.cross_layer_equalization() || steps.bias_correction()) {
    j["recipe"] = recipe().to_json();  // per-layer recipes (auto, unsigned grids, steps)
  }
  return j;
}

ModelMeta ModelMeta::from_json(const nlohmann::json& j) {
  ModelMeta meta;
  try {
    meta.model = j.at("model").get<std::string>();
    meta.prepared = j.at("prepared").get<bool>();
    if (meta.prepared) meta.qconfig = QConfig::from_json(j.at("qconfig"));
    meta.march = j.value("march", std::string("bayes"));
    meta.exclude = j.value("exclude", std::vector<std::string>{});
    if (j.contains("recipe")) {
      const analysis::Recipe r = analysis::Recipe::from_json(j.at("recipe"));
      meta.overrides = r.overrides;
      meta.steps = r.steps;
    }
  } catch (const nlohmann::json::exception& error) {
    TORCH_CHECK(false, "model description is incomplete: ", error.what());
  }
  return meta;
}

c10::optional<IntegerArithmetic> arithmetic_of(const RunConfig& config) {
  if (config.arithmetic == "float") return c10::nullopt;
  return deploy::integer_arithmetic(deploy::profile_from_string(config.arithmetic));
}

void use_arithmetic(const RunConfig& config, const Model& model) {
  set_integer_arithmetic(*model.module, arithmetic_of(config));
}

Model build_model(const ModelMeta& meta) {
  Model model = make_float_model(meta.model);
  if (meta.prepared) {
    fuse(*model.module);
    apply_architecture_steps(model, meta.steps);
    prepare_qat(*model.module, meta.qconfig,
                overrides_for(model, meta.qconfig, meta.exclude, meta.overrides),
                march_from_string(meta.march));
    link_for_deployment(model);
  }
  return model;
}

void save_model(const Model& model, const ModelMeta& meta, const std::string& path) {
  util::save_module_atomic(*model.module, path);
  util::write_file_atomic(path + ".json", meta.to_json().dump(2) + "\n");
}

Model load_onnx_model(const std::string& path, bool* quantized) {
  TORCH_CHECK(std::filesystem::exists(path), "model file '", path, "' does not exist");
  Model model = make_float_model(std::filesystem::absolute(path).string());
  *quantized = model.imported_model->qdq;
  if (*quantized) {
    fuse(*model.module);  // a float-weight Conv + BatchNormalization of the file is a block
    // Any global qconfig: each module's own qconfig (the file's grids) takes precedence.
    prepare_qat(*model.module, get_default_qconfig());
    set_fake_quantize(*model.module, FakeQuantState::VALIDATION);
  }
  return model;
}

Model load_model(const std::string& path, ModelMeta* meta_out) {
  TORCH_CHECK(std::filesystem::exists(path), "model file '", path, "' does not exist");
  TORCH_CHECK(std::filesystem::exists(path + ".json"), "model file '", path,
              "' has no description '", path, ".json' next to it; save models with calq");
  ModelMeta meta = ModelMeta::from_json(read_json_file(path + ".json"));
  Model model = build_model(meta);
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    model.module->load(archive);
  } catch (const c10::Error& error) {
    TORCH_CHECK(false, "cannot load '", path, "' into a ", meta.model,
                meta.prepared ? " prepared" : " float", " model: ", error.what_without_backtrace());
  }
  if (meta_out != nullptr) *meta_out = meta;
  return model;
}

Model float_model(const Workspace& ws, double* seconds_per_epoch, bool* reused) {
  const RunConfig& c = ws.config;
  *seconds_per_epoch = 0.0;
  *reused = false;
  if (is_onnx_path(c.model)) {
    // A user's model is trained already: it is the float model.
    TORCH_CHECK(std::filesystem::exists(c.model), "--model: '", c.model, "' does not exist");
    *reused = true;
    Model model = make_float_model(std::filesystem::absolute(c.model).string());
    check_workspace_fits(model, ws);
    return model;
  }
  check_workspace_fits(make_float_model(c.model), ws);
  const std::string path = float_checkpoint(c);
  const std::string settings_path = c.out + "/float_" + c.model + ".settings.json";
  bool reuse = std::filesystem::exists(path) && std::filesystem::exists(settings_path) &&
               read_json_file(settings_path) == float_settings(c);
  if (ws.group) {  // rank 0 decides, so that every rank takes the same branch
    reuse = !ws.group->broadcast_bytes(reuse ? "1" : "").empty();
  }
  if (reuse) {
    *reused = true;
    return load_model(path);
  }
  TORCH_CHECK(ws.labelled, "training the float ", c.model, " needs labelled data");
  torch::manual_seed(c.seed);
  Model model = make_float_model(c.model);
  auto result = pipeline::train(*model.module, model.forward, ws.train,
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
    save_model(model, meta, path);
    util::write_file_atomic(settings_path, float_settings(c).dump(2) + "\n");
    std::filesystem::remove(c.out + "/float_" + c.model + ".resume.pt");
  }
  ws.sync();
  return model;
}

Model prepare_from_float(const RunConfig& config, const Model& float_model, const QConfig& qconfig,
                         ModelMeta* meta_out) {
  analysis::Recipe recipe;
  recipe.global = qconfig;
  return prepare_from_float(config, float_model, recipe, meta_out);
}

Model prepare_from_float(const RunConfig& config, const Model& float_model,
                         const analysis::Recipe& recipe, ModelMeta* meta_out) {
  const QConfig& qconfig = recipe.global;
  ModelMeta meta;
  meta.model =
      is_onnx_path(config.model) ? std::filesystem::absolute(config.model).string() : config.model;
  meta.prepared = false;
  Model model = build_model(meta);
  copy_float_state(*float_model.module, *model.module);
  fuse(*model.module);
  apply_architecture_steps(model, recipe.steps);
  prepare_qat(*model.module, qconfig,
              overrides_for(model, qconfig, config.exclude, recipe.overrides),
              march_from_string(config.march));
  link_for_deployment(model);
  meta.prepared = true;
  meta.qconfig = qconfig;
  meta.march = config.march;
  meta.exclude = config.exclude;
  meta.overrides = recipe.overrides;
  meta.steps = recipe.steps;
  if (meta_out != nullptr) *meta_out = meta;
  return model;
}

void calibrate_model(const Workspace& ws, Model& model) {
  const RunConfig& c = ws.config;
  const data::SourceBatches batches =
      data::SourceBatches::calibration(ws.train, c.calib_batches, c.batch_size, c.seed);
  if (ws.group) {
    distributed::calibrate(
        *model.module, model.forward, batches.size(),
        [&batches](int64_t i) { return batches[i].images; }, *ws.group);
    return;
  }
  set_fake_quantize(*model.module, FakeQuantState::CALIBRATION);
  torch::NoGradGuard no_grad;
  for (const at::Tensor& images : batches.images()) model.forward(images);
}

Trace trace_model(const Model& model) {
  std::vector<int64_t> shape = {1};
  shape.insert(shape.end(), model.example_shape.begin(), model.example_shape.end());
  return trace(*model.module, model.forward, at::zeros(shape));
}

nlohmann::json export_scales(torch::nn::Module& model) {
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
