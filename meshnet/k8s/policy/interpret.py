"""Run one packet through a `Ruleset` in Python, as nftables would.

This is how the compiler is checked against the evaluator without a kernel (the property
test): "what would this node do with this packet?". It knows exactly the statements the
compiler emits; the nftables semantics it follows:

- a base chain's rules run in order; `accept` and `drop` end the evaluation, the chain's
  end is its policy (accept);
- a vmap whose key is absent does nothing; a present key jumps: the chain runs and, at
  its end or on `return`, evaluation continues after the vmap rule;
- a rule's matches are ANDed; its statements (limit+log, counters) run in order once it
  matches; a `limit` that is over its rate stops the rule (the interpreter never is).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from meshnet.k8s.policy.ruleset import AddrIn, Chain, CtState, DestIn, Field, PortIn, Rule, Ruleset, Verdict

PORTED = ("tcp", "udp", "sctp")  # protocols whose header has a destination port where th dport reads


@dataclass(frozen=True)
class Packet:
    saddr: str
    daddr: str
    protocol: str  # "tcp", "udp", "sctp", "icmp"
    dport: int | None = None
    ct: str = "new"  # conntrack state: new, established, related


@dataclass
class Outcome:
    verdict: Verdict
    counters: list[str] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)  # log prefixes
    chains: list[str] = field(default_factory=list)  # the path taken


class Interpreter:
    def __init__(self, ruleset: Ruleset):
        self.rs = ruleset
        self.chains = {c.name: c for c in ruleset.chains}
        self.sets = {s.name: [ipaddress.IPv4Network(e) for e in s.elements] for s in ruleset.addr_sets}
        self.dests = {s.name: set(s.elements) for s in ruleset.dest_sets}
        self.maps = {m.name: dict(m.elements) for m in ruleset.maps}

    def _matches(self, rule: Rule, pkt: Packet) -> bool:
        for m in rule.matches:
            if isinstance(m, CtState):
                ok = pkt.ct in m.states
            elif isinstance(m, AddrIn):
                addr = ipaddress.IPv4Address(pkt.saddr if m.field is Field.SADDR else pkt.daddr)
                ok = any(addr in net for net in self.sets[m.set])
            elif isinstance(m, PortIn):
                ok = pkt.protocol in PORTED and pkt.dport is not None and any(p == pkt.protocol and lo <= pkt.dport <= hi for p, lo, hi in m.ports)
            elif isinstance(m, DestIn):
                ok = pkt.protocol in PORTED and (pkt.daddr, pkt.protocol, pkt.dport) in self.dests[m.set]
            else:  # pragma: no cover - the compiler emits nothing else
                raise TypeError(m)
            if not ok:
                return False
        return True

    def _chain(self, chain: Chain, pkt: Packet, out: Outcome, depth: int = 0) -> Verdict | None:
        """Run a chain; a final verdict (accept/drop) or None to carry on in the caller."""
        if depth > 16:  # nftables refuses deeper jumps; so do we
            raise RecursionError(chain.name)
        out.chains.append(chain.name)
        for rule in chain.rules:
            if not self._matches(rule, pkt):
                continue
            if rule.log is not None:
                out.logged.append(rule.log.prefix)
            out.counters.extend(rule.counters)
            if rule.vmap is not None:
                key = pkt.saddr if rule.vmap.field is Field.SADDR else pkt.daddr
                target = self.maps[rule.vmap.map].get(key)
                if target is not None:
                    verdict = self._chain(self.chains[target], pkt, out, depth + 1)
                    if verdict is not None:
                        return verdict
                continue
            if rule.verdict is Verdict.RETURN:
                return None
            if rule.verdict is not None:
                return rule.verdict
        return None

    def run(self, pkt: Packet) -> Outcome:
        """The forward hook's verdict on `pkt` (traffic the node routes or bridges)."""
        out = Outcome(Verdict.ACCEPT)
        for chain in self.rs.chains:
            if chain.hook == "forward":
                verdict = self._chain(chain, pkt, out)
                if verdict is Verdict.DROP:
                    out.verdict = Verdict.DROP
                    break
        return out


def forwards(ruleset: Ruleset, pkt: Packet) -> bool:
    return Interpreter(ruleset).run(pkt).verdict is Verdict.ACCEPT
