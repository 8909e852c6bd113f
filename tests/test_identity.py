"""Fresh identities (HEX_PROXY_ON_BLACKLIST, HEX_PROXY_SESSION_MAX_USES / _MAX_AGE) and identity
binding (HEX_PROXY_BIND_COOKIEJAR, HEX_PROXY_USER_AGENTS): real crawls through the loopback
gateway, and hook tests on real Scrapy Request/Response objects.

The gateway keys its behaviour on the session id, as a real gateway keys the IP on it: a new id
is a new identity, and a behaviour set for "s002" does not follow its slot to "s006".
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import pytest
import pytest_twisted
import scrapy
from scrapy import Request
from scrapy.http import Response

from scrapy_hexproxy import HexProxyConfigError, HexProxyMiddleware, SmartRetryMiddleware
from scrapy_hexproxy._core import attempt_of
from scrapy_hexproxy.testing import Behavior, Gateway, advance_clock

from .conftest import CrawlResult, runtime_of, urls, when_requests_wait
from .test_gateway import auth, connect

AGENTS = ["UA-a/1.0", "UA-b/2.0 (X11; Linux, like Gecko)", "UA-c/3.0", "UA-d/4.0"]


def _pair(crawler):
    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def _send(proxy, url="http://site.test/a", **kwargs):
    request = Request(url, **kwargs)
    assert proxy.process_request(request) is None
    return request


def _answer(middleware, request, status):
    return middleware.process_response(
        request, Response(request.url, status=status, request=request)
    )


def _ids_in_order(gateway: Gateway) -> list[str]:
    return [r.session for r in gateway.records if r.is_attempt]


def _by_session(gateway: Gateway, field: str) -> dict[str, set]:
    seen: dict[str, set] = defaultdict(set)
    for record in gateway.records:
        if record.is_attempt:
            seen[record.session].add(getattr(record, field))
    return dict(seen)


class ChainSpider(scrapy.Spider):
    """Fetches its requests one after another (each from the previous one's callback), moving
    the core's manual clock by ``step`` seconds after each response."""

    name = "chain"
    custom_settings = {"HTTPERROR_ALLOW_ALL": True, "CONCURRENT_REQUESTS": 1}

    def __init__(self, requests: list[dict], step: float, result: CrawlResult, **kwargs: Any):
        super().__init__(**kwargs)
        self.chain = requests
        self.step = step
        self.result = result

    def _request(self, i: int) -> Request:
        return Request(
            callback=self.parse,
            errback=self.result.errors.append,
            cb_kwargs={"i": i},
            dont_filter=True,
            **self.chain[i],
        )

    async def start(self) -> Any:  # Scrapy >= 2.13
        yield self._request(0)

    def start_requests(self) -> Any:  # Scrapy < 2.13
        yield self._request(0)

    def parse(self, response: scrapy.http.Response, i: int) -> Any:
        self.result.pages.append(response)
        if self.step:
            advance_clock(self.crawler, self.step)
        if i + 1 < len(self.chain):
            yield self._request(i + 1)


async def _chain(settings: dict, requests: list[dict], step: float = 0) -> CrawlResult:
    from scrapy.crawler import CrawlerRunner

    runner = CrawlerRunner(settings)
    crawler = runner.create_crawler(ChainSpider)
    result = CrawlResult(crawler=crawler)
    await runner.crawl(crawler, requests=requests, step=step, result=result)
    assert not result.errors, [str(e.value) for e in result.errors]
    assert len(result.pages) == len(requests)
    return result


# -- fresh identities: HEX_PROXY_ON_BLACKLIST = "rotate" --------------------------------------


@pytest.mark.parametrize(
    ("pool_size", "concurrency", "banned_ids"),
    # With concurrency 1 the picks are reproducible (seeded), so a chain of two banned ids is
    # certain to be walked; with 8 the order of picks varies, so one banned id is enough.
    [(1, 1, 2), (4, 1, 2), (4, 8, 1)],
)
@pytest_twisted.ensureDeferred
async def test_rotate_gives_a_failing_session_a_new_id_at_once_and_no_request_waits(
    crawl, base_settings, hexproxy_gateway, caplog, pool_size, concurrency, banned_ids
):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    slot = 2 % pool_size
    # The slot's first ids are banned at the gateway; the next one is not.
    banned = [f"s{slot + n * pool_size:03d}" for n in range(banned_ids)]
    fresh = f"s{slot + banned_ids * pool_size:03d}"
    for session in banned:
        hexproxy_gateway.set_behavior(session, Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": pool_size,
        "HEX_PROXY_MAX_FAILURES": 3,
        "HEX_PROXY_ON_BLACKLIST": "rotate",
        "HEX_PROXY_MANUAL_CLOCK": True,
        "CONCURRENT_REQUESTS": concurrency,
        # Enough for one page to meet every banned attempt: which page does depends on the
        # scheduler's order, which differs between Scrapy versions.
        "HEX_PROXY_MAX_RETRIES": 3 * banned_ids,
    }
    waits = []

    def released(crawler, runtime):  # never called unless a request waits for a session
        waits.append(runtime.waiting)
        advance_clock(crawler, 300)

    pages = urls(100)
    result = await crawl(settings, pages, before=lambda c: when_requests_wait(c, released))
    assert waits == []
    assert not result.errors
    assert sorted(p.url for p in result.pages) == sorted(pages)
    assert all(p.status == 200 for p in result.pages)
    assert all(p.gateway_session == p.meta_session for p in result.pages)
    seen = hexproxy_gateway.counts()
    first_ids = {f"s{i:03d}" for i in range(pool_size)}
    assert set(seen) - first_ids == set(banned[1:]) | {fresh}
    assert set(banned) <= set(seen) and seen[fresh] > 0
    if concurrency == 1:
        assert [seen[s] for s in banned] == [3] * banned_ids  # MAX_FAILURES each, then never
    stats = result.hex_stats()
    assert stats["hex_proxy/rotated"] == banned_ids
    assert stats["hex_proxy/blacklisted"] == banned_ids
    assert stats["hex_proxy/sessions/live"] == pool_size
    assert stats["hex_proxy/sessions/cooling"] == 0
    assert stats["hex_proxy/failure/503"] == sum(seen[s] for s in banned)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.name == "scrapy_hexproxy" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == banned_ids
    for old, new in zip(banned, [*banned[1:], fresh]):
        assert any(old in w and f"new session {new}" in w for w in warnings), warnings


def test_in_flight_failures_of_a_retired_id_do_not_count_against_its_successor(hook_crawler):
    crawler = hook_crawler(
        HEX_PROXY_SESSION_POOL_SIZE=1, HEX_PROXY_MAX_FAILURES=2, HEX_PROXY_ON_BLACKLIST="rotate"
    )
    proxy, _ = _pair(crawler)
    core = runtime_of(crawler).core
    in_flight = [_send(proxy) for _ in range(4)]
    assert {r.meta["hex_session"] for r in in_flight} == {"s000"}
    for request in in_flight[:2]:
        _answer(proxy, request, 503)
    assert core.stats()["hex_proxy/rotated"] == 1
    assert core.live_count == 1
    # s000's late outcomes: a failure, counted but not against s001, and a success that
    # does not clear s001's run.
    _answer(proxy, in_flight[2], 503)
    successor = _send(proxy)
    assert successor.meta["hex_session"] == "s001"
    _answer(proxy, successor, 503)
    _answer(proxy, in_flight[3], 200)
    assert core.stats()["hex_proxy/rotated"] == 1
    _answer(proxy, _send(proxy), 503)  # s001's second failure in a row
    stats = core.stats()
    assert (stats["hex_proxy/rotated"], stats["hex_proxy/failure/503"]) == (2, 5)
    assert _send(proxy).meta["hex_session"] == "s002"


def test_rotated_ids_are_new_to_each_unseeded_crawl_and_the_warning_names_the_one_used(
    hook_crawler, caplog
):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")

    def first_new_id() -> str:
        crawler = hook_crawler(
            HEX_PROXY_SEED=None,  # unseeded, as in production: each crawl draws its epoch
            HEX_PROXY_SESSION_POOL_SIZE=1,
            HEX_PROXY_MAX_FAILURES=1,
            HEX_PROXY_ON_BLACKLIST="rotate",
        )
        proxy, _ = _pair(crawler)
        _answer(proxy, _send(proxy), 503)
        new_id = _send(proxy).meta["hex_session"]
        [warning] = [r.getMessage() for r in caplog.records if "new session" in r.getMessage()]
        caplog.clear()
        assert warning.endswith(f"as new session {new_id}")
        return new_id

    first, second = first_new_id(), first_new_id()
    # Not s001 (what a seeded crawl, or the last crawl, would hand out), and not each other's.
    assert "s001" not in (first, second) and first != second


@pytest.mark.parametrize("rotation", [{}, {"HEX_PROXY_ON_BLACKLIST": "rotate"}])
def test_an_attempt_token_of_an_earlier_crawl_is_dropped_and_the_request_goes_out(
    hook_crawler, rotation
):
    # A request resumed from JOBDIR may carry the token of an attempt of the last crawl, whose
    # number is no session of this one (another pool size, or another epoch of rotated ids).
    proxy, _ = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=3, **rotation))
    core = runtime_of(proxy._runtime.crawler).core
    stale = Request("http://site.test/a", meta={"_hex_attempt": (10**12 + 1, 0)})
    assert proxy.process_request(stale) is None
    assert stale.meta["hex_session"] in {"s000", "s001", "s002"}
    assert "hex_proxy/failure/unobserved" not in core.stats()


