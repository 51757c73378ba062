#include "calq/analysis/auto_recipe.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "calq/util/timer.h"

namespace calq {
namespace analysis {
namespace {

using ModelPtr = std::shared_ptr<torch::nn::Module>;

// Lexicographic: the primary key decides, the tie-breaks settle exact ties in order.
struct Score {
  double primary = -std::numeric_limits<double>::infinity();
  double tie_break = -std::numeric_limits<double>::infinity();
  double last_tie_break = -std::numeric_limits<double>::infinity();
  bool operator>(const Score& other) const {
    if (primary != other.primary) return primary > other.primary;
    if (tie_break != other.tie_break) return tie_break > other.tie_break;
    return last_tie_break > other.last_tie_break;
  }
};

// A calibrated candidate.
struct Built {
  std::string name;
  Recipe recipe;
  ModelPtr model;
  RecipeApplication application;
  OutputDivergence held_out;
  Score score;
};

Forward bind(const ModuleForward& forward, torch::nn::Module& model) {
  return [&forward, &model](const at::Tensor& x) { return forward(model, x); };
}

// The activation recipe `c` observed by `choice` (grid keywords kept, the old observer's
// keywords dropped).
FakeQuantConfig with_observer(const FakeQuantConfig& c, const ObserverChoice& choice) {
  FakeQuantConfig out = c;
  out.observer = choice.observer;
  out.qkwargs = nlohmann::json::object();
  const std::vector<std::string> valid = out.valid_keys();
  for (const auto& item : c.qkwargs.items()) {
    if (std::find(valid.begin(), valid.end(), item.key()) != valid.end()) {
      out.qkwargs[item.key()] = item.value();
    }
  }
  for (const auto& item : choice.kwargs.items()) out.qkwargs[item.key()] = item.value();
  out.validate();
  return out;
}

QConfig with_observer(QConfig q, const ObserverChoice& choice) {
  if (q.activation) q.activation = with_observer(*q.activation, choice);
  return q;
}

// The quantizers of a model by module path.
std::map<std::string, QuantPoint> points_by_name(torch::nn::Module& model) {
  std::map<std::string, QuantPoint> out;
  for (const QuantPoint& p : quantization_points(model)) out[p.name] = p;
  return out;
}

bool same_qparams(const FakeQuantizeImpl& a, const FakeQuantizeImpl& b) {
  const auto qa = a.qparams();
  const auto qb = b.qparams();
  return at::equal(qa.first, qb.first) && at::equal(qa.second, qb.second);
}

}  // namespace

std::string ObserverChoice::label() const {
  if (kwargs.empty()) return observer;
  std::string args;
  for (const auto& item : kwargs.items()) {
    args += args.empty() ? "" : ", ";
    if (kwargs.size() > 1) args += item.key() + "=";
    args += item.value().is_string() ? item.value().get<std::string>() : item.value().dump();
  }
  return observer + "(" + args + ")";
}

std::vector<ObserverChoice> default_observer_choices() {
  return {{"min_max", nlohmann::json::object()},   {"percentile", {{"percentile", 99.9}}},
          {"percentile", {{"percentile", 99.99}}}, {"percentile", {{"percentile", 99.999}}},
          {"kl", nlohmann::json::object()},        {"mse", nlohmann::json::object()}};
}

Promotion promotion_from_string(const std::string& name) {
  if (name == "int16") return Promotion::int16;
  if (name == "float") return Promotion::keep_float;
  TORCH_CHECK(false, "unknown promotion '", name, "'; valid promotions: int16, float");
}

std::string to_string(Promotion promotion) {
  return promotion == Promotion::int16 ? "int16" : "float";
}

namespace {

class Search {
 public:
  Search(const ModelFactory& factory, const ModuleForward& forward, const Recipe& base,
         const std::vector<at::Tensor>& calibration, const std::vector<at::Tensor>& held_out,
         const AutoOptions& options, AutoResult& result)
      : factory_(factory),
        forward_(forward),
        base_(base),
        calibration_(calibration),
        held_out_(held_out),
        options_(options),
        result_(result) {
    const int64_t n = std::min<int64_t>(options.search_batches(), calibration.size());
    search_.assign(calibration.begin(), calibration.begin() + n);
    // The float model's outputs: the reference of every comparison (before any change to
    // weights, so equalization and bias correction are judged against the original model).
    reference_model_ = factory_(plain(base_));
    set_all(*reference_model_, FakeQuantState::FLOAT);
    torch::NoGradGuard no_grad;
    for (const at::Tensor& x : held_out_) held_reference_.push_back(forward_(*reference_model_, x));
    for (const at::Tensor& x : search_) search_reference_.push_back(forward_(*reference_model_, x));
  }

