// unmask in the browser: the page-side API. The model runs in a Web Worker (worker.js); this
// class turns its messages into promises and callbacks.
//
//   const engine = await Engine.load('models/add/', { onProgress: p => console.log(p.loaded, p.total) });
//   (progress: {file, loaded, total, cached} while files arrive, {phase: 'build'}, then
//   {phase: 'upload', uploaded, tensors} as tensors go to the device one by one)
//   const result = await engine.generate('What is 23+45?', { gen_length: 16 }, step => draw(step));
//   engine.cancel();          // stops a running generate() after its current step
//
// Options are the decoder's: gen_length, block_length, steps, threshold, temperature, top_k,
// top_p, seed, eos_early_stop. `generate` takes a string (a user message through the chat
// template), an array of {role, content} messages, or {prompt_ids: [...]}.

export class Engine {
  // source: a base URL (relative to the page) or a FileList / array of File (a model folder).
  // options: {onProgress, backend: 'auto' | 'cpu'}. Resolves once the model is on its backend.
  static async load(source, { onProgress, backend = 'auto' } = {}) {
    const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
    const engine = new Engine(worker);
    try {
      engine.info = await engine.#call({ type: 'load', source: normalizeSource(source), backend }, {
        progress: onProgress,
      });
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return engine;
  }

  #worker;
  #nextId = 1;
  #pending = new Map();

  constructor(worker) {
    this.#worker = worker;
    this.info = null;
    worker.onmessage = (e) => this.#receive(e.data);
    worker.onerror = (e) => this.#failAll(new Error(`worker: ${e.message ?? 'failed to start'}`));
  }

  // Resolves to {text, tokens, forwards, finish, prompt_tokens, stats}; onStep(step, ms) gets
  // every step: {forward, block_start, window, committed, masked, slots, delta}.
  generate(input, options = {}, onStep, { raw = false } = {}) {
    return this.#call({ type: 'generate', input, options, raw }, { step: onStep });
  }

  // Stops the running generation after its current step (its promise resolves with
  // finish: 'cancelled'). Resolves to whether one was running.
  cancel() {
    return this.#call({ type: 'cancel' });
  }

  encode(text) { return this.#call({ type: 'encode', text }); }
  decode(ids) { return this.#call({ type: 'decode', ids: Array.from(ids) }); }
  renderChat(messages, addGenerationPrompt = true) {
    return this.#call({ type: 'renderChat', messages, addGenerationPrompt });
  }

  terminate() {
    this.#worker.terminate();
    this.#failAll(new Error('engine terminated'));
  }

  #call(msg, callbacks = {}) {
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, ...callbacks });
      this.#worker.postMessage({ id, ...msg });
    });
  }

  #receive(m) {
    const p = this.#pending.get(m.id);
    if (!p) return;
    switch (m.type) {
      case 'progress': p.progress?.(m); break;
      case 'step': p.step?.(m.step, m.t); break;
      case 'result': this.#pending.delete(m.id); p.resolve(m.value); break;
      case 'error': this.#pending.delete(m.id); p.reject(new Error(m.message)); break;
    }
  }

  #failAll(err) {
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }
}

function normalizeSource(source) {
  if (typeof source === 'string' || source instanceof URL) {
    // The worker resolves URLs against its own location: make it absolute here.
    return { url: new URL(source, location.href).href };
  }
  if (source && typeof source.length === 'number') return { files: Array.from(source) };
  throw new Error('Engine.load: give a base URL or a FileList');
}
