"""Hook-level tests: the middlewares' methods called with real Scrapy Request/Response objects,
the way Scrapy's own tests/test_downloadermiddleware_retry.py tests RetryMiddleware."""

from __future__ import annotations

import base64
import logging
import warnings
from collections import Counter

import pytest
import pytest_twisted
from scrapy import Request
from scrapy.core.downloader.handlers.http11 import TunnelError
from scrapy.core.downloader.middleware import DownloaderMiddlewareManager
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import Headers, Response
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.error import ConnectionLost
from twisted.internet.error import ConnectionRefusedError as TxConnectionRefusedError

from scrapy_hexproxy import HexProxyConfigError, HexProxyMiddleware, SmartRetryMiddleware, _core
from scrapy_hexproxy._core import attempt_of
from scrapy_hexproxy._runtime import advance_clock

from .conftest import runtime_of


def _pair(crawler):
    return HexProxyMiddleware.from_crawler(crawler), SmartRetryMiddleware.from_crawler(crawler)


def _send(proxy, url="http://site.test/a", **meta):
    request = Request(url, meta=meta)
    assert proxy.process_request(request) is None
    return request


def _user_of(request):
    value = request.headers[b"Proxy-Authorization"]
    assert value.startswith(b"Basic ")
    return base64.b64decode(value[6:]).decode()


def test_promise_1_session_ids_are_s_and_three_digits(hook_crawler):
    proxy, _ = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1001))
    seen = {_send(proxy).meta["hex_session"] for _ in range(20000)}
    assert seen <= {f"s{i:03d}" for i in range(1001)}
    assert {"s000", "s007", "s999", "s1000"} & seen  # formats past 999 too
    proxy, _ = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=4))
    assert {_send(proxy).meta["hex_session"] for _ in range(200)} == {
        "s000",
        "s001",
        "s002",
        "s003",
    }


def test_promise_2_pick_is_uniform_among_live_sessions(hook_crawler):
    proxy, _ = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=4))
    counts = Counter(_send(proxy).meta["hex_session"] for _ in range(8000))
    assert set(counts) == {"s000", "s001", "s002", "s003"}
    assert all(1700 < n < 2300 for n in counts.values()), counts


def test_promise_2_pick_avoids_sessions_that_failed_this_request(hook_crawler):
    proxy, retry = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=3, HEX_PROXY_MAX_FAILURES=100))
    for _ in range(50):
        request = _send(proxy)
        failed = set()
        for _attempt in range(2):
            failed.add(request.meta["hex_session"])
            response = Response(request.url, status=503, request=request)
            request = retry.process_response(request, response)
            assert isinstance(request, Request)
            assert proxy.process_request(request) is None
            assert request.meta["hex_session"] not in failed
        # Every session failed this request: any live one will do rather than none.
        failed.add(request.meta["hex_session"])
        request = retry.process_response(
            request, Response(request.url, status=503, request=request)
        )
        assert proxy.process_request(request) is None
        assert request.meta["hex_session"] in failed


def test_promise_3_gateway_user_names_the_session_on_first_attempt_and_retry(hook_crawler):
    proxy, retry = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=50))
    request = _send(proxy, "https://site.test/secure")
    assert request.meta["proxy"] == "http://127.0.0.1:7777"
    assert _user_of(request) == f"USER-session-{request.meta['hex_session']}:s3cr3t-PASS"
    again = retry.process_response(request, Response(request.url, status=429, request=request))
    assert isinstance(again, Request)
    assert proxy.process_request(again) is None
    assert again.meta["hex_session"] != request.meta["hex_session"]
    assert _user_of(again) == f"USER-session-{again.meta['hex_session']}:s3cr3t-PASS"


@pytest.mark.parametrize("order", ["retry_first", "proxy_first"])
def test_promise_4_each_attempt_counted_once_whichever_middleware_sees_it(hook_crawler, order):
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURES=100)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    response = Response(request.url, status=503, request=request)
    if order == "retry_first":  # the guide's wiring: retry at 550 sees responses first
        result = retry.process_response(request, response)
        assert isinstance(result, Request)
    else:  # HexProxy at 740: it sees the response first, then the retry middleware
        assert proxy.process_response(request, response) is response
        result = retry.process_response(request, response)
        assert isinstance(result, Request)
        proxy.process_response(request, response)  # seen again: still counted once
    assert runtime_of(crawler).core.stats()["hex_proxy/failure/503"] == 1


def test_promise_4_outcome_of_an_attempt_we_never_saw_is_still_counted(hook_crawler):
    # Scrapy's own RetryMiddleware above HexProxy returns a retry copy: we see only the copy.
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURES=100)
    proxy, _ = _pair(crawler)
    request = _send(proxy)
    retried = request.replace(dont_filter=True)
    retried.meta["retry_times"] = 1
    assert proxy.process_request(retried) is None
    assert runtime_of(crawler).core.stats()["hex_proxy/failure/unobserved"] == 1
    # A redirect copy (same retry_times) is the previous attempt's success.
    redirected = retried.replace(url="http://site.test/b")
    assert proxy.process_request(redirected) is None
    assert runtime_of(crawler).core.stats()["hex_proxy/failure/unobserved"] == 1


