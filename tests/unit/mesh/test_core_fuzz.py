"""Property: for any message the decoder accepts, `MeshCore.receive` never raises, and what
the core then stores and forwards stays within the bounds (every peer would decode it).

Messages are generated near and across every bound (integers at 0, 2^63 - 1 and just
past, long strings, many endpoints, conflicting MACs); most decode, some are rejected,
which is fine. Accepted ones go to core 1 of a three-core GossipNet, which then gossips
on: `GossipNet.step` decodes every forwarded message with the real decoder, so anything
out of bounds that got stored would fail here.
"""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.mesh import bounds, wire
from meshnet.mesh.quota import Limits
from meshnet.mesh.wire import Msg
from meshnet.testing.gossipnet import GossipNet

TOP = bounds.MAX_U63
ints = st.one_of(st.sampled_from([0, 1, TOP - 1, TOP, TOP + 1, -1, 65535, 65536]), st.integers(-(2**63), 2**64 - 1))
good_ints = st.one_of(st.sampled_from([0, 1, TOP - 1, TOP]), st.integers(0, TOP))
peer_names = [bytes([i]) * 16 for i in range(4)]
names = st.one_of(st.sampled_from(peer_names), st.binary(min_size=16, max_size=16), st.binary(max_size=18))
good_names = st.one_of(st.sampled_from(peer_names), st.binary(min_size=16, max_size=16))
good_macs = st.sampled_from([f"02:00:00:00:00:{i:02x}" for i in range(6)])
good_cidrs = st.sampled_from(["10.32.0.1/12", "10.32.0.2/12", "fe80::1/64", "fe80:0::1/64"])
endpoint = st.one_of(
    st.tuples(good_macs, st.lists(good_cidrs, max_size=3), st.text(max_size=5)).map(list),
    st.tuples(good_macs, st.lists(good_cidrs, max_size=2), st.text(max_size=3), good_ints).map(list),
)
leaf = st.one_of(st.none(), st.booleans(), ints, st.text(max_size=8), st.binary(max_size=8))
plain = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=12)
link = st.tuples(good_names, st.sampled_from(["10.0.0.1", "10.0.0.2", "::1"]), st.booleans()).map(list)
good_entry = st.fixed_dictionaries(
    {
        "n": good_names,
        "k": st.text(max_size=64),
        "u": good_ints,
        "v": good_ints,
        "p": st.integers(1, 65535),
        "d": st.integers(1, 65535),
        "c": st.lists(link, max_size=3),
        "x": st.one_of(
            st.fixed_dictionaries({"eps": st.lists(endpoint, max_size=12)}),
            st.dictionaries(st.text(max_size=4), leaf, max_size=3),
        ),
    }
)
bad_values = st.one_of(ints, names, plain, st.text(min_size=60, max_size=70), st.just([["02:00:00:00:00:0g", [], ""]]))


def _mutated(e):
    return st.tuples(st.sampled_from(sorted(e)), bad_values).map(lambda kv: {**e, kv[0]: kv[1]})


entry = st.one_of(good_entry, good_entry, good_entry.flatmap(_mutated))
messages = st.one_of(
    st.tuples(st.just(Msg.TOPOLOGY), st.lists(good_entry, min_size=1, max_size=4).map(lambda es: (es,))),
    st.tuples(st.just(Msg.TOPOLOGY), st.lists(good_entry, min_size=1, max_size=4).map(lambda es: (es,))),
    st.tuples(st.just(Msg.TOPOLOGY), st.lists(entry, max_size=4).map(lambda es: (es,))),
    st.tuples(st.just(Msg.DIGEST), st.lists(st.tuples(names, ints).map(list), max_size=5).map(lambda ps: (ps,))),
    st.tuples(st.just(Msg.REQUEST), st.lists(names, max_size=5).map(lambda ns: (ns,))),
    st.tuples(st.just(Msg.BROADCAST), st.tuples(st.sampled_from(["ipam", "x", ""]), names, ints, st.binary(max_size=20))),
    st.tuples(st.just(Msg.UNICAST), st.tuples(st.sampled_from(["ipam", "x"]), names, names, st.binary(max_size=20))),
    st.tuples(st.just(Msg.SUMMARY), st.tuples(st.binary(min_size=15, max_size=17))),
    st.tuples(st.sampled_from(list(Msg)), st.lists(plain, max_size=4).map(tuple)),
)
limits = st.sampled_from([Limits(), Limits(max_peers=5, max_endpoints=10, max_peer_endpoints=3)])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.lists(messages, min_size=1, max_size=5), limit=limits)
def test_any_accepted_message_is_handled_and_what_is_kept_stays_in_bounds(batch, limit):
    net = GossipNet(3, seed=1)
    for core in net.cores:
        core.quota.limits = limit
    net.connect(0, 1)
    net.connect(1, 2)
    net.settle()
    target = net.cores[1]
    conn = next(c for c, info in target.conns.items() if info.peer == net.cores[0].name)
    for kind, fields in batch:
        try:
            message = wire.decode_message(wire.encode_message(kind, *fields))
        except RemoteProtocolError:
            continue
        net._emit(1, target.receive(conn, message, now=net.now))  # never raises
        net.settle()  # forwarded messages are decoded again by the receiving cores
    net.advance(1.0)
    net.advance(10.0)
    net.settle()
    for core in net.cores:
        assert len(core._summary()) == 16
        remote = [e for n, e in core.topology.entries.items() if n != core.name]
        assert len(core.topology.entries) <= max(limit.max_peers, 3)
        assert core.quota.stored_endpoints == sum(len(e.data.get("eps", [])) for e in remote)
        assert core.quota.stored_endpoints <= limit.max_endpoints
        for e in remote:
            assert 0 <= e.version <= TOP and e.wire_size <= bounds.MAX_ENTRY_BYTES
            assert len(e.data.get("eps", [])) <= limit.max_peer_endpoints
        for address, owner in core.claims.owners("mac"):
            assert owner in core.topology.entries


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_either_decode_or_are_refused(data):
    net = GossipNet(2, seed=random.randrange(1000))
    net.connect(0, 1)
    try:
        message = wire.decode_message(data)
    except RemoteProtocolError:
        return
    conn = next(iter(net.cores[1].conns))
    net.cores[1].receive(conn, message, now=net.now)
    net.cores[1].tick(now=net.now + 1)
