"""A counting HTTP proxy in front of the GCS emulator: how many requests a process makes.

Point a process's gs:// clients at `counter.url` (STORAGE_EMULATOR_HOST and
TENSORSTORE_GCS_HTTP_URL, storage/env.py) and every request it makes is forwarded to the
emulator and counted by kind: object reads (GET .../o/NAME with alt=media), listings (GET
.../o), metadata (GET .../o/NAME without alt=media), writes and the rest. Bound to 127.0.0.1.
"""

from __future__ import annotations

import collections
import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


def kind_of(method: str, path: str) -> str:
    parts = urlsplit(path)
    query = parse_qs(parts.query)
    if method == "GET" and parts.path.rstrip("/").endswith("/o"):
        return "list"
    if method == "GET" and "/o/" in parts.path:
        return "read" if query.get("alt") == ["media"] else "metadata"
    if method in ("POST", "PUT") or "upload" in parts.path:
        return "write"
    return method.lower()


class RequestCounter:
    """A proxy to `upstream` on a free port of 127.0.0.1; `counts` by kind, `log` by request."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.counts: collections.Counter = collections.Counter()
        self.log: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with counter._lock:
                    counter.counts[kind_of(self.command, self.path)] += 1
                    counter.log.append((self.command, unquote(self.path)))
                connection = http.client.HTTPConnection(counter.upstream.hostname,
                                                        counter.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in _HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                connection.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client gone mid-reply
                pass  # (reads in flight when a process exits): nothing to report

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RequestCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.log.clear()
