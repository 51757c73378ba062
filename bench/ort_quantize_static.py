#!/usr/bin/env python3
"""ONNX Runtime's own static quantization (onnxruntime.quantization.quantize_static) on calq's
Fashion-MNIST torchvision models, for comparison with calq's PTQ.

The `onnxruntime` Python wheel is not installable on this machine (Debian 12, no PyPI), so this
script runs ORT's quantization *source files* (imported from --ort-src, never copied here)
through a small shim package `onnxruntime` whose InferenceSession is ONNX Runtime for Node.js
(npm onnxruntime-node): a persistent `node` process loads each model and exchanges tensors with
Python through raw files. The shim and the node server are written to --out at run time.

Needs:
  * /usr/bin/python3 with numpy and onnx (Debian python3-numpy, python3-onnx 1.12);
  * node and onnxruntime-node (default: tools/ort/node_modules/onnxruntime-node, --ort-node);
  * --ort-src: the folder onnxruntime/python/tools/quantization of an ORT source checkout
    (e.g. `git archive HEAD onnxruntime/python/tools/quantization | tar -x -C SRC`);
  * Fashion-MNIST idx files in /usr/share/datasets/fashion-mnist (dataset-fashion-mnist).

Shim deviations (none touches quantization numerics): onnx 1.12 lacks TensorProto.FLOAT8*/INT4/
UINT4 and onnx.reference, so those enum numbers (ONNX's own values) and a ReferenceEvaluator stub
that raises are added (used only for float8/int4 types); onnx.helper.tensor_dtype_to_np_dtype /
np_dtype_to_tensor_dtype (onnx >= 1.13) are added as look-ups in onnx 1.12's own onnx.mapping
tables (same dtype for every standard type); onnxruntime.tools.symbolic_shape_infer
and onnxruntime.transformers.onnx_utils are stubs that raise (only quant_pre_process uses them;
it is not run).

Protocol: preprocessing as bench/torchvision_fmnist.py ((pixel/255 - 0.2860)/0.3530);
calibration = the first 1,024 training images (--calib-n, --calib-offset; batches of --calib-batch); evaluation = the 10,000
test images, and a validation split of the training images held out as calq holds out its own
(--val-size 5000 --seed 0, see calq_hold_out) to pick the configuration ORT's user would ship; quantize_static(QuantFormat.QDQ, per_channel=True, weight_type=QInt8) with
calibrate_method in {MinMax, Percentile, Entropy} x activation {QUInt8 (asymmetric),
QInt8 + ActivationSymmetric}; each quantize_static call runs in its own subprocess so its wall
time and peak RSS (Python and node) are its own. Top-1 is computed with onnxruntime-node,
graph optimization "all", 1 thread. Prints markdown tables and writes --out/results.json and,
per model, the test predictions (argmax, int8) of the configuration best on validation to
--out/MODEL.ort_best_val.test_pred.npy (for paired comparisons). Models already in
results.json are not quantized again; missing validation scores are added to them.

    /usr/bin/python3 bench/ort_quantize_static.py --ort-src /work/ortq/src/onnxruntime/python/tools/quantization \
        --models runs/torchvision/mobilenet_v2.onnx,runs/torchvision/resnet18.onnx,runs/torchvision/shufflenet_v2_x1_0.onnx \
        --out /work/ortq/run
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FMNIST = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # as bench/torchvision_fmnist.py
METHODS = ["MinMax", "Percentile", "Entropy"]
ACTS = ["QUInt8", "QInt8sym"]

NODE_SERVER = r"""
'use strict';
// Persistent onnxruntime-node server for the Python shim. One JSON request per stdin line,
// one reply line "@@ORTQ@@{json}" on stdout; tensors as raw little-endian files.
const fs = require('fs');
const path = require('path');
const readline = require('readline');
const ort = require(process.env.ORT_NODE);
const TYPED = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, int8: Int8Array,
                uint8: Uint8Array, float64: Float64Array, bool: Uint8Array };
