"""Any provider (issue 4, item 6): a gateway that spells sessions its own way
(HEX_PROXY_USERNAME_TEMPLATE), or a list of proxies with their own credentials
(HEX_PROXY_LIST / HEX_PROXY_LIST_FILE), each proxy one session, told apart by its full URL.

Hook tests use real Scrapy Request/Response objects and Scrapy's own HttpProxyMiddleware; crawl
tests go through loopback gateways, each playing one or more proxies of a list.
"""

from __future__ import annotations

import base64
import inspect
import logging
import re
from collections import Counter
from typing import Any

import pytest
import pytest_twisted
from scrapy import Request
from scrapy.downloadermiddlewares.httpproxy import HttpProxyMiddleware
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response

from scrapy_hexproxy import HexProxyConfigError, HexProxyMiddleware, SmartRetryMiddleware
from scrapy_hexproxy.testing import Behavior, Gateway

from .conftest import runtime_of, urls

# -- helpers ------------------------------------------------------------------------------

#: Every secret of these tests, as written in an entry and as sent; none may ever be logged.
SECRETS = ("pa@ss:1", "pa%40ss%3A1", "bob-s3cret", "carol-s3cret", "wr0ng-s3cret", "s3cr3t-PASS")

NO_GATEWAY = {"HEX_PROXY_GATEWAY": None, "HEX_PROXY_USER": None, "HEX_PROXY_PASS": None}


def _pair(crawler):
    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def _list_crawler(hook_crawler, proxies: Any, **overrides: Any):
    return hook_crawler(**NO_GATEWAY, HEX_PROXY_LIST=proxies, **overrides)


def _credentials(request: Request) -> str | None:
    value = request.headers.get(b"Proxy-Authorization")
    if value is None:
        return None
    assert value.startswith(b"Basic ")
    return base64.b64decode(value[6:]).decode()


def _assigned(proxy: HexProxyMiddleware, index: int, request: Request | None = None) -> Request:
    """A request (or a retry copy of ``request``, as SmartRetryMiddleware makes it) sent
    through session ``index``."""
    if request is None:
        request = Request("http://site.test/a")
    else:
        request = request.replace(dont_filter=True)
    proxy.assign(request, index)
    return request


def _http_proxy_middleware_sees(request: Request) -> None:
    """Runs Scrapy's own HttpProxyMiddleware (750) on the request, as the engine would next."""
    middleware = HttpProxyMiddleware()
    spider = inspect.signature(middleware.process_request).parameters["spider"]
    if spider.default is inspect.Parameter.empty:  # Scrapy < 2.13 takes it positionally
        middleware.process_request(request, None)
    else:
        middleware.process_request(request)


def _assert_no_secret(texts: list[str]) -> None:
    encoded = [base64.b64encode(s.encode()).decode() for s in SECRETS]
    for text in texts:
        for secret in (*SECRETS, *encoded):
            assert secret not in text, text


def _messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records if level is None or r.levelno == level]


def _config_error(crawler_factory, **settings: Any) -> str:
    with pytest.raises(HexProxyConfigError) as info:
        _pair(crawler_factory(**settings))
    message = str(info.value)
    # Nor in what it was raised from (a traceback shows that too).
    _assert_no_secret([message, repr(info.value.__cause__), repr(info.value.__context__)])
    return message


# -- the username template -----------------------------------------------------------------


def test_username_template_spells_the_session_the_gateway_way(hook_crawler):
    crawler = hook_crawler(
        HEX_PROXY_USERNAME_TEMPLATE="{user}_sid_{session}-country-us",
        HEX_PROXY_SESSION_POOL_SIZE=50,
    )
    proxy, retry = _pair(crawler)
    request = Request("http://site.test/a")
    assert proxy.process_request(request) is None
    session = request.meta["hex_session"]
    assert _credentials(request) == f"USER_sid_{session}-country-us:s3cr3t-PASS"
    again = retry.process_response(request, Response(request.url, status=503, request=request))
    assert proxy.process_request(again) is None
    assert again.meta["hex_session"] != session
    assert _credentials(again) == f"USER_sid_{again.meta['hex_session']}-country-us:s3cr3t-PASS"


