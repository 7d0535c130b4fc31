"""The one HTTP client of newsmon, shared by feed polling and article fetching.

Politeness and safety live here so both stages get them: a global and a per-host
concurrency limit, a minimum delay between requests to one host, an identifiable
User-Agent, connect/read/total timeouts, a hard cap on the (decompressed) body size,
redirects followed by hand so every hop is checked against the SSRF policy, and
robots.txt for article pages. Failures come back as typed ``FetchError``s.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import socket
import ssl
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urljoin, urlsplit

import httpx

from newsmon.config import FetchSettings
from newsmon.errors import FetchError, fetch_error
from newsmon.models import HttpResponse

log = logging.getLogger(__name__)

_REDIRECTS = {301, 302, 303, 307, 308}
_PERMANENT = {301, 308}


def is_public_address(ip: str) -> bool:
    """True for globally routable unicast addresses only."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_loopback or addr.is_link_local)


async def check_url_allowed(url: str, *, allow_private: bool) -> None:
    """Refuse non-http(s) schemes and, unless allowed, hosts resolving to non-public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise fetch_error("refused_url", f"scheme {parts.scheme or '(none)'!r} is not http or https", url=url)
    host = parts.hostname
    if not host:
        raise fetch_error("refused_url", "URL has no host", url=url)
    if allow_private:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise fetch_error("refused_url", f"bad port: {exc}", url=url) from exc
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise fetch_error("dns", f"cannot resolve {host}: {exc.strerror or exc}", url=url) from exc
    for info in infos:
        ip = str(info[4][0])
        if not is_public_address(ip):
            raise fetch_error(
                "refused_url",
                f"{host} resolves to non-public address {ip} (set fetch.allow_private_networks to allow)",
                url=url,
            )


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class _HostState:
    sem: asyncio.Semaphore
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_at: float = 0.0


class HttpClient:
    """Async HTTP client with newsmon's politeness and safety rules. Use as a context manager."""

    def __init__(self, settings: FetchSettings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self._global = asyncio.Semaphore(settings.concurrency)
        self._hosts: dict[str, _HostState] = {}
        self._robots: dict[str, object] = {}
        self._robots_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.read_timeout_s,
                pool=settings.total_timeout_s,
            ),
            headers={
                "User-Agent": settings.user_agent,
                "Accept-Encoding": "gzip, deflate, br",
            },
            limits=httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency),
            transport=transport,
        )

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    def _host(self, host: str) -> _HostState:
        st = self._hosts.get(host)
        if st is None:
            st = self._hosts[host] = _HostState(asyncio.Semaphore(self.settings.per_host_concurrency))
        return st

    async def _polite_slot(self, st: _HostState) -> None:
        async with st.lock:
            wait = st.next_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            st.next_at = time.monotonic() + self.settings.per_host_delay_s

    async def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        accept: str | None = None,
        check_robots: bool = False,
        max_bytes: int | None = None,
    ) -> HttpResponse:
        """GET ``url`` following up to ``max_redirects`` checked redirects.

        Returns 2xx and 304 responses; raises ``FetchError`` for everything else.
        """
        limit = max_bytes or self.settings.max_body_bytes
        try:
            async with asyncio.timeout(self.settings.total_timeout_s):
                return await self._get(url, headers or {}, accept, check_robots, limit)
        except TimeoutError as exc:
            raise fetch_error("timeout", f"no complete response within {self.settings.total_timeout_s:g}s", url=url) from exc

    async def _get(
        self, url: str, headers: dict[str, str], accept: str | None, check_robots: bool, limit: int
    ) -> HttpResponse:
        start = time.monotonic()
        current = url
        permanent = True
        hops = 0
        req_headers = dict(headers)
        if accept:
            req_headers["Accept"] = accept
        while True:
            await check_url_allowed(current, allow_private=self.settings.allow_private_networks)
            if check_robots and self.settings.respect_robots_txt and not await self.robots_allows(current):
                raise fetch_error("robots", "disallowed by robots.txt", url=current)
            status, resp_headers, body = await self._one(current, req_headers, limit)
            if status in _REDIRECTS:
                location = resp_headers.get("location")
                if not location:
                    raise fetch_error("protocol", f"HTTP {status} without Location", url=current, status=status)
                hops += 1
                if hops > self.settings.max_redirects:
                    raise fetch_error(
                        "too_many_redirects", f"more than {self.settings.max_redirects} redirects", url=url, status=status
                    )
                permanent = permanent and status in _PERMANENT
                current = urljoin(current, location)
                continue
            elapsed = int((time.monotonic() - start) * 1000)
            if status == 304 or 200 <= status < 300:
                return HttpResponse(
                    url=url,
                    final_url=current,
                    status=status,
                    headers=resp_headers,
                    body=body,
                    elapsed_ms=elapsed,
                    permanent_redirect=hops > 0 and permanent,
                )
            if status == 429:
                raise fetch_error(
                    "http_429",
                    "too many requests",
                    url=current,
                    status=status,
                    retry_after_s=parse_retry_after(resp_headers.get("retry-after")),
                )
            if status >= 500:
                raise fetch_error(
                    "http_5xx",
                    f"HTTP {status}",
                    url=current,
                    status=status,
                    retry_after_s=parse_retry_after(resp_headers.get("retry-after")),
                )
            raise fetch_error("http_4xx", f"HTTP {status}", url=current, status=status)

    async def _one(self, url: str, headers: dict[str, str], limit: int) -> tuple[int, dict[str, str], bytes]:
        host = (urlsplit(url).hostname or "").lower()
        st = self._host(host)
        async with self._global, st.sem:
            await self._polite_slot(st)
            try:
                async with self._client.stream("GET", url, headers=headers) as resp:
                    resp_headers = {k.lower(): v for k, v in resp.headers.items()}
                    if resp.status_code in _REDIRECTS or resp.status_code == 304 or resp.status_code >= 400:
                        return resp.status_code, resp_headers, b""
                    declared = resp_headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > limit:
                        raise fetch_error(
                            "too_large", f"Content-Length {declared} exceeds {limit} bytes", url=url, status=resp.status_code
                        )
                    chunks: list[bytes] = []
                    size = 0
                    encoding = resp_headers.get("content-encoding", "").strip().lower()
                    decoder = _BoundedDecoder(encoding, url) if encoding in _BoundedDecoder.SUPPORTED else None
                    async for data in resp.aiter_raw() if decoder else resp.aiter_bytes():
                        for chunk in decoder.decode(data) if decoder else (data,):  # decompressed: bounds bombs
                            size += len(chunk)
                            if size > limit:
                                raise fetch_error(
                                    "too_large", f"body exceeds {limit} bytes", url=url, status=resp.status_code
                                )
                            chunks.append(chunk)
                    return resp.status_code, resp_headers, b"".join(chunks)
            except FetchError:
                raise
            except httpx.TimeoutException as exc:
                raise fetch_error("timeout", type(exc).__name__, url=url) from exc
            except httpx.ConnectError as exc:
                raise _classify_connect_error(exc, url) from exc
            except (httpx.RemoteProtocolError, httpx.LocalProtocolError, httpx.ReadError, httpx.DecodingError) as exc:
                raise fetch_error("protocol", f"{type(exc).__name__}: {exc}", url=url) from exc
            except httpx.HTTPError as exc:
                raise fetch_error("connect", f"{type(exc).__name__}: {exc}", url=url) from exc
            except ssl.SSLError as exc:
                raise fetch_error("tls", str(exc), url=url) from exc

    async def robots_allows(self, url: str) -> bool:
        """robots.txt verdict for our User-Agent, cached per scheme+host; unreachable robots = allowed."""
        from protego import Protego

        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        if base not in self._robots:
            async with self._robots_locks[base]:
                if base not in self._robots:
                    try:
                        status, _, body = await self._one(base + "/robots.txt", {}, 512 * 1024)
                        text = body.decode("utf-8", "replace") if 200 <= status < 300 else ""
                        if status in (401, 403):
                            text = "User-agent: *\nDisallow: /"
                    except FetchError:
                        text = ""
                    self._robots[base] = Protego.parse(text)
        return bool(self._robots[base].can_fetch(url, self.settings.user_agent))  # type: ignore[attr-defined]


