"""`make demo`: a real Scrapy crawl through the bundled loopback gateway.

Some sessions are banned (403 / 429, or a captcha page served with a 200, which a ban policy
spots), one drops every connection, one fails for its first seconds; the middlewares blacklist
the bad sessions and retry on others, after a short random backoff. A pool-health line is
logged every second. Nothing leaves 127.0.0.1: the gateway answers as the origin for the
made-up shop.test site.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter

import scrapy
from scrapy.crawler import CrawlerProcess

from scrapy_hexproxy import BanPolicy
from scrapy_hexproxy.testing import Behavior, Gateway

PAGES = 200
BAD = {
    "s002": ("always answers 403 (banned)", Behavior.answer(403)),
    "s005": ("drops every connection", Behavior.close()),
    "s007": ("always answers 429 (rate limited)", Behavior.answer(429)),
    "s009": ("serves a captcha page with a 200", Behavior.page("<html>captcha</html>")),
    "s011": ("answers 503 for its first 2 s", Behavior.fail_for(2.0, status=503)),
}


class CaptchaPolicy(BanPolicy):
    """A captcha is a ban whatever its status; everything else, the default rules."""

    def response_is_ban(self, request, response):
        if b"captcha" in response.body:
            return True
        return super().response_is_ban(request, response)


class ShopSpider(scrapy.Spider):
    name = "shop"
    custom_settings = {"HTTPERROR_ALLOW_ALL": True}

    def __init__(self, fetched: Counter, **kwargs):
        super().__init__(**kwargs)
        self.fetched = fetched

    def _requests(self):
        for i in range(PAGES):
            scheme = "https" if i % 4 == 0 else "http"  # a quarter through CONNECT tunnels
            yield scrapy.Request(f"{scheme}://shop.test/item/{i}", callback=self.parse)

    async def start(self):  # Scrapy >= 2.13
        for request in self._requests():
            yield request

    def start_requests(self):  # Scrapy < 2.13
        return self._requests()

    def parse(self, response):
        assert b"captcha" not in response.body, "a captcha reached the spider"
        self.fetched[response.status] += 1
        sent_as = response.headers.get(b"X-Hex-Session", b"").decode()
        assert sent_as == response.meta["hex_session"], "gateway saw another session"


def main() -> int:
    gateway = Gateway(user="demo", password="demo-pass").start()
    for session, (_, behavior) in BAD.items():
        gateway.set_behavior(session, behavior)

    settings = {
        "DOWNLOADER_MIDDLEWARES": {
            "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
            "scrapy_hexproxy.HexProxyMiddleware": 350,
            "scrapy_hexproxy.SmartRetryMiddleware": 550,
        },
        "HEX_PROXY_GATEWAY": gateway.url,
        "HEX_PROXY_USER": "demo",
        "HEX_PROXY_PASS": "demo-pass",
        "HEX_PROXY_SESSION_POOL_SIZE": 12,
        "HEX_PROXY_MAX_FAILURES": 3,
        "HEX_PROXY_BLACKLIST_COOLDOWN": 60,
        "HEX_PROXY_BAN_POLICY": CaptchaPolicy,
        "HEX_PROXY_RETRY_BACKOFF_BASE": 0.05,  # the n-th retry waits up to 0.05 * 2^n s
        "HEX_PROXY_RETRY_BACKOFF_MAX": 0.5,
        "HEX_PROXY_LOGSTATS_INTERVAL": 1,  # the pool-health line (default: every 60 s; at least 1)
        "CONCURRENT_REQUESTS": 8,
        "DOWNLOAD_TIMEOUT": 5,
        "LOG_LEVEL": "WARNING",  # scrapy-hexproxy's INFO lines get their own handler below
        "TELNETCONSOLE_ENABLED": False,
    }
    print(f"Gateway on {gateway.url}; crawling {PAGES} pages with a pool of 12 sessions.")
    for session, (what, _) in BAD.items():
        print(f"  {session} {what}")
    print()

    fetched: Counter = Counter()
    process = CrawlerProcess(settings)
    ours = logging.getLogger("scrapy_hexproxy")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
    crawler = process.create_crawler(ShopSpider)
    process.crawl(crawler, fetched=fetched)
    process.start()
    gateway.stop()

    stats = crawler.stats.get_stats()
    counts = gateway.counts()
    print()
    print(f"Pages fetched: {fetched.get(200, 0)} of {PAGES} (statuses: {dict(fetched)})")
    print("Requests the gateway received from the bad sessions:")
    for session, (what, _) in BAD.items():
        print(f"  {session}: {counts.get(session, 0):3d}  ({what})")
    good = sum(n for s, n in counts.items() if s not in BAD)
    print(f"  others: {good:3d}")
    print(
        "  (a dropped keep-alive connection is re-sent once by Twisted itself, inside one attempt)"
    )
    print("Final hex_proxy/* stats:")
    for key in sorted(k for k in stats if k.startswith("hex_proxy/")):
        print(f"  {key:36s} {stats[key]}")
    print(f"finish_reason: {stats.get('finish_reason')}")
    ok = fetched.get(200, 0) == PAGES and stats.get("finish_reason") == "finished"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
