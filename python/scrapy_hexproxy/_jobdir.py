"""The pool survives a pause: with a JOBDIR, the core's pool state (cooling sessions, failure
runs, rotated-id numbering, ban scope "domain"'s records; see ``src/snapshot.rs``) is read
back at start and written every ``SAVE_INTERVAL`` seconds and at close, to
``JOBDIR/hexproxy-pool.state``.

Each write goes to a temporary file in JOBDIR, is fsynced, then renamed over the last one: a
``kill -9`` leaves the last complete save. The file holds no password (nor its base64).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from ._settings import origin_of

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.internet.task import LoopingCall

    from . import _core
    from ._settings import Gateway

logger = logging.getLogger("scrapy_hexproxy")

#: The file's name in JOBDIR (the held requests of a pause have their own).
STATE_FILE = "hexproxy-pool.state"
#: Seconds between periodic saves, on the reactor's clock.
SAVE_INTERVAL = 10.0


class PoolStateFile:
    """The pool state of one crawl in its JOBDIR."""

    @classmethod
    def open(
        cls, crawler: Crawler, core: _core.Core, gateway: Gateway | None
    ) -> PoolStateFile | None:
        """Restores the saved state, if JOBDIR is set and holds one; ``None`` without JOBDIR.
        ``gateway``: ``None`` with a proxy list (the core knows the list)."""
        jobdir = crawler.settings.get("JOBDIR")
        if not jobdir:
            return None
        state = cls(os.path.join(str(jobdir), STATE_FILE), core, origin_of(gateway))
        state.restore()
        return state

    def __init__(self, path: str, core: _core.Core, origin: str) -> None:
        self.path = path
        self.core = core
        self.origin = origin
        self._loop: LoopingCall | None = None

    def restore(self) -> None:
        try:
            with open(self.path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("hex_proxy: cannot read the pool state %s (%s)", self.path, exc)
            return
        try:
            outcome = self.core.restore(data, time.time(), self.origin)
        except ValueError as exc:
            logger.warning("hex_proxy: %s: %s; starting with a fresh pool", exc, self.path)
            return
        if isinstance(outcome, str):
            logger.info("hex_proxy: %s: ignored, starting with a fresh pool", outcome)
            return
        cooling, expired, failing, rotated, records = outcome
        logger.info(
            "hex_proxy: pool state restored from %s: %d sessions still cooling, %d back from"
            " their cooldown during the pause, %d in a failure run, %d rotated, %d"
            " (session, host) records",
            self.path,
            cooling,
            expired,
            failing,
            rotated,
            records,
        )

    def start(self) -> None:
        """The periodic save (the spider opened: the reactor runs)."""
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.save)
        self._loop.start(SAVE_INTERVAL, now=False)

    def close(self) -> None:
        """The last save (the spider closed)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.save()

    def save(self) -> None:
        """Writes the state atomically: a temporary file, fsync, rename, fsync of JOBDIR."""
        data = self.core.snapshot(time.time(), self.origin)
        directory = os.path.dirname(self.path) or "."
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(directory, exist_ok=True)
            with open(temporary, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            _fsync_directory(directory)
        except OSError as exc:
            logger.warning("hex_proxy: cannot save the pool state to %s (%s)", self.path, exc)


def _fsync_directory(directory: str) -> None:
    """Makes the rename durable where directories can be opened (not on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
