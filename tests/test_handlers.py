"""Promise 19: any download handler uses the session's proxy, or the crawl refuses; a refused
CONNECT is recognised from every supported handler (Scrapy's HTTP/1.1 and scrapy-impersonate's).

scrapy-impersonate is required in the main .venv (Scrapy 2.19): a missing install fails there.
It needs Scrapy >= 2.13.4 and the asyncio reactor, so on older Scrapy legs, and under the plain
Twisted reactor, its tests are skipped with that reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
import scrapy
from packaging.version import Version
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.http import Response

from scrapy_hexproxy._handlers import H2, HTTP11, IMPERSONATE, PLAYWRIGHT
from scrapy_hexproxy._settings import HexProxyConfigError
from scrapy_hexproxy.testing import Behavior

from .conftest import PagesSpider, runtime_of, urls
from .test_hooks import _pair, _send

#: Scrapy's release of the main .venv, where the other handlers must be installed.
MAIN_SCRAPY = Version("2.19.0")


def _main_venv_requires(module: str) -> None:
    """Imports ``module``: beside the main .venv's Scrapy a missing install fails the test;
    beside an older Scrapy the test is skipped (the Makefile installs it only in .venv)."""
    if Version(scrapy.__version__) < MAIN_SCRAPY:
        pytest.importorskip(module, reason="installed only beside Scrapy 2.19 (the main .venv)")
    __import__(module)


def _impersonate_or_skip(config: pytest.Config) -> None:
    if config.getoption("reactor") != "asyncio":
        pytest.skip("scrapy-impersonate's handler runs only under the asyncio reactor")
    _main_venv_requires("scrapy_impersonate")


@pytest.fixture
def impersonate(request: pytest.FixtureRequest) -> dict[str, Any]:
    """DOWNLOAD_HANDLERS sending http and https through scrapy-impersonate's handler."""
    _impersonate_or_skip(request.config)
    return {"DOWNLOAD_HANDLERS": {"http": IMPERSONATE, "https": IMPERSONATE}}


class ImpersonatingSpider(PagesSpider):
    """PagesSpider whose requests go out through curl_cffi as Chrome (scrapy-impersonate
    sends a request through curl only when it has ``meta["impersonate"]``). The test
    gateway's certificate is its own, so curl is told not to verify it."""

    def _requests(self) -> Any:
        for request in super()._requests():
            request.meta["impersonate"] = "chrome"
            request.meta["impersonate_args"] = {"verify": False}
            yield request


def _handler_warnings(logs: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in logs.records
        if r.levelno == logging.WARNING and "DOWNLOAD_HANDLERS" in r.getMessage()
    ]


# -- at start ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_promise_19_a_handler_that_cannot_use_the_proxy_stops_the_crawl_at_start(
    crawl, base_settings, hexproxy_gateway
):
    handler = H2
    settings = {**base_settings, "DOWNLOAD_HANDLERS": {"https": handler}}
    with pytest.raises(HexProxyConfigError) as info:
        await crawl(settings, urls(3, "https"))
    message = str(info.value)
    assert "DOWNLOAD_HANDLERS" in message and handler in message and "https://" in message
    assert "HEX_PROXY_ENABLED" in message
    assert hexproxy_gateway.records == []


@pytest_twisted.ensureDeferred
async def test_promise_19_a_subclass_of_a_refused_handler_is_refused_too(
    crawl, base_settings, hexproxy_gateway
):
    # A class named as Scrapy's HTTP/2 handler (the real one needs h2 installed).
    h2 = type("H2DownloadHandler", (), {})
    h2.__module__ = H2.rpartition(".")[0]
    subclass = type("MyH2", (h2,), {"lazy": True})
    settings = {**base_settings, "DOWNLOAD_HANDLERS": {"http": subclass}}
    with pytest.raises(HexProxyConfigError, match=r"DOWNLOAD_HANDLERS sends http:// requests"):
        await crawl(settings, urls(3))
    assert hexproxy_gateway.records == []


class MyHandler(HTTP11DownloadHandler):
    """A handler HexProxy does not know (it may override how requests go out)."""


