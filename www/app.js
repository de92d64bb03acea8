// The demo page: load a model into the worker-backed Engine, chat with it, and draw the current
// block as slots that fill in as the decoder commits tokens.
// URL parameters: ?model=URL (default: the addition model), ?backend=cpu|auto,
// ?prompt=TEXT&autorun=1 (send on load; document.body.dataset.state becomes "done" after).
import { Engine } from './unmask/unmask.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let engine = null;
let messages = [];
let busy = false;

const fmtBytes = (n) => n >= 1 << 30 ? (n / (1 << 30)).toFixed(2) + ' GiB'
  : n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + ' MiB' : (n / 1024).toFixed(0) + ' KiB';
const fmtCount = (n) => n >= 1e9 ? (n / 1e9).toFixed(2) + ' B' : n >= 1e6 ? (n / 1e6).toFixed(2) + ' M' : String(n);

function adapterName(gpu) {
  if (!gpu?.available) return `no WebGPU (${gpu?.reason ?? 'unknown'})`;
  return [gpu.vendor, gpu.architecture, gpu.description].filter(Boolean).join(' ') || 'WebGPU adapter';
}

function setStatus(text) { $('status').textContent = text; }

// The status line: the backend, with the adapter when the backend's name does not include it.
function backendLine(info) {
  return info.kind === 'webgpu' ? info.backend : `${info.backend} · ${adapterName(info.gpu)}`;
}

function adapterDetails(gpu) {
  if (!gpu?.available) return adapterName(gpu);
  return `${adapterName(gpu)} (shader-f16: ${gpu.shaderF16 ? 'yes' : 'no'}, ` +
    `max binding ${fmtBytes(gpu.maxStorageBufferBindingSize)})`;
}

async function loadModel(source, label) {
  $('send').disabled = true;
  const bar = $('progress');
  bar.hidden = false; bar.value = 0;
  setStatus(`loading ${label}…`);
  if (engine) { engine.terminate(); engine = null; }
  try {
    engine = await Engine.load(source, {
      backend: $('backend').value,
      onProgress: (p) => {
        if (p.phase === 'build') { setStatus('preparing weights…'); return; }
        if (p.phase === 'upload') {
          bar.max = p.tensors || 1; bar.value = p.uploaded;
          setStatus(`weights to the device: ${p.uploaded} of ${p.tensors} tensors`);
          return;
        }
        bar.max = p.total || 1; bar.value = p.loaded;
        setStatus(`${p.cached ? 'reading cached' : 'downloading'} ${p.file}: ${fmtBytes(p.loaded)} of ${fmtBytes(p.total)}`);
      },
    });
  } catch (e) {
    setStatus(`load failed: ${e.message}`);
    bar.hidden = true;
    return false;
  }
  bar.hidden = true;
  const i = engine.info;
  $('model-info').textContent =
    `${label}\n${i.layers} layers, hidden ${i.hidden}, ${i.experts} experts, vocab ${i.vocab}\n` +
    `${fmtCount(i.parameters)} parameters (${fmtCount(i.active_parameters)} active), ${fmtBytes(i.weight_bytes)}\n` +
    `backend: ${i.backend}${i.fallback ? ` (fell back: ${i.fallback})` : ''}\nadapter: ${adapterDetails(i.gpu)}\n` +
    `loaded in ${(i.load.ms / 1000).toFixed(2)} s: ${i.load.cachedFiles}/${i.load.files} files from the cache, ` +
    `${fmtBytes(i.load.downloadedBytes)} downloaded`;
  setStatus(backendLine(i));
  $('send').disabled = false;
  return true;
}

function options() {
  const o = {
    threshold: Number($('threshold').value),
    editing_threshold: Number($('editing_threshold').value),
    block_length: Number($('block_length').value),
    steps: Number($('steps').value),
    gen_length: Number($('gen_length').value),
    temperature: Number($('temperature').value),
    seed: Number($('seed').value),
  };
  if ($('decoder').value) o.decoder = $('decoder').value;
  return o;
}

function bubble(role, text) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  $('log').append(div);
  $('log').scrollTop = $('log').scrollHeight;
  return div;
}

// Short labels keep a block of 32 slots on one or two lines; the tooltip has the full token.
const SPECIAL = { '<|endoftext|>': 'eos', '<|role_end|>': 'end', '<|mask|>': '▒' };
function slotLabel(text) {
  if (SPECIAL[text]) return SPECIAL[text];
  const t = text.replace(/\n/g, '⏎');
  return t.length > 10 ? t.slice(0, 9) + '…' : (t || '·');
}