class _BoundedDecoder:
    """Content-Encoding decoded in pieces of at most ``STEP`` bytes.

    httpx inflates each network read whole: one 64 kB read of a gzip bomb becomes ~64 MB
    before any size check can run (a 10 MB cap peaked at 140 MB). Decoding piece by piece
    lets the caller stop at the cap, so memory stays near the cap whatever the ratio. (issue 8)
    """

    SUPPORTED = frozenset({"gzip", "x-gzip", "deflate", "br"})
    STEP = 256 * 1024

    def __init__(self, encoding: str, url: str) -> None:
        self.encoding, self.url = encoding, url
        self._first = encoding == "deflate"  # zlib-wrapped, or raw deflate (both are seen)
        if encoding == "br":
            import brotli

            self._br = brotli.Decompressor()
        else:
            self._z = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding != "deflate" else zlib.MAX_WBITS)

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            if self.encoding == "br":
                # the limit stops the buffer growing (it may overshoot 2x); drain until empty
                piece = self._br.process(data, output_buffer_limit=self.STEP)
                while piece:
                    yield piece
                    if self._br.is_finished():
                        return
                    piece = self._br.process(b"", output_buffer_limit=self.STEP)
                return
            if self._first:
                self._first = False
                try:
                    piece = self._z.decompress(data, self.STEP)
                except zlib.error:
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS)
                    piece = self._z.decompress(data, self.STEP)
            else:
                piece = self._z.decompress(data, self.STEP)
            while True:
                yield piece
                if not self._z.unconsumed_tail and len(piece) < self.STEP:
                    return
                piece = self._z.decompress(self._z.unconsumed_tail, self.STEP)
        except Exception as exc:  # zlib.error, brotli.error
            raise fetch_error("protocol", f"DecodingError: {self.encoding}: {exc}", url=self.url) from exc