@pytest_twisted.ensureDeferred
async def test_promise_19_an_unknown_handler_gets_one_warning_at_start(
    crawl, base_settings, hexproxy_gateway, caplog
):
    name = f"{__name__}.MyHandler"
    settings = {**base_settings, "DOWNLOAD_HANDLERS": {"http": name, "https": name}}
    result = await crawl(settings, urls(5))
    [warning] = _handler_warnings(caplog)
    assert name in warning and "http:// and https://" in warning and 'meta["proxy"]' in warning
    assert len(result.pages) == 5


@pytest.mark.parametrize(
    "handlers",
    [{}, {"http": HTTP11, "https": None}, {"https": IMPERSONATE}],
    ids=["default", "http11-https-off", "impersonate"],
)
@pytest_twisted.ensureDeferred
async def test_promise_19_known_handlers_start_without_a_word(
    crawl, base_settings, hexproxy_gateway, caplog, handlers, request
):
    if IMPERSONATE in handlers.values():
        _impersonate_or_skip(request.config)
    settings = {**base_settings, "DOWNLOAD_HANDLERS": handlers}
    result = await crawl(settings, urls(3))
    assert _handler_warnings(caplog) == []
    assert len(result.pages) == 3


# -- a refused CONNECT, as each supported handler reports it -------------------------------


def _scrapy_refused(status: int) -> BaseException:
    from scrapy.core.downloader.handlers.http11 import TunnelError

    return TunnelError(
        "Could not open CONNECT tunnel with proxy 127.0.0.1:7777"
        f" [{{'status': {status}, 'reason': b'No'}}]"
    )


def _curl_refused(status: int) -> BaseException:
    """What scrapy-impersonate's handler lets through (curl_cffi 0.17, as the loopback gateway
    made it refuse a CONNECT)."""
    from curl_cffi.requests.exceptions import ConnectionError as CurlConnectionError

    return CurlConnectionError(
        f"Failed to perform, curl: (7) CONNECT tunnel failed, response {status}. See"
        " https://curl.se/libcurl/c/libcurl-errors.html first for more details.",
        7,
    )


def _curl_other() -> BaseException:
    from curl_cffi.requests.exceptions import ConnectionError as CurlConnectionError

    return CurlConnectionError(
        "Failed to perform, curl: (7) Failed to connect to 127.0.0.1 port 7777 after 0 ms:"
        " Could not connect to server.",
        7,
    )


@pytest.fixture(params=["scrapy", "impersonate"])
def refused(request: pytest.FixtureRequest) -> Any:
    """Makes the exception a handler raises for a CONNECT refused with a status."""
    if request.param == "scrapy":
        return _scrapy_refused
    _main_venv_requires("curl_cffi")
    return _curl_refused


@pytest.mark.parametrize("status", [403, 503])
def test_promise_19_a_refused_connect_counts_as_the_proxy_s_status(hook_crawler, refused, status):
    crawler = hook_crawler()
    proxy, _ = _pair(crawler)
    request = _send(proxy, "https://site.test/a")
    assert proxy.process_exception(request, refused(status)) is None
    stats = runtime_of(crawler).core.stats()
    assert {k: v for k, v in stats.items() if k.startswith("hex_proxy/failure/")} == {
        f"hex_proxy/failure/{status}": 1
    }


def test_promise_19_a_refused_connect_407_stops_the_crawl(hook_crawler, refused):
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURES=100)
    proxy, retry = _pair(crawler)
    results = []
    for _ in range(3):
        request = _send(proxy, "https://site.test/a")
        results.append(retry.process_exception(request, refused(407)))
    assert runtime_of(crawler).core.auth_failed
    assert results[-1] is None  # the third refused CONNECT is not retried any more
    assert runtime_of(crawler).core.stats()["hex_proxy/failure/407"] == 3


def test_promise_19_another_curl_error_is_a_transport_failure(hook_crawler):
    _main_venv_requires("curl_cffi")
    crawler = hook_crawler()
    proxy, _ = _pair(crawler)
    request = _send(proxy, "https://site.test/a")
    assert proxy.process_exception(request, _curl_other()) is None
    stats = runtime_of(crawler).core.stats()
    assert {k: v for k, v in stats.items() if k.startswith("hex_proxy/failure/")} == {
        "hex_proxy/failure/ConnectionError": 1
    }


