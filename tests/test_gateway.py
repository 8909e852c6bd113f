"""The loopback gateway (scrapy_hexproxy.testing) spoken to with plain sockets, no Scrapy."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from scrapy_hexproxy.testing import CAPTCHA_PAGE, Behavior, Gateway, Record, _parse_ban

PASSWORD = "s3cret-Pa55"


def auth(session: str | None = "s007", user: str = "USER", password: str = PASSWORD) -> str:
    username = user if session is None else f"{user}-session-{session}"
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


@pytest.fixture
def gw() -> Iterator[Gateway]:
    with Gateway("USER", PASSWORD) as gateway:
        yield gateway


def connect(gw: Gateway | SimpleNamespace, timeout: float = 2.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(gw.host, gw.port, timeout=timeout)


def get(
    gw: Gateway | SimpleNamespace,
    url: str = "http://site.test/page/3",
    session: str = "s007",
    **kw: str,
) -> tuple[int, dict[str, str], bytes]:
    conn = connect(gw)
    try:
        conn.request("GET", url, headers={"Proxy-Authorization": auth(session, **kw)})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw(gw: Gateway, data: bytes, timeout: float = 2.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the gateway closes it."""
    with socket.create_connection((gw.host, gw.port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def tls_client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def tunnel(gw: Gateway, session: str = "s007", host: str = "site.test", port: int = 443):
    conn = http.client.HTTPSConnection(gw.host, gw.port, timeout=2, context=tls_client_context())
    conn.set_tunnel(host, port, headers={"Proxy-Authorization": auth(session)})
    return conn


# --------------------------------------------------------------------------- origin answers


def test_plain_get_answers_as_origin_with_the_session(gw: Gateway) -> None:
    status, headers, body = get(gw)
    assert status == 200
    assert headers["X-Hex-Session"] == "s007"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    assert b'<p id="session">s007</p>' in body
    assert b'<p id="url">http://site.test/page/3</p>' in body
    assert gw.records == [
        Record("s007", "http", "GET", "http://site.test/page/3", "ok", "USER-session-s007")
    ]


def test_links_page_links_to_n_pages_deterministically(gw: Gateway) -> None:
    _, _, body = get(gw, "http://site.test/links/3")
    assert body.count(b"<a href=") == 3
    for i in range(3):
        assert f'<a href="/page/{i}">'.encode() in body
    assert get(gw, "http://site.test/links/3")[2] == body


def test_status_path_makes_the_origin_answer_that_status(gw: Gateway) -> None:
    status, headers, body = get(gw, "http://site.test/status/404")
    assert (status, body) == (404, b"hexgate: 404")
    assert headers["X-Hex-Session"] == "s007"
    assert gw.records[-1].outcome == "status:404"


def test_keep_alive_serves_three_requests_on_one_connection(gw: Gateway) -> None:
    conn = connect(gw)
    try:
        socks = []
        for i, session in enumerate(["s001", "s002", "s001"]):
            conn.request(
                "GET", f"http://site.test/page/{i}", headers={"Proxy-Authorization": auth(session)}
            )
            resp = conn.getresponse()
            assert resp.getheader("X-Hex-Session") == session
            assert f"http://site.test/page/{i}".encode() in resp.read()
            socks.append(conn.sock)
        assert socks[0] is not None and socks[0] is socks[1] is socks[2]
    finally:
        conn.close()
    assert gw.counts() == {"s001": 2, "s002": 1}


def test_connection_close_is_honoured(gw: Gateway) -> None:
    request = (
        "GET http://site.test/ HTTP/1.1\r\nHost: site.test\r\n"
        f"Proxy-Authorization: {auth()}\r\nConnection: close\r\n\r\n"
    )
    reply = raw(gw, request.encode())  # returns only because the gateway closes
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in reply


def test_keep_alive_false_closes_after_every_answer() -> None:
    with Gateway("USER", PASSWORD, keep_alive=False) as gateway:
        request = f"GET http://site.test/ HTTP/1.1\r\nProxy-Authorization: {auth()}\r\n\r\n"
        reply = raw(gateway, request.encode())  # returns only because the gateway closes
        assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"\r\nConnection: close\r\n" in reply


def test_http_1_0_closes_by_default(gw: Gateway) -> None:
    request = f"GET http://site.test/ HTTP/1.0\r\nProxy-Authorization: {auth()}\r\n\r\n"
    assert raw(gw, request.encode()).startswith(b"HTTP/1.1 200 OK\r\n")


def test_request_bodies_are_read_with_content_length_and_chunked(gw: Gateway) -> None:
    conn = connect(gw)
    try:
        headers = {"Proxy-Authorization": auth()}
        conn.request("POST", "http://site.test/form", body=b"a=1&b=2", headers=headers)
        assert conn.getresponse().read().count(b"session") == 1
        conn.request("POST", "http://site.test/form", body=iter([b"x" * 10]), headers=headers)
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("X-Hex-Session")) == (200, "s007")
        resp.read()
        conn.request("GET", "http://site.test/after", headers=headers)
        assert b"http://site.test/after" in conn.getresponse().read()
    finally:
        conn.close()
    assert [r.method for r in gw.records] == ["POST", "POST", "GET"]


def test_head_gets_headers_only(gw: Gateway) -> None:
    conn = connect(gw)
    try:
        conn.request("HEAD", "http://site.test/", headers={"Proxy-Authorization": auth()})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
        assert int(resp.getheader("Content-Length")) > 0
    finally:
        conn.close()


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    ("headers", "session"),
    [
        pytest.param({}, None, id="missing"),
        pytest.param({"Proxy-Authorization": auth(password="wrong")}, "s007", id="password"),
        pytest.param({"Proxy-Authorization": auth(user="OTHER")}, "s007", id="user"),
        pytest.param({"Proxy-Authorization": auth(session=None)}, None, id="no-session"),
        pytest.param({"Proxy-Authorization": auth(session="")}, None, id="empty-session"),
        pytest.param({"Proxy-Authorization": "Basic !!!"}, None, id="garbage"),
        pytest.param({"Proxy-Authorization": "Bearer abc"}, None, id="scheme"),
    ],
)
def test_bad_credentials_get_407(gw: Gateway, headers: dict, session: str | None) -> None:
    conn = connect(gw)
    try:
        conn.request("GET", "http://site.test/", headers=headers)
        resp = conn.getresponse()
        assert resp.status == 407
        assert resp.getheader("Proxy-Authenticate") == 'Basic realm="hexgate"'
        resp.read()
        # The connection stays usable: the client may retry with credentials.
        conn.request("GET", "http://site.test/", headers={"Proxy-Authorization": auth()})
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    first = gw.records[0]
    assert (first.kind, first.outcome, first.session) == ("http", "auth", session)


