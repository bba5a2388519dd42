"""The router's side of sleeve encryption: both ends of a control connection install the
same key pair (swapped) with the same epoch, and re-programming does not reset counters."""

from __future__ import annotations

from types import SimpleNamespace

from meshnet.dataplane import layout
from meshnet.mesh.session import Ephemeral, Session
from meshnet.runtime.router import Router, _describe_pump

NAME_A, NAME_B = bytes(15) + b"\x0a", bytes(15) + b"\x0b"


class FakePump:
    def __init__(self):
        self.calls = []

    def set_peer_keys(self, peer, tx, rx, *, epoch):
        self.calls.append((peer, tx, rx, epoch))


def _router(name: bytes, peer: bytes, session: Session, password: bytes | None = b"pw") -> Router:
    r = Router.__new__(Router)
    r.config = SimpleNamespace(password=password)
    r.core = SimpleNamespace(name=name, conns={7: SimpleNamespace(peer=peer)})
    r._conns = {7: SimpleNamespace(proto=SimpleNamespace(session=session))}
    r._pump = FakePump()
    r._pump_keys = {}
    return r


def _sessions() -> tuple[Session, Session]:
    ea, eb = Ephemeral(), Ephemeral()
    shared = ea.exchange(eb.public)
    common = dict(shared=shared, password=b"pw", pub_initiator=ea.public, pub_acceptor=eb.public)
    return Session(initiator=True, **common), Session(initiator=False, **common)


def test_both_ends_install_matching_keys_and_the_same_epoch():
    sa, sb = _sessions()
    a, b = _router(NAME_A, NAME_B, sa), _router(NAME_B, NAME_A, sb)
    a._program_pump_keys({layout.peer_id(NAME_B): None})
    b._program_pump_keys({layout.peer_id(NAME_A): None})
    [(pa, txa, rxa, ea)], [(pb, txb, rxb, eb)] = a._pump.calls, b._pump.calls
    assert (pa, pb) == (layout.peer_id(NAME_B), layout.peer_id(NAME_A))
    assert txa == rxb and rxa == txb and txa != rxa and ea == eb


def test_keys_are_installed_once_per_session_and_never_without_a_password():
    sa, _ = _sessions()
    a = _router(NAME_A, NAME_B, sa)
    for _ in range(3):
        a._program_pump_keys({layout.peer_id(NAME_B): None})
    assert len(a._pump.calls) == 1
    a._program_pump_keys({})  # not routed through the pump: nothing
    a._conns[7].proto.session = _sessions()[0]  # a new connection: new keys
    a._program_pump_keys({layout.peer_id(NAME_B): None})
    assert len(a._pump.calls) == 2
    plain = _router(NAME_A, NAME_B, sa, password=None)
    plain._program_pump_keys({layout.peer_id(NAME_B): None})
    assert plain._pump.calls == []


def test_status_line_names_what_the_pump_uses():
    line = _describe_pump(True, {"batch": 64, "vnet_hdr": True, "tap_offload": ["csum", "tso4"], "udp_gso": True,
                                 "udp_gro": False, "gro_merge": True, "crypto": "AES-256-GCM"})
    assert line == "compiled: batch 64, TAP csum/tso4, UDP GSO, TCP merging, sleeve AES-256-GCM"
    assert _describe_pump(False, {}).startswith("PURE-PYTHON TWIN")
    assert "no IFF_VNET_HDR" in _describe_pump(True, {"batch": 32, "vnet_hdr": False})
