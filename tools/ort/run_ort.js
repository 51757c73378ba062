// Runs ONNX Runtime (CPU) on the models a manifest lists and writes their outputs as .npy:
// the independent reference of calq's import tests.
//
//   node tools/ort/run_ort.js MANIFEST.json
//
// MANIFEST: [{"model": "a.onnx", "inputs": ["x.npy", ...], "outputs": ["ort_0.npy", ...]}],
// paths relative to the manifest's folder. Inputs feed the model's inputs in order; outputs
// receive the model's outputs in order. float32, int64 and bool arrays are supported.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

const DTYPES = {'<f4': ['float32', Float32Array], '<i8': ['int64', BigInt64Array],
                '|b1': ['bool', Uint8Array], '<i4': ['int32', Int32Array]};

function readNpy(file) {
  const buf = fs.readFileSync(file);
  if (buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = buf.toString('latin1', start, start + headerLen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: Fortran order`);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(',').map((s) => s.trim())
                    .filter((s) => s.length).map(Number);
  const [type, Ctor] = DTYPES[descr] || [];
  if (!type) throw new Error(`${file}: dtype ${descr} not supported`);
  const offset = start + headerLen;
  const bytes = buf.subarray(offset);
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  let data = new Ctor(copy.buffer, 0, copy.length / Ctor.BYTES_PER_ELEMENT);
  if (type === 'bool') data = Uint8Array.from(data);
  return new ort.Tensor(type, type === 'bool' ? Array.from(data, (v) => v !== 0) : data, shape);
}

function writeNpy(file, tensor) {
  const map = {float32: '<f4', int64: '<i8', bool: '|b1', int32: '<i4'};
  const descr = map[tensor.type];
  if (!descr) throw new Error(`${file}: output type ${tensor.type} not supported`);
  const dims = tensor.dims.length === 1 ? `${tensor.dims[0]},` : tensor.dims.join(', ');
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${dims}), }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad === 64 ? 0 : pad) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  let data = tensor.data;
  if (tensor.type === 'bool') data = Uint8Array.from(data, (v) => (v ? 1 : 0));
  const body = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  fs.writeFileSync(file, Buffer.concat([head, Buffer.from(header, 'latin1'), body]));
}

async function main() {
  const manifest = process.argv[2];
  const dir = path.dirname(manifest);
  const cases = JSON.parse(fs.readFileSync(manifest, 'utf8'));
  ort.env.logLevel = 'error';
  for (const c of cases) {
    const session = await ort.InferenceSession.create(path.join(dir, c.model),
        {graphOptimizationLevel: 'disabled', intraOpNumThreads: 1});
    const feeds = {};
    session.inputNames.forEach((name, i) => { feeds[name] = readNpy(path.join(dir, c.inputs[i])); });
    const results = await session.run(feeds);
    session.outputNames.forEach((name, i) => writeNpy(path.join(dir, c.outputs[i]), results[name]));
    console.log(`ort: ${c.model}: ${session.outputNames.length} outputs`);
  }
}

main().catch((e) => { console.error(e.message || e); process.exit(1); });
