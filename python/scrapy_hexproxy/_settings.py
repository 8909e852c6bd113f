"""Read and check the HEX_PROXY_* settings.

Types are checked here (Scrapy settings may arrive as strings from ``-s NAME=VALUE``);
ranges are checked by the Rust core, whose messages also name the setting.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from . import _core

#: Statuses retried by default (the guide's list).
DEFAULT_RETRY_CODES = (403, 407, 408, 429, 500, 502, 503, 504)
#: Statuses counted against the session by default: 403, 407, 429 and every 5xx.
DEFAULT_FAILURE_CODES = (403, 407, 429, *range(500, 600))

_SWITCH_OFF = "set HEX_PROXY_ENABLED = False to switch the scrapy-hexproxy middlewares off"

GATEWAY = "HEX_PROXY_GATEWAY"
LIST = "HEX_PROXY_LIST"
LIST_FILE = "HEX_PROXY_LIST_FILE"
TEMPLATE = "HEX_PROXY_USERNAME_TEMPLATE"
_GATEWAY_ONLY = ("HEX_PROXY_USER", "HEX_PROXY_PASS", TEMPLATE)
#: A HEX_PROXY_LIST given as one string (``-s HEX_PROXY_LIST=...``) is cut at these.
_LIST_SEPARATORS = re.compile(r"[\s,]+")


class HexProxyConfigError(ValueError):
    """A HEX_PROXY_* setting is missing or wrong; the crawl does not start."""


@dataclass(frozen=True)
class Gateway:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True)
class HexSettings:
    #: None with a proxy list.
    gateway: Gateway | None
    # Holds the password: kept out of the repr.
    core_kwargs: dict[str, Any] = field(repr=False)
    retry_priority_adjust: int
    #: Seconds between pool-health lines in the log; 0: none.
    logstats_interval: float = 60.0
    #: The setting the proxy list came from (HEX_PROXY_LIST or HEX_PROXY_LIST_FILE), if any.
    proxy_list: str | None = None
    #: Whether HEX_PROXY_SESSION_POOL_SIZE was given (a list must then agree with it).
    pool_size_set: bool = False
    #: HEX_PROXY_BIND_COOKIEJAR: each session id is its own cookie jar.
    bind_cookiejar: bool = False
    #: HEX_PROXY_USER_AGENTS: the User-Agents sessions present (None: leave it to Scrapy).
    user_agents: tuple[str, ...] | None = None
    #: The class HEX_PROXY_BAN_POLICY names; None: the core's default rules.
    ban_policy: type | None = None


def is_enabled(settings: Any) -> bool:
    value = settings.get("HEX_PROXY_ENABLED", True)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise HexProxyConfigError(f"HEX_PROXY_ENABLED must be True or False, got {value!r}")


def _is_set(value: Any) -> bool:
    """None and a blank string (``-s NAME=``) mean unset."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def parse_gateway(value: Any) -> Gateway:
    if not _is_set(value):
        raise HexProxyConfigError(
            "HEX_PROXY_GATEWAY is not set: scrapy-hexproxy will not crawl from this machine's"
            " own address. Set HEX_PROXY_GATEWAY = 'http://host:port' (your gateway), or"
            " HEX_PROXY_LIST / HEX_PROXY_LIST_FILE (your own proxies), or " + _SWITCH_OFF + "."
        )
    if not isinstance(value, str):
        raise HexProxyConfigError(
            f"HEX_PROXY_GATEWAY must be a URL string like 'http://host:port',"
            f" got {type(value).__name__}"
        )
    try:
        parts = urlsplit(value.strip())
        port = parts.port
        host = parts.hostname
    except ValueError:
        # urlsplit's message may quote the URL, which may hold a password: chain nothing.
        raise HexProxyConfigError(
            "HEX_PROXY_GATEWAY is not a valid URL (expected 'http://host:port'): bad port or host"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise HexProxyConfigError(
            "HEX_PROXY_GATEWAY must not hold credentials: put them in HEX_PROXY_USER and"
            " HEX_PROXY_PASS and give the gateway as 'http://host:port'"
        )
    if parts.scheme not in ("http", "https"):
        raise HexProxyConfigError(
            f"HEX_PROXY_GATEWAY must start with http:// or https://, got scheme {parts.scheme!r}"
        )
    if not host:
        raise HexProxyConfigError("HEX_PROXY_GATEWAY has no host (expected 'http://host:port')")
    if port is None:
        raise HexProxyConfigError(
            f"HEX_PROXY_GATEWAY has no port (expected '{parts.scheme}://{host}:PORT')"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise HexProxyConfigError(
            "HEX_PROXY_GATEWAY must be just scheme, host and port ('http://host:port'),"
            " without a path or query"
        )
    return Gateway(parts.scheme, host, port)


def _text(settings: Any, name: str) -> str:
    value = settings.get(name)
    if value is None or value == "":
        raise HexProxyConfigError(f"{name} is not set: the gateway needs credentials")
    if not isinstance(value, str):
        raise HexProxyConfigError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _int(settings: Any, name: str, default: int, minimum: int = -(2**63)) -> int:
    value = settings.get(name, default)
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            pass
    if number is None:
        raise HexProxyConfigError(f"{name} must be a whole number, got {value!r}")
    # The core checks each setting's own range; this only keeps huge values from reaching it.
    if not minimum <= number < 2**63:
        raise HexProxyConfigError(f"{name} is out of range, got {number}")
    return number


def _float(settings: Any, name: str, default: float) -> float:
    value = settings.get(name, default)
    if isinstance(value, bool):
        raise HexProxyConfigError(f"{name} must be a number of seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise HexProxyConfigError(f"{name} must be a number of seconds, got {value!r}")


def _seconds(settings: Any, name: str, default: float) -> float:
    """A finite, non-negative number of seconds."""
    value = _float(settings, name, default)
    if not 0 <= value < float("inf"):
        raise HexProxyConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return value


def _codes(settings: Any, name: str, default: tuple[int, ...]) -> list[int]:
    value = settings.get(name)
    if value is None:
        return list(default)
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise HexProxyConfigError(
            f"{name} must be a list of HTTP status codes, got {type(value).__name__}"
        )
    codes = []
    for item in value:
        if isinstance(item, bool):
            raise HexProxyConfigError(f"{name} must hold HTTP status codes, got {item!r}")
        try:
            codes.append(int(item))
        except (TypeError, ValueError):
            raise HexProxyConfigError(f"{name} must hold HTTP status codes, got {item!r}") from None
    return codes


def _choice(settings: Any, name: str, default: str) -> str:
    """A word; the core checks it is one of the allowed ones (ignoring case)."""
    value = settings.get(name, default)
    if not isinstance(value, str):
        raise HexProxyConfigError(f"{name} must be a string, got {type(value).__name__}")
    return value.strip()


def _user_agents(settings: Any, name: str) -> tuple[str, ...] | None:
    """A list of User-Agent strings, or one string with one a line (``-s``): User-Agents hold
    commas ("KHTML, like Gecko"), so commas do not separate them. None when unset."""
    value = settings.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, (list, tuple)):
        raise HexProxyConfigError(
            f"{name} must be a list of User-Agent strings, got {type(value).__name__}"
        )
    if not value:
        raise HexProxyConfigError(
            f"{name} must hold at least one User-Agent (leave it unset to keep Scrapy's)"
        )
    agents = []
    for item in value:
        if not isinstance(item, str):
            raise HexProxyConfigError(
                f"{name} must hold User-Agent strings, got {type(item).__name__}"
            )
        agent = item.strip()
        # A header value: printable ASCII only, so nothing can end the header early.
        if not agent or not all(" " <= c <= "~" for c in agent):
            raise HexProxyConfigError(
                f"{name} must hold non-empty User-Agents of printable ASCII, got {item!r}"
            )
        agents.append(agent)
    return tuple(agents)


def _bool(settings: Any, name: str) -> bool:
    value = settings.get(name, False)
    try:
        return bool(settings.getbool(name, False))
    except (ValueError, TypeError):  # getbool raises TypeError for lists, dicts...
        raise HexProxyConfigError(f"{name} must be True or False, got {value!r}") from None


def _list_setting(settings: Any) -> str | None:
    """Which proxy list setting is set, if any (not both; not beside the gateway)."""
    given = [name for name in (LIST, LIST_FILE) if _is_set(settings.get(name))]
    if len(given) == 2:
        raise HexProxyConfigError(
            f"{LIST} and {LIST_FILE} are both set: give the proxies in one of them"
        )
    if given and _is_set(settings.get(GATEWAY)):
        raise HexProxyConfigError(
            f"{GATEWAY} and {given[0]} are both set: use either one gateway or a list of"
            f" proxies (unset {GATEWAY}, or {given[0]})"
        )
    return given[0] if given else None


def read_proxy_list(settings: Any, setting: str) -> list[tuple[str, str]]:
    """The entries of HEX_PROXY_LIST or HEX_PROXY_LIST_FILE as ``(source, text)``, source
    naming the entry for error messages (``"HEX_PROXY_LIST entry 3"``). The core parses them."""
    value = settings.get(setting)
    if setting == LIST_FILE:
        return _proxy_file(value)
    if isinstance(value, str):
        items: list[Any] = [item for item in _LIST_SEPARATORS.split(value) if item]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise HexProxyConfigError(
            f"{LIST} must be a list of proxy URLs ('http://user:password@host:port'),"
            f" got {type(value).__name__}"
        )
    entries = []
    for position, item in enumerate(items, 1):
        if not isinstance(item, str):
            raise HexProxyConfigError(
                f"{LIST} entry {position} must be a string, got {type(item).__name__}"
            )
        entries.append((f"{LIST} entry {position}", item))
    if not entries:
        raise HexProxyConfigError(f"{LIST} holds no proxy")
    return entries


def _proxy_file(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, (str, os.PathLike)):
        raise HexProxyConfigError(
            f"{LIST_FILE} must be the path of a file, got {type(value).__name__}"
        )
    path = os.fspath(value)
    text: str | None = None
    try:
        with open(path, encoding="utf-8-sig") as file:
            text = file.read()
    except OSError as exc:
        raise HexProxyConfigError(
            f"{LIST_FILE} {path!r} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    except UnicodeDecodeError:
        pass  # raised below, not in here: the error quotes the bytes, maybe a password
    if text is None:
        raise HexProxyConfigError(f"{LIST_FILE} {path!r} is not UTF-8 text")
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((f"{LIST_FILE} line {number}", line))
    if not entries:
        raise HexProxyConfigError(
            f"{LIST_FILE} {path!r} holds no proxy (one URL a line; blank lines and lines"
            " starting with # are skipped)"
        )
    return entries


def _template(settings: Any) -> str:
    value = settings.get(TEMPLATE)
    if value is None:
        return _core.DEFAULT_USERNAME_TEMPLATE
    if not isinstance(value, str):
        raise HexProxyConfigError(f"{TEMPLATE} must be a string, got {type(value).__name__}")
    return value


def read_settings(settings: Any) -> HexSettings:
    """Every HEX_PROXY_* value, checked; raises HexProxyConfigError naming the setting."""
    from ._banpolicy import load_ban_policy  # it imports this module

    list_setting = _list_setting(settings)
    if list_setting is None:
        gateway: Gateway | None = parse_gateway(settings.get(GATEWAY))
        provider: dict[str, Any] = {
            "user": _text(settings, "HEX_PROXY_USER"),
            "password": _text(settings, "HEX_PROXY_PASS"),
            "username_template": _template(settings),
        }
    else:
        for name in _GATEWAY_ONLY:
            if _is_set(settings.get(name)):
                raise HexProxyConfigError(
                    f"{name} is set, but it is for {GATEWAY}; with {list_setting} each proxy"
                    f" carries its own credentials ('http://user:password@host:port'):"
                    f" unset {name}"
                )
        gateway = None
        provider = {
            "user": "",
            "password": "",
            "proxies": read_proxy_list(settings, list_setting),
        }
    seed = settings.get("HEX_PROXY_SEED")
    core_kwargs: dict[str, Any] = {
        "pool_size": _int(settings, "HEX_PROXY_SESSION_POOL_SIZE", 20),
        "max_failures": _int(settings, "HEX_PROXY_MAX_FAILURES", 5),
        "cooldown": _float(settings, "HEX_PROXY_BLACKLIST_COOLDOWN", 300.0),
        "max_retries": _int(settings, "HEX_PROXY_MAX_RETRIES", 4),
        "retry_codes": _codes(settings, "HEX_PROXY_RETRY_CODES", DEFAULT_RETRY_CODES),
        "failure_codes": _codes(settings, "HEX_PROXY_FAILURE_CODES", DEFAULT_FAILURE_CODES),
        "auth_failures_to_close": _int(settings, "HEX_PROXY_AUTH_FAILURES_TO_CLOSE", 3),
        **provider,
        "manual_clock": _bool(settings, "HEX_PROXY_MANUAL_CLOCK"),
        "seed": None if seed is None else _int(settings, "HEX_PROXY_SEED", 0, minimum=0),
        "backoff_base": _float(settings, "HEX_PROXY_RETRY_BACKOFF_BASE", 0.0),
        "backoff_max": _float(settings, "HEX_PROXY_RETRY_BACKOFF_MAX", 60.0),
        "on_blacklist": _choice(settings, "HEX_PROXY_ON_BLACKLIST", "cooldown"),
        "session_max_uses": _int(settings, "HEX_PROXY_SESSION_MAX_USES", 0),
        "session_max_age": _float(settings, "HEX_PROXY_SESSION_MAX_AGE", 0.0),
        "ban_scope": _choice(settings, "HEX_PROXY_BAN_SCOPE", "session"),
    }
    # Scrapy's own setting stands in while ours is unset (Scrapy's default is -1 too).
    priority_adjust = "HEX_PROXY_RETRY_PRIORITY_ADJUST"
    if settings.get(priority_adjust) is None:
        priority_adjust = "RETRY_PRIORITY_ADJUST"
    return HexSettings(
        gateway=gateway,
        core_kwargs=core_kwargs,
        retry_priority_adjust=_int(settings, priority_adjust, -1),
        logstats_interval=_seconds(settings, "HEX_PROXY_LOGSTATS_INTERVAL", 60.0),
        proxy_list=list_setting,
        pool_size_set=settings.get("HEX_PROXY_SESSION_POOL_SIZE") is not None,
        bind_cookiejar=_bool(settings, "HEX_PROXY_BIND_COOKIEJAR"),
        user_agents=_user_agents(settings, "HEX_PROXY_USER_AGENTS"),
        ban_policy=load_ban_policy(settings.get("HEX_PROXY_BAN_POLICY")),
    )


def check_pool_size(settings: HexSettings, pool_size: int) -> None:
    """With a proxy list, each proxy is one session: a pool size given by hand must agree."""
    wanted = settings.core_kwargs["pool_size"]
    if settings.proxy_list is None or not settings.pool_size_set or wanted == pool_size:
        return
    raise HexProxyConfigError(
        f"HEX_PROXY_SESSION_POOL_SIZE is {wanted}, but {settings.proxy_list} holds"
        f" {pool_size} different proxies and each proxy is one session: unset"
        " HEX_PROXY_SESSION_POOL_SIZE"
    )
