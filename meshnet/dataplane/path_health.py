"""PathHealth: per-peer fastdp/sleeve decision from probes over the VXLAN path itself.

Drive it from one timer::

    for pid, seq in health.probes_due(now): send a probe request
    on a reply:                               health.on_probe_reply(pid, seq, now)
    changed = health.tick(now)               # [(pid, mode, reason)] -> re-plan
    sleep until health.next_deadline()

A peer starts on sleeve and moves to fastdp after `recover_after` consecutive replies; a
probe unanswered after one `interval` is missed and resets that streak; a fastdp peer
falls back when no reply came for `fail_after` probe periods. With `disabled` set (see
`fastdp.fastdp_disabled_reason`) no probes are sent and every peer stays sleeve.

Cost is bounded, whatever the mesh size:
- **rate**: at most `max_rate` probes per second in all (a token bucket), and each peer's
  probe period is `max(interval, peers / max_rate)`. Up to `max_rate` peers are probed
  every `interval`; beyond, the period grows with the mesh (and with it the time to notice
  a broken VXLAN path: `fail_after` periods). New peers that arrive together are spread
  over time by the bucket, and stay spread: each one's next probe follows its own last.
- **work**: probes and checks sit in two heaps keyed by time; `probes_due` and `tick` touch
  only the peers that are due, so the cost is O(log n) per probe, not O(n) per tick.
"""

from __future__ import annotations

import heapq
import secrets
from dataclasses import dataclass, field
from typing import Iterable

from meshnet.dataplane.fastdp import FASTDP, REASON_ADOPTED, REASON_HEALTHY, REASON_UNVERIFIED, SLEEVE, Mode

MAX_RATE = 10.0  # probes per second a router sends at most, to all peers together (each costs a kernel VXLAN send)


@dataclass
class _Peer:
    next_probe: float
    last_reply: float  # time of the last matched reply (or when we started probing)
    mode: Mode = SLEEVE
    reason: str = REASON_UNVERIFIED
    streak: int = 0  # consecutive answered probes
    outstanding: dict[int, float] = field(default_factory=dict)  # seq -> sent at