# -- scrapy-impersonate's handler through the gateway --------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_19_impersonate_sends_each_attempt_through_its_session(
    crawl, base_settings, hexproxy_gateway, impersonate, scheme
):
    settings = {**base_settings, **impersonate, "HEX_PROXY_SESSION_POOL_SIZE": 4}
    result = await crawl(settings, urls(12, scheme), spider=ImpersonatingSpider)
    assert sorted(p.url for p in result.pages) == sorted(urls(12, scheme))
    assert {p.status for p in result.pages} == {200}
    kinds = Counter(r.kind for r in hexproxy_gateway.records)
    # curl, not Scrapy's HTTP/1.1 handler, sent them: through the gateway, as the session.
    assert kinds[{"http": "http", "https": "tunnel"}[scheme]] == 12
    for page in result.pages:
        assert page.gateway_session == page.meta_session is not None
    assert len({p.meta_session for p in result.pages}) > 1


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_19_impersonate_bans_and_drops_are_counted_and_retried(
    crawl, base_settings, hexproxy_gateway, impersonate, scheme
):
    hexproxy_gateway.set_behavior("s001", Behavior.answer(403))
    hexproxy_gateway.set_behavior("s002", Behavior.close(tunnel=scheme == "https"))
    settings = {
        **base_settings,
        **impersonate,
        "HEX_PROXY_SESSION_POOL_SIZE": 4,
        "HEX_PROXY_MAX_FAILURES": 2,
    }
    result = await crawl(settings, urls(30, scheme), spider=ImpersonatingSpider)
    assert sorted(p.url for p in result.pages) == sorted(urls(30, scheme))
    assert {p.status for p in result.pages} == {200}
    assert {p.meta_session for p in result.pages} <= {"s000", "s003"}
    stats = result.hex_stats()
    banned = hexproxy_gateway.count("s001")
    assert banned >= 2 and stats["hex_proxy/failure/403"] == banned
    dropped = sum(
        n
        for key, n in stats.items()
        if key.startswith("hex_proxy/failure/") and key != "hex_proxy/failure/403"
    )
    assert dropped >= 2
    assert stats["hex_proxy/blacklisted"] == 2
    assert stats["hex_proxy/retry"] == banned + dropped


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_19_impersonate_wrong_password_stops_after_a_few_connects(
    crawl, base_settings, hexproxy_gateway, impersonate, all_logs, scheme
):
    settings = {
        **base_settings,
        **impersonate,
        "HEX_PROXY_PASS": "wr0ng-Secret",
        "HEX_PROXY_SESSION_POOL_SIZE": 5,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(20, scheme), spider=ImpersonatingSpider)
    assert result.finish_reason == "hex_proxy_auth_failed"
    assert not [p for p in result.pages if p.status == 200]
    # Three 407s (HEX_PROXY_AUTH_FAILURES_TO_CLOSE), then it stopped: for https each a
    # CONNECT that curl reports as an exception, read as the proxy's 407.
    assert sum(hexproxy_gateway.counts().values()) == 3
    assert {r.outcome for r in hexproxy_gateway.records} == {"auth"}
    assert "hex_proxy/blacklisted" not in result.hex_stats()
    everything = all_logs.text + "\n".join(r.getMessage() for r in all_logs.records)
    assert "wr0ng-Secret" not in everything
    assert "wr0ng-Secret" not in str(result.stats)


# -- scrapy-playwright's handler: each session a browser context ---------------------------


@pytest.fixture
def playwright(request: pytest.FixtureRequest) -> dict[str, Any]:
    """DOWNLOAD_HANDLERS sending http and https through scrapy-playwright's handler, with
    Debian's chromium, headless."""
    import shutil

    if request.config.getoption("reactor") != "asyncio":
        pytest.skip("scrapy-playwright's handler runs only under the asyncio reactor")
    _main_venv_requires("scrapy_playwright")
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed (.ci/run installs it: apt-get install chromium)"
    return {
        "DOWNLOAD_HANDLERS": {"http": PLAYWRIGHT, "https": PLAYWRIGHT},
        "PLAYWRIGHT_LAUNCH_OPTIONS": {"executable_path": chromium, "args": ["--no-sandbox"]},
        "PLAYWRIGHT_BROWSER_TYPE": "chromium",
    }


