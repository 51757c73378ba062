#include "calq/pipeline/statistics.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace calq {
namespace pipeline {

double mcnemar_exact_p(int64_t smaller, int64_t discordant) {
  TORCH_CHECK(smaller >= 0 && smaller <= discordant, "mcnemar_exact_p: ", smaller, " successes of ",
              discordant, " trials is invalid");
  if (discordant == 0) return 1.0;
  // P[X <= smaller] for X ~ Binomial(discordant, 1/2), summed in log space (discordant can be
  // in the thousands, where 2^-n underflows).
  double log_tail = -std::numeric_limits<double>::infinity();
  const double log_half_n = static_cast<double>(discordant) * std::log(0.5);
  for (int64_t k = 0; k <= smaller; ++k) {
    const double log_term = std::lgamma(static_cast<double>(discordant) + 1) -
                            std::lgamma(static_cast<double>(k) + 1) -
                            std::lgamma(static_cast<double>(discordant - k) + 1) + log_half_n;
    const double hi = std::max(log_tail, log_term);
    const double lo = std::min(log_tail, log_term);
    log_tail = hi + std::log1p(std::exp(lo - hi));
  }
  return std::min(1.0, 2.0 * std::exp(log_tail));
}

PairedComparison compare_paired(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  TORCH_CHECK(!a.empty() && a.size() == b.size(), "compare_paired: the two models were scored on ",
              a.size(), " and ", b.size(), " images; they must be the same non-empty set");
  PairedComparison c;
  c.n = static_cast<int64_t>(a.size());
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] && !b[i]) ++c.a_only;
    if (b[i] && !a[i]) ++c.b_only;
  }
  const double n = static_cast<double>(c.n);
  const double d = static_cast<double>(c.b_only - c.a_only);
  c.diff_pt = 100.0 * d / n;
  const double variance = static_cast<double>(c.b_only + c.a_only) - d * d / n;
  const double half_width = 1.96 * std::sqrt(std::max(variance, 0.0)) / n * 100.0;
  c.ci_low_pt = c.diff_pt - half_width;
  c.ci_high_pt = c.diff_pt + half_width;
  c.p_value = mcnemar_exact_p(std::min(c.a_only, c.b_only), c.a_only + c.b_only);
  return c;
}

std::string PairedComparison::verdict() const {
  if (ci_low_pt > 0) return "better";
  if (ci_high_pt < 0) return "worse";
  return "same (within noise)";
}

std::string PairedComparison::str() const {
  char text[96];
  std::snprintf(text, sizeof(text), "%+.2f pt [%+.2f, %+.2f], McNemar p = %.3g", diff_pt, ci_low_pt,
                ci_high_pt, p_value);
  return text;
}

}  // namespace pipeline
}  // namespace calq
