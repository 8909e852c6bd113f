"""A crawl in its own process, for the tests of promises 14 and 15 (a real SIGINT).

``python tests/held_crawl.py CONFIG.json``: CONFIG holds ``settings`` (Scrapy settings), ``pages``
(how many ``/page/N`` URLs the spider requests, without ``dont_filter``), ``out`` (a file the
spider appends the URL of each 200 response to) and ``held`` (``{"waiting": W, "parked": P}``:
once the runtime holds at least W requests waiting for a session and P parked retries, and the
downloader holds nothing else (no attempt still on its way to the gateway), one line
``HELD waiting=... parked=...`` is printed, so the test knows when to send its signal).
With ``times`` (a file), the spider also writes each 200 response's URL and time of arrival.
CrawlerProcess installs Scrapy's own SIGINT handler: the first SIGINT closes the spider
(``shutdown``), as a user's Ctrl-C does.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import scrapy
from scrapy.crawler import CrawlerProcess


class HeldSpider(scrapy.Spider):
    name = "held"
    custom_settings = {"HTTPERROR_ALLOW_ALL": True}

    def __init__(self, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config

    def _requests(self) -> Any:
        for i in range(self.config["pages"]):
            yield scrapy.Request(f"http://site.test/page/{i}", callback=self.parse)

    async def start(self) -> Any:  # Scrapy >= 2.13
        for request in self._requests():
            yield request

    def start_requests(self) -> Any:  # Scrapy < 2.13
        return self._requests()

    def parse(self, response: Any, **kwargs: Any) -> None:
        if response.status == 200:
            with open(self.config["out"], "a") as out:
                out.write(response.url + "\n")
            if "times" in self.config:
                with open(self.config["times"], "a") as out:
                    out.write(f"{response.url} {time.time()}\n")


def main() -> None:
    with open(sys.argv[1]) as f:
        config = json.load(f)
    reactor = config["settings"].get("TWISTED_REACTOR")
    if reactor:
        from scrapy.utils.reactor import install_reactor

        install_reactor(reactor)
    process = CrawlerProcess(config["settings"])
    crawler = process.create_crawler(HeldSpider)
    held = config.get("held")
    if held is not None:
        from twisted.internet.task import LoopingCall

        def look() -> None:
            runtime = getattr(crawler, "_hex_proxy_runtime", None)
            if runtime is None:
                return
            parked = runtime.pacer.parked if runtime.pacer is not None else 0
            engine = crawler.engine
            # Requests waiting for a session are in the downloader; anything more is in flight.
            in_flight = len(engine.downloader.active) - runtime.waiting if engine else 1
            if runtime.waiting >= held["waiting"] and parked >= held["parked"] and in_flight == 0:
                print(f"HELD waiting={runtime.waiting} parked={parked}", flush=True)
                poll.stop()

        poll = LoopingCall(look)

        def opened(spider: Any) -> None:
            poll.start(0.02)

        crawler.signals.connect(opened, signal=scrapy.signals.spider_opened, weak=False)
    process.crawl(crawler, config=config)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats is not None else {}
    keys = ("hex_proxy/dropped_at_close", "hex_proxy/retry/dropped_at_close", "finish_reason")
    print("STATS " + json.dumps({k: stats.get(k) for k in keys}), flush=True)


if __name__ == "__main__":
    main()