# -- fresh identities: HEX_PROXY_SESSION_MAX_USES and _MAX_AGE ---------------------------------


@pytest_twisted.ensureDeferred
async def test_max_uses_the_gateway_sees_each_id_at_most_that_many_times(
    crawl, base_settings, hexproxy_gateway
):
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 3,
        "HEX_PROXY_SESSION_MAX_USES": 4,
        "CONCURRENT_REQUESTS": 4,
    }
    result = await crawl(settings, urls(60))
    assert not result.errors and len(result.pages) == 60
    seen = hexproxy_gateway.counts()
    assert max(seen.values()) == 4
    assert sum(seen.values()) == 60
    # Only the last id of each slot may be short of its 4 uses: at least 15 ids.
    assert sum(1 for n in seen.values() if n < 4) <= 3
    assert len(seen) >= 15
    assert result.hex_stats()["hex_proxy/rotated"] == len(seen) - 3
    assert all(p.gateway_session == p.meta_session for p in result.pages)


@pytest_twisted.ensureDeferred
async def test_max_age_rotates_an_id_once_it_is_that_old_on_the_cores_clock(
    base_settings, hexproxy_gateway
):
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 1,
        "HEX_PROXY_SESSION_MAX_AGE": 60,
        "HEX_PROXY_MANUAL_CLOCK": True,
    }
    # One request every 25 s: an id is first used at t, rotated at its first pick >= t + 60.
    result = await _chain(settings, [{"url": u} for u in urls(7)], step=25)
    assert _ids_in_order(hexproxy_gateway) == ["s000"] * 3 + ["s001"] * 3 + ["s002"]
    assert result.crawler.stats.get_value("hex_proxy/rotated") == 2


