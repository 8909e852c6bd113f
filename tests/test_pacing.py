"""Retry pacing (issue 4, item 1): backoff with full jitter, Retry-After, priority adjust.

Hook tests on real Request/Response objects, then real crawls through the loopback gateway.
Time is the core's manual clock, moved by the test; one crawl runs on the real clock.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from typing import Any

import pytest
import pytest_twisted
from scrapy import Request, signals
from scrapy.http import Response
from scrapy.utils.defer import maybe_deferred_to_future

from scrapy_hexproxy import HexProxyConfigError, HexProxyMiddleware, SmartRetryMiddleware
from scrapy_hexproxy._pacing import NOT_BEFORE
from scrapy_hexproxy.testing import Behavior, Gateway, advance_clock

from .conftest import PagesSpider, runtime_of, urls

PACED = {"HEX_PROXY_RETRY_BACKOFF_BASE": 1.0, "HEX_PROXY_RETRY_BACKOFF_MAX": 60}


# --------------------------------------------------------------------------- hook level


def _pair(crawler):
    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def _failed(proxy, retry, request, status=503, headers=None):
    """Send ``request`` through HexProxy, answer ``status``; return what the retry hook made."""
    assert proxy.process_request(request) is None
    response = Response(request.url, status=status, headers=headers, request=request)
    return retry.process_response(request, response)


def _wait_of(crawler, request):
    """The wait a retry copy was given: its due time less the clock now (None: not marked)."""
    due = request.meta.get(NOT_BEFORE)
    return None if due is None else due - runtime_of(crawler).core.now()


def _our_receivers(crawler):
    """The pacer's signal handlers (HexProxyMiddleware's own, which take the credentials off
    every scheduled request, are not pacing's)."""
    from pydispatch import dispatcher

    from scrapy_hexproxy._pacing import Pacer

    return [
        receiver
        for signal in (signals.request_scheduled, signals.spider_idle)
        for receiver in dispatcher.liveReceivers(dispatcher.getAllReceivers(crawler, signal))
        if isinstance(getattr(receiver, "__self__", None), Pacer)
    ]


def test_pacing_is_off_by_default_retries_are_unmarked_and_no_handler_runs(hook_crawler):
    crawler = hook_crawler()
    proxy, retry = _pair(crawler)
    runtime = runtime_of(crawler)
    assert runtime.pacer is None and not runtime.core.paced
    assert _our_receivers(crawler) == []  # no pacing handler per scheduled request
    copy = _failed(proxy, retry, Request("http://site.test/a"), 429, {"Retry-After": "30"})
    assert isinstance(copy, Request)
    assert NOT_BEFORE not in copy.meta  # Retry-After too is ignored while pacing is off
    assert "hex_proxy/retry/delayed" not in runtime.core.stats()


def test_pacing_on_connects_its_two_signal_handlers_and_they_stay_alive(hook_crawler):
    import gc

    crawler = hook_crawler(**PACED)
    _pair(crawler)
    gc.collect()
    pacer = runtime_of(crawler).pacer
    assert sorted(r.__name__ for r in _our_receivers(crawler)) == [
        "_request_scheduled",
        "_spider_idle",
    ]
    assert all(r.__self__ is pacer for r in _our_receivers(crawler))
    assert pacer.close() == (0, 0)  # (dropped, saved)
    assert _our_receivers(crawler) == []  # disconnected when the spider closes


def test_the_nth_retry_waits_between_zero_and_base_times_two_to_the_n(hook_crawler):
    # n is the copy's retry_times: 1 for the first retry, so its cap is base * 2.
    crawler = hook_crawler(
        HEX_PROXY_RETRY_BACKOFF_BASE=0.5,
        HEX_PROXY_RETRY_BACKOFF_MAX=1000,
        HEX_PROXY_MAX_RETRIES=20,
        HEX_PROXY_MAX_FAILURES=10**4,
    )
    proxy, retry = _pair(crawler)
    for n in range(1, 11):
        cap = 0.5 * 2**n
        waits = []
        for _ in range(300):
            copy = _failed(proxy, retry, Request("http://site.test/a", meta={"retry_times": n - 1}))
            assert copy.meta["retry_times"] == n
            waits.append(_wait_of(crawler, copy))
        assert all(0 < w <= cap for w in waits), (n, min(waits), max(waits))
        # Spread over the whole range (full jitter), and the cap is 2^n, not 2^(n-1).
        assert min(waits) < 0.1 * cap and max(waits) > 0.9 * cap, (n, min(waits), max(waits))
        assert len(set(waits)) == len(waits)