@pytest.mark.parametrize(
    ("outcome", "key"),
    [
        (429, "hex_proxy/failure/429"),
        (403, "hex_proxy/failure/403"),
        (407, "hex_proxy/failure/407"),
        (503, "hex_proxy/failure/503"),
        (599, "hex_proxy/failure/599"),
        (ConnectionLost(), "hex_proxy/failure/ConnectionLost"),
        (OSError("reset"), "hex_proxy/failure/OSError"),
        (
            TunnelError("Could not open CONNECT tunnel [{'status': 403, 'reason': b'x'}]"),
            "hex_proxy/failure/403",
        ),
        (
            TunnelError("Could not open CONNECT tunnel [b'garbage']"),
            "hex_proxy/failure/TunnelError",
        ),
    ],
)
def test_promise_5_failures_count_against_the_session(hook_crawler, outcome, key):
    crawler = hook_crawler()
    proxy, _ = _pair(crawler)
    request = _send(proxy)
    if isinstance(outcome, int):
        proxy.process_response(request, Response(request.url, status=outcome, request=request))
    else:
        assert proxy.process_exception(request, outcome) is None
    stats = runtime_of(crawler).core.stats()
    assert {k: v for k, v in stats.items() if k.startswith("hex_proxy/failure/")} == {key: 1}


def test_promise_5_scrapy_2_15_download_exceptions_are_failures(hook_crawler):
    import scrapy.exceptions as sx

    names = [
        n
        for n in (
            "DownloadFailedError",
            "DownloadTimeoutError",  # Scrapy's own, without a cause: not a connect timeout
            "ResponseDataLossError",
        )
        if hasattr(sx, n)
    ]
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURES=100)
    proxy, _ = _pair(crawler)
    for name in names:
        request = _send(proxy)
        proxy.process_exception(request, getattr(sx, name)("boom"))
    stats = runtime_of(crawler).core.stats()
    assert all(stats[f"hex_proxy/failure/{name}"] == 1 for name in names)


@pytest.mark.parametrize("settles", ["proxy", "retry"])
def test_promise_17_a_refused_gateway_blames_nobody_spends_no_retry_and_holds_the_request(
    hook_crawler, settles
):
    from scrapy_hexproxy._outage import HELD

    crawler = hook_crawler()
    proxy, retry = _pair(crawler)
    runtime = runtime_of(crawler)
    request = _send(proxy, retry_times=2)
    try:
        copy = (proxy if settles == "proxy" else retry).process_exception(
            request, TxConnectionRefusedError()
        )
        assert isinstance(copy, Request) and copy is not request
        assert copy.meta["retry_times"] == 2 and copy.dont_filter and copy.meta[HELD]
        assert b"Proxy-Authorization" not in copy.headers
        assert runtime.core.gateway_down
        stats = runtime.core.stats()
        assert not [k for k in stats if k.startswith(("hex_proxy/failure/", "hex_proxy/retry"))]
        # While it is down, a new request is handed back to be held, not sent.
        fresh = Request("http://site.test/new")
        assert proxy.process_request(fresh) is fresh and fresh.meta[HELD]
        assert "proxy" not in fresh.meta and b"Proxy-Authorization" not in fresh.headers
    finally:
        runtime.close_begun()  # stops the probe
    assert not runtime.core.gateway_down


def test_promise_5_programming_errors_and_other_statuses_are_not_failures(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURES=2, HEX_PROXY_SESSION_POOL_SIZE=1)
    proxy, retry = _pair(crawler)
    core = runtime_of(crawler).core
    request = _send(proxy)
    assert retry.process_exception(request, ValueError("bug in a callback")) is None
    for status in (200, 404, 301):
        request = _send(proxy)
        proxy.process_response(request, Response(request.url, status=status, request=request))
    assert not [k for k in core.stats() if k.startswith("hex_proxy/failure/")]
    # A success resets the consecutive count: fail, succeed, fail -> not blacklisted at 2.
    for status in (503, 200, 503):
        request = _send(proxy)
        proxy.process_response(request, Response(request.url, status=status, request=request))
    assert core.cooling_count == 0