def test_the_default_template_is_the_guides_username(hook_crawler):
    proxy, _ = _pair(hook_crawler())
    request = _assigned(proxy, 7)
    assert _credentials(request) == "USER-session-s007:s3cr3t-PASS"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{user}-sticky", "must contain {session}"),
        ("{user}-{sesion}", "unknown placeholder {sesion}"),
        ("{user}:{session}", "must not contain ':'"),
        ("{user}-{session", "unclosed '{'"),
        ("{user}}-{session}", "stray '}'"),
        (42, "must be a string"),
    ],
)
def test_a_bad_username_template_stops_the_crawl_naming_the_setting(
    hook_crawler, template, expected
):
    message = _config_error(hook_crawler, HEX_PROXY_USERNAME_TEMPLATE=template)
    assert message.startswith("HEX_PROXY_USERNAME_TEMPLATE"), message
    assert expected in message, message


# -- the proxy list: sessions, headers, meta["proxy"] ---------------------------------------

LIST = [
    "http://alice:pa%40ss%3A1@127.0.0.1:7001",
    "http://bob:bob-s3cret@127.0.0.1:7001",
    "http://127.0.0.1:7002",
]


def test_each_proxy_of_the_list_is_one_session_in_list_order(hook_crawler):
    crawler = _list_crawler(hook_crawler, LIST)
    proxy, _ = _pair(crawler)
    assert runtime_of(crawler).core.pool_size == 3
    expected = [
        ("s000", "http://127.0.0.1:7001", "alice:pa@ss:1"),  # percent-decoded, as Scrapy does
        ("s001", "http://127.0.0.1:7001", "bob:bob-s3cret"),
        ("s002", "http://127.0.0.1:7002", None),
    ]
    for index, (session, url, credentials) in enumerate(expected):
        request = _assigned(proxy, index)
        assert request.meta["hex_session"] == session
        assert request.meta["proxy"] == url
        assert _credentials(request) == credentials
    picked = Counter()
    for _ in range(600):
        request = Request("http://site.test/a")
        assert proxy.process_request(request) is None
        picked[request.meta["hex_session"], _credentials(request)] += 1
    assert set(picked) == {(s, c) for s, _, c in expected}, picked


def test_two_entries_that_differ_only_in_credentials_are_two_sessions(hook_crawler):
    # scrapy-rotating-proxies keys proxies by host:port and cannot tell these apart.
    crawler = _list_crawler(
        hook_crawler, ["http://user-1:pw@127.0.0.1:7001", "http://user-2:pw@127.0.0.1:7001"]
    )
    proxy, retry = _pair(crawler)
    core = runtime_of(crawler).core
    assert core.pool_size == 2
    assert [core.proxy_label(i) for i in range(2)] == [
        "http://user-1:***@127.0.0.1:7001",
        "http://user-2:***@127.0.0.1:7001",
    ]
    # A failure on one is not a failure of the other: the retry goes to the other.
    request = _assigned(proxy, 0)
    first = _credentials(request)
    again = retry.process_response(request, Response(request.url, status=503, request=request))
    assert proxy.process_request(again) is None
    assert again.meta["proxy"] == request.meta["proxy"]
    assert (first, _credentials(again)) == ("user-1:pw", "user-2:pw")


def test_httpproxymiddleware_keeps_each_attempts_header_when_the_proxy_changes(hook_crawler):
    # Scrapy's HttpProxyMiddleware drops a Proxy-Authorization header it noted for another
    # proxy: a retry moving to another proxy of the list must keep its own header, and a
    # proxy without credentials must not carry the previous proxy's.
    crawler = _list_crawler(hook_crawler, [*LIST, "http://carol:carol-s3cret@127.0.0.1:7003"])
    proxy, _ = _pair(crawler)
    request = None
    for index, url, credentials in [
        (0, "http://127.0.0.1:7001", "alice:pa@ss:1"),
        (3, "http://127.0.0.1:7003", "carol:carol-s3cret"),
        (2, "http://127.0.0.1:7002", None),
        (1, "http://127.0.0.1:7001", "bob:bob-s3cret"),
        (2, "http://127.0.0.1:7002", None),
        (0, "http://127.0.0.1:7001", "alice:pa@ss:1"),
    ]:
        request = _assigned(proxy, index, request)
        _http_proxy_middleware_sees(request)
        assert request.meta["proxy"] == url
        assert _credentials(request) == credentials, (index, url)