def _classify_connect_error(exc: httpx.ConnectError, url: str) -> FetchError:
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    chain = [exc, cause, getattr(cause, "__cause__", None), getattr(cause, "__context__", None)]
    if any(isinstance(c, socket.gaierror) for c in chain) or "Name or service not known" in text or "nodename" in text:
        return fetch_error("dns", text or "name resolution failed", url=url)
    if any(isinstance(c, ssl.SSLError) for c in chain) or "SSL" in text or "CERTIFICATE" in text.upper():
        return fetch_error("tls", text or "TLS handshake failed", url=url)
    return fetch_error("connect", text or "connection failed", url=url)


async def get_with_retries(
    client: HttpClient, url: str, *, retries: int, base_delay_s: float = 0.5, **kw: object
) -> tuple[HttpResponse | None, list[dict[str, object]], FetchError | None]:
    """GET with retries for transient failures. Returns (response, attempt history, last error)."""
    history: list[dict[str, object]] = []
    last: FetchError | None = None
    for attempt in range(retries + 1):
        started = datetime.now(UTC)
        t0 = time.monotonic()
        try:
            resp = await client.get(url, **kw)  # type: ignore[arg-type]
        except FetchError as exc:
            last = exc
            history.append(
                {"at": started.isoformat(), "error": exc.kind, "detail": exc.detail[:300], "status": exc.status,
                 "ms": int((time.monotonic() - t0) * 1000)}
            )  # fmt: skip
            if not exc.transient or attempt == retries:
                break
            delay = exc.retry_after_s if exc.retry_after_s is not None else base_delay_s * (2**attempt)
            await asyncio.sleep(min(delay, 30.0))
            continue
        history.append({"at": started.isoformat(), "status": resp.status, "ms": resp.elapsed_ms})
        return resp, history, None
    return None, history, last
