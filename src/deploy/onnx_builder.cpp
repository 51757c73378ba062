#include "deploy/onnx_builder.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <limits>

namespace calq {
namespace deploy {
namespace detail {
namespace {

// Appends the values of `t` to `raw` as little-endian T (x86-64 and ONNX are little-endian).
template <typename T>
void append_raw(const at::Tensor& t, std::string* raw) {
  const at::Tensor values = t.to(at::kDouble).contiguous().view({-1});
  const double* p = values.data_ptr<double>();
  raw->reserve(raw->size() + static_cast<size_t>(values.numel()) * sizeof(T));
  for (int64_t i = 0; i < values.numel(); ++i) {
    if (std::is_integral<T>::value) {
      TORCH_CHECK(std::nearbyint(p[i]) == p[i] &&
                      p[i] >= static_cast<double>(std::numeric_limits<T>::min()) &&
                      p[i] <= static_cast<double>(std::numeric_limits<T>::max()),
                  "onnx initializer: value ", p[i], " at index ", i,
                  " does not fit the integer type of the initializer");
    }
    const T v = static_cast<T>(p[i]);
    char bytes[sizeof(T)];
    std::memcpy(bytes, &v, sizeof(T));
    raw->append(bytes, sizeof(T));
  }
}

}  // namespace

Attribute Attribute::integer(std::string name, int64_t value) {
  Attribute a;
  a.name = std::move(name);
  a.kind = Kind::integer;
  a.i = value;
  return a;
}

Attribute Attribute::integers(std::string name, std::vector<int64_t> values) {
  Attribute a;
  a.name = std::move(name);
  a.kind = Kind::integers;
  a.ints = std::move(values);
  return a;
}

Attribute Attribute::real(std::string name, float value) {
  Attribute a;
  a.name = std::move(name);
  a.kind = Kind::real;
  a.f = value;
  return a;
}

std::string GraphBuilder::unique(const std::string& base) {
  std::string clean = base.empty() ? "t" : base;
  for (char& c : clean) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '/')) c = '_';
  }
  std::string name = clean;
  for (int k = 1; names_.count(name) > 0; ++k) name = clean + "_" + std::to_string(k);
  names_.insert(name);
  return name;
}

std::string GraphBuilder::initializer(const std::string& base, const at::Tensor& values,
                                      int32_t type) {
  onnx::TensorProto* t = graph_->add_initializer();
  const std::string name = unique(base);
  t->set_name(name);
  t->set_data_type(type);
  for (int64_t d : values.sizes()) t->add_dims(d);
  std::string* raw = t->mutable_raw_data();
  switch (type) {
    case onnx::TensorProto::FLOAT:
      append_raw<float>(values, raw);
      break;
    case onnx::TensorProto::INT8:
      append_raw<int8_t>(values, raw);
      break;
    case onnx::TensorProto::UINT8:
      append_raw<uint8_t>(values, raw);
      break;
    case onnx::TensorProto::INT16:
      append_raw<int16_t>(values, raw);
      break;
    case onnx::TensorProto::INT32:
      append_raw<int32_t>(values, raw);
      break;
    case onnx::TensorProto::INT64:
      append_raw<int64_t>(values, raw);
      break;
    default:
      TORCH_CHECK(false, "onnx initializer: unsupported data type ", type);
  }
  return name;
}

std::string GraphBuilder::node(const std::string& op_type, const std::vector<std::string>& inputs,
                               const std::string& output_base,
                               const std::vector<Attribute>& attributes,
                               const std::string& domain) {
  onnx::NodeProto* n = graph_->add_node();
  n->set_op_type(op_type);
  n->set_name(unique(output_base + "/" + op_type));
  if (!domain.empty()) {
    n->set_domain(domain);
    domains_.insert(domain);
  }
  for (const std::string& input : inputs) n->add_input(input);
  const std::string output = unique(output_base);
  n->add_output(output);
  for (const Attribute& a : attributes) {
    onnx::AttributeProto* attr = n->add_attribute();
    attr->set_name(a.name);
    switch (a.kind) {
      case Attribute::Kind::integer:
        attr->set_type(onnx::AttributeProto::INT);
        attr->set_i(a.i);
        break;
      case Attribute::Kind::integers:
        attr->set_type(onnx::AttributeProto::INTS);
        for (int64_t v : a.ints) attr->add_ints(v);
        break;
      case Attribute::Kind::real:
        attr->set_type(onnx::AttributeProto::FLOAT);
        attr->set_f(a.f);
        break;
    }
  }
  return output;
}

}  // namespace detail
}  // namespace deploy
}  // namespace calq
