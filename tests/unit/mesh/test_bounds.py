"""Every field of every control message is checked against its bound at decode
(docs/protocol.md, "Bounds"): a value just inside passes, one just outside is a
RemoteProtocolError naming the field, and nothing reaches the core."""

import ipaddress

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.mesh import bounds, schema, wire
from meshnet.mesh.core import MeshCore
from meshnet.mesh.topology import PeerEntry
from meshnet.mesh.wire import Msg

NAME = b"n" * 16
TOP = bounds.MAX_U63


def entry(**changes):
    e = {"n": NAME, "k": "nick", "u": 1, "v": 5, "p": 6783, "d": 6783, "c": [[b"p" * 16, "10.0.0.1", True]], "x": {}}
    e.update(changes)
    return e


def decode(kind, *fields):
    return wire.decode_message(wire.encode_message(kind, *fields))


def rejected(kind, *fields, why=""):
    with pytest.raises(RemoteProtocolError, match=why):
        decode(kind, *fields)


# -- integers --------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["v", "u"])
def test_entry_integers_stop_at_2_63_minus_1(field):
    assert decode(Msg.TOPOLOGY, [entry(**{field: TOP})]).fields[0][0]
    rejected(Msg.TOPOLOGY, [entry(**{field: TOP + 1})], why=f"entry {'version' if field == 'v' else 'uid'}")
    rejected(Msg.TOPOLOGY, [entry(**{field: -1})], why="not an integer")
    rejected(Msg.TOPOLOGY, [entry(**{field: True})], why="not an integer")


@pytest.mark.parametrize("field", ["p", "d"])
@pytest.mark.parametrize("value", [0, 65536, -1, "6783", 1.0])
def test_entry_ports(field, value):
    rejected(Msg.TOPOLOGY, [entry(**{field: value})], why="port")


def test_digest_and_broadcast_integers():
    assert decode(Msg.DIGEST, [[NAME, TOP]]).fields == ([[NAME, TOP]],)
    rejected(Msg.DIGEST, [[NAME, TOP + 1]], why="DIGEST version")
    rejected(Msg.DIGEST, [[NAME, -5]], why="DIGEST version")
    rejected(Msg.BROADCAST, "ipam", NAME, -1, b"", why="BROADCAST seq")
    rejected(Msg.BROADCAST, "ipam", NAME, TOP + 1, b"", why="BROADCAST seq")


def test_features_bounds():
    good = {"name": NAME, "nick": "a", "uid": TOP, "port": 1, "udp_port": 65535, "features": {"sleeve": 1}}
    assert decode(Msg.FEATURES, good)
    for key, bad in [("uid", TOP + 1), ("uid", -1), ("port", 0), ("port", 70000), ("udp_port", "x"), ("nick", "n" * 65),
                     ("name", b"short"), ("features", {"x": "y"}), ("features", {f"k{i}": 1 for i in range(33)})]:
        rejected(Msg.FEATURES, {**good, key: bad}, why="FEATURES")


def test_hello_bounds():
    assert decode(Msg.HELLO, {"encrypt": True, "pub": b"k" * 32})
    rejected(Msg.HELLO, {"encrypt": "yes"}, why="HELLO encrypt")
    rejected(Msg.HELLO, {"encrypt": True, "pub": b"k" * 31}, why="HELLO pub")
    rejected(Msg.HELLO, {str(i): i for i in range(17)}, why="HELLO")


# -- strings, bytes, counts -------------------------------------------------------------