def test_a_list_given_as_one_string_is_cut_at_commas_and_whitespace(hook_crawler):
    crawler = _list_crawler(
        hook_crawler,
        " http://a:pw@127.0.0.1:7001,http://b:pw@127.0.0.1:7001\n\thttp://127.0.0.1:7002 ,",
    )
    _pair(crawler)
    core = runtime_of(crawler).core
    assert [core.proxy_source(i) for i in range(core.pool_size)] == [
        "HEX_PROXY_LIST entry 1",
        "HEX_PROXY_LIST entry 2",
        "HEX_PROXY_LIST entry 3",
    ]


def test_an_exact_duplicate_is_kept_once_with_one_warning(hook_crawler, caplog):
    caplog.set_level(logging.DEBUG)
    crawler = _list_crawler(
        hook_crawler,
        [
            "http://a:pw@127.0.0.1:7001",
            "http://b:pw@127.0.0.1:7001",
            "http://a:pw@127.0.0.1:7001/",
            "http://b:pw@127.0.0.1:7001",
        ],
    )
    _pair(crawler)
    assert runtime_of(crawler).core.pool_size == 2
    warnings_logged = [m for m in _messages(caplog, logging.WARNING) if "repeats" in m]
    assert len(warnings_logged) == 1
    assert "HEX_PROXY_LIST entry 3 = HEX_PROXY_LIST entry 1" in warnings_logged[0]
    assert "HEX_PROXY_LIST entry 4 = HEX_PROXY_LIST entry 2" in warnings_logged[0]


def test_https_proxies_of_the_list_get_one_warning_naming_them(hook_crawler, caplog):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    _pair(
        _list_crawler(
            hook_crawler,
            ["https://a:pw@127.0.0.1:7001", "http://b:pw@127.0.0.1:7001", "https://127.0.0.1:7002"],
        )
    )
    (warning,) = _messages(caplog, logging.WARNING)
    assert "2 proxies of HEX_PROXY_LIST are https:// proxies" in warning
    assert "s000 (https://a:***@127.0.0.1:7001, HEX_PROXY_LIST entry 1)" in warning
    assert "s002 (https://127.0.0.1:7002, HEX_PROXY_LIST entry 3)" in warning
    assert "entry 2" not in warning


def test_a_list_file_holds_one_proxy_a_line_with_comments_and_blank_lines(hook_crawler, tmp_path):
    path = tmp_path / "proxies.txt"
    path.write_text(
        "\ufeff# my proxies\r\n\r\nhttp://a:pw@127.0.0.1:7001\r\n   # off: http://x:y@h:1\n"
        "  http://127.0.0.1:7002  \n",
        encoding="utf-8",
    )
    crawler = hook_crawler(**NO_GATEWAY, HEX_PROXY_LIST_FILE=str(path))
    _pair(crawler)
    core = runtime_of(crawler).core
    assert core.pool_size == 2
    assert [core.proxy_source(i) for i in range(2)] == [
        "HEX_PROXY_LIST_FILE line 3",
        "HEX_PROXY_LIST_FILE line 5",
    ]


# -- the proxy list: what is refused at start ----------------------------------------------


