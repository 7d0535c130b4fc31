"""Feed polling: one ``pipeline.poll_pass`` over 5,000 due feeds served by a local
simulated server, against a baseline of bare httpx GETs of the same URLs with the same
concurrency and timeouts (no database, no parsing), measured in the same run.

The simulated server (asyncio streams, a minimal HTTP/1.1 responder with keep-alive) runs
in its own process and listens on 100 loopback addresses 127.0.0.2-127.0.0.101 (all of
127.0.0.0/8 is loopback on Linux), so the per-host politeness limit (2 at once) does not
serialise the feeds; ``fetch.per_host_delay_s`` is 0 for the bench. Mix per feed, fixed
seed: 40 % answer 304 to the conditional GET (the feed's stored ETag), 20 % send the same
body as last time (stored body hash: "unchanged", not parsed), 25 % send 20 items of which
5 are new on every request, 10 % are slow (0.5-2 s before answering), 5 % fail (half
HTTP 503, half never answer: the read timeout of 5 s cuts them).
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing as mp
import random
import resource
import time

N_FEEDS = 5_000
N_HOSTS = 100
SEED = 3
READ_TIMEOUT_S = 5.0


def _kind(i: int) -> str:
    r = random.Random(SEED * 1_000_003 + i).random()
    if r < 0.40:
        return "304"
    if r < 0.60:
        return "unchanged"
    if r < 0.85:
        return "new"
    if r < 0.95:
        return "slow"
    return "fail503" if i % 2 else "hang"


def _rss(i: int, first: int, n: int = 20) -> bytes:
    items = "".join(
        f"<item><guid>f{i}-{k}</guid><title>خبر رقم {k} من المصدر {i} حول إدلب وحلب</title>"
        f"<link>http://news{i}.example/a/{k}.html</link>"
        f"<pubDate>Sat, 28 Nov 2026 {k % 24:02d}:00:00 GMT</pubDate>"
        f"<description>ملخص قصير للخبر رقم {k}: تفاصيل إضافية عن الأحداث في شمال غرب سوريا.</description></item>"
        for k in range(first + n - 1, first - 1, -1)
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>مصدر {i}</title>'
        f"<link>http://news{i}.example/</link>{items}</channel></rss>"
    ).encode()


def _static_body(i: int) -> bytes:
    return _rss(i, 0)


# ---------------------------------------------------------------- simulated server (own process)


def _serve(conn, n_hosts: int) -> None:  # pragma: no cover - runs in a child process
    counters: dict[int, int] = {}

    async def respond(writer, status: str, body: bytes, extra: str = "") -> None:
        head = f"HTTP/1.1 {status}\r\nContent-Type: application/rss+xml; charset=utf-8\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        writer.write(head.encode() + body)
        await writer.drain()

    async def handle(reader, writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                i = int(path.rsplit("/", 1)[1].split(".")[0])
                kind = _kind(i)
                if kind == "304":
                    etag = f'"e{i}"'
                    if hdrs.get("if-none-match") == etag:
                        await respond(writer, "304 Not Modified", b"", f"ETag: {etag}\r\n")
                    else:
                        await respond(writer, "200 OK", _static_body(i), f"ETag: {etag}\r\n")
                elif kind == "unchanged":
                    await respond(writer, "200 OK", _static_body(i))
                elif kind == "new":
                    c = counters[i] = counters.get(i, 0) + 1
                    await respond(writer, "200 OK", _rss(i, c * 5))
                elif kind == "slow":
                    await asyncio.sleep(random.Random(i).uniform(0.5, 2.0))
                    await respond(writer, "200 OK", _static_body(i))
                elif kind == "fail503":
                    await respond(writer, "503 Service Unavailable", b"busy", "Retry-After: 120\r\n")
                else:  # hang: accept, never answer
                    await asyncio.sleep(3600)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        servers, addrs = [], []
        for h in range(n_hosts):
            ip = f"127.0.0.{h + 2}"
            srv = await asyncio.start_server(handle, ip, 0, backlog=1024)
            servers.append(srv)
            addrs.append((ip, srv.sockets[0].getsockname()[1]))
        conn.send(addrs)
        await asyncio.Event().wait()

    asyncio.run(main())


# ---------------------------------------------------------------- the bench


def _seed(engine, addrs) -> dict[str, int]:
    import sqlalchemy as sa

    rows, kinds = [], {}
    for i in range(N_FEEDS):
        ip, port = addrs[i % len(addrs)]
        kind = _kind(i)
        kinds[kind] = kinds.get(kind, 0) + 1
        rows.append(
            {
                "name": f"bench-{i}",
                "url": f"http://{ip}:{port}/feed/{i}.xml",
                "etag": f'"e{i}"' if kind == "304" else None,
                "body_hash": hashlib.sha256(_static_body(i)).hexdigest() if kind == "unchanged" else None,
            }
        )
    with engine.begin() as c:
        c.execute(
            sa.text(
                """
                INSERT INTO news.feeds (name, url, config_url, etag, body_hash, next_poll_at, base_interval_s)
                VALUES (:name, :url, :url, :etag, :body_hash, now() - interval '1 minute', 900)
                """
            ),
            rows,
        )
    return kinds


async def _baseline(urls_headers, fetch) -> tuple[float, int, int]:
    import httpx

    sem = asyncio.Semaphore(fetch.concurrency)
    ok = failed = 0
    timeout = httpx.Timeout(connect=fetch.connect_timeout_s, read=fetch.read_timeout_s, write=fetch.read_timeout_s, pool=fetch.total_timeout_s)
    limits = httpx.Limits(max_connections=fetch.concurrency, max_keepalive_connections=fetch.concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers={"User-Agent": fetch.user_agent}) as client:

        async def one(url: str, headers: dict[str, str]) -> None:
            nonlocal ok, failed
            async with sem:
                try:
                    async with asyncio.timeout(fetch.total_timeout_s):
                        r = await client.get(url, headers=headers)
                    ok += r.status_code < 500
                    failed += r.status_code >= 500
                except (httpx.HTTPError, TimeoutError):
                    failed += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(u, h) for u, h in urls_headers))
        return time.perf_counter() - t0, ok, failed


def run() -> dict:
    import sqlalchemy as sa
    from newsmon.config import FetchSettings, PollSettings, Settings
    from newsmon.pipeline import poll_pass

    from benchmarks._db import temp_warehouse

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child, N_HOSTS), daemon=True)
    server.start()
    try:
        addrs = parent.recv()
        fetch = FetchSettings(
            allow_private_networks=True, per_host_delay_s=0.0, read_timeout_s=READ_TIMEOUT_S, total_timeout_s=10.0,
            connect_timeout_s=5.0, retries=0,
        )  # fmt: skip
        settings = Settings(fetch=fetch, poll=PollSettings())
        with temp_warehouse("poll") as engine:
            kinds = _seed(engine, addrs)
            with engine.connect() as c:
                feeds = c.execute(sa.text("SELECT url, etag FROM news.feeds ORDER BY feed_id")).all()
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            summary = poll_pass(engine, settings, only_due=True)
            wall = time.perf_counter() - t0
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            with engine.connect() as c:
                by_status = dict(c.execute(sa.text("SELECT coalesce(last_status, '?'), count(*) FROM news.feeds GROUP BY 1")).all())
                polled = c.execute(sa.text("SELECT count(*) FROM news.feed_polls")).scalar()
                still_due = c.execute(sa.text("SELECT count(*) FROM news.feeds WHERE next_poll_at <= now()")).scalar()
                stored = c.execute(sa.text("SELECT count(*) FROM news.feed_entries")).scalar()
        base_wall, base_ok, base_failed = asyncio.run(
            _baseline([(u, {"If-None-Match": e} if e else {}) for u, e in feeds], fetch)
        )
    finally:
        server.kill()
        server.join(10)
    return {
        "title": f"Feed polling: one poll pass over {N_FEEDS:,} due feeds (local simulated server)",
        "rows": [
            {"metric": "feeds polled (rows in news.feed_polls)", "value": polled, "baseline": base_ok + base_failed, "ratio": ""},
            {"metric": "wall time, s", "value": round(wall, 1), "baseline": round(base_wall, 1), "ratio": round(wall / base_wall, 2)},
            {"metric": "feeds per second", "value": round(summary.feeds_polled / wall, 1), "baseline": round(len(feeds) / base_wall, 1), "ratio": round((summary.feeds_polled / wall) / (len(feeds) / base_wall), 2)},
            {"metric": "entries parsed per second", "value": round(summary.entries_seen / wall, 1), "baseline": "", "ratio": ""},
            {"metric": "entries parsed / new / rows stored", "value": f"{summary.entries_seen} / {summary.entries_new} / {stored}", "baseline": "", "ratio": ""},
            {"metric": "feeds failed (5xx + timeouts)", "value": summary.feeds_failed, "baseline": base_failed, "ratio": ""},
            {"metric": "feeds still due after the pass", "value": still_due, "baseline": "", "ratio": ""},
            {"metric": "peak RSS of the poller, MB", "value": round(peak_mb, 1), "baseline": f"{rss0 / 1024:.1f} before", "ratio": ""},
        ],
        "notes": (
            f"Mix served: {dict(sorted(kinds.items()))}; outcome per feed: {dict(sorted(by_status.items()))}. "
            f"Settings: fetch.concurrency={fetch.concurrency}, per_host_concurrency={fetch.per_host_concurrency}, "
            f"per_host_delay_s=0, read_timeout_s={READ_TIMEOUT_S:g}, total_timeout_s={fetch.total_timeout_s:g}, "
            f"poll.shard_size={settings.poll.shard_size}; {N_HOSTS} loopback addresses 127.0.0.2-{N_HOSTS + 1}. "
            "Baseline: bare httpx GETs of the same URLs with the same conditional headers, concurrency and "
            "timeouts, no database and no parsing (after the poll pass, so the server is warm for both). "
            "Target: all 5,000 due feeds polled in under 5 minutes on the 2-core reference machine."
        ),
    }