  // The recipe with `choice` on every quantized activation (and unsigned grids if allowed).
  Recipe recipe_for(const ObserverChoice& choice, bool equalized) const {
    Recipe r = plain(base_);
    r.global = with_observer(base_.global, choice);
    for (auto& item : r.overrides.by_type) item.second = with_observer(item.second, choice);
    for (auto& item : r.overrides.by_name) item.second = with_observer(item.second, choice);
    if (options_.unsigned_activations()) {
      r.overrides = unsigned_activation_overrides(*reference_model_, r.global, r.overrides);
    }
    r.steps.cross_layer_equalization(equalized);
    if (equalized) r.steps.equalization(options_.equalization_options());
    return r;
  }

  Built build(const std::string& name, const Recipe& recipe) {
    Built b;
    b.name = name;
    b.recipe = recipe;
    b.model = factory_(recipe);
    TORCH_CHECK(b.model != nullptr, "auto_recipe: the model factory returned no model");
    b.application = apply_recipe(*b.model, bind(forward_, *b.model), recipe, calibration_);
    result_.calibrations += 1;
    score(b);
    return b;
  }

  void score(Built& b) {
    b.held_out = evaluate(*b.model, held_out_, held_reference_);
    result_.held_out_evaluations += 1;
    rank(b);
    CandidateResult c;
    c.name = b.name;
    c.held_out = b.held_out;
    c.score = options_.score() ? b.score.primary : -b.held_out.divergence();
    result_.candidates.push_back(c);
  }

  // Label-free: a candidate is eligible when its top-1 agreement with the float model is at
  // least the best single observer's (agreement_floor_), so auto never ends below any single
  // observer in the figure calq reports; among the eligible the lowest output KL wins. KL
  // averages over every image and class, where agreement counts the few images near a
  // decision boundary (at 8 bits candidates differ there by a handful of 5,000 images: noise).
  void rank(Built& b) const {
    const OutputDivergence& d = b.held_out;
    const double agreement = d.classifier ? d.top1_agreement : 0.0;
    if (options_.score()) {
      b.score.primary = options_.score()(*b.model);
      b.score.tie_break = -d.divergence();  // then KL, then agreement
      b.score.last_tie_break = agreement;
    } else {
      b.score.primary = agreement >= agreement_floor_ ? 1.0 : 0.0;
      b.score.tie_break = -d.divergence();
      b.score.last_tie_break = agreement;
    }
  }

  double search_divergence(torch::nn::Module& model) {
    result_.search_evaluations += 1;
    return evaluate(model, search_, search_reference_).divergence();
  }

  OutputDivergence evaluate(torch::nn::Module& model, const std::vector<at::Tensor>& batches,
                            const std::vector<at::Tensor>& reference) {
    torch::NoGradGuard no_grad;
    DivergenceMeter meter;
    for (size_t i = 0; i < batches.size(); ++i)
      meter.add(reference[i], forward_(model, batches[i]));
    return meter.result();
  }