def test_the_max_caps_the_backoff(hook_crawler):
    crawler = hook_crawler(
        HEX_PROXY_RETRY_BACKOFF_BASE=1,
        HEX_PROXY_RETRY_BACKOFF_MAX=3,
        HEX_PROXY_MAX_RETRIES=100,
        HEX_PROXY_MAX_FAILURES=10**4,
    )
    proxy, retry = _pair(crawler)
    waits = [
        _wait_of(crawler, _failed(proxy, retry, Request("http://x.test/", meta={"retry_times": n})))
        for n in range(2, 60)
        for _ in range(20)
    ]
    assert max(waits) <= 3 and max(waits) > 2.9


_SERVER_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (503, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": " 12 "}, 12.0),
        (429, {"Retry-After": "2.5"}, 2.5),
        (503, {"Retry-After": "3600"}, 60.0),  # capped by HEX_PROXY_RETRY_BACKOFF_MAX
        # An HTTP-date is compared with the server's own Date (its clock, not ours).
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT", "Date": _SERVER_DATE}, 10.0),
        (429, {"Retry-After": "Wednesday, 21-Oct-15 07:28:45 GMT", "Date": _SERVER_DATE}, 45.0),
        (503, {"Retry-After": "Wed, 21 Oct 2015 09:28:00 GMT", "Date": _SERVER_DATE}, 60.0),
        # A date in the past: no wait at all, the retry is not even marked.
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT", "Date": _SERVER_DATE}, None),
        (429, {"Retry-After": "0"}, None),
    ],
)
def test_retry_after_on_429_and_503_sets_the_wait_capped_by_the_max(
    hook_crawler, status, headers, expected
):
    crawler = hook_crawler(**PACED)
    proxy, retry = _pair(crawler)
    copy = _failed(proxy, retry, Request("http://site.test/a"), status, headers)
    wait = _wait_of(crawler, copy)
    assert wait == (None if expected is None else pytest.approx(expected, abs=1e-6))
    assert runtime_of(crawler).core.stats()["hex_proxy/retry/retry_after"] == 1


def test_retry_after_http_date_without_a_date_header_uses_this_machines_clock(hook_crawler):
    crawler = hook_crawler(**{**PACED, "HEX_PROXY_RETRY_BACKOFF_MAX": 600})
    proxy, retry = _pair(crawler)
    when = formatdate(time.time() + 120, usegmt=True)  # whole seconds: up to 1 s early
    copy = _failed(proxy, retry, Request("http://site.test/a"), 503, {"Retry-After": when})
    assert 118 < _wait_of(crawler, copy) <= 120


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (503, {"Retry-After": "soon"}),
        (503, {"Retry-After": "-5"}),
        (429, {"Retry-After": ""}),
        (503, {}),
        (500, {"Retry-After": "30"}),  # only 429 and 503 carry a Retry-After we act on
        (403, {"Retry-After": "30"}),
    ],
)
def test_malformed_or_irrelevant_retry_after_leaves_the_backoff(hook_crawler, status, headers):
    crawler = hook_crawler(**PACED)
    proxy, retry = _pair(crawler)
    waits = [
        _wait_of(crawler, _failed(proxy, retry, Request("http://site.test/a"), status, headers))
        for _ in range(50)
    ]
    assert all(0 < w <= 2.0 for w in waits)  # first retry: [0, base * 2]
    assert len(set(waits)) == 50
    assert "hex_proxy/retry/retry_after" not in runtime_of(crawler).core.stats()


