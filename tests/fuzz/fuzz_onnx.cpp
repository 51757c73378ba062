// libFuzzer target: the ONNX reader (parse_model_bytes: protobuf parsing, calq's validation,
// libonnx's checker) on arbitrary bytes; built with CALQ_FUZZ_IMPORT (fuzz_import), also the
// LibTorch import stage on every model the reader accepts. Every input must either parse or raise
// c10::Error; AddressSanitizer and UBSan report anything else.
//
// Structure-aware mutation: LLVMFuzzerCustomMutator parses the input as a ModelProto and
// changes one field that calq reads (op types, attributes, inputs and outputs, tensor dims,
// types and data, external data entries, value infos, opsets), so most mutants are
// well-formed protobuf that reach the validation code; inputs that do not parse fall back to
// libFuzzer's byte mutations.
#include <c10/util/Exception.h>
#include <onnx/onnx_pb.h>

#include <cstdint>
#include <random>
#include <string>

#include "calq/onnx/model.h"
#ifdef CALQ_FUZZ_IMPORT
#include "calq/onnx/import.h"
#endif

namespace {

const char* kOps[] = {"Conv",
                      "Add",
                      "Relu",
                      "Gemm",
                      "MatMul",
                      "Reshape",
                      "Concat",
                      "Split",
                      "Slice",
                      "Resize",
                      "Softmax",
                      "Gather",
                      "Pad",
                      "MaxPool",
                      "Shape",
                      "Constant",
                      "Transpose",
                      "If",
                      "Loop",
                      "TopK",
                      "Squeeze",
                      "Unsqueeze",
                      "BatchNormalization",
                      "Cast",
                      "Range",
                      "Expand",
                      "ConstantOfShape"};

int64_t interesting_int(std::mt19937& rng) {
  const int64_t values[] = {0,
                            1,
                            -1,
                            2,
                            3,
                            -2,
                            7,
                            64,
                            255,
                            1 << 20,
                            INT32_MAX,
                            INT32_MIN,
                            INT64_MAX,
                            INT64_MIN,
                            -(int64_t(1) << 40),
                            int64_t(1) << 40};
  return values[rng() % (sizeof(values) / sizeof(values[0]))];
}

void mutate_tensor(onnx::TensorProto* t, std::mt19937& rng) {
  switch (rng() % 8) {
    case 0:
      if (t->dims_size() > 0) t->set_dims(rng() % t->dims_size(), interesting_int(rng));
      break;
    case 1:
      t->add_dims(interesting_int(rng));
      break;
    case 2:
      t->set_data_type(static_cast<int32_t>(rng() % 18));
      break;
    case 3: {
      std::string* raw = t->mutable_raw_data();
      if (!raw->empty()) raw->resize(rng() % (raw->size() + 8));
      break;
    }
    case 4: {
      t->set_data_location(onnx::TensorProto::EXTERNAL);
      auto* e = t->add_external_data();
      const char* keys[] = {"location", "offset", "length"};
      const char* values[] = {"../x", "/etc/passwd", "w.bin", "-1", "99999999999999999999", "0"};
      e->set_key(keys[rng() % 3]);
      e->set_value(values[rng() % 6]);
      break;
    }
    case 5:
      t->add_float_data(1.0f);
      break;
    case 6:
      t->clear_raw_data();
      t->add_int64_data(interesting_int(rng));
      break;
    default:
      t->set_name(t->name() + "_");
  }
}

void mutate_node(onnx::NodeProto* n, onnx::GraphProto* g, std::mt19937& rng) {
  switch (rng() % 9) {
    case 0:
      n->set_op_type(kOps[rng() % (sizeof(kOps) / sizeof(kOps[0]))]);
      break;
    case 1:
      if (n->input_size() > 0 && g->node_size() > 0) {
        const auto& other = g->node(rng() % g->node_size());
        if (other.output_size() > 0) n->set_input(rng() % n->input_size(), other.output(0));
      }
      break;
    case 2:
      if (n->input_size() > 0)
        n->set_input(rng() % n->input_size(), "");
      else
        n->add_input("x");
      break;
    case 3:
      n->add_output(n->output_size() > 0 ? n->output(0) : "y");
      break;
    case 4: {
      if (n->attribute_size() == 0) break;
      auto* a = n->mutable_attribute(rng() % n->attribute_size());
      if (a->ints_size() > 0)
        a->set_ints(rng() % a->ints_size(), interesting_int(rng));
      else if (a->has_i())
        a->set_i(interesting_int(rng));
      else if (a->has_f())
        a->set_f(rng() % 2 ? 1e30f : -0.0f);
      else if (a->has_t())
        mutate_tensor(a->mutable_t(), rng);
      else
        a->set_type(static_cast<onnx::AttributeProto_AttributeType>(rng() % 15));
      break;
    }
    case 5: {
      auto* a = n->add_attribute();
      const char* names[] = {"axis",  "pads",      "kernel_shape", "strides", "group",
                             "perm",  "to",        "axes",         "mode",    "value",
                             "split", "blocksize", "dilations"};
      a->set_name(names[rng() % 13]);
      if (rng() % 2) {
        a->set_type(onnx::AttributeProto::INT);
        a->set_i(interesting_int(rng));
      } else {
        a->set_type(onnx::AttributeProto::INTS);
        for (unsigned k = rng() % 6; k > 0; --k) a->add_ints(interesting_int(rng));
      }
      break;
    }
    case 6:
      n->set_domain(rng() % 2 ? "com.microsoft" : "ai.onnx");
      break;
    case 7:
      n->set_name(g->node_size() > 0 ? g->node(rng() % g->node_size()).name() : "");
      break;
    default:
      n->clear_output();
  }
}

size_t mutate(uint8_t* data, size_t size, size_t max_size, unsigned seed) {
  onnx::ModelProto model;
  if (!model.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::mt19937 rng(seed);
  onnx::GraphProto* g = model.mutable_graph();
  switch (rng() % 8) {
    case 0:
    case 1:
    case 2:
      if (g->node_size() > 0) mutate_node(g->mutable_node(rng() % g->node_size()), g, rng);
      break;
    case 3:
      if (g->initializer_size() > 0) {
        mutate_tensor(g->mutable_initializer(rng() % g->initializer_size()), rng);
      }
      break;
    case 4:
      if (g->node_size() > 1) {
        g->mutable_node()->SwapElements(rng() % g->node_size(), rng() % g->node_size());
      }
      break;
    case 5:
      if (model.opset_import_size() > 0) {
        model.mutable_opset_import(0)->set_version(static_cast<int64_t>(rng() % 24));
      }
      break;
    case 6:
      if (g->input_size() > 0) {
        auto* shape = g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
        if (shape->dim_size() > 0) {
          shape->mutable_dim(rng() % shape->dim_size())->set_dim_value(interesting_int(rng));
        }
      }
      break;
    default:
      if (g->node_size() > 0 && rng() % 2) {
        g->mutable_node()->DeleteSubrange(rng() % g->node_size(), 1);
      } else if (g->node_size() > 0) {
        *g->add_node() = g->node(rng() % g->node_size());
      }
  }
  std::string out;
  if (!model.SerializeToString(&out) || out.size() > max_size) return 0;
  std::copy(out.begin(), out.end(), data);
  return out.size();
}

}  // namespace

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  if (seed % 4 != 0) {
    const size_t n = mutate(data, size, max_size, seed);
    if (n > 0) return n;
  }
  return LLVMFuzzerMutate(data, size, max_size);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  calq::onnx::ParseOptions options;
  options.run_checker = true;
  try {
    calq::onnx::Model model = calq::onnx::parse_model_bytes(data, size, options);
    // Touch what the importer reads: every attribute getter on every node.
    for (const auto& node : model.nodes) {
      for (const auto& a : node.attributes) {
        try {
          (void)node.attr_int(a.first, 0);
        } catch (const c10::Error&) {
        }
      }
    }
#ifdef CALQ_FUZZ_IMPORT
    // The whole import (LibTorch stage: constant folding, fusion, module building, the
    // shape-check forward) on what the reader accepted.
    calq::onnx::import_model(model);
#endif
  } catch (const c10::Error&) {
  }
  try {
    calq::onnx::parse_tensor_bytes(data, size, "fuzz");
  } catch (const c10::Error&) {
  }
  return 0;
}
