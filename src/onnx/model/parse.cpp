// ModelProto -> calq::onnx::Model: protobuf parsing, then every check the importer relies on,
// in calq's own code (libonnx's checker runs afterwards where it knows the opset; its shape
// inference is not used: it was not written for hostile input).
#include <c10/util/Exception.h>
#include <google/protobuf/io/coded_stream.h>
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <queue>
#include <set>
#include <sstream>

#include "calq/onnx/model.h"
#include "onnx/model/operators.h"
#include "onnx/model/tensor_data.h"

namespace calq {
namespace onnx {

const char* to_string(ElementType type) {
  switch (type) {
    case ElementType::float32:
      return "float32";
    case ElementType::uint8:
      return "uint8";
    case ElementType::int8:
      return "int8";
    case ElementType::uint16:
      return "uint16";
    case ElementType::int16:
      return "int16";
    case ElementType::int32:
      return "int32";
    case ElementType::int64:
      return "int64";
    case ElementType::boolean:
      return "bool";
    case ElementType::float16:
      return "float16";
    case ElementType::float64:
      return "float64";
    case ElementType::uint32:
      return "uint32";
    case ElementType::uint64:
      return "uint64";
    case ElementType::bfloat16:
      return "bfloat16";
  }
  return "unknown";
}

size_t element_size(ElementType type) {
  switch (type) {
    case ElementType::uint8:
    case ElementType::int8:
    case ElementType::boolean:
      return 1;
    case ElementType::uint16:
    case ElementType::int16:
    case ElementType::float16:
    case ElementType::bfloat16:
      return 2;
    case ElementType::float32:
    case ElementType::int32:
    case ElementType::uint32:
      return 4;
    case ElementType::int64:
    case ElementType::float64:
    case ElementType::uint64:
      return 8;
  }
  return 1;
}

bool is_supported_element_type(int32_t t) {
  return (t >= 1 && t <= 7) || (t >= 9 && t <= 13) || t == 16;
}

const char* to_string(Attribute::Kind kind) {
  switch (kind) {
    case Attribute::Kind::float_:
      return "float";
    case Attribute::Kind::int_:
      return "int";
    case Attribute::Kind::string:
      return "string";
    case Attribute::Kind::tensor:
      return "tensor";
    case Attribute::Kind::floats:
      return "floats";
    case Attribute::Kind::ints:
      return "ints";
    case Attribute::Kind::strings:
      return "strings";
  }
  return "unknown";
}

int64_t TensorData::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

namespace {

const Attribute* find_attribute(const Node& node, const std::string& key, Attribute::Kind kind) {
  auto it = node.attributes.find(key);
  if (it == node.attributes.end()) return nullptr;
  TORCH_CHECK(it->second.kind == kind, node.describe(), ": attribute '", key, "' must be ",
              to_string(kind), ", got ", to_string(it->second.kind));
  return &it->second;
}

}  // namespace

int64_t Node::attr_int(const std::string& key, int64_t fallback) const {
  const Attribute* a = find_attribute(*this, key, Attribute::Kind::int_);
  return a ? a->i : fallback;
}
double Node::attr_float(const std::string& key, double fallback) const {
  const Attribute* a = find_attribute(*this, key, Attribute::Kind::float_);
  return a ? a->f : fallback;
}
std::string Node::attr_string(const std::string& key, const std::string& fallback) const {
  const Attribute* a = find_attribute(*this, key, Attribute::Kind::string);
  return a ? a->s : fallback;
}
std::vector<int64_t> Node::attr_ints(const std::string& key,
                                     const std::vector<int64_t>& fallback) const {
  const Attribute* a = find_attribute(*this, key, Attribute::Kind::ints);
  return a ? a->ints : fallback;
}
std::vector<double> Node::attr_floats(const std::string& key,
                                      const std::vector<double>& fallback) const {
  const Attribute* a = find_attribute(*this, key, Attribute::Kind::floats);
  return a ? a->floats : fallback;
}
std::shared_ptr<const TensorData> Node::attr_tensor(const std::string& key) const {
  const Attribute* a = find_attribute(*this, key, Attribute::Kind::tensor);
  return a ? a->t : nullptr;
}
std::string Node::describe() const {
  std::ostringstream out;
  out << "node '" << name << "' (" << (domain.empty() ? "" : domain + ".") << op_type << ", opset "
      << opset << ")";
  return out.str();
}

namespace {

Attribute read_attribute(const ::onnx::AttributeProto& proto, const std::string& where,
                         const std::string& base_dir) {
  using P = ::onnx::AttributeProto;
  Attribute a;
  auto type = proto.type();
  if (type == P::UNDEFINED) {
    // Old files leave the type out; take it from the one field that is set.
    type = proto.has_f()              ? P::FLOAT
           : proto.has_i()            ? P::INT
           : proto.has_s()            ? P::STRING
           : proto.has_t()            ? P::TENSOR
           : proto.floats_size() > 0  ? P::FLOATS
           : proto.ints_size() > 0    ? P::INTS
           : proto.strings_size() > 0 ? P::STRINGS
                                      : P::UNDEFINED;
  }
  const std::string what = where + " attribute '" + proto.name() + "'";
  switch (type) {
    case P::FLOAT:
      a.kind = Attribute::Kind::float_;
      a.f = proto.f();
      break;
    case P::INT:
      a.kind = Attribute::Kind::int_;
      a.i = proto.i();
      break;
    case P::STRING:
      a.kind = Attribute::Kind::string;
      a.s = proto.s();
      break;
    case P::TENSOR:
      a.kind = Attribute::Kind::tensor;
      a.t = std::make_shared<TensorData>(detail::read_tensor(proto.t(), what, base_dir));
      break;
    case P::FLOATS:
      a.kind = Attribute::Kind::floats;
      a.floats.assign(proto.floats().begin(), proto.floats().end());
      break;
    case P::INTS:
      a.kind = Attribute::Kind::ints;
      a.ints.assign(proto.ints().begin(), proto.ints().end());
      break;
    case P::STRINGS:
      a.kind = Attribute::Kind::strings;
      a.strings.assign(proto.strings().begin(), proto.strings().end());
      break;
    default:
      TORCH_CHECK(false, what, " has type ", static_cast<int>(type),
                  "; calq reads float, int, string, tensor, floats, ints and strings attributes ",
                  "(graphs and sparse tensors belong to operators calq does not support)");
  }
  return a;
}

ValueInfo read_value_info(const ::onnx::ValueInfoProto& proto, const std::string& what) {
  ValueInfo v;
  v.name = proto.name();
  TORCH_CHECK(!v.name.empty(), what, " has no name");
  TORCH_CHECK(proto.has_type() && proto.type().has_tensor_type(), what, " '", v.name,
              "' is not a tensor (sequences, maps and optionals are not supported)");
  const auto& tensor = proto.type().tensor_type();
  TORCH_CHECK(is_supported_element_type(tensor.elem_type()), what, " '", v.name,
              "' has element type ", tensor.elem_type(), ", which calq does not read");
  v.type = static_cast<ElementType>(tensor.elem_type());
  if (tensor.has_shape()) {
    v.has_shape = true;
    for (const auto& d : tensor.shape().dim()) {
      Dim dim;
      if (d.has_dim_value()) {
        TORCH_CHECK(d.dim_value() >= 0, what, " '", v.name, "' has a negative dimension ",
                    d.dim_value());
        dim.value = d.dim_value();
      } else if (d.has_dim_param()) {
        dim.symbol = d.dim_param();
      }
      v.shape.push_back(dim);
    }
  }
  return v;
}

// Sorts nodes so that every input is produced before use; file order where possible.
std::vector<Node> topological_order(std::vector<Node> nodes, const std::set<std::string>& given) {
  std::map<std::string, size_t> producer;
  for (size_t i = 0; i < nodes.size(); ++i) {
    for (const auto& out : nodes[i].outputs) {
      if (out.empty()) continue;
      TORCH_CHECK(given.count(out) == 0, nodes[i].describe(), " writes value '", out,
                  "', which is already a graph input or initializer");
      auto inserted = producer.emplace(out, i);
      TORCH_CHECK(inserted.second, "value '", out, "' is produced twice: by ",
                  nodes[inserted.first->second].describe(), " and by ", nodes[i].describe());
    }
  }
  std::vector<std::vector<size_t>> consumers(nodes.size());
  std::vector<size_t> pending(nodes.size(), 0);
  for (size_t i = 0; i < nodes.size(); ++i) {
    std::set<size_t> sources;
    for (const auto& in : nodes[i].inputs) {
      if (in.empty() || given.count(in) > 0) continue;
      auto it = producer.find(in);
      TORCH_CHECK(it != producer.end(), nodes[i].describe(), " reads '", in,
                  "', which is not a graph input, an initializer or a node output ",
                  "(missing initializer?)");
      sources.insert(it->second);
    }
    pending[i] = sources.size();
    for (size_t s : sources) consumers[s].push_back(i);
  }
  std::priority_queue<size_t, std::vector<size_t>, std::greater<size_t>> ready;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (pending[i] == 0) ready.push(i);
  }
  std::vector<Node> sorted;
  sorted.reserve(nodes.size());
  std::vector<bool> done(nodes.size(), false);
  while (!ready.empty()) {
    const size_t i = ready.top();
    ready.pop();
    done[i] = true;
    for (size_t c : consumers[i]) {
      if (--pending[c] == 0) ready.push(c);
    }
    sorted.push_back(std::move(nodes[i]));
  }
  if (sorted.size() != nodes.size()) {
    std::string cycle;
    int listed = 0;
    for (size_t i = 0; i < nodes.size() && listed < 8; ++i) {
      if (done[i]) continue;
      cycle += (cycle.empty() ? "" : ", ") + ("'" + nodes[i].name + "'");
      ++listed;
    }
    TORCH_CHECK(false, "the graph has a cycle: ", nodes.size() - sorted.size(),
                " nodes depend on their own outputs, among them ", cycle,
                "; ONNX graphs must be acyclic");
  }
  return sorted;
}

void run_checker(const ::onnx::ModelProto& proto) {
  try {
    ::onnx::checker::check_model(proto);
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "libonnx's checker rejected the model: ", e.what());
  }
}

Model convert(const ::onnx::ModelProto& proto, const ParseOptions& options) {
  Model model;
  model.ir_version = proto.ir_version();
  TORCH_CHECK(model.ir_version >= 3, "IR version ", model.ir_version,
              " is not supported; calq reads IR 3 and later (ONNX 1.0+)");
  std::map<std::string, int64_t> opsets;
  for (const auto& entry : proto.opset_import()) {
    std::string domain = entry.domain() == "ai.onnx" ? "" : entry.domain();
    opsets[domain] = entry.version();
  }
  TORCH_CHECK(!opsets.empty(), "the model imports no opset (opset_import is empty); is the file ",
              "truncated?");
  model.opset = opsets.count("") > 0 ? opsets.at("") : 0;
  model.producer_name = proto.producer_name();
  model.producer_version = proto.producer_version();
  TORCH_CHECK(proto.has_graph(), "the model has no graph");
  const auto& graph = proto.graph();
  model.graph_name = graph.name();
  TORCH_CHECK(graph.sparse_initializer_size() == 0, "sparse initializers are not supported");

  std::set<std::string> given;
  for (const auto& init : graph.initializer()) {
    TORCH_CHECK(!init.name().empty(), "an initializer has no name");
    TensorData t = detail::read_tensor(init, "initializer '" + init.name() + "'", options.base_dir);
    TORCH_CHECK(model.initializers.count(t.name) == 0, "initializer '", t.name,
                "' is defined twice");
    given.insert(t.name);
    model.initializers.emplace(t.name, std::move(t));
  }
  std::set<std::string> input_names;
  for (const auto& input : graph.input()) {
    if (model.initializers.count(input.name()) > 0) continue;  // a constant with a default
    ValueInfo v = read_value_info(input, "graph input");
    TORCH_CHECK(input_names.insert(v.name).second, "graph input '", v.name, "' is declared twice");
    given.insert(v.name);
    model.inputs.push_back(std::move(v));
  }
  TORCH_CHECK(graph.output_size() > 0, "the graph has no outputs");
  for (const auto& output : graph.output()) {
    model.outputs.push_back(read_value_info(output, "graph output"));
  }

  // The opset is checked before the nodes so that an old model gets this message rather
  // than one about its first node.
  bool default_domain = graph.node_size() == 0;
  for (const auto& n : graph.node())
    default_domain = default_domain || n.domain().empty() || n.domain() == "ai.onnx";
  TORCH_CHECK(!default_domain || opsets.count("") > 0, "the model imports no default-domain ",
              "opset (opset_import has no entry for '' or 'ai.onnx'); is the file truncated?");
  TORCH_CHECK(!default_domain || (model.opset >= kMinOpset && model.opset <= kMaxOpset), "opset ",
              model.opset, " is not supported; calq reads opsets ", kMinOpset, " to ", kMaxOpset,
              " (re-export the model, e.g. torch.onnx.export(..., opset_version=17))");
  std::set<std::string> names;
  std::vector<Node> nodes;
  nodes.reserve(graph.node_size());
  for (int index = 0; index < graph.node_size(); ++index) {
    const auto& p = graph.node(index);
    Node node;
    node.op_type = p.op_type();
    node.domain = p.domain() == "ai.onnx" ? "" : p.domain();
    auto opset = opsets.find(node.domain);
    node.opset = opset == opsets.end() ? 0 : opset->second;
    node.name = p.name();
    if (node.name.empty()) node.name = node.op_type + "_" + std::to_string(index);
    if (names.count(node.name) > 0) {
      int suffix = 1;
      while (names.count(node.name + "_" + std::to_string(suffix)) > 0) ++suffix;
      node.name += "_" + std::to_string(suffix);
    }
    names.insert(node.name);
    node.inputs.assign(p.input().begin(), p.input().end());
    while (!node.inputs.empty() && node.inputs.back().empty()) node.inputs.pop_back();
    node.outputs.assign(p.output().begin(), p.output().end());
    detail::validate_support(node);
    for (const auto& a : p.attribute()) {
      TORCH_CHECK(!a.name().empty(), node.describe(), " has an attribute without a name");
      TORCH_CHECK(node.attributes.count(a.name()) == 0, node.describe(), ": attribute '", a.name(),
                  "' is given twice");
      node.attributes.emplace(a.name(), read_attribute(a, node.describe(), options.base_dir));
    }
    detail::validate_node(node);
    nodes.push_back(std::move(node));
  }
  model.nodes = topological_order(std::move(nodes), given);
  std::set<std::string> defined = given;
  for (const auto& node : model.nodes) {
    for (const auto& out : node.outputs) defined.insert(out);
  }
  for (const auto& output : model.outputs) {
    TORCH_CHECK(defined.count(output.name) > 0, "graph output '", output.name,
                "' is not produced by any node, input or initializer");
  }
  return model;
}

bool has_external_data(const ::onnx::GraphProto& graph) {
  for (const auto& init : graph.initializer()) {
    if (init.data_location() == ::onnx::TensorProto::EXTERNAL) return true;
  }
  for (const auto& node : graph.node()) {
    for (const auto& a : node.attribute()) {
      if (a.has_t() && a.t().data_location() == ::onnx::TensorProto::EXTERNAL) return true;
    }
  }
  return false;
}

}  // namespace