def test_lengths():
    rejected(Msg.TOPOLOGY, [entry(k="n" * 65)], why="entry nick")
    rejected(Msg.TOPOLOGY, [entry(n=b"n" * 15)], why="entry name")
    rejected(Msg.BROADCAST, "c" * 33, NAME, 1, b"", why="BROADCAST channel")
    rejected(Msg.BROADCAST, "", NAME, 1, b"", why="BROADCAST channel")
    rejected(Msg.UNICAST, "ipam", NAME, b"d" * 17, b"", why="UNICAST dst")
    rejected(Msg.SUMMARY, b"h" * 15, why="SUMMARY")
    rejected(Msg.SUMMARY, "h" * 16, why="SUMMARY")
    rejected(Msg.REFUSE, "r" * 513, True, why="REFUSE reason")
    rejected(Msg.REFUSE, "r", True, "k" * 33, why="REFUSE kind")


def test_counts():
    assert decode(Msg.REQUEST, [NAME] * bounds.MAX_PEERS)
    rejected(Msg.REQUEST, [NAME] * (bounds.MAX_PEERS + 1), why="REQUEST")
    rejected(Msg.DIGEST, [[NAME, 1]] * (bounds.MAX_PEERS + 1), why="DIGEST")
    links = [[b"p" * 16, "10.0.0.1", True]]
    rejected(Msg.TOPOLOGY, [entry(c=links * (bounds.MAX_LINKS + 1))], why="entry links")
    rejected(Msg.TOPOLOGY, [entry(x={f"k{i}": 1 for i in range(17)})], why="entry data")
    ep = ["02:00:00:00:00:01", [], ""]
    assert decode(Msg.TOPOLOGY, [entry(x={"eps": [ep] * bounds.MAX_ENDPOINTS})])
    rejected(Msg.TOPOLOGY, [entry(x={"eps": [ep] * (bounds.MAX_ENDPOINTS + 1)})], why="endpoints")
    rejected(Msg.TOPOLOGY, [entry(x={"eps": [["02:00:00:00:00:01", ["10.0.0.1/8"] * 9, ""]]})], why="endpoint cidrs")


def test_an_entry_must_fit_a_frame():
    big = [["02:00:00:00:00:01", ["10.32.0.1/12"] * 8, "n" * 253]] * 400  # ~150 KB: fits
    assert decode(Msg.TOPOLOGY, [entry(x={"eps": big})])
    over = entry(x={"eps": big, "pad": "p" * (bounds.MAX_ENTRY_BYTES - 150_000)})
    with pytest.raises(RemoteProtocolError, match="over"):
        decode(Msg.TOPOLOGY, [over])


# -- types and nesting -------------------------------------------------------------------


@pytest.mark.parametrize(
    "ep",
    [
        ["02:00:00:00:00:0G", [], ""],
        ["02:00:00:00:00:01", "10.0.0.1/8", ""],
        ["02:00:00:00:00:01", [7], ""],
        ["02:00:00:00:00:01", ["10.0.0.300/8"], ""],
        ["02:00:00:00:00:01", [], 5],
        ["02:00:00:00:00:01", []],
        "02:00:00:00:00:01",
    ],
)
def test_malformed_endpoints(ep):
    rejected(Msg.TOPOLOGY, [entry(x={"eps": [ep]})], why="endpoint")


def test_dns_records_bounds():
    assert decode(Msg.TOPOLOGY, [entry(x={"dns": [["web", ["10.32.0.1"] * 32]]})])
    good = [["web", ["10.32.0.1"] * 2]] * 1024
    assert decode(Msg.TOPOLOGY, [entry(x={"dns": good})])
    rejected(Msg.TOPOLOGY, [entry(x={"dns": good + [["x", []]]})], why="dns records")
    rejected(Msg.TOPOLOGY, [entry(x={"dns": [["web", ["10.32.0.1"] * 33]]})], why="dns addresses")
    rejected(Msg.TOPOLOGY, [entry(x={"dns": [["w" * 64, []]]})], why="dns label")
    rejected(Msg.TOPOLOGY, [entry(x={"dns": [["web"]]})], why="dns record")
    rejected(Msg.TOPOLOGY, [entry(x={"dns": [["web", [5]]]})], why="dns address")