const sessions = new Map();
let queue = Promise.resolve();
function reply(o) { process.stdout.write('@@ORTQ@@' + JSON.stringify(o) + '\n'); }
function meta(names, md) {
  return names.map((name, i) => ({ name, type: md && md[i] ? md[i].type : null,
                                   shape: md && md[i] ? md[i].shape : null }));
}
async function handle(req) {
  if (req.op === 'load') {
    const s = await ort.InferenceSession.create(req.path, {
      graphOptimizationLevel: req.level, intraOpNumThreads: req.threads, interOpNumThreads: 1,
      executionMode: 'sequential', executionProviders: ['cpu'] });
    sessions.set(req.id, s);
    return { ok: true, inputs: meta(s.inputNames, s.inputMetadata),
             outputs: meta(s.outputNames, s.outputMetadata) };
  }
  if (req.op === 'run') {
    const s = sessions.get(req.id);
    const feeds = {};
    for (const [name, t] of Object.entries(req.feeds)) {
      const b = fs.readFileSync(t.file);
      const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength);
      feeds[name] = new ort.Tensor(t.dtype, new TYPED[t.dtype](ab), t.shape);
    }
    const names = req.outputs || s.outputNames;
    const res = await s.run(feeds, names);
    const out = {};
    names.forEach((name, i) => {
      const t = res[name], d = t.data;
      const file = path.join(req.dir, `out_${req.id}_${i}.bin`);
      fs.writeFileSync(file, Buffer.from(d.buffer, d.byteOffset, d.byteLength));
      out[name] = { file, dtype: t.type, shape: t.dims };
    });
    return { ok: true, outputs: out, order: names };
  }
  if (req.op === 'free') {
    const s = sessions.get(req.id);
    if (s) { await s.release(); sessions.delete(req.id); }
    return { ok: true };
  }
  if (req.op === 'rss') {  // VmHWM: peak RSS of this process image (getrusage would include the parent's at exec)
    const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'latin1'));
    return { ok: true, maxrss: m ? parseInt(m[1], 10) * 1024 : -1 };
  }
  throw new Error('unknown op ' + req.op);
}
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    try { reply(await handle(JSON.parse(line))); }
    catch (e) { reply({ ok: false, error: String(e && e.stack || e) }); }
  });
});
"""

SHIM_INIT = r'''
"""Shim `onnxruntime`: InferenceSession backed by onnxruntime-node (see ort_quantize_static.py)."""
import atexit, itertools, json, os, subprocess, tempfile
from enum import IntEnum
import numpy as np
from . import _onnx_compat  # noqa: F401  (before onnxruntime.quantization imports onnx.reference)

__version__ = os.environ.get("ORTQ_ORT_VERSION", "0")  # the onnxruntime-node version
_SERVER_JS = os.environ["ORTQ_SERVER_JS"]
_TMP = os.environ.get("ORTQ_TMP") or tempfile.mkdtemp(prefix="ortq_")
os.makedirs(_TMP, exist_ok=True)
_ids = itertools.count(1)
_proc = None


class GraphOptimizationLevel(IntEnum):
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_ALL = 99


_LEVEL = {0: "disabled", 1: "basic", 2: "extended", 99: "all"}


class SessionOptions:
    def __init__(self):
        self.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.intra_op_num_threads = 1
        self.inter_op_num_threads = 1
        self.optimized_model_filepath = ""
        self.log_severity_level = 2

    def add_session_config_entry(self, key, value):
        pass


def get_available_providers():
    return ["CPUExecutionProvider"]


def _server():
    global _proc
    if _proc is None or _proc.poll() is not None:
        _proc = subprocess.Popen(["node", _SERVER_JS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True, bufsize=1)
        atexit.register(_shutdown)
    return _proc


def _shutdown():
    global _proc
    if _proc is not None and _proc.poll() is None:
        _proc.stdin.close()
        _proc.wait(timeout=60)
    _proc = None


def _call(req):
    p = _server()
    p.stdin.write(json.dumps(req) + "\n")
    p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError("onnxruntime-node server exited")
        if line.startswith("@@ORTQ@@"):
            rep = json.loads(line[len("@@ORTQ@@"):])
            if not rep.get("ok"):
                raise RuntimeError("onnxruntime-node: " + rep.get("error", "?"))
            return rep


def node_max_rss():
    """Peak RSS (bytes) of the node server so far, or 0 if it never started."""
    return _call({"op": "rss"})["maxrss"] if _proc is not None else 0


class NodeArg:
    def __init__(self, d):
        self.name = d["name"]
        self.shape = d.get("shape")
        t = {"float32": "float", "float64": "double"}.get(d.get("type"), d.get("type"))
        self.type = f"tensor({t})" if t else None


_NP2ORT = {np.float32: "float32", np.int64: "int64", np.int32: "int32", np.int8: "int8",
           np.uint8: "uint8", np.float64: "float64", np.bool_: "bool"}
_ORT2NP = {v: k for k, v in _NP2ORT.items()}


class InferenceSession:
    def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kw):
        if isinstance(path_or_bytes, (bytes, bytearray)):
            fd, path = tempfile.mkstemp(suffix=".onnx", dir=_TMP)
            with os.fdopen(fd, "wb") as f:
                f.write(path_or_bytes)
        else:
            path = os.path.abspath(str(path_or_bytes))
        so = sess_options or SessionOptions()
        self._id = next(_ids)
        rep = _call({"op": "load", "id": self._id, "path": path,
                     "level": _LEVEL[int(so.graph_optimization_level)],
                     "threads": int(so.intra_op_num_threads or 1)})
        self._inputs = [NodeArg(d) for d in rep["inputs"]]
        self._outputs = [NodeArg(d) for d in rep["outputs"]]

    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def run(self, output_names, input_feed, run_options=None):
        feeds = {}
        for i, (name, arr) in enumerate(input_feed.items()):
            arr = np.ascontiguousarray(arr)
            f = os.path.join(_TMP, f"in_{self._id}_{i}.bin")
            arr.tofile(f)
            feeds[name] = {"file": f, "dtype": _NP2ORT[arr.dtype.type], "shape": list(arr.shape)}
        rep = _call({"op": "run", "id": self._id, "feeds": feeds,
                     "outputs": list(output_names) if output_names else None, "dir": _TMP})
        result = []
        for name in rep["order"]:
            o = rep["outputs"][name]
            result.append(np.fromfile(o["file"], dtype=_ORT2NP[o["dtype"]]).reshape(o["shape"]))
            os.remove(o["file"])
        for f in feeds.values():
            os.remove(f["file"])
        return result

    def __del__(self):
        try:
            if _proc is not None and _proc.poll() is None:
                _call({"op": "free", "id": self._id})
        except Exception:
            pass
'''

SHIM_ONNX_COMPAT = r'''
"""Make ORT's quantization sources import with onnx 1.12: add only names onnx 1.12 lacks, all for
float8/int4 types (never used for int8/uint8 quantization)."""
import sys, types
import onnx
import onnx.helper
import onnx.mapping
from onnx import TensorProto

ADDED = []
for _name, _value in {"FLOAT8E4M3FN": 17, "FLOAT8E4M3FNUZ": 18, "FLOAT8E5M2": 19,
                      "FLOAT8E5M2FNUZ": 20, "UINT4": 21, "INT4": 22}.items():  # onnx.proto values
    if not hasattr(TensorProto, _name):
        setattr(TensorProto, _name, _value)
        ADDED.append(f"TensorProto.{_name}={_value}")
if not hasattr(onnx.helper, "tensor_dtype_to_np_dtype"):  # onnx >= 1.13; same table as onnx.mapping
    onnx.helper.tensor_dtype_to_np_dtype = lambda t: onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[t]
    ADDED.append("onnx.helper.tensor_dtype_to_np_dtype = onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[t]")
if not hasattr(onnx.helper, "np_dtype_to_tensor_dtype"):
    onnx.helper.np_dtype_to_tensor_dtype = lambda d: onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[d]
    ADDED.append("onnx.helper.np_dtype_to_tensor_dtype = onnx.mapping.NP_TYPE_TO_TENSOR_TYPE[d]")
try:
    import onnx.reference  # noqa: F401  (onnx >= 1.13)
except ImportError:
    _ref = types.ModuleType("onnx.reference")

    class ReferenceEvaluator:  # ORT uses it only to quantize to float8
        def __init__(self, *a, **k):
            raise NotImplementedError("onnx.reference is not available in onnx " + onnx.__version__)

    _ref.ReferenceEvaluator = ReferenceEvaluator
    sys.modules["onnx.reference"] = _ref
    onnx.reference = _ref
    ADDED.append("onnx.reference stub")
'''

STUB_SSI = '''
class SymbolicShapeInference:  # stub: only quant_pre_process (not run) uses it
    @staticmethod
    def infer_shapes(*a, **k):
        raise NotImplementedError("stubbed in this shim")
'''

STUB_ONNX_UTILS = '''
def extract_raw_data_from_model(model):  # stub: only quant_pre_process (not run) uses it
    raise NotImplementedError("stubbed in this shim")


def has_external_data(model):
    raise NotImplementedError("stubbed in this shim")
'''


def build_shim(out, ort_src):
    """Write the shim package to OUT/shim and the node server to OUT/ort_server.js."""
    pkg = os.path.join(out, "shim", "onnxruntime")
    for sub in ("", "tools", "transformers"):
        os.makedirs(os.path.join(pkg, sub), exist_ok=True)
    files = {"__init__.py": SHIM_INIT, "_onnx_compat.py": SHIM_ONNX_COMPAT,
             "tools/__init__.py": "", "tools/symbolic_shape_infer.py": STUB_SSI,
             "transformers/__init__.py": "", "transformers/onnx_utils.py": STUB_ONNX_UTILS}
    for name, text in files.items():
        with open(os.path.join(pkg, name), "w") as f:
            f.write(text)
    link = os.path.join(pkg, "quantization")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(os.path.abspath(ort_src), link)  # onnxruntime.quantization = ORT's own sources
    with open(os.path.join(out, "ort_server.js"), "w") as f:
        f.write(NODE_SERVER)


def shim_env(out, ort_node):
    env = dict(os.environ)
    version = json.load(open(os.path.join(ort_node, "package.json")))["version"]
    env.update(PYTHONPATH=os.path.join(out, "shim"), ORTQ_SERVER_JS=os.path.join(out, "ort_server.js"),
               ORT_NODE=os.path.abspath(ort_node), ORTQ_ORT_VERSION=version,
               ORTQ_TMP=os.path.join(out, "tmp"), TMPDIR=os.path.join(out, "tmp"),
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    os.makedirs(env["TMPDIR"], exist_ok=True)
    return env


def vm_hwm():
    """Peak RSS (bytes) of this process image (ru_maxrss would include the parent's RSS at exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return -1


def load(split, n=None, rows=None, calq_table=False):
    """Preprocessed images and labels of a split: the first n, or the rows at index array rows.
    calq_table: normalize exactly as calq does (src/data/fashion_mnist.cpp normalize_images: a
    256-entry table float((v / 255.0 - mean) / std) computed in double, then rounded once to
    float32); the default computes in float32, which differs by 1 ulp for 166 of the 256 values."""
    prefix = "train" if split == "train" else "t10k"
    with gzip.open(os.path.join(FMNIST, f"{prefix}-images-idx3-ubyte.gz")) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(FMNIST, f"{prefix}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)
    x, y = (x[rows], y[rows]) if rows is not None else (x[:n], y[:n])
    if calq_table:
        table = ((np.arange(256, dtype=np.float64) / 255.0 - MEAN) / STD).astype(np.float32)
        return table[x], y.astype(np.int64)
    return (x.astype(np.float32) / 255.0 - MEAN) / STD, y.astype(np.int64)


M64 = (1 << 64) - 1


def mt19937_64(seed):
    """std::mt19937_64 seeded with one integer: a generator of its 64-bit outputs."""
    mt, i = [seed & M64], 0
    for k in range(1, 312):
        mt.append((6364136223846793005 * (mt[-1] ^ (mt[-1] >> 62)) + k) & M64)
    while True:
        if i == 0:  # twist
            for k in range(312):
                x = (mt[k] & 0xFFFFFFFF80000000) | (mt[(k + 1) % 312] & 0x7FFFFFFF)
                mt[k] = mt[(k + 156) % 312] ^ (x >> 1) ^ (0xB5026F5AA96619E9 if x & 1 else 0)
        y = mt[i]
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        i = (i + 1) % 312
        yield y & M64


def _splitmix(x):  # calq's mix() (src/data/batches.cpp)
    x = (x + 0x9E3779B97F4A7C15) & M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def calq_hold_out(n, size, seed):
    """Sorted indices of the `size` examples of n that calq holds out for validation with
    --val-size SIZE --seed SEED: calq::data::hold_out (src/data/source.cpp, src/data/batches.cpp)
    takes the first `size` entries of shuffled_indices(n, seed, kHoldOutSalt), a Fisher-Yates
    shuffle driven by std::mt19937_64(mix(mix(seed) ^ salt)) with rejection-sampled draws."""
    rng = mt19937_64(_splitmix(_splitmix(seed) ^ 0x401D0070E0000000))
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = M64 - M64 % bound
        v = next(rng)
        while v >= limit:
            v = next(rng)
        j = v % bound
        order[i], order[j] = order[j], order[i]
    return np.sort(np.array(order[:size], dtype=np.int64))


def worker_quantize(args):
    """Runs in a subprocess with the shim on PYTHONPATH: one quantize_static call."""
    import onnxruntime
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    # calib_n training images from --calib-offset (default: the first ones)
    x = load("train", rows=np.arange(args.calib_offset, args.calib_offset + args.calib_n))[0]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + args.calib_batch]}
                                 for i in range(0, len(x), args.calib_batch)])

        def get_next(self):
            return next(self.batches, None)

    extra = {"ActivationSymmetric": True} if args.act == "QInt8sym" else {}
    start = time.time()
    quantize_static(args.model, args.qmodel, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if args.act == "QInt8sym" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, args.method),
                    extra_options=extra)
    seconds = time.time() - start
    print("@@RESULT@@" + json.dumps({
        "seconds": seconds, "py_max_rss": vm_hwm(),
        "node_max_rss": onnxruntime.node_max_rss(), "onnx_compat": onnxruntime._onnx_compat.ADDED}))