def test_gateway_and_list_both_set_is_an_error_naming_both(hook_crawler, tmp_path):
    message = _config_error(hook_crawler, HEX_PROXY_LIST=LIST)
    assert "HEX_PROXY_GATEWAY and HEX_PROXY_LIST are both set" in message
    path = tmp_path / "p.txt"
    path.write_text(LIST[0])
    message = _config_error(hook_crawler, HEX_PROXY_LIST_FILE=str(path))
    assert "HEX_PROXY_GATEWAY and HEX_PROXY_LIST_FILE are both set" in message
    message = _config_error(
        hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST=LIST, HEX_PROXY_LIST_FILE=str(path)
    )
    assert "HEX_PROXY_LIST and HEX_PROXY_LIST_FILE are both set" in message


def test_neither_gateway_nor_list_fails_closed_naming_both_and_the_switch(hook_crawler):
    for unset in (None, "", "  "):
        message = _config_error(hook_crawler, HEX_PROXY_GATEWAY=unset, HEX_PROXY_LIST=unset)
        assert "HEX_PROXY_GATEWAY is not set" in message
        assert "HEX_PROXY_LIST / HEX_PROXY_LIST_FILE" in message
        assert "HEX_PROXY_ENABLED = False" in message


@pytest.mark.parametrize(
    "name", ["HEX_PROXY_USER", "HEX_PROXY_PASS", "HEX_PROXY_USERNAME_TEMPLATE"]
)
def test_gateway_settings_beside_a_list_are_an_error_naming_both(hook_crawler, name):
    settings = {**NO_GATEWAY, name: "{session}-s3cr3t-PASS"}
    message = _config_error(hook_crawler, **settings, HEX_PROXY_LIST=LIST)
    assert message.startswith(
        f"{name} is set, but it is for HEX_PROXY_GATEWAY; with HEX_PROXY_LIST"
    )


def test_a_pool_size_given_by_hand_must_match_the_list(hook_crawler):
    duplicated = [*LIST, LIST[0]]
    message = _config_error(
        hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST=duplicated, HEX_PROXY_SESSION_POOL_SIZE=4
    )
    assert message.startswith(
        "HEX_PROXY_SESSION_POOL_SIZE is 4, but HEX_PROXY_LIST holds 3 different proxies"
    )
    crawler = _list_crawler(hook_crawler, duplicated, HEX_PROXY_SESSION_POOL_SIZE="3")
    _pair(crawler)
    assert runtime_of(crawler).core.pool_size == 3


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("alice:wr0ng-s3cret@127.0.0.1:7001", "must start with http:// or https://"),
        ("socks5://alice:wr0ng-s3cret@127.0.0.1:7001", "must start with http:// or https://"),
        ("http://alice:wr0ng-s3cret@127.0.0.1", "has no port"),
        ("http://alice:wr0ng-s3cret@127.0.0.1:70000", "port must be"),
        ("http://alice:wr0ng/s3cret@127.0.0.1:7001", "nothing after host:port"),
        ("http://:wr0ng-s3cret@127.0.0.1:7001", "credentials without a user"),
        ("http://alice:wr0ng-s3cret@127.0.0.1:7001/x", "nothing after host:port"),
        ("http://alice:wr0ng-s3cret", "port must be"),
        ("", "is empty"),
    ],
)
def test_a_malformed_entry_is_named_by_position_without_echoing_it(hook_crawler, entry, problem):
    message = _config_error(hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST=[LIST[0], entry])
    assert message.startswith("HEX_PROXY_LIST entry 2: "), message
    assert problem in message, message
    assert "alice" not in message and "127.0.0.1" not in message, message