# -- identity binding: HEX_PROXY_BIND_COOKIEJAR ------------------------------------------------


@pytest.mark.parametrize("bind", [True, False])
@pytest_twisted.ensureDeferred
async def test_bind_cookiejar_each_session_sends_only_the_cookies_it_received(
    base_settings, hexproxy_gateway, bind
):
    settings = {**base_settings, "HEX_PROXY_SESSION_POOL_SIZE": 3, "HEX_PROXY_BIND_COOKIEJAR": bind}
    # Every answer sets sid=<the session that fetched it>.
    await _chain(settings, [{"url": f"http://site.test/cookie/sid?n={i}"} for i in range(30)])
    records = [r for r in hexproxy_gateway.records if r.is_attempt]
    assert len({r.session for r in records}) == 3
    foreign = [r for r in records if r.cookie not in (None, f"sid={r.session}")]
    if bind:
        assert foreign == []
        first_use = {}
        for r in records:
            first_use.setdefault(r.session, r)
        assert all(r.cookie is None for r in first_use.values())
    else:
        assert foreign  # one jar for all: sessions send each other's cookies


@pytest_twisted.ensureDeferred
async def test_bind_cookiejar_a_rotated_id_starts_with_an_empty_jar(
    base_settings, hexproxy_gateway
):
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 1,
        "HEX_PROXY_SESSION_MAX_USES": 3,
        "HEX_PROXY_BIND_COOKIEJAR": True,
    }
    result = await _chain(
        settings, [{"url": f"http://site.test/cookie/sid?n={i}"} for i in range(9)]
    )
    sent = [(r.session, r.cookie) for r in hexproxy_gateway.records if r.is_attempt]
    assert sent == [
        (session, cookie)
        for session in ("s000", "s001", "s002")
        for cookie in (None, f"sid={session}", f"sid={session}")
    ]
    assert [p.meta["cookiejar"] for p in result.pages] == [
        p.meta["hex_session"] for p in result.pages
    ]


