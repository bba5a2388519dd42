"""The router's timer: jobs run at their deadlines, a failing job never stops the others,
and the watchdog says how late the timer is (not how long it slept)."""

from __future__ import annotations

import asyncio
import logging

from meshnet.runtime.timer import FAILURE_BACKOFF, Job, TimerLoop


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_jobs_run_at_their_deadlines_and_always_jobs_ride_along():
    async def main():
        runs: list[str] = []
        due = [0.05]
        start = asyncio.get_running_loop().time()

        def tick(now):
            runs.append("a")
            due[0] = now - start + 0.05

        timer = TimerLoop([])
        timer.add(Job("a", tick, lambda: start + due[0]))
        timer.add(Job("r", lambda now: runs.append("r"), always=True))
        task = asyncio.ensure_future(timer.run())
        await asyncio.sleep(0.33)
        task.cancel()
        assert runs.count("a") >= 4, runs  # a later always-job must not hide the deadline
        assert timer.age() < 0.2

    asyncio.run(main())


def test_a_failing_job_is_logged_counted_and_backs_off(caplog):
    async def main():
        ok: list[float] = []

        def boom(now):
            raise OverflowError("int too big to convert")

        timer = TimerLoop([])
        timer.add(Job("bad", boom, lambda: 0.0))
        timer.add(Job("good", lambda now: ok.append(now), always=True))
        task = asyncio.ensure_future(timer.run())
        await asyncio.sleep(0.3)
        task.cancel()
        return timer, ok

    with caplog.at_level(logging.ERROR, logger="meshnet.timer"):
        timer, ok = asyncio.run(main())
    assert timer.failures["bad"] == 1  # backed off: not retried before FAILURE_BACKOFF
    assert FAILURE_BACKOFF >= 0.5
    assert ok, "the other jobs keep running"
    assert sum("timer job bad failed" in r.getMessage() for r in caplog.records) == 1
    assert any(r.exc_info for r in caplog.records), "with its traceback"


def test_watchdog_measures_lateness_not_sleep():
    clock = Clock()
    timer = TimerLoop([], clock=clock)
    timer._sleep_until = clock.t + 60  # asleep until a deadline a minute away: healthy
    clock.t += 30
    assert timer.age() == 0.0
    clock.t += 35  # five seconds past its wake-up time: late
    assert timer.age() == 5.0
    timer._sleep_until = None
    timer._round_started = clock.t - 2  # a round running for two seconds
    assert timer.age() == 2.0


def test_a_cancel_that_lands_as_the_timer_is_woken_stops_it():
    """Python 3.11's asyncio.wait_for returns instead of raising when the event it waits for
    is set in the same turn as the cancel; a timer built on it never stopped (a router
    whose stop hung, a NetworkPolicy agent that hung its test run for 20 minutes)."""

    async def main() -> bool:
        timer = TimerLoop([Job("idle", lambda now: None)])
        task = asyncio.ensure_future(timer.run())
        await asyncio.sleep(0.01)  # asleep on its wake event
        timer.wake()
        await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=1)
        return bool(done)

    assert asyncio.run(main())