def test_promise_6_blacklist_after_max_failures_with_one_warning(hook_crawler, caplog):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    crawler = hook_crawler(
        HEX_PROXY_SESSION_POOL_SIZE=1, HEX_PROXY_MAX_FAILURES=3, HEX_PROXY_BLACKLIST_COOLDOWN=30
    )
    proxy, _ = _pair(crawler)
    core = runtime_of(crawler).core
    in_flight = [_send(proxy) for _ in range(5)]  # all on s000, pool of one
    for request in in_flight:
        proxy.process_response(request, Response(request.url, status=503, request=request))
    # The 4th and 5th failures were in flight on a cooling session: no second blacklist.
    assert core.stats()["hex_proxy/blacklisted"] == 1
    assert core.stats()["hex_proxy/failure/503"] == 5
    assert core.cooling_count == 1
    warnings_logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_logged) == 1
    assert "s000" in warnings_logged[0].getMessage()
    advance_clock(crawler, 29.999)
    assert core.live_count == 0
    advance_clock(crawler, 0.001)
    assert core.live_count == 1
    # Its counter was reset: two more failures don't blacklist it again.
    for _ in range(2):
        request = _send(proxy)
        proxy.process_response(request, Response(request.url, status=503, request=request))
    assert core.cooling_count == 0


async def _loop_turn():
    from twisted.internet import reactor, task

    for _ in range(3):
        await task.deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_promise_7_exhausted_pool_waits_then_sends_on_the_first_session_back(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=2, HEX_PROXY_MAX_FAILURES=1)
    proxy, _ = _pair(crawler)
    for _ in range(2):  # blacklist both sessions
        request = _send(proxy)
        proxy.process_response(request, Response(request.url, status=503, request=request))
    runtime = runtime_of(crawler)
    assert runtime.core.live_count == 0
    waiting = Request("http://site.test/next")
    pending = proxy.process_request(waiting)
    assert hasattr(pending, "__await__")  # a coroutine Scrapy awaits: not None, not a drop
    done = deferred_from_coro(pending)
    await _loop_turn()  # under asyncio the coroutine starts on the next turn of the loop
    assert not done.called and runtime.waiting == 1
    advance_clock(crawler, 299)
    await _loop_turn()
    assert not done.called  # still cooling
    advance_clock(crawler, 1)
    assert await done is None
    assert waiting.meta["hex_session"] in {"s000", "s001"}
    assert _user_of(waiting) == f"USER-session-{waiting.meta['hex_session']}:s3cr3t-PASS"


def test_promise_8_retry_is_a_copy_on_a_new_session(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=10)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    request.priority = 5
    result = retry.process_response(request, Response(request.url, status=502, request=request))
    assert isinstance(result, Request) and result is not request
    assert result.dont_filter is True
    assert result.meta["retry_times"] == 1
    assert result.priority == 4  # RETRY_PRIORITY_ADJUST = -1
    assert result.url == request.url
    assert runtime_of(crawler).core.stats()["hex_proxy/retry"] == 1


def test_promise_8_retry_codes_exceptions_and_dont_retry(hook_crawler):
    proxy, retry = _pair(hook_crawler())
    request = _send(proxy)
    response = Response(request.url, status=404, request=request)
    assert retry.process_response(request, response) is response
    request = _send(proxy, dont_retry=True)
    response = Response(request.url, status=503, request=request)
    assert retry.process_response(request, response) is response
    request = _send(proxy)
    assert isinstance(retry.process_exception(request, ConnectionLost()), Request)
    request = _send(proxy)
    assert retry.process_exception(request, KeyError("bug")) is None


@pytest.mark.parametrize("limit_from", ["setting", "meta"])
def test_promise_8_out_of_retries_the_last_response_goes_to_the_spider(hook_crawler, limit_from):
    if limit_from == "setting":
        crawler, meta = hook_crawler(HEX_PROXY_MAX_RETRIES=2), {}
    else:
        crawler, meta = hook_crawler(HEX_PROXY_MAX_RETRIES=9), {"max_retry_times": 2}
    proxy, retry = _pair(crawler)
    request = _send(proxy, **meta)
    for _ in range(2):
        request = retry.process_response(
            request, Response(request.url, status=503, request=request)
        )
        assert isinstance(request, Request)
        proxy.process_request(request)
    last = Response(request.url, status=503, request=request)
    assert retry.process_response(request, last) is last
    request = _send(proxy, retry_times=2, **meta)
    assert retry.process_exception(request, ConnectionLost()) is None  # to the errback
    stats = runtime_of(crawler).core.stats()
    assert stats["hex_proxy/retry"] == 2
    assert stats["hex_proxy/retry/max_exceeded"] == 2


def test_promise_9_consecutive_407s_flag_bad_credentials_and_stop_retrying_407(
    hook_crawler, caplog
):
    crawler = hook_crawler(HEX_PROXY_AUTH_FAILURES_TO_CLOSE=3, HEX_PROXY_MAX_FAILURES=100)
    proxy, retry = _pair(crawler)
    core = runtime_of(crawler).core
    for _ in range(2):
        request = _send(proxy)
        assert isinstance(
            retry.process_response(request, Response(request.url, status=407, request=request)),
            Request,
        )
    request = _send(proxy)  # a success in between resets the run of 407s
    retry.process_response(request, Response(request.url, status=200, request=request))
    for _ in range(3):
        request = _send(proxy)
        response = Response(request.url, status=407, request=request)
        result = retry.process_response(request, response)
    assert core.auth_failed
    assert result is response  # the third 407 is not retried any more
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "127.0.0.1" in errors[0].getMessage() and "'USER'" in errors[0].getMessage()