@pytest_twisted.ensureDeferred
async def test_bind_cookiejar_a_jar_the_user_chose_is_kept(base_settings, hexproxy_gateway):
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_SESSION_MAX_USES": 1,  # every request on a new id
        "HEX_PROXY_BIND_COOKIEJAR": True,
    }
    chain = [
        {"url": f"http://site.test/cookie/sid?n={i}", "meta": {"cookiejar": "mine"}}
        for i in range(5)
    ]
    result = await _chain(settings, chain)
    records = [r for r in hexproxy_gateway.records if r.is_attempt]
    assert len({r.session for r in records}) == 5
    # One jar across the ids: each request carries the cookie its predecessor's id received.
    assert [r.cookie for r in records] == [None] + [f"sid={r.session}" for r in records[:-1]]
    assert {p.meta["cookiejar"] for p in result.pages} == {"mine"}


def test_bind_cookiejar_a_retry_moves_to_the_new_sessions_jar_but_keeps_the_users(hook_crawler):
    proxy, retry = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=4, HEX_PROXY_BIND_COOKIEJAR=True))
    for given, expected in [(None, "the session's"), ("mine", "mine"), (0, 0)]:
        meta = {} if given is None else {"cookiejar": given}
        request = _send(proxy, meta=meta)
        copy = _answer(retry, request, 503)
        assert isinstance(copy, Request)
        assert proxy.process_request(copy) is None
        assert copy.meta["hex_session"] != request.meta["hex_session"]
        for attempt in (request, copy):
            jar = attempt.meta["cookiejar"]
            assert jar == (attempt.meta["hex_session"] if expected == "the session's" else expected)


def test_bind_cookiejar_with_hexproxy_after_cookies_middleware_stops_the_crawl(hook_crawler):
    wiring = {
        "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
        "scrapy_hexproxy.HexProxyMiddleware": 740,
        "scrapy_hexproxy.SmartRetryMiddleware": 550,
    }
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(HEX_PROXY_BIND_COOKIEJAR=True, DOWNLOADER_MIDDLEWARES=wiring))
    assert "HEX_PROXY_BIND_COOKIEJAR" in str(info.value)
    assert "CookiesMiddleware" in str(info.value)
    _pair(hook_crawler(DOWNLOADER_MIDDLEWARES=wiring))  # without binding, any order works


def test_bind_cookiejar_without_cookies_warns_that_it_has_no_effect(hook_crawler, caplog):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    _pair(hook_crawler(HEX_PROXY_BIND_COOKIEJAR=True, COOKIES_ENABLED=False))
    assert [r for r in caplog.records if "no effect" in r.getMessage()]


