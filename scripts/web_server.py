#!/usr/bin/env python3
"""A small static server for the browser demo and the browser test (127.0.0.1 only).

    web_server.py --mount /=www --mount /models/add/=tests/fixtures/tiny-llada2-add [--port 0]
                  [--port-file F] [--report F]

Each --mount maps a URL prefix to a directory (longest prefix wins). --port 0 picks a free port;
the chosen one is printed and written to --port-file. With --report, a POST to /report stores its
body in that file (written whole, then renamed, so a reader never sees half of it); the browser
test uses it because headless Chromium cannot hand back results of asynchronous GPU work.
"""

import argparse
import http.server
import os
import posixpath
import sys
import urllib.parse

TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".safetensors": "application/octet-stream",
}


def make_handler(mounts, report):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
            for prefix, root in mounts:
                if path == prefix.rstrip("/") and prefix.endswith("/") and prefix != "/":
                    path = prefix  # /models/add -> /models/add/
                if path.startswith(prefix):
                    rest = posixpath.normpath(path[len(prefix):]).lstrip("/")
                    if rest.startswith("..") or rest == ".":
                        rest = ""
                    return os.path.join(root, *[p for p in rest.split("/") if p])
            return os.path.join(os.devnull, "missing")

        def guess_type(self, path):
            return TYPES.get(os.path.splitext(path)[1], "application/octet-stream")

        def end_headers(self):
            # Pages and code are re-read on every load (the model files are cached by the app
            # itself, in Cache Storage, validated by Last-Modified).
            self.send_header("Cache-Control", "no-cache")
            super().end_headers()

        def do_POST(self):
            if report is None or urllib.parse.urlsplit(self.path).path != "/report":
                self.send_error(404)
                return
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            tmp = report + ".part"
            with open(tmp, "wb") as f:
                f.write(body)
            os.replace(tmp, report)
            self.send_response(204)
            self.end_headers()

        def log_message(self, fmt, *args):
            if os.environ.get("UNMASK_SERVER_LOG"):
                super().log_message(fmt, *args)

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mount", action="append", required=True, metavar="PREFIX=DIR")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--port-file")
    ap.add_argument("--report")
    a = ap.parse_args()
    mounts = []
    for m in a.mount:
        prefix, _, d = m.partition("=")
        if not prefix.startswith("/") or not d:
            ap.error(f"--mount {m!r}: expected /PREFIX=DIR")
        if not os.path.isdir(d):
            ap.error(f"--mount {m!r}: {d} is not a directory")
        mounts.append((prefix if prefix.endswith("/") else prefix + "/", os.path.abspath(d)))
    mounts.sort(key=lambda m: -len(m[0]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), make_handler(mounts, a.report))
    port = server.server_address[1]
    if a.port_file:
        with open(a.port_file + ".part", "w") as f:
            f.write(str(port))
        os.replace(a.port_file + ".part", a.port_file)
    print(f"serving on http://127.0.0.1:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
