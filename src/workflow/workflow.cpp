#include "calq/workflow.h"

#include <c10/util/Exception.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/dropout.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "calq/nn/conv.h"
#include "calq/nn/float_function.h"
#include "calq/nn/quant_module.h"

namespace calq {
namespace {

const std::vector<std::pair<std::string, March>>& march_names() {
  static const std::vector<std::pair<std::string, March>> names = {
      {"bernoulli", March::bernoulli},
      {"bernoulli2", March::bernoulli2},
      {"bayes", March::bayes},
      {"nash", March::nash}};
  return names;
}

std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

// Named calq::nn modules of a model, in registration order (root named "").
std::vector<std::pair<std::string, nn::QuantModuleImpl*>> quant_modules(torch::nn::Module& model) {
  std::vector<std::pair<std::string, nn::QuantModuleImpl*>> out;
  if (auto* self = dynamic_cast<nn::QuantModuleImpl*>(&model)) out.emplace_back("", self);
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    if (auto* q = dynamic_cast<nn::QuantModuleImpl*>(item.value().get())) {
      out.emplace_back(item.key(), q);
    }
  }
  return out;
}

std::vector<std::pair<std::string, FakeQuantizeImpl*>> fake_quantizers(
    const torch::nn::Module& model) {
  std::vector<std::pair<std::string, FakeQuantizeImpl*>> out;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(item.value().get())) {
      out.emplace_back(item.key(), fq);
    }
  }
  return out;
}

// The modules of imported graphs: their layers and float functions (Softmax, Resize, ...).
std::set<std::string> with_graph_type_names(std::set<std::string> names) {
  names.insert({"ConvReLU6_2d", "ConvTranspose2d", "MatMul", "ReduceMean", "LayerNorm"});
  for (const auto& name : nn::float_function_type_names()) names.insert(name);
  return names;
}

const std::set<std::string>& known_type_names() {
  static const std::set<std::string> names = {
      "QuantStub",      "DeQuantStub", "Conv2d",     "ConvReLU2d", "ConvBn2d",  "ConvBnReLU2d",
      "ConvBnReLU6_2d", "Linear",      "LinearReLU", "ReLU",       "ReLU6",     "Add",
      "AddReLU",        "Mul",         "Cat",        "MaxPool2d",  "AvgPool2d", "AdaptiveAvgPool2d",
      "Flatten",        "Identity"};
  static const std::set<std::string> all = with_graph_type_names(names);
  return all;
}

void force_power_of_two(c10::optional<FakeQuantConfig>& recipe) {
  if (recipe) recipe->qkwargs["power_of_two"] = true;
}

std::string describe(const FakeQuantConfig& recipe) {
  return recipe.method + "/" + recipe.observer + " " + recipe.spec().str();
}

}  // namespace

March march_from_string(const std::string& name) {
  std::vector<std::string> valid;
  for (const auto& entry : march_names()) {
    if (entry.first == name) return entry.second;
    valid.push_back(entry.first);
  }
  TORCH_CHECK(false, "unknown march '", name, "'; valid marches: ", join(valid));
}

std::string to_string(March march) {
  for (const auto& entry : march_names()) {
    if (entry.second == march) return entry.first;
  }
  TORCH_INTERNAL_ASSERT(false, "unknown March value");
}

int64_t fuse(torch::nn::Module& model) {
  int64_t fused = 0;
  for (const auto& module : quant_modules(model)) {
    auto* block = dynamic_cast<nn::detail::ConvBlockImpl*>(module.second);
    if (block != nullptr && block->has_bn() && !block->fused()) {
      block->fuse();
      ++fused;
    }
  }
  return fused;
}

