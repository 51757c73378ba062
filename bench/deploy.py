#!/usr/bin/python3
"""Deployment figures (docs/deploy.md, "Measured").

    bench/run.sh deploy [--json FILE] [--parts zoo ort224 quantize] [--data DIR] [--threads N]
                        [--images 1000 4000] [--ort-threads 1] [--runs 30]

zoo: latency and peak memory of the five ways to run each zoo model (cnn, resnet, mobilenet at
   1x28x28), batch 1 and 16, --ort-threads threads everywhere: calq's simulation in float and in
   ONNX Runtime's integer arithmetic, calq's integer engine (calq_deploy_zoo_bench, one process
   each) and ONNX Runtime on the float and the QDQ export (bench/ort_latency.js, graph level
   "all").
ort224: ONNX Runtime's latency of a ResNet-18-sized model at 3x224x224, float vs its int8 export
   by calq quantize (--images' smallest set), batch 1 and 16.
quantize: calq quantize's peak memory and calibration time on each --images set.

1. bench/deploy_data.py writes the model and the Fashion-MNIST calibration sets into --data
   (default <build>/bench_deploy; reused when present).
2. Memory: `calq quantize` on each set (--threads, batch 32) under /usr/bin/time; its peak
   resident set size (ru_maxrss) and the calibration time it reports.
3. Time: calq_deploy_bench on each set: calq's float inference of the same images and the
   calibration, same threads and batches, in one process.
4. ONNX Runtime: bench/ort_latency.js on the float model and on the int8 export of the
   smallest set, batch 1 and 16, --ort-threads intra-op threads (graph level "all").
Peak memory is each process's (LibTorch or node + ONNX Runtime included).
"""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, **kw):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--build", required=True)
    p.add_argument("--json")
    p.add_argument("--data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images", type=int, nargs="+", default=[1000, 4000])
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--parts", nargs="+", default=["zoo", "ort224", "quantize"],
                   choices=["zoo", "ort224", "quantize"])
    a = p.parse_args()
    data = a.data or os.path.join(a.build, "bench_deploy")
    results = {"threads": a.threads, "ort_threads": a.ort_threads, "batch_size": a.batch_size,
               "quantize": [], "ort": [], "zoo": []}
    if "zoo" in a.parts:
        zoo(a, data, results)
    if "ort224" in a.parts or "quantize" in a.parts:
        resnet224(a, data, results)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


def zoo(a, data, results):
    os.makedirs(data, exist_ok=True)
    exe = os.path.join(a.build, "bench", "calq_deploy_zoo_bench")
    latency = os.path.join(ROOT, "bench", "ort_latency.js")
    for model in ("cnn", "resnet", "mobilenet"):
        run([exe, "--model", model, "--engine", "export", "--dir", data])
        for batch in (1, 16):
            for engine in ("sim", "sim-int", "int"):
                r = json.loads(run([exe, "--model", model, "--engine", engine, "--dir", data,
                                    "--batch", str(batch), "--threads", str(a.ort_threads),
                                    "--runs", str(a.runs)]).stdout.strip().splitlines()[-1])
                results["zoo"].append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
            for engine in ("float", "qdq"):
                path = os.path.join(data, "%s_%s.onnx" % (model, engine))
                r = json.loads(run(["node", latency, "--model", path, "--shape", "1,28,28",
                                    "--batch", str(batch), "--threads", str(a.ort_threads),
                                    "--runs", str(a.runs), "--warmup", "5"]
                                   ).stdout.strip().splitlines()[-1])
                r.update({"model": model, "engine": "ort_" + engine})
                results["zoo"].append(r)
                results["cpu"] = r["cpu"]
                results["onnxruntime"] = r["ort"]
                print(json.dumps(r), file=sys.stderr, flush=True)
    print("ONNX Runtime %s on %s; %d thread(s) everywhere" % (
        results["onnxruntime"], results["cpu"], a.ort_threads))
    print()
    print("| model | batch | calq simulation | calq simulation, integer arithmetic | "
          "calq integer engine | ORT float | ORT QDQ int8 |")
    print("|---|---|---|---|---|---|---|")
    for model in ("cnn", "resnet", "mobilenet"):
        for batch in (1, 16):
            cells = []
            for engine in ("sim", "sim-int", "int", "ort_float", "ort_qdq"):
                r = [r for r in results["zoo"]
                     if r["model"] == model and r["batch"] == batch and r["engine"] == engine][0]
                cells.append("%.2f ms, %.0f MB" % (r["median_ms"], r["peak_rss_mb"]))
            print("| %s | %d | %s |" % (model, batch, " | ".join(cells)))
    print()


