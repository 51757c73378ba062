#!/usr/bin/python3
"""Cost model of data-parallel QAT on N machines (docs/distributed.md, section 10).

    /usr/bin/python3 bench/distributed_cost_model.py BENCH_JSON [--resnet-batch 8] [--threads 1]

BENCH_JSON comes from `bench/run.sh distributed --json FILE` (parameters and step times of
the zoo models, all-reduce times on this machine). The script also times one float training
step of torchvision's ResNet-18 and ResNet-50 (224x224, batch --resnet-batch, --threads
threads) with Debian's python3-torch, the same ATen kernels calq runs on, as the compute side
of the two large models, then prints, for each model:
  * float32 gradient bytes all-reduced per step (parameters incl. quantizer parameters);
  * ring all-reduce time 2 (N - 1) / N * bytes / bandwidth + 2 (N - 1) * latency at 10 and
    100 Gbit/s;
  * compute time per step of a global batch (measured per image on this machine, times the
    global batch), and the machine count where the all-reduce
    takes as long as the compute of one machine's share (beyond it, more machines stop
    paying off; with perfect overlap the step time is max(compute / N, all-reduce)).
"""
import argparse
import json
import time

GBIT = 1e9 / 8  # bytes per second per Gbit/s


def ring_seconds(nbytes, n, bandwidth, latency):
    """Bandwidth-optimal ring all-reduce: reduce-scatter + all-gather."""
    if n <= 1:
        return 0.0
    return 2.0 * (n - 1) / n * nbytes / bandwidth + 2.0 * (n - 1) * latency


def time_torchvision(name, batch, threads, repeats=3):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 1000, (batch,))
    samples = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if i > 0:
            samples.append(time.perf_counter() - t0)
    samples.sort()
    params = sum(p.numel() for p in model.parameters())
    return params, samples[len(samples) // 2] / batch


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bench_json")
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--global-batch", type=int, default=256,
                        help="global batch of the large models in the scaling table")
    args = parser.parse_args()
    bench = json.load(open(args.bench_json))

    # Latency per ring step: half the smallest measured all-reduce between 2 processes.
    smallest = min(bench["allreduce"], key=lambda r: r["bytes"])
    latency = smallest["seconds"] / 2.0
    print("all-reduce latency per ring step (from %d B between 2 local processes): %.1f us"
          % (smallest["bytes"], latency * 1e6))

    rows = []
    batch = bench["settings"]["batch"]
    for entry in bench["parameters"]:
        if entry["method"] != "lsq":
            continue
        name = entry["model"]
        step = bench["step"]["1x1"].get(name, {}).get("lsq")
        if step is None:
            continue
        rows.append((name + " (zoo, lsq)", entry["parameters"], step, batch))
    for name in ("resnet18", "resnet50"):
        params, per_image = time_torchvision(name, args.resnet_batch, args.threads)
        # The float step as the compute side: QAT only adds fake-quant work (and < 0.2 % more
        # parameters: one lsq scale per output channel and activation), so the compute is a
        # lower bound and the machine count where scaling stops is too.
        rows.append((name + " (float step)", params, per_image * args.global_batch,
                     args.global_batch))

    print()
    print("| model | parameters | MB per step | compute per step (1 machine) | global batch |"
          " all-reduce 10 Gbit/s, N = 2 / 8 / 64 | all-reduce 100 Gbit/s, N = 2 / 8 / 64 |"
          " N where all-reduce = compute / N, 10 / 100 Gbit/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, params, compute, gbatch in rows:
        nbytes = 4 * params
        cells = []
        crossings = []
        for gbits in (10, 100):
            bw = gbits * GBIT
            cells.append(" / ".join("%.1f ms" % (1e3 * ring_seconds(nbytes, n, bw, latency))
                                    for n in (2, 8, 64)))
            n = 1
            while n < 100000 and compute / n > ring_seconds(nbytes, n, bw, latency):
                n += 1
            crossings.append(str(n) if n < 100000 else ">1e5")
        print("| %s | %.2f M | %.2f | %.3g s | %d | %s | %s | %s |"
              % (name, params / 1e6, nbytes / 1e6, compute, gbatch, cells[0], cells[1],
                 " / ".join(crossings)))


if __name__ == "__main__":
    main()