def test_seeded_crawlers_draw_the_same_waits(hook_crawler):
    def waits():
        crawler = hook_crawler(**PACED, HEX_PROXY_SEED=42)
        proxy, retry = _pair(crawler)
        return [
            _wait_of(crawler, _failed(proxy, retry, Request(f"http://site.test/{i}")))
            for i in range(20)
        ]

    first = waits()
    assert first == waits()
    assert len(set(first)) == 20


@pytest.mark.parametrize(
    ("settings", "meta", "expected"),
    [
        ({}, {}, -1),  # default, as Scrapy's
        ({"RETRY_PRIORITY_ADJUST": -3}, {}, -3),  # ours unset: Scrapy's setting stands in
        ({"HEX_PROXY_RETRY_PRIORITY_ADJUST": 2, "RETRY_PRIORITY_ADJUST": -3}, {}, 2),
        ({"HEX_PROXY_RETRY_PRIORITY_ADJUST": "-5"}, {}, -5),  # from the command line
        ({"HEX_PROXY_RETRY_PRIORITY_ADJUST": 2}, {"priority_adjust": 7}, 7),  # meta wins
        ({"RETRY_PRIORITY_ADJUST": -3}, {"priority_adjust": 0}, 0),
    ],
)
def test_retry_priority_adjust_setting_falls_back_to_scrapys_and_meta_overrides_it(
    hook_crawler, settings, meta, expected
):
    crawler = hook_crawler(**settings)
    proxy, retry = _pair(crawler)
    copy = _failed(proxy, retry, Request("http://site.test/a", priority=10, meta=meta))
    assert copy.priority == 10 + expected


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("HEX_PROXY_RETRY_BACKOFF_BASE", -1),
        ("HEX_PROXY_RETRY_BACKOFF_BASE", "fast"),
        ("HEX_PROXY_RETRY_BACKOFF_BASE", float("nan")),
        ("HEX_PROXY_RETRY_BACKOFF_MAX", -0.5),
        ("HEX_PROXY_RETRY_BACKOFF_MAX", float("inf")),
        ("HEX_PROXY_RETRY_BACKOFF_MAX", True),
        ("HEX_PROXY_RETRY_PRIORITY_ADJUST", "high"),
    ],
)
def test_bad_pacing_settings_stop_the_crawl_naming_the_setting(hook_crawler, setting, value):
    with pytest.raises(HexProxyConfigError, match=setting):
        _pair(hook_crawler(**{setting: value}))


def test_pacing_settings_are_accepted_as_strings(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_RETRY_BACKOFF_BASE="0.25", HEX_PROXY_RETRY_BACKOFF_MAX="1")
    proxy, retry = _pair(crawler)
    assert runtime_of(crawler).core.paced
    wait = _wait_of(crawler, _failed(proxy, retry, Request("http://site.test/a")))
    assert 0 < wait <= 0.5


def test_gateway_answers_a_status_with_extra_headers_and_stamps_arrivals(hexproxy_gateway):
    import base64
    import http.client

    gw: Gateway = hexproxy_gateway
    gw.set_default_behavior(Behavior.answer(503, headers=(("Retry-After", "7"),)))
    auth = base64.b64encode(b"USER-session-s001:PASS").decode()
    before = time.monotonic()
    conn = http.client.HTTPConnection(gw.host, gw.port, timeout=5)
    try:
        conn.request("GET", "http://site.test/x", headers={"Proxy-Authorization": f"Basic {auth}"})
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 503 and response.getheader("Retry-After") == "7"
    [record] = gw.records
    assert before <= record.at <= time.monotonic()
    with pytest.raises(ValueError):
        Behavior.answer(503, headers=(("Bad Name", "1"),))
    with pytest.raises(ValueError):
        Behavior.answer(503, headers=(("X", "a\r\nInjected: 1"),))


# --------------------------------------------------------------------------- real crawls


def _when_idle_with_parked(crawler, action) -> None:
    """``action(crawler, runtime)`` each time the spider goes idle while a retry is parked:
    the moment everything else is done and only the paced retry is left."""

    def idle(spider: Any = None) -> None:
        runtime = runtime_of(crawler)
        if runtime.pacer.parked:
            action(crawler, runtime)

    crawler.signals.connect(idle, signal=signals.spider_idle, weak=False)


