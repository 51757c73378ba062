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

Profile profile_from_string(const std::string& name) {
  if (name == "ort-cpu") return ort_cpu_profile();
  TORCH_CHECK(false, "unknown export profile '", name, "'; valid profiles: ort-cpu");
}

}  // namespace deploy
}  // namespace calq