class BrowsingSpider(PagesSpider):
    """PagesSpider whose requests a headless browser fetches; the test gateway's certificate
    is its own, so the browser is told to accept it (the user's kwargs, which HexProxy keeps)."""

    seen_meta: list[dict[str, Any]]

    def _requests(self) -> Any:
        for request in super()._requests():
            request.meta["playwright"] = True
            request.meta["playwright_context_kwargs"] = {"ignore_https_errors": True}
            yield request

    def record(self, response: scrapy.http.Response) -> None:
        super().record(response)
        self.result.meta_seen = getattr(self.result, "meta_seen", [])
        self.result.meta_seen.append(dict(response.meta))


def _browser_contexts_closed(logs: pytest.LogCaptureFixture) -> list[str]:
    """The contexts scrapy-playwright logged as closed (its DEBUG line)."""
    prefix = "Browser context closed: '"
    return [
        r.getMessage()[len(prefix) : r.getMessage().index("'", len(prefix))]
        for r in logs.records
        if r.getMessage().startswith(prefix)
    ]


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_19_playwright_each_session_is_a_browser_context(
    crawl, base_settings, hexproxy_gateway, playwright, all_logs, scheme
):
    settings = {**base_settings, **playwright, "HEX_PROXY_SESSION_POOL_SIZE": 3}
    result = await crawl(settings, urls(9, scheme), spider=BrowsingSpider)
    assert sorted(p.url for p in result.pages) == sorted(urls(9, scheme))
    assert {p.status for p in result.pages} == {200}
    for page in result.pages:  # the browser went through the gateway as the page's session
        assert page.gateway_session == page.meta_session is not None
    sessions = {p.meta_session for p in result.pages}
    assert len(sessions) > 1
    # One context per session, named after it; the user's kwargs kept, the password gone.
    assert result.stats["playwright/context_count"] == len(sessions)
    for meta in result.meta_seen:
        assert meta["playwright_context"] == f"hex_proxy:{meta['hex_session']}"
        assert meta["playwright_context_kwargs"] == {"ignore_https_errors": True}
    # Chromium asks first without credentials (the gateway's 407 is its challenge), then as
    # the context's session: nothing else reached the gateway, nothing went around it.
    for record in hexproxy_gateway.records:
        if record.session is None:
            assert record.outcome == "auth" and record.username is None
        else:
            assert record.username == f"USER-session-{record.session}"
    kind = {"http": "http", "https": "tunnel"}[scheme]
    assert sum(r.kind == kind and r.session is not None for r in hexproxy_gateway.records) == 9
    everything = all_logs.text + "\n".join(r.getMessage() for r in all_logs.records)
    assert "PASS" not in everything.replace("PASSED", "")
    assert "PASS" not in repr(result.meta_seen)


@pytest_twisted.ensureDeferred
async def test_promise_19_playwright_loopback_targets_go_through_the_gateway_too(
    crawl, base_settings, hexproxy_gateway, playwright
):
    # Chromium sends loopback addresses around its proxy unless told otherwise; the targets
    # are the gateway itself, so a request sent direct would reach it without a session.
    targets = [f"{hexproxy_gateway.url}/page/{i}" for i in range(3)]
    result = await crawl({**base_settings, **playwright}, targets, spider=BrowsingSpider)
    assert sorted(p.url for p in result.pages) == sorted(targets)
    assert {p.status for p in result.pages} == {200}
    assert all(p.gateway_session == p.meta_session is not None for p in result.pages)
    assert {r.outcome for r in hexproxy_gateway.records if r.session is None} == {"auth"}


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_promise_19_playwright_bans_are_counted_and_the_session_s_context_closed(
    crawl, base_settings, hexproxy_gateway, playwright, caplog, scheme
):
    caplog.set_level(logging.DEBUG)
    hexproxy_gateway.set_behavior("s001", Behavior.answer(403))
    settings = {
        **base_settings,
        **playwright,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_MAX_FAILURES": 2,
        "CONCURRENT_REQUESTS": 2,
    }
    result = await crawl(settings, urls(12, scheme), spider=BrowsingSpider)
    assert sorted(p.url for p in result.pages) == sorted(urls(12, scheme))
    assert {p.status for p in result.pages} == {200}
    assert "s001" not in {p.meta_session for p in result.pages}
    stats = result.hex_stats()
    # http: the gateway's 403 is the page's status; https: Chromium reports the refused
    # CONNECT as net::ERR_TUNNEL_CONNECTION_FAILED, without the status.
    key = {"http": "403", "https": "ERR_TUNNEL_CONNECTION_FAILED"}[scheme]
    failed = stats[f"hex_proxy/failure/{key}"]
    # Chromium may ask the gateway again within one attempt (a CONNECT retried).
    assert 2 <= failed <= sum(r.session == "s001" for r in hexproxy_gateway.records)
    assert stats["hex_proxy/retry"] == failed
    assert stats["hex_proxy/blacklisted"] == 1
    # The benched session's context was closed then, before the crawl's end closed the rest.
    closed = _browser_contexts_closed(caplog)
    assert closed[0] == "hex_proxy:s001"
    assert sorted(closed) == sorted(f"hex_proxy:{s}" for s in ("s000", "s001", "s002"))


