"""`make wheel-check`: the wheels as a user gets them (issue 15, item 4).

Run by the python of a new venv into which pip installed the cp310-abi3 wheel and nothing else
(with what it pulled in), from outside the checkout, with the wheels' paths as arguments:

* each wheel: tagged manylinux2014 / manylinux_2_17 for x86_64, in its name and in WHEEL; its
  native module needs no glibc symbol version above 2.17 (what auditwheel checks, read from
  the ELF's dynamic string table) and is stripped (no ``.symtab``); its METADATA says the
  Python versions;
* the installed package: imported from this venv, not from the checkout, and a real crawl of
  10 pages through the loopback gateway.

Prints one line per check and ``wheel check: N passed, M failed``; exits 1 on any failure.
Not collected by pytest (the file name has no ``test_``).
"""

from __future__ import annotations

import re
import struct
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

MAX_GLIBC = (2, 17)
TAGS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64")
PYTHONS = [f"3.{minor}" for minor in range(9, 15)]

results: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> None:
    results.append((ok, what))
    print(("ok    " if ok else "FAIL  ") + what, flush=True)


def elf_sections(data: bytes) -> dict[str, bytes]:
    """Section name -> contents of a little-endian ELF64 file."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "a little-endian ELF64"
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = []
    for i in range(shnum):
        name, kind, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        headers.append((name, kind, offset, size))
    names_at, names_size = headers[shstrndx][2], headers[shstrndx][3]
    names = data[names_at : names_at + names_size]
    out = {}
    for name, kind, offset, size in headers:
        label = names[name : names.index(b"\0", name)].decode()
        out[label] = b"" if kind == 8 else data[offset : offset + size]  # 8: SHT_NOBITS
    return out


def check_wheel(path: Path) -> None:
    for tag in TAGS:
        check(tag in path.name, f"{path.name}: {tag} in the file name")
    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/WHEEL"))
        tags = re.findall(r"^Tag: (.+)$", wheel.read(meta).decode(), flags=re.MULTILINE)
        check(all(any(t.endswith(tag) for t in tags) for tag in TAGS), f"{path.name}: WHEEL {tags}")
        modules = [n for n in names if n.endswith(".so")]
        check(len(modules) == 1, f"{path.name}: one native module ({modules})")
        sections = elf_sections(wheel.read(modules[0]))
        versions = {
            (int(major), int(minor))
            for major, minor in re.findall(rb"GLIBC_(\d+)\.(\d+)", sections.get(".dynstr", b""))
        }
        highest = max(versions, default=(0, 0))
        check(
            bool(versions) and highest <= MAX_GLIBC,
            f"{path.name}: highest glibc symbol version {highest[0]}.{highest[1]}"
            f" <= {MAX_GLIBC[0]}.{MAX_GLIBC[1]}",
        )
        check(".symtab" not in sections, f"{path.name}: stripped (no .symtab)")
        metadata = Parser().parsestr(
            wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        )
        classifiers = metadata.get_all("Classifier") or []
        check(
            all(f"Programming Language :: Python :: {v}" in classifiers for v in PYTHONS),
            f"{path.name}: classifiers for Python {', '.join(PYTHONS)}",
        )
        check(metadata["Requires-Python"] == ">=3.9", f"{path.name}: Requires-Python >=3.9")


def check_installed() -> None:
    import scrapy_hexproxy
    from scrapy_hexproxy import _core

    here = Path(sys.prefix).resolve()
    where = Path(_core.__file__).resolve()
    check(here in where.parents, f"scrapy_hexproxy {scrapy_hexproxy.__version__} from {where}")

    import scrapy
    from scrapy.crawler import CrawlerProcess

    from scrapy_hexproxy.testing import Gateway

    class Pages(scrapy.Spider):
        name = "pages"
        start_urls = [f"http://site.test/page/{i}" for i in range(10)]

        def parse(self, response):  # type: ignore[no-untyped-def]
            yield {"session": response.meta["hex_session"]}

    with Gateway() as gateway:
        process = CrawlerProcess(
            {
                "DOWNLOADER_MIDDLEWARES": {
                    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
                    "scrapy_hexproxy.HexProxyMiddleware": 350,
                    "scrapy_hexproxy.SmartRetryMiddleware": 550,
                },
                "HEX_PROXY_GATEWAY": gateway.url,
                "HEX_PROXY_USER": gateway.user,
                "HEX_PROXY_PASS": gateway.password,
                "LOG_LEVEL": "WARNING",
                "TELNETCONSOLE_ENABLED": False,
            }
        )
        crawler = process.create_crawler(Pages)
        process.crawl(crawler)
        process.start()
        attempts = sum(gateway.counts().values())
    scraped = crawler.stats.get_value("item_scraped_count")
    check(scraped == 10 and attempts == 10, f"a crawl: {scraped} of 10 pages, {attempts} attempts")


def main(paths: list[str]) -> int:
    if not paths:
        print("usage: check_wheel.py WHEEL...", file=sys.stderr)
        return 2
    for path in paths:
        check_wheel(Path(path))
    check_installed()
    failed = sum(1 for ok, _ in results if not ok)
    print(f"wheel check: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