@pytest.mark.parametrize("via", ["response", "tunnel"])
@pytest_twisted.ensureDeferred
async def test_promise_9_407s_stop_the_crawl_even_when_407_is_not_a_failure_code(hook_crawler, via):
    crawler = hook_crawler(HEX_PROXY_FAILURE_CODES=[503], HEX_PROXY_MAX_FAILURES=100)
    proxy, retry = _pair(crawler)
    tunnel_407 = (
        "Could not open CONNECT tunnel with proxy 127.0.0.1:7777 [{'status': 407, 'reason': b'x'}]"
    )
    for _ in range(3):
        request = _send(proxy)
        if via == "response":
            retry.process_response(request, Response(request.url, status=407, request=request))
        else:
            result = retry.process_exception(request, TunnelError(tunnel_407))
    assert runtime_of(crawler).core.auth_failed
    if via == "tunnel":
        assert result is None  # the third refused tunnel is not retried any more
    later = Request("http://site.test/later")
    with pytest.raises(IgnoreRequest):  # nothing more goes out with rejected credentials
        await deferred_from_coro(proxy.process_request(later))
    assert "hex_session" not in later.meta


@pytest_twisted.ensureDeferred
async def test_promise_9_the_stop_releases_requests_waiting_for_a_session(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1, HEX_PROXY_MAX_FAILURES=1)
    proxy, retry = _pair(crawler)
    in_flight = [_send(proxy) for _ in range(3)]  # all on s000
    first = in_flight.pop(0)
    retry.process_response(first, Response(first.url, status=407, request=first))
    parked = deferred_from_coro(proxy.process_request(Request("http://site.test/parked")))
    await _loop_turn()
    assert runtime_of(crawler).waiting == 1 and not parked.called
    for request in in_flight:  # two more 407s: the third in a row stops the crawl
        retry.process_response(request, Response(request.url, status=407, request=request))
    assert runtime_of(crawler).core.auth_failed
    from twisted.internet import reactor

    parked.addTimeout(10, reactor)  # a request left parked fails here instead of hanging
    with pytest.raises(IgnoreRequest):
        await parked  # released at once, not after the 300 s cooldown
    assert runtime_of(crawler).waiting == 0


def test_cached_responses_are_nobodys_outcome(hook_crawler):
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURES=1)
    proxy, retry = _pair(crawler)
    request = _send(proxy)
    cached = Response(request.url, status=503, request=request, flags=["cached"])
    retry.process_response(request, cached)
    proxy.process_response(request, cached)
    stats = runtime_of(crawler).core.stats()
    assert not [k for k in stats if k.startswith("hex_proxy/failure/")]
    assert stats["hex_proxy/sessions/cooling"] == 0


def test_an_https_gateway_warns_that_https_targets_cannot_use_it(hook_crawler, caplog):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    _pair(hook_crawler(HEX_PROXY_GATEWAY="https://127.0.0.1:7777"))
    assert len([r for r in caplog.records if "https:// gateway" in r.getMessage()]) == 1


def test_promise_10_gateway_unset_fails_closed(hook_crawler):
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(HEX_PROXY_GATEWAY=None))
    message = str(info.value)
    assert "HEX_PROXY_GATEWAY" in message and "HEX_PROXY_ENABLED = False" in message


