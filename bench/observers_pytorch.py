"""PyTorch reference timings for bench/observers_bench.cpp (run with Debian's /usr/bin/python3,
which has python3-torch 1.13).

    /usr/bin/python3 bench/observers_pytorch.py TENSOR_FILE THREADS [THREADS ...]

TENSOR_FILE holds the benchmark tensor written by torch::pickle_save in C++, so both sides
time the same data. Prints JSON: {"<threads>": {"MinMaxObserver": ms, "HistogramObserver": ms}}
with the median per-batch forward time over the repetitions.
"""

import json
import statistics
import sys
import time

import torch
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

REPETITIONS = 9


def median_ms(fn, repetitions=REPETITIONS):
    fn()  # first call initializes the observer's range
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    with open(sys.argv[1], "rb") as f:
        x = torch.load(f)
    out = {}
    for threads in (int(t) for t in sys.argv[2:]):
        torch.set_num_threads(threads)
        minmax = MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        histogram = HistogramObserver(bins=2048, dtype=torch.qint8,
                                      qscheme=torch.per_tensor_symmetric)
        out[str(threads)] = {
            "MinMaxObserver": median_ms(lambda: minmax(x)),
            "HistogramObserver": median_ms(lambda: histogram(x)),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