def predict(session, x, batch=1000):
    """Argmax class of every image."""
    return np.concatenate([session.run(None, {"input": x[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(x), batch)])


def top1(session, x, y):
    return float((predict(session, x) == y).mean())


def mcnemar_exact(b, c):
    """Exact two-sided McNemar p-value: 2 * P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    from math import comb
    from fractions import Fraction
    return float(min(Fraction(1), Fraction(2 * sum(comb(n, i) for i in range(k + 1)), 2 ** n)))


def versus(args, results, onnxruntime):
    """--versus: paired comparison of given QDQ models (calq's) with ORT's validation-chosen
    configuration (MODEL.ort_best_val.test_pred.npy) on the same 10,000 test images."""
    x_test, y_test = load("test", calq_table=args.versus_preproc == "calq")
    # Label-free fidelity: how often each deployment gives the float model's class, each with
    # the float model run on its own preprocessing (ORT's predictions used the script's).
    floats = dict(item.split("=", 1) for item in args.versus_float.split(",")) if args.versus_float else {}
    fidelity = []
    rows = []
    for item in args.versus.split(","):
        name, path = item.split("=", 1)
        start = time.time()
        pred = predict(onnxruntime.InferenceSession(path), x_test)
        seconds = time.time() - start
        ort_pred = np.load(os.path.join(os.path.abspath(args.out), f"{name}.ort_best_val.test_pred.npy"))
        a, o = pred == y_test, ort_pred.astype(np.int64) == y_test
        d = a.astype(np.float64) - o.astype(np.float64)  # per-image difference, calq - ORT
        n = len(d)
        mean, se = d.mean(), d.std(ddof=1) / np.sqrt(n)
        b, c = int((a & ~o).sum()), int((~a & o).sum())
        # calq's own record of this file's test top-1 (its results.json "deploy" entry), if present
        stem = os.path.splitext(os.path.basename(path))[0]
        rj = os.path.join(os.path.dirname(os.path.abspath(path)), "..", "results.json")
        recorded = None
        if os.path.exists(rj):
            recorded = json.load(open(rj)).get("deploy", {}).get(stem, {}).get("ort_top1")
        bv = results.get(name, {}).get("best_val", {})
        if bv:
            assert abs(float(o.mean()) - bv["top1"]) < 1e-9, f"{name}: ORT predictions do not match results.json"
        if name in floats:
            f_calq = predict(onnxruntime.InferenceSession(floats[name]), x_test)
            f_ort = predict(onnxruntime.InferenceSession(floats[name]), load("test")[0])
            ka, ko = pred == f_calq, ort_pred.astype(np.int64) == f_ort
            fidelity.append((name, stem, ka.mean() * 100, ko.mean() * 100, int((ka & ~ko).sum()),
                             int((~ka & ko).sum()), mcnemar_exact(int((ka & ~ko).sum()), int((~ka & ko).sum()))))
        rows.append((name, stem, bv.get("config", "?"), a.mean() * 100, o.mean() * 100, mean * 100,
                     (mean - 1.959964 * se) * 100, (mean + 1.959964 * se) * 100, b, c,
                     mcnemar_exact(b, c), recorded, seconds))
        print(f"{name}: {path} top-1 {a.mean() * 100:.2f} (recorded {recorded}) in {seconds:.1f} s",
              file=sys.stderr, flush=True)
    print(f"\nPaired comparison on the {n} Fashion-MNIST test images (calq file preprocessing: "
          f"{args.versus_preproc}; ORT: its validation-chosen configuration). Difference = calq - ORT "
          f"(points), 95 % CI: normal approximation on per-image differences; McNemar exact two-sided.\n")
    print("| model | calq file | calq top-1 (recorded) | ORT config | ORT top-1 | diff | 95 % CI | "
          "calq right, ORT wrong | ORT right, calq wrong | McNemar p |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, stem, cfg, ta, to, dm, lo, hi, b, c, p, rec, _) in rows:
        rec_s = f"{rec:.2f}" if rec is not None else "-"
        print(f"| {name} | {stem} | {ta:.2f} ({rec_s}) | {cfg} | {to:.2f} | {dm:+.2f} | "
              f"[{lo:+.2f}, {hi:+.2f}] | {b} | {c} | {p:.3g} |")
    if fidelity:
        print("\nAgreement with the float model's class on the same test images (label-free: which "
              "deployment computes closer to the float model; McNemar on the images where exactly one agrees).\n")
        print("| model | calq file | calq agrees % | ORT agrees % | only calq agrees | only ORT agrees | McNemar p |")
        print("|---|---|---|---|---|---|---|")
        for (name, stem, ka, ko, b, c, p) in fidelity:
            print(f"| {name} | {stem} | {ka:.2f} | {ko:.2f} | {b} | {c} | {p:.3g} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ort-src", required=True, help="ORT's onnxruntime/python/tools/quantization folder")
    ap.add_argument("--models", default="", help="comma-separated float .onnx files (required unless --versus)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--ort-node", default=os.path.join(HERE, "..", "tools", "ort", "node_modules", "onnxruntime-node"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--acts", default=",".join(ACTS))
    ap.add_argument("--calib-n", type=int, default=1024)
    ap.add_argument("--calib-offset", type=int, default=0,
                    help="calibrate on training images [offset, offset + calib-n) (another subset "
                         "for a repeat; use another --out)")
    ap.add_argument("--calib-batch", type=int, default=64)
    ap.add_argument("--val-size", type=int, default=5000, help="as calq's --val-size")
    ap.add_argument("--val-seed", type=int, default=0, help="as calq's --seed (its runs use 0)")
    ap.add_argument("--versus", default="", help="MODEL=PATH.onnx,...: only compare these QDQ models "
                    "(e.g. calq's deploy/calibrated_*.onnx) with ORT's validation-chosen configuration "
                    "of MODEL (needs --out/MODEL.ort_best_val.test_pred.npy), paired on the test set")
    ap.add_argument("--versus-float", default="", help="MODEL=FLOAT.onnx,...: also report each "
                    "deployment's top-1 agreement with this float model (label-free fidelity)")
    ap.add_argument("--versus-preproc", choices=["calq", "script"], default="calq",
                    help="normalization for --versus models: calq's exact table (default) or this script's")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--qmodel", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--act", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_quantize(args)
    if not args.models and not args.versus:
        ap.error("--models is required (unless --versus)")

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    build_shim(out, args.ort_src)
    env = shim_env(out, args.ort_node)
    os.environ.update(env)
    sys.path.insert(0, env["PYTHONPATH"])
    import onnxruntime  # the shim (evaluation: graph optimization "all", 1 thread)

    if args.versus:
        results_path = os.path.join(out, "results.json")
        return versus(args, json.load(open(results_path)) if os.path.exists(results_path) else {},
                      onnxruntime)
    x_test, y_test = load("test")
    n_train = 60000
    val_rows = calq_hold_out(n_train, args.val_size, args.val_seed)
    x_val, y_val = load("train", rows=val_rows)
    val_split = (f"calq hold_out(60000 Fashion-MNIST training images, val_size={args.val_size}, "
                 f"seed={args.val_seed}); "
                 f"{int(((val_rows >= args.calib_offset) & (val_rows < args.calib_offset + args.calib_n)).sum())} "
                 f"of them are among the {args.calib_n} from {args.calib_offset} used for calibration")
    print(f"validation: {val_split}; rows {val_rows[:5].tolist()}...", file=sys.stderr, flush=True)
    results_path = os.path.join(out, "results.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    configs = [(m, a) for m in args.methods.split(",") for a in args.acts.split(",")]
    for model in args.models.split(","):
        name = os.path.splitext(os.path.basename(model))[0]
        r = results.setdefault(name, {})
        if r.get("val_split") != val_split:  # validation scores of another split are stale
            r.pop("float_val", None)
            for v in r.values():
                if isinstance(v, dict):
                    v.pop("val_top1", None)
            r["val_split"] = val_split
        if "float" not in r:
            r["float"] = top1(onnxruntime.InferenceSession(model), x_test, y_test)
            print(f"{name} float top-1 {r['float']:.4f}", file=sys.stderr, flush=True)
        if "float_val" not in r:
            r["float_val"] = top1(onnxruntime.InferenceSession(model), x_val, y_val)
            print(f"{name} float val top-1 {r['float_val']:.4f}", file=sys.stderr, flush=True)
        for method, act in configs:
            key = f"{method}/{act}"
            qmodel = os.path.join(out, f"{name}_{method}_{act}.qdq.onnx")
            if key not in r:  # not quantized yet (models in results.json are reused)
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--ort-src", args.ort_src,
                       "--models", model, "--out", out, "--model", model, "--qmodel", qmodel,
                       "--method", method, "--act", act, "--calib-n", str(args.calib_n),
                       "--calib-offset", str(args.calib_offset),
                       "--calib-batch", str(args.calib_batch)]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [l for l in proc.stdout.splitlines() if l.startswith("@@RESULT@@")]
                if proc.returncode != 0 or not lines:
                    r[key] = {"error": proc.stderr[-2000:]}
                    print(f"{name} {key} FAILED:\n{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
                else:
                    r[key] = json.loads(lines[-1][len("@@RESULT@@"):])
                    r[key]["top1"] = top1(onnxruntime.InferenceSession(qmodel), x_test, y_test)
                    print(f"{name} {key} top-1 {r[key]['top1']:.4f} calib {r[key]['seconds']:.1f} s "
                          f"py {r[key]['py_max_rss'] / 2**20:.0f} MiB node {r[key]['node_max_rss'] / 2**20:.0f} MiB",
                          file=sys.stderr, flush=True)
            if "top1" in r[key] and "val_top1" not in r[key]:
                r[key]["val_top1"] = top1(onnxruntime.InferenceSession(qmodel), x_val, y_val)
                print(f"{name} {key} val top-1 {r[key]['val_top1']:.4f}", file=sys.stderr, flush=True)
            json.dump(results, open(results_path, "w"), indent=1)
        # The configuration ORT's user would ship: best on validation (ties: first in --methods x
        # --acts order), scored on test; its test predictions are written for paired tests.
        scored = [f"{m}/{a}" for m, a in configs if "val_top1" in r.get(f"{m}/{a}", {})]
        if scored:
            best = max(scored, key=lambda c: r[c]["val_top1"])  # max keeps the first of ties
            qmodel = os.path.join(out, f"{name}_{best.replace('/', '_')}.qdq.onnx")
            pred = predict(onnxruntime.InferenceSession(qmodel), x_test)
            assert abs(float((pred == y_test).mean()) - r[best]["top1"]) < 1e-9, "test top-1 changed"
            np.save(os.path.join(out, f"{name}.ort_best_val.test_pred.npy"), pred.astype(np.int8))
            r["best_val"] = {"config": best, "val_top1": r[best]["val_top1"], "top1": r[best]["top1"],
                             "ties": [c for c in scored if r[c]["val_top1"] == r[best]["val_top1"]]}
            json.dump(results, open(results_path, "w"), indent=1)

    cols = [f"{m}/{a}" for m, a in configs]
    print("| model | float | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for name, r in results.items():
        cells = [f"{r[c]['top1'] * 100:.2f}" if "top1" in r.get(c, {}) else "fail" for c in cols]
        print(f"| {name} | {r['float'] * 100:.2f} | " + " | ".join(cells) + " |")
    print("\n| model | config | calib s | python peak MiB | node peak MiB |\n|---|---|---|---|---|")
    for name, r in results.items():
        for c in cols:
            if "seconds" in r.get(c, {}):
                print(f"| {name} | {c} | {r[c]['seconds']:.1f} | {r[c]['py_max_rss'] / 2**20:.0f} | "
                      f"{r[c]['node_max_rss'] / 2**20:.0f} |")
    print(f"\nValidation: {val_split}. Cells: val / test top-1 (%).\n")
    print("| model | float val / test | " + " | ".join(cols) + " | best on validation (test) | best on test |")
    print("|---" * (len(cols) + 4) + "|")
    for name, r in results.items():
        if "float_val" not in r:
            continue
        cells = [f"{r[c]['val_top1'] * 100:.2f} / {r[c]['top1'] * 100:.2f}" if "val_top1" in r.get(c, {})
                 else "-" for c in cols]
        bv = r.get("best_val")
        chosen = (f"{bv['config']}{' (tie: ' + ', '.join(bv['ties'][1:]) + ')' if len(bv['ties']) > 1 else ''}"
                  f": {bv['top1'] * 100:.2f}" if bv else "-")
        tested = [c for c in cols if "top1" in r.get(c, {})]
        top = max(r[c]["top1"] for c in tested) if tested else None
        best_test = (", ".join(c for c in tested if r[c]["top1"] == top) + f": {top * 100:.2f}"
                     if tested else "-")
        print(f"| {name} | {r['float_val'] * 100:.2f} / {r['float'] * 100:.2f} | " + " | ".join(cells) +
              f" | {chosen} | {best_test} |")


if __name__ == "__main__":
    main()
