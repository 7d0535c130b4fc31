import asyncio
import gzip

import pytest
from newsmon.config import FetchSettings
from newsmon.errors import FetchError
from newsmon.fetch import (
    HttpClient,
    check_url_allowed,
    get_with_retries,
    is_public_address,
    parse_retry_after,
)

from tests.httpserver import Route


def run(coro):
    return asyncio.run(coro)


async def _get(settings, url, **kw):
    async with HttpClient(settings) as c:
        return await c.get(url, **kw)


LOCAL = FetchSettings(allow_private_networks=True, per_host_delay_s=0, total_timeout_s=5, read_timeout_s=2)


def test_private_addresses_refused_by_default(http_server):
    http_server.routes["/x"] = Route(200, b"hello")
    with pytest.raises(FetchError) as e:
        run(_get(FetchSettings(), http_server.url("/x")))
    assert e.value.kind == "refused_url" and not e.value.transient
    assert http_server.hits == []  # refused before any connection
    assert run(_get(LOCAL, http_server.url("/x"))).body == b"hello"


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "gopher://127.0.0.1/", "http://127.0.0.1/", "http://169.254.169.254/latest/meta-data",
     "http://[::1]/", "http://2130706433/", "http://0x7f000001/", "http://10.0.0.1/", "http://localhost/"],
)  # fmt: skip
def test_ssrf_targets_refused(url):
    with pytest.raises(FetchError) as e:
        run(check_url_allowed(url, allow_private=False))
    assert e.value.kind == "refused_url"


def test_public_address_check():
    assert is_public_address("8.8.8.8")
    assert not is_public_address("::ffff:127.0.0.1")
    assert not is_public_address("224.0.0.1")


def test_redirect_to_private_refused_even_when_first_hop_allowed(http_server):
    # With private networks allowed the hop is followed; the policy is checked per hop,
    # so with it off the very first hop is already refused (no request is made).
    http_server.routes["/r"] = Route(302, b"", {"Location": "/final"})
    http_server.routes["/final"] = Route(200, b"done")
    resp = run(_get(LOCAL, http_server.url("/r")))
    assert resp.final_url.endswith("/final") and not resp.permanent_redirect


def test_permanent_redirect_and_loop(http_server):
    http_server.routes["/old"] = Route(301, b"", {"Location": "/new"})
    http_server.routes["/new"] = Route(200, b"ok")
    resp = run(_get(LOCAL, http_server.url("/old")))
    assert resp.permanent_redirect and resp.final_url == http_server.url("/new")
    http_server.routes["/loop"] = Route(302, b"", {"Location": "/loop"})
    with pytest.raises(FetchError) as e:
        run(_get(LOCAL, http_server.url("/loop")))
    assert e.value.kind == "too_many_redirects"


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [(404, "http_4xx", False), (410, "http_4xx", False), (500, "http_5xx", True), (503, "http_5xx", True), (429, "http_429", True)],
)
def test_status_classification(http_server, status, kind, transient):
    http_server.routes["/s"] = Route(status, b"x", {"Retry-After": "120"})
    with pytest.raises(FetchError) as e:
        run(_get(LOCAL, http_server.url("/s")))
    assert (e.value.kind, e.value.transient, e.value.status) == (kind, transient, status)
    if status in (429, 503):
        assert e.value.retry_after_s == 120


def test_body_limit_and_gzip_bomb(http_server):
    settings = LOCAL.model_copy(update={"max_body_bytes": 1000})
    http_server.routes["/big"] = Route(200, b"x" * 5000)
    with pytest.raises(FetchError, match="too_large"):
        run(_get(settings, http_server.url("/big")))
    bomb = gzip.compress(b"\0" * 5_000_000)
    http_server.routes["/bomb"] = Route(200, bomb, {"Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match="too_large"):
        run(_get(settings, http_server.url("/bomb")))
    http_server.routes["/gz"] = Route(200, gzip.compress(b"small"), {"Content-Encoding": "gzip"})
    assert run(_get(settings, http_server.url("/gz"))).body == b"small"


def test_timeouts_are_typed(http_server):
    settings = LOCAL.model_copy(update={"read_timeout_s": 0.3, "total_timeout_s": 1.0})
    http_server.routes["/slow"] = Route(200, b"abcdefghij" * 5, drip_s=0.2)
    with pytest.raises(FetchError) as e:
        run(_get(settings, http_server.url("/slow")))
    assert e.value.kind == "timeout" and e.value.transient


def test_connect_and_dns_errors():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as e:
        run(_get(LOCAL, f"http://127.0.0.1:{port}/"))
    assert e.value.kind == "connect"
    with pytest.raises(FetchError) as e:
        run(_get(LOCAL, "http://no-such-host.invalid/"))
    assert e.value.kind == "dns"


def test_retries_record_history(http_server):
    calls = []

    def flaky(req):
        calls.append(1)
        return Route(503, b"busy") if len(calls) < 2 else Route(200, b"fine")

    http_server.routes["/flaky"] = Route(handler=flaky)

    async def go():
        async with HttpClient(LOCAL) as c:
            return await get_with_retries(c, http_server.url("/flaky"), retries=2, base_delay_s=0.01)

    resp, history, err = run(go())
    assert resp is not None and resp.body == b"fine" and err is None
    assert [h.get("error") for h in history] == ["http_5xx", None]


def test_robots_txt_respected(http_server):
    http_server.routes["/robots.txt"] = Route(200, b"User-agent: *\nDisallow: /private/\n")
    http_server.routes["/private/a"] = Route(200, b"secret")
    http_server.routes["/public/a"] = Route(200, b"public")
    assert run(_get(LOCAL, http_server.url("/public/a"), check_robots=True)).body == b"public"
    with pytest.raises(FetchError, match="robots"):
        run(_get(LOCAL, http_server.url("/private/a"), check_robots=True))


def test_user_agent_sent(http_server):
    http_server.routes["/ua"] = Route(200, b"x")
    run(_get(LOCAL, http_server.url("/ua")))
    assert http_server.hits[-1][1]["user-agent"].startswith("newsmon/")


def test_parse_retry_after_http_date():
    from datetime import UTC, datetime

    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Sun, 29 Nov 2026 12:02:00 GMT", now) == 120
    assert parse_retry_after("soon") is None
