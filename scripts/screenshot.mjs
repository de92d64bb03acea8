// Screenshot of a page once it says it is done, through headless Chromium's DevTools protocol
// (Node's built-in WebSocket; no npm packages). Used for docs/demo.png:
//   node --experimental-websocket scripts/screenshot.mjs URL OUT.png [--wait EXPR] [--timeout S] [--size WxH]
// EXPR (default `document.body.dataset.state === "done"`) is polled until true.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const args = process.argv.slice(2);
const opt = (name, dflt) => { const i = args.indexOf(name); return i >= 0 ? args.splice(i, 2)[1] : dflt; };
const waitExpr = opt('--wait', 'document.body.dataset.state === "done"');
const timeoutS = Number(opt('--timeout', '60'));
const [w, h] = opt('--size', '1280x860').split('x').map(Number);
const [url, out] = args;
if (!url || !out) { console.error('usage: screenshot.mjs URL OUT.png [--wait EXPR] [--timeout S] [--size WxH]'); process.exit(2); }

const profile = mkdtempSync(join(tmpdir(), 'unmask-shot-'));
const chrome = spawn(process.env.CHROMIUM ?? 'chromium', [
  '--headless=new', '--no-sandbox', '--enable-unsafe-webgpu', `--user-data-dir=${profile}`,
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
  '--disable-quic', '--hide-scrollbars', `--window-size=${w},${h}`, '--remote-debugging-port=0', url,
], { stdio: 'ignore' });
const deadline = Date.now() + timeoutS * 1000;
const sleep = (ms) => new Promise(r => setTimeout(r, ms));

async function main() {
  const portFile = join(profile, 'DevToolsActivePort');
  while (!existsSync(portFile)) { if (Date.now() > deadline) throw new Error('chromium did not start'); await sleep(100); }
  const port = readFileSync(portFile, 'utf8').split('\n')[0];
  let page;
  while (!page) {
    const list = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    page = list.find(t => t.type === 'page');
    if (!page) await sleep(100);
  }
  const ws = new WebSocket(page.webSocketDebuggerUrl);
  await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error('DevTools connection failed')); });
  let next = 1;
  const waiting = new Map();
  ws.onmessage = (e) => { const m = JSON.parse(e.data); waiting.get(m.id)?.(m); waiting.delete(m.id); };
  const send = (method, params = {}) => new Promise((res, rej) => {
    const id = next++;
    waiting.set(id, (m) => m.error ? rej(new Error(`${method}: ${m.error.message}`)) : res(m.result));
    ws.send(JSON.stringify({ id, method, params }));
  });
  for (;;) {
    const r = await send('Runtime.evaluate', { expression: `Boolean(${waitExpr})`, returnByValue: true });
    if (r.result?.value === true) break;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${waitExpr}`);
    await sleep(200);
  }
  await sleep(300); // let the last paint land
  const shot = await send('Page.captureScreenshot', { format: 'png' });
  writeFileSync(out, Buffer.from(shot.data, 'base64'));
  ws.close();
}

main().then(() => { console.log(`wrote ${out}`); }, (e) => { console.error(`screenshot: ${e.message}`); process.exitCode = 1; })
  .finally(() => { chrome.kill(); setTimeout(() => rmSync(profile, { recursive: true, force: true }), 500); });