class PathHealth:
    def __init__(
        self,
        peer_ids: Iterable[int] = (),
        interval: float = 1.0,
        fail_after: int = 3,
        *,
        recover_after: int = 2,
        now: float = 0.0,
        disabled: str | None = None,
        first_seq: int | None = None,
        max_rate: float = MAX_RATE,
    ) -> None:
        assert interval > 0 and fail_after >= 1 and recover_after >= 1 and max_rate > 0
        self.interval = interval
        self.fail_after = fail_after
        self.recover_after = recover_after
        self.max_rate = max_rate
        self.disabled = disabled
        self._seq = secrets.randbits(32) if first_seq is None else first_seq & 0xFFFFFFFF
        self._peers: dict[int, _Peer] = {}
        self._probes: list[tuple[float, int]] = []  # (next probe, peer); stale rows are skipped
        self._checks: list[tuple[float, int]] = []  # (when to look at the peer again, peer)
        self._burst = max(2.0, max_rate / 5)  # small: after a quiet spell, no clump of probes
        self._tokens = self._burst
        self._refilled = now
        self.set_peers(peer_ids, now)

    # -- the mesh ----------------------------------------------------------------------

    def set_peers(self, peer_ids: Iterable[int], now: float) -> None:
        """Follow the mesh: new peers start on sleeve (unverified), gone peers are dropped."""
        wanted = set(peer_ids)
        for pid in list(self._peers):
            if pid not in wanted:
                del self._peers[pid]
        for pid in sorted(wanted - self._peers.keys()):
            self._peers[pid] = _Peer(next_probe=now, last_reply=now)
            heapq.heappush(self._probes, (now, pid))

    def adopt(self, peer_ids: Iterable[int], now: float) -> None:
        """Peers an earlier run of this router left on fastdp: start them on fastdp, so they
        stay there while their probes are answered (and fall back as usual when not)."""
        for pid in sorted(peer_ids):
            self._peers[pid] = _Peer(next_probe=now, last_reply=now, mode=FASTDP, reason=REASON_ADOPTED)
            heapq.heappush(self._probes, (now, pid))
            heapq.heappush(self._checks, (now + self._window(), pid))

    def period(self) -> float:
        """Seconds between two probes to one peer: `interval`, or longer in a big mesh."""
        return max(self.interval, len(self._peers) / self.max_rate)

    def mode(self, peer_id: int) -> tuple[Mode, str]:
        if self.disabled is not None:
            return SLEEVE, self.disabled
        p = self._peers.get(peer_id)
        if p is None:
            return SLEEVE, "unknown peer"
        return p.mode, p.reason

    def modes(self) -> dict[int, tuple[Mode, str]]:
        return {pid: self.mode(pid) for pid in self._peers}

    # -- probes ------------------------------------------------------------------------

    def probes_due(self, now: float) -> list[tuple[int, int]]:
        """(peer_id, seq) of every probe to send now; each is remembered as outstanding."""
        if self.disabled is not None:
            return []
        self._refill(now)
        due = []
        period = self.period()
        while self._probes and self._probes[0][0] <= now and self._tokens >= 1:
            at, pid = heapq.heappop(self._probes)
            p = self._peers.get(pid)
            if p is None or p.next_probe != at:
                continue  # a stale row: the peer left or was rescheduled
            self._tokens -= 1
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            p.outstanding[self._seq] = now
            # From the send, not the schedule: a stall or the bucket never causes a burst
            # later, and peers the bucket spread out stay spread out.
            p.next_probe = now + period
            heapq.heappush(self._probes, (p.next_probe, pid))
            heapq.heappush(self._checks, (now + self.interval, pid))  # when this probe counts as missed
            due.append((pid, self._seq))
        return due

    def on_probe_reply(self, peer_id: int, seq: int, now: float) -> bool:
        """Count a reply; False (and nothing changes) unless it matches a live probe."""
        p = self._peers.get(peer_id)
        if p is None or self.disabled is not None:
            return False
        sent = p.outstanding.pop(seq, None)
        if sent is None or now - sent > self.interval:
            return False
        p.last_reply = now
        p.streak += 1
        if p.mode == FASTDP:
            p.reason = REASON_HEALTHY  # an adopted path is verified now
        heapq.heappush(self._checks, (now, peer_id))  # it may recover now (a failure shows at a probe's expiry)
        return True

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float) -> list[tuple[int, Mode, str]]:
        """Expire missed probes and move the peers that are due; return mode changes."""
        changed: list[tuple[int, Mode, str]] = []
        if self.disabled is not None:
            return changed
        seen: set[int] = set()
        window = self._window()
        while self._checks and self._checks[0][0] <= now:
            _, pid = heapq.heappop(self._checks)
            p = self._peers.get(pid)
            if p is None or pid in seen:
                continue
            seen.add(pid)
            for seq, sent in list(p.outstanding.items()):
                if now - sent >= self.interval:
                    del p.outstanding[seq]
                    p.streak = 0
            if p.mode == FASTDP and now - p.last_reply >= window:
                p.mode, p.reason = SLEEVE, f"no vxlan probe reply for {window:.1f}s"
                changed.append((pid, p.mode, p.reason))
            elif p.mode == SLEEVE and p.streak >= self.recover_after:
                p.mode, p.reason = FASTDP, REASON_HEALTHY
                changed.append((pid, p.mode, p.reason))
        return sorted(changed)

    def next_deadline(self) -> float | None:
        """When `tick`/`probes_due` next have work; None if nothing is scheduled."""
        if self.disabled is not None or not self._peers:
            return None
        while self._probes and (self._probes[0][1] not in self._peers or self._peers[self._probes[0][1]].next_probe != self._probes[0][0]):
            heapq.heappop(self._probes)
        while self._checks and self._checks[0][1] not in self._peers:
            heapq.heappop(self._checks)
        times = []
        if self._probes:
            at = self._probes[0][0]
            if self._tokens < 1:  # the bucket decides, not the schedule
                at = max(at, self._refilled + (1 - self._tokens) / self.max_rate)
            times.append(at)
        if self._checks:
            times.append(self._checks[0][0])
        return min(times) if times else None

    def _window(self) -> float:
        return self.fail_after * self.period()

    def _refill(self, now: float) -> None:
        if now > self._refilled:
            self._tokens = min(self._burst, self._tokens + (now - self._refilled) * self.max_rate)
            self._refilled = now
