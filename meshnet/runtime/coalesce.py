"""Coalesced, rate-bounded background work: many requests, one run at a time.

A topology change asks the data paths to follow it. Under load changes come in bursts
(a join changes every peer's entry), and doing the work once per change feeds the load:
each run is slower, more changes queue behind it. A `Coalescer` runs its work at most once
at a time; requests that arrive while it runs make exactly one more run, after a gap of
at least `min_gap` seconds and at least `duty` times the last run's duration, up to
`max_gap` (so under a stream of changes the work takes at most about 1/(1+duty) of the
time, and one huge run, such as the first sync of a big mesh, delays the next by a second
at most).

An exception from the work is logged (rate limited) and counted; the next request runs it
again. Runs on the asyncio loop; the work itself decides what goes off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

log = logging.getLogger("meshnet.coalesce")

LOG_EVERY = 30.0  # seconds between tracebacks of the same failing work


class Coalescer:
    def __init__(
        self,
        name: str,
        work: Callable[[], Awaitable[Any]],
        *,
        spawn: Callable[[Any], Any],
        min_gap: float = 0.1,
        duty: float = 1.0,
        max_gap: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self._work = work
        self._spawn = spawn
        self.min_gap = min_gap
        self.duty = duty
        self.max_gap = max(max_gap, min_gap)
        self._clock = clock
        self._dirty = False
        self._running = False
        self._not_before = float("-inf")
        self._done = asyncio.Event()
        self._done.set()
        self._last_log = float("-inf")
        self.stats = {"requests": 0, "runs": 0, "failures": 0, "last_run_s": 0.0, "max_run_s": 0.0}

    def request(self) -> None:
        """Ask for one more run (cheap; returns at once)."""
        self.stats["requests"] += 1
        self._dirty = True
        self._done.clear()
        if not self._running:
            self._running = True
            self._spawn(self._loop())

    @property
    def busy(self) -> bool:
        return self._running

    async def settled(self) -> None:
        """Wait until no run is pending or running (for tests and shutdown)."""
        await self._done.wait()

    async def _loop(self) -> None:
        try:
            while self._dirty:
                delay = self._not_before - self._clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                self._dirty = False
                started = self._clock()
                try:
                    await self._work()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.stats["failures"] += 1
                    if started - self._last_log >= LOG_EVERY:
                        self._last_log = started
                        log.exception("%s failed (%d failures so far); it runs again on the next change", self.name, self.stats["failures"])
                took = self._clock() - started
                self.stats["runs"] += 1
                self.stats["last_run_s"] = round(took, 4)
                self.stats["max_run_s"] = round(max(self.stats["max_run_s"], took), 4)
                self._not_before = self._clock() + min(self.max_gap, max(self.min_gap, self.duty * took))
        finally:  # done, or cancelled (the router stops): a later request starts afresh
            self._running = False
            self._done.set()
