#include "calq/fake_quantize.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "calq/quant/fake_quant.h"
#include "calq/quant/qparams.h"
#include "observers/kwargs.h"
#include "quant/small_tensor.h"

namespace calq {

namespace {
thread_local bool passing_through = false;
}  // namespace

PassThroughScope::PassThroughScope() : previous_(passing_through) {
  passing_through = true;
}

PassThroughScope::~PassThroughScope() {
  passing_through = previous_;
}

bool PassThroughScope::active() {
  return passing_through;
}

namespace {

struct StateName {
  FakeQuantState state;
  const char* name;
};
constexpr StateName kStates[] = {{FakeQuantState::QAT, "qat"},
                                 {FakeQuantState::CALIBRATION, "calibration"},
                                 {FakeQuantState::VALIDATION, "validation"},
                                 {FakeQuantState::FLOAT, "float"}};

struct MethodName {
  FakeQuantMethod method;
  const char* name;
};
constexpr MethodName kMethods[] = {{FakeQuantMethod::fake_quant, "fake_quant"},
                                   {FakeQuantMethod::lsq, "lsq"},
                                   {FakeQuantMethod::pact, "pact"}};

constexpr double kDefaultPactAlpha = 6.0;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

}  // namespace

FakeQuantState fake_quant_state_from_string(const std::string& name) {
  std::vector<std::string> names;
  for (const auto& s : kStates) {
    if (lower(name) == s.name) {
      return s.state;
    }
    names.push_back(s.name);
  }
  TORCH_CHECK(false, "unknown fake-quant state '", name, "'; valid states: ", detail::join(names));
}

std::string to_string(FakeQuantState state) {
  for (const auto& s : kStates) {
    if (s.state == state) {
      return s.name;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "FakeQuantState ", static_cast<int>(state), " has no name");
}

FakeQuantMethod fake_quant_method_from_string(const std::string& name) {
  std::vector<std::string> names;
  for (const auto& m : kMethods) {
    if (name == m.name) {
      return m.method;
    }
    names.push_back(m.name);
  }
  TORCH_CHECK(false, "unknown fake-quant method '", name,
              "'; valid methods: ", detail::join(names));
}

std::string to_string(FakeQuantMethod method) {
  for (const auto& m : kMethods) {
    if (m.method == method) {
      return m.name;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "FakeQuantMethod ", static_cast<int>(method), " has no name");
}

std::vector<std::string> fake_quant_method_keys(FakeQuantMethod method) {
  switch (method) {
    case FakeQuantMethod::fake_quant:
      return {};
    case FakeQuantMethod::lsq:
      return {"grad_factor"};
    case FakeQuantMethod::pact:
      return {"alpha", "init_alpha_from_observer"};
  }
  return {};
}

FakeQuantizeOptions fake_quantize_options(FakeQuantMethod method,
                                          const nlohmann::json& method_kwargs) {
  const std::string context = "fake-quant method '" + to_string(method) + "'";
  detail::check_kwargs(method_kwargs, fake_quant_method_keys(method), context);
  FakeQuantizeOptions options;
  if (method == FakeQuantMethod::lsq) {
    options.lsq_grad_factor(detail::kwarg_double(method_kwargs, "grad_factor", -1.0, context));
  }
  if (method == FakeQuantMethod::pact) {
    options.pact_alpha(detail::kwarg_double(method_kwargs, "alpha", kDefaultPactAlpha, context));
    options.init_alpha_from_observer(
        detail::kwarg_bool(method_kwargs, "init_alpha_from_observer", true, context));
  }
  return options;
}

FakeQuantizeImpl::FakeQuantizeImpl(FakeQuantMethod method, observers::Observer observer,
                                   FakeQuantizeOptions options)
    : method_(method), observer_(std::move(observer)), options_(options) {
  TORCH_CHECK(!observer_.is_empty(), "FakeQuantize: the observer is empty (nullptr)");
  const std::string context = "fake-quant method '" + to_string(method_) + "'";
  register_module("observer", observer_);
  TORCH_CHECK(std::isfinite(options_.lsq_grad_factor()), context,
              ": grad_factor = ", options_.lsq_grad_factor(),
              " is invalid; it must be finite (<= 0 selects 1 / sqrt(numel * quant_max))");
  if (method_ == FakeQuantMethod::lsq && spec().power_of_two()) {
    // eq. 6b: on a power-of-two grid the logarithm is learned and the scale derived from it.
    log2_scale_ = register_parameter("log2_scale", at::empty({0}, at::kFloat));
    scale_ = register_buffer("scale", at::empty({0}, at::kFloat));
  } else if (method_ == FakeQuantMethod::lsq) {
    scale_ = register_parameter("scale", at::empty({0}, at::kFloat));
  } else {
    scale_ = register_buffer("scale", at::empty({0}, at::kFloat));
  }
  zero_point_ = register_buffer("zero_point", at::empty({0}, at::kInt));
  if (method_ == FakeQuantMethod::pact) {
    TORCH_CHECK(!spec().per_channel() && spec().symmetric(), context,
                " is per-tensor with zero point 0 only (one learned clip alpha: [-alpha, alpha], "
                "or [0, alpha] on an unsigned grid); got spec ",
                spec().str(), ". For weights use fake_quant or lsq, or set per_channel false");
    const double alpha = options_.pact_alpha();
    TORCH_CHECK(std::isfinite(alpha) && alpha > 0.0, context, ": alpha = ", alpha,
                " is invalid; it must be finite and > 0");
    alpha_ = register_parameter("alpha", at::full({1}, alpha, at::kFloat));
  }
  initialized_ = register_buffer("initialized", at::zeros({1}, at::kByte));
}

const QuantSpec& FakeQuantizeImpl::spec() const {
  return observer_->spec();
}

bool FakeQuantizeImpl::initialized() const {
  return initialized_.item<uint8_t>() != 0;
}

namespace {

// |v| floored at kMinScale, in place (no autograd record: like an optimizer step).
void project_positive(at::Tensor& learned) {
  if (learned.numel() == 0) return;
  // Checked on the raw values (a handful of scales, every forward): ATen calls would cost more.
  const c10::optional<bool> valid =
      calq::detail::all_float_values(learned, [](float v) { return v >= kMinScale; });
  if (valid ? *valid : (learned >= kMinScale).all().item<bool>()) return;
  learned.abs_().clamp_min_(kMinScale);
}

// The learned logarithm kept within half an octave of the clamped exponents: beyond, the
// straight-through gradient would move it further without changing the scale.
void project_log2(at::Tensor& log2_scale) {
  if (log2_scale.numel() == 0) return;
  const double lo = kPowerOfTwoMinExponent - 0.5;
  const double hi = kPowerOfTwoMaxExponent + 0.5;
  const c10::optional<bool> valid = calq::detail::all_float_values(
      log2_scale, [&](float v) { return std::isfinite(v) && v >= lo && v <= hi; });
  if (valid.value_or(false)) return;
  TORCH_CHECK(at::isfinite(log2_scale).all().item<bool>(),
              "FakeQuantize(lsq): log2_scale became non-finite; lower the learning rate");
  log2_scale.clamp_(lo, hi);
}

// Exponents of a power-of-two lsq scale before clamping, as the forward rounds them.
bool log2_scale_clamped(const at::Tensor& log2_scale) {
  const at::Tensor values = detail::to_double_vector(log2_scale);
  for (int64_t i = 0; i < values.numel(); ++i) {
    const double k = std::floor(values.data_ptr<double>()[i] + 0.5);
    if (k < kPowerOfTwoMinExponent || k > kPowerOfTwoMaxExponent) return true;
  }
  return false;
}

at::Tensor log2_of(const at::Tensor& power_of_two_scale) {
  return at::log2(power_of_two_scale.to(at::kDouble)).to(at::kFloat);  // exact: integers
}

// Whether two specs describe the same grid for a scale: rounding only changes how values are
// rounded onto the grid, not the grid.
bool same_grid(const QuantSpec& a, const QuantSpec& b) {
  QuantSpec x = a;
  x.rounding(b.rounding());
  return x == b;
}

std::string grid_change(const QuantSpec& from, const QuantSpec& to) {
  std::vector<std::string> parts;
  if (from.quant_min() != to.quant_min() || from.quant_max() != to.quant_max() ||
      from.dtype() != to.dtype()) {
    parts.push_back(to_string(from.dtype()) + "[" + std::to_string(from.quant_min()) + "," +
                    std::to_string(from.quant_max()) + "] -> " + to_string(to.dtype()) + "[" +
                    std::to_string(to.quant_min()) + "," + std::to_string(to.quant_max()) + "]");
  }
  if (from.symmetric() != to.symmetric()) {
    parts.push_back(std::string(from.symmetric() ? "symmetric" : "affine") + " -> " +
                    (to.symmetric() ? "symmetric" : "affine"));
  }
  if (from.power_of_two() != to.power_of_two()) {
    parts.push_back(std::string(from.power_of_two() ? "power-of-two" : "free") + " scale -> " +
                    (to.power_of_two() ? "power-of-two (rounded up)" : "free"));
  }
  return detail::join(parts) + ": scale derived from the calibrated range";
}

}  // namespace

void FakeQuantizeImpl::project_parameters() {
  at::NoGradGuard guard;
  if (log2_scale_.defined()) project_log2(log2_scale_);
  if (method_ == FakeQuantMethod::lsq && !log2_scale_.defined()) project_positive(scale_);
  if (alpha_.defined()) project_positive(alpha_);
}

at::Tensor FakeQuantizeImpl::learned_scale() const {
  return learned_power_of_two_scale(log2_scale_);
}

void FakeQuantizeImpl::set_scale_state(const at::Tensor& scale, const at::Tensor& zero_point) {
  at::NoGradGuard guard;
  scale_.set_(scale.detach().to(at::kFloat).contiguous().clone());
  zero_point_.set_(zero_point.detach().to(at::kInt).contiguous().clone());
}

double FakeQuantizeImpl::pact_alpha_value(bool observer_had_data) const {
  if (!initialized() && options_.init_alpha_from_observer() && observer_had_data) {
    at::Tensor lo, hi;
    std::tie(lo, hi) = observer_->range();
    const double bound = std::max(std::abs(lo.item<double>()), std::abs(hi.item<double>()));
    // A zero range (all-zero calibration data) would make alpha 0; keep the scale floor.
    return std::max(bound, kMinScale * pact_steps(spec()));
  }
  return std::max(std::abs(alpha_.item<double>()), kMinScale);
}

void FakeQuantizeImpl::prepare_qparams(bool observer_had_data) {
  at::NoGradGuard guard;
  switch (method_) {
    case FakeQuantMethod::fake_quant: {
      const int64_t batches = observer_->batches_seen();
      if (observer_->ready() && (batches != computed_at_batches_ || !initialized())) {
        at::Tensor s, zp;
        std::tie(s, zp) = observer_->qparams();
        set_scale_state(s, zp);
        initialized_.fill_(1);
        computed_at_batches_ = batches;
      }
      break;
    }
    case FakeQuantMethod::lsq:
      if (!initialized() && observer_->has_data()) {
        at::Tensor s, zp;
        std::tie(s, zp) = observer_->qparams();
        if (log2_scale_.defined()) {
          log2_scale_.set_(log2_of(s));  // the observer's scale is a power of two here
        }
        set_scale_state(s, zp);
        initialized_.fill_(1);
      }
      // Projection after an optimizer step: a step across zero (tiny per-channel weight
      // scales under Adam) would make the scale invalid; its magnitude is the nearest valid
      // value and keeps training continuous.
      if (log2_scale_.defined()) {
        project_log2(log2_scale_);
      } else {
        project_positive(scale_);
      }
      break;
    case FakeQuantMethod::pact:
      if (!initialized()) {
        alpha_.fill_(pact_alpha_value(observer_had_data));
        initialized_.fill_(1);
      }
      project_positive(alpha_);
      set_scale_state(at::full({1}, pact_scale(alpha_.item<double>(), spec()), at::kFloat),
                      at::zeros({1}, at::kInt));
      break;
  }
  TORCH_CHECK(initialized() && scale_.numel() > 0, "FakeQuantize(", to_string(method_), ", ",
              observer_->kind(),
              "): no scale yet: the observer has no data and no scale was "
              "loaded. Run batches in state CALIBRATION or QAT (or load calibrated "
              "observer parameters) before quantizing in state ",
              to_string(state_));
}

at::Tensor FakeQuantizeImpl::forward(const at::Tensor& x) {
  at::Tensor y = quantize(x);
  if (tap_) tap_(x, y);
  return y;
}

at::Tensor FakeQuantizeImpl::quantize(const at::Tensor& x) {
  TORCH_CHECK(x.defined() && at::isFloatingType(x.scalar_type()),
              "FakeQuantize.forward: x must be a defined floating tensor");
  // A trace's example input must not reach the observer (a running-average min_max that
  // saw zeros first keeps a range near zero) nor initialize lsq/pact parameters.
  if (passing_through) return x;
  bool had_data = observer_->has_data();
  switch (state_) {
    case FakeQuantState::CALIBRATION:
      observer_->update(observer_input_ ? observer_input_(x.detach()) : x.detach());
      return x;
    case FakeQuantState::QAT:
      observer_->update(observer_input_ ? observer_input_(x.detach()) : x.detach());
      break;
    case FakeQuantState::VALIDATION:
      break;
    case FakeQuantState::FLOAT:
      return x;
  }
  prepare_qparams(had_data);
  switch (method_) {
    case FakeQuantMethod::fake_quant:
      return fake_quantize(x, scale_, zero_point_, spec());
    case FakeQuantMethod::lsq: {
      if (!log2_scale_.defined()) {
        return lsq_fake_quantize(x, scale_, zero_point_, spec(), options_.lsq_grad_factor());
      }
      const at::Tensor s = learned_scale();
      {
        at::NoGradGuard guard;
        scale_.set_(s.detach().clone());
      }
      return lsq_fake_quantize(x, s, zero_point_, spec(), options_.lsq_grad_factor());
    }
    case FakeQuantMethod::pact:
      return pact_fake_quantize(x, alpha_, spec());
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled fake-quant method");
}

std::pair<at::Tensor, at::Tensor> FakeQuantizeImpl::qparams() const {
  at::NoGradGuard guard;
  auto no_scale = [&]() {
    TORCH_CHECK(false, "FakeQuantize(", to_string(method_), ", ", observer_->kind(),
                "): no scale yet: the observer has no data and no scale was loaded. Run "
                "batches in state CALIBRATION or QAT (or load calibrated observer parameters) "
                "first");
  };
  switch (method_) {
    case FakeQuantMethod::fake_quant:
      if (observer_->ready() &&
          (observer_->batches_seen() != computed_at_batches_ || !initialized())) {
        return observer_->qparams();
      }
      if (!initialized() || scale_.numel() == 0) no_scale();
      return {scale_.detach().clone(), zero_point_.clone()};
    case FakeQuantMethod::lsq: {
      if (!initialized()) {
        if (!observer_->has_data()) no_scale();
        return observer_->qparams();
      }
      at::Tensor s;
      if (log2_scale_.defined()) {
        at::Tensor latent = log2_scale_.detach().clone();
        project_log2(latent);
        s = learned_power_of_two_scale(latent);
      } else {
        s = scale_.detach().clone();
        project_positive(s);
      }
      return {s.to(at::kFloat), zero_point_.clone()};
    }
    case FakeQuantMethod::pact: {
      const double alpha = pact_alpha_value(observer_->has_data());
      return {at::full({1}, pact_scale(alpha, spec()), at::kFloat), at::zeros({1}, at::kInt)};
    }
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled fake-quant method");
}

std::pair<at::Tensor, at::Tensor> FakeQuantizeImpl::represented_range() const {
  at::Tensor s, zp;
  std::tie(s, zp) = qparams();
  const at::Tensor scale = s.to(at::kDouble).reshape({-1});
  const at::Tensor zero = zp.to(at::kDouble).reshape({-1});
  return {(static_cast<double>(spec().quant_min()) - zero) * scale,
          (static_cast<double>(spec().quant_max()) - zero) * scale};
}

at::Tensor FakeQuantizeImpl::fake_quantize_at(const at::Tensor& weight,
                                              const at::Tensor& scale) const {
  const at::Tensor zp = qparams().second;
  TORCH_CHECK(scale.defined() && scale.numel() == zp.numel(), "fake_quantize_at: ", zp.numel(),
              " scales expected");
  return fake_quantize(weight, scale.to(at::kFloat).reshape(zp.sizes()), zp, spec());
}

at::Tensor FakeQuantizeImpl::integer_levels(const at::Tensor& weight,
                                            const at::Tensor& scale_override) const {
  at::NoGradGuard no_grad;
  at::Tensor s, zp;
  std::tie(s, zp) = qparams();
  // The simulated weight without running forward (which would observe outside VALIDATION).
  at::Tensor simulated;
  // An override equal to the own scale keeps the method's own forward (pact's clamp).
  if (scale_override.defined() && !at::equal(scale_override.to(at::kFloat).reshape(s.sizes()), s)) {
    simulated = fake_quantize_at(weight, scale_override);
    s = scale_override.to(at::kFloat).reshape(zp.sizes());
  } else {
    simulated = method_ == FakeQuantMethod::pact
                    ? pact_fake_quantize(weight, alpha_.detach(), spec())
                    : fake_quantize(weight, s, zp, spec());
  }
  at::Tensor scale = s.to(at::kDouble);
  at::Tensor zero = zp.to(at::kDouble);
  if (spec().per_channel()) {
    std::vector<int64_t> shape(weight.dim(), 1);
    const int64_t axis = spec().ch_axis() < 0 ? spec().ch_axis() + weight.dim() : spec().ch_axis();
    shape[axis] = -1;
    scale = scale.reshape(shape);
    zero = zero.reshape(shape);
  }
  // level * s was rounded to float once: dividing recovers the level within far less than 1/2.
  return (simulated.to(at::kDouble) / scale).round() + zero;
}

StoredGrid FakeQuantizeImpl::stored_grid(bool uint8_activations) const {
  TORCH_CHECK(!spec().per_channel(), "stored_grid: per-channel quantizer (", spec().str(),
              "); a runtime stores activations on one grid per tensor");
  at::Tensor s, zp;
  std::tie(s, zp) = qparams();
  return calq::stored_grid(spec(), s.item<float>(), zp.item<int64_t>(), uint8_activations);
}

bool FakeQuantizeImpl::scale_clamped() const {
  if (!spec().power_of_two()) return false;
  switch (method_) {
    case FakeQuantMethod::fake_quant:
      return observer_->power_of_two_clamped();
    case FakeQuantMethod::lsq:
      return initialized() ? log2_scale_clamped(log2_scale_) : observer_->power_of_two_clamped();
    case FakeQuantMethod::pact:
      return power_of_two_clamped(pact_alpha_value(observer_->has_data()) / pact_steps(spec()),
                                  PowerOfTwoRounding::nearest);
  }
  return false;
}

CalibrationLoad FakeQuantizeImpl::load_calibration(const FakeQuantizeImpl& source) {
  at::NoGradGuard guard;
  CalibrationLoad result;
  const QuantSpec& from = source.spec();
  const QuantSpec& to = spec();
  auto mismatch = [&](std::string why) {
    result.outcome = CalibrationLoad::Outcome::mismatched;
    result.detail = std::move(why);
    return result;
  };
  if (from.per_channel() != to.per_channel()) {
    return mismatch(std::string(from.per_channel() ? "per-channel" : "per-tensor") +
                    " calibration into a " + (to.per_channel() ? "per-channel" : "per-tensor") +
                    " quantizer");
  }
  if (to.per_channel() && from.ch_axis() != to.ch_axis()) {
    return mismatch("channel axis " + std::to_string(from.ch_axis()) + " calibration into axis " +
                    std::to_string(to.ch_axis()));
  }
  at::Tensor source_scale, source_zero_point;
  try {
    std::tie(source_scale, source_zero_point) = source.qparams();
  } catch (const c10::Error&) {
    return mismatch("the source quantizer has no scale (it saw no data and holds no loaded scale)");
  }
  if (to.per_channel() && observer_->has_data() &&
      observer_->range().first.numel() != source_scale.numel()) {
    return mismatch(std::to_string(source_scale.numel()) + " calibrated channels into " +
                    std::to_string(observer_->range().first.numel()));
  }

  // The range to carry: the source observer's exact range when it defines the source's scale,
  // else the range the source's (learned) scale represents.
  const auto& source_observer = source.observer();
  at::Tensor lo, hi;
  if (source.method() == FakeQuantMethod::fake_quant && source_observer.has_data()) {
    std::tie(lo, hi) = source_observer.range();
  } else {
    std::tie(lo, hi) = source.represented_range();
  }

  // Observer: verbatim copy when it is the same observer and still describes the source's
  // scale; otherwise carry the range.
  const bool same_observer =
      source_observer.kind() == observer_->kind() &&
      source_observer.config() == observer_->config() &&
      source_observer.spec() == observer_->spec() &&
      source_observer.options().skip_nonfinite() == observer_->options().skip_nonfinite();
  const bool observer_describes_scale =
      source.method() == FakeQuantMethod::fake_quant || method_ != FakeQuantMethod::fake_quant;
  bool adopted = false;
  if (same_observer && observer_describes_scale && source_observer.has_data()) {
    auto mine = observer_->named_buffers(/*recurse=*/true);
    const auto theirs = source_observer.named_buffers(/*recurse=*/true);
    for (auto& item : mine) {
      const at::Tensor* value = theirs.find(item.key());
      TORCH_INTERNAL_ASSERT(value != nullptr, "observer buffer ", item.key(), " missing");
      item.value().set_(value->detach().clone());
      result.copied_entries.push_back("observer." + item.key());
    }
  } else {
    adopted = observer_->adopt_range(lo, hi, std::max<int64_t>(source_observer.batches_seen(), 1));
    if (adopted) {
      for (const char* name : {"observer.min_val", "observer.max_val", "observer.batches"}) {
        result.copied_entries.push_back(name);
      }
    }
    for (const auto& item : source_observer.named_buffers(/*recurse=*/true)) {
      if (item.key() == "min_val" || item.key() == "max_val" || item.key() == "batches" ||
          item.key() == "nonfinite") {
        continue;
      }
      result.not_applicable.push_back("observer." + item.key());
    }
  }

  // The scale this quantizer starts from.
  at::Tensor scale, zero_point;
  if (!observer_->needs_data()) {
    std::tie(scale, zero_point) = observer_->qparams();  // fixed_scale keeps its own scale
    if (!at::equal(scale, source_scale.to(at::kFloat))) {
      result.outcome = CalibrationLoad::Outcome::converted;
      result.detail = "fixed_scale keeps its configured scale";
    }
  } else if (same_grid(from, to)) {
    scale = source_scale;
    zero_point = source_zero_point;
  } else {
    std::tie(scale, zero_point) = compute_qparams(lo, hi, to);
    result.outcome = CalibrationLoad::Outcome::converted;
    result.detail = grid_change(from, to);
  }

  switch (method_) {
    case FakeQuantMethod::fake_quant:
      set_scale_state(scale, zero_point);
      computed_at_batches_ = observer_->batches_seen();
      result.copied_entries.insert(result.copied_entries.end(), {"scale", "zero_point"});
      break;
    case FakeQuantMethod::lsq:
      set_scale_state(scale, zero_point);
      if (log2_scale_.defined()) {
        log2_scale_.set_(log2_of(scale));
        result.copied_entries.push_back("log2_scale");
      }
      result.copied_entries.insert(result.copied_entries.end(), {"scale", "zero_point"});
      break;
    case FakeQuantMethod::pact: {
      // The calibrated threshold: the real value of the steps alpha spans at the calibrated
      // scale (half of them on a signed grid).
      const double threshold = scale.to(at::kDouble).item<double>() * pact_steps(to);
      alpha_.fill_(threshold);
      set_scale_state(at::full({1}, pact_scale(alpha_.item<double>(), to), at::kFloat),
                      at::zeros({1}, at::kInt));
      result.copied_entries.insert(result.copied_entries.end(), {"alpha", "scale", "zero_point"});
      break;
    }
  }
  initialized_.fill_(1);
  result.copied_entries.push_back("initialized");
  return result;
}

void FakeQuantizeImpl::pretty_print(std::ostream& stream) const {
  stream << "calq::FakeQuantize(method=" << to_string(method_) << ", observer=" << observer_->kind()
         << ", state=" << to_string(state_) << ", " << spec().str() << ")";
}

}  // namespace calq
