// Graph: a hand-built DAG computes what the same hand-written calq::nn model computes, and
// every workflow function treats both alike (same module names, same state, same results).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "calq/graph/graph.h"
#include "calq/nn.h"
#include "calq/workflow.h"

namespace {

using calq::graph::Graph;
using calq::graph::Node;
using calq::graph::NodeFunction;

// The reference: quant -> conv (Conv-BN-ReLU) -> branch (Conv-BN) + skip -> AddReLU ->
// softmax over channels (a float function) -> flatten -> fc.
class HandNetImpl : public torch::nn::Module {
 public:
  HandNetImpl() {
    quant = register_module("quant", calq::nn::QuantStub());
    conv = register_module(
        "conv", calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(1, 4, 3).padding(1).bias(false)));
    branch = register_module(
        "branch", calq::nn::ConvBn2d(calq::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)));
    add = register_module("add", calq::nn::AddReLU());
    fc = register_module("fc", calq::nn::Linear(4 * 6 * 6, 3));
  }
  at::Tensor forward(const at::Tensor& x) {
    at::Tensor y = conv(quant(x));
    y = add(branch(y), y);
    y = at::softmax(y, 1).flatten(1);
    return fc(y);
  }
  calq::nn::QuantStub quant{nullptr};
  calq::nn::ConvBnReLU2d conv{nullptr};
  calq::nn::ConvBn2d branch{nullptr};
  calq::nn::AddReLU add{nullptr};
  calq::nn::Linear fc{nullptr};
};
TORCH_MODULE(HandNet);

template <typename M>
NodeFunction unary() {
  return [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
    return std::vector<at::Tensor>{static_cast<M&>(m).forward(in[0])};
  };
}

Node make_node(const std::string& name, const std::string& op,
               std::shared_ptr<torch::nn::Module> module, NodeFunction f,
               std::vector<std::string> inputs, std::vector<std::string> outputs) {
  Node n;
  n.name = name;
  n.op_type = op;
  n.module = std::move(module);
  n.function = std::move(f);
  n.inputs = std::move(inputs);
  n.outputs = std::move(outputs);
  return n;
}

// The same network as a graph with the same module names.
Graph build_graph() {
  Graph g;
  g->add_input("x");
  g->add_node(make_node("quant", "QuantStub", calq::nn::QuantStub().ptr(),
                        unary<calq::nn::QuantStubImpl>(), {"x"}, {"xq"}));
  g->add_node(make_node(
      "conv", "Conv+BatchNormalization+Relu",
      calq::nn::ConvBnReLU2d(calq::nn::Conv2dOptions(1, 4, 3).padding(1).bias(false)).ptr(),
      unary<calq::nn::ConvBnReLU2dImpl>(), {"xq"}, {"c"}));
  g->add_node(
      make_node("branch", "Conv+BatchNormalization",
                calq::nn::ConvBn2d(calq::nn::Conv2dOptions(4, 4, 3).padding(1).bias(false)).ptr(),
                unary<calq::nn::ConvBn2dImpl>(), {"c"}, {"b"}));
  g->add_node(make_node("add", "Add+Relu", calq::nn::AddReLU().ptr(),
                        [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
                          return std::vector<at::Tensor>{
                              static_cast<calq::nn::AddReLUImpl&>(m).forward(in[0], in[1])};
                        },
                        {"b", "c"}, {"s"}));
  auto softmax = calq::nn::FloatFunction(
      "Softmax",
      [](const std::vector<at::Tensor>& in, bool) {
        return std::vector<at::Tensor>{at::softmax(in[0], 1).flatten(1)};
      },
      /*quantization_point=*/true);
  g->add_node(make_node("softmax", "Softmax", softmax.ptr(),
                        [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
                          return static_cast<calq::nn::FloatFunctionImpl&>(m).forward(in);
                        },
                        {"s"}, {"p"}));
  g->add_node(make_node("fc", "Gemm", calq::nn::Linear(4 * 6 * 6, 3).ptr(),
                        unary<calq::nn::LinearImpl>(), {"p"}, {"y"}));
  g->add_output("y");
  return g;
}

