#!/usr/bin/env node
// Runs an ONNX model with ONNX Runtime's CPU provider on float32 .npy inputs and writes every
// output as float32 .npy: calq's deployment checks and tests drive ONNX Runtime through it.
//
//   node tools/ort/run.js --model M.onnx --input X.npy [--input2 NAME=X2.npy ...]
//        --output Y.npy | --outputs DIR [--batch N] [--threads N]
//        [--optimized OPT.onnx] [--level all|extended|basic|disabled]
//
// --input feeds the model's first input; NAME=FILE pairs feed inputs by name. The first
// dimension is the batch: inputs are split into batches of --batch (default: all at once) and
// outputs concatenated. --output writes the first output; --outputs DIR writes DIR/<name>.npy
// for every output. --optimized saves ONNX Runtime's optimized graph (session option
// optimizedModelFilePath), to check which nodes became integer kernels. Prints one JSON line:
// {"outputs": [...], "seconds": ..., "cpu": "..."}.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const ort = require('onnxruntime-node');

function parseArgs(argv) {
  const args = { inputs: [], batch: 0, threads: 1, level: 'all' };
  for (let i = 2; i < argv.length; ++i) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${key} needs a value`);
    ++i;
    switch (key) {
      case '--model': args.model = value; break;
      case '--input': args.inputs.push({ name: null, file: value }); break;
      case '--input2': {
        const eq = value.indexOf('=');
        if (eq < 0) throw new Error(`--input2 expects NAME=FILE, got ${value}`);
        args.inputs.push({ name: value.slice(0, eq), file: value.slice(eq + 1) });
        break;
      }
      case '--output': args.output = value; break;
      case '--outputs': args.outputsDir = value; break;
      case '--batch': args.batch = parseInt(value, 10); break;
      case '--threads': args.threads = parseInt(value, 10); break;
      case '--optimized': args.optimized = value; break;
      case '--level': args.level = value; break;
      default: throw new Error(`unknown option ${key}`);
    }
  }
  if (!args.model) throw new Error('--model is required');
  if (args.inputs.length === 0) throw new Error('--input is required');
  if (!args.output && !args.outputsDir) throw new Error('--output or --outputs is required');
  return args;
}

const DTYPES = { '<f4': [Float32Array, 'float32'], '<i8': [BigInt64Array, 'int64'],
                 '<i4': [Int32Array, 'int32'], '|i1': [Int8Array, 'int8'], '|u1': [Uint8Array, 'uint8'] };

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.length < 10 || buf.toString('latin1', 0, 6) !== '\x93NUMPY') {
    throw new Error(`${file} is not a .npy file`);
  }
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.toString('latin1', major === 1 ? 10 : 12, start);
  const descr = /'descr':\s*'([^']+)'/.exec(header);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header);
  if (!descr || !shape || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`${file}: unsupported .npy header ${header}`);
  }
  const dims = shape[1].split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const kind = DTYPES[descr[1]];
  if (!kind) throw new Error(`${file}: dtype ${descr[1]} is not supported`);
  const count = dims.reduce((a, b) => a * b, 1);
  const bytes = buf.subarray(start, start + count * kind[0].BYTES_PER_ELEMENT);
  if (bytes.length !== count * kind[0].BYTES_PER_ELEMENT) throw new Error(`${file} is truncated`);
  const copy = new Uint8Array(bytes);  // aligned copy
  return { data: new kind[0](copy.buffer), dims, type: kind[1] };
}

function writeNpy(file, data, dims) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims.join(', ')}${dims.length === 1 ? ',' : ''}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1; head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const body = Buffer.from(new Float32Array(data).buffer);
  const tmp = `${file}.tmp${process.pid}`;
  fs.writeFileSync(tmp, Buffer.concat([head, Buffer.from(header, 'latin1'), body]));
  fs.renameSync(tmp, file);
}

function cpuDescription() {
  let flags = '';
  try {
    const info = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const line = info.split('\n').find((l) => l.startsWith('flags'));
    const wanted = ['avx2', 'avx512f', 'avx512bw', 'avx512_vnni', 'avx_vnni', 'amx_int8'];
    flags = wanted.filter((f) => line && line.split(/\s+/).includes(f)).join(' ');
  } catch (e) { /* not Linux */ }
  return `${os.cpus()[0].model} [${flags}]`;
}

async function main() {
  const args = parseArgs(process.argv);
  const options = {
    executionProviders: ['cpu'],
    intraOpNumThreads: args.threads,
    interOpNumThreads: 1,
    graphOptimizationLevel: args.level,
  };
  if (args.optimized) options.optimizedModelFilePath = args.optimized;
  const session = await ort.InferenceSession.create(args.model, options);
  const feeds = args.inputs.map((input, i) => {
    const name = input.name || session.inputNames[i];
    if (!session.inputNames.includes(name)) {
      throw new Error(`the model has no input '${name}'; inputs: ${session.inputNames.join(', ')}`);
    }
    return { name, ...readNpy(input.file) };
  });
  const n = feeds[0].dims[0];
  const batch = args.batch > 0 ? args.batch : n;
  const collected = {};
  const started = process.hrtime.bigint();
  for (let begin = 0; begin < n; begin += batch) {
    const end = Math.min(n, begin + batch);
    const run = {};
    for (const f of feeds) {
      const per = f.dims.slice(1).reduce((a, b) => a * b, 1);
      run[f.name] = new ort.Tensor(f.type, f.data.subarray(begin * per, end * per),
                                   [end - begin, ...f.dims.slice(1)]);
    }
    const result = await session.run(run);
    for (const name of session.outputNames) {
      const t = result[name];
      if (!collected[name]) collected[name] = { parts: [], dims: t.dims.slice(1) };
      collected[name].parts.push(Float32Array.from(t.data, Number));
    }
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const written = [];
  session.outputNames.forEach((name, i) => {
    const c = collected[name];
    const total = c.parts.reduce((a, p) => a + p.length, 0);
    const data = new Float32Array(total);
    let offset = 0;
    for (const p of c.parts) { data.set(p, offset); offset += p.length; }
    const dims = [n, ...c.dims];
    if (args.outputsDir) {
      const file = path.join(args.outputsDir, `${name.replace(/[^A-Za-z0-9_.-]/g, '_')}.npy`);
      writeNpy(file, data, dims);
      written.push(file);
    } else if (i === 0) {
      writeNpy(args.output, data, dims);
      written.push(args.output);
    }
  });
  process.stdout.write(JSON.stringify({ outputs: written, seconds, cpu: cpuDescription(),
                                        ort: require('onnxruntime-node/package.json').version }) + '\n');
}

main().catch((e) => {
  process.stderr.write(`ort/run.js: ${e.message}\n`);
  process.exit(1);
});