def test_a_407_with_a_parsable_session_counts_as_an_attempt(gw: Gateway) -> None:
    assert get(gw, password="wrong")[0] == 407
    assert gw.count("s007") == 1


# --------------------------------------------------------------------------- behaviours


def test_answer_behavior_answers_that_status(gw: Gateway) -> None:
    gw.set_behavior("s007", Behavior.answer(429))
    status, headers, body = get(gw)
    assert (status, body) == (429, b"hexgate: 429")
    assert headers["X-Hex-Session"] == "s007"
    assert get(gw, session="s008")[0] == 200  # other sessions are unaffected
    assert [r.outcome for r in gw.records] == ["status:429", "ok"]


def test_close_behavior_drops_the_connection_without_response(gw: Gateway) -> None:
    gw.set_behavior("s007", Behavior.close())
    request = f"GET http://site.test/ HTTP/1.1\r\nProxy-Authorization: {auth()}\r\n\r\n"
    assert raw(gw, request.encode()) == b""
    with pytest.raises(http.client.RemoteDisconnected):
        get(gw)
    assert [r.outcome for r in gw.records] == ["closed", "closed"]
    assert gw.count("s007") == 2


def test_hang_behavior_never_answers_and_blocks_nobody(gw: Gateway) -> None:
    gw.set_behavior("s007", Behavior.hang())
    conn = connect(gw, timeout=0.2)
    try:
        conn.request("GET", "http://site.test/", headers={"Proxy-Authorization": auth()})
        with pytest.raises(socket.timeout):
            conn.getresponse()
        assert get(gw, session="s008")[0] == 200
    finally:
        conn.close()
    assert [r.outcome for r in gw.records] == ["hang", "ok"]