def test_malformed_list_settings_name_the_setting(hook_crawler, tmp_path):
    assert "HEX_PROXY_LIST must be a list" in _config_error(
        hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST={"a": 1}
    )
    assert "HEX_PROXY_LIST entry 2 must be a string" in _config_error(
        hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST=[LIST[0], 7]
    )
    assert "HEX_PROXY_LIST holds no proxy" in _config_error(
        hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST=[]
    )
    assert "HEX_PROXY_LIST holds no proxy" in _config_error(
        hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST=" , "
    )
    missing = tmp_path / "missing.txt"
    message = _config_error(hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST_FILE=str(missing))
    assert message.startswith(f"HEX_PROXY_LIST_FILE {str(missing)!r} cannot be read"), message
    comments = tmp_path / "comments.txt"
    comments.write_text("# nothing yet\n\n")
    message = _config_error(hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST_FILE=str(comments))
    assert "holds no proxy" in message
    latin = tmp_path / "latin.txt"
    latin.write_bytes("http://alice:wr0ng-s3cret\xe9@127.0.0.1:7001\n".encode("latin-1"))
    message = _config_error(hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST_FILE=str(latin))
    assert "is not UTF-8 text" in message
    broken = tmp_path / "broken.txt"
    broken.write_text(f"# ok\n{LIST[0]}\nhttp://alice:wr0ng-s3cret@127.0.0.1\n")
    message = _config_error(hook_crawler, **NO_GATEWAY, HEX_PROXY_LIST_FILE=str(broken))
    assert message.startswith("HEX_PROXY_LIST_FILE line 3: has no port"), message


def test_no_password_of_the_list_in_any_repr(hook_crawler):
    crawler = _list_crawler(hook_crawler, [*LIST, "http://carol:carol-s3cret@127.0.0.1:7003"])
    proxy, _ = _pair(crawler)
    runtime = runtime_of(crawler)
    core = runtime.core
    texts = [repr(core), repr(proxy), str(core.stats()), repr(runtime.settings)]
    texts += [runtime.session_name(i) for i in range(core.pool_size)]
    _assert_no_secret(texts)
    assert core.user is None and "proxy_list=True" in repr(core)


# -- the proxy list: 407s -----------------------------------------------------------------


def test_a_407_rejects_that_proxy_alone_and_the_crawl_stops_when_every_proxy_is_rejected(
    hook_crawler, caplog
):
    caplog.set_level(logging.DEBUG)
    crawler = _list_crawler(
        hook_crawler, LIST, HEX_PROXY_AUTH_FAILURES_TO_CLOSE=2, HEX_PROXY_MAX_FAILURES=100
    )
    proxy, _ = _pair(crawler)
    core = runtime_of(crawler).core

    def answer(index: int, status: int) -> None:
        request = _assigned(proxy, index)
        proxy.process_response(request, Response(request.url, status=status, request=request))

    answer(1, 407)
    answer(0, 200)  # another proxy's success says nothing about proxy s001
    answer(1, 407)
    errors = _messages(caplog, logging.ERROR)
    assert errors == [
        "hex_proxy: proxy s001 (http://bob:***@127.0.0.1:7001, HEX_PROXY_LIST entry 2) rejected"
        " its credentials with 2 consecutive 407 responses: check that entry. The other proxies"
        " carry on."
    ]
    assert not core.auth_failed
    for index in (0, 0, 2, 2):
        answer(index, 407)
    assert core.auth_failed
    stop = _messages(caplog, logging.ERROR)[-1]
    assert stop.startswith("hex_proxy: every proxy of HEX_PROXY_LIST rejected its credentials")
    for label in ("http://alice:***@127.0.0.1:7001", "http://bob:***@", "http://127.0.0.1:7002"):
        assert label in stop
    with pytest.raises(IgnoreRequest, match="every proxy of the list rejected"):
        runtime_of(crawler).check_credentials()
    _assert_no_secret(_messages(caplog))


# -- real crawls ----------------------------------------------------------------------------


@pytest.fixture
def proxy_gateways():
    """Three loopback gateways playing four proxies of a list (and a fifth, wrong one)."""
    first = Gateway(
        accounts={"alice": "pa@ss:1", "bob": "bob-s3cret", "dave": "dave-s3cret"}
    ).start()
    second = Gateway(accounts={"carol": "carol-s3cret"}).start()
    third = Gateway(open_session="open").start()
    try:
        yield first, second, third
    finally:
        for gateway in (first, second, third):
            gateway.stop()