@pytest_twisted.ensureDeferred
async def test_promise_19_playwright_wrong_password_stops_the_crawl(
    crawl, base_settings, hexproxy_gateway, playwright
):
    settings = {
        **base_settings,
        **playwright,
        "HEX_PROXY_PASS": "wr0ng-Secret",
        "HEX_PROXY_SESSION_POOL_SIZE": 5,
        "CONCURRENT_REQUESTS": 1,
    }
    result = await crawl(settings, urls(20), spider=BrowsingSpider)
    assert result.finish_reason == "hex_proxy_auth_failed"
    assert not [p for p in result.pages if p.status == 200]
    # Three 407s as sessions (each after Chromium's challenge), then it stopped.
    assert sum(r.session is not None for r in hexproxy_gateway.records) == 3


def test_promise_19_a_playwright_attempt_carries_its_session_in_its_context_only(
    hook_crawler, request
):
    _main_venv_requires("scrapy_playwright")
    crawler = hook_crawler(DOWNLOAD_HANDLERS={"https": PLAYWRIGHT})
    proxy, _ = _pair(crawler)
    own = {"ignore_https_errors": True}
    attempt = _send(proxy, "https://site.test/a", playwright=True, playwright_context_kwargs=own)
    meta = attempt.meta
    session = meta["hex_session"]
    assert meta["playwright_context"] == f"hex_proxy:{session}"
    assert meta["playwright_context_kwargs"] == {
        "ignore_https_errors": True,
        "proxy": {
            "server": "http://127.0.0.1:7777",
            "username": f"USER-session-{session}",
            "password": "s3cr3t-PASS",
            "bypass": "<-loopback>",
        },
    }
    assert own == {"ignore_https_errors": True}  # the user's dict is left as it was
    assert meta["proxy"] == "http://127.0.0.1:7777"
    assert b"Proxy-Authorization" not in attempt.headers
    # A request without meta["playwright"] goes out through Scrapy's handler, with the header.
    plain = _send(proxy, "https://site.test/b")
    assert b"Proxy-Authorization" in plain.headers and "playwright_context" not in plain.meta


def test_promise_16_a_playwright_attempt_s_password_never_reaches_the_scheduler(hook_crawler):
    _main_venv_requires("scrapy_playwright")
    crawler = hook_crawler(DOWNLOAD_HANDLERS={"http": PLAYWRIGHT, "https": PLAYWRIGHT})
    proxy, retry = _pair(crawler)
    # Scheduled again (a redirect, a spider's copy): the context's proxy goes, the rest stays.
    attempt = _send(proxy, playwright=True, playwright_context_kwargs={"locale": "de-DE"})
    copy = attempt.replace(url="http://site.test/next")
    proxy.scheduled(copy)
    assert copy.meta["playwright_context_kwargs"] == {"locale": "de-DE"}
    # Settled by a response (before the spider sees its meta).
    attempt = _send(proxy, playwright=True)
    proxy.process_response(attempt, Response(attempt.url, status=200, request=attempt))
    assert attempt.meta["playwright_context_kwargs"] == {}
    assert "s3cr3t-PASS" not in repr(attempt.meta)
    # Retried after an exception: neither the attempt nor its retry keeps it.
    attempt = _send(proxy, playwright=True)
    retried = retry.process_exception(attempt, OSError("reset"))
    assert "s3cr3t-PASS" not in repr(attempt.meta) + repr(retried.meta)