std::vector<at::Tensor> batches(int64_t n, int64_t seed) {
  torch::manual_seed(seed);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(torch::randn({5, 1, 6, 6}));
  return out;
}

void randomize(torch::nn::Module& m, int64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (auto& p : m.named_parameters()) p.value().uniform_(-0.5, 0.5);
  for (auto& b : m.named_buffers()) {
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
    if (b.key().find("running_mean") != std::string::npos) b.value().uniform_(-0.2, 0.2);
  }
}

TEST(Graph, SameModulesAndFloatOutputAsHandWrittenModel) {
  HandNet hand;
  randomize(*hand, 1);
  Graph graph = build_graph();
  calq::copy_float_state(*hand, *graph);
  std::vector<std::string> a, b;
  for (const auto& item : hand->named_modules("", false)) a.push_back(item.key());
  for (const auto& item : graph->named_modules("", false)) {
    if (item.key() != "softmax") b.push_back(item.key());
  }
  EXPECT_EQ(a, b);
  hand->eval();
  graph->eval();
  const at::Tensor x = batches(1, 2)[0];
  EXPECT_TRUE(torch::equal(hand(x), graph(x)));
}

TEST(Graph, WorkflowGivesTheSameResultsAsOnTheHandWrittenModel) {
  HandNet hand;
  randomize(*hand, 3);
  Graph graph = build_graph();
  calq::copy_float_state(*hand, *graph);
  const auto qconfig =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "percentile");
  calq::QConfigOverrides overrides;
  overrides.by_name["fc"] = calq::QConfig{};
  EXPECT_EQ(calq::fuse(*hand), 2);
  EXPECT_EQ(calq::fuse(*graph), 2);
  calq::prepare_qat(*hand, qconfig, overrides);
  calq::prepare_qat(*graph, qconfig, overrides);
  const auto data = batches(3, 4);
  calq::calibrate(hand, data);
  calq::calibrate(graph, data);
  calq::set_fake_quantize(*hand, calq::FakeQuantState::VALIDATION);
  calq::set_fake_quantize(*graph, calq::FakeQuantState::VALIDATION);
  const at::Tensor x = batches(1, 5)[0];
  const at::Tensor expected = hand(x);
  // The float function's output fake-quant is the graph's one extra quantization point; with
  // its scale set from the same data, graph and hand model differ only by its rounding.
  EXPECT_LT((graph(x) - expected).abs().max().item<double>(), 0.05);
  // Calibration state loads into a fresh prepared graph; validation is then bit for bit.
  Graph fresh = build_graph();
  calq::copy_float_state(*graph, *fresh);
  calq::fuse(*fresh);
  calq::prepare_qat(*fresh, qconfig, overrides);
  const calq::LoadReport report = calq::load_observer_params(*graph, *fresh);
  EXPECT_TRUE(report.ok()) << report.str();
  calq::set_fake_quantize(*fresh, calq::FakeQuantState::VALIDATION);
  EXPECT_TRUE(torch::equal(fresh(x), graph(x)));
  // Save / load round trip.
  std::stringstream stream;
  torch::save(graph, stream);
  Graph restored = build_graph();
  calq::fuse(*restored);
  calq::prepare_qat(*restored, qconfig, overrides);
  torch::load(restored, stream);
  calq::set_fake_quantize(*restored, calq::FakeQuantState::VALIDATION);
  EXPECT_TRUE(torch::equal(restored(x), graph(x)));
  // check_qconfig lists the float function as a quantization point with its type.
  bool saw_softmax = false;
  for (const auto& row : calq::check_qconfig(*graph)) {
    if (row.name == "softmax") {
      saw_softmax = true;
      EXPECT_EQ(row.type_name, "Softmax");
      EXPECT_NE(row.output.find("percentile"), std::string::npos) << row.output;
    }
  }
  EXPECT_TRUE(saw_softmax);
}

