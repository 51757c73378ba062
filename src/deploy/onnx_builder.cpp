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

Attribute Attribute::reals(std::string name, std::vector<float> values) {
  Attribute a;
  a.name = std::move(name);
  a.kind = Kind::reals;
  a.floats = std::move(values);
  return a;
}

Attribute Attribute::string(std::string name, std::string value) {
  Attribute a;
  a.name = std::move(name);
  a.kind = Kind::string;
  a.s = std::move(value);
  return a;
}

Attribute Attribute::string_list(std::string name, std::vector<std::string> values) {
  Attribute a;
  a.name = std::move(name);
  a.kind = Kind::strings;
  a.strings = std::move(values);
  return a;
}

Attribute Attribute::tensor(std::string name, at::Tensor value) {
  Attribute a;
  a.name = std::move(name);
  a.kind = Kind::tensor;
  a.t = std::move(value);
  return a;
}

int32_t onnx_type(at::ScalarType type, const std::string& what) {
  switch (type) {
    case at::kFloat:
      return ::onnx::TensorProto::FLOAT;
    case at::kDouble:
      return ::onnx::TensorProto::DOUBLE;
    case at::kHalf:
      return ::onnx::TensorProto::FLOAT16;
    case at::kBFloat16:
      return ::onnx::TensorProto::BFLOAT16;
    case at::kChar:
      return ::onnx::TensorProto::INT8;
    case at::kByte:
      return ::onnx::TensorProto::UINT8;
    case at::kShort:
      return ::onnx::TensorProto::INT16;
    case at::kInt:
      return ::onnx::TensorProto::INT32;
    case at::kLong:
      return ::onnx::TensorProto::INT64;
    case at::kBool:
      return ::onnx::TensorProto::BOOL;
    default:
      TORCH_CHECK(false, what, ": dtype ", type,
                  " has no ONNX tensor type calq writes (float32/64/16, bfloat16, int8-64, uint8, "
                  "bool)");
  }
}

namespace {

// Writes `values` into `t` (name and type set by the caller): dims and the raw little-endian
// bytes of its dtype.
void fill_tensor(::onnx::TensorProto* t, const at::Tensor& values) {
  for (int64_t d : values.sizes()) t->add_dims(d);
  const at::Tensor c = values.detach().cpu().contiguous();
  t->mutable_raw_data()->assign(static_cast<const char*>(c.data_ptr()),
                                static_cast<size_t>(c.numel()) * c.element_size());
}

}  // namespace

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

void GraphBuilder::reserve(const std::string& name) {
  TORCH_CHECK(!name.empty(), "onnx graph: an input or output needs a non-empty name");
  TORCH_CHECK(names_.insert(name).second, "onnx graph: the name '", name,
              "' is used twice; graph inputs and outputs need distinct names");
}

std::string GraphBuilder::initializer(const std::string& base, const at::Tensor& values) {
  ::onnx::TensorProto* t = graph_->add_initializer();
  const std::string name = unique(base);
  t->set_name(name);
  t->set_data_type(onnx_type(values.scalar_type(), "initializer '" + name + "'"));
  fill_tensor(t, values);
  return name;
}

std::string GraphBuilder::initializer(const std::string& base, const at::Tensor& values,
                                      int32_t type) {
  ::onnx::TensorProto* t = graph_->add_initializer();
  const std::string name = unique(base);
  t->set_name(name);
  t->set_data_type(type);
  for (int64_t d : values.sizes()) t->add_dims(d);
  std::string* raw = t->mutable_raw_data();
  switch (type) {
    case ::onnx::TensorProto::FLOAT:
      append_raw<float>(values, raw);
      break;
    case ::onnx::TensorProto::INT8:
      append_raw<int8_t>(values, raw);
      break;
    case ::onnx::TensorProto::UINT8:
      append_raw<uint8_t>(values, raw);
      break;
    case ::onnx::TensorProto::INT16:
      append_raw<int16_t>(values, raw);
      break;
    case ::onnx::TensorProto::UINT16:
      append_raw<uint16_t>(values, raw);
      break;
    case ::onnx::TensorProto::INT32:
      append_raw<int32_t>(values, raw);
      break;
    case ::onnx::TensorProto::INT64:
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
  return node(op_type, inputs, std::vector<std::string>{output_base}, attributes, domain).at(0);
}

std::vector<std::string> GraphBuilder::node(const std::string& op_type,
                                            const std::vector<std::string>& inputs,
                                            const std::vector<std::string>& output_bases,
                                            const std::vector<Attribute>& attributes,
                                            const std::string& domain) {
  ::onnx::NodeProto* n = graph_->add_node();
  n->set_op_type(op_type);
  std::string first;
  for (const auto& base : output_bases) {
    if (!base.empty() && first.empty()) first = base;
  }
  n->set_name(unique((first.empty() ? std::string("node") : first) + "/" + op_type));
  if (!domain.empty()) {
    n->set_domain(domain);
    domains_.insert(domain);
  }
  for (const std::string& input : inputs) n->add_input(input);
  std::vector<std::string> outputs;
  for (const auto& base : output_bases) {
    outputs.push_back(base.empty() ? std::string() : unique(base));
    n->add_output(outputs.back());
  }
  for (const Attribute& a : attributes) {
    ::onnx::AttributeProto* attr = n->add_attribute();
    attr->set_name(a.name);
    switch (a.kind) {
      case Attribute::Kind::integer:
        attr->set_type(::onnx::AttributeProto::INT);
        attr->set_i(a.i);
        break;
      case Attribute::Kind::integers:
        attr->set_type(::onnx::AttributeProto::INTS);
        for (int64_t v : a.ints) attr->add_ints(v);
        break;
      case Attribute::Kind::real:
        attr->set_type(::onnx::AttributeProto::FLOAT);
        attr->set_f(a.f);
        break;
      case Attribute::Kind::reals:
        attr->set_type(::onnx::AttributeProto::FLOATS);
        for (float v : a.floats) attr->add_floats(v);
        break;
      case Attribute::Kind::string:
        attr->set_type(::onnx::AttributeProto::STRING);
        attr->set_s(a.s);
        break;
      case Attribute::Kind::strings:
        attr->set_type(::onnx::AttributeProto::STRINGS);
        for (const auto& v : a.strings) attr->add_strings(v);
        break;
      case Attribute::Kind::tensor: {
        attr->set_type(::onnx::AttributeProto::TENSOR);
        ::onnx::TensorProto* t = attr->mutable_t();
        t->set_data_type(onnx_type(a.t.scalar_type(), "attribute '" + a.name + "'"));
        fill_tensor(t, a.t);
        break;
      }
    }
  }
  return outputs;
}

std::string serialize_model(::onnx::ModelProto& proto, const GraphBuilder& builder, int64_t opset) {
  // The IR version that introduced the opset (ONNX's versioning table): 8 up to opset 18,
  // 9 for 19-20, 10 for 21.
  proto.set_ir_version(opset >= 21 ? 10 : opset >= 19 ? 9 : 8);
  proto.set_producer_name("calq");
  proto.set_producer_version("0.1.0");
  ::onnx::OperatorSetIdProto* standard = proto.add_opset_import();
  standard->set_domain("");
  standard->set_version(opset);
  for (const auto& domain : builder.domains()) {
    ::onnx::OperatorSetIdProto* extra = proto.add_opset_import();
    extra->set_domain(domain);
    extra->set_version(1);
  }
  std::string bytes;
  TORCH_CHECK(proto.SerializeToString(&bytes), "export: the ONNX model could not be serialized");
  return bytes;
}

}  // namespace detail
}  // namespace deploy
}  // namespace calq