def _list_of(first: Gateway, second: Gateway, third: Gateway) -> list[str]:
    return [
        f"http://alice:pa%40ss%3A1@127.0.0.1:{first.port}",
        f"http://bob:bob-s3cret@127.0.0.1:{first.port}",
        f"http://carol:carol-s3cret@127.0.0.1:{second.port}",
        f"http://127.0.0.1:{third.port}",
    ]


#: session id -> the session the gateways name it by (the account, or the open proxy).
_GATEWAY_SESSION = {"s000": "alice", "s001": "bob", "s002": "carol", "s003": "open"}


def _list_settings(base_settings: dict[str, Any], proxies: list[str], **more: Any) -> dict:
    return {**base_settings, **NO_GATEWAY, "HEX_PROXY_LIST": proxies, **more}


@pytest_twisted.ensureDeferred
async def test_crawl_the_username_template_reaches_the_gateway(crawl, base_settings):
    template = "{user}_sid_{session}-country-us"
    with Gateway(username_template=template) as gateway:
        settings = {
            **base_settings,
            "HEX_PROXY_GATEWAY": gateway.url,
            "HEX_PROXY_USERNAME_TEMPLATE": template,
            "HEX_PROXY_SESSION_POOL_SIZE": 5,
        }
        result = await crawl(settings, urls(20) + urls(10, scheme="https"))
        records = gateway.records
    assert len(result.pages) == 30 and {p.status for p in result.pages} == {200}
    assert all(p.gateway_session == p.meta_session for p in result.pages)
    usernames = {r.username for r in records}
    assert usernames and all(re.fullmatch(r"USER_sid_s00[0-4]-country-us", u) for u in usernames)
    assert {r.kind for r in records} >= {"http", "connect", "tunnel"}
    print(f"template crawl: {len(usernames)} distinct usernames, e.g. {sorted(usernames)[0]}")


@pytest_twisted.ensureDeferred
async def test_crawl_through_a_list_each_proxy_serves_pages_with_its_own_credentials(
    crawl, base_settings, proxy_gateways, all_logs
):
    first, second, third = proxy_gateways
    settings = _list_settings(base_settings, _list_of(*proxy_gateways))
    result = await crawl(settings, urls(60) + urls(20, scheme="https"))
    assert len(result.pages) == 80 and {p.status for p in result.pages} == {200}
    assert not result.errors
    # Each page came through the proxy its session names, which saw that entry's credentials.
    for page in result.pages:
        assert page.gateway_session == _GATEWAY_SESSION[page.meta_session], page
    per_session = Counter(p.meta_session for p in result.pages)
    assert set(per_session) == set(_GATEWAY_SESSION), per_session
    assert {r.username for r in first.records} == {"alice", "bob"}
    assert {r.outcome for r in first.records} == {"ok"}
    assert {(r.session, r.username) for r in second.records} == {("carol", "carol")}
    # The proxy without credentials never got a header left over from another proxy.
    assert {r.username for r in third.records} == {None}
    assert not result.hex_stats().get("hex_proxy/failure/407")
    _assert_no_secret(_messages(all_logs))
    print(f"pages per proxy: {dict(sorted(per_session.items()))}")


@pytest_twisted.ensureDeferred
async def test_crawl_a_failing_proxy_is_blacklisted_and_its_pages_retried_on_the_others(
    crawl, base_settings, proxy_gateways, all_logs
):
    _, second, third = proxy_gateways
    second.set_default_behavior(Behavior.answer(503))  # carol's proxy fails everything
    settings = _list_settings(
        base_settings,
        _list_of(*proxy_gateways),
        HEX_PROXY_MAX_FAILURES=3,
        HEX_PROXY_MANUAL_CLOCK=True,
        CONCURRENT_REQUESTS=1,
    )
    result = await crawl(settings, urls(40))
    assert len(result.pages) == 40 and {p.status for p in result.pages} == {200}
    assert "s002" not in {p.meta_session for p in result.pages}
    assert second.count("carol") == 3  # HEX_PROXY_MAX_FAILURES, then never again
    stats = result.hex_stats()
    assert stats["hex_proxy/blacklisted"] == 1 and stats["hex_proxy/failure/503"] == 3
    assert stats["hex_proxy/retry"] == 3
    (warning,) = [m for m in _messages(all_logs, logging.WARNING) if "blacklisted" in m]
    assert "s002 (http://carol:***@127.0.0.1:" in warning
    # Retries that moved to the proxy without credentials carried none.
    assert {r.username for r in third.records} == {None}
    _assert_no_secret(_messages(all_logs))
    served = Counter(p.meta_session for p in result.pages)
    print(f"with carol failing: attempts on carol {second.count('carol')}, pages {dict(served)}")


