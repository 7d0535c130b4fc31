"""A real HTTP server on 127.0.0.1 whose routes tests program (no mocks of HTTP)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drip_s: float = 0.0  # seconds between bytes (slow-drip server)
    handler: Callable[[Any], Route] | None = None  # computes the route from the request
    etag: str | None = None  # sent as ETag; a matching If-None-Match gets 304
    last_modified: str | None = None  # sent as Last-Modified; an equal If-Modified-Since gets 304
    stream: Callable[[], Iterator[bytes]] | None = None  # body written chunk by chunk, no Content-Length


class LocalServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: list[tuple[str, dict[str, str]]] = []
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                return

            def do_GET(self) -> None:
                srv.hits.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = srv.routes.get(self.path) or srv.routes.get(self.path.split("?")[0])
                if route is None:
                    route = Route(404, b"not found")
                if route.handler is not None:
                    route = route.handler(self)
                if route.delay_s:
                    time.sleep(route.delay_s)
                validators = {}
                if route.etag:
                    validators["ETag"] = route.etag
                if route.last_modified:
                    validators["Last-Modified"] = route.last_modified
                inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
                if (route.etag and inm == route.etag) or (route.last_modified and not inm and ims == route.last_modified):
                    route = Route(304, b"", validators)
                try:
                    self.send_response(route.status)
                    if route.stream is not None:
                        self.send_header("Connection", "close")
                        for k, v in {**route.headers, **validators}.items():
                            self.send_header(k, v)
                        self.end_headers()
                        self.close_connection = True
                        for chunk in route.stream():
                            self.wfile.write(chunk)
                        return
                    hdrs = {"Content-Length": str(len(route.body)), **route.headers, **validators}
                    for k, v in hdrs.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if route.drip_s:
                        for i in range(len(route.body)):
                            self.wfile.write(route.body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(route.drip_s)
                    else:
                        self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