TEST(Graph, PerTypeOverrideReachesFloatFunctions) {
  Graph graph = build_graph();
  calq::fuse(*graph);
  calq::QConfigOverrides overrides;
  overrides.by_type["Softmax"] =
      calq::get_default_qconfig(std::string("fake_quant"), std::string("fake_quant"), "min_max",
                                "min_max", {{"dtype", "qint16"}});
  calq::prepare_qat(*graph, calq::get_default_qconfig(), overrides);
  auto* softmax = graph->find_node("softmax")->quant_module();
  ASSERT_NE(softmax, nullptr);
  EXPECT_EQ(softmax->output_fake_quant()->spec().dtype(), calq::QuantDtype::qint16);
}

TEST(Graph, ConstantsAreStateAndErrorsNameTheNode) {
  Graph g;
  g->add_input("x");
  const std::string registered = g->add_constant("/embed.pos", torch::ones({3}), true);
  EXPECT_EQ(registered, "const_embed_pos");
  g->add_node(make_node("add", "Add", calq::nn::Add().ptr(),
                        [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
                          return std::vector<at::Tensor>{
                              static_cast<calq::nn::AddImpl&>(m).forward(in[0], in[1])};
                        },
                        {"x", "/embed.pos"}, {"y"}));
  g->add_output("y");
  EXPECT_TRUE(g->named_parameters().contains("const_embed_pos"));
  EXPECT_TRUE(torch::equal(g(torch::zeros({2, 3})), torch::ones({2, 3})));
  // Gradients reach the constant.
  g(torch::zeros({2, 3})).sum().backward();
  EXPECT_TRUE(torch::equal(g->named_parameters()["const_embed_pos"].grad(), torch::full({3}, 2.0)));
  try {
    g(torch::zeros({2, 4}));
    FAIL() << "expected a shape error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("node 'add' (Add)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(g->unique_name("add"), "add_2");
  EXPECT_EQ(g->unique_name("/layer1/layer1.0/conv1/Conv"), "layer1_layer1_0_conv1_Conv");
  EXPECT_THROW(g->add_node(make_node("late", "Relu", calq::nn::ReLU().ptr(),
                                     unary<calq::nn::ReLUImpl>(), {"undefined"}, {"z"})),
               c10::Error);
  EXPECT_THROW(g->add_input("y"), c10::Error);
  EXPECT_THROW(g->forward(std::vector<at::Tensor>{}), c10::Error);
}

TEST(Graph, ReleasedIntermediatesDoNotChangeResults) {
  // A value read by two later nodes stays alive until its last reader.
  Graph g;
  g->add_input("x");
  auto relu = [](const std::string& name, const std::string& in, const std::string& out) {
    return make_node(name, "Relu", calq::nn::ReLU().ptr(), unary<calq::nn::ReLUImpl>(), {in},
                     {out});
  };
  g->add_node(relu("r1", "x", "a"));
  g->add_node(relu("r2", "a", "b"));
  g->add_node(make_node("add", "Add", calq::nn::Add().ptr(),
                        [](torch::nn::Module& m, const std::vector<at::Tensor>& in) {
                          return std::vector<at::Tensor>{
                              static_cast<calq::nn::AddImpl&>(m).forward(in[0], in[1])};
                        },
                        {"a", "b"}, {"y"}));
  g->add_output("y");
  g->add_output("a");
  const at::Tensor x = torch::randn({4});
  auto out = g->forward(std::vector<at::Tensor>{x});
  EXPECT_TRUE(torch::equal(out[0], 2 * torch::relu(x)));
  EXPECT_TRUE(torch::equal(out[1], torch::relu(x)));
}

}  // namespace