void prepare_qat(torch::nn::Module& model, const QConfig& global, const QConfigOverrides& overrides,
                 March march) {
  const auto modules = quant_modules(model);
  TORCH_CHECK(!modules.empty(), "prepare_qat: the model has no calq::nn module; build it from ",
              "calq::nn modules (Conv2d, ConvBnReLU2d, Linear, QuantStub, ...)");
  std::set<std::string> names;
  for (const auto& module : modules) {
    TORCH_CHECK(!module.second->prepared(), "prepare_qat: module '", module.first,
                "' is already prepared; prepare_qat may be called once per model");
    auto* block = dynamic_cast<nn::detail::ConvBlockImpl*>(module.second);
    TORCH_CHECK(block == nullptr || !block->has_bn() || block->fused(),
                "prepare_qat: ", module.second->type_name(), " '", module.first,
                "' is not fused; call calq::fuse(model) before prepare_qat");
    names.insert(module.first);
  }
  for (const auto& entry : overrides.by_type) {
    TORCH_CHECK(known_type_names().count(entry.first) > 0, "prepare_qat: qconfig override for ",
                "unknown module type '", entry.first,
                "'; valid types: ", join({known_type_names().begin(), known_type_names().end()}));
    entry.second.validate();
  }
  for (const auto& entry : overrides.by_name) {
    TORCH_CHECK(names.count(entry.first) > 0, "prepare_qat: qconfig override for '", entry.first,
                "', which is not a calq::nn module of this model; modules: ",
                join({names.begin(), names.end()}));
    entry.second.validate();
  }
  global.validate();

  for (const auto& module : modules) {
    QConfig resolved = global;
    auto by_type = overrides.by_type.find(module.second->type_name());
    if (by_type != overrides.by_type.end()) resolved = by_type->second;
    auto by_name = overrides.by_name.find(module.first);
    if (by_name != overrides.by_name.end()) resolved = by_name->second;
    if (module.second->qconfig) resolved = *module.second->qconfig;
    if (march == March::bernoulli) {
      force_power_of_two(resolved.activation);
      force_power_of_two(resolved.weight);
    }
    module.second->prepare(resolved);
  }
  set_fake_quantize(model, FakeQuantState::QAT);
  // The model itself need not be owned by a shared_ptr (modules(true) would require it).
  if (auto* hook = dynamic_cast<PrepareHook*>(&model)) hook->after_prepare();
  for (const auto& module : model.modules(/*include_self=*/false)) {
    if (auto* hook = dynamic_cast<PrepareHook*>(module.get())) hook->after_prepare();
  }
}

void set_fake_quantize(torch::nn::Module& model, FakeQuantState state) {
  const auto quantizers = fake_quantizers(model);
  bool prepared = !quantizers.empty();
  for (const auto& module : quant_modules(model)) prepared = prepared || module.second->prepared();
  TORCH_CHECK(prepared, "set_fake_quantize(", to_string(state), "): the model is not prepared; ",
              "call calq::prepare_qat(model, qconfig) first");
  // train()/eval() recurse into every child: batch norm and dropout follow the state.
  model.train(state == FakeQuantState::QAT);
  for (const auto& fq : quantizers) fq.second->set_state(state);
}

int64_t set_integer_arithmetic(torch::nn::Module& model,
                               const c10::optional<IntegerArithmetic>& arithmetic) {
  int64_t set = 0;
  for (const auto& module : quant_modules(model)) {
    module.second->set_integer_arithmetic(arithmetic);
    ++set;
  }
  return set;
}

std::string LoadReport::str() const {
  std::ostringstream out;
  out << copied.size() << " entries copied, " << converted.size() << " converted, "
      << not_applicable.size() << " observer entries not applicable, " << missing.size()
      << " missing, " << unexpected.size() << " unexpected, " << mismatched.size() << " mismatched";
  if (!converted.empty()) out << "\n  converted: " << join(converted, "\n             ");
  if (!missing.empty()) out << "\n  missing: " << join(missing);
  if (!unexpected.empty()) out << "\n  unexpected: " << join(unexpected);
  if (!mismatched.empty()) out << "\n  mismatched: " << join(mismatched, "\n              ");
  return out.str();
}

LoadReport load_observer_params(const torch::nn::Module& from, torch::nn::Module& to) {
  std::map<std::string, const FakeQuantizeImpl*> source;
  for (const auto& fq : fake_quantizers(from)) source[fq.first] = fq.second;
  LoadReport report;
  std::set<std::string> used;
  for (const auto& fq : fake_quantizers(to)) {
    const std::string& path = fq.first;
    auto found = source.find(path);
    if (found == source.end()) {
      report.missing.push_back(path);
      continue;
    }
    used.insert(path);
    const CalibrationLoad load = fq.second->load_calibration(*found->second);
    const std::string prefix = path.empty() ? "" : path + ".";
    switch (load.outcome) {
      case CalibrationLoad::Outcome::mismatched:
        report.mismatched.push_back(path + ": " + load.detail);
        continue;
      case CalibrationLoad::Outcome::converted:
        report.converted.push_back(path + ": " + load.detail);
        break;
      case CalibrationLoad::Outcome::copied:
        break;
    }
    for (const auto& entry : load.copied_entries) report.copied.push_back(prefix + entry);
    for (const auto& entry : load.not_applicable) report.not_applicable.push_back(prefix + entry);
  }
  for (const auto& entry : source) {
    if (used.count(entry.first) == 0) report.unexpected.push_back(entry.first);
  }
  return report;
}