def _attempts(gateway, url):
    return [r for r in gateway.records if r.target == url and r.is_attempt]


def _manual(base_settings, **more):
    return {**base_settings, **PACED, "HEX_PROXY_MANUAL_CLOCK": True, **more}


@pytest_twisted.ensureDeferred
async def test_a_paced_retry_is_downloaded_only_once_the_clock_passes_its_wait(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))
    url = "http://site.test/paced"
    seen = []

    def step(crawler, runtime):
        pacer, core = runtime.pacer, runtime.core
        wait = pacer.next_due() - core.now()
        before = len(_attempts(hexproxy_gateway, url))
        advance_clock(crawler, wait - 0.001)  # just short: nothing is let go
        short = pacer.parked
        hexproxy_gateway.set_default_behavior(Behavior.normal())
        advance_clock(crawler, 0.002)  # past it: released into the engine at once
        seen.append((wait, before, short, pacer.parked, len(_attempts(hexproxy_gateway, url))))

    result = await crawl(
        _manual(base_settings), [(url, 0)], before=lambda c: _when_idle_with_parked(c, step)
    )
    [(wait, before, short, after, attempts_at_release)] = seen
    assert 0 < wait <= 2.0  # first retry: [0, base * 2]
    assert (before, short) == (1, 1)  # one attempt, the retry parked until the clock got there
    assert (after, attempts_at_release) == (0, 1)  # let go, not yet sent
    assert [a.outcome for a in _attempts(hexproxy_gateway, url)] == ["status:503", "ok"]
    assert [(p.status, p.retry_times) for p in result.pages] == [(200, 1)]
    stats = result.stats
    assert stats["finish_reason"] == "finished"
    assert stats["hex_proxy/retry/delayed"] == 1
    assert stats["hex_proxy/retry/wait_ms_max"] == int(wait * 1000)
    assert "hex_proxy/retry/dropped_at_close" not in stats


@pytest_twisted.ensureDeferred
async def test_other_requests_download_while_a_retry_is_parked(
    crawl, base_settings, hexproxy_gateway
):
    # One download slot, and the failing page first with the highest priority: its retry
    # (priority 9) would come before the others if it waited in the scheduler or the downloader.
    failing = "http://site.test/status/503"
    others = urls(6)
    seen = []

    def release(crawler, runtime):
        done = [r.target for r in hexproxy_gateway.records if r.is_attempt]
        seen.append((done, len(crawler.engine.downloader.active)))
        advance_clock(crawler, 60)

    settings = _manual(base_settings, CONCURRENT_REQUESTS=1, HEX_PROXY_MAX_RETRIES=1)
    result = await crawl(
        settings,
        [(failing, 10)] + [(u, 0) for u in others],
        before=lambda c: _when_idle_with_parked(c, release),
    )
    [(done, active)] = seen
    # While the retry was parked: the first attempt, then every other page; the downloader empty.
    assert done[0] == failing and sorted(done[1:]) == sorted(others)
    assert active == 0
    assert [r.target for r in hexproxy_gateway.records if r.is_attempt][-1] == failing
    assert sorted((p.url, p.status, p.retry_times) for p in result.pages) == sorted(
        [(failing, 503, 1)] + [(u, 200, 0) for u in others]
    )


