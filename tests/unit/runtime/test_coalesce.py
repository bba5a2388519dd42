"""Coalesced work: one run at a time, a burst of requests makes one more run, never
faster than its gap, and a failure is counted without stopping later runs."""

import asyncio

from meshnet.runtime.coalesce import Coalescer


def test_a_burst_of_requests_runs_the_work_twice_at_most():
    async def main():
        runs = []

        async def work():
            runs.append(len(runs))
            await asyncio.sleep(0.05)

        c = Coalescer("t", work, spawn=asyncio.ensure_future, min_gap=0.01)
        for _ in range(100):
            c.request()
            await asyncio.sleep(0.001)
        await c.settled()
        assert 2 <= len(runs) <= 4 and c.stats["requests"] == 100

    asyncio.run(main())


def test_runs_are_spaced_by_the_gap_and_the_last_run():
    async def main():
        starts = []
        loop = asyncio.get_running_loop()

        async def work():
            starts.append(loop.time())
            await asyncio.sleep(0.1)

        c = Coalescer("t", work, spawn=asyncio.ensure_future, min_gap=0.01, duty=1.0)
        c.request()
        await asyncio.sleep(0.01)
        c.request()  # during the first run
        await c.settled()
        assert len(starts) == 2 and starts[1] - starts[0] >= 0.19  # 0.1 s run + 0.1 s gap (duty 1)

    asyncio.run(main())


def test_a_failing_run_is_counted_and_the_next_request_runs_again():
    async def main():
        calls = []

        async def work():
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("boom")

        c = Coalescer("t", work, spawn=asyncio.ensure_future, min_gap=0.0)
        c.request()
        await c.settled()
        c.request()
        await c.settled()
        assert len(calls) == 2 and c.stats["failures"] == 1 and c.stats["runs"] == 2

    asyncio.run(main())
