"""A crawl's whole life: what the middlewares leave on the requests that outlive an attempt
(JOBDIR's queue, the spider, a cache), and what becomes of requests from an earlier run."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy.downloadermiddlewares.retry import get_retry_request

from scrapy_hexproxy.testing import Behavior, Gateway

from .conftest import CrawlResult

#: Long enough that each of its base64 forms has a core that does not depend on its neighbours.
PASSWORD = "jobdir-s3cret-PASSWORD-42"


def secret_forms(password: str) -> list[bytes]:
    """The password as it could be written down: plain, and the part of its base64 that is the
    same whatever precedes it, at each of the three alignments (inside "user:password")."""
    raw = password.encode()
    forms = [raw]
    for skew in range(3):
        encoded = base64.b64encode(b"\0" * skew + raw)
        # The first group holds filler when skewed; the last may be padded or continued.
        forms.append(encoded[4 if skew else 0 : -4])
    return forms


def files_holding(root: Path, forms: list[bytes]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {form!r}" for form in forms if form in data]
    return found


class RecordingSpider(scrapy.Spider):
    """Fetches the URLs; notes the Proxy-Authorization each callback and errback sees on its
    request, and asks for one more try of every page once (a spider's own retry copy)."""

    name = "recording"
    custom_settings = {"HTTPERROR_ALLOW_ALL": True}

    def __init__(self, urls: list[str], result: CrawlResult, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.urls = urls
        self.result = result
        self.seen_headers: list[bytes | None] = []

    def _requests(self) -> Any:
        for url in self.urls:
            yield scrapy.Request(url, callback=self.parse, errback=self.failed)

    async def start(self) -> Any:  # Scrapy >= 2.13
        for request in self._requests():
            yield request

    def start_requests(self) -> Any:  # Scrapy < 2.13
        return self._requests()

    def parse(self, response: Any, **kwargs: Any) -> Any:
        self.seen_headers.append(response.request.headers.get(b"Proxy-Authorization"))
        self.result.pages.append(response.url)  # type: ignore[arg-type]
        if not response.meta.get("asked_again"):
            again = get_retry_request(response.request, spider=self, reason="again")
            if again is not None:
                again.meta["asked_again"] = True
                yield again

    def failed(self, failure: Any) -> None:
        self.seen_headers.append(failure.request.headers.get(b"Proxy-Authorization"))
        self.result.errors.append(failure)


@pytest_twisted.ensureDeferred
async def test_promise_16_credentials_reach_neither_the_scheduler_nor_the_spider_nor_jobdir(
    crawl, base_settings, tmp_path
):
    jobdir = tmp_path / "job"
    with Gateway(password=PASSWORD) as gateway:
        gateway.set_behavior("s001", Behavior.answer(503))  # retried: copies go to the queue
        gateway.set_behavior("s002", Behavior.close())  # a transport failure: retried too
        # A redirect: RedirectMiddleware makes a copy of our request before we see its answer.
        gateway.set_host_behavior(
            "redirect.test", Behavior.answer(302, (("Location", "http://site.test/landed"),))
        )
        settings = {
            **base_settings,
            "HEX_PROXY_GATEWAY": gateway.url,
            "HEX_PROXY_PASS": PASSWORD,
            "HEX_PROXY_SESSION_POOL_SIZE": 4,
            "JOBDIR": str(jobdir),
            "CONCURRENT_REQUESTS": 2,
        }
        targets = [f"http://site.test/page/{i}" for i in range(12)]
        targets += [f"http://redirect.test/{i}" for i in range(3)]
        result = await crawl(settings, targets, spider=RecordingSpider)
        spider = result.crawler.spider
        # The gateway did see credentials (the pages came through sessions).
        assert {r.username for r in gateway.records if r.is_attempt} >= {"USER-session-s001"}
    # 15 pages, most of them twice (a spider's copy); how many of the copies run out of retries
    # depends on the order answers come in.
    assert len(spider.seen_headers) >= 20
    assert set(spider.seen_headers) == {None}
    assert result.stats.get("retry/count", 0) + result.stats.get("hex_proxy/retry", 0) > 0
    assert result.stats["scheduler/enqueued/disk"] > 25
    assert files_holding(jobdir, secret_forms(PASSWORD)) == []
    # Nor do the queue's requests keep an attempt of ours to settle in another run.
    assert files_holding(jobdir, [b"_hex_attempt", b"_hex_ban", b"_auth_proxy"]) == []


def test_the_secret_forms_find_the_password_wherever_base64_puts_it():
    # The check above would be hollow if it missed an alignment.
    forms = secret_forms(PASSWORD)
    for prefix in ("", "a", "ab", "USER-session-s001"):
        header = base64.b64encode(f"{prefix}:{PASSWORD}".encode())
        assert any(form in header for form in forms[1:]), prefix


@pytest.mark.parametrize("moved", [False, True])
def test_promise_16_a_request_from_an_earlier_run_goes_out_with_this_runs_credentials(
    hook_crawler, moved
):
    # Pickled by an older version, a request may carry a header and HttpProxyMiddleware's note
    # of the gateway it was for; resumed against a gateway that moved, the note is stale.
    from scrapy import Request
    from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware

    crawler = hook_crawler(**({"HEX_PROXY_GATEWAY": "http://127.0.0.1:7778"} if moved else {}))
    from scrapy_hexproxy import HexProxyMiddleware

    proxy = HexProxyMiddleware.from_crawler(crawler)
    request = Request(
        "http://site.test/a",
        meta={"proxy": "http://127.0.0.1:7777", "_auth_proxy": "http://127.0.0.1:7777"},
        headers={"Proxy-Authorization": "Basic b2xkOm9sZA=="},
    )
    assert proxy.process_request(request) is None
    try:
        HttpProxyMiddleware().process_request(request)
    except TypeError:  # Scrapy < 2.13 takes the spider
        HttpProxyMiddleware().process_request(request, None)
    header = request.headers.get(b"Proxy-Authorization")
    assert header is not None, "HttpProxyMiddleware dropped this run's header"
    assert base64.b64decode(header[6:]).decode().startswith("USER-session-")


# -- why a session was benched, and hangs -------------------------------------------------


def _pair(crawler):
    from scrapy_hexproxy import HexProxyMiddleware, SmartRetryMiddleware

    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def _send(proxy):
    from scrapy import Request

    request = Request("http://site.test/a")
    assert proxy.process_request(request) is None
    return request


def test_the_blacklist_warning_says_what_the_run_that_benched_the_session_was(hook_crawler, caplog):
    import logging

    from scrapy.http import Response
    from twisted.internet.error import TimeoutError

    caplog.set_level(logging.DEBUG, logger="scrapy_hexproxy")
    crawler = hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1, HEX_PROXY_MAX_FAILURES=4)
    proxy, retry = _pair(crawler)
    for status in (429, 503, 429):
        request = _send(proxy)
        copy = retry.process_response(request, Response(request.url, status=status))
        assert copy is not request
    request = _send(proxy)
    # Scrapy's download timeout (< 2.15), a session's failure (Twisted's bare connect timeout
    # would be the gateway's outage, promise 17).
    timeout = TimeoutError("Getting http://site.test/a took longer than 5.0 seconds.")
    assert retry.process_exception(request, timeout) is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "hex_proxy: session s000 blacklisted for 300s after 4 consecutive failures:"
        " 429 \u00d72, 503 \u00d71, TimeoutError \u00d71"
    ]
    # Each DEBUG retry line names the session that failed.
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retrying")]
    assert len(retries) == 4
    assert all("last on session s000" in line for line in retries)


