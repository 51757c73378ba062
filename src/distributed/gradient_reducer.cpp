#include "calq/distributed/gradient_reducer.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <sstream>

namespace calq {
namespace distributed {
namespace {

// Shapes and dtypes of the parameters, one line each; ranks must agree on it.
std::string layout(const std::vector<at::Tensor>& parameters) {
  std::ostringstream out;
  for (size_t i = 0; i < parameters.size(); ++i) {
    out << i << ": " << parameters[i].sizes() << " " << parameters[i].scalar_type() << "\n";
  }
  return out.str();
}

std::string first_line_that_differs(const std::string& a, const std::string& b) {
  std::istringstream in_a(a), in_b(b);
  std::string x, y;
  for (;;) {
    const bool more_a = static_cast<bool>(std::getline(in_a, x));
    const bool more_b = static_cast<bool>(std::getline(in_b, y));
    if (!more_a && !more_b) return "";
    if (!more_a) x = "(none)";
    if (!more_b) y = "(none)";
    if (x != y) return "parameter " + x + " vs " + y;
  }
}

}  // namespace

GradientReducer::GradientReducer(std::vector<at::Tensor> parameters,
                                 std::shared_ptr<ProcessGroup> group,
                                 GradientReducerOptions options)
    : group_(std::move(group)), options_(options) {
  TORCH_CHECK(group_, "GradientReducer: the process group is null");
  TORCH_CHECK(options_.bucket_bytes() >= 1, "GradientReducer: bucket_bytes must be >= 1, got ",
              options_.bucket_bytes());
  for (auto& p : parameters) {
    TORCH_CHECK(p.defined() && at::isFloatingType(p.scalar_type()) && p.layout() == at::kStrided,
                "GradientReducer: parameters must be defined dense floating tensors");
    if (p.requires_grad()) parameters_.push_back(p);
  }
  const std::string mine = layout(parameters_);
  const auto all = group_->all_gather_bytes(mine);
  for (size_t r = 0; r < all.size(); ++r) {
    TORCH_CHECK(all[r] == mine, "GradientReducer: rank ", r, " trains other parameters than rank ",
                group_->rank(), " (", first_line_that_differs(all[r], mine),
                "); every rank must hold the same model");
  }

  build_buckets();
  ready_.assign(parameters_.size(), false);

  if (options_.overlap()) {
    for (size_t k = 0; k < parameters_.size(); ++k) {
      std::shared_ptr<torch::autograd::Node> accumulator =
          torch::autograd::impl::grad_accumulator(parameters_[k]);
      TORCH_INTERNAL_ASSERT(accumulator, "parameter ", k, " has no gradient accumulator");
      hook_keys_.push_back(
          accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
              [this, k](const torch::autograd::variable_list& outputs,
                        const torch::autograd::variable_list&) {
                on_gradient_ready(k);
                return outputs;
              })));
      // Held so that the accumulator (and its hook) lives as long as the reducer.
      accumulators_.push_back(std::move(accumulator));
    }
  }
}

void GradientReducer::build_buckets() {
  // Buckets in reverse parameter order, one dtype each, at most bucket_bytes (or one parameter).
  buckets_.clear();
  numels_.clear();
  for (const auto& p : parameters_) numels_.push_back(p.numel());
  bucket_of_.assign(parameters_.size(), 0);
  for (size_t k = parameters_.size(); k-- > 0;) {
    const at::Tensor& p = parameters_[k];
    const int64_t bytes = p.numel() * p.element_size();
    bool fits = false;
    if (!buckets_.empty()) {
      const Bucket& last = buckets_.back();
      const at::Tensor& first = parameters_[last.parameters.front()];
      const int64_t used = (last.offsets.back() + parameters_[last.parameters.back()].numel()) *
                           first.element_size();
      fits = first.scalar_type() == p.scalar_type() && used + bytes <= options_.bucket_bytes();
    }
    if (!fits) buckets_.emplace_back();
    Bucket& b = buckets_.back();
    const int64_t offset =
        b.parameters.empty() ? 0 : b.offsets.back() + parameters_[b.parameters.back()].numel();
    b.parameters.push_back(k);
    b.offsets.push_back(offset);
    bucket_of_[k] = buckets_.size() - 1;
  }
  for (Bucket& b : buckets_) {
    const at::Tensor& last = parameters_[b.parameters.back()];
    b.flat = at::zeros({b.offsets.back() + last.numel()}, last.options().requires_grad(false));
    b.pending = static_cast<int64_t>(b.parameters.size());
  }
}

void GradientReducer::rebuild_buckets_if_resized() {
  if (layout_checked_) return;
  layout_checked_ = true;
  for (size_t k = 0; k < parameters_.size(); ++k) {
    if (parameters_[k].numel() != numels_[k]) {
      // A parameter was resized in place since the buckets were built (a lazily initialized
      // lsq scale takes its shape at the first quantizing forward). Every rank sees the same
      // shapes at the same step, so every rank rebuilds alike; no bucket started yet.
      build_buckets();
      return;
    }
  }
}

GradientReducer::~GradientReducer() {
  for (size_t k = 0; k < accumulators_.size(); ++k) {
    accumulators_[k]->del_post_hook(hook_keys_[k]);
  }
}

int64_t GradientReducer::bytes_per_step() const {
  int64_t bytes = 0;
  for (const Bucket& b : buckets_) bytes += b.flat.numel() * b.flat.element_size();
  return bytes;
}

void GradientReducer::on_gradient_ready(size_t parameter) {
  std::lock_guard<std::mutex> lock(mutex_);
  rebuild_buckets_if_resized();
  if (ready_[parameter]) return;
  ready_[parameter] = true;
  --buckets_[bucket_of_[parameter]].pending;
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].pending == 0) {
    start(next_bucket_++);
    ++overlapped_;
  }
}

void GradientReducer::start(size_t index) {
  at::NoGradGuard guard;
  Bucket& b = buckets_[index];
  for (size_t j = 0; j < b.parameters.size(); ++j) {
    const at::Tensor& p = parameters_[b.parameters[j]];
    at::Tensor slot = b.flat.narrow(0, b.offsets[j], p.numel());
    const at::Tensor& grad = p.grad();
    if (grad.defined()) {
      slot.view(p.sizes()).copy_(grad);
    } else {
      slot.zero_();
    }
  }
  b.work = group_->all_reduce_async({b.flat}, "gradient all-reduce (bucket " +
                                                  std::to_string(index + 1) + " of " +
                                                  std::to_string(buckets_.size()) + ")");
}

void GradientReducer::finish() {
  std::lock_guard<std::mutex> lock(mutex_);
  at::NoGradGuard guard;
  rebuild_buckets_if_resized();
  while (next_bucket_ < buckets_.size()) start(next_bucket_++);
  for (Bucket& b : buckets_) {
    b.work.wait();
    for (size_t j = 0; j < b.parameters.size(); ++j) {
      at::Tensor& p = parameters_[b.parameters[j]];
      const at::Tensor sum = b.flat.narrow(0, b.offsets[j], p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(sum);
      } else {
        p.mutable_grad() = sum.clone();
      }
    }
    b.pending = static_cast<int64_t>(b.parameters.size());
  }
  ready_.assign(parameters_.size(), false);
  next_bucket_ = 0;
  layout_checked_ = false;
  last_overlapped_ = overlapped_;
  overlapped_ = 0;
}

}  // namespace distributed
}  // namespace calq
