"""A local HTTP server for the bundled sample corpus (``include/sample/``).

Used by ``make demo``, ``make airflow`` and the tests. It substitutes the literal
``{{BASE_URL}}`` in served files with its own address (byte-wise, so windows-1256
files stay intact), answers conditional GETs with 304, and serves feeds and pages
with realistic content types (some without a charset, as many real servers do).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from newsmon.config import PROJECT_ROOT

SAMPLE_DIR = PROJECT_ROOT / "include" / "sample"
PLACEHOLDER = b"{{BASE_URL}}"
PREFERRED_PORT = 8765
_LAST_MODIFIED = formatdate(1764300000, usegmt=True)


def _content_type(path: Path, body: bytes) -> str:
    head = body[:200].lower()
    if path.suffix == ".xml":
        kind = "application/atom+xml" if b"<feed" in body[:500] else "application/rss+xml"
        return f"{kind}; charset=utf-8" if b'encoding="utf-8"' in head else kind
    if path.suffix in (".html", ".htm"):
        return "text/html; charset=utf-8" if b"charset=\"utf-8\"" in body[:1000].lower() or b"charset=utf-8" in body[:1000].lower() else "text/html"
    if path.suffix == ".json":
        return "application/feed+json"
    if path.suffix == ".txt":
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


class SampleServer:
    """Serve ``root`` on 127.0.0.1 in a background thread. Use as a context manager."""

    def __init__(self, root: Path = SAMPLE_DIR, *, port: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.port = port if port is not None else _pick_port()
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                return

            def do_GET(self) -> None:
                server.requests.append(self.path)
                rel = unquote(urlsplit(self.path).path).lstrip("/")
                target = (server.root / rel).resolve()
                if not str(target).startswith(str(server.root)) or not target.is_file():
                    self._send(404, b"<html><body><h1>404 Not Found</h1></body></html>", "text/html; charset=utf-8")
                    return
                body = target.read_bytes().replace(PLACEHOLDER, server.base_url.encode("ascii"))
                etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
                if self.headers.get("If-None-Match") == etag:
                    self._send(304, b"", None, etag=etag)
                    return
                self._send(200, body, _content_type(target, body), etag=etag)

            def _send(self, status: int, body: bytes, ctype: str | None, *, etag: str | None = None) -> None:
                self.send_response(status)
                if ctype:
                    self.send_header("Content-Type", ctype)
                if etag:
                    self.send_header("ETag", etag)
                    self.send_header("Last-Modified", _LAST_MODIFIED)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="newsmon-sample", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SampleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _pick_port() -> int:
    """The preferred port when free (stable feed URLs across demo runs), else any free port."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", PREFERRED_PORT))
            return PREFERRED_PORT
        except OSError:
            pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
