"""Read and check the HEX_PROXY_* settings.

Every setting is declared once, in the core's table (``_core.SETTINGS``: name, kind, default,
bounds or choices; ``src/settings.rs``), which the core validates with: this module reads each
setting by its kind and fills in the declared default while it is unset. Types are checked
here (Scrapy settings may arrive as strings from ``-s NAME=VALUE``); bounds and choices are the
core's, whose messages also name the setting.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from . import _core

logger = logging.getLogger("scrapy_hexproxy")

#: The declared settings by name.
SETTINGS: Final[dict[str, _core.Setting]] = {setting.name: setting for setting in _core.SETTINGS}


def _declared_codes(name: str) -> tuple[int, ...]:
    codes = SETTINGS[name].default
    assert isinstance(codes, tuple)
    return codes


#: Statuses retried by default (the guide's list).
DEFAULT_RETRY_CODES: Final = _declared_codes("HEX_PROXY_RETRY_CODES")
#: Statuses counted against the session by default: 403, 407, 429 and every 5xx.
DEFAULT_FAILURE_CODES: Final = _declared_codes("HEX_PROXY_FAILURE_CODES")

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


def origin_of(gateway: Gateway | None) -> str:
    """What the core's ``describe`` names the provider by (a saved state's, a shared pool's):
    the gateway's ``host:port``; ``""`` with a proxy list (the core knows the list)."""
    return "" if gateway is None else f"{gateway.host}:{gateway.port}"


@dataclass(frozen=True)
class HexSettings:
    #: None with a proxy list.
    gateway: Gateway | None
    # Holds the password: kept out of the repr.
    core_kwargs: dict[str, Any] = field(repr=False)
    retry_priority_adjust: int
    #: Seconds between pool-health lines in the log; 0: none.
    logstats_interval: float
    #: Seconds the gateway may stay unreachable before the crawl closes; 0: for ever.
    gateway_down_timeout: float
    #: The setting the proxy list came from (HEX_PROXY_LIST or HEX_PROXY_LIST_FILE), if any.
    proxy_list: str | None
    #: Whether HEX_PROXY_SESSION_POOL_SIZE was given (a list must then agree with it).
    pool_size_set: bool
    #: HEX_PROXY_BIND_COOKIEJAR: each session id is its own cookie jar.
    bind_cookiejar: bool
    #: HEX_PROXY_USER_AGENTS: the User-Agents sessions present (None: leave it to Scrapy).
    user_agents: tuple[str, ...] | None
    #: The class HEX_PROXY_BAN_POLICY names; None: the core's default rules.
    ban_policy: type | None


def is_enabled(settings: Any) -> bool:
    enabled = read_setting(settings, "HEX_PROXY_ENABLED")
    assert isinstance(enabled, bool)
    return enabled


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
        scheme, host, port = _core.parse_gateway(value)
    except ValueError as exc:  # the core names the setting and never echoes the URL
        problem = str(exc)
    else:
        return Gateway(scheme, host, port)
    raise HexProxyConfigError(problem)  # outside the except: no context chained either


# -- the converters, by kind: (setting name, value as given) -> value for the core -------------


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise HexProxyConfigError(f"{name} must be True or False, got {value!r}")


def _whole(value: Any) -> int | None:
    """An int, or a string of one; None for anything else (a float, even 403.0, is a slip)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    return None


#: The core reads whole numbers as 64-bit ints; it checks each setting's own bounds.
_I64 = range(-(2**63), 2**63)


def _int(name: str, value: Any) -> int:
    number = _whole(value)
    if number is None:
        raise HexProxyConfigError(f"{name} must be a whole number, got {value!r}")
    if number not in _I64:
        raise HexProxyConfigError(f"{name} is out of range, got {number}")
    return number


def _seconds(name: str, value: Any) -> float:
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


def _codes(name: str, value: Any) -> list[int]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise HexProxyConfigError(
            f"{name} must be a list of HTTP status codes, got {type(value).__name__}"
        )
    codes = []
    for item in value:
        code = _whole(item)
        if code is None:
            raise HexProxyConfigError(
                f"{name} must hold HTTP status codes (whole numbers), got {item!r}"
            )
        if code not in _I64:  # the core checks 100..599, but reads 64 bits
            raise HexProxyConfigError(f"{name} holds {code}, out of range for a status code")
        codes.append(code)
    return codes


def _choice(name: str, value: Any) -> str:
    """A word; the core checks it is one of the setting's choices (ignoring case)."""
    return _text(name, value).strip()


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise HexProxyConfigError(f"{name} must be a string, got {type(value).__name__}")
    return value


_CONVERTERS: Final[dict[str, Callable[[str, Any], Any]]] = {
    "bool": _bool,
    "int": _int,
    "seconds": _seconds,
    "codes": _codes,
    "choice": _choice,
    "text": _text,
}