Model parse_model_bytes(const void* data, size_t size, const ParseOptions& options) {
  TORCH_CHECK(size > 0, "the model is empty (0 bytes)");
  TORCH_CHECK(size <= static_cast<size_t>(std::numeric_limits<int>::max()), "the model is ", size,
              " bytes; protobuf files are limited to 2 GiB (store the ",
              "weights as external data)");
  ::onnx::ModelProto proto;
  google::protobuf::io::CodedInputStream stream(static_cast<const uint8_t*>(data),
                                                static_cast<int>(size));
  stream.SetRecursionLimit(64);
  TORCH_CHECK(proto.ParseFromCodedStream(&stream) && stream.ConsumedEntireMessage(),
              "the data is not a valid ONNX ModelProto (malformed or truncated protobuf, ", size,
              " bytes)");
  Model model = convert(proto, options);
  // libonnx 1.12 knows opsets up to 17 and IR up to 8. Its checker reads external data
  // paths itself, so models with external data are checked by calq's reader only.
  if (options.run_checker && model.opset <= 17 && model.ir_version <= 8 &&
      !has_external_data(proto.graph())) {
    run_checker(proto);
  }
  return model;
}

TensorData parse_tensor_bytes(const void* data, size_t size, const std::string& what) {
  TORCH_CHECK(size <= static_cast<size_t>(std::numeric_limits<int>::max()), what,
              ": tensor files are limited to 2 GiB");
  ::onnx::TensorProto proto;
  google::protobuf::io::CodedInputStream stream(static_cast<const uint8_t*>(data),
                                                static_cast<int>(size));
  TORCH_CHECK(proto.ParseFromCodedStream(&stream) && stream.ConsumedEntireMessage(), what,
              ": not a valid TensorProto (malformed or truncated)");
  return detail::read_tensor(proto, what, "");
}

Model parse_model_file(const std::string& path, ParseOptions options) {
  struct stat st;
  TORCH_CHECK(::stat(path.c_str(), &st) == 0, "cannot open ONNX model '", path,
              "': ", std::strerror(errno));
  TORCH_CHECK(S_ISREG(st.st_mode), "ONNX model '", path, "' is not a regular file");
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in.good(), "cannot open ONNX model '", path, "'");
  const std::streamoff size = static_cast<std::streamoff>(st.st_size);
  std::string bytes(static_cast<size_t>(size), '\0');
  if (size > 0) in.read(&bytes[0], size);
  TORCH_CHECK(in.good() || in.eof(), "reading ONNX model '", path, "' failed");
  if (options.base_dir.empty()) {
    const size_t slash = path.rfind('/');
    options.base_dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
    if (options.base_dir.size() > 1 && options.base_dir.back() == '/') options.base_dir.pop_back();
  }
  try {
    return parse_model_bytes(bytes.data(), bytes.size(), options);
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "ONNX model '", path, "': ", e.what_without_backtrace());
  }
}

}  // namespace onnx
}  // namespace calq
