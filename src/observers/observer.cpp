#include "calq/observers/observer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <cmath>
#include <limits>
#include <utility>

#include "calq/quant/qparams.h"
#include "quant/small_tensor.h"

namespace calq {
namespace observers {

namespace {

// Whether every value of a float32 {1} or {C} tensor of extremes is finite.
bool all_finite(const at::Tensor& extremes) {
  return calq::detail::all_float_values(extremes.contiguous(),
                                        [](float v) { return std::isfinite(v); })
      .value();
}

// Up to this many values (a weight, a small activation) the extremes come from one plain
// loop: the ATen reduction's dispatch costs more than the data there.
constexpr int64_t kSmallTensor = int64_t{1} << 16;

// Per-row min and max of a contiguous float32 {rows, numel / rows} block, with at::aminmax's
// semantics (a row holding NaN gives NaN; +-Inf are ordinary values). numel > 0.
std::pair<at::Tensor, at::Tensor> rows_min_max(const float* x, int64_t rows, int64_t numel) {
  at::Tensor mn = at::empty({rows}, at::kFloat);
  at::Tensor mx = at::empty({rows}, at::kFloat);
  float* pmn = mn.data_ptr<float>();
  float* pmx = mx.data_ptr<float>();
  const int64_t cols = numel / rows;
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x + r * cols;
    float lo = std::numeric_limits<float>::infinity();
    float hi = -lo;
    bool nan = false;
    for (int64_t j = 0; j < cols; ++j) {
      const float v = row[j];
      nan |= v != v;
      lo = v < lo ? v : lo;
      hi = v > hi ? v : hi;
    }
    pmn[r] = nan ? std::numeric_limits<float>::quiet_NaN() : lo;
    pmx[r] = nan ? std::numeric_limits<float>::quiet_NaN() : hi;
  }
  return {mn, mx};
}

}  // namespace

ObserverImpl::ObserverImpl(std::string kind, ObserverOptions options)
    : kind_(std::move(kind)), options_(std::move(options)) {
  options_.spec().validate();
  const QuantSpec& s = options_.spec();
  TORCH_CHECK(!(s.per_channel() && options_.skip_nonfinite()), "observer '", kind_,
              "': skip_nonfinite is supported per-tensor only (a per-channel observer cannot "
              "drop single elements); got spec ",
              s.str());
  min_val_ = register_buffer("min_val", at::empty({0}, at::kFloat));
  max_val_ = register_buffer("max_val", at::empty({0}, at::kFloat));
  batches_ = register_buffer("batches", at::zeros({1}, at::kLong));
  nonfinite_ = register_buffer("nonfinite", at::zeros({1}, at::kLong));
}

void ObserverImpl::assign(at::Tensor& buffer, const at::Tensor& value) {
  at::NoGradGuard guard;
  // A fresh contiguous copy: the buffer must never alias caller memory.
  buffer.set_(value.detach().to(buffer.scalar_type()).contiguous().clone());
}

at::Tensor ObserverImpl::as_channels(const at::Tensor& x) const {
  const QuantSpec& s = spec();
  if (!s.per_channel()) {
    return x.reshape({1, -1});
  }
  const int64_t axis = s.ch_axis() < 0 ? s.ch_axis() + x.dim() : s.ch_axis();
  return x.movedim(axis, 0).reshape({x.size(axis), -1});
}

int64_t ObserverImpl::num_channels() const {
  return min_val_.numel();
}

bool ObserverImpl::has_data() const {
  return batches_seen() > 0;
}
int64_t ObserverImpl::batches_seen() const {
  return batches_.item<int64_t>();
}
int64_t ObserverImpl::nonfinite_count() const {
  return nonfinite_.item<int64_t>();
}

void ObserverImpl::update(const at::Tensor& input) {
  at::NoGradGuard guard;
  TORCH_CHECK(input.defined(), "observer '", kind_, "': update() got an undefined tensor");
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), "observer '", kind_,
              "': update() needs a floating tensor, got ", input.scalar_type());
  TORCH_CHECK(input.numel() > 0, "observer '", kind_, "': update() got an empty tensor of shape ",
              input.sizes(), "; every batch needs at least one value");
  at::Tensor x = input.detach();
  if (x.scalar_type() != at::kFloat && x.scalar_type() != at::kDouble) {
    x = x.to(at::kFloat);
  }
  x = x.contiguous();
  const QuantSpec& s = spec();
  if (s.per_channel()) {
    const int64_t axis = s.ch_axis() < 0 ? s.ch_axis() + x.dim() : s.ch_axis();
    TORCH_CHECK(axis >= 0 && axis < x.dim(), "observer '", kind_, "': per-channel axis ",
                s.ch_axis(), " is out of range for a tensor of shape ", x.sizes());
    TORCH_CHECK(!has_data() || x.size(axis) == num_channels(), "observer '", kind_,
                "': channel count changed from ", num_channels(), " to ", x.size(axis), " (axis ",
                s.ch_axis(), " of shape ", x.sizes(), ")");
  }

  if (!s.per_channel() && try_update_in_one_pass(x)) {
    batches_.add_(1);
    return;
  }

  Batch batch;
  batch.x = x;
  auto minmax = [&](const at::Tensor& data) {
    at::Tensor mn, mx;
    const int64_t axis = s.ch_axis() < 0 ? s.ch_axis() + data.dim() : s.ch_axis();
    if (data.scalar_type() == at::kFloat && data.is_contiguous() && data.numel() <= kSmallTensor &&
        (!s.per_channel() || axis == 0)) {
      std::tie(batch.min_val, batch.max_val) =
          rows_min_max(data.data_ptr<float>(), s.per_channel() ? data.size(0) : 1, data.numel());
      return;
    }
    if (s.per_channel()) {
      std::tie(mn, mx) = at::aminmax(as_channels(data), 1);
    } else {
      std::tie(mn, mx) = at::aminmax(data);
    }
    batch.min_val = mn.reshape({-1}).to(at::kFloat);
    batch.max_val = mx.reshape({-1}).to(at::kFloat);
  };
  minmax(x);
  // aminmax propagates NaN and keeps +-Inf, so finite extremes mean finite data. Checked on
  // the raw values: a few ATen calls here would cost more than the reduction on a weight.
  const bool finite = all_finite(batch.min_val) && all_finite(batch.max_val);
  if (!finite) {
    const at::Tensor mask = at::isfinite(x);
    const int64_t bad = x.numel() - mask.sum().item<int64_t>();
    TORCH_CHECK(options_.skip_nonfinite(), "observer '", kind_, "': batch of shape ", x.sizes(),
                " contains ", bad,
                " non-finite value(s) (NaN or Inf); clean the data or set "
                "skip_nonfinite to drop and count them");
    nonfinite_.add_(bad);
    if (bad == x.numel()) {
      return;
    }
    batch.x = x.masked_select(mask);
    minmax(batch.x);
  }
  update_impl(batch);
  batches_.add_(1);
}