def resnet224(a, data, results):
    # ort224 alone needs one export only: the smallest calibration set.
    images = sorted(a.images) if "quantize" in a.parts else sorted(a.images)[:1]
    run(["/usr/bin/python3", os.path.join(ROOT, "bench", "deploy_data.py"), data, "--images"] +
        [str(n) for n in images])
    model = os.path.join(data, "resnet18_224.onnx")
    int8 = None
    for n in images:
        calib = os.path.join(data, "fmnist224_%d.npy" % n)
        out = os.path.join(data, "resnet18_224_int8_%d.onnx" % n)
        r = run(["/usr/bin/time", "-f", "maxrss_kb=%M", os.path.join(a.build, "calq"), "quantize",
                 "--model", model, "--calib", calib, "--output", out,
                 "--threads", str(a.threads), "--batch-size", str(a.batch_size)])
        rss = int(re.search(r"maxrss_kb=(\d+)", r.stderr).group(1))
        if int8 is None:
            int8 = out
        if "quantize" not in a.parts:
            break
        cal = float(re.search(r"calibrated on \d+ samples \(\d+ batches\) in ([0-9.e+-]+) s",
                              r.stderr).group(1))
        b = json.loads(run([os.path.join(a.build, "bench", "calq_deploy_bench"), "--model", model,
                            "--calib", calib, "--threads", str(a.threads), "--batch-size",
                            str(a.batch_size)]).stdout.strip().splitlines()[-1])
        row = {"images": n, "peak_rss_mb": rss / 1024.0, "quantize_calibration_s": cal,
               "bench_float_s": b["float_seconds"], "bench_calibration_s": b["calibration_seconds"],
               "calibration_over_float": b["calibration_over_float"], "threads": b["threads"]}
        results["quantize"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    if results["quantize"]:
        print("| images | peak RSS (MB) | calibration (s) | calq float inference (s) | ratio | threads |")
        print("|---|---|---|---|---|---|")
        for r in results["quantize"]:
            print("| %d | %.0f | %.1f | %.1f | %.2fx | %d |" % (
                r["images"], r["peak_rss_mb"], r["bench_calibration_s"], r["bench_float_s"],
                r["calibration_over_float"], r["threads"]))
        print()
    if "ort224" not in a.parts:
        return
    latency = os.path.join(ROOT, "bench", "ort_latency.js")
    for batch in (1, 16):
        for name, path in (("float", model), ("int8", int8)):
            r = json.loads(run(["node", latency, "--model", path, "--shape", "3,224,224", "--batch",
                                str(batch), "--threads", str(a.ort_threads), "--runs",
                                str(a.runs), "--warmup", "5"]).stdout.strip().splitlines()[-1])
            r["name"] = name
            results["ort"].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
        f, q = results["ort"][-2], results["ort"][-1]
        results.setdefault("speedup", {})[str(batch)] = f["median_ms"] / q["median_ms"]
    results["cpu"] = results["ort"][0]["cpu"]
    results["onnxruntime"] = results["ort"][0]["ort"]
    print("| ONNX Runtime %s, %s thread(s) | batch | float (ms) | int8 (ms) | speed-up |" % (
        results["onnxruntime"], a.ort_threads))
    print("|---|---|---|---|---|")
    for batch in (1, 16):
        rows = [r for r in results["ort"] if r["batch"] == batch]
        f = [r for r in rows if r["name"] == "float"][0]
        q = [r for r in rows if r["name"] == "int8"][0]
        print("| %s | %d | %.1f | %.1f | %.2fx |" % (results["cpu"], batch, f["median_ms"],
                                                     q["median_ms"], f["median_ms"] / q["median_ms"]))


if __name__ == "__main__":
    main()