def test_unknown_data_is_kept_only_shallow():
    nested = "leaf"
    for _ in range(bounds.MAX_DEPTH):
        nested = [nested]
    assert decode(Msg.TOPOLOGY, [entry(x={"future": nested})]).fields[0][0].data["future"] == nested
    rejected(Msg.TOPOLOGY, [entry(x={"future": [nested]})], why="nested deeper")
    rejected(Msg.TOPOLOGY, [entry(x={"future": msgpack.ExtType(5, b"x")})], why="unknown type")


def test_deep_nesting_anywhere_is_refused():
    body = bytearray(msgpack.packb([3, [entry(x={"deep": "SENTINEL"})]], use_bin_type=True))
    at = body.index(msgpack.packb("SENTINEL"))
    deep = b"\x91" * 600 + b"\xc0"  # deeper than any msgpack packer would write
    body[at : at + 9] = deep
    with pytest.raises(RemoteProtocolError):
        wire.decode_message(bytes(body))
    with pytest.raises(RemoteProtocolError):
        wire.decode_message(b"\x91" * 5000 + b"\xc0")


def test_wrong_shapes():
    rejected(Msg.TOPOLOGY, {"n": NAME}, why="TOPOLOGY")
    rejected(Msg.TOPOLOGY, [[1, 2]], why="entry")
    rejected(Msg.DIGEST, [[NAME]], why="DIGEST pair")
    rejected(Msg.REQUEST, ["name"], why="REQUEST name")
    rejected(Msg.TOPOLOGY, [entry(c=[[b"p" * 16, "not-an-ip", True]])], why="link ip")
    rejected(Msg.TOPOLOGY, [entry(c=[[b"p" * 16, "10.0.0.1", 1]])], why="link outbound")
    with pytest.raises(RemoteProtocolError, match="fields"):
        wire.decode_message(wire.encode_message(Msg.HEARTBEAT, 1))


# -- the reproduction of issue 12 ---------------------------------------------------------


def test_version_2_63_never_reaches_the_core_and_the_top_version_does_no_harm():
    """Before: an entry with version >= 2^63 was stored, gossiped on, and made every
    router's `_summary` raise OverflowError in the timer."""
    with pytest.raises(RemoteProtocolError, match="entry version"):
        decode(Msg.TOPOLOGY, [entry(v=1 << 63)])
    core = MeshCore(name=b"a" * 16, nick="a", uid=1, port=6783, udp_port=6783, now=100.0)
    core.add_connection(1, remote={"name": b"b" * 16, "nick": "b", "uid": 2, "port": 6783, "udp_port": 6783}, ip="10.0.0.2", outbound=True, now=100.0)
    core.receive(1, decode(Msg.TOPOLOGY, [entry(n=b"z" * 16, v=TOP)]), now=100.0)
    assert core.topology.entries[b"z" * 16].version == TOP
    assert len(core._summary()) == 16
    # An entry under our own name at the top version is no earlier life of ours (it is more
    # than 2^40 ms ahead): ignored. One a little ahead is, and we outrank it once.
    version = core.topology.local.version
    assert not core.receive(1, decode(Msg.TOPOLOGY, [entry(n=b"a" * 16, v=TOP)]), now=100.0)
    assert core.topology.local.version == version
    assert core.receive(1, decode(Msg.TOPOLOGY, [entry(n=b"a" * 16, v=version + 5000)]), now=100.0)
    assert core.topology.local.version == version + 5001
    assert not core.receive(1, decode(Msg.TOPOLOGY, [entry(n=b"a" * 16, v=version + 5000)]), now=100.0)
    core.tick(now=200.0)