# -- identity binding: HEX_PROXY_USER_AGENTS ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_user_agents_each_session_presents_one_across_first_attempts_and_retries(
    crawl, base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s001", Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 6,
        "HEX_PROXY_MAX_FAILURES": 1000,  # s001 stays in the pool: its requests are retried
        "HEX_PROXY_USER_AGENTS": AGENTS,
    }
    result = await crawl(settings, urls(60))
    assert not result.errors and all(p.status == 200 for p in result.pages)
    agents = _by_session(hexproxy_gateway, "user_agent")
    assert len(agents) == 6
    assert all(len(seen) == 1 for seen in agents.values()), agents
    agent_of = {session: seen.pop() for session, seen in agents.items()}
    assert set(agent_of.values()) <= set(AGENTS) and len(set(agent_of.values())) > 1
    # Retries of s001's failures went out on sessions presenting another User-Agent.
    retried = [p for p in result.pages if p.retry_times > 0]
    assert retried
    assert any(agent_of[p.gateway_session] != agent_of["s001"] for p in retried)


@pytest_twisted.ensureDeferred
async def test_user_agents_stable_for_an_ids_life_and_may_change_on_rotation(
    crawl, base_settings, hexproxy_gateway
):
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_SESSION_MAX_USES": 3,
        "HEX_PROXY_USER_AGENTS": AGENTS,
    }
    await crawl(settings, urls(60))
    agents = _by_session(hexproxy_gateway, "user_agent")
    assert len(agents) >= 20
    assert all(len(seen) == 1 for seen in agents.values()), agents
    assert {seen.pop() for seen in agents.values()} == set(AGENTS)


@pytest_twisted.ensureDeferred
async def test_user_agents_a_user_agent_the_user_set_is_kept_on_every_attempt(
    base_settings, hexproxy_gateway
):
    hexproxy_gateway.set_behavior("s000", Behavior.answer(503))
    settings = {
        **base_settings,
        "HEX_PROXY_SESSION_POOL_SIZE": 2,
        "HEX_PROXY_MAX_FAILURES": 1000,
        "HEX_PROXY_USER_AGENTS": AGENTS,
    }
    mine = {"User-Agent": "mine/1.0"}
    await _chain(settings, [{"url": u, "headers": mine} for u in urls(10)])
    assert {r.user_agent for r in hexproxy_gateway.records} == {"mine/1.0"}
    assert hexproxy_gateway.count("s000") > 0  # some attempts failed and were retried


@pytest_twisted.ensureDeferred
async def test_user_agents_replace_scrapys_default_whatever_the_middleware_order(
    crawl, base_settings, hexproxy_gateway
):
    settings = {
        **base_settings,
        # After UserAgentMiddleware (500), which has set Scrapy's default by then.
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            "scrapy_hexproxy.HexProxyMiddleware": 740,
            "scrapy_hexproxy.SmartRetryMiddleware": 550,
        },
        "USER_AGENT": "DefaultBot/1.0",
        "HEX_PROXY_USER_AGENTS": AGENTS,
    }
    await crawl(settings, urls(20))
    assert {r.user_agent for r in hexproxy_gateway.records} <= set(AGENTS)


def test_user_agents_from_the_command_line_are_one_a_line(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_USER_AGENTS="UA-a/1.0 (X, like Y)\n\n  UA-b/2.0  \n")
    _pair(crawler)
    assert runtime_of(crawler).user_agents == (b"UA-a/1.0 (X, like Y)", b"UA-b/2.0")


# -- switched off, and bad values --------------------------------------------------------------


