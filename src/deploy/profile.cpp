#include "calq/deploy/profile.h"

#include <c10/util/Exception.h>

namespace calq {
namespace deploy {
namespace {

bool ort_integer_activation(QuantDtype dtype) {
  return dtype == QuantDtype::qint8;
}

}  // namespace

Profile ort_cpu_profile() {
  Profile p;
  p.name = "ort-cpu";
  p.opset = 13;
  p.integer_activation = &ort_integer_activation;
  p.int16_qdq_domain = "com.microsoft";
  p.quantize_before_relu = true;
  p.requantize_pass_through = true;
  p.uint8_activations = true;
  return p;
}

IntegerArithmetic integer_arithmetic(const Profile& profile, Requantization requantization) {
  IntegerArithmetic a;
  a.requantization = requantization;
  a.uint8_activations = profile.uint8_activations;
  a.integer_dtypes.clear();
  for (QuantDtype dtype : {QuantDtype::qint4, QuantDtype::qint8, QuantDtype::qint16}) {
    if (profile.integer_activation == nullptr || profile.integer_activation(dtype)) {
      a.integer_dtypes.push_back(dtype);
    }
  }
  return a;
}

Profile profile_from_string(const std::string& name) {
  if (name == "ort-cpu") return ort_cpu_profile();
  TORCH_CHECK(false, "unknown export profile '", name, "'; valid profiles: ort-cpu");
}

}  // namespace deploy
}  // namespace calq