void project_quantizer_parameters(torch::nn::Module& model) {
  for (const auto& fq : fake_quantizers(model)) fq.second->project_parameters();
}

std::vector<std::string> clamped_scales(const torch::nn::Module& model) {
  std::vector<std::string> out;
  for (const auto& fq : fake_quantizers(model)) {
    bool clamped = false;
    try {
      clamped = fq.second->scale_clamped();
    } catch (const c10::Error&) {
      clamped = false;  // no scale yet
    }
    if (clamped) out.push_back(fq.first);
  }
  return out;
}

void copy_float_state(torch::nn::Module& from, torch::nn::Module& to) {
  auto is_fake_quant_entry = [](const std::string& name) {
    return name.find("weight_fake_quant.") != std::string::npos ||
           name.find("output_fake_quant.") != std::string::npos;
  };
  std::map<std::string, at::Tensor> source;
  for (const auto& p : from.named_parameters()) source[p.key()] = p.value();
  for (const auto& b : from.named_buffers()) source[b.key()] = b.value();
  torch::NoGradGuard no_grad;
  auto copy_one = [&](const std::string& name, at::Tensor& destination) {
    if (is_fake_quant_entry(name)) return;
    auto found = source.find(name);
    TORCH_CHECK(found != source.end(), "copy_float_state: '", name, "' is missing in the source ",
                "model; both models must be built with the same architecture");
    TORCH_CHECK(found->second.sizes() == destination.sizes(), "copy_float_state: '", name,
                "' has shape ", found->second.sizes(), " in the source and ", destination.sizes(),
                " in the destination");
    destination.copy_(found->second);
  };
  for (auto& p : to.named_parameters()) copy_one(p.key(), p.value());
  for (auto& b : to.named_buffers()) copy_one(b.key(), b.value());
}

std::vector<QuantPointInfo> check_qconfig(torch::nn::Module& model) {
  std::vector<QuantPointInfo> rows;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    torch::nn::Module* module = item.value().get();
    if (dynamic_cast<FakeQuantizeImpl*>(module) != nullptr) continue;
    QuantPointInfo row;
    row.name = item.key();
    auto* q = dynamic_cast<nn::QuantModuleImpl*>(module);
    if (q == nullptr) {
      // Containers (Sequential, user blocks) hold other modules; report only leaves.
      bool has_children = !module->children().empty();
      bool inside_quant = false;
      for (const auto& other : rows) {
        if (!other.foreign && row.name.rfind(other.name + ".", 0) == 0) inside_quant = true;
      }
      if (has_children || inside_quant) continue;
      row.type_name = module->name();
      row.foreign = true;
      row.output = "float (not a calq::nn module)";
      rows.push_back(row);
      continue;
    }
    row.type_name = q->type_name();
    auto* block = dynamic_cast<nn::detail::ConvBlockImpl*>(q);
    row.unfused = block != nullptr && block->has_bn() && !block->fused();
    const auto& resolved = q->resolved_qconfig();
    if (q->has_weight()) {
      row.weight = !q->prepared()                   ? "not prepared"
                   : (resolved && resolved->weight) ? describe(*resolved->weight)
                                                    : "float";
    }
    if (!q->is_quantization_point()) {
      row.output = "pass-through";
    } else if (!q->prepared()) {
      row.output = "not prepared";
    } else {
      row.output = (resolved && resolved->activation) ? describe(*resolved->activation) : "float";
    }
    rows.push_back(row);
  }
  return rows;
}

std::string format_qconfig_table(const std::vector<QuantPointInfo>& rows) {
  size_t name_width = 4, type_width = 4, weight_width = 6;
  for (const auto& row : rows) {
    name_width = std::max(name_width, row.name.size());
    type_width = std::max(type_width, row.type_name.size());
    weight_width = std::max(weight_width, row.weight.size());
  }
  auto pad = [](const std::string& s, size_t width) {
    return s + std::string(width - s.size(), ' ');
  };
  std::ostringstream out;
  out << pad("name", name_width) << "  " << pad("type", type_width) << "  "
      << pad("weight", weight_width) << "  output\n";
  for (const auto& row : rows) {
    out << pad(row.name, name_width) << "  " << pad(row.type_name, type_width) << "  "
        << pad(row.weight, weight_width) << "  " << row.output;
    if (row.unfused) out << "  [UNFUSED: call calq::fuse]";
    out << "\n";
  }
  return out.str();
}

}  // namespace calq
