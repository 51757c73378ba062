#include "calq/distributed/observer_sync.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/serialize/input-archive.h>
#include <torch/serialize/output-archive.h>
#include <torch/utils.h>

#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <utility>

#include "calq/fake_quantize.h"

namespace calq {
namespace distributed {
namespace {

std::vector<std::pair<std::string, FakeQuantizeImpl*>> quantizers(torch::nn::Module& model) {
  std::vector<std::pair<std::string, FakeQuantizeImpl*>> result;
  for (const auto& item : model.named_modules("", /*include_self=*/true)) {
    if (auto* fq = dynamic_cast<FakeQuantizeImpl*>(item.value().get())) {
      result.emplace_back(item.key(), fq);
    }
  }
  return result;
}

// One line per quantizer: path, observer kind, configuration, grid. Ranks must agree on it.
std::string manifest(const std::vector<std::pair<std::string, FakeQuantizeImpl*>>& qs) {
  std::string out;
  for (const auto& q : qs) {
    const auto& o = q.second->observer();
    out += q.first + " " + o.kind() + " " + o.config().dump() + " " + o.spec().str() +
           (o.options().skip_nonfinite() ? " skip_nonfinite" : "") + "\n";
  }
  return out;
}

std::string first_difference(const std::string& a, const std::string& b) {
  std::istringstream in_a(a), in_b(b);
  std::string line_a, line_b;
  for (;;) {
    const bool more_a = static_cast<bool>(std::getline(in_a, line_a));
    const bool more_b = static_cast<bool>(std::getline(in_b, line_b));
    if (!more_a && !more_b) return "";
    if (!more_a) line_a = "(no more quantizers)";
    if (!more_b) line_b = "(no more quantizers)";
    if (line_a != line_b) return "'" + line_a + "' vs '" + line_b + "'";
  }
}

// [manifest length (8 bytes)][manifest][archive]
std::string pack(const std::string& manifest_text, torch::serialize::OutputArchive& archive) {
  std::ostringstream out;
  const uint64_t length = manifest_text.size();
  out.write(reinterpret_cast<const char*>(&length), sizeof(length));
  out << manifest_text;
  archive.save_to(out);
  return out.str();
}

std::pair<std::string, std::string> unpack(const std::string& blob) {
  uint64_t length = 0;
  TORCH_INTERNAL_ASSERT(blob.size() >= sizeof(length), "observer state blob is truncated");
  std::memcpy(&length, blob.data(), sizeof(length));
  return {blob.substr(sizeof(length), length), blob.substr(sizeof(length) + length)};
}

// Sets every buffer of `target` to a copy of the same buffer of `source` (same kind and
// configuration), in place so that the observer's members keep aliasing them.
void copy_state(observers::ObserverImpl& target, const observers::ObserverImpl& source) {
  at::NoGradGuard guard;
  auto mine = target.named_buffers(/*recurse=*/true);
  const auto theirs = source.named_buffers(/*recurse=*/true);
  for (auto& item : mine) {
    const at::Tensor* value = theirs.find(item.key());
    TORCH_INTERNAL_ASSERT(value != nullptr, "observer buffer ", item.key(), " missing");
    item.value().set_(value->detach().clone());
  }
}

}  // namespace

void merge_observers(torch::nn::Module& model, ProcessGroup& group) {
  const auto qs = quantizers(model);
  const std::string mine = manifest(qs);
  torch::serialize::OutputArchive archive;
  for (size_t i = 0; i < qs.size(); ++i) {
    torch::serialize::OutputArchive state;
    qs[i].second->observer().save(state);
    archive.write("q" + std::to_string(i), state);
  }
  const std::vector<std::string> blobs = group.all_gather_bytes(pack(mine, archive));

  std::vector<torch::serialize::InputArchive> archives(blobs.size());
  for (size_t r = 0; r < blobs.size(); ++r) {
    const auto parts = unpack(blobs[r]);
    TORCH_CHECK(parts.first == mine, "merge_observers: rank ", r,
                "'s model has other quantizers than rank ", group.rank(),
                "'s: ", first_difference(parts.first, mine),
                "; every rank must build the same model with the same qconfig");
    archives[r].load_from(parts.second.data(), parts.second.size());
  }
  for (size_t i = 0; i < qs.size(); ++i) {
    observers::ObserverImpl& observer = qs[i].second->observer();
    std::shared_ptr<observers::ObserverImpl> merged = observer.clone_empty();
    for (auto& rank_archive : archives) {
      torch::serialize::InputArchive state;
      rank_archive.read("q" + std::to_string(i), state);
      std::shared_ptr<observers::ObserverImpl> part = observer.clone_empty();
      part->load(state);
      merged->merge(*part);
    }
    copy_state(observer, *merged);
    qs[i].second->observer_state_changed();
  }
}

void calibrate(torch::nn::Module& model,
               const std::function<at::Tensor(const at::Tensor&)>& forward, int64_t num_batches,
               const std::function<at::Tensor(int64_t)>& batch, ProcessGroup& group) {
  TORCH_CHECK(num_batches >= 1, "calibrate: no calibration batches were given; pass at least one");
  set_fake_quantize(model, FakeQuantState::CALIBRATION);
  {
    torch::NoGradGuard no_grad;
    const auto range = shard(num_batches, group.rank(), group.size());
    for (int64_t i = range.first; i < range.second; ++i) forward(batch(i));
  }
  merge_observers(model, group);
}

void calibrate(torch::nn::Module& model,
               const std::function<at::Tensor(const at::Tensor&)>& forward,
               const std::vector<at::Tensor>& batches, ProcessGroup& group) {
  calibrate(
      model, forward, static_cast<int64_t>(batches.size()),
      [&batches](int64_t i) { return batches[static_cast<size_t>(i)]; }, group);
}

at::Tensor global_observer_input(const at::Tensor& x, const observers::ObserverImpl& observer,
                                 ProcessGroup& group) {
  const std::string& kind = observer.kind();
  if (kind == "fixed_scale") return x;
  const QuantSpec& spec = observer.spec();
  const bool extremes_only = (kind == "min_max" || kind == "clip") &&
                             !observer.options().skip_nonfinite() &&
                             (!spec.per_channel() || x.dim() >= 2);
  if (extremes_only) {
    const int64_t axis =
        spec.per_channel() ? (spec.ch_axis() < 0 ? spec.ch_axis() + x.dim() : spec.ch_axis()) : 0;
    TORCH_CHECK(axis >= 0 && axis < x.dim(), "observer '", kind, "': per-channel axis ",
                spec.ch_axis(), " is out of range for a tensor of shape ", x.sizes());
    const at::Tensor rows =
        spec.per_channel() ? x.movedim(axis, 0).reshape({x.size(axis), -1}) : x.reshape({1, -1});
    at::Tensor mn, mx;
    if (rows.size(1) > 0) {
      std::tie(mn, mx) = at::aminmax(rows, 1);
    } else {  // no rows here: the identities of min and max
      mn = at::full({rows.size(0)}, std::numeric_limits<double>::infinity(), x.options());
      mx = at::full({rows.size(0)}, -std::numeric_limits<double>::infinity(), x.options());
    }
    const std::vector<at::Tensor> all = group.all_gather(at::cat({mn, mx}));
    const int64_t channels = rows.size(0);
    at::Tensor lo = all[0].narrow(0, 0, channels);
    at::Tensor hi = all[0].narrow(0, channels, channels);
    for (size_t r = 1; r < all.size(); ++r) {  // at::minimum / maximum propagate NaN
      lo = at::minimum(lo, all[r].narrow(0, 0, channels));
      hi = at::maximum(hi, all[r].narrow(0, channels, channels));
    }
    if (!spec.per_channel()) return at::cat({lo, hi});
    // {C, 2} laid out with the channels on `axis` of a tensor of x's rank.
    std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
    shape[0] = channels;
    shape[1] = 2;
    return at::stack({lo, hi}, 1).reshape(shape).movedim(0, axis).contiguous();
  }
  // Every other observer needs the data itself: the global batch, rows in rank order.
  const at::Tensor local = x.dim() == 0 ? x.reshape({1}) : x.contiguous();
  const std::string bytes(reinterpret_cast<const char*>(local.data_ptr()),
                          static_cast<size_t>(local.numel()) * local.element_size());
  const std::vector<std::string> all = group.all_gather_bytes(bytes);
  int64_t row_values = 1;
  for (int64_t d = 1; d < local.dim(); ++d) row_values *= local.size(d);
  std::vector<at::Tensor> parts;
  for (const std::string& part : all) {
    const int64_t values = static_cast<int64_t>(part.size()) / local.element_size();
    if (values == 0) continue;
    TORCH_CHECK(row_values > 0 && values % row_values == 0, "global_observer_input: the ranks' ",
                "activations have different row shapes (", local.sizes(), " on rank ", group.rank(),
                ")");
    std::vector<int64_t> shape = local.sizes().vec();
    shape[0] = values / row_values;
    at::Tensor t = at::empty(shape, local.options());
    std::memcpy(t.data_ptr(), part.data(), part.size());
    parts.push_back(t);
  }
  TORCH_CHECK(!parts.empty(), "global_observer_input: every rank's activation is empty");
  return at::cat(parts, 0);
}

}  // namespace distributed
}  // namespace calq