  // Uniform candidates and the per-layer search, on the original or equalized model.
  Built family(bool equalized) {
    const std::string prefix = equalized ? "cle+" : "";
    std::vector<Built> uniform;
    for (const ObserverChoice& choice : options_.choices()) {
      uniform.push_back(build(prefix + choice.label(), recipe_for(choice, equalized)));
    }
    if (!equalized) {
      for (const Built& u : uniform) {
        if (u.held_out.classifier) {
          agreement_floor_ = std::max(agreement_floor_, u.held_out.top1_agreement);
        }
      }
      for (Built& u : uniform) rank(u);
    }
    size_t best = 0;
    for (size_t i = 1; i < uniform.size(); ++i) {
      if (uniform[i].score > uniform[best].score) best = i;
    }
    if (!options_.per_layer() || uniform.size() < 2) return uniform[best];

    // Coordinate descent from the best uniform candidate: each activation point in execution
    // order takes the candidate scale that minimizes the output divergence on the search
    // batches, the others at their current choices.
    std::vector<std::map<std::string, QuantPoint>> candidates;
    for (auto& b : uniform) candidates.push_back(points_by_name(*b.model));
    Built working = build(prefix + "per-layer", uniform[best].recipe);
    result_.candidates.pop_back();  // scored again below, with its final choices
    torch::nn::Module& model = *working.model;
    const std::vector<QuantPoint> order =
        quantization_points(model, bind(forward_, model), search_[0]);
    std::vector<PointDecision> decisions;
    std::map<std::string, size_t> chosen;
    double current = search_divergence(model);
    for (const QuantPoint& p : order) {
      if (!p.has_output()) continue;
      PointDecision decision;
      decision.name = p.name;
      decision.type = p.type;
      size_t pick = best;
      double pick_value = current;
      std::vector<double> values(uniform.size(), current);
      for (size_t c = 0; c < uniform.size(); ++c) {
        if (c == best) continue;
        const FakeQuantizeImpl& source = *candidates[c].at(p.name).output;
        if (same_qparams(source, *candidates[best].at(p.name).output)) continue;  // same scale
        p.output->load_calibration(source);
        values[c] = search_divergence(model);
        if (values[c] < pick_value) {
          pick = c;
          pick_value = values[c];
        }
      }
      p.output->load_calibration(*candidates[pick].at(p.name).output);
      set_all(model, FakeQuantState::VALIDATION);
      current = pick_value;
      chosen[p.name] = pick;
      decision.chosen = options_.choices()[pick].label();
      for (size_t c = 0; c < uniform.size(); ++c) {
        decision.search.emplace_back(options_.choices()[c].label(), values[c]);
      }
      decisions.push_back(decision);
    }
    // The per-layer recipe: the best uniform recipe, with by_name overrides where another
    // candidate won (that module's whole resolved qconfig in the winning candidate).
    Recipe per_layer = uniform[best].recipe;
    for (const auto& item : chosen) {
      if (item.second == best) continue;
      const QuantPoint& winner = candidates[item.second].at(item.first);
      per_layer.overrides.by_name[item.first] = *winner.module->resolved_qconfig();
    }
    // Rebuild from the recipe: what a user gets from `calibrate --qconfig`; it must hold the
    // scales the search found.
    Built rebuilt = build(prefix + "per-layer", per_layer);
    const auto searched = points_by_name(model);
    for (const auto& item : points_by_name(*rebuilt.model)) {
      if (!item.second.has_output()) continue;
      TORCH_CHECK(same_qparams(*item.second.output, *searched.at(item.first).output),
                  "auto_recipe: the per-layer recipe does not reproduce the searched scale of '",
                  item.first, "'; calibration must be deterministic");
    }
    decisions_[prefix] = decisions;
    Built winner = uniform[best];
    if (rebuilt.score > winner.score) winner = rebuilt;
    return winner;
  }

  Built run() {
    std::vector<Built> finalists;
    finalists.push_back(family(false));
    if (options_.equalization()) finalists.push_back(family(true));
    size_t best = 0;
    for (size_t i = 1; i < finalists.size(); ++i) {
      if (finalists[i].score > finalists[best].score) best = i;
    }
    Built chosen = finalists[best];
    if (options_.bias_correction()) {
      Recipe corrected = chosen.recipe;
      corrected.steps.bias_correction(true);
      Built b = build(chosen.name + "+bias_correction", corrected);
      if (b.score > chosen.score) chosen = b;
    }
    const std::string prefix = chosen.recipe.steps.cross_layer_equalization() ? "cle+" : "";
    if (decisions_.count(prefix) > 0) result_.points = decisions_.at(prefix);
    if (options_.target_drop() || options_.target_sqnr_db()) chosen = promote(chosen);
    for (auto& c : result_.candidates) c.chosen = c.name == chosen.name;
    return chosen;
  }

  bool target_met(const OutputDivergence& d) const {
    if (options_.target_drop() && d.classifier) {
      return d.disagreement_pct() <= *options_.target_drop() + 1e-12;
    }
    if (options_.target_sqnr_db() && !d.classifier) return d.sqnr_db >= *options_.target_sqnr_db();
    TORCH_CHECK(!options_.target_drop() || d.classifier,
                "auto_recipe: target_drop is for classifiers (top-1 agreement); this model's "
                "output is not [N, C]: use target_sqnr_db");
    TORCH_CHECK(!options_.target_sqnr_db() || !d.classifier,
                "auto_recipe: target_sqnr_db is for non-classifiers; use target_drop");
    return true;
  }