def test_a_neighbours_entry_is_taken_only_from_that_neighbour():
    """A peer we are connected to sends us its changes itself: a copy relayed by someone
    else (at any version, e.g. the top one, which would shadow the real entry forever) is
    not taken, and not asked for after a digest."""
    core = MeshCore(name=b"a" * 16, nick="a", uid=1, port=6783, udp_port=6783, now=100.0)
    for conn, peer in ((1, b"b" * 16), (2, b"c" * 16)):
        core.add_connection(conn, remote={"name": peer, "nick": "x", "uid": 2, "port": 6783, "udp_port": 6783}, ip="10.0.0.2", outbound=True, now=100.0)
    core.receive(2, decode(Msg.TOPOLOGY, [entry(n=b"c" * 16, v=10)]), now=100.0)
    core.receive(1, decode(Msg.TOPOLOGY, [entry(n=b"c" * 16, v=TOP, c=[])]), now=100.0)  # forged by b
    assert core.topology.entries[b"c" * 16].version == 10
    sends = core.receive(1, decode(Msg.DIGEST, [[b"c" * 16, TOP], [b"d" * 16, 3]]), now=100.0)
    requests = [s.fields[0] for s in sends if s.kind is Msg.REQUEST]
    assert requests == [[b"d" * 16]]


def test_hello_on_an_established_connection_closes_it_without_raising():
    core = MeshCore(name=b"a" * 16, nick="a", uid=1, port=6783, udp_port=6783, now=100.0)
    core.add_connection(1, remote={"name": b"b" * 16, "nick": "b", "uid": 2, "port": 6783, "udp_port": 6783}, ip="10.0.0.2", outbound=True, now=100.0)
    (close,) = core.receive(1, decode(Msg.HELLO, {"encrypt": False}), now=100.0)
    assert close.refusal.value == "protocol_error"


def test_entries_are_cut_by_their_real_size():
    core = MeshCore(name=b"a" * 16, nick="a", uid=1, port=6783, udp_port=6783, now=100.0)
    core.add_connection(1, remote={"name": b"b" * 16, "nick": "b", "uid": 2, "port": 6783, "udp_port": 6783}, ip="10.0.0.2", outbound=True, now=100.0)
    fat = [PeerEntry(bytes([i]) * 16, "n" * 64, 1, 1, 1, 1, (), {"eps": [["02:00:00:00:00:01", [], "x" * 253]] * 300}) for i in range(20)]
    sends = core._send_entries(1, fat, 100.0)
    assert len(sends) > 1
    for send in sends:
        assert len(wire.encode_message(send.kind, *send.fields)) <= bounds.MAX_FRAME


def test_our_own_entry_never_grows_past_what_peers_accept():
    """Data that would make our entry too big is not taken: the entry keeps flowing."""
    core = MeshCore(name=b"a" * 16, nick="a", uid=1, port=6783, udp_port=6783, now=100.0)
    assert core.set_data("dns", [["web", ["10.32.0.1"] * 2]], now=100.0)
    version = core.topology.local.version
    assert core.set_data("dns", [[f"n{i}", ["10.32.0.1"] * 32] for i in range(1024)], now=101.0) == []
    assert core.topology.local.version == version and core.counters["oversize_entries"] == 1
    assert core.topology.local.wire_size <= bounds.MAX_ENTRY_BYTES


_CIDRS = st.one_of(
    st.builds(
        lambda parts, sep, prefix: ".".join(parts) + sep + prefix,
        st.lists(st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "0x1", " 1", "", "٣"])), min_size=3, max_size=5),
        st.sampled_from(["/", "", "//"]),
        st.one_of(st.integers(-1, 40).map(str), st.sampled_from(["024", "+8", " 8", "", "255.255.0.0", "٢"])),
    ),
    st.text(max_size=20),
    st.ip_addresses().map(str).map(lambda a: a + "/64"),
)


@settings(max_examples=2000, deadline=None)
@given(_CIDRS)
def test_endpoint_cidrs_are_checked_exactly_as_ipaddress_does(text):
    """The fast canonical-IPv4 path of the endpoint check accepts nothing `ip_interface`
    refuses and refuses nothing it accepts."""
    try:
        ipaddress.ip_interface(text)
        expected = True
    except ValueError:
        expected = False
    assert schema._is_cidr(text) is expected