@pytest.mark.parametrize("close", [False, True])
def test_fail_for_fails_then_answers_normally(gw: Gateway, close: bool) -> None:
    gw.set_behavior("s007", Behavior.fail_for(0.3, close=close))
    if close:
        with pytest.raises(http.client.RemoteDisconnected):
            get(gw)
    else:
        assert get(gw)[0] == 503
    time.sleep(0.35)
    assert get(gw)[0] == 200
    assert [r.outcome for r in gw.records] == ["closed" if close else "status:503", "ok"]


def test_default_behavior_and_clear_behavior(gw: Gateway) -> None:
    gw.set_default_behavior(Behavior.answer(503))
    gw.set_behavior("s001", Behavior.normal())
    gw.set_behavior("s002", Behavior.answer(403))
    assert get(gw, session="s001")[0] == 200
    assert get(gw, session="s002")[0] == 403
    assert get(gw, session="s003")[0] == 503
    gw.clear_behavior("s002")
    assert get(gw, session="s002")[0] == 503
    gw.set_default_behavior(Behavior.normal())
    assert get(gw, session="s002")[0] == 200


def test_behavior_constructors_validate() -> None:
    assert Behavior.fail_for(1.0) == Behavior("status", 503, 1.0)
    assert Behavior.fail_for(1.0, status=429) == Behavior("status", 429, 1.0)
    with pytest.raises(ValueError):
        Behavior.answer(42)
    with pytest.raises(ValueError):
        Behavior.fail_for(1.0, status=403, close=True)
    with pytest.raises(ValueError):
        Behavior.fail_for(-1.0)
    with pytest.raises(ValueError):
        Behavior("explode")


# --------------------------------------------------------------------------- CONNECT tunnels


def test_connect_terminates_tls_and_attributes_tunnel_requests_to_the_session(
    gw: Gateway,
) -> None:
    conn = tunnel(gw, "s042", "site.test", 443)
    try:
        for path in ["/page/1", "/links/2"]:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert resp.getheader("X-Hex-Session") == "s042"
            assert f'<p id="url">https://site.test{path}</p>'.encode() in body
    finally:
        conn.close()
    assert [(r.kind, r.target, r.outcome, r.session) for r in gw.records] == [
        ("connect", "site.test:443", "ok", "s042"),
        ("tunnel", "https://site.test/page/1", "ok", "s042"),
        ("tunnel", "https://site.test/links/2", "ok", "s042"),
    ]
    assert gw.records[1].username == "USER-session-s042"
    # An opened tunnel's attempts are the requests inside it.
    assert gw.count("s042") == 2


def test_close_in_tunnel_opens_the_tunnel_then_drops_the_request_inside(gw: Gateway) -> None:
    gw.set_behavior("s042", Behavior.close(tunnel=True))
    conn = tunnel(gw, "s042", "site.test", 443)  # the CONNECT itself is answered 200
    try:
        conn.request("GET", "/page/1")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            conn.getresponse()
    finally:
        conn.close()
    assert [(r.kind, r.outcome) for r in gw.records] == [("connect", "ok"), ("tunnel", "closed")]
    assert gw.count("s042") == 1


