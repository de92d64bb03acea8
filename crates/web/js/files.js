// Model files for the worker: from a base URL (fetched with byte-level progress and kept in
// Cache Storage, so a reload reads them back instead of downloading again) or from local files
// picked by the user (a FileList or an array of File).
//
// A cached copy is used when the server's HEAD answer still matches it (same length, same ETag
// or Last-Modified), or when the server cannot be reached at all; otherwise it is downloaded
// again. Storing is best effort: a full quota only means the next load downloads again.

const CACHE_NAME = 'unmask-models-v1';
const VALIDATORS = ['content-length', 'etag', 'last-modified'];

// The files of a model, in load order: small text files first (their errors come before any
// large download), then the weights.
export async function openModelSource(source) {
  if (source.url !== undefined) return UrlSource.open(source.url);
  if (source.files !== undefined) return FileSource.open(source.files);
  throw new Error('model source must be {url} or {files}');
}

class UrlSource {
  static async open(url) {
    const base = url.endsWith('/') ? url : url + '/';
    const cache = (typeof caches !== 'undefined') ? await caches.open(CACHE_NAME).catch(() => null) : null;
    return new UrlSource(base, cache);
  }

  constructor(base, cache) {
    this.label = base;
    this.base = base;
    this.cache = cache;
    this.cachedFiles = 0;
    this.downloadedBytes = 0;
  }

  // Resolves each name to {name, size, cached}; optional names that do not exist are dropped,
  // a missing required one is an error naming its URL.
  async plan(names, { optional = false } = {}) {
    const out = [];
    for (const name of names) {
      const url = this.base + name;
      const [cached, head] = await Promise.all([
        this.cache ? this.cache.match(url) : Promise.resolve(undefined),
        fetch(url, { method: 'HEAD', cache: 'no-store' }).catch(() => null),
      ]);
      if (head && !head.ok && !cached) {
        if (optional && head.status === 404) continue;
        throw new Error(`${url}: HTTP ${head.status}`);
      }
      const fresh = cached && (!head || !head.ok || sameValidators(cached.headers, head.headers));
      const headers = fresh ? cached.headers : head?.headers;
      const size = Number(headers?.get('content-length') ?? NaN);
      out.push({ name, url, size: Number.isFinite(size) ? size : null, cached: fresh ? cached : null });
    }
    return out;
  }

  // The bytes of one planned file; `progress(loadedOfThisFile)` after every chunk.
  async read(file, progress) {
    if (file.cached) {
      this.cachedFiles += 1;
      return readBody(file.cached, file.size, progress);
    }
    const resp = await fetch(file.url, { cache: 'no-store' });
    if (!resp.ok) throw new Error(`${file.url}: HTTP ${resp.status}`);
    const bytes = await readBody(resp, file.size, progress);
    this.downloadedBytes += bytes.length;
    if (this.cache) {
      const headers = { 'content-type': resp.headers.get('content-type') ?? 'application/octet-stream' };
      for (const h of VALIDATORS) {
        const v = resp.headers.get(h);
        if (v !== null) headers[h] = v;
      }
      headers['content-length'] = String(bytes.length);
      await this.cache.put(file.url, new Response(bytes, { headers })).catch(() => {});
    }
    return bytes;
  }
}

// The shard-sized files are handled as Blobs, never as one array: a cached file's Blob is read
// from disk slice by slice, so a model larger than memory can load.
UrlSource.prototype.blob = async function (file, progress) {
  if (file.cached) {
    this.cachedFiles += 1;
    const b = await file.cached.blob();
    progress(b.size);
    return b;
  }
  const resp = await fetch(file.url, { cache: 'no-store' });
  if (!resp.ok) throw new Error(`${file.url}: HTTP ${resp.status}`);
  if (this.cache && resp.body) {
    // One copy of the body streams into Cache Storage, the other is only counted (progress);
    // the Blob then comes back from the cache, on disk.
    const [toCache, toCount] = resp.body.tee();
    const stored = this.cache.put(file.url, new Response(toCache, { headers: storedHeaders(resp) }))
      .then(() => true, () => false);
    const reader = toCount.getReader();
    let loaded = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      loaded += value.length;
      progress(loaded);
    }
    this.downloadedBytes += loaded;
    if (await stored) {
      const back = await this.cache.match(file.url);
      if (back) return back.blob();
    }
    // Not stored (quota): fetch again into memory.
    return new Blob([await this.read({ ...file, cached: null }, progress)]);
  }
  return new Blob([await this.read(file, progress)]);
};

function storedHeaders(resp) {
  const headers = { 'content-type': resp.headers.get('content-type') ?? 'application/octet-stream' };
  for (const h of VALIDATORS) {
    const v = resp.headers.get(h);
    if (v !== null) headers[h] = v;
  }
  return headers;
}

function sameValidators(a, b) {
  let compared = 0;
  for (const h of VALIDATORS) {
    const x = a.get(h), y = b.get(h);
    if (x === null || y === null) continue;
    if (x !== y) return false;
    compared += 1;
  }
  return compared > 0;
}

async function readBody(resp, size, progress) {
  if (!resp.body) return new Uint8Array(await resp.arrayBuffer());
  const reader = resp.body.getReader();
  const chunks = [];
  let loaded = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.length;
    progress(loaded);
  }
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) { out.set(c, at); at += c.length; }
  return out;
}

class FileSource {
  static open(files) {
    return new FileSource(Array.from(files));
  }

  constructor(files) {
    // A picked folder also lists its subfolders (golden/tokenizer.json...): per name, keep the
    // file closest to the top.
    const depth = (f) => (f.webkitRelativePath || f.name).split('/').length;
    this.byName = new Map();
    for (const f of files) {
      const seen = this.byName.get(f.name);
      if (!seen || depth(f) < depth(seen)) this.byName.set(f.name, f);
    }
    this.label = files.length ? (files[0].webkitRelativePath?.split('/')[0] || 'local files') : 'local files';
    this.cachedFiles = 0;
    this.downloadedBytes = 0;
  }

  async plan(names, { optional = false } = {}) {
    const out = [];
    for (const name of names) {
      const f = this.byName.get(name);
      if (!f) {
        if (optional) continue;
        throw new Error(`${name} is not among the selected files (pick the model's folder or all of its files)`);
      }
      out.push({ name, file: f, size: f.size, cached: null });
    }
    return out;
  }

  async read(file, progress) {
    return readBody(new Response(file.file), file.size, progress);
  }

  // A picked file already is a Blob, read from disk on demand.
  async blob(file, progress) {
    progress(file.file.size);
    return file.file;
  }
}

// The safetensors shards a model lists in its index, else the single file.
export function shardNames(indexJson) {
  const map = indexJson?.weight_map;
  if (!map || typeof map !== 'object') throw new Error('model.safetensors.index.json has no weight_map object');
  return [...new Set(Object.values(map))].sort();
}