def test_with_identity_features_off_ids_are_the_indices_and_nothing_else_is_written(
    hook_crawler,
):
    crawler = hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=2, HEX_PROXY_MAX_FAILURES=1)
    proxy, _ = _pair(crawler)
    request = _send(proxy)
    assert "cookiejar" not in request.meta
    assert b"User-Agent" not in request.headers
    assert attempt_of(request.meta["_hex_attempt"])[0] == int(request.meta["hex_session"][1:])
    _answer(proxy, request, 503)  # blacklisted for the cooldown: no rotation
    core = runtime_of(crawler).core
    assert (core.live_count, core.cooling_count) == (1, 1)
    assert "hex_proxy/rotated" not in core.stats()
    with pytest.raises(IndexError):
        core.session_id(2)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("HEX_PROXY_ON_BLACKLIST", "renew"),
        ("HEX_PROXY_ON_BLACKLIST", 1),
        ("HEX_PROXY_SESSION_MAX_USES", -1),
        ("HEX_PROXY_SESSION_MAX_USES", "often"),
        ("HEX_PROXY_SESSION_MAX_USES", 2**32),
        ("HEX_PROXY_SESSION_MAX_AGE", -5),
        ("HEX_PROXY_SESSION_MAX_AGE", "soon"),
        ("HEX_PROXY_BIND_COOKIEJAR", "maybe"),
        ("HEX_PROXY_USER_AGENTS", []),
        ("HEX_PROXY_USER_AGENTS", ""),
        ("HEX_PROXY_USER_AGENTS", ["UA/1", ""]),
        ("HEX_PROXY_USER_AGENTS", ["UA/1", 7]),
        ("HEX_PROXY_USER_AGENTS", ["UA/1\r\nX-Injected: 1"]),
        ("HEX_PROXY_USER_AGENTS", ["Caf\u00e9/1"]),
        ("HEX_PROXY_USER_AGENTS", 7),
    ],
)
def test_bad_identity_settings_stop_the_crawl_naming_the_setting(hook_crawler, setting, value):
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(**{setting: value}))
    assert setting in str(info.value)
    assert "s3cr3t-PASS" not in str(info.value)


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("HEX_PROXY_ON_BLACKLIST", "rotate", 'HEX_PROXY_ON_BLACKLIST = "rotate"'),
        ("HEX_PROXY_SESSION_MAX_USES", 10, "HEX_PROXY_SESSION_MAX_USES"),
        ("HEX_PROXY_SESSION_MAX_AGE", 60, "HEX_PROXY_SESSION_MAX_AGE"),
    ],
)
def test_rotation_with_a_proxy_list_stops_the_crawl_naming_both(
    hook_crawler, setting, value, named
):
    no_gateway = {"HEX_PROXY_GATEWAY": None, "HEX_PROXY_USER": None, "HEX_PROXY_PASS": None}
    proxies = ["http://a:s3cr3t-PASS@127.0.0.1:8001", "http://127.0.0.1:8002"]
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(**no_gateway, HEX_PROXY_LIST=proxies, **{setting: value}))
    message = str(info.value)
    assert named in message and "HEX_PROXY_LIST" in message
    assert "s3cr3t-PASS" not in message
    # Binding needs no ids to rotate: each listed proxy gets its own jar and User-Agent.
    crawler = hook_crawler(
        **no_gateway,
        HEX_PROXY_LIST=proxies,
        HEX_PROXY_BIND_COOKIEJAR=True,
        HEX_PROXY_USER_AGENTS=AGENTS,
    )
    proxy, _ = _pair(crawler)
    request = _send(proxy)
    assert request.meta["cookiejar"] == request.meta["hex_session"]
    assert request.headers[b"User-Agent"].decode() in AGENTS


def test_identity_settings_from_the_command_line_are_accepted_as_strings(hook_crawler):
    crawler = hook_crawler(
        HEX_PROXY_ON_BLACKLIST=" Rotate ",
        HEX_PROXY_SESSION_MAX_USES="5",
        HEX_PROXY_SESSION_MAX_AGE="90.5",
        HEX_PROXY_BIND_COOKIEJAR="True",
    )
    proxy, _ = _pair(crawler)
    assert runtime_of(crawler).bind_cookiejar is True
    assert _send(proxy).meta["cookiejar"] is not None


# -- the test gateway's cookie path and header records -----------------------------------------


def test_gateway_cookie_path_sets_the_session_and_records_user_agent_and_cookie() -> None:
    with Gateway("USER", "s3cret-Pa55") as gw:
        conn = connect(gw)
        headers = {
            "Proxy-Authorization": auth("s004", password="s3cret-Pa55"),
            "User-Agent": "UA-t/1",
            "Cookie": "a=1",
        }
        conn.request("GET", "http://site.test/cookie/sid", headers=headers)
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.getheader("Set-Cookie") == "sid=s004; Path=/"
        [record] = gw.records
        assert (record.user_agent, record.cookie) == ("UA-t/1", "a=1")