@pytest_twisted.ensureDeferred
async def test_the_crawl_does_not_finish_while_a_retry_is_parked(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))
    url = "http://site.test/late"
    idle_while_parked = []

    def later(crawler, runtime):
        # Released on a later turn of the reactor, not inside the idle signal: had the spider
        # been let close at this idle, the release would find the engine closing.
        from twisted.internet import reactor

        idle_while_parked.append(runtime.pacer.parked)
        if len(idle_while_parked) == 1:
            hexproxy_gateway.set_default_behavior(Behavior.normal())
            reactor.callLater(0, advance_clock, crawler, 60)

    result = await crawl(
        _manual(base_settings), [(url, 0)], before=lambda c: _when_idle_with_parked(c, later)
    )
    assert idle_while_parked == [1]
    assert [(p.status, p.retry_times) for p in result.pages] == [(200, 1)]
    assert result.stats["finish_reason"] == "finished"
    assert "hex_proxy/retry/dropped_at_close" not in result.stats


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("Retry-After", "7"),), 7.0),
        ((("Retry-After", "3600"),), 60.0),
        ((("Retry-After", "Wed, 21 Oct 2015 07:28:10 GMT"), ("Date", _SERVER_DATE)), 10.0),
        ((("Retry-After", "Wed, 21 Oct 2015 08:28:00 GMT"), ("Date", _SERVER_DATE)), 60.0),
    ],
    ids=["delta", "delta-capped", "http-date", "http-date-capped"],
)
@pytest_twisted.ensureDeferred
async def test_retry_after_from_the_gateway_is_honoured_and_capped_in_a_crawl(
    crawl, base_settings, hexproxy_gateway, headers, expected
):
    hexproxy_gateway.set_default_behavior(Behavior.answer(503, headers=headers))
    url = "http://site.test/busy"
    seen = []

    def step(crawler, runtime):
        wait = runtime.pacer.next_due() - runtime.core.now()
        advance_clock(crawler, expected - 0.01)
        short = (runtime.pacer.parked, len(_attempts(hexproxy_gateway, url)))
        hexproxy_gateway.set_default_behavior(Behavior.normal())
        advance_clock(crawler, 0.02)
        seen.append((wait, short, runtime.pacer.parked))

    result = await crawl(
        _manual(base_settings), [(url, 0)], before=lambda c: _when_idle_with_parked(c, step)
    )
    [(wait, short, after)] = seen
    assert wait == pytest.approx(expected, abs=1e-6)
    assert short == (1, 1) and after == 0
    assert [(p.status, p.retry_times) for p in result.pages] == [(200, 1)]
    assert result.stats["hex_proxy/retry/retry_after"] == 1


@pytest_twisted.ensureDeferred
async def test_retries_parked_when_the_spider_closes_for_another_reason_are_counted_and_logged(
    crawl, base_settings, hexproxy_gateway, caplog
):
    hexproxy_gateway.set_default_behavior(Behavior.answer(503))

    def close(crawler, runtime):
        engine = crawler.engine
        if hasattr(engine, "close_spider_async"):  # Scrapy >= 2.14
            from scrapy.utils.defer import deferred_from_coro

            deferred_from_coro(engine.close_spider_async(reason="shutdown"))
        else:
            engine.close_spider(crawler.spider, "shutdown")

    result = await crawl(
        _manual(base_settings),
        [(u, 0) for u in urls(3)],
        before=lambda c: _when_idle_with_parked(c, close),
    )
    assert result.stats["finish_reason"] == "shutdown"
    assert result.stats["hex_proxy/retry/dropped_at_close"] == 3
    assert not result.pages
    [warning] = [r for r in caplog.records if "backoff" in r.getMessage()]
    assert warning.levelname == "WARNING"
    assert "3 retries" in warning.getMessage() and "shutdown" in warning.getMessage()


class DownloadSpider(PagesSpider):
    """Fetches a page through ``engine.download`` (no scheduler), as some spiders and
    middlewares do; the first target is the page whose callback does it."""

    name = "direct"

    def _requests(self) -> Any:
        yield Request(self.urls[0][0], callback=self.parse, dont_filter=True)

    async def parse(self, response: Any, **kwargs: Any) -> Any:
        engine = self.crawler.engine
        request = Request(self.urls[1][0], dont_filter=True)
        if hasattr(engine, "download_async"):  # Scrapy >= 2.14
            fetched = await engine.download_async(request)
        else:
            fetched = await maybe_deferred_to_future(engine.download(request))
        self.record(fetched)
        return
        yield  # an async generator, as Scrapy's callbacks may be on every version


