"""Supervision and rate-limited logging: nothing that escapes a task, a callback or a thread
goes unseen or takes down more than itself; repeated events do not flood the log."""

import asyncio
import logging
import threading
import time

import pytest

from meshnet.runtime import supervise
from meshnet.runtime.ratelimit import RateLimitedLog
from meshnet.runtime.supervise import Supervisor


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_rate_limited_log_writes_once_per_interval_and_counts_the_rest(caplog):
    clock = Clock()
    rl = RateLimitedLog(logging.getLogger("t"), every=30, clock=clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert rl.warning("garbage", "garbage from %s", "10.0.0.1")
        for i in range(999):
            clock.now += 0.01
            assert not rl.warning("garbage", "garbage from %s", f"10.0.0.{i}")
        assert rl.warning("other", "another kind")  # kinds are limited apart
        clock.now = 31
        assert rl.warning("garbage", "garbage from %s", "10.0.0.9")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "garbage from 10.0.0.1" and lines[1] == "another kind"
    assert lines[2].startswith("garbage from 10.0.0.9 (and 999 more like it in the last 31s)")
    assert len(lines) == 3 and rl.suppressed == {"garbage": 999}


def test_a_failing_task_is_logged_with_its_traceback_and_counted(caplog):
    async def main():
        sup = Supervisor()

        async def boom():
            raise KeyError("bug")

        await sup.spawn("dial", boom())
        return sup

    with caplog.at_level(logging.ERROR, logger="meshnet.supervisor"):
        sup = asyncio.run(main())
    assert sup.failures == {"dial": 1}
    assert "dial failed" in caplog.text and "KeyError" in caplog.text and "Traceback" in caplog.text


def test_a_long_lived_loop_is_restarted_after_a_failure(monkeypatch):
    monkeypatch.setattr(supervise, "BACKOFF", 0.01)
    runs = []

    async def main():
        sup = Supervisor()

        async def loop():
            runs.append(time.monotonic())
            if len(runs) < 3:
                raise RuntimeError("first runs fail")
            await asyncio.sleep(10)

        sup.keep("timer", loop)
        for _ in range(200):
            await asyncio.sleep(0.01)
            if len(runs) >= 3:
                break
        sup.cancel_all()
        await asyncio.sleep(0)
        return sup

    sup = asyncio.run(main())
    assert len(runs) == 3 and sup.failures == {"timer": 2} and sup.restarts == {"timer": 2}


def test_a_supervised_thread_is_restarted_and_stops_when_told(monkeypatch):
    monkeypatch.setattr(supervise, "BACKOFF", 0.01)
    sup = Supervisor()
    stop = threading.Event()
    calls = []

    def watch():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("dockerd went away")
        stop.wait()

    thread = sup.thread("docker-watch", watch, stop)
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(2)
    assert not thread.is_alive() and len(calls) == 3 and sup.failures == {"docker-watch": 2}


def test_the_second_line_catches_callbacks_and_dying_threads():
    async def main():
        sup = Supervisor()
        sup.install(asyncio.get_running_loop())
        try:
            asyncio.get_running_loop().call_soon(lambda: 1 / 0)  # e.g. an add_reader callback
            await asyncio.sleep(0.01)

            def pump():
                raise MemoryError("pump died")

            t = threading.Thread(target=pump, name="meshnet-pump")
            t.start()
            t.join()
        finally:
            sup.uninstall()
        return sup

    sup = asyncio.run(main())
    assert sup.failures.get("loop-callback") == 1
    assert sup.failures.get("meshnet-pump") == 1 and sup.status()["dead"] == ["meshnet-pump"]
    assert threading.excepthook is not sup._thread_exception


def test_guard_keeps_the_caller_going():
    sup = Supervisor()
    guarded = sup.guard("topology-changed", lambda: {}["x"])
    assert guarded() is None and sup.failures == {"topology-changed": 1}


def test_timer_job_that_fails_in_next_deadline_is_counted_not_fatal():
    from meshnet.runtime.timer import Job, TimerLoop

    ran = []

    def bad_deadline():
        raise ValueError("bug in a deadline")

    async def main():
        loop = TimerLoop([Job("bad", lambda now: None, bad_deadline), Job("good", lambda now: ran.append(now), lambda: 0.0)])
        task = asyncio.ensure_future(loop.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return loop

    loop = asyncio.run(main())
    assert loop.failures["bad"] >= 1 and ran
