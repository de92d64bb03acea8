// The worker that owns the engine: the page never runs model code, so it never freezes.
// Messages in:  {id, type: 'load', source: {url} | {files}, backend: 'auto' | 'webgpu' | 'cpu'}
//               {id, type: 'generate', input, options, raw}
//               {id, type: 'cancel'}           (stops the running generation after its step)
//               {id, type: 'encode', text} | {id, type: 'decode', ids}
//               {id, type: 'renderChat', messages, addGenerationPrompt}
// Messages out: {id, type: 'progress', ...} | {id, type: 'step', step, t}
//               {id, type: 'result', value} | {id, type: 'error', message}

import init, { Loader, backends } from './pkg/unmask_web.js';
import { openModelSource, shardNames } from './files.js';

const wasmReady = init();
let engine = null;
let running = null; // {id, cancelled}

// A macrotask boundary: lets queued messages (a cancel) in between two steps. MessageChannel
// is not throttled like nested setTimeout.
const tick = new MessageChannel();
const nextTask = () => new Promise(resolve => {
  tick.port1.onmessage = () => resolve();
  tick.port2.postMessage(0);
});

self.onmessage = async (e) => {
  const msg = e.data;
  const post = (m, transfer) => self.postMessage({ id: msg.id, ...m }, transfer ?? []);
  try {
    switch (msg.type) {
      case 'load': post({ type: 'result', value: await load(msg, post) }); break;
      case 'generate': post({ type: 'result', value: await generate(msg, post) }); break;
      case 'cancel':
        if (running) running.cancelled = true;
        post({ type: 'result', value: running !== null });
        break;
      case 'encode': post({ type: 'result', value: Array.from(need().encode(msg.text)) }); break;
      case 'decode': post({ type: 'result', value: need().decode(Uint32Array.from(msg.ids)) }); break;
      case 'renderChat':
        post({ type: 'result', value: need().render_chat(JSON.stringify(msg.messages), msg.addGenerationPrompt ?? true) });
        break;
      default: throw new Error(`unknown message type ${msg.type}`);
    }
  } catch (err) {
    post({ type: 'error', message: String(err?.message ?? err) });
  }
};

function need() {
  if (!engine) throw new Error('no model loaded');
  return engine;
}

async function load(msg, post) {
  const t0 = performance.now();
  await wasmReady;
  const gpu = await gpuInfo();
  const backend = chooseBackend(msg.backend ?? 'auto', gpu);
  const src = await openModelSource(msg.source);
  const required = await src.plan(['config.json', 'tokenizer.json']);
  const optional = await src.plan(['tokenizer_config.json', 'model.safetensors.index.json'], { optional: true });
  const small = [...required, ...optional];

  let done = 0;
  let total = small.reduce((s, f) => s + (f.size ?? 0), 0);
  const read = async (f) => {
    const bytes = await src.read(f, (n) => post({
      type: 'progress', file: f.name, fileLoaded: n, fileSize: f.size,
      loaded: done + n, total, cached: f.cached !== null,
    }));
    done += bytes.length;
    return bytes;
  };
  const text = {};
  for (const f of small) text[f.name] = await read(f);

  const loader = new Loader(text['config.json'], text['tokenizer.json'], text['tokenizer_config.json']);
  const index = text['model.safetensors.index.json'];
  const names = index ? shardNames(JSON.parse(new TextDecoder().decode(index))) : ['model.safetensors'];
  const shards = await src.plan(names);
  total += shards.reduce((s, f) => s + (f.size ?? 0), 0);
  // Shards stay Blobs (on disk when cached or picked): the engine reads each tensor's bytes
  // when it uploads that tensor, so wasm memory never holds the whole model.
  const sync = new FileReaderSync();
  for (const f of shards) {
    const blob = await src.blob(f, (n) => post({
      type: 'progress', file: f.name, fileLoaded: n, fileSize: f.size,
      loaded: done + n, total, cached: f.cached !== null,
    }));
    done += blob.size;
    const readRange = (start, len) => new Uint8Array(sync.readAsArrayBuffer(blob.slice(start, start + len)));
    const n = Loader.header_len(readRange(0, Math.min(8, blob.size)), blob.size, f.name);
    loader.add_shard(f.name, blob.size, readRange(0, n), readRange);
  }

  post({ type: 'progress', phase: 'build', loaded: done, total });
  if (engine) { engine.free(); engine = null; }
  engine = await loader.build(backend, (uploaded, tensors) => post({
    type: 'progress', phase: 'upload', uploaded, tensors, loaded: done, total,
  }));
  const info = JSON.parse(engine.info());
  info.gpu = gpu;
  // Browsers do not tell wgpu the adapter's name: describe it from the adapter info instead.
  if (info.kind === 'webgpu') info.backend = `WebGPU (${describeAdapter(gpu)})`;
  info.load = {
    ms: performance.now() - t0, bytes: done, files: small.length + shards.length,
    cachedFiles: src.cachedFiles, downloadedBytes: src.downloadedBytes,
    // The wasm heap after the upload (it never shrinks): about the largest tensor plus the
    // runtime, not the model, when the engine runs on WebGPU.
    wasmMemoryBytes: (await wasmReady).memory.buffer.byteLength,
  };
  return info;
}

// 'auto' stays 'auto' (the engine tries WebGPU and falls back to the CPU, saying why) unless
// the browser has no WebGPU adapter at all.
function chooseBackend(requested, gpu) {
  const built = backends();
  if (requested === 'auto') return built.includes('webgpu') && gpu.available ? 'auto' : 'cpu';
  if (!built.includes(requested)) throw new Error(`backend ${requested} is not in this build (have: ${built.join(', ')})`);
  return requested;
}

function describeAdapter(gpu) {
  return [gpu.vendor, gpu.architecture, gpu.description].filter(Boolean).join(' ') || 'unnamed adapter';
}

async function gpuInfo() {
  if (!('gpu' in navigator)) return { available: false, reason: 'navigator.gpu is absent' };
  const adapter = await navigator.gpu.requestAdapter().catch(() => null);
  if (!adapter) return { available: false, reason: 'no WebGPU adapter' };
  const i = adapter.info ?? {};
  return {
    available: true,
    vendor: i.vendor, architecture: i.architecture, device: i.device, description: i.description,
    shaderF16: adapter.features.has('shader-f16'),
    maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
    maxBufferSize: adapter.limits.maxBufferSize,
  };
}

async function generate(msg, post) {
  const eng = need();
  if (running) throw new Error('a generation is already running');
  const run = { id: msg.id, cancelled: false };
  running = run;
  const t0 = performance.now();
  let firstToken = null, firstText = null, committed = 0, steps = 0;
  const onStep = (json) => {
    const step = JSON.parse(json);
    const t = performance.now() - t0;
    steps += 1;
    committed += step.committed.length;
    if (firstToken === null && step.committed.length) firstToken = t;
    if (firstText === null && step.delta) firstText = t;
    post({ type: 'step', step, t });
    return nextTask().then(() => !run.cancelled);
  };
  try {
    const request = JSON.stringify({ input: msg.input, options: msg.options ?? {}, raw: msg.raw ?? false });
    const done = JSON.parse(await eng.generate(request, onStep));
    const ms = performance.now() - t0;
    done.stats = {
      ms, steps, committed,
      firstTokenMs: firstToken, firstTextMs: firstText,
      // Generated tokens (up to and including the end of the turn) per second; `committed`
      // also counts the eos padding a block fills in after the answer.
      tokensPerSecond: done.tokens.length / (ms / 1000),
      stepsPerSecond: steps / (ms / 1000),
    };
    return done;
  } finally {
    running = null;
  }
}