@pytest_twisted.ensureDeferred
async def test_a_paced_retry_fetched_with_engine_download_still_waits_its_turn(
    crawl, base_settings, hexproxy_gateway
):
    from twisted.internet import task

    direct = "http://site.test/status/503"
    seen = []

    def watch(crawler):
        def check():
            runtime = runtime_of(crawler)
            sleepers = runtime.pacer._sleepers
            if not sleepers:
                return
            loop.stop()
            [(due, _)] = sleepers
            wait = due - runtime.core.now()
            advance_clock(crawler, wait - 0.001)
            short = (len(runtime.pacer._sleepers), len(_attempts(hexproxy_gateway, direct)))
            advance_clock(crawler, 0.002)
            seen.append((wait, short, len(runtime.pacer._sleepers)))

        def opened(spider: Any) -> None:  # returns nothing: never a Deferred from a receiver
            loop.start(0.01)

        def closed(spider: Any, reason: str) -> None:
            if loop.running:
                loop.stop()

        loop = task.LoopingCall(check)
        crawler.signals.connect(opened, signal=signals.spider_opened, weak=False)
        crawler.signals.connect(closed, signal=signals.spider_closed, weak=False)

    settings = _manual(base_settings, HEX_PROXY_MAX_RETRIES=1)
    result = await crawl(
        settings, [("http://site.test/first", 0), (direct, 0)], before=watch, spider=DownloadSpider
    )
    [(wait, short, after)] = seen
    assert 0 < wait <= 2.0
    assert short == (1, 1) and after == 0  # waited in the downloader until due, then sent
    assert len(_attempts(hexproxy_gateway, direct)) == 2
    assert [(p.url, p.status, p.retry_times) for p in result.pages] == [(direct, 503, 1)]


@pytest_twisted.ensureDeferred
async def test_with_the_real_clock_each_retry_arrives_no_earlier_than_its_wait(
    crawl, base_settings, hexproxy_gateway, capsys
):
    # Four pages that always fail, three retries each: waits of up to 0.1, 0.2 and 0.4 s.
    failing = [f"http://site.test/status/503?page={i}" for i in range(4)]
    drawn: dict[str, dict[int, float]] = {u: {} for u in failing}

    def watch(crawler):
        def scheduled(request: Request, spider: Any = None) -> None:
            # Connected before the pacer's handler, so it sees every retry still marked, the
            # first time (just drawn) and again when it is let go (due).
            due = request.meta.get(NOT_BEFORE)
            if due is not None and request.url in drawn:
                wait = due - runtime_of(crawler).core.now()
                drawn[request.url].setdefault(request.meta["retry_times"], wait)

        crawler.signals.connect(scheduled, signal=signals.request_scheduled, weak=False)

    settings = {
        **base_settings,
        "HEX_PROXY_RETRY_BACKOFF_BASE": 0.05,
        "HEX_PROXY_RETRY_BACKOFF_MAX": 0.4,
        "HEX_PROXY_MAX_RETRIES": 3,
        "HEX_PROXY_MAX_FAILURES": 100,
    }
    result = await crawl(settings, [(u, 0) for u in failing], before=watch)
    assert result.stats["hex_proxy/retry"] == 12
    rows = []
    for url in failing:
        arrivals = [r.at for r in _attempts(hexproxy_gateway, url)]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        waits = [drawn[url][n] for n in sorted(drawn[url])]
        assert len(arrivals) == 4 and sorted(drawn[url]) == [1, 2, 3], (url, arrivals, waits)
        for n, (wait, gap) in enumerate(zip(waits, gaps), start=1):
            # Read just after the draw: a tiny draw may already be due (<= 0) by then.
            assert wait <= min(0.4, 0.05 * 2**n)
            # The previous attempt reached the gateway before its retry was even drawn.
            assert gap >= wait, (url, n, wait, gap)
            rows.append((n, wait, gap))
    with capsys.disabled():
        print("\nretry n, drawn wait (s), observed gap between arrivals (s):")
        for n, wait, gap in rows:
            print(f"  {n}  {wait:.3f}  {gap:.3f}")
