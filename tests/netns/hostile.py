"""The hostile peer of test_hostile_peer.py: meshnet's scripted peer (the real handshake,
then whatever the test crafts), shared with the benchmarks in meshnet/testing/scripted_peer.py.

    peer = HostilePeer("mnh-h4", "192.168.90.11").handshake()
    peer.announce(eps=[...])                      # its own entry, linked to the router
    peer.send(Msg.TOPOLOGY, [peer.entry(v=1 << 63)])
    assert peer.wait_closed(5)
"""

from meshnet.testing.scripted_peer import GHOST_IP, ScriptedPeer as HostilePeer, endpoints, fake_peer

__all__ = ["GHOST_IP", "HostilePeer", "endpoints", "fake_peer"]