def test_promise_10_enabled_false_switches_both_off(hook_crawler):
    for cls in (HexProxyMiddleware, SmartRetryMiddleware):
        with pytest.raises(NotConfigured):
            cls.from_crawler(hook_crawler(HEX_PROXY_ENABLED=False, HEX_PROXY_GATEWAY=None))


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("HEX_PROXY_GATEWAY", "ftp://127.0.0.1:21"),
        ("HEX_PROXY_GATEWAY", "http://127.0.0.1"),
        ("HEX_PROXY_GATEWAY", "http://127.0.0.1:99999"),
        ("HEX_PROXY_GATEWAY", "http://127.0.0.1:7777/path"),
        ("HEX_PROXY_GATEWAY", 7777),
        ("HEX_PROXY_USER", ""),
        ("HEX_PROXY_PASS", None),
        ("HEX_PROXY_SESSION_POOL_SIZE", 0),
        ("HEX_PROXY_SESSION_POOL_SIZE", 10_000_001),
        ("HEX_PROXY_SESSION_POOL_SIZE", "twenty"),
        ("HEX_PROXY_SESSION_POOL_SIZE", 2.5),
        ("HEX_PROXY_SESSION_POOL_SIZE", 2**70),
        ("HEX_PROXY_SEED", -1),
        ("HEX_PROXY_MAX_FAILURES", 0),
        ("HEX_PROXY_BLACKLIST_COOLDOWN", -1),
        ("HEX_PROXY_BLACKLIST_COOLDOWN", "soon"),
        ("HEX_PROXY_MAX_RETRIES", -1),
        ("HEX_PROXY_RETRY_CODES", [200, 999]),
        ("HEX_PROXY_RETRY_CODES", 503),
        ("HEX_PROXY_FAILURE_CODES", ["x"]),
        ("HEX_PROXY_AUTH_FAILURES_TO_CLOSE", 0),
        ("HEX_PROXY_ENABLED", "maybe"),
        # The slips of issue 15: each stops at start, naming the setting.
        ("HEX_PROXY_RETRY_CODES", [float("inf")]),
        ("HEX_PROXY_RETRY_CODES", [403.9]),
        ("HEX_PROXY_RETRY_CODES", "403.9"),
        ("HEX_PROXY_FAILURE_CODES", [float("nan")]),
        ("HEX_PROXY_FAILURE_CODES", [10**30]),
        ("HEX_PROXY_FAILURE_CODES", [-(10**30)]),
        ("HEX_PROXY_GATEWAY", "http://127.0.0.1:0"),
        ("HEX_PROXY_GATEWAY", "http://gate way.test:7777"),
        ("HEX_PROXY_GATEWAY", "http://gate_way.test:7777"),
        ("HEX_PROXY_GATEWAY", "http://:7777"),
        ("HEX_PROXY_USER", "   "),
        ("HEX_PROXY_USER", "USER\r\nX-Injected"),
        ("HEX_PROXY_PASS", "s3cr3t-PASS\r\n"),
        ("HEX_PROXY_USERNAME_TEMPLATE", "{user}-session-{session}\r\nX-Injected"),
        ("HEX_PROXY_USERNAME_TEMPLATE", "{user}\t{session}"),
        ("HEX_PROXY_LOGSTATS_INTERVAL", 1e-9),
        ("HEX_PROXY_LOGSTATS_INTERVAL", 0.5),
    ],
)
def test_bad_settings_stop_the_crawl_with_a_message_naming_the_setting(
    hook_crawler, setting, value
):
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(**{setting: value}))
    assert setting in str(info.value)
    assert "s3cr3t-PASS" not in str(info.value)


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("HEX_PROXY_RETRY_CODES", [float("inf")], "must hold HTTP status codes (whole numbers)"),
        ("HEX_PROXY_RETRY_CODES", [403.9], "got 403.9"),
        ("HEX_PROXY_FAILURE_CODES", [10**30], "out of range for a status code"),
        ("HEX_PROXY_GATEWAY", "http://127.0.0.1:0", "port must be a number between 1 and 65535"),
        ("HEX_PROXY_GATEWAY", "http://gate_way.test:7777", "has no valid host"),
        ("HEX_PROXY_USER", " ", "must not be empty or blank"),
        ("HEX_PROXY_USERNAME_TEMPLATE", "{user}-{session}\r\n", "control characters"),
        ("HEX_PROXY_LOGSTATS_INTERVAL", 1e-9, "must be 0 (off) or at least 1 second"),
    ],
)
def test_each_slip_is_told_what_is_wrong(hook_crawler, setting, value, expected):
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(**{setting: value}))
    message = str(info.value)
    assert message.startswith(setting) and expected in message, message


def test_the_log_interval_may_be_0_or_a_second_and_more(hook_crawler):
    for interval in (0, 1, "2.5"):
        _pair(hook_crawler(HEX_PROXY_LOGSTATS_INTERVAL=interval))


def _list_file_error(hook_crawler, path) -> str:
    no_gateway = {"HEX_PROXY_GATEWAY": None, "HEX_PROXY_USER": None, "HEX_PROXY_PASS": None}
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(**no_gateway, HEX_PROXY_LIST_FILE=str(path)))
    return str(info.value)


def test_a_list_file_that_is_no_regular_file_is_refused_before_reading(hook_crawler, tmp_path):
    for path in ("/dev/zero", tmp_path):
        message = _list_file_error(hook_crawler, path)
        assert message.startswith("HEX_PROXY_LIST_FILE") and "not a regular file" in message


def test_a_list_file_is_read_up_to_its_documented_bound(hook_crawler, tmp_path):
    big = tmp_path / "proxies.txt"
    with open(big, "wb") as file:
        file.write(b"http://127.0.0.1:8001\n")
        file.truncate(_core.MAX_PROXY_FILE_BYTES + 1)  # sparse: nothing written
    message = _list_file_error(hook_crawler, big)
    assert message.startswith("HEX_PROXY_LIST_FILE") and "larger than 64 MiB" in message
    assert "1,000,000 proxies" in message


