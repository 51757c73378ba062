#include "calq/quant/quant_spec.h"

#include <c10/util/Exception.h>

#include <sstream>

namespace calq {
namespace {

struct DtypeInfo {
  QuantDtype dtype;
  const char* name;
  int64_t quant_min;
  int64_t quant_max;
};

// Ranges of semantics section 1 (eq. 1 of docs/quantization.md).
constexpr DtypeInfo kDtypes[] = {
    {QuantDtype::qint4, "qint4", -8, 7},
    {QuantDtype::qint8, "qint8", -128, 127},
    {QuantDtype::qint16, "qint16", -32768, 32767},
};

struct RoundingInfo {
  Rounding rounding;
  const char* name;
};

constexpr RoundingInfo kRoundings[] = {
    {Rounding::half_to_even, "half_to_even"},
    {Rounding::half_up, "half_up"},
};

const DtypeInfo& info(QuantDtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) {
      return d;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "QuantDtype value ", static_cast<int>(dtype), " has no table entry");
}

template <typename Table>
std::string valid_names(const Table& table) {
  std::string names;
  for (const auto& entry : table) {
    names += names.empty() ? "" : ", ";
    names += entry.name;
  }
  return names;
}

}  // namespace

QuantDtype quant_dtype_from_string(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) {
      return d.dtype;
    }
  }
  TORCH_CHECK(false, "unknown quantization dtype '", name,
              "'; valid names: ", valid_names(kDtypes));
}

std::string to_string(QuantDtype dtype) {
  return info(dtype).name;
}

Rounding rounding_from_string(const std::string& name) {
  for (const auto& r : kRoundings) {
    if (name == r.name) {
      return r.rounding;
    }
  }
  TORCH_CHECK(false, "unknown rounding '", name, "'; valid names: ", valid_names(kRoundings));
}

std::string to_string(Rounding rounding) {
  for (const auto& r : kRoundings) {
    if (r.rounding == rounding) {
      return r.name;
    }
  }
  TORCH_INTERNAL_ASSERT(false, "Rounding value ", static_cast<int>(rounding),
                        " has no table entry");
}

int64_t default_quant_min(QuantDtype dtype, bool unsigned_grid) {
  return unsigned_grid ? 0 : info(dtype).quant_min;
}
int64_t default_quant_max(QuantDtype dtype, bool unsigned_grid) {
  // 2^b - 1: the signed range's width.
  return unsigned_grid ? info(dtype).quant_max - info(dtype).quant_min : info(dtype).quant_max;
}

QuantSpec& QuantSpec::quant_range(int64_t quant_min, int64_t quant_max) {
  quant_min_override_ = quant_min;
  quant_max_override_ = quant_max;
  return *this;
}

QuantSpec& QuantSpec::default_quant_range() {
  quant_min_override_ = c10::nullopt;
  quant_max_override_ = c10::nullopt;
  return *this;
}

int64_t QuantSpec::quant_min() const {
  return quant_min_override_.value_or(default_quant_min(dtype_, unsigned_grid_));
}

int64_t QuantSpec::quant_max() const {
  return quant_max_override_.value_or(default_quant_max(dtype_, unsigned_grid_));
}

namespace {
// "qint8" -> "quint8" on an unsigned grid (PyTorch's names for the same integer ranges).
std::string grid_name(QuantDtype dtype, bool unsigned_grid) {
  const std::string name = to_string(dtype);
  return unsigned_grid ? "qu" + name.substr(1) : name;
}
}  // namespace

void QuantSpec::validate() const {
  const int64_t lo = default_quant_min(dtype_, unsigned_grid_);
  const int64_t hi = default_quant_max(dtype_, unsigned_grid_);
  const std::string name = grid_name(dtype_, unsigned_grid_);
  TORCH_CHECK(quant_min() >= lo && quant_max() <= hi, "quant range [", quant_min(), ", ",
              quant_max(), "] must lie inside the ", name, " range [", lo, ", ", hi, "]");
  TORCH_CHECK(!unsigned_grid_ || symmetric_,
              "an unsigned grid has zero point 0 and needs symmetric = true; affine grids "
              "choose their own zero point (set one of the two)");
  TORCH_CHECK(!unsigned_grid_ || quant_min() == 0, "an unsigned grid starts at 0; got quant_min ",
              quant_min(), " (real 0 must be a level of the grid)");
  TORCH_CHECK(quant_min() < quant_max(), "quant_min (", quant_min(),
              ") must be less than quant_max (", quant_max(), ")");
}

std::string QuantSpec::str() const {
  std::ostringstream out;
  out << grid_name(dtype_, unsigned_grid_) << "[" << quant_min() << "," << quant_max() << "] ";
  if (per_channel_) {
    out << "per_channel(axis=" << ch_axis_ << ")";
  } else {
    out << "per_tensor";
  }
  out << (unsigned_grid_ ? " unsigned "
          : symmetric_   ? " symmetric "
                         : " affine ")
      << to_string(rounding_);
  if (power_of_two_) {
    out << " power_of_two";
  }
  return out.str();
}

bool QuantSpec::operator==(const QuantSpec& other) const {
  // ch_axis only matters per channel, but two specs that differ in it are still different
  // configurations (a later per_channel(true) would expose the difference).
  return dtype_ == other.dtype_ && per_channel_ == other.per_channel_ &&
         ch_axis_ == other.ch_axis_ && rounding_ == other.rounding_ &&
         power_of_two_ == other.power_of_two_ && symmetric_ == other.symmetric_ &&
         unsigned_grid_ == other.unsigned_grid_ && quant_min() == other.quant_min() &&
         quant_max() == other.quant_max();
}

}  // namespace calq
