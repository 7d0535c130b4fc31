"""A local HTTP server for the bundled sample corpus (``include/sample/``).

Used by ``make demo``, ``make airflow`` and the tests. It substitutes the literal
``{{BASE_URL}}`` in served files with its own address (byte-wise, so windows-1256
files stay intact), answers conditional GETs with 304, and serves feeds and pages
with realistic content types (some without a charset, as many real servers do).

Each site under ``sites/`` gets its own loopback address (127.0.0.2, 127.0.0.3, ...;
all of 127.0.0.0/8 is loopback on Linux), so sources have distinct hosts as on the web:
``{{BASE_URL}}/sites/<site>/...`` becomes ``http://127.0.0.N:PORT/sites/<site>/...``.
"""

from __future__ import annotations

import hashlib
import re
import socket
import sys
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from newsmon.config import PROJECT_ROOT

SAMPLE_DIR = PROJECT_ROOT / "include" / "sample"
PLACEHOLDER = b"{{BASE_URL}}"
_SITE_LINK = re.compile(rb"\{\{BASE_URL\}\}/sites/([A-Za-z0-9_-]+)")
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


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # a client that drops a kept-alive connection is not an error of the server's: without
        # this, socketserver prints a traceback in the middle of the demo's output
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class SampleServer:
    """Serve ``root`` on 127.0.0.1 in a background thread. Use as a context manager."""

    def __init__(self, root: Path = SAMPLE_DIR, *, port: int | None = None) -> None:
        self.root = Path(root).resolve()
        sites = sorted(p.name for p in (self.root / "sites").iterdir() if p.is_dir()) if (self.root / "sites").is_dir() else []
        self.site_hosts = {name: f"127.0.0.{i + 2}" for i, name in enumerate(sites)}
        hosts = ["127.0.0.1", *self.site_hosts.values()]
        self.port = port if port else _pick_port(hosts, prefer=port is None)  # port=0: any free port
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
                body = server.render(target.read_bytes())
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
                try:
                    self.end_headers()
                    if body:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: not our error
                    self.close_connection = True

        self._servers = []
        for host in ["127.0.0.1", *self.site_hosts.values()]:
            httpd = _QuietServer((host, self.port), Handler)
            self.port = httpd.server_address[1]
            self._servers.append(httpd)
        self._threads = [
            threading.Thread(target=h.serve_forever, name=f"newsmon-sample-{i}", daemon=True) for i, h in enumerate(self._servers)
        ]

    def site_url(self, site: str) -> str:
        return f"http://{self.site_hosts[site]}:{self.port}"

    def render(self, body: bytes) -> bytes:
        """Substitute the placeholders: site links to the site's host, the rest to the main host."""

        def site(m: re.Match[bytes]) -> bytes:
            host = self.site_hosts.get(m[1].decode("ascii"), "127.0.0.1")
            return f"http://{host}:{self.port}/sites/".encode("ascii") + m[1]

        return _SITE_LINK.sub(site, body).replace(PLACEHOLDER, self.base_url.encode("ascii"))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SampleServer:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for h in self._servers:
            h.shutdown()
            h.server_close()

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_on_all(port: int, hosts: list[str]) -> bool:
    for host in hosts:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _pick_port(hosts: list[str], *, prefer: bool = True) -> int:
    """The preferred port when free on every address (stable feed URLs across demo runs),
    else a port that is free on all of them."""
    if prefer and _free_on_all(PREFERRED_PORT, hosts):
        return PREFERRED_PORT
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if _free_on_all(port, hosts):
            return port
    raise OSError("no port free on all sample-server addresses")
