"""Long waits say what they wait for: while a command blocks on the router (an attach that
waits for IPAM to agree on the range), a thread asks IPAM every few seconds and prints its
reason on stderr whenever it changes, so a wait never looks like a hang."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator

from meshnet.api.client import ApiClient

FIRST_AFTER = 2.0  # seconds before the first word: most calls are done by then
EVERY = 3.0  # seconds between looks


@contextlib.contextmanager
def ipam_progress(socket: str, what: str) -> Iterator[None]:
    done = threading.Event()

    def watch() -> None:
        client = ApiClient(socket, timeout=2)
        said = None
        if done.wait(FIRST_AFTER):
            return
        while not done.is_set():
            try:
                report = client.get("/ipam/status")
            except Exception:  # noqa: BLE001 - progress is a courtesy; the call itself reports errors
                report = {}
            reason = report.get("waiting") or (None if report.get("state") == "ready" else report.get("state"))
            if reason and reason != said and not done.is_set():
                print(f"meshnet: {what} is waiting for IPAM: {reason}", file=sys.stderr, flush=True)
                said = reason
            done.wait(EVERY)

    thread = threading.Thread(target=watch, name="meshnet-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(1)