def test_promise_21_a_misspelled_setting_gets_one_warning_naming_the_closest(hook_crawler, caplog):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    crawler = hook_crawler(HEX_PROXY_MAX_FAILURE=3, HEX_PROXY_BLACKLIST_COOLDOWM="60")
    _pair(crawler)  # both middlewares: the warning is the runtime's, made once per crawler
    warned = [
        r.getMessage() for r in caplog.records if "not a scrapy-hexproxy setting" in r.getMessage()
    ]
    assert len(warned) == 2, warned
    [failure] = [m for m in warned if "HEX_PROXY_MAX_FAILURE " in m]
    assert "did you mean HEX_PROXY_MAX_FAILURES?" in failure
    [cooldown] = [m for m in warned if "HEX_PROXY_BLACKLIST_COOLDOWM" in m]
    assert "did you mean HEX_PROXY_BLACKLIST_COOLDOWN?" in cooldown
    assert all(
        r.levelno == logging.WARNING for r in caplog.records if "not a scrapy" in r.getMessage()
    )


def test_promise_21_a_name_close_to_none_of_ours_is_warned_without_a_guess(hook_crawler, caplog):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    _pair(hook_crawler(HEX_PROXY_XYZZY=1))
    [warned] = [r.getMessage() for r in caplog.records if "HEX_PROXY_XYZZY" in r.getMessage()]
    assert "did you mean" not in warned and "README" in warned


def test_promise_21_the_warning_comes_even_when_another_setting_stops_the_crawl(
    hook_crawler, caplog
):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    with pytest.raises(HexProxyConfigError):
        _pair(hook_crawler(HEX_PROXY_SESION_POOL_SIZE=5, HEX_PROXY_MAX_FAILURES=0))
    assert [
        r for r in caplog.records if "did you mean HEX_PROXY_SESSION_POOL_SIZE?" in r.getMessage()
    ]


def test_settings_from_the_command_line_are_accepted_as_strings(hook_crawler):
    crawler = hook_crawler(
        HEX_PROXY_SESSION_POOL_SIZE="7",
        HEX_PROXY_BLACKLIST_COOLDOWN="1.5",
        HEX_PROXY_RETRY_CODES="429,503",
    )
    _pair(crawler)
    assert runtime_of(crawler).core.pool_size == 7


def test_promise_11_password_in_no_repr_error_or_stat(hook_crawler):
    crawler = hook_crawler()
    proxy, _ = _pair(crawler)
    core = runtime_of(crawler).core
    for text in (repr(core), repr(proxy), str(core.stats()), repr(runtime_of(crawler).settings)):
        assert "s3cr3t-PASS" not in text
    with pytest.raises(HexProxyConfigError) as info:
        _pair(hook_crawler(HEX_PROXY_GATEWAY="http://USER:s3cr3t-PASS@127.0.0.1:7777"))
    assert "s3cr3t-PASS" not in str(info.value) and "HEX_PROXY_GATEWAY" in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def _secret_forms(user_and_password: str) -> list[str]:
    """The password and the base64 forms of "username:password" a message could carry."""
    password = user_and_password.partition(":")[2]
    encoded = base64.b64encode(user_and_password.encode()).decode()
    return [password, encoded, encoded.rstrip("=")]


def _echoed_tunnel_error(request) -> TunnelError:
    """What Scrapy raises when an echoing gateway refuses the CONNECT with the credentials as
    its reason phrase."""
    header = request.headers[b"Proxy-Authorization"].decode()
    reason = f"{header} ({_user_of(request)})".encode()
    return TunnelError(
        "Could not open CONNECT tunnel with proxy 127.0.0.1:7777"
        f" [{{'status': 407, 'reason': {reason!r}}}]"
    )


def test_promise_11_a_tunnel_error_quoting_the_credentials_is_redacted(hook_crawler, all_logs):
    crawler = hook_crawler(HEX_PROXY_MAX_RETRIES=1, HEX_PROXY_AUTH_FAILURES_TO_CLOSE=100)
    proxy, retry = _pair(crawler)
    request = _send(proxy, "https://site.test/a")
    secrets = _secret_forms(_user_of(request))
    again = retry.process_exception(request, _echoed_tunnel_error(request))
    assert isinstance(again, Request)
    assert proxy.process_request(again) is None
    secrets += _secret_forms(_user_of(again))
    # Out of retries: the exception handed on is a TunnelError whose message holds no secret.
    # (Made before the attempt settles: settling takes the credentials off the request.)
    echoed = _echoed_tunnel_error(again)
    with pytest.raises(TunnelError) as info:
        retry.process_exception(again, echoed)
    shown = str(info.value)
    assert "Could not open CONNECT tunnel" in shown and "407" in shown and "***" in shown
    for secret in secrets:
        assert secret not in shown and secret not in repr(info.value.args)
    logged = [r.getMessage() for r in all_logs.records]
    assert any("Retrying" in m for m in logged) and any("Gave up retrying" in m for m in logged)
    for message in logged:
        assert not any(secret in message for secret in secrets), message
    # HexProxy alone (no retry middleware) hands on the same redacted copy.
    with pytest.raises(TunnelError) as info:
        proxy.process_exception(again, echoed)
    assert not any(secret in str(info.value) for secret in secrets)
    # An exception that holds no secret goes on as it is.
    plain = TunnelError("Could not open CONNECT tunnel [{'status': 407, 'reason': b'No'}]")
    assert proxy.process_exception(_send(proxy), plain) is None


