#include "calq/observers/kl.h"

#include <c10/util/Exception.h>

namespace calq {
namespace observers {

KLObserverImpl::KLObserverImpl(ObserverOptions common, KLObserverOptions options)
    : HistogramObserverImpl("kl", std::move(common), options.bins()), kl_options_(options) {
  TORCH_CHECK(options.bins() >= 256, "observer 'kl': bins = ", options.bins(),
              " is invalid; kl needs at least 256 bins (the search starts at the 128 levels of "
              "qint8)");
  TORCH_CHECK(options.update_interval() >= 1,
              "observer 'kl': update_interval = ", options.update_interval(),
              " is invalid; it must be >= 1");
}

nlohmann::json KLObserverImpl::config() const {
  return {{"bins", bins_}, {"update_interval", kl_options_.update_interval()}};
}

std::shared_ptr<ObserverImpl> KLObserverImpl::clone_empty() const {
  return std::make_shared<KLObserverImpl>(options_, kl_options_);
}

double KLObserverImpl::compute_threshold(const AbsHistogram& h) const {
  return kl_threshold(h, kl_num_quantized_bins(spec()));
}

bool KLObserverImpl::refresh_due(int64_t batches) const {
  return batches % kl_options_.update_interval() == 0;
}

}  // namespace observers
}  // namespace calq
