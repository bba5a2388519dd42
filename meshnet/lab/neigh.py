"""Room in the kernel's neighbour (ARP) table for large labs: one table for all namespaces.

Linux keeps one IPv4 neighbour table for the whole machine, shared by every network
namespace, and refuses new entries beyond `net.ipv4.neigh.default.gc_thresh3` (1024 by
default); an entry used in the last 5 s is never reclaimed to make room. Lab hosts are
namespaces of one machine and every router talks to every other one, so a lab of N hosts
keeps about N x (N - 1) underlay entries fresh. At 33 hosts the table is full: the later
hosts cannot resolve h1, their pings and control connections go unanswered, and nothing
but the kernel's rate-limited "neighbor table overflow" says why. (A real host has the
table to itself: one entry per peer on its link, docs/scaling.md.)

`reserve` raises gc_thresh2 and gc_thresh3 by what a large lab needs, and records the
values it found and the labs holding a reservation in one file under a lock; `release`
drops a lab and puts the values back when the last one goes. Small labs fit in the
default headroom and change nothing on the machine.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from typing import Iterator

SYSCTL = "/proc/sys/net/ipv4/neigh/default"
KEYS = ("gc_thresh2", "gc_thresh3")
PER_HOST = 8  # the host's bridge and containers, beyond one entry per other host
SMALL = 256  # a lab needing fewer entries than this fits in the machine's default headroom


def entries_needed(hosts: int) -> int:
    """Neighbour entries a lab of `hosts` routers keeps alive at once (an upper estimate)."""
    return hosts * (hosts - 1 + PER_HOST)


def reserve(prefix: str, hosts: int, *, record: str, sysctl: str = SYSCTL) -> None:
    """Make room for lab `prefix`; a no-op for a small lab. Never raises: a machine where the
    table cannot be raised (not the initial namespace, read-only /proc/sys) gets a warning."""
    need = entries_needed(hosts)
    if need < SMALL:
        return
    try:
        with _locked(record) as state:
            if not state["labs"]:  # no lab holds room: these are the machine's own values
                state["saved"] = {k: _read(sysctl, k) for k in KEYS}
            state["labs"][prefix] = need
            _apply(state, sysctl)
    except OSError as e:
        print(f"lab {prefix}: cannot raise the kernel's neighbour table for {hosts} hosts ({e}); hosts beyond about 30 may not reach each other", file=sys.stderr)


def release(prefix: str, *, record: str, sysctl: str = SYSCTL) -> None:
    """Drop lab `prefix`'s room; the last lab to go puts the machine's values back."""
    if not os.path.exists(record):
        return
    try:
        with _locked(record) as state:
            if state["labs"].pop(prefix, None) is None:
                return
            _apply(state, sysctl)
    except OSError as e:
        print(f"lab {prefix}: cannot restore the kernel's neighbour table ({e})", file=sys.stderr)


def _apply(state: dict, sysctl: str) -> None:
    extra = sum(state["labs"].values())
    for key, value in state["saved"].items():
        _write(sysctl, key, value + extra)


@contextmanager
def _locked(record: str) -> Iterator[dict]:
    """The record's state, read and written back under an exclusive lock."""
    os.makedirs(os.path.dirname(record), exist_ok=True)
    with open(record, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            state = json.loads(f.read())
            if not (isinstance(state, dict) and isinstance(state.get("saved"), dict) and isinstance(state.get("labs"), dict)):
                raise ValueError("not a record")
        except ValueError:  # empty (first use) or damaged: start a new record
            state = {"saved": {}, "labs": {}}
        yield state
        f.seek(0)
        f.truncate()
        json.dump(state, f)  # kept when empty: another lab may be waiting on this lock


def _read(sysctl: str, key: str) -> int:
    with open(f"{sysctl}/{key}") as f:
        return int(f.read())


def _write(sysctl: str, key: str, value: int) -> None:
    with open(f"{sysctl}/{key}", "w") as f:
        f.write(str(value))
