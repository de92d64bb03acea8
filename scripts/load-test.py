#!/usr/bin/env python3
"""Drives `unmask serve` with C concurrent streaming clients and reports throughput and latency.

Each client sends chat requests one after another (`stream: true`, with
`stream_options.include_usage` so the server says how many tokens it generated) until
--requests requests have been answered at that concurrency. Reported per C: total generated
tokens per second (wall clock), requests per second, and the p50/p99 of the time to the first
token and of the whole request. Standard library only.

    unmask serve --model tests/fixtures/tiny-llada2-add --backend cpu --max-batch 16 --port 8080 &
    scripts/load-test.py --url http://127.0.0.1:8080 --concurrency 1,4,16 --requests 32
"""

import argparse
import http.client
import json
import threading
import time
import urllib.parse


def percentile(values, q):
    if not values:
        return float("nan")
    v = sorted(values)
    i = min(len(v) - 1, max(0, int(round(q / 100.0 * (len(v) - 1)))))
    return v[i]


def one_request(url, model, prompt, max_tokens):
    """Streams one chat completion; returns (seconds to first content, seconds, tokens)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if max_tokens:
        body["max_tokens"] = max_tokens
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    first = None
    tokens = 0
    for raw in r:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        for c in chunk.get("choices", []):
            if c.get("delta", {}).get("content") and first is None:
                first = time.monotonic() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    total = time.monotonic() - t0
    return (first if first is not None else total), total, tokens


def run_level(args, concurrency, prompts):
    lock = threading.Lock()
    next_index = [0]
    results, errors = [], []

    def client():
        while True:
            with lock:
                i = next_index[0]
                if i >= args.requests:
                    return
                next_index[0] += 1
            try:
                r = one_request(args.url, args.model, prompts[i % len(prompts)], args.max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # reported, never hidden
                with lock:
                    errors.append(str(e))

    t0 = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    tokens = sum(r[2] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": errors,
        "seconds": wall,
        "tokens": tokens,
        "tokens_per_second": tokens / wall,
        "requests_per_second": len(results) / wall,
        "first_token_p50": percentile([r[0] for r in results], 50),
        "first_token_p99": percentile([r[0] for r in results], 99),
        "latency_p50": percentile([r[1] for r in results], 50),
        "latency_p99": percentile([r[1] for r in results], 99),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", help="the model name sent (default: the one /v1/models lists)")
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=0, help="max_tokens per request (0: the server's default)")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable; default: addition questions)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    if not args.model:
        u = urllib.parse.urlparse(args.url)
        conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        conn.request("GET", "/v1/models")
        args.model = json.loads(conn.getresponse().read())["data"][0]["id"]
        conn.close()
    prompts = args.prompt or [f"What is {a}+{b}?" for a, b in
                              [(23, 45), (12, 7), (61, 30), (8, 88), (45, 45), (3, 99), (70, 14), (36, 52)]]
    levels = [run_level(args, int(c), prompts) for c in args.concurrency.split(",")]
    if args.json:
        print(json.dumps(levels, indent=2))
        return
    print(f"{'clients':>8}{'requests':>10}{'errors':>8}{'tok/s':>10}{'req/s':>8}"
          f"{'first p50':>11}{'first p99':>11}{'total p50':>11}{'total p99':>11}")
    for l in levels:
        print(f"{l['concurrency']:>8}{l['requests']:>10}{len(l['errors']):>8}{l['tokens_per_second']:>10.1f}"
              f"{l['requests_per_second']:>8.2f}{l['first_token_p50']*1e3:>9.0f}ms{l['first_token_p99']*1e3:>9.0f}ms"
              f"{l['latency_p50']*1e3:>9.0f}ms{l['latency_p99']*1e3:>9.0f}ms")
    for l in levels:
        for e in l["errors"][:3]:
            print(f"error at {l['concurrency']} clients: {e}")


if __name__ == "__main__":
    main()
