"""The control-message codec: round trips, golden bytes, and the fuzz invariant:
every input is either decoded or rejected with RemoteProtocolError, nothing else escapes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.errors import RemoteProtocolError
from meshnet.mesh import wire
from meshnet.mesh.wire import Msg


def test_preamble_is_frozen():
    assert wire.encode_preamble() == b"MESHNET\x01\x01"


def test_negotiate_picks_highest_common_version():
    assert wire.negotiate(b"MESHNET\x01\x05", ours=(1, 3)) == 3
    assert wire.negotiate(b"MESHNET\x02\x02", ours=(1, 3)) == 2


@pytest.mark.parametrize("preamble", [b"MESHNET\x04\x05", b"WEAVE\x01\x02xx", b"MESHNET\x03\x02", b"MESH"])
def test_negotiate_refuses(preamble):
    with pytest.raises(RemoteProtocolError):
        wire.negotiate(preamble, ours=(1, 3))


def test_golden_heartbeat_frame():
    # Frozen on purpose: changing it breaks interoperability (docs/protocol.md).
    assert wire.frame(wire.encode_message(Msg.HEARTBEAT)) == b"\x00\x00\x00\x02\x91\x02"


def test_roundtrip_every_kind():
    samples = {
        Msg.HELLO: ({"encrypt": False, "pub": None},),
        Msg.FEATURES: ({"name": b"x" * 16, "nick": "x", "uid": 1, "port": 6783, "udp_port": 6783, "features": {"sleeve": 1}},),
        Msg.HEARTBEAT: (),
        Msg.TOPOLOGY: ([],),
        Msg.DIGEST: ([[b"a" * 16, 5]],),
        Msg.REQUEST: ([b"a" * 16],),
        Msg.BROADCAST: ("ipam", b"s" * 16, 7, b"payload"),
        Msg.UNICAST: ("ipam", b"s" * 16, b"d" * 16, b"payload"),
        Msg.REFUSE: ("duplicate peer name", False),
        Msg.SUMMARY: (b"h" * 16,),
    }
    assert set(samples) == set(Msg)
    for kind, fields in samples.items():
        message = wire.decode_message(wire.encode_message(kind, *fields))
        assert message.kind is kind and message.fields == fields


def test_frame_reader_splits_and_joins():
    reader = wire.FrameReader()
    data = wire.frame(b"abc") + wire.frame(b"") + wire.frame(b"defg")
    out = []
    for i in range(len(data)):
        out += reader.feed(data[i : i + 1])
    assert out == [b"abc", b"", b"defg"]


def test_frame_reader_rejects_huge_length():
    with pytest.raises(RemoteProtocolError):
        wire.FrameReader().feed(b"\xff\xff\xff\xff")


@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", b"\x90", b"\x91\xc0", b"\x91\x63", b"\x92\x06\x01", b"\x92\x02\x01", b"\x91\xc3"],
)
def test_malformed_messages_rejected(body):
    with pytest.raises(RemoteProtocolError):
        wire.decode_message(body)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decoder_only_raises_protocol_error(data):
    try:
        wire.decode_message(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_fuzz_frame_reader(chunks):
    reader = wire.FrameReader()
    try:
        for chunk in chunks:
            for body in reader.feed(chunk):
                try:
                    wire.decode_message(body)
                except RemoteProtocolError:
                    pass
    except RemoteProtocolError:
        pass