def read_setting(settings: Any, name: str) -> Any:
    """A setting of a kind read here (``_CONVERTERS``), converted; its declared default (or its
    fallback's value) while unset. The bounds of one the core does not take are checked by the
    table's ``check``, so that every bound stays the core's."""
    setting = SETTINGS[name]
    value = settings.get(name)
    if value is None and setting.fallback is not None:
        # Scrapy's own setting stands in, under its own name.
        name, value = setting.fallback, settings.get(setting.fallback)
    if value is None:
        if setting.required:
            raise HexProxyConfigError(f"{name} is not set: the gateway needs credentials")
        default = setting.default
        return list(default) if isinstance(default, tuple) else default
    converted = _CONVERTERS[setting.kind](name, value)
    if setting.key is None:
        try:
            setting.check(converted)
        except (ValueError, OverflowError) as exc:
            raise HexProxyConfigError(str(exc)) from None
    return converted


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
        # stat first: opening a FIFO would block, and a device (/dev/zero) never ends.
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise HexProxyConfigError(
                f"{LIST_FILE} {path!r} is not a regular file (a device, FIFO or directory):"
                " give the path of a text file of proxies"
            )
        with open(path, "rb") as file:
            data = file.read(_core.MAX_PROXY_FILE_BYTES + 1)
    except OSError as exc:
        raise HexProxyConfigError(
            f"{LIST_FILE} {path!r} cannot be read: {exc.strerror or type(exc).__name__}"
        ) from None
    if len(data) > _core.MAX_PROXY_FILE_BYTES:
        raise HexProxyConfigError(
            f"{LIST_FILE} {path!r} is larger than {_core.MAX_PROXY_FILE_BYTES >> 20} MiB,"
            f" the most a proxy file may hold ({_core.MAX_PROXIES:,} proxies at most)"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass  # raised below, not in here: the error quotes the bytes, maybe a password
    if text is None:
        raise HexProxyConfigError(f"{LIST_FILE} {path!r} is not UTF-8 text")
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((f"{LIST_FILE} line {number}", line))
            if len(entries) > _core.MAX_PROXIES:
                break  # the core refuses the list, saying the bound
    if not entries:
        raise HexProxyConfigError(
            f"{LIST_FILE} {path!r} holds no proxy (one URL a line; blank lines and lines"
            " starting with # are skipped)"
        )
    return entries


def read_settings(settings: Any) -> HexSettings:
    """Every HEX_PROXY_* value, checked; raises HexProxyConfigError naming the setting."""
    from ._banpolicy import load_ban_policy  # it imports this module

    list_setting = _list_setting(settings)
    core_kwargs: dict[str, Any] = {}
    if list_setting is None:
        gateway: Gateway | None = parse_gateway(settings.get(GATEWAY))
    else:
        for name in _GATEWAY_ONLY:
            if _is_set(settings.get(name)):
                raise HexProxyConfigError(
                    f"{name} is set, but it is for {GATEWAY}; with {list_setting} each proxy"
                    f" carries its own credentials ('http://user:password@host:port'):"
                    f" unset {name}"
                )
        gateway = None
        core_kwargs["proxies"] = read_proxy_list(settings, list_setting)
    # Every setting the core takes, by its keyword; the gateway's only with the gateway.
    for setting in _core.SETTINGS:
        if setting.key is not None and (gateway is not None or setting.name not in _GATEWAY_ONLY):
            core_kwargs[setting.key] = read_setting(settings, setting.name)
    return HexSettings(
        gateway=gateway,
        core_kwargs=core_kwargs,
        retry_priority_adjust=read_setting(settings, "HEX_PROXY_RETRY_PRIORITY_ADJUST"),
        logstats_interval=read_setting(settings, "HEX_PROXY_LOGSTATS_INTERVAL"),
        gateway_down_timeout=read_setting(settings, "HEX_PROXY_GATEWAY_DOWN_TIMEOUT"),
        proxy_list=list_setting,
        pool_size_set=settings.get("HEX_PROXY_SESSION_POOL_SIZE") is not None,
        bind_cookiejar=read_setting(settings, "HEX_PROXY_BIND_COOKIEJAR"),
        user_agents=_user_agents(settings, "HEX_PROXY_USER_AGENTS"),
        ban_policy=load_ban_policy(settings.get("HEX_PROXY_BAN_POLICY")),
    )


def unknown_settings(settings: Any) -> list[tuple[str, str | None]]:
    """Each ``HEX_PROXY_*`` name in ``settings`` that is not one of ours (a slip: it would be
    ignored), with the closest real name if one is close. Names are compared without their
    common prefix, which would make every name look close."""
    prefix = "HEX_PROXY_"
    ours = {name[len(prefix) :]: name for name in SETTINGS}
    found = []
    for name in sorted(n for n in settings if isinstance(n, str) and n.startswith(prefix)):
        if name not in SETTINGS:
            close = difflib.get_close_matches(name[len(prefix) :], ours, n=1)
            found.append((name, ours[close[0]] if close else None))
    return found


def warn_unknown_settings(settings: Any) -> None:
    """One WARNING per ``HEX_PROXY_*`` name that is not ours (DESIGN promise 21)."""
    for name, closest in unknown_settings(settings):
        hint = f"did you mean {closest}?" if closest else "the README's Settings list them all"
        logger.warning(
            "hex_proxy: %s is not a scrapy-hexproxy setting and is ignored (%s)", name, hint
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
