"""The release journal: CNI DEL must free an address even while the router is down.

Weave leaked the address when DEL ran while the router was down (weave #3587). Here the CNI
plugin, finding the router's socket dead, appends the release to
`<state-dir>/ipam-releases.journal` instead. The router drains the journal when it starts,
on every timer tick and before each allocation (`meshnet/runtime/ipam_service.py`): under
the lock, `drain` hands the releases to the allocator (`Allocator.release_journalled`,
which commits them to its store) and empties the journal only after that returned.
Releases are idempotent, so a crash between the two replays them harmlessly; if applying
raises, the entries stay for the next attempt.

Format: one JSON object per line, `{"v": 1, "owner": "<owner id, e.g. cni:NET:CID:IFNAME>",
"address": "10.32.0.7" | null}`; `address: null` releases everything the owner holds. Writers and the
drainer serialise on `flock(LOCK_EX)` of the file itself. A line cut short by a writer that
died mid-write is skipped, and the next writer starts on a fresh line.

This module is stdlib only, so the CNI plugin can import it cheaply.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

FILENAME = "ipam-releases.journal"


@dataclass(frozen=True, slots=True)
class Release:
    owner: str
    address: str | None = None


class Journal:
    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, FILENAME)

    def append(self, owner: str, address: str | None = None) -> None:
        """Record a release durably (fsync) for the router to apply when it next starts."""
        if not isinstance(owner, str) or not owner:
            raise ValueError("release needs a non-empty owner")
        if address is not None and not isinstance(address, str):
            raise ValueError("address must be a string or None")
        line = json.dumps({"v": 1, "owner": owner, "address": address}, separators=(",", ":")) + "\n"
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = "\n" + line  # a previous writer died mid-line: do not glue onto it
            data = line.encode()
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)  # also drops the lock

    def pending(self) -> bool:
        """Whether anything waits to be applied (one stat: cheap enough for every tick)."""
        try:
            return os.path.getsize(self.path) > 0
        except OSError:
            return False

    def drain(self, apply: Callable[[list[Release]], object]) -> int:
        """Hand every journalled release to `apply`, then empty the journal.

        The journal is emptied only if `apply` returns; if it raises, the entries stay for the
        next attempt. Returns how many releases were applied.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            releases = parse(b"".join(chunks))
            if releases:
                apply(releases)
            os.ftruncate(fd, 0)
            os.fsync(fd)
            return len(releases)
        finally:
            os.close(fd)


def parse(data: bytes) -> list[Release]:
    """The well-formed releases in journal bytes; torn or foreign lines are skipped."""
    releases = []
    for raw in data.split(b"\n"):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict) or obj.get("v") != 1:
            continue
        owner, address = obj.get("owner"), obj.get("address")
        if isinstance(owner, str) and owner and (address is None or isinstance(address, str)):
            releases.append(Release(owner, address))
    return releases