function drawStep(step, rows) {
  let row = rows.get(step.block_start);
  if (!row) {
    row = document.createElement('div');
    row.className = 'block';
    $('blocks').append(row);
    rows.set(step.block_start, row);
  }
  // DELETE / SPLIT (llada2.2) are marked where they were written: the block closed up there, or
  // a mask was inserted before the token.
  const cut = new Set(step.deleted.map((p) => p - step.block_start));
  const split = new Set(step.split.map((p) => p - step.block_start));
  row.replaceChildren(...step.slots.map((s, i) => {
    const el = document.createElement('span');
    el.className = `slot ${s.state}` + (cut.has(i) ? ' deleted' : '') + (split.has(i) ? ' split' : '');
    el.textContent = slotLabel(s.text);
    if (s.state === 'masked') {
      el.style.setProperty('--conf', (0.15 + 0.6 * (s.confidence ?? 0)).toFixed(2));
      el.title = `guess ${JSON.stringify(s.text)} (${((s.confidence ?? 0) * 100).toFixed(1)} %)`;
    } else {
      el.title = `${JSON.stringify(s.text)} = ${s.id}`;
    }
    return el;
  }));
  $('blockinfo').textContent = `step ${step.forward + 1}, block at position ${step.block_start}, ` +
    `${step.committed.length} committed, ${step.edited.length} edited` +
    (step.deleted.length || step.split.length ? ` (${step.deleted.length} deleted, ${step.split.length} split)` : '') +
    `, ${step.masked.length} still masked`;
}

async function send(text) {
  if (!engine || busy || !text.trim()) return;
  busy = true;
  $('send').disabled = true; $('stop').disabled = false;
  messages.push({ role: 'user', content: text });
  bubble('user', text);
  const out = bubble('assistant running', '');
  $('blocks').replaceChildren();
  const rows = new Map();
  let shown = '';
  try {
    const r = await engine.generate(messages, options(), (step) => {
      drawStep(step, rows);
      if (step.delta) { shown += step.delta; out.textContent = shown; }
    });
    out.textContent = r.text;
    messages.push({ role: 'assistant', content: r.text });
    const s = r.stats;
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = `${r.tokens.length} tokens, ${r.forwards} forwards, ${s.tokensPerSecond.toFixed(1)} tokens/s, ` +
      `first token ${s.firstTokenMs?.toFixed(0) ?? '–'} ms, ${r.finish}`;
    out.append(meta);
    $('stats').textContent = `${s.tokensPerSecond.toFixed(1)} tokens/s (${s.stepsPerSecond.toFixed(1)} forwards/s)\n` +
      `first token after ${s.firstTokenMs?.toFixed(0) ?? '–'} ms, first text after ${s.firstTextMs?.toFixed(0) ?? '–'} ms\n` +
      `${r.prompt_tokens} prompt tokens, ${r.tokens.length} generated in ${r.forwards} forwards (${(s.ms / 1000).toFixed(2)} s)\n` +
      `${(r.tokens.length / Math.max(r.forwards, 1)).toFixed(2)} tokens per forward; finish: ${r.finish}`;
    setStatus(`${backendLine(engine.info)} · ${s.tokensPerSecond.toFixed(1)} tokens/s`);
  } catch (e) {
    messages.pop();
    out.className = 'msg error';
    out.textContent = e.message;
  } finally {
    out.classList.remove('running');
    busy = false;
    $('send').disabled = false; $('stop').disabled = true;
  }
}

$('ask').addEventListener('submit', (e) => { e.preventDefault(); send($('prompt').value); });
$('stop').addEventListener('click', () => engine?.cancel());
$('clear').addEventListener('click', () => { messages = []; $('log').replaceChildren(); $('blocks').replaceChildren(); });
$('threshold').addEventListener('input', () => { $('threshold-out').value = $('threshold').value; });
$('block_length').addEventListener('change', () => { $('steps').value = $('block_length').value; });
$('load').addEventListener('click', () => loadModel($('model-url').value, $('model-url').value));
$('model-dir').addEventListener('change', (e) => {
  const files = e.target.files;
  if (files.length) loadModel(files, files[0].webkitRelativePath?.split('/')[0] || 'local files');
});

(async () => {
  if (params.has('model')) $('model-url').value = params.get('model');
  if (params.has('backend')) $('backend').value = params.get('backend');
  if (params.has('prompt')) $('prompt').value = params.get('prompt');
  const ok = await loadModel($('model-url').value, $('model-url').value);
  if (ok && params.get('autorun') === '1') await send($('prompt').value);
  document.body.dataset.state = 'done';
})();