def test_tunnel_url_keeps_a_non_default_port(gw: Gateway) -> None:
    conn = tunnel(gw, "s001", "site.test", 8443)
    try:
        conn.request("GET", "/x")
        assert b"https://site.test:8443/x" in conn.getresponse().read()
    finally:
        conn.close()


def connect_request(session: str | None = "s007", password: str = PASSWORD) -> bytes:
    lines = ["CONNECT site.test:443 HTTP/1.1", "Host: site.test:443"]
    if session is not None:
        lines.append(f"Proxy-Authorization: {auth(session, password=password)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_connect_refused_with_a_status_behavior(gw: Gateway) -> None:
    gw.set_behavior("s007", Behavior.answer(403))
    reply = raw(gw, connect_request())
    assert reply.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert reply.endswith(b"hexgate: 403")
    assert [(r.kind, r.outcome) for r in gw.records] == [("connect", "status:403")]
    assert gw.count("s007") == 1


def test_connect_close_and_bad_credentials(gw: Gateway) -> None:
    gw.set_behavior("s001", Behavior.close())
    assert raw(gw, connect_request("s001")) == b""
    reply = raw(gw, connect_request("s002", password="wrong"))
    assert reply.startswith(b"HTTP/1.1 407 ")
    assert b'Proxy-Authenticate: Basic realm="hexgate"' in reply
    assert raw(gw, connect_request(None)).startswith(b"HTTP/1.1 407 ")
    assert [(r.session, r.outcome) for r in gw.records] == [
        ("s001", "closed"),
        ("s002", "auth"),
        (None, "auth"),
    ]
    assert gw.counts() == {"s001": 1, "s002": 1}


def test_behavior_set_while_a_tunnel_is_open_applies_to_its_next_request(gw: Gateway) -> None:
    conn = tunnel(gw)
    try:
        conn.request("GET", "/a")
        assert conn.getresponse().read()
        gw.set_behavior("s007", Behavior.answer(429))
        conn.request("GET", "/b")
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (429, b"hexgate: 429")
    finally:
        conn.close()
    assert gw.records[-1] == Record(
        "s007", "tunnel", "GET", "https://site.test/b", "status:429", "USER-session-s007"
    )


# --------------------------------------------------------------------------- list proxies


def _get_as(gw: Gateway, authorization: str | None) -> tuple[int, str | None]:
    conn = connect(gw)
    try:
        headers = {} if authorization is None else {"Proxy-Authorization": authorization}
        conn.request("GET", "http://site.test/page/1", headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Hex-Session")
    finally:
        conn.close()


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_open_session_serves_the_unknown_and_checks_the_known() -> None:
    with Gateway("USER", PASSWORD, accounts={"alice": "pw-a"}, open_session="open") as gw:
        assert _get_as(gw, None) == (200, "open")
        assert _get_as(gw, _basic("stranger", "anything")) == (200, "open")
        assert _get_as(gw, "Bearer not-basic") == (200, "open")
        assert _get_as(gw, _basic("alice", "pw-a")) == (200, "alice")
        assert _get_as(gw, _basic("alice", "wrong"))[0] == 407
        assert _get_as(gw, auth("s003")) == (200, "s003")
        assert _get_as(gw, auth("s003", password="wrong"))[0] == 407
        assert [(r.session, r.username, r.outcome) for r in gw.records] == [
            ("open", None, "ok"),
            ("open", "stranger", "ok"),
            ("open", None, "ok"),
            ("alice", "alice", "ok"),
            ("alice", "alice", "auth"),
            ("s003", "USER-session-s003", "ok"),
            ("s003", "USER-session-s003", "auth"),
        ]


@pytest.mark.parametrize("host", ["site.test", "127.0.0.1", "localhost", "10.1.2.3"])
def test_the_tunnel_certificate_names_the_connect_host(gw: Gateway, host: str) -> None:
    from cryptography import x509

    conn = tunnel(gw, host=host)
    try:
        conn.request("GET", "/page/1")
        assert conn.getresponse().status == 200
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    names = (
        x509.load_der_x509_certificate(der)
        .extensions.get_extension_for_class(x509.SubjectAlternativeName)
        .value
    )
    assert host in [*names.get_values_for_type(x509.DNSName)] + [
        str(a) for a in names.get_values_for_type(x509.IPAddress)
    ]


# --------------------------------------------------------------------------- observation


def test_counts_records_and_reset(gw: Gateway) -> None:
    for session in ["s001", "s002", "s001"]:
        get(gw, session=session)
    assert gw.count("s001") == 2
    assert gw.count("s999") == 0
    assert gw.counts() == {"s001": 2, "s002": 1}
    snapshot = gw.records
    snapshot.clear()  # a copy: the gateway's own list is untouched
    assert len(gw.records) == 3
    gw.reset()
    assert gw.records == [] and gw.counts() == {}


# --------------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NONSENSE\r\n\r\n",
        b"GET /relative HTTP/1.1\r\n\r\n",
        b"GET http://site.test/ HTTP/2.0\r\n\r\n",
        b"GET http://site.test/ HTTP/1.1\r\nbad header\r\n\r\n",
        b"GET http://site.test/ HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"CONNECT site.test HTTP/1.1\r\n\r\n",
        b"\xff\xfe GET\r\n\r\n",
    ],
)
def test_malformed_requests_get_400_and_close(gw: Gateway, request_bytes: bytes) -> None:
    assert raw(gw, request_bytes).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert gw.records[-1].outcome == "bad_request"
    assert gw.counts() == {}
    assert get(gw)[0] == 200


