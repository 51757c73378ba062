#!/usr/bin/env node
// ONNX Runtime (CPU) latency of one model on random float32 input: warm-up runs, then timed
// runs of one session.run each; prints one JSON line with the median and quartiles in ms, the
// process's peak resident set size (node and ONNX Runtime, MB), the CPU and its AVX2 /
// AVX-512 / VNNI / AMX flags, and the onnxruntime-node version.
//
//   node bench/ort_latency.js --model M.onnx --shape 3,224,224 [--batch N] [--threads N]
//        [--warmup N] [--runs N] [--level all|extended|basic|disabled]
//
// Uses the onnxruntime-node install of tools/ort (npm ci --ignore-scripts there).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const ort = require(path.join(__dirname, '..', 'tools', 'ort', 'node_modules', 'onnxruntime-node'));

function parseArgs(argv) {
  const a = { batch: 1, threads: 1, warmup: 10, runs: 50, level: 'all' };
  for (let i = 2; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${key} needs a value`);
    switch (key) {
      case '--model': a.model = value; break;
      case '--shape': a.shape = value.split(',').map(Number); break;
      case '--batch': a.batch = parseInt(value, 10); break;
      case '--threads': a.threads = parseInt(value, 10); break;
      case '--warmup': a.warmup = parseInt(value, 10); break;
      case '--runs': a.runs = parseInt(value, 10); break;
      case '--level': a.level = value; break;
      default: throw new Error(`unknown option ${key}`);
    }
  }
  if (!a.model || !a.shape) throw new Error('--model and --shape are required');
  if (!(a.runs >= 1)) throw new Error('--runs must be >= 1');
  return a;
}

function cpuDescription() {
  let flags = '';
  try {
    const line = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags'));
    const wanted = ['avx2', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx_vnni', 'amx_int8'];
    flags = wanted.filter((f) => line && line.split(/\s+/).includes(f)).join(' ');
  } catch (e) { /* not Linux */ }
  return `${os.cpus()[0].model} [${flags}]`;
}

function quantile(sorted, q) {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

async function main() {
  const a = parseArgs(process.argv);
  const session = await ort.InferenceSession.create(a.model, {
    executionProviders: ['cpu'], intraOpNumThreads: a.threads, interOpNumThreads: 1,
    graphOptimizationLevel: a.level,
  });
  const dims = [a.batch, ...a.shape];
  const data = new Float32Array(dims.reduce((x, y) => x * y, 1));
  let seed = 1;
  for (let i = 0; i < data.length; ++i) {  // deterministic, roughly N(0, 1)
    seed = (seed * 1103515245 + 12345) % 2147483648;
    data[i] = (seed / 2147483648 - 0.5) * 3.4;
  }
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, dims) };
  for (let i = 0; i < a.warmup; ++i) await session.run(feeds);
  const times = [];
  for (let i = 0; i < a.runs; ++i) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  times.sort((x, y) => x - y);
  process.stdout.write(JSON.stringify({
    model: a.model, batch: a.batch, threads: a.threads, level: a.level, runs: a.runs,
    median_ms: quantile(times, 0.5), p25_ms: quantile(times, 0.25), p75_ms: quantile(times, 0.75),
    peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    cpu: cpuDescription(),
    ort: require(path.join(__dirname, '..', 'tools', 'ort', 'node_modules', 'onnxruntime-node', 'package.json')).version,
  }) + '\n');
}

main().catch((e) => {
  process.stderr.write(`ort_latency.js: ${e.message}\n`);
  process.exit(1);
});
