// The browser side of scripts/browser-test.sh: loads MODEL (?model=URL, served by the test
// server) through the public Engine API, runs every case of golden/generate.json with the
// case's prompt ids and parameters, checks golden/tokenizer.json if the model has one, and
// POSTs a JSON report to /report (headless Chromium cannot hand back results of async work).
import { Engine } from '../unmask/unmask.js';

const params = new URLSearchParams(location.search);
const model = params.get('model') ?? '/model/';
const backend = params.get('backend') ?? 'auto';
const demo = params.get('demo');
const out = document.getElementById('out');
const log = (line) => { out.textContent += '\n' + line; };

const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

async function fetchJson(url, optional = false) {
  const r = await fetch(url, { cache: 'no-store' });
  if (optional && r.status === 404) return null;
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function generateCases(engine, golden) {
  const results = [];
  for (const c of golden.cases) {
    const trace = [];
    const options = {
      gen_length: c.gen_length, block_length: c.block_length,
      threshold: c.threshold, temperature: c.temperature ?? 0, eos_early_stop: c.eos_early_stop ?? false,
    };
    // Every other decoding field the case gives (llada2.1/2.2 files), and its decoder.
    for (const k of ['steps', 'editing_threshold', 'max_post_steps', 'num_to_transfer', 'minimal_topk',
      'max_steps_per_block']) {
      if (c[k] !== undefined) options[k] = c[k];
    }
    const decoder = c.decoder ?? golden.decoder;
    if (decoder) options.decoder = decoder;
    const r = await engine.generate({ prompt_ids: c.prompt_ids }, options,
      (step) => trace.push({ block_start: step.block_start, tokens: step.window }));
    const tokensExact = equal(r.tokens, c.output_ids);
    let traceExact = trace.length === c.trace.length;
    let firstTraceDiff = null;
    for (let i = 0; traceExact && i < trace.length; i++) {
      if (trace[i].block_start !== c.trace[i].block_start || !equal(trace[i].tokens, c.trace[i].tokens)) {
        traceExact = false;
        firstTraceDiff = i;
      }
    }
    const res = {
      name: c.name, tokensExact, forwardsExact: r.forwards === c.forwards, traceExact, firstTraceDiff,
      forwards: r.forwards, expectedForwards: c.forwards, tokens: r.tokens.length,
      firstDiff: tokensExact ? null : r.tokens.findIndex((t, i) => t !== c.output_ids[i]),
      ms: r.stats.ms, firstTokenMs: r.stats.firstTokenMs, tokensPerSecond: r.stats.tokensPerSecond,
    };
    log(`${c.name}: tokens ${tokensExact ? 'exact' : 'DIFFER'}, forwards ${r.forwards}/${c.forwards}, trace ${traceExact ? 'exact' : 'DIFFERS'}`);
    results.push(res);
  }
  return results;
}

async function tokenizerCases(engine, golden) {
  const failures = [];
  let total = 0;
  for (const c of golden.cases ?? []) {
    total += 1;
    const ids = await engine.encode(c.text);
    if (!equal(ids, c.ids)) failures.push({ text: c.text, got: ids, want: c.ids });
    else if (await engine.decode(c.ids) !== c.text) failures.push({ text: c.text, decode: await engine.decode(c.ids) });
  }
  for (const c of golden.chat ?? []) {
    total += 1;
    const got = await engine.renderChat(c.messages, c.add_generation_prompt);
    if (got !== c.rendered) failures.push({ messages: c.messages, got, want: c.rendered });
  }
  return { total, passed: total - failures.length, failures };
}

async function main() {
  const report = { model, userAgent: navigator.userAgent };
  try {
    const t0 = performance.now();
    const engine = await Engine.load(model, { backend });
    report.loadMs = performance.now() - t0;
    report.info = engine.info;
    log(`backend: ${engine.info.backend}; WebGPU: ${JSON.stringify(engine.info.gpu)}`);
    const tok = await fetchJson(model + 'golden/tokenizer.json', true);
    if (tok) report.tokenizer = await tokenizerCases(engine, tok);
    const golden = await fetchJson(model + 'golden/generate.json');
    report.cases = await generateCases(engine, golden);
    // Cancel from the page while the worker is generating: threshold 1 commits one token per
    // forward, so an uncancelled run would make gen_length forwards.
    let steps = 0;
    const full = 64;
    const r = await engine.generate({ prompt_ids: golden.cases[0].prompt_ids }, { gen_length: full, threshold: 1 },
      () => { if (++steps === 2) engine.cancel(); });
    report.cancel = { finish: r.finish, forwards: r.forwards, full, tokens: r.tokens.length };
    log(`cancel: ${r.finish} after ${r.forwards} of ${full} forwards`);
    // A second load of the same URL reads the files from Cache Storage.
    const again = await Engine.load(model, { backend });
    report.reload = again.info.load;
    again.terminate();
    engine.terminate();
    // The demo's default model through the chat template, with its time to first token.
    if (demo) {
      const add = await Engine.load(demo, { backend });
      const r = await add.generate('What is 23+45?', { gen_length: 16 }, () => {});
      report.demo = { backend: add.info.backend, text: r.text, finish: r.finish, stats: r.stats };
      log(`demo: What is 23+45? -> ${JSON.stringify(r.text)}`);
      add.terminate();
    }
  } catch (e) {
    report.error = String(e?.stack ?? e);
    log(`error: ${report.error}`);
  }
  await fetch('/report', { method: 'POST', body: JSON.stringify(report) });
  log('reported');
}

main();