bool ObserverImpl::adopt_range(const at::Tensor& min_val, const at::Tensor& max_val,
                               int64_t batches) {
  at::NoGradGuard guard;
  if (!needs_data()) return false;
  TORCH_CHECK(batches >= 1, "observer '", kind_, "': adopt_range needs batches >= 1, got ",
              batches);
  const at::Tensor lo = calq::detail::to_double_vector(min_val);
  const at::Tensor hi = calq::detail::to_double_vector(max_val);
  const int64_t n = lo.numel();
  TORCH_CHECK(n > 0 && hi.numel() == n, "observer '", kind_, "': adopt_range got ", n,
              " minima and ", hi.numel(), " maxima; they must match and be non-empty");
  TORCH_CHECK(spec().per_channel() || n == 1, "observer '", kind_,
              "' is per-tensor; adopt_range got ", n, " values");
  TORCH_CHECK(!has_data() || !spec().per_channel() || n == num_channels(), "observer '", kind_,
              "': adopt_range got ", n, " channels, the observer has ", num_channels());
  for (int64_t i = 0; i < n; ++i) {
    const double a = lo.data_ptr<double>()[i];
    const double b = hi.data_ptr<double>()[i];
    TORCH_CHECK(std::isfinite(a) && std::isfinite(b) && a <= b, "observer '", kind_,
                "': adopt_range [", a, ", ", b, "] at index ", i,
                " is invalid; the range must be finite with min <= max");
  }
  assign(min_val_, lo.to(at::kFloat));
  assign(max_val_, hi.to(at::kFloat));
  batches_.fill_(batches);
  adopt_range_impl();
  return true;
}

