"""Address conflicts: a MAC or IP address two peers claim is detected, and the earlier
claim keeps it (our own endpoints first; then the claim this router saw first; then, for
claims that arrived together, the lower entry version, then the lower name)."""

from meshnet.mesh.claims import Claims
from meshnet.mesh.topology import PeerEntry
from meshnet.testing.gossipnet import GossipNet

MAC = "02:00:00:00:00:01"


def entry(i, eps, version=1):
    return PeerEntry(bytes([i]) * 16, f"p{i}", 1, version, 6783, 6783, (), {"eps": eps})


def test_the_first_claim_seen_keeps_the_address():
    c = Claims(local=b"L" * 16)
    c.update([entry(1, [[MAC, ["10.32.0.5/12"], "a"]])])
    c.update([entry(2, [[MAC, ["10.32.0.5/12"], "evil"]], version=0)])  # lower version, but later
    assert c.owner("mac", MAC) == bytes([1]) * 16 and c.owner("ip", "10.32.0.5") == bytes([1]) * 16
    assert c.contested == 2 and c.detected == 2
    new = c.take_new()
    assert {(x.kind, x.owner, x.other) for x in new} == {("mac", bytes([1]) * 16, bytes([2]) * 16), ("ip", bytes([1]) * 16, bytes([2]) * 16)}
    assert c.take_new() == []
    (mac_conflict, ip_conflict) = c.conflicts()
    assert mac_conflict == {"kind": "mac", "address": MAC, "owner": (bytes([1]) * 16).hex(), "others": [(bytes([2]) * 16).hex()]}


def test_a_router_keeps_its_own_endpoints_whatever_came_first():
    local = b"L" * 16
    c = Claims(local=local)
    c.update([entry(1, [[MAC, [], ""]])])
    c.update([PeerEntry(local, "me", 1, 9, 6783, 6783, (), {"eps": [[MAC, [], ""]]})])
    assert c.owner("mac", MAC) == local


def test_claims_arriving_together_go_by_version_then_name():
    c = Claims(local=b"L" * 16)
    c.update([entry(3, [[MAC, [], ""]], version=5), entry(2, [[MAC, [], ""]], version=7)])
    assert c.owner("mac", MAC) == bytes([3]) * 16
    c2 = Claims(local=b"L" * 16)
    c2.update([entry(3, [[MAC, [], ""]], version=5), entry(2, [[MAC, [], ""]], version=5)])
    assert c2.owner("mac", MAC) == bytes([2]) * 16


def test_a_withdrawn_or_forgotten_claim_ends_the_conflict():
    c = Claims(local=b"L" * 16)
    c.update([entry(1, [[MAC, ["fe80::1/64"], ""]])])
    c.update([entry(2, [[MAC, ["fe80:0:0::1/64"], ""]])])  # the same IPv6 address, spelled otherwise
    assert c.contested == 2
    c.update([entry(1, [], version=2)])  # the first claimant withdraws: the second gets it
    assert c.owner("mac", MAC) == bytes([2]) * 16 and c.contested == 0
    c.remove(bytes([2]) * 16)
    assert c.owner("mac", MAC) is None and list(c.owners("mac")) == []


def test_an_owner_that_restarts_keeps_its_address():
    c = Claims(local=b"L" * 16)
    c.update([entry(1, [[MAC, [], ""]], version=1)])
    c.update([entry(2, [[MAC, [], ""]], version=1)])
    c.update([entry(1, [[MAC, [], "renamed"]], version=50)])  # a newer entry listing the same MAC
    assert c.owner("mac", MAC) == bytes([1]) * 16


def test_a_peer_announcing_a_known_mac_takes_nothing_anywhere_in_the_mesh():
    """The reproduction of issue 12: a peer that announces an existing container's MAC
    silently took its traffic. Now every router keeps the first owner and reports it."""
    net = GossipNet(4, seed=5)
    for i in range(3):
        net.connect(i, i + 1)
    net.settle()
    net._emit(1, net.cores[1].set_data("eps", [[MAC, ["10.32.0.7/12"], "web"]], now=net.now))
    net.settle()
    net.now += 1
    net._emit(3, net.cores[3].set_data("eps", [[MAC, ["10.32.0.7/12"], "web"]], now=net.now))
    net.settle()
    owner = net.cores[1].name
    for core in net.cores[:3]:
        assert core.claims.owner("mac", MAC) == owner and core.claims.owner("ip", "10.32.0.7") == owner
    for core in net.cores:
        assert core.claims.contested == 2  # and every router, the claimant's own included, reports it
    assert net.cores[3].claims.owner("mac", MAC) == net.cores[3].name  # only on its own router