def test_core_redact_takes_every_form_of_the_password(hook_crawler):
    core = runtime_of(hook_crawler()).core
    assert core.redact("nothing here") == "nothing here"
    header = base64.b64encode(b"USER-session-s007:s3cr3t-PASS").decode()
    assert core.redact(f"407 Basic {header}") == "407 Basic ***"
    assert core.redact("pw=s3cr3t-PASS;") == "pw=***;"
    inner = base64.b64encode(b"xProxy-Authorization: USER:s3cr3t-PASS").decode()
    assert core.redact(f"({inner})") == "(***)"


def test_promise_12_warns_once_when_scrapy_retry_is_also_enabled(hook_crawler, caplog):
    caplog.set_level(logging.WARNING, logger="scrapy_hexproxy")
    wiring = {
        "scrapy_hexproxy.HexProxyMiddleware": 350,
        "scrapy_hexproxy.SmartRetryMiddleware": 550,
    }
    SmartRetryMiddleware.from_crawler(hook_crawler(DOWNLOADER_MIDDLEWARES=wiring))
    doubled = [r for r in caplog.records if "double" in r.getMessage()]
    assert len(doubled) == 1 and "RetryMiddleware" in doubled[0].getMessage()
    caplog.clear()
    SmartRetryMiddleware.from_crawler(hook_crawler())  # the guide's wiring disables it
    assert not [r for r in caplog.records if "double" in r.getMessage()]


def test_promise_13_no_deprecation_warning_from_the_middleware_manager(hook_crawler):
    crawler = hook_crawler()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manager = DownloaderMiddlewareManager.from_crawler(crawler)
    names = {type(mw).__name__ for mw in manager.middlewares}
    assert {"HexProxyMiddleware", "SmartRetryMiddleware"} <= names


# -- the core's fast path: reading the request's slots instead of its properties -------------


def test_fast_path_is_used_on_the_scrapy_versions_that_make_headers_lazily(hook_crawler):
    import scrapy
    from packaging.version import Version
    from scrapy.http.headers import Headers

    crawler = hook_crawler()
    _pair(crawler)
    probes = runtime_of(crawler).probes
    if probes.public_api_only:  # the leg that forces every fallback
        assert (probes.lazy_headers_type, probes.response_flags_slot) == (None, False)
        assert (probes.headers_are_dicts, probes.auth_proxy_key) == (False, None)
        return
    version = Version(scrapy.__version__)
    # A request's headers are a slot, None until used, from 2.15 on (2.11 ... 2.14 build them
    # eagerly); Headers is made by dict.__new__ only from 2.18 on (before, CaselessDict's own
    # __new__), so the fast path holds from 2.18.
    assert probes.lazy_headers_type is (Headers if version >= Version("2.18") else None)
    # A response's flags are a slot, None until used, from 2.15 on; before, a plain attribute.
    assert probes.response_flags_slot is (version >= Version("2.15"))
    # Every supported version stores headers as lists and notes the header's proxy there.
    assert probes.headers_are_dicts
    assert probes.auth_proxy_key == "_auth_proxy"


@pytest.mark.parametrize("flags", [None, [], ["cached"], ["partial", "cached"], ["partial"]])
def test_a_response_is_cached_exactly_when_its_flags_say_so_however_they_are_kept(
    hook_crawler, flags
):
    proxy, retry = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1, HEX_PROXY_MAX_FAILURES=1))
    request = _send(proxy)
    response = Response(request.url, status=503, request=request, flags=flags)
    if flags == []:
        _ = response.flags  # the property makes the list: read through it first
    retry.process_response(request, response)
    core = runtime_of(proxy._runtime.crawler).core
    counted = "cached" not in (flags or [])
    assert core.stats().get("hex_proxy/failure/503", 0) == (1 if counted else 0)
    assert core.cooling_count == (1 if counted else 0)


def test_attempts_on_a_session_share_its_id_and_header_but_never_a_header_list(hook_crawler):
    # Pools of up to 1,024 sessions keep each session's id and header (immutable str and
    # bytes); the list Headers keeps values in is each request's own.
    proxy, _ = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1))
    first, second = _send(proxy), _send(proxy)
    assert first.meta["hex_session"] == second.meta["hex_session"] == "s000"
    assert _user_of(first) == _user_of(second) == "USER-session-s000:s3cr3t-PASS"
    first.headers.appendlist(b"Proxy-Authorization", b"Basic other")
    assert second.headers.getlist(b"Proxy-Authorization") == [
        b"Basic " + base64.b64encode(b"USER-session-s000:s3cr3t-PASS")
    ]