def test_a_success_ends_the_run_and_its_reasons(hook_crawler, caplog):
    import logging

    from scrapy.http import Response

    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    crawler = hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1, HEX_PROXY_MAX_FAILURES=2)
    proxy, retry = _pair(crawler)
    for status in (503, 200, 429, 429):
        request = _send(proxy)
        retry.process_response(request, Response(request.url, status=status))
    assert [r.getMessage().rsplit(": ", 1)[1] for r in caplog.records] == ["429 \u00d72"]


@pytest.mark.parametrize("user_set", [False, True])
def test_an_info_at_start_recommends_a_download_timeout_unless_one_is_set(
    hook_crawler, caplog, user_set
):
    import logging

    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    crawler = hook_crawler(**({"DOWNLOAD_TIMEOUT": 180} if user_set else {}))
    _pair(crawler)
    lines = [r.getMessage() for r in caplog.records if "DOWNLOAD_TIMEOUT" in r.getMessage()]
    if user_set:
        assert lines == []
    else:
        assert len(lines) == 1 and "DOWNLOAD_TIMEOUT = 30" in lines[0]


@pytest_twisted.ensureDeferred
async def test_the_health_line_counts_attempts_in_flight_for_30_seconds(
    crawl, base_settings, caplog
):
    import logging

    from .conftest import when

    caplog.set_level(logging.INFO, logger="scrapy_hexproxy")
    lines: list[str] = []
    with Gateway() as gateway:
        gateway.set_default_behavior(Behavior.hang())
        settings = {
            **base_settings,
            "HEX_PROXY_GATEWAY": gateway.url,
            "HEX_PROXY_MANUAL_CLOCK": True,
            "HEX_PROXY_MAX_RETRIES": 0,
            "DOWNLOAD_TIMEOUT": 2,
        }

        def in_flight(crawler: Any, runtime: Any) -> bool:
            active = crawler.engine.downloader.active
            return any("_hex_attempt" in request.meta for request in active)

        def look(crawler: Any, runtime: Any) -> None:
            runtime.health.log()  # first seen
            runtime.core.advance(29.9)
            runtime.health.log()
            runtime.core.advance(0.1)
            runtime.health.log()
            lines.extend(r.getMessage() for r in caplog.records if "live," in r.getMessage())

        await crawl(settings, ["http://site.test/slow"], before=lambda c: when(c, in_flight, look))
    assert len(lines) == 3
    assert "in flight" not in lines[0] and "in flight" not in lines[1]
    assert "; 1 in flight > 30 s;" in lines[2]
