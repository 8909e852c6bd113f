"""Ban detection: the class ``HEX_PROXY_BAN_POLICY`` names, and how the runtime builds it.

A ban policy judges each download attempt of a session once, when the attempt is settled. Its
verdict decides whether the attempt is a failure of the session and whether it is retried; see
``BanPolicy``. Without the setting no policy is consulted: the core applies the same default
rules itself, without a Python call per response.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._settings import DEFAULT_FAILURE_CODES, HexProxyConfigError

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

SETTING = "HEX_PROXY_BAN_POLICY"
METHODS = ("response_is_ban", "exception_is_ban")


class BanPolicy:
    """Says which download attempts are bans. Subclass it and name your class in
    ``HEX_PROXY_BAN_POLICY``; its methods here are the default rules.

    Each method returns:

    * ``True``: a ban. The attempt is a failure of its session (counted towards
      ``HEX_PROXY_MAX_FAILURES`` and the blacklist) and ``SmartRetryMiddleware`` retries the
      request on another session, whatever the status (a captcha page served with a 200, a 404).
    * ``False``: not a ban. The attempt is not held against the session; the retry codes still
      apply (a 503 that is "not a ban" is still retried, on any session).
    * ``None``: no opinion; the default rules decide, as without a policy.

    Anything else is a programming error: a ``TypeError`` naming the setting and the method,
    which Scrapy hands to the request's errback.

    The methods are called once per attempt that went through a session (never for a response
    from the HTTP cache, never for a request with ``meta["hex_proxy"] = False``), from the
    reactor thread; keep them quick (``response.body`` is already in memory).

    The middleware builds the policy with ``from_crawler(crawler)`` if the class has one, else
    with ``cls()``; then it sets ``failure_codes`` and ``transport_exceptions`` on it to the
    crawl's values (until then, the class defaults: DESIGN's defaults).
    """

    #: ``HEX_PROXY_FAILURE_CODES`` of the crawl.
    failure_codes: frozenset[int] = frozenset(DEFAULT_FAILURE_CODES)
    #: The exceptions that mean the attempt failed on the way (connection, tunnel, timeout).
    transport_exceptions: tuple[type[BaseException], ...] = ()

    def response_is_ban(self, request: Request, response: Response) -> bool | None:
        """Default: a ban when the status is one of ``HEX_PROXY_FAILURE_CODES``."""
        return response.status in self.failure_codes

    def exception_is_ban(self, request: Request, exception: BaseException) -> bool | None:
        """Default: a ban when the exception is a transport failure; never a programming
        error."""
        transport = self.transport_exceptions
        if not transport:  # a policy used outside a crawl
            from ._scrapy import transport_exceptions

            transport = transport_exceptions()
        return isinstance(exception, transport)


def load_ban_policy(value: Any) -> type | None:
    """The class ``HEX_PROXY_BAN_POLICY`` names (an import path or the class), checked; None
    when unset. Raises HexProxyConfigError naming the setting."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        from scrapy.utils.misc import load_object

        path = value.strip()
        try:
            value = load_object(path)
        except Exception as exc:
            raise HexProxyConfigError(
                f"{SETTING}: cannot import {path!r} ({type(exc).__name__}: {exc})"
            ) from exc
    if not isinstance(value, type):
        raise HexProxyConfigError(
            f"{SETTING} must be a class or the import path of one, got {type(value).__name__}"
            f" ({value!r}); subclass scrapy_hexproxy.BanPolicy"
        )
    _check_methods(value, _name(value))
    return value


def build_ban_policy(
    cls: type,
    crawler: Crawler,
    failure_codes: frozenset[int],
    transport_exceptions: tuple[type[BaseException], ...],
) -> Any:
    """An instance of the policy class for this crawler, with the crawl's rules if it is a
    ``BanPolicy``."""
    from_crawler = getattr(cls, "from_crawler", None)
    try:
        policy = from_crawler(crawler) if from_crawler is not None else cls()
    except Exception as exc:
        # NotConfigured included: Scrapy would take it as "disable HexProxyMiddleware" and
        # crawl from this machine's own address; a policy that cannot be built stops the crawl.
        raise HexProxyConfigError(
            f"{SETTING}: building {_name(cls)} failed ({type(exc).__name__}: {exc})"
        ) from exc
    _check_methods(policy, f"{_name(cls)} instance")
    if isinstance(policy, BanPolicy):
        policy.failure_codes = failure_codes
        policy.transport_exceptions = transport_exceptions
    return policy


def bad_verdict(policy: Any, method: str, verdict: Any) -> TypeError:
    """The error for a verdict that is not True, False or None."""
    shown = repr(verdict)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return TypeError(
        f"{SETTING}: {_name(type(policy))}.{method}() must return True, False or None,"
        f" got {type(verdict).__name__} {shown}"
    )


def _check_methods(obj: Any, name: str) -> None:
    missing = [method for method in METHODS if not callable(getattr(obj, method, None))]
    if missing:
        wanted = " and ".join(f"{method}()" for method in missing)
        raise HexProxyConfigError(
            f"{SETTING}: {name} has no {wanted}; a ban policy needs"
            " response_is_ban(request, response) and exception_is_ban(request, exception)"
            " (subclass scrapy_hexproxy.BanPolicy)"
        )


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