def test_client_disconnecting_mid_request_does_not_hurt_the_gateway(gw: Gateway) -> None:
    with socket.create_connection((gw.host, gw.port)) as s:
        s.sendall(b"GET http://site.test/ HTTP/1.1\r\nContent-Len")
    with socket.create_connection((gw.host, gw.port)) as s:
        s.sendall(
            f"POST http://site.test/ HTTP/1.1\r\nProxy-Authorization: {auth()}\r\n"
            "Content-Length: 100\r\n\r\nshort".encode()
        )
    assert get(gw)[0] == 200


def test_stop_returns_quickly_with_hung_connections_and_is_idempotent() -> None:
    gateway = Gateway("USER", PASSWORD).start()
    gateway.set_default_behavior(Behavior.hang())
    clients = [socket.create_connection((gateway.host, gateway.port)) for _ in range(3)]
    try:
        clients[0].sendall(
            f"GET http://a.test/ HTTP/1.1\r\nProxy-Authorization: {auth()}\r\n\r\n".encode()
        )
        clients[1].sendall(connect_request())
        clients[2].sendall(b"GET http://a.test/ HTTP/1.1\r\n")  # incomplete headers
        deadline = time.monotonic() + 2
        while len(gateway.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(r.outcome for r in gateway.records) == ["hang", "hang"]
        started = time.monotonic()
        gateway.stop()
        assert time.monotonic() - started < 1.5
        for c in clients:
            c.settimeout(1)
            try:  # released: closed without an answer (reset if not even accepted yet)
                assert c.recv(100) == b""
            except ConnectionResetError:
                pass
    finally:
        for c in clients:
            c.close()
    gateway.stop()
    with pytest.raises(OSError):
        socket.create_connection((gateway.host, gateway.port), timeout=1).close()


def test_stop_releases_an_open_tls_tunnel() -> None:
    gateway = Gateway("USER", PASSWORD).start()
    conn = tunnel(gateway)
    try:
        conn.request("GET", "/")
        assert conn.getresponse().read()
        started = time.monotonic()
        gateway.stop()
        assert time.monotonic() - started < 1.5
    finally:
        conn.close()


def test_the_password_never_shows(gw: Gateway) -> None:
    get(gw, password="wrong")
    get(gw)
    assert PASSWORD not in repr(gw)
    assert repr(gw) == f"<Gateway {gw.url} user='USER'>"
    assert gw.url == f"http://127.0.0.1:{gw.port}" and gw.host == "127.0.0.1"
    assert "wrong" not in repr(gw.records) and PASSWORD not in repr(gw.records)


def test_url_before_start_raises_and_double_start_raises() -> None:
    gateway = Gateway()
    assert "not started" in repr(gateway)
    with pytest.raises(RuntimeError):
        _ = gateway.url
    gateway.stop()  # harmless before start
    with gateway:
        with pytest.raises(RuntimeError):
            gateway.start()


# --------------------------------------------------------------------------- plugin and CLI


def test_pytest_plugin_fixtures(hexproxy_gateway: Gateway, hexproxy_settings: dict) -> None:
    from twisted.internet import reactor

    assert hexproxy_settings["HEX_PROXY_GATEWAY"] == hexproxy_gateway.url
    assert isinstance(hexproxy_settings["HEX_PROXY_SEED"], int)  # deterministic by default
    # The reactor pytest-twisted installed, so that a CrawlerRunner accepts the settings.
    module, _, name = hexproxy_settings["TWISTED_REACTOR"].rpartition(".")
    assert type(reactor) is getattr(sys.modules[module], name)
    assert hexproxy_settings["DOWNLOADER_MIDDLEWARES"] == {
        "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
        "scrapy_hexproxy.HexProxyMiddleware": 350,
        "scrapy_hexproxy.SmartRetryMiddleware": 550,
    }
    user, password = hexproxy_settings["HEX_PROXY_USER"], hexproxy_settings["HEX_PROXY_PASS"]
    status, headers, _ = get(hexproxy_gateway, session="s000", user=user, password=password)
    assert (status, headers["X-Hex-Session"]) == (200, "s000")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_command_line_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scrapy_hexproxy.testing",
            "--password",
            PASSWORD,
            "--ban",
            "s001=403",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        host, port = url.removeprefix("http://").split(":")
        assert host == "127.0.0.1"
        cli = SimpleNamespace(host=host, port=int(port))
        assert get(cli, session="s001")[0] == 403
        assert get(cli, session="s002")[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("s001=403", ("s001", None, Behavior.answer(403))),
        ("s001=429,Retry-After=30", ("s001", None, Behavior.answer(429, (("Retry-After", "30"),)))),
        (
            "s001=503,Retry-After=Wed, 21 Oct 2026 07:28:00 GMT,X-Why=test",
            (
                "s001",
                None,
                Behavior.answer(
                    503, (("Retry-After", "Wed, 21 Oct 2026 07:28:00 GMT"), ("X-Why", "test"))
                ),
            ),
        ),
        ("s001=page", ("s001", None, Behavior.page(CAPTCHA_PAGE))),
        ("s001=page,503", ("s001", None, Behavior.page(CAPTCHA_PAGE, 503))),
        ("s001=echo", ("s001", None, Behavior.echo_credentials_in())),
        ("s001=echo,401", ("s001", None, Behavior.echo_credentials_in(401))),
        ("s001=close", ("s001", None, Behavior.close())),
        ("s001=close,tunnel", ("s001", None, Behavior.close(tunnel=True))),
        ("s001=hang", ("s001", None, Behavior.hang())),
        ("s001=fail,5", ("s001", None, Behavior.fail_for(5))),
        ("s001=fail,2.5,429", ("s001", None, Behavior.fail_for(2.5, status=429))),
        ("s001=fail,5,close", ("s001", None, Behavior.fail_for(5, close=True))),
        ("s001=ok", ("s001", None, Behavior.normal())),
        ("*=503", (None, None, Behavior.answer(503))),
        ("*@shop.test=403", (None, "shop.test", Behavior.answer(403))),
        ("s002@shop.test=close", ("s002", "shop.test", Behavior.close())),
    ],
)
def test_command_line_ban_makes_every_behavior(spec: str, expected: tuple) -> None:
    assert _parse_ban(spec) == expected


