"""The router's one timer: it runs each job when its deadline comes, and survives them.

A job is anything with a `name`, `next_deadline() -> float | None` (absolute, monotonic)
and `tick(now)` (sync or async). The loop sleeps until the earliest deadline or until
`wake()`; then it runs every job whose deadline has passed, and the jobs that asked to
run on every wake (`deadline=None` and `always=True`).

Supervision: an exception from one job (its `tick` or its `next_deadline`) is logged with
its traceback (at most once per LOG_EVERY seconds per job, with a count of what was
suppressed: `ratelimit.py`) and counted, and the loop goes on with the next job. This is
the second line of defence: remote input is checked where it is decoded and never raises
into a job; the loop itself runs under the router's supervisor (`supervise.py`). `age()` is the watchdog: how late the timer is against the
time it meant to wake, or how long its current round has taken. A router whose timer is
several seconds late reports itself unhealthy (`status`, the readiness probe).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from meshnet.runtime.ratelimit import RateLimitedLog

log = logging.getLogger("meshnet.timer")

IDLE_WAKE = 60.0  # seconds the loop sleeps at most with no deadline at all
MIN_SLEEP = 0.05  # seconds; a deadline in the past never makes the loop spin
LOG_EVERY = 30.0  # seconds between tracebacks of the same failing job
FAILURE_BACKOFF = 1.0  # seconds a failed job waits before it runs again (no busy loop on a bug)


@dataclass
class Job:
    name: str
    tick: Callable[[float], Any | Awaitable[Any]]
    next_deadline: Callable[[], float | None] = lambda: None
    always: bool = False  # run on every wake, whatever the deadline


class TimerLoop:
    def __init__(self, jobs: list[Job], *, clock: Callable[[], float] = time.monotonic):
        self.jobs = jobs
        self._clock = clock
        self._wake = asyncio.Event()
        self.last_run = clock()  # end of the last complete round
        self._sleep_until: float | None = None  # while sleeping: when it will wake at the latest (the watchdog)
        self._round_started = self.last_run
        self.failures: dict[str, int] = {job.name: 0 for job in jobs}
        self._log = RateLimitedLog(log, every=LOG_EVERY, clock=clock)
        self._not_before: dict[str, float] = {}  # job -> earliest next run after a failure

    def add(self, job: Job) -> None:
        self.jobs.append(job)
        self.failures[job.name] = 0

    def wake(self) -> None:
        self._wake.set()

    def age(self, now: float | None = None) -> float:
        """How late the timer is: seconds past the time it meant to wake (or since its round
        began, while it runs jobs). Near 0 in a healthy router, however long it sleeps."""
        now = self._clock() if now is None else now
        if self._sleep_until is not None:
            return max(0.0, now - self._sleep_until)
        return now - self._round_started

    async def run(self) -> None:
        while True:
            now = self._round_started = self._clock()
            self._wake.clear()
            for job in self.jobs:
                deadline = self._deadline(job)
                if deadline is not None and deadline <= now:
                    await self._run_job(job, now)
            self.last_run = self._clock()
            self._sleep_until = self.last_run + min(self._delay(), IDLE_WAKE)
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancel that lands as the event is set
                async with asyncio.timeout(self._sleep_until - self.last_run):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._sleep_until = None

    def _delay(self) -> float:
        """Seconds until the earliest deadline (always-jobs do not count: they ride along)."""
        deadlines = []
        for job in self.jobs:
            deadline = self._deadline(job)
            if deadline is not None and not self._is_always(job):
                deadlines.append(deadline)
        return max(MIN_SLEEP, min(deadlines, default=self.last_run + IDLE_WAKE) - self.last_run)

    def _is_always(self, job: Job) -> bool:
        return job.always and job.name not in self._not_before

    def _deadline(self, job: Job) -> float | None:
        """When the job should run next: its own deadline, `-inf` for an always job, but
        never before its back-off after a failure."""
        try:
            deadline = float("-inf") if job.always else job.next_deadline()
        except Exception:
            self._failed(job, self._clock(), "next_deadline")
            deadline = None
        not_before = self._not_before.get(job.name)
        if not_before is not None and deadline is not None:
            deadline = max(deadline, not_before)
        return deadline

    async def _run_job(self, job: Job, now: float) -> None:
        try:
            result = job.tick(now)
            if inspect.isawaitable(result):
                await result
            self._not_before.pop(job.name, None)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._failed(job, now, "tick")

    def _failed(self, job: Job, now: float, part: str) -> None:
        """Log (rate limited, with the traceback: called inside `except`) and count; back off."""
        self.failures[job.name] = self.failures.get(job.name, 0) + 1
        self._not_before[job.name] = now + FAILURE_BACKOFF
        self._log.error(f"job:{job.name}", "timer job %s failed in %s; the timer carries on", job.name, part, exc_info=True)