  // Promotes the points whose float output recovers the most until the target holds. A point
  // is promoted whole: its output and its weight. On a runtime without int16 kernels the layer
  // computes in float once its output is int16 (DequantizeLinear -> float op ->
  // QuantizeLinear), so 16-bit weights there cost weight memory only; and once the activations
  // are wide, the 8-bit weights are what is left of the error (the zoo ResNet at W8A16 still
  // disagreed with float on 0.9 % of the test images, at W16A16 on none).
  Built promote(Built current) {
    result_.target_met = target_met(current.held_out);
    if (result_.target_met) return current;
    const ModelPtr ranked = current.model;  // kept alive: `resolved` points into it
    torch::nn::Module& model = *ranked;
    const std::vector<QuantPoint> points =
        quantization_points(model, bind(forward_, model), search_[0]);
    const double all = search_divergence(model);
    std::vector<std::pair<double, std::string>> gains;
    for (const QuantPoint& p : points) {
      p.set_state(FakeQuantState::FLOAT);
      gains.emplace_back(all - search_divergence(model), p.name);
      p.set_state(FakeQuantState::VALIDATION);
    }
    std::stable_sort(gains.begin(), gains.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    const auto resolved = points_by_name(model);
    for (const auto& gain : gains) {
      Recipe r = current.recipe;
      QConfig q = *resolved.at(gain.second).module->resolved_qconfig();
      if (options_.promotion() == Promotion::keep_float) {
        q.activation = c10::nullopt;
        q.weight = c10::nullopt;
      } else {
        auto sixteen_bits = [](FakeQuantConfig c) {
          c.qkwargs["dtype"] = "qint16";
          c.qkwargs.erase("quant_min");
          c.qkwargs.erase("quant_max");
          c.validate();
          return c;
        };
        if (q.activation) {
          q.activation = sixteen_bits(with_observer(*q.activation, ObserverChoice{"min_max", {}}));
        }
        // The weight keeps its observer (per channel); only the grid widens.
        const bool weighted = !resolved.at(gain.second).module->weight_fake_quant().is_empty();
        if (q.weight && weighted) q.weight = sixteen_bits(*q.weight);
      }
      r.overrides.by_name[gain.second] = q;
      result_.promoted.push_back(gain.second);
      for (auto& d : result_.points) {
        if (d.name == gain.second) d.promoted = to_string(options_.promotion());
      }
      current = build(current.name + "+" + to_string(options_.promotion()) + ":" + gain.second, r);
      if (target_met(current.held_out)) {
        result_.target_met = true;
        return current;
      }
    }
    result_.target_met = false;
    return current;
  }

 private:
  static Recipe plain(const Recipe& r) {
    Recipe out = r;
    out.steps = RecipeSteps();
    out.notes = nullptr;
    return out;
  }

  const ModelFactory& factory_;
  const ModuleForward& forward_;
  Recipe base_;
  const std::vector<at::Tensor>& calibration_;
  const std::vector<at::Tensor>& held_out_;
  const AutoOptions& options_;
  AutoResult& result_;
  std::vector<at::Tensor> search_;
  ModelPtr reference_model_;
  std::vector<at::Tensor> held_reference_, search_reference_;
  std::map<std::string, std::vector<PointDecision>> decisions_;
  // The best top-1 agreement of the single-observer candidates (plain model); -inf before.
  double agreement_floor_ = -std::numeric_limits<double>::infinity();
};

nlohmann::json number(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}

nlohmann::json divergence_json(const OutputDivergence& d) {
  nlohmann::json j = {{"samples", d.samples}, {"sqnr_db", number(d.sqnr_db)}};
  if (d.classifier) {
    j["kl"] = number(d.kl);
    j["top1_agreement_pct"] = d.top1_agreement;
  }
  return j;
}

}  // namespace

AutoResult auto_recipe(const ModelFactory& factory, const ModuleForward& forward,
                       const Recipe& base, const std::vector<at::Tensor>& calibration,
                       const std::vector<at::Tensor>& held_out, const AutoOptions& options) {
  TORCH_CHECK(!calibration.empty(), "auto_recipe: no calibration batches were given");
  TORCH_CHECK(!held_out.empty(), "auto_recipe: no held-out batches were given; the choice among ",
              "candidates must be made on data that was not calibrated on");
  TORCH_CHECK(!options.choices().empty(), "auto_recipe: no candidate observers were given");
  TORCH_CHECK(options.search_batches() >= 1, "auto_recipe: search_batches must be >= 1, got ",
              options.search_batches());
  TORCH_CHECK(base.global.activation.has_value(),
              "auto_recipe: the base recipe's global activation recipe is float; auto chooses "
              "activation observers, so it needs quantized activations");
  for (const ObserverChoice& choice : options.choices()) {
    with_observer(*base.global.activation, choice);  // validates names and keywords early
  }
  util::Timer timer;
  AutoResult result;
  result.label_free_score = !options.score();
  Search search(factory, forward, base, calibration, held_out, options, result);
  Built chosen = search.run();
  result.recipe = chosen.recipe;
  result.model = chosen.model;
  result.application = chosen.application;
  result.held_out = chosen.held_out;
  result.seconds = timer.seconds();
  result.recipe.notes = result.to_json();
  result.recipe.notes.erase("recipe");
  return result;
}

std::string AutoResult::summary(const deploy::Profile& profile) const {
  std::ostringstream out;
  std::string chosen;
  for (const auto& c : candidates) {
    if (c.chosen) chosen = c.name;
  }
  out << "auto: chose '" << chosen << "' among " << candidates.size()
      << " scored candidates (held-out data, against the float model; score: "
      << (label_free_score ? "the lowest KL among those with top-1 agreement at least the best "
                             "single observer's"
                           : "the caller's")
      << "):\n";
  for (const auto& c : candidates) {
    out << (c.chosen ? "  * " : "    ") << c.name;
    if (c.held_out.classifier) {
      out << ": top-1 agreement " << c.held_out.top1_agreement << " %, KL " << c.held_out.kl;
    } else {
      out << ": output SQNR " << c.held_out.sqnr_db << " dB";
    }
    out << ", score " << c.score << "\n";
  }
  if (!points.empty()) {
    out << "per point (output divergence on the search batches with this point on each "
           "candidate):\n";
    for (const auto& p : points) {
      out << "  " << p.name << " (" << p.type << "): " << p.chosen;
      if (!p.promoted.empty()) out << ", promoted to " << p.promoted;
      out << "  [";
      for (size_t i = 0; i < p.search.size(); ++i) {
        out << (i ? ", " : "") << p.search[i].first << " " << p.search[i].second;
      }
      out << "]\n";
    }
  }
  if (recipe.steps.cross_layer_equalization()) {
    out << "cross-layer equalization: kept (scored better than without); "
        << application.equalization.str() << "\n";
  }
  if (recipe.steps.bias_correction()) {
    out << "bias correction: kept (scored better than without); "
        << application.bias_correction.corrected.size() << " layers corrected\n";
  }
  if (!promoted.empty()) {
    out << "promoted (most output recovery first): ";
    for (size_t i = 0; i < promoted.size(); ++i) out << (i ? ", " : "") << promoted[i];
    out << (target_met ? " -- target met" : " -- target NOT met with every point promoted") << "\n";
    const bool int16 =
        recipe.overrides.by_name.size() > 0 && !profile.integer_activation(QuantDtype::qint16);
    if (int16) {
      out << "cost on " << profile.name
          << ": int16 activations run as DequantizeLinear -> float op -> QuantizeLinear (no "
             "integer kernel); the promoted layers compute in float there, and their int16 "
             "weights take twice the memory of int8\n";
    }
  } else if (!target_met) {
    out << "target NOT met\n";
  }
  out << "result on the held-out data: ";
  if (held_out.classifier) {
    out << "top-1 agreement " << held_out.top1_agreement << " %, KL " << held_out.kl;
  } else {
    out << "output SQNR " << held_out.sqnr_db << " dB";
  }
  out << " (" << calibrations << " calibrations, " << search_evaluations << " search passes, "
      << held_out_evaluations << " held-out passes, " << seconds << " s)\n";
  return out.str();
}

nlohmann::json AutoResult::to_json() const {
  nlohmann::json candidates_json = nlohmann::json::array();
  for (const auto& c : candidates) {
    candidates_json.push_back({{"name", c.name},
                               {"held_out", divergence_json(c.held_out)},
                               {"score", number(c.score)},
                               {"chosen", c.chosen}});
  }
  nlohmann::json points_json = nlohmann::json::array();
  for (const auto& p : points) {
    nlohmann::json search = nlohmann::json::object();
    for (const auto& s : p.search) search[s.first] = number(s.second);
    points_json.push_back({{"name", p.name},
                           {"type", p.type},
                           {"chosen", p.chosen},
                           {"promoted", p.promoted},
                           {"search_divergence", search}});
  }
  return {{"recipe", recipe.to_json()},
          {"score", label_free_score ? "-KL against the float model (held-out)" : "caller's"},
          {"candidates", candidates_json},
          {"points", points_json},
          {"promoted", promoted},
          {"target_met", target_met},
          {"held_out", divergence_json(held_out)},
          {"cost",
           {{"calibrations", calibrations},
            {"search_evaluations", search_evaluations},
            {"held_out_evaluations", held_out_evaluations},
            {"seconds", seconds}}}};
}

}  // namespace analysis
}  // namespace calq