def test_command_line_ban_page_reads_a_file(tmp_path) -> None:
    page = tmp_path / "block.html"
    page.write_text("<html>blocked</html>", encoding="utf-8")
    assert _parse_ban(f"s001=page,@{page}") == ("s001", None, Behavior.page("<html>blocked</html>"))


@pytest.mark.parametrize(
    "spec",
    ["s001", "=403", "s001@=403", "s001=teapot", "s001=403,nope", "s001=fail,x", "s001=hang,1"],
)
def test_command_line_ban_refuses_what_it_cannot_read(spec: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scrapy_hexproxy.testing", "--ban", spec],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert repr(spec) in proc.stderr or "SESSION=BEHAVIOR" in proc.stderr


def _serve_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "scrapy_hexproxy.testing", "--password", PASSWORD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )


def _ask(cli: SimpleNamespace, method: str, path: str) -> object:
    conn = connect(cli)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "application/json"
        return json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_command_line_bans_logs_each_request_and_keeps_records_until_asked() -> None:
    proc = _serve_cli(
        "-v",
        "--ban",
        "s001=page",
        "--ban",
        "s002=429,Retry-After=30",
        "--ban",
        "*@shop.test=403",
        "--ban",
        "s003=close",
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        host, port = proc.stdout.readline().strip().removeprefix("http://").split(":")
        cli = SimpleNamespace(host=host, port=int(port))
        status, _, body = get(cli, session="s001")
        assert (status, body.decode()) == (200, CAPTCHA_PAGE)
        status, headers, _ = get(cli, session="s002")
        assert (status, headers["Retry-After"]) == (429, "30")
        assert get(cli, "http://shop.test/item/1", session="s004")[0] == 403
        assert get(cli, "http://site.test/item/1", session="s004")[0] == 200
        with pytest.raises(http.client.RemoteDisconnected):
            get(cli, session="s003")
        time.sleep(1.2)  # the gateway used to forget its records every 0.5 s
        assert _ask(cli, "GET", "/_hexgate/counts") == {
            "s001": 1,
            "s002": 1,
            "s004": 2,
            "s003": 1,
        }
        records = _ask(cli, "GET", "/_hexgate/records")
        assert isinstance(records, list)
        assert [(r["session"], r["target"], r["outcome"]) for r in records] == [
            ("s001", "http://site.test/page/3", "status:200"),
            ("s002", "http://site.test/page/3", "status:429"),
            ("s004", "http://shop.test/item/1", "status:403"),
            ("s004", "http://site.test/item/1", "ok"),
            ("s003", "http://site.test/page/3", "closed"),
        ]
        assert _ask(cli, "POST", "/_hexgate/reset") == {"reset": True}
        assert _ask(cli, "GET", "/_hexgate/counts") == {}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        log = proc.stderr.read().splitlines()
        assert log == [
            "hexgate: s001 http GET http://site.test/page/3 -> status:200 (as USER-session-s001)",
            "hexgate: s002 http GET http://site.test/page/3 -> status:429 (as USER-session-s002)",
            "hexgate: s004 http GET http://shop.test/item/1 -> status:403 (as USER-session-s004)",
            "hexgate: s004 http GET http://site.test/item/1 -> ok (as USER-session-s004)",
            "hexgate: s003 http GET http://site.test/page/3 -> closed (as USER-session-s003)",
        ]
        assert PASSWORD not in "\n".join(log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_command_line_on_a_busy_port_says_so_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "scrapy_hexproxy.testing", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"hexgate: port {port} on 127.0.0.1 is already in use (another gateway?): choose another"
        " with --port, or leave --port out for any free port"
    ]
