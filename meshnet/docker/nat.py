"""`expose --nat` and `hide`: the NAT table and IPv4 forwarding, in the right order.

The guard and masquerade table (`ip meshnet-nat`, `meshnet/dataplane/netfilter.py`) goes in
before forwarding is turned on, and comes out after it is turned back off; the forwarding
setting found before is kept in the exposure state (`forward_was`), so `hide` restores
it, across router restarts too.
"""

from __future__ import annotations

from typing import Any

from meshnet.docker.ports import Plumbing

NAT_TABLE = "meshnet-nat"


async def apply_nat(plumbing: Plumbing, universe: str, exp: dict[str, Any], old: dict[str, Any]) -> None:
    """Make the kernel match `exp` (coming from `old`); records `forward_was` in `exp`."""
    if exp.get("nat") and exp["cidrs"]:
        await plumbing.set_nat(NAT_TABLE, universe, True)
        found = await plumbing.set_forwarding(True)
        if "forward_was" not in exp:
            exp["forward_was"] = old.get("forward_was", found)
    elif old.get("nat") or exp.get("nat"):
        if old.get("forward_was") == "0":
            await plumbing.set_forwarding(False)
        await plumbing.set_nat(NAT_TABLE, universe, False)
        exp.pop("forward_was", None)