std::pair<at::Tensor, at::Tensor> ObserverImpl::qparams() const {
  TORCH_CHECK(has_data() || !needs_data(), "observer '", kind_,
              "': qparams() called before any data; feed at least one batch with update() "
              "(or load a calibrated state) first");
  return qparams_impl();
}

bool ObserverImpl::power_of_two_clamped() const {
  if (!spec().power_of_two() || min_val_.numel() == 0) return false;
  QuantSpec free_grid = spec();
  free_grid.power_of_two(false);
  const at::Tensor scales = compute_qparams(min_val_, max_val_, free_grid).first.to(at::kDouble);
  for (int64_t i = 0; i < scales.numel(); ++i) {
    if (calq::power_of_two_clamped(scales.data_ptr<double>()[i])) return true;
  }
  return false;
}

std::pair<at::Tensor, at::Tensor> ObserverImpl::range() const {
  TORCH_CHECK(min_val_.numel() > 0, "observer '", kind_,
              "': range() called before any data; feed at least one batch with update() first");
  return {min_val_.clone(), max_val_.clone()};
}

std::pair<at::Tensor, at::Tensor> ObserverImpl::qparams_impl() const {
  TORCH_CHECK(min_val_.numel() > 0, "observer '", kind_, "': state has batches = ", batches_seen(),
              " but an empty min_val/max_val; the state was loaded from an "
              "incompatible observer");
  return compute_qparams(min_val_, max_val_, spec());
}

void ObserverImpl::merge(const ObserverImpl& other) {
  at::NoGradGuard guard;
  TORCH_CHECK(other.kind_ == kind_, "observer merge: kinds differ ('", kind_, "' vs '", other.kind_,
              "'); only observers of the same kind merge");
  TORCH_CHECK(other.spec() == spec(), "observer '", kind_, "' merge: specs differ (", spec().str(),
              " vs ", other.spec().str(), ")");
  TORCH_CHECK(other.config() == config(), "observer '", kind_, "' merge: configurations differ (",
              config().dump(), " vs ", other.config().dump(), ")");
  if (!other.has_data()) {
    nonfinite_.add_(other.nonfinite_);
    return;
  }
  if (has_data()) {
    TORCH_CHECK(other.num_channels() == num_channels(), "observer '", kind_,
                "' merge: channel counts differ (", num_channels(), " vs ", other.num_channels(),
                ")");
    merge_impl(other);
  } else {
    // Copy every buffer: this observer becomes `other`.
    auto mine = named_buffers(/*recurse=*/true);
    auto theirs = other.named_buffers(/*recurse=*/true);
    for (auto& item : mine) {
      const at::Tensor* src = theirs.find(item.key());
      TORCH_INTERNAL_ASSERT(src != nullptr, "buffer ", item.key(), " missing in merge source");
      assign(item.value(), *src);
    }
    return;
  }
  batches_.add_(other.batches_);
  nonfinite_.add_(other.nonfinite_);
}

void ObserverImpl::pretty_print(std::ostream& stream) const {
  stream << "calq::observers::Observer(" << kind_ << ", " << spec().str()
         << ", config=" << config().dump() << ", batches=" << batches_seen() << ")";
}

void check_averaging_constant(const std::string& kind, double averaging_constant) {
  TORCH_CHECK(
      std::isfinite(averaging_constant) && averaging_constant >= 0.0 && averaging_constant <= 1.0,
      "observer '", kind, "': averaging_constant = ", averaging_constant,
      " is invalid; it must lie in [0, 1] (0 freezes after the first batch, 1 keeps the "
      "latest batch)");
}

}  // namespace observers
}  // namespace calq
