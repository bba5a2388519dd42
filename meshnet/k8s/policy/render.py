"""A `Ruleset` as an nft script: the whole table, or the change from the one in force.

Either script is fed to one `nft -f -`, which the kernel commits as one transaction:
packets see the old ruleset or the new one, never a mix, so an update opens no window in
which an allowed flow is dropped or a denied one passes. Connections already accepted
stay accepted through the update by the `ct state established,related accept` at the top
of the forward chain (a policy that stops allowing something stops new connections).

`replace(new)` deletes and re-creates the table (the first apply, or after a failure:
named counters restart from zero). `update(old, new)` touches only what differs: new
objects are added, changed sets and maps get element-level deletes and adds, changed
chains are flushed and refilled, and what is gone is deleted last (a chain is emptied
first; maps stop naming it in the element step before), so named counters of policies
still in force keep counting across updates.

Only names the compiler made reach the script (hex hashes behind fixed prefixes), and the
table name is checked by `check_table_name`, so nothing from the API is spliced in.
"""

from __future__ import annotations

import re
from typing import Iterable

from meshnet.errors import UsageError
from meshnet.k8s.policy.ruleset import AddrIn, AddrSet, Chain, CtState, DestIn, DestSet, PortIn, Rule, Ruleset, VerdictMap

TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{2,30}$")
CHUNK = 500  # elements per `add element` line


def check_table_name(name: str) -> str:
    if not TABLE_NAME.match(name) or "_" not in name:  # an underscore keeps it clear of nft keywords
        raise UsageError(f"nftables table name {name!r}: want 3-31 of [a-z0-9_], starting with a letter, with an underscore")
    return name


def _port(p: tuple[str, int, int]) -> str:
    proto, lo, hi = p
    return f"{proto} . {lo}" if lo == hi else f"{proto} . {lo}-{hi}"


def rule_text(rule: Rule) -> str:
    parts = []
    for m in rule.matches:
        if isinstance(m, CtState):
            parts.append("ct state " + ",".join(m.states))
        elif isinstance(m, AddrIn):
            parts.append(f"ip {m.field.value} @{m.set}")
        elif isinstance(m, PortIn):
            parts.append("meta l4proto . th dport { " + ", ".join(map(_port, m.ports)) + " }")
        elif isinstance(m, DestIn):
            parts.append(f"ip daddr . meta l4proto . th dport @{m.set}")
    if rule.log is not None:
        lg = rule.log
        parts.append(f'limit rate {lg.rate}/second burst {2 * lg.rate} packets log prefix "{lg.prefix}" group {lg.group}')
    parts.extend(f'counter name "{c}"' for c in rule.counters)
    if rule.vmap is not None:
        parts.append(f"ip {rule.vmap.field.value} vmap @{rule.vmap.map}")
    if rule.verdict is not None:
        parts.append(rule.verdict.value)
    return " ".join(parts)


def _element(obj: AddrSet | DestSet | VerdictMap, e) -> str:
    if isinstance(obj, AddrSet):
        return e
    if isinstance(obj, DestSet):
        return f"{e[0]} . {e[1]} . {e[2]}"
    return f"{e[0]} : jump {e[1]}"


def _key(obj: AddrSet | DestSet | VerdictMap, e) -> str:
    return e[0] if isinstance(obj, VerdictMap) else _element(obj, e)


class Script:
    def __init__(self, table: str):
        self.table = check_table_name(table)
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def elements(self, verb: str, name: str, items: Iterable[str]) -> None:
        items = list(items)
        for i in range(0, len(items), CHUNK):
            self.add(f"{verb} element inet {self.table} {name} {{ " + ", ".join(items[i : i + CHUNK]) + " }")

    def declare(self, kind: str, obj) -> None:
        t = self.table
        if kind == "counter":
            self.add(f"add counter inet {t} {obj}")
        elif kind == "set":
            self.add(f"add set inet {t} {obj.name} {{ type ipv4_addr; flags interval; }}")
        elif kind == "destset":
            self.add(f"add set inet {t} {obj.name} {{ type ipv4_addr . inet_proto . inet_service; }}")
        elif kind == "map":
            self.add(f"add map inet {t} {obj.name} {{ type ipv4_addr : verdict; }}")
        elif obj.hook:
            self.add(f"add chain inet {t} {obj.name} {{ type filter hook {obj.hook} priority filter; policy accept; }}")
        else:
            self.add(f"add chain inet {t} {obj.name}")

    def fill_chain(self, chain: Chain) -> None:
        for rule in chain.rules:
            self.add(f"add rule inet {self.table} {chain.name} {rule_text(rule)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


ORDER = ("counter", "set", "destset", "chain", "map")  # declared in this order: maps name chains


def _declared(objects: dict) -> list[tuple[str, str]]:
    return sorted(objects, key=lambda k: (ORDER.index(k[0]), k[1]))


def replace(new: Ruleset) -> str:
    """The whole table, replacing whatever is there (or nothing)."""
    s = Script(new.table)
    s.add(f"add table inet {s.table}")
    s.add(f"delete table inet {s.table}")
    s.add(f"add table inet {s.table}")
    objs = new.objects()
    for key in _declared(objs):
        s.declare(key[0], objs[key])
    for key in _declared(objs):
        obj = objs[key]
        if key[0] in ("set", "destset", "map"):
            s.elements("add", obj.name, (_element(obj, e) for e in obj.elements))  # type: ignore[attr-defined]
        elif key[0] == "chain":
            s.fill_chain(obj)  # type: ignore[arg-type]
    return s.text()


def update(old: Ruleset, new: Ruleset) -> str | None:
    """The change from `old` (in force) to `new`; None if there is none."""
    if old.table != new.table:
        return replace(new)
    s = Script(new.table)
    before, after = old.objects(), new.objects()
    for key in _declared(after):
        if key not in before:
            s.declare(key[0], after[key])
    for key in _declared(after):
        obj, prev = after[key], before.get(key)
        if key[0] in ("set", "destset", "map"):
            was = set(prev.elements) if prev is not None else set()  # type: ignore[attr-defined]
            now = set(obj.elements)  # type: ignore[attr-defined]
            if isinstance(obj, VerdictMap):  # a key whose chain changed goes and comes back
                gone = {e for e in was if e not in now}
                s.elements("delete", obj.name, sorted(_key(obj, e) for e in gone))
                s.elements("add", obj.name, sorted(_element(obj, e) for e in now - was))
            else:
                s.elements("delete", obj.name, sorted(_key(obj, e) for e in was - now))
                s.elements("add", obj.name, sorted(_element(obj, e) for e in now - was))
        elif key[0] == "chain" and obj != prev:
            if prev is not None:
                s.add(f"flush chain inet {s.table} {obj.name}")  # type: ignore[attr-defined]
            s.fill_chain(obj)  # type: ignore[arg-type]
    gone = [k for k in before if k not in after]
    for kind in ("chain", "set", "destset", "map", "counter"):
        for key in sorted(k for k in gone if k[0] == kind):
            if kind == "chain":
                s.add(f"flush chain inet {s.table} {key[1]}")
            verb = {"destset": "set"}.get(kind, kind)
            s.add(f"delete {verb} inet {s.table} {key[1]}")
    return s.text() if s.lines else None
