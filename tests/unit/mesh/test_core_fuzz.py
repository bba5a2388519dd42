"""Hostile but well-framed messages: the core either handles them or raises
RemoteProtocolError (the runtime then closes that connection); nothing else escapes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.mesh import wire
from meshnet.testing.gossipnet import GossipNet

leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), st.binary(max_size=20))
values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4), max_leaves=20)
entry_like = st.fixed_dictionaries(
    {"n": st.binary(min_size=16, max_size=16), "k": st.text(max_size=5), "u": st.integers(0, 9), "v": st.integers(0, 2**40),
     "p": st.integers(-1, 70000), "d": st.integers(-1, 70000), "c": values, "x": values}
)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([m for m in wire.Msg if m not in (wire.Msg.HELLO, wire.Msg.FEATURES)]), fields=st.lists(values | st.lists(entry_like, max_size=3), max_size=5))
def test_core_receive_only_raises_protocol_error(kind, fields):
    net = GossipNet(2, seed=1)
    net.connect(0, 1)
    body = wire.encode_message(kind, *fields)
    try:
        message = wire.decode_message(body)
    except RemoteProtocolError:
        return
    conn = next(iter(net.cores[1].conns))
    try:
        net.cores[1].receive(conn, message, now=net.now)
    except RemoteProtocolError:
        pass
    net.cores[1].tick(now=net.now + 1)  # still a working core afterwards