def test_bind_cookiejar_keeps_a_jar_the_user_set_to_the_id_of_the_session_used(hook_crawler):
    # A follow-up request's jar set to the id its parent came back on (the Scrapy idiom
    # meta={"cookiejar": response.meta["cookiejar"]}) is the user's, even when the follow-up
    # is sent on that same session: its retry keeps it.
    proxy, retry = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=2, HEX_PROXY_BIND_COOKIEJAR=True))
    parent = _send(proxy)
    chosen = parent.meta["cookiejar"]
    assert chosen is parent.meta["hex_session"]  # the jar binding set: the id itself
    for _ in range(50):
        child = _send(proxy, cookiejar=chosen)
        if child.meta["hex_session"] == chosen:
            break
    assert child.meta["hex_session"] == chosen and child.meta["cookiejar"] is chosen
    again = retry.process_response(child, Response(child.url, status=503, request=child))
    assert isinstance(again, Request)
    assert proxy.process_request(again) is None
    assert again.meta["hex_session"] != chosen and again.meta["cookiejar"] is chosen


@pytest.mark.parametrize("pool_size", [3, 1024, 1025, 5000])
def test_every_attempt_carries_the_header_of_its_own_session_id(hook_crawler, pool_size):
    # Each session id rotates after 2 uses: cached or made per attempt (pools over 1,024),
    # the header always names the id in meta, and ids of a slot's generations never mix.
    proxy, _ = _pair(
        hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=pool_size, HEX_PROXY_SESSION_MAX_USES=2)
    )
    core = runtime_of(proxy._runtime.crawler).core
    seen = Counter()
    for _ in range(3 * pool_size if pool_size < 10 else 400):
        request = _send(proxy)
        session = request.meta["hex_session"]
        # The id the core derives from the number sent, not one read back from the cache.
        assert session == core.session_id(attempt_of(request.meta["_hex_attempt"])[0])
        assert _user_of(request) == f"USER-session-{session}:s3cr3t-PASS"
        seen[session] += 1
    assert max(seen.values()) <= 2
    if pool_size == 3:
        assert len(seen) >= 5  # 9 attempts, at most 2 on an id: rotated ids were handed out


@pytest.mark.parametrize("given", ["nothing", "headers and meta"])
def test_headers_and_meta_written_by_the_core_behave_as_scrapys_own(hook_crawler, given):
    proxy, _ = _pair(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1))
    if given == "nothing":
        request = Request("http://site.test/a", encoding="latin-1")
    else:
        request = Request(
            "http://site.test/a",
            headers={"Accept": "text/html", "proxy-authorization": "stale"},
            meta={"mine": 1},
            encoding="latin-1",
        )
    assert proxy.process_request(request) is None
    expected = b"Basic " + base64.b64encode(b"USER-session-s000:s3cr3t-PASS")
    headers = request.headers
    # Every way of reading the header sees one value, whatever case the key is asked in.
    assert headers[b"Proxy-Authorization"] == expected
    assert headers.get("proxy-authorization") == expected
    assert headers.getlist("PROXY-AUTHORIZATION") == [expected]
    assert "Proxy-Authorization" in headers
    assert headers.encoding == "latin-1"
    assert type(headers) is Headers and vars(headers) == vars(Headers(encoding="latin-1"))
    assert request.meta["proxy"] == "http://127.0.0.1:7777"
    assert request.meta["hex_session"] == "s000"
    # Writes through Scrapy's own API still normalise, and copies carry everything.
    headers["x-later"] = "yes"
    assert headers[b"X-Later"] == b"yes"
    copy = request.replace(url="http://site.test/b")
    assert copy.headers[b"Proxy-Authorization"] == expected
    assert copy.meta["hex_session"] == "s000"
    if given == "headers and meta":
        assert headers[b"Accept"] == b"text/html"
        assert request.meta["mine"] == 1
        assert len(headers.getlist(b"Proxy-Authorization")) == 1  # replaced, not appended


def test_user_subclasses_may_take_their_own_init_arguments(hook_crawler):
    """The hooks' Rust base takes the runtime when the object is made; a subclass may still
    add arguments of its own, as with any Python class."""
    from scrapy_hexproxy._runtime import Runtime

    class Tagged(HexProxyMiddleware):
        def __init__(self, runtime, tag, *, loud=False):
            super().__init__(runtime)
            self.tag, self.loud = tag, loud

        @classmethod
        def from_crawler(cls, crawler):
            return cls(Runtime.of(crawler), "mine", loud=True)

    proxy = Tagged.from_crawler(hook_crawler(HEX_PROXY_SESSION_POOL_SIZE=1))
    assert (proxy.tag, proxy.loud) == ("mine", True)
    assert _send(proxy).meta["hex_session"] == "s000"
