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

struct StateName {
  FakeQuantState state;
  const char* name;
};
constexpr StateName kStates[] = {{FakeQuantState::QAT, "qat"},
                                 {FakeQuantState::CALIBRATION, "calibration"},
                                 {FakeQuantState::VALIDATION, "validation"}};

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

double half_steps(const QuantSpec& spec) {
  return static_cast<double>(spec.quant_max() - spec.quant_min()) / 2.0;
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

FakeQuantizeImpl::FakeQuantizeImpl(FakeQuantMethod method, observers::Observer observer,
                                   nlohmann::json method_kwargs)
    : method_(method), observer_(std::move(observer)) {
  TORCH_CHECK(!observer_.is_empty(), "FakeQuantize: the observer is empty (nullptr)");
  const std::string context = "fake-quant method '" + to_string(method_) + "'";
  detail::check_kwargs(method_kwargs, fake_quant_method_keys(method_), context);
  register_module("observer", observer_);
  if (method_ == FakeQuantMethod::lsq) {
    lsq_grad_factor_ = detail::kwarg_double(method_kwargs, "grad_factor", -1.0, context);
    TORCH_CHECK(std::isfinite(lsq_grad_factor_), context, ": grad_factor = ", lsq_grad_factor_,
                " is invalid; it must be finite (<= 0 selects 1 / sqrt(numel * quant_max))");
    scale_ = register_parameter("scale", at::empty({0}, at::kFloat));
  } else {
    scale_ = register_buffer("scale", at::empty({0}, at::kFloat));
  }
  zero_point_ = register_buffer("zero_point", at::empty({0}, at::kInt));
  if (method_ == FakeQuantMethod::pact) {
    TORCH_CHECK(!spec().per_channel() && spec().symmetric(), context,
                " is per-tensor symmetric only; got spec ", spec().str());
    const double alpha = detail::kwarg_double(method_kwargs, "alpha", kDefaultPactAlpha, context);
    TORCH_CHECK(std::isfinite(alpha) && alpha > 0.0, context, ": alpha = ", alpha,
                " is invalid; it must be finite and > 0");
    init_alpha_from_observer_ =
        detail::kwarg_bool(method_kwargs, "init_alpha_from_observer", true, context);
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

}  // namespace

void FakeQuantizeImpl::prepare_qparams(bool observer_had_data) {
  at::NoGradGuard guard;
  auto set = [](at::Tensor& t, const at::Tensor& v) { t.set_(v.detach().clone()); };
  switch (method_) {
    case FakeQuantMethod::fake_quant: {
      const int64_t batches = observer_->batches_seen();
      if (observer_->ready() && (batches != computed_at_batches_ || !initialized())) {
        at::Tensor s, zp;
        std::tie(s, zp) = observer_->qparams();
        set(scale_, s);
        set(zero_point_, zp);
        initialized_.fill_(1);
        computed_at_batches_ = batches;
      }
      break;
    }
    case FakeQuantMethod::lsq:
      // Projection after an optimizer step: a step across zero (tiny per-channel weight
      // scales under Adam) would make the scale invalid; its magnitude is the nearest valid
      // value and keeps training continuous.
      project_positive(scale_);
      if (!initialized() && observer_->has_data()) {
        at::Tensor s, zp;
        std::tie(s, zp) = observer_->qparams();
        set(scale_, s);
        set(zero_point_, zp);
        initialized_.fill_(1);
      }
      break;
    case FakeQuantMethod::pact:
      if (!initialized()) {
        if (init_alpha_from_observer_ && observer_had_data) {
          at::Tensor lo, hi;
          std::tie(lo, hi) = observer_->range();
          const double bound = std::max(std::abs(lo.item<double>()), std::abs(hi.item<double>()));
          // A zero range (all-zero calibration data) would make alpha 0; keep the scale floor.
          alpha_.fill_(std::max(bound, kMinScale * half_steps(spec())));
        }
        initialized_.fill_(1);
      }
      project_positive(alpha_);
      set(scale_, alpha_.detach() / half_steps(spec()));
      set(zero_point_, at::zeros({1}, at::kInt));
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
  TORCH_CHECK(x.defined() && at::isFloatingType(x.scalar_type()),
              "FakeQuantize.forward: x must be a defined floating tensor");
  bool had_data = observer_->has_data();
  switch (state_) {
    case FakeQuantState::CALIBRATION:
      observer_->update(x.detach());
      return x;
    case FakeQuantState::QAT:
      observer_->update(x.detach());
      break;
    case FakeQuantState::VALIDATION:
      break;
  }
  prepare_qparams(had_data);
  switch (method_) {
    case FakeQuantMethod::fake_quant:
      return fake_quantize(x, scale_, zero_point_, spec());
    case FakeQuantMethod::lsq:
      return lsq_fake_quantize(x, scale_, zero_point_, spec(), lsq_grad_factor_);
    case FakeQuantMethod::pact:
      return pact_fake_quantize(x, alpha_, spec());
  }
  TORCH_INTERNAL_ASSERT(false, "unhandled fake-quant method");
}

at::Tensor FakeQuantizeImpl::scale() {
  prepare_qparams(observer_->has_data());
  return scale_;
}

at::Tensor FakeQuantizeImpl::zero_point() {
  prepare_qparams(observer_->has_data());
  return zero_point_;
}

void FakeQuantizeImpl::pretty_print(std::ostream& stream) const {
  stream << "calq::FakeQuantize(method=" << to_string(method_) << ", observer=" << observer_->kind()
         << ", state=" << to_string(state_) << ", " << spec().str() << ")";
}

}  // namespace calq
