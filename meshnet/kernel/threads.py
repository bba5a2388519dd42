"""Our threads' names as the kernel shows them (`top -H`, /proc/PID/task/TID/comm).

Python before 3.14 names a `threading.Thread` for itself only; the kernel keeps calling
it after the process. Naming the pump thread lets an operator (and the benchmarks) see
and measure its CPU apart from the rest of the router.
"""

from __future__ import annotations

import ctypes

_PR_SET_NAME = 15
_COMM_LEN = 15  # TASK_COMM_LEN is 16 with the NUL


def name_current_thread(name: str) -> None:
    """Best effort: a kernel or libc that refuses leaves the old name."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:_COMM_LEN]), 0, 0, 0)
    except (OSError, AttributeError):
        pass
