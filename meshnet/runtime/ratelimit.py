"""Rate-limited logging: a repeated event is logged once per interval, with a count of the
occurrences that were not logged since.

Used wherever a peer, a scanner or a bug could repeat an event without limit: garbage and
refused TCP connections, protocol errors, address conflicts, failing timer jobs and
supervised tasks. The key names the kind of event (a short constant, never a remote
value), so the table of keys stays small; the message still shows the latest instance.
`suppressed` counts what was not written, per key, for the metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

EVERY = 30.0  # seconds between two log lines of the same kind
MAX_KEYS = 256  # kinds remembered; beyond this the oldest is forgotten (it logs again)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, every: float = EVERY, clock: Callable[[], float] = time.monotonic):
        self._log = logger
        self.every = every
        self._clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # key -> (time of the last line, suppressed since)
        self.suppressed: dict[str, int] = {}  # key -> occurrences not written, since start
        self._lock = threading.Lock()  # threads report failures too

    def log(self, level: int, key: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Write the line unless one of this kind went out less than `every` seconds ago;
        return whether it was written."""
        now = self._clock()
        with self._lock:
            last, skipped = self._last.get(key, (float("-inf"), 0))
            if now - last < self.every:
                self._last[key] = (last, skipped + 1)
                self.suppressed[key] = self.suppressed.get(key, 0) + 1
                return False
            self._last.pop(key, None)
            self._last[key] = (now, 0)
            while len(self._last) > MAX_KEYS:
                del self._last[next(iter(self._last))]
        if skipped:
            msg += " (and %d more like it in the last %.0fs)"
            args = (*args, skipped, now - last)
        self._log.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.ERROR, key, msg, *args, exc_info=exc_info)

    def info(self, key: str, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, key, msg, *args)
