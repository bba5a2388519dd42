"""`--ipalloc-init`: how a peer gets its first ring.

  consensus=N   the first peers in consensus mode agree (Paxos, `paxos.py`) on the list of
                peers the range is split among, once a quorum of N//2+1 of them is known;
  seed=A,B,...  the range is split among exactly these peers (32-hex-digit names), no
                agreement needed, but every peer must be given the same list;
  observer      takes no space in the split and waits for a ring from the others.

Whatever the mode, a ring learned from a peer wins over making one, and a ring persisted in
the state dir wins over all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshnet.ipam.addr import Block
from meshnet.ipam.errors import IpamConfigError
from meshnet.ipam.ring import NAME_LEN, Ring, genesis_id

MAX_CONSENSUS = 100_000  # a sanity bound on N


@dataclass(frozen=True, slots=True)
class InitMode:
    kind: str  # "consensus" | "seed" | "observer"
    n: int = 0
    seeds: tuple[bytes, ...] = ()

    def __str__(self) -> str:
        if self.kind == "consensus":
            return f"consensus={self.n}"
        if self.kind == "seed":
            return "seed=" + ",".join(s.hex() for s in self.seeds)
        return self.kind


def parse_init(text: object) -> InitMode:
    """Parse `--ipalloc-init`. Raises IpamConfigError with what is wrong and what is expected."""
    usage = "expected consensus=N, seed=PEER,PEER,... (32-hex-digit peer names) or observer"
    if not isinstance(text, str):
        raise IpamConfigError(f"--ipalloc-init: {usage}")
    kind, sep, arg = text.strip().partition("=")
    if kind == "observer" and not sep:
        return InitMode("observer")
    if kind == "consensus" and sep:
        if not arg.isdigit() or not 1 <= int(arg) <= MAX_CONSENSUS:
            raise IpamConfigError(f"--ipalloc-init consensus=N: N must be a whole number >= 1, got {arg!r}")
        return InitMode("consensus", n=int(arg))
    if kind == "seed" and sep:
        seeds = []
        for item in arg.split(","):
            item = item.strip().lower()
            try:
                name = bytes.fromhex(item)
            except ValueError:
                name = b""
            if len(name) != NAME_LEN:
                raise IpamConfigError(f"--ipalloc-init seed: {item!r} is not a 32-hex-digit peer name")
            seeds.append(name)
        if len(set(seeds)) != len(seeds):
            raise IpamConfigError("--ipalloc-init seed: a peer is listed twice")
        return InitMode("seed", seeds=tuple(sorted(seeds)))
    raise IpamConfigError(f"--ipalloc-init {text!r}: {usage}")


def seed_ring(universe: Block, seeds: tuple[bytes, ...]) -> Ring:
    return Ring.split(universe, seeds, genesis_id("seed", universe, seeds))


def consensus_ring(universe: Block, chosen: tuple[bytes, ...]) -> Ring:
    return Ring.split(universe, chosen, genesis_id("consensus", universe, chosen))
