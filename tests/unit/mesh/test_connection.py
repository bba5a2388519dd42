"""The handshake and sealed messages, two ControlConnections joined by a fake wire."""

import os

import pytest

from meshnet.errors import HandshakeRefused, LocalProtocolError, Refusal, RemoteProtocolError
from meshnet.mesh.connection import ControlConnection, State
from meshnet.mesh import wire
from meshnet.mesh.wire import Msg


def features(name: bytes, nick: str = "x") -> dict:
    return {"name": name, "nick": nick, "uid": 1, "port": 6783, "udp_port": 6783, "features": {}}


def pair(pw_a=None, pw_b=None):
    a = ControlConnection(initiator=True, password=pw_a, features=features(b"a" * 16, "a"))
    b = ControlConnection(initiator=False, password=pw_b, features=features(b"b" * 16, "b"))
    return a, b


def shuttle(a, b, rounds=4):
    """Move bytes both ways until quiet; return the messages each side received."""
    got_a, got_b = [], []
    for _ in range(rounds):
        got_b += b.receive_data(a.data_to_send())
        got_a += a.receive_data(b.data_to_send())
    return got_a, got_b


@pytest.mark.parametrize("password", [None, b"s3cret"])
def test_handshake_establishes_and_exchanges(password):
    a, b = pair(password, password)
    shuttle(a, b)
    assert a.state is b.state is State.ESTABLISHED
    assert a.remote["name"] == b"b" * 16 and b.remote["nick"] == "a"
    assert a.encrypted == b.encrypted == (password is not None)
    a.send(Msg.HEARTBEAT)
    b.send(Msg.BROADCAST, "ch", b"a" * 16, 1, b"hi")
    got_a, got_b = shuttle(a, b)
    assert [m.kind for m in got_b] == [Msg.HEARTBEAT]
    assert got_a[0].fields == ("ch", b"a" * 16, 1, b"hi")


def test_sealed_bytes_hide_the_content():
    a, b = pair(b"pw", b"pw")
    shuttle(a, b)
    a.send(Msg.BROADCAST, "ch", b"a" * 16, 1, b"TOPSECRETPAYLOAD")
    assert b"TOPSECRETPAYLOAD" not in a.data_to_send()


def test_wrong_password_is_refused():
    a, b = pair(b"right", b"wrong")
    with pytest.raises(HandshakeRefused, match="wrong password"):
        shuttle(a, b)


@pytest.mark.parametrize("pw_a,pw_b,side", [(b"pw", None, "requires a password"), (None, b"pw", "we have a password")])
def test_encryption_mismatch_is_refused(pw_a, pw_b, side):
    a, b = pair(pw_a, pw_b)
    with pytest.raises(HandshakeRefused, match=side):
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())


def _established_encrypted():
    a, b = pair(b"pw", b"pw")
    shuttle(a, b)
    return a, b


def test_replayed_message_closes():
    a, b = _established_encrypted()
    a.send(Msg.HEARTBEAT)
    data = a.data_to_send()
    b.receive_data(data)
    with pytest.raises(RemoteProtocolError):
        b.receive_data(data)
    assert b.state is State.CLOSED


def test_reordered_messages_close():
    a, b = _established_encrypted()
    a.send(Msg.HEARTBEAT)
    first = a.data_to_send()
    a.send(Msg.HEARTBEAT)
    second = a.data_to_send()
    with pytest.raises(RemoteProtocolError):
        b.receive_data(second + first)


def test_forged_message_closes():
    a, b = _established_encrypted()
    a.send(Msg.HEARTBEAT)
    data = bytearray(a.data_to_send())
    data[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        b.receive_data(bytes(data))


def test_refuse_reaches_the_peer():
    a, b = pair()
    shuttle(a, b)
    b.refuse(Refusal.DUPLICATE_NAME, "duplicate peer name")
    with pytest.raises(HandshakeRefused) as info:
        a.receive_data(b.data_to_send())
    assert info.value.refusal is Refusal.DUPLICATE_NAME and info.value.retry is False
    assert "duplicate peer name" in info.value.reason


def test_refuse_from_a_peer_without_kind_is_other():
    a, b = pair()
    shuttle(a, b)
    b._send_body(wire.encode_message(Msg.REFUSE, "full", True))  # a version-1 peer's REFUSE
    with pytest.raises(HandshakeRefused) as info:
        a.receive_data(b.data_to_send())
    assert info.value.refusal is Refusal.OTHER and info.value.retry is True


def test_cannot_send_before_established():
    a, _ = pair()
    with pytest.raises(LocalProtocolError):
        a.send(Msg.HEARTBEAT)


def test_sleeve_keys_match_across_the_pair_and_differ_per_direction():
    a, b = _established_encrypted()
    a_tx, a_rx = a.session.sleeve_keys(b"a" * 16, b"b" * 16)
    b_tx, b_rx = b.session.sleeve_keys(b"b" * 16, b"a" * 16)
    assert (a_tx, a_rx) == (b_rx, b_tx) and a_tx != a_rx


def test_garbage_after_preamble_is_a_protocol_error():
    a, b = pair()
    with pytest.raises(RemoteProtocolError):
        b.receive_data(a.data_to_send()[:9] + b"\x00\x00\x00\x03" + os.urandom(3))