@pytest_twisted.ensureDeferred
async def test_crawl_a_proxy_with_wrong_credentials_is_rejected_alone(
    crawl, base_settings, proxy_gateways, all_logs
):
    first, _, _ = proxy_gateways
    proxies = [*_list_of(*proxy_gateways), f"http://dave:wr0ng-s3cret@127.0.0.1:{first.port}"]
    settings = _list_settings(
        base_settings,
        proxies,
        HEX_PROXY_MAX_FAILURES=3,
        HEX_PROXY_AUTH_FAILURES_TO_CLOSE=3,
        HEX_PROXY_MANUAL_CLOCK=True,
        CONCURRENT_REQUESTS=1,
    )
    result = await crawl(settings, urls(40))
    assert result.finish_reason == "finished"
    assert len(result.pages) == 40 and {p.status for p in result.pages} == {200}
    assert first.count("dave") == 3
    assert {r.outcome for r in first.records if r.session == "dave"} == {"auth"}
    assert result.hex_stats()["hex_proxy/failure/407"] == 3
    (error,) = _messages(all_logs, logging.ERROR)
    assert error.startswith(
        f"hex_proxy: proxy s004 (http://dave:***@127.0.0.1:{first.port}, HEX_PROXY_LIST entry 5)"
        " rejected its credentials with 3 consecutive 407 responses"
    )
    _assert_no_secret(_messages(all_logs))


@pytest_twisted.ensureDeferred
async def test_crawl_every_proxy_rejected_stops_the_crawl_naming_them_without_passwords(
    crawl, base_settings, proxy_gateways, all_logs
):
    first, second, _ = proxy_gateways
    proxies = [
        f"http://alice:wr0ng-s3cret@127.0.0.1:{first.port}",
        f"http://bob:wr0ng-s3cret@127.0.0.1:{first.port}",
        f"http://carol:wr0ng-s3cret@127.0.0.1:{second.port}",
    ]
    settings = _list_settings(
        base_settings,
        proxies,
        HEX_PROXY_MAX_FAILURES=100,
        HEX_PROXY_AUTH_FAILURES_TO_CLOSE=2,
        CONCURRENT_REQUESTS=4,
    )
    result = await crawl(settings, urls(40))
    assert result.finish_reason == "hex_proxy_auth_failed"
    assert {p.status for p in result.pages} <= {407}
    stops = [m for m in _messages(all_logs, logging.ERROR) if "every proxy" in m]
    assert len(stops) == 1
    for user, gateway in (("alice", first), ("bob", first), ("carol", second)):
        assert f"http://{user}:***@127.0.0.1:{gateway.port}" in stops[0]
    _assert_no_secret(_messages(all_logs))


@pytest_twisted.ensureDeferred
async def test_crawl_from_a_list_file(crawl, base_settings, proxy_gateways, tmp_path):
    first, _, third = proxy_gateways
    path = tmp_path / "proxies.txt"
    path.write_text(
        "# two proxies\n"
        f"http://alice:pa%40ss%3A1@127.0.0.1:{first.port}\n\n"
        f"http://127.0.0.1:{third.port}\n",
        encoding="utf-8",
    )
    settings = {**base_settings, **NO_GATEWAY, "HEX_PROXY_LIST_FILE": str(path)}
    result = await crawl(settings, urls(20))
    assert len(result.pages) == 20 and {p.status for p in result.pages} == {200}
    served = Counter(p.gateway_session for p in result.pages)
    assert set(served) == {"alice", "open"}, served
