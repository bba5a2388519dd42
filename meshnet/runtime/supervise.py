"""Supervision: no unexpected exception in the router's tasks, callbacks or threads goes
unseen, and none takes down more than the piece of work it happened in.

- `spawn(name, coro)`: one piece of work (a dial, an accepted connection, a fastdp update).
  An exception that escapes it is logged with its traceback and counted under `name`.
- `keep(name, factory)`: a long-lived loop (the timer, the Docker event consumer). If it
  fails it is logged, counted and started again after a back-off (1 s doubling to 30 s,
  reset after a minute of good running); it is never left dead while the router runs.
- `thread(name, target)`: the same for a loop in its own thread (the Docker event watch).
- `install(loop)`: the second line of defence. The loop's exception handler catches what
  escapes callbacks (`add_reader`, `call_soon_threadsafe`) and tasks nobody awaited;
  `threading.excepthook` catches what kills any other thread (the pump's). Both log with
  the traceback and count.

Logging is rate limited per name (`ratelimit.py`), so a failure that repeats cannot fill
the log. `status()` is what `GET /status` and the metrics show; a task in `dead` (a thread
that ended while the router runs) makes the router unhealthy.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Awaitable, Callable

from meshnet.runtime.ratelimit import RateLimitedLog

log = logging.getLogger("meshnet.supervisor")

BACKOFF = 1.0  # seconds before a failed long-lived loop starts again; doubles per failure
MAX_BACKOFF = 30.0
GOOD_RUN = 60.0  # seconds of running without failure that reset the back-off


class Supervisor:
    def __init__(self) -> None:
        self.failures: dict[str, int] = {}  # name -> unexpected exceptions
        self.restarts: dict[str, int] = {}  # name -> times a long-lived loop was started again
        self.dead: set[str] = set()  # threads and loops that ended while they should run
        self.stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self.log = RateLimitedLog(log)
        self._previous_hook: Any = None

    # -- reporting ---------------------------------------------------------------------

    def failed(self, name: str, exc: BaseException | None, what: str = "failed") -> None:
        """Count and log (rate limited, with the traceback) an unexpected exception."""
        with self._lock:
            self.failures[name] = self.failures.get(name, 0) + 1
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        self.log.error(f"failed:{name}", "%s %s; the router carries on", name, what, exc_info=exc_info)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"failures": dict(self.failures), "restarts": dict(self.restarts), "dead": sorted(self.dead)}

    # -- tasks -------------------------------------------------------------------------

    def spawn(self, name: str, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(self._guarded(name, coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guarded(self, name: str, coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed(name, exc)
            return None

    def handler(self, name: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """`fn` (a coroutine function, e.g. a server's connection handler) under supervision."""

        async def supervised(*args: Any) -> Any:
            return await self._guarded(name, fn(*args))

        return supervised

    def guard(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (a plain callback) under supervision: an exception is logged and counted,
        and the caller (a connection's handler, a timer job) carries on."""

        def supervised(*args: Any) -> Any:
            try:
                return fn(*args)
            except Exception as exc:
                self.failed(name, exc)
                return None

        return supervised

    def keep(self, name: str, factory: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
        """Run `factory()` until the router stops, starting it again after a failure."""

        async def run() -> None:
            delay = BACKOFF
            while not self.stopping:
                started = time.monotonic()
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.failed(name, exc, f"failed; restarting in {delay:.0f}s")
                else:
                    if self.stopping:
                        return
                    self.failed(name, None, f"ended on its own; restarting in {delay:.0f}s")
                if time.monotonic() - started >= GOOD_RUN:
                    delay = BACKOFF
                await asyncio.sleep(delay)
                with self._lock:
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                delay = min(delay * 2, MAX_BACKOFF)

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def thread(self, name: str, target: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Run `target` in a daemon thread, again after a failure, until `stop` is set."""

        def run() -> None:
            delay = BACKOFF
            while not stop.is_set():
                started = time.monotonic()
                try:
                    target()
                    if stop.is_set():
                        return
                    self.failed(name, None, f"ended on its own; restarting in {delay:.0f}s")
                except Exception as exc:
                    self.failed(name, exc, f"failed; restarting in {delay:.0f}s")
                if time.monotonic() - started >= GOOD_RUN:
                    delay = BACKOFF
                if stop.wait(delay):
                    return
                with self._lock:
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                delay = min(delay * 2, MAX_BACKOFF)

        thread = threading.Thread(target=run, name=f"meshnet-{name}", daemon=True)
        thread.start()
        return thread

    def cancel_all(self) -> None:
        self.stopping = True
        for task in list(self._tasks):
            task.cancel()

    # -- the second line ---------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self._loop_exception)
        if self._previous_hook is None:
            self._previous_hook = threading.excepthook
            threading.excepthook = self._thread_exception

    def uninstall(self) -> None:
        if self._previous_hook is not None:
            threading.excepthook = self._previous_hook
            self._previous_hook = None

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        task = context.get("task") or context.get("future")
        name = task.get_name() if isinstance(task, asyncio.Task) else "loop-callback"
        if name.startswith("Task-"):  # asyncio's numbered default: one key for all of them
            name = "task"
        if exc is None:
            self.log.warning(f"loop:{name}", "event loop: %s", context.get("message", "?"))
            return
        self.failed(name, exc, f"raised out of the event loop ({context.get('message', '')})")

    def _thread_exception(self, args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "thread"
        if args.exc_type is SystemExit:
            return
        with self._lock:
            self.dead.add(name)
        self.failed(name, args.exc_value, "thread died")
