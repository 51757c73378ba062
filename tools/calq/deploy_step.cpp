#include "deploy_step.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <iostream>

#include "calq/deploy/integer_engine.h"
#include "calq/deploy/onnxruntime.h"
#include "calq/deploy/profile.h"
#include "calq/deploy/qdq_export.h"
#include "calq/graph/graph.h"
#include "calq/nn/quant_module.h"
#include "calq/onnx/import.h"
#include "calq/trace.h"
#include "calq/workflow.h"

namespace calq {
namespace cli {
namespace {

// Examples the deployment check runs: the whole Fashion-MNIST test set; user data is capped
// so that the check stays minutes, not hours.
constexpr int64_t kMaxExamples = 10000;

// The step of a module's output grid: its output quantizer's scale, or s_x * s_w of a
// weighted module with a float output. Undefined when neither applies.
at::Tensor module_step(nn::QuantModuleImpl& m) {
  if (!m.output_fake_quant().is_empty()) return m.output_fake_quant()->scale().reshape({1, -1});
  if (m.has_weight() && !m.weight_fake_quant().is_empty() && !m.input_quantizer().is_empty()) {
    return (m.weight_fake_quant()->scale() * m.input_quantizer()->scale()).reshape({1, -1});
  }
  return at::Tensor();
}

// The same for an imported graph's first output, looking back through value-moving nodes
// (Flatten, Reshape, ...; graph::is_pass_through) only: after a float op such as Softmax the
// output has no grid (steps of 1).
at::Tensor graph_output_steps(const graph::GraphImpl& g) {
  std::string value = g.output_names().at(0);
  for (int guard = 0; guard < 1000; ++guard) {
    const graph::Node* producer = nullptr;
    for (const auto& node : g.nodes()) {
      for (const auto& out : node.outputs) {
        if (out == value) producer = &node;
      }
    }
    if (producer == nullptr || producer->quant_module() == nullptr) break;
    const at::Tensor step = module_step(*producer->quant_module());
    if (step.defined()) return step;
    if (!graph::is_pass_through(*producer) || producer->inputs.empty() ||
        producer->inputs[0].empty()) {
      break;
    }
    value = producer->inputs[0];
  }
  return at::ones({1, 1});
}

// The step of the model's output per output channel: its quantizer's scale, or for a float
// output layer the accumulator step s_x * s_w[c] of the deployed integer kernel.
at::Tensor output_steps(const Model& model, const Trace& t) {
  if (model.imported_model) return graph_output_steps(*model.imported_model->graph);
  const TracedCall* call = t.producer(t.outputs.at(0));
  while (call != nullptr) {
    const at::Tensor step = module_step(*call->module);
    if (step.defined()) return step;
    if (call->inputs.size() != 1) break;
    call = t.producer(call->inputs[0]);
  }
  return at::ones({1, 1});
}

double top1(const at::Tensor& logits, const at::Tensor& target) {
  return 100.0 * logits.argmax(1).eq(target).to(at::kDouble).mean().item<double>();
}

}  // namespace

nlohmann::json deploy_and_check(const Workspace& ws, const Model& model, const Model& float_model,
                                const std::string& onnx_path, nlohmann::json* runtime) {
  const RunConfig& c = ws.config;
  data::SourcePtr set = ws.test ? ws.test : ws.validation;
  const int64_t n = std::min(set->size(), kMaxExamples);
  std::vector<int64_t> first(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) first[i] = i;
  const data::Batch all = set->gather(first);

  Trace t;
  deploy::ExportReport exported;
  try {
    if (model.imported_model) {
      // An imported graph exports by walking its nodes (computations between modules
      // included); one example gives the values' shapes.
      exported = deploy::export_qdq(*model.imported_model, {all.images.narrow(0, 0, 1)}, onnx_path);
    } else {
      t = trace_model(model);
      link_input_quantizers(t);
      exported = deploy::export_qdq(*model.module, t, onnx_path);
    }
  } catch (const c10::Error& error) {
    return {{"export_error", error.what_without_backtrace()}};
  }

  // The simulation, in ONNX Runtime's integer arithmetic (what the export computes there,
  // bit for bit) and in float (what calibration and QAT ranked by), and the reference (labels
  // or the float model's top-1), batch by batch.
  set_fake_quantize(*model.module, FakeQuantState::VALIDATION);
  float_model.module->eval();
  std::vector<at::Tensor> sim_parts, float_sim_parts, ref_parts;
  {
    torch::NoGradGuard no_grad;
    const IntegerArithmetic arithmetic = deploy::integer_arithmetic(deploy::ort_cpu_profile());
    for (int64_t start = 0; start < n; start += c.batch_size) {
      const at::Tensor x = all.images.narrow(0, start, std::min(c.batch_size, n - start));
      set_integer_arithmetic(*model.module, arithmetic);
      sim_parts.push_back(model.forward(x));
      set_integer_arithmetic(*model.module, c10::nullopt);
      float_sim_parts.push_back(model.forward(x));
      if (!all.labels.defined()) ref_parts.push_back(float_model.forward(x).argmax(1));
    }
  }
  const at::Tensor simulated = at::cat(sim_parts);
  const at::Tensor float_simulated = at::cat(float_sim_parts);
  const at::Tensor target = all.labels.defined() ? all.labels : at::cat(ref_parts);

  nlohmann::json entry = {{"sim_top1", top1(simulated, target)},
                          {"float_sim", {{"top1", top1(float_simulated, target)}}},
                          {"examples", n},
                          {"export",
                           {{"nodes", exported.nodes},
                            {"integer_weight_layers", exported.integer_weight_layers},
                            {"float_outputs", exported.float_outputs},
                            {"float_kernels", exported.float_kernels},
                            {"bias_saturations", exported.bias_saturations},
                            {"weight_scales_raised", exported.weight_scales_raised},
                            {"clamped_scales", exported.clamped_scales}}}};

  // The integer engine: along the trace of a calq::nn model, node by node on an imported graph.
  // An op it cannot run is recorded, like a model ONNX Runtime rejects.
  at::Tensor engine;
  try {
    std::vector<at::Tensor> engine_parts;
    for (int64_t start = 0; start < n; start += c.batch_size) {
      const at::Tensor x = all.images.narrow(0, start, std::min(c.batch_size, n - start));
      engine_parts.push_back(
          model.imported_model
              ? deploy::run_integer(*model.imported_model->graph, {x}).outputs.at(0)
              : deploy::run_integer(*model.module, t, {x}).outputs.at(0));
    }
    engine = at::cat(engine_parts);
    entry["int_top1"] = top1(engine, target);
    entry["int_argmax_agree"] =
        engine.argmax(1).eq(simulated.argmax(1)).to(at::kDouble).mean().item<double>();
  } catch (const c10::Error& error) {
    engine = at::Tensor();
    entry["int_top1"] = nullptr;
    entry["int_error"] = error.what_without_backtrace();
  } catch (const std::exception& error) {
    engine = at::Tensor();
    entry["int_top1"] = nullptr;
    entry["int_error"] = error.what();
  }

  // ONNX Runtime.
  std::string why;
  deploy::OrtResult ort;
  bool ran = deploy::onnxruntime_available(&why);
  if (ran) {
    // A model ONNX Runtime rejects is a finding of the check, recorded, not the end of the run
    // whose models are all saved.
    deploy::OrtOptions options;
    options.threads = std::max<int64_t>(1, at::get_num_threads());
    options.batch = c.batch_size;
    try {
      ort = deploy::run_onnxruntime(onnx_path, {all.images}, options);
    } catch (const c10::Error& error) {
      why = error.what_without_backtrace();
      ran = false;
    }
  }
  if (!ran) {
    entry["ort_top1"] = nullptr;
    entry["argmax_agree"] = nullptr;
    entry["within_1_lsb"] = nullptr;
    entry["max_lsb_diff"] = nullptr;
    entry["ort_error"] = why;
    entry["float_sim"]["argmax_agree"] = nullptr;
    entry["float_sim"]["within_1_lsb"] = nullptr;
    entry["float_sim"]["max_lsb_diff"] = nullptr;
    std::cerr << "calq: deployment check without ONNX Runtime: " << why << "\n";
    return entry;
  }
  const at::Tensor deployed = ort.outputs.at(0);
  entry["ort_top1"] = top1(deployed, target);
  // Per-channel steps lie along axis 1 of the output ([N, C] or [N, C, H, W]).
  at::Tensor steps = output_steps(model, t).reshape({-1});
  std::vector<int64_t> step_shape(static_cast<size_t>(std::max<int64_t>(deployed.dim(), 1)), 1);
  if (steps.numel() > 1 && deployed.dim() >= 2 && deployed.size(1) == steps.numel()) {
    step_shape[1] = steps.numel();
  } else {
    steps = steps.max().reshape({1});  // a shape the steps do not follow: the coarsest step
  }
  steps = steps.reshape(step_shape);
  // Agreement of a simulation with the runtime, into `into`.
  auto compare = [&](const at::Tensor& sim, nlohmann::json& into) {
    into["argmax_agree"] =
        deployed.argmax(1).eq(sim.argmax(1)).to(at::kDouble).mean().item<double>();
    into["max_rel_diff"] =
        ((deployed - sim).abs().max() / sim.abs().max().clamp_min(1e-30)).item<double>();
    const at::Tensor lsb = ((deployed - sim).abs() / steps).to(at::kDouble);
    into["within_1_lsb"] = lsb.le(1.0 + 1e-6).to(at::kDouble).mean().item<double>();
    into["max_lsb_diff"] = lsb.max().item<double>();
  };
  compare(simulated, entry);
  compare(float_simulated, entry["float_sim"]);
  if (engine.defined()) {
    entry["ort_vs_int_max_abs"] = (deployed - engine).abs().max().item<double>();
  }
  if (runtime != nullptr) {
    *runtime = {
        {"onnxruntime", ort.version}, {"cpu", ort.cpu}, {"set", ws.test ? "test" : "validation"}};
  }
  return entry;
}

}  // namespace cli
}  // namespace calq
