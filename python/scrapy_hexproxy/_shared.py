"""One pool for every process of a crawl: the pool's state shared on Redis
(``HEX_PROXY_REDIS_URL``, DESIGN promise 18).

The core decides everything as it does alone (``src/shared.rs``); this module only carries
what it notes to Redis and what the others noted back to it. A background thread owns the
two connections (commands, and a subscription to the pool's channel), so the reactor never
waits for Redis and a healthy attempt costs no round trip:

- a failure that counted in a run: one script call, ``INCR`` of the session's run key (it
  expires a cooldown after its last failure), which publishes the new count; every process
  takes the longest count it knows, so a run that reaches HEX_PROXY_MAX_FAILURES over all
  processes blacklists the session in each;
- a success that ended a run: the run key deleted, published;
- a ban: a key holding its end (wall clock, ms) that expires with it, published; a process
  that connects (or comes back after Redis was away) reads the bans and runs in force;
- rejected credentials: published; every process closes with ``hex_proxy_auth_failed``;
- a process's number, from a counter, gives its rotated ids an epoch of their own.

Every key of a pool starts with its name (``HEX_PROXY_REDIS_KEY``, by default derived from the
configuration, ``Core.shared_key``), whose braces are a Redis Cluster hash tag.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote, urlsplit

from ._settings import HexProxyConfigError

if TYPE_CHECKING:
    from ._core import Core

logger = logging.getLogger("scrapy_hexproxy")

URL_SETTING = "HEX_PROXY_REDIS_URL"
KEY_SETTING = "HEX_PROXY_REDIS_KEY"

#: Seconds to connect, and for one command, before Redis counts as away.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
#: The thread sleeps until a message arrives or the core notes something (it writes a byte
#: to a socket the thread waits on), or this long at most (to count the processes, to stop).
IDLE = 1.0
#: Where the pubsub connection's socket cannot be read (another redis-py): the thread polls,
#: and a note waits this long at most.
POLL = 0.02
#: Reconnection backoff, seconds: doubled from the first to the last.
RECONNECT_FIRST = 0.5
RECONNECT_LAST = 10.0
#: How often the thread asks Redis how many processes share the pool (the health line's).
PEERS_EVERY = 10.0
#: Keys read per SCAN step when taking the state in force.
SCAN_COUNT = 1000

#: Stats (set when the spider closes).
STATS = "hex_proxy/shared/"

# Scripts: one round trip each, atomic. KEYS are the pool's keys (one hash slot); the channel
# is an argument, as channels are no keys.
_FAILED = """
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. n .. ARGV[4])
return n
"""
_BANNED = """
local old = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > old then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('DEL', KEYS[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
_CLEARED = """
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"""

#: A fact for the core, as ``Core.take_fact`` takes it: (number, host, what, value).
Fact = tuple[int, "str | None", str, float]


def where(url: str) -> str:
    """``host:port/db`` of a Redis URL: what the log may say of it (no user, no password)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "(an unreadable URL)"
    db = parts.path.strip("/") or "0"
    return f"{host}:{port}/{db}"


def _secrets(url: str) -> list[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [s for s in {password, unquote(password)} if s] if password else []


@dataclass
class _Counts:
    failures_sent: int = 0
    bans_sent: int = 0
    cleared_sent: int = 0
    facts_taken: int = 0
    commands: int = 0
    redis_lost: int = 0


class SharedPool:
    """The shared pool of one crawler. Built at start, where Redis must answer (else
    HexProxyConfigError, naming HEX_PROXY_REDIS_URL: the crawl does not start); the thread
    runs from ``start`` to ``close``."""

    def __init__(
        self,
        core: Core,
        url: str,
        key: str | None,
        origin: str,
        *,
        cooldown: float,
        on_facts: Callable[[list[Fact]], None],
        on_credentials: Callable[[], None],
    ) -> None:
        try:
            import redis
        except ImportError:
            raise HexProxyConfigError(
                f"{URL_SETTING} is set, but the redis package is not installed:"
                " pip install 'scrapy-hexproxy[redis]' (or redis)"
            ) from None
        self._redis = redis
        self.core = core
        self.where = where(url)
        self._secrets = _secrets(url)
        self.key = key or core.shared_key(origin)
        self.channel = f"{self.key}:events"
        self._ttl_ms = max(1000, int(cooldown * 1000))
        #: Tells this process's messages from the others' (its own come back on the channel).
        self.origin = uuid.uuid4().hex[:12]
        self._on_facts = on_facts
        self._on_credentials = on_credentials
        self.counts = _Counts()
        #: Processes subscribed to the pool's channel, as last asked (this one included).
        self.peers = 1
        #: Own bans still in force, (number, host) -> end (wall clock, ms): published again
        #: when Redis comes back, as it may have missed them or lost them.
        self._own_bans: dict[tuple[int, str | None], int] = {}
        #: Bans in force that this process knows of (its own and the others'), for the line.
        self._known_bans: dict[tuple[int, str | None], int] = {}
        self._credentials_out = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._up = False
        self._lost_logged = False
        self._pubsub: Any = None
        try:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # No retries of redis-py's own: the thread reconnects, and says so.
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )
            nth = int(self._client.incr(f"{self.key}:processes"))
            self._client.set(f"{self.key}:about", core.describe(origin))
            self._load_scripts()
            # Subscribed before the state in force is read: nothing published in between is
            # missed (the thread reads what arrived when it starts).
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(self.channel)
            facts = self._in_force()
        except (redis.RedisError, OSError, ValueError) as exc:
            raise HexProxyConfigError(
                f"{URL_SETTING}: Redis at {self.where} cannot be used ({self._clean(exc)}), so"
                " the crawl does not start: a process sharing no pool would learn every ban"
                f" again on its own. Start Redis there, or unset {URL_SETTING} to crawl alone."
            ) from None
        self.counts.commands += 3
        # Woken by the core: a byte on this pair's first socket whenever a note arrives.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        core.share(nth, os.dup(self._wake_w.fileno()))
        self._up = True
        for number, host, what, value in facts:
            core.take_fact(number, host, what, value)
        self.counts.facts_taken += len(facts)

    # -- the reactor's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hex_proxy-redis", daemon=True)
        self._thread.start()

    def credentials_rejected(self) -> None:
        """This process found the credentials rejected: the others are told (by the thread)."""
        self._credentials_out = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: a wake-up is pending already
            pass

    def close(self) -> dict[str, int]:
        """The spider closed: the thread sends what is noted, then stops; the stats."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(CONNECT_TIMEOUT + COMMAND_TIMEOUT)
        for connection in (self._pubsub, self._client, self._wake_r, self._wake_w):
            try:
                if connection is not None:
                    connection.close()
            except Exception:
                pass
        counts = self.counts
        return {
            STATS + "failures_sent": counts.failures_sent,
            STATS + "bans_sent": counts.bans_sent,
            STATS + "cleared_sent": counts.cleared_sent,
            STATS + "facts_taken": counts.facts_taken,
            STATS + "redis_commands": counts.commands,
            STATS + "redis_lost": counts.redis_lost,
            STATS + "processes": self.peers,
        }

    def health(self) -> str:
        """The pool-health line's shared part."""
        now = _now_ms()
        in_force = sum(1 for end in list(self._known_bans.values()) if end > now)
        state = "up" if self._up else "away, going on alone"
        return (
            f"; shared on Redis {self.where} ({state}): {in_force} bans in force,"
            f" {self.peers} processes"
        )

    # -- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        redis = self._redis
        backoff = RECONNECT_FIRST
        next_peers = 0.0
        while True:
            stopping = self._stop.is_set()
            try:
                if not self._up or self._pubsub is None:
                    self._connect()
                    backoff = RECONNECT_FIRST
                self._pump(0.0 if stopping else IDLE)
                if time.monotonic() >= next_peers:
                    next_peers = time.monotonic() + PEERS_EVERY
                    self._count_peers()
            except Exception as exc:  # the thread must not die unseen
                if not isinstance(exc, (redis.RedisError, OSError)):
                    logger.exception(
                        "hex_proxy: the shared pool's thread failed (a bug: please report it);"
                        " it goes on as if Redis were lost"
                    )
                self._lost(exc)
                # Away: the core's bans are kept with their time as they come (to publish
                # when Redis is back); failures and ended runs are not, being stale by then.
                deadline = time.monotonic() + backoff
                while True:
                    self._keep_notes()
                    left = deadline - time.monotonic()
                    if self._stop.is_set():
                        return
                    if left <= 0:
                        break
                    self._stop.wait(min(left, 0.25))
                backoff = min(backoff * 2, RECONNECT_LAST)
                continue
            if stopping:
                return

    def _load_scripts(self) -> None:
        self._shas = [self._client.script_load(script) for script in (_FAILED, _BANNED, _CLEARED)]
        self.counts.commands += 3

    def _connect(self) -> None:
        """(Re)subscribe; after an absence, publish own bans again and take those in force."""
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except Exception:
                pass
        self._pubsub = None
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel)
        self.counts.commands += 1
        back = not self._up
        if back:
            self._load_scripts()  # a restarted Redis has none
            self._republish()
            facts = self._in_force()
            if facts:
                self._deliver(facts)
        self._pubsub = pubsub
        if back:
            self._up = True
            self._lost_logged = False
            logger.info(
                "hex_proxy: Redis at %s is back: this process's bans are shared again, and"
                " the others' taken",
                self.where,
            )

    def _lost(self, exc: BaseException) -> None:
        if self._up:
            self.counts.redis_lost += 1
        self._up = False
        if not self._lost_logged:
            self._lost_logged = True
            logger.warning(
                "hex_proxy: lost Redis at %s (%s): this process goes on with what it knows"
                " and reconnects; its bans are shared when Redis is back",
                self.where,
                self._clean(exc),
            )

    def _pump(self, timeout: float) -> None:
        """Waits (at most ``timeout``) for a message or a note; reads every message there is,
        sends every note, hands the facts over."""
        facts: list[Fact] = []
        connection = self._pubsub.connection
        sock = getattr(connection, "_sock", None)
        if sock is not None:
            select.select([sock, self._wake_r], [], [], timeout)
            message = self._pubsub.get_message(timeout=0.0)
        else:
            message = self._pubsub.get_message(timeout=min(timeout, POLL))
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:  # drained
            pass
        # Until nothing is left, buffered or on the socket (a subscription's confirmation also
        # reads as None).
        while message is not None or connection.can_read(timeout=0):
            if message is not None and message.get("type") == "message":
                fact = self._read(message["data"])
                if fact is not None:
                    facts.append(fact)
            message = self._pubsub.get_message(timeout=0.0)
        facts.extend(self._send(self.core.take_notes()))
        if facts:
            self._deliver(facts)

    def _keep_notes(self) -> None:
        """Without Redis: the notes' bans are kept with their end, to publish when it is back;
        the rest is dropped."""
        for number, host, what, seconds in self.core.take_notes():
            if what == "banned":
                self._own_bans[(number, host)] = _now_ms() + int(seconds * 1000)

    def _send(self, notes: list[tuple[int, str | None, str, float]]) -> list[Fact]:
        """The notes, sent in one pipeline; the shared counts of the failures sent, as facts."""
        credentials, self._credentials_out = self._credentials_out, False
        if not notes and not credentials:
            return []
        try:
            return self._send_once(notes, credentials)
        except self._redis.exceptions.NoScriptError:
            # Redis restarted under a connection that reconnected unseen: every script call
            # of the pipeline failed alike; load them and send again.
            self._load_scripts()
            return self._send_once(notes, credentials)

    def _send_once(
        self, notes: list[tuple[int, str | None, str, float]], credentials: bool
    ) -> list[Fact]:
        now = _now_ms()
        failed, _, cleared = self._shas
        pipe = self._client.pipeline(transaction=False)
        sent: list[tuple[int, str | None] | None] = []
        for number, host, what, seconds in notes:
            tail = f" {host}" if host is not None else ""
            if what == "failed":
                run = self._run_key(number, host)
                head = f"{self.origin} r {number} "
                pipe.evalsha(failed, 1, run, self._ttl_ms, self.channel, head, tail)
                sent.append((number, host))
                self.counts.failures_sent += 1
            elif what == "banned":
                end = now + int(seconds * 1000)
                self._own_bans[(number, host)] = end
                self._known_bans[(number, host)] = end
                self._ban(pipe, number, host, end)
                sent.append(None)
            else:
                message = f"{self.origin} c {number} 0{tail}"
                pipe.evalsha(cleared, 1, self._run_key(number, host), self.channel, message)
                sent.append(None)
                self.counts.cleared_sent += 1
        if credentials:
            pipe.publish(self.channel, f"{self.origin} a 0 0")
        self.counts.commands += len(notes) + int(credentials)
        try:
            replies = pipe.execute()
        except (self._redis.RedisError, OSError):
            # Lost on the way: the bans go out again when Redis is back; so do the credentials.
            self._credentials_out = self._credentials_out or credentials
            raise
        # A failure's count is stale when a success of the same batch ended its run after it.
        ended = {(n, h): i for i, (n, h, what, _) in enumerate(notes) if what == "cleared"}
        return [
            (session[0], session[1], "run", float(reply))
            for i, (session, reply) in enumerate(zip(sent, replies))
            if session is not None and ended.get(session, -1) < i
        ]

    def _ban(self, pipe: Any, number: int, host: str | None, end: int) -> None:
        tail = f" {host}" if host is not None else ""
        ban, run = self._ban_key(number, host), self._run_key(number, host)
        message = f"{self.origin} b {number} {end}{tail}"
        ttl = max(1, end - _now_ms())
        pipe.evalsha(self._shas[1], 2, ban, run, end, ttl, self.channel, message)
        self.counts.bans_sent += 1

    def _republish(self) -> None:
        self._keep_notes()
        self._forget_ended_bans()
        if not self._own_bans and not self._credentials_out:
            return
        pipe = self._client.pipeline(transaction=False)
        for (number, host), end in self._own_bans.items():
            self._ban(pipe, number, host, end)
        if self._credentials_out:
            pipe.publish(self.channel, f"{self.origin} a 0 0")
        self.counts.commands += len(self._own_bans) + int(self._credentials_out)
        pipe.execute()
        self._credentials_out = False

    def _in_force(self) -> list[Fact]:
        """The bans and runs on Redis now, as facts."""
        facts: list[Fact] = []
        now = _now_ms()
        for kind in ("ban", "run"):
            prefix = f"{self.key}:{kind}:"
            pattern = _glob_escape(prefix) + "*"
            keys = list(self._client.scan_iter(match=pattern, count=SCAN_COUNT))
            self.counts.commands += 1 + len(keys) // SCAN_COUNT
            for start in range(0, len(keys), SCAN_COUNT):
                chunk = keys[start : start + SCAN_COUNT]
                values = self._client.mget(chunk)
                self.counts.commands += 1
                for raw_key, value in zip(chunk, values):
                    if value is None:
                        continue
                    session = _session_of(raw_key, prefix)
                    if session is None:
                        continue
                    number, host = session
                    if kind == "ban":
                        end = int(value)
                        if end > now:
                            self._known_bans[session] = end
                            facts.append((number, host, "banned", (end - now) / 1000))
                    else:
                        facts.append((number, host, "run", float(int(value))))
        return facts

    def _forget_ended_bans(self) -> None:
        now = _now_ms()
        self._own_bans = {k: end for k, end in self._own_bans.items() if end > now}
        self._known_bans = {k: end for k, end in self._known_bans.items() if end > now}

    def _count_peers(self) -> None:
        self._forget_ended_bans()
        reply = self._client.pubsub_numsub(self.channel)
        self.counts.commands += 1
        if reply:
            self.peers = max(1, int(reply[0][1]))

    def _read(self, data: bytes) -> Fact | None:
        """A message of another process as a fact; None for one of ours, or unreadable."""
        try:
            origin, what, number, value, *host = data.decode("utf-8").split(" ", 4)
            if origin == self.origin:
                return None
            session = (int(number), host[0] if host else None)
            if what == "r":
                return (*session, "run", float(int(value)))
            if what == "c":
                return (*session, "cleared", 0.0)
            if what == "b":
                end = int(value)
                self._known_bans[session] = end
                return (*session, "banned", (end - _now_ms()) / 1000)
            if what == "a":
                return (-1, None, "credentials", 0.0)
        except (UnicodeDecodeError, ValueError):
            pass
        return None

    def _deliver(self, facts: list[Fact]) -> None:
        """Hand the facts to the reactor's thread, where the core takes them."""
        from twisted.internet import reactor

        self.counts.facts_taken += len(facts)
        reactor.callFromThread(self._take, facts)  # type: ignore[attr-defined]

    def _take(self, facts: list[Fact]) -> None:
        if self._stop.is_set():
            return
        if any(what == "credentials" for _, _, what, _ in facts):
            if self.core.credentials_rejected_elsewhere():
                self._on_credentials()
        self._on_facts([fact for fact in facts if fact[2] != "credentials"])

    def _run_key(self, number: int, host: str | None) -> str:
        return f"{self.key}:run:{number}" + (f":{host}" if host is not None else "")

    def _ban_key(self, number: int, host: str | None) -> str:
        return f"{self.key}:ban:{number}" + (f":{host}" if host is not None else "")

    def _clean(self, exc: BaseException) -> str:
        """An exception's text without the URL's password, in any spelling."""
        text = str(exc) or type(exc).__name__
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _session_of(raw_key: bytes, prefix: str) -> tuple[int, str | None] | None:
    rest = raw_key.decode("utf-8", "replace")[len(prefix) :]
    number, _, host = rest.partition(":")
    try:
        return int(number), (host if _ else None)
    except ValueError:
        return None


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis glob (SCAN MATCH)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def redis_url(settings: Any) -> str | None:
    """HEX_PROXY_REDIS_URL, checked: None when unset."""
    value = settings.get(URL_SETTING)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise HexProxyConfigError(
            f"{URL_SETTING} must be a URL string like 'redis://host:6379/0', got"
            f" {type(value).__name__}"
        )
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in ("redis", "rediss", "unix"):
        # Only a plain word is echoed: what stands before "://" may be a password.
        got = f"{scheme}://" if scheme.isalpha() else "something else"
        raise HexProxyConfigError(
            f"{URL_SETTING} must start with redis://, rediss:// or unix:// (like"
            f" 'redis://host:6379/0'), got {got}"
        )
    return value.strip()


def redis_key(settings: Any) -> str | None:
    value = settings.get(KEY_SETTING)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or any(c.isspace() for c in value):
        raise HexProxyConfigError(f"{KEY_SETTING} must be a name without spaces")
    return value
