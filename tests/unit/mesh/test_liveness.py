"""Liveness: a slow but alive peer, or a starved router, keeps its connections; a dead
one is closed; heartbeats go out in one round per interval, whatever the mesh size."""

from meshnet.mesh.core import Close, MeshCore, Send
from meshnet.mesh.liveness import GOSSIP_INTERVAL, HEARTBEAT, IDLE, STALL_TIMEOUT, TIMEOUT
from meshnet.mesh.wire import Msg


def core_with(n_conns: int, now: float = 0.0) -> MeshCore:
    core = MeshCore(name=bytes(16), nick="a", uid=1, port=6783, udp_port=6783, now=now, conn_limit=1000)
    for i in range(1, n_conns + 1):
        remote = {"name": i.to_bytes(16, "big"), "nick": f"p{i}", "uid": i, "port": 6783, "udp_port": 6783}
        refused, _ = core.add_connection(i, remote=remote, ip=f"10.0.0.{i}", outbound=True, now=now)
        assert refused is None
    return core


def run(core: MeshCore, until: float, report=None, step: float = 0.25) -> tuple[list[Close], list[Send]]:
    """Tick at every deadline up to `until`; `report(now)` plays the runtime's kernel view."""
    closes, sends = [], []
    now = 0.0
    while now < until:
        now = max(now + 0.001, min(core.next_deadline(), until))
        if report is not None:
            report(core, now)
        for e in core.tick(now=now):
            (closes if isinstance(e, Close) else sends).append(e)
            if isinstance(e, Close):
                core.remove_connection(e.conn, now=now)  # what the runtime does
    return closes, sends


def test_a_silent_peer_without_acks_is_dead_after_the_timeout():
    closes, _ = run(core_with(1), 2 * TIMEOUT)
    assert len(closes) == 1 and "no message" in closes[0].reason


def test_a_late_heartbeat_on_a_connection_that_still_acks_is_not_a_death():
    def kernel(core, now):  # the peer's kernel acks our heartbeats; its process is slow
        core.acked(1, now)

    closes, _ = run(core_with(1), STALL_TIMEOUT - 1, kernel)
    assert closes == []
    closes, _ = run(core_with(1), STALL_TIMEOUT + HEARTBEAT * 1.2, kernel)
    assert len(closes) == 1  # ... but a peer silent for a minute is stuck


def test_a_starved_router_sees_the_bytes_the_kernel_received():
    def kernel(core, now):  # we did not read for a long time; the kernel did receive
        core.heard(1, now - 1.0)

    closes, _ = run(core_with(1), 10 * TIMEOUT, kernel)
    assert closes == []


def test_heartbeats_go_out_in_one_round_for_all_connections():
    core = core_with(200)
    wakeups = 0
    now = 0.0
    beats = 0
    while now < 60.0:
        now = core.next_deadline()
        wakeups += 1
        for e in core.tick(now=now):
            if isinstance(e, Send) and e.kind is Msg.HEARTBEAT:
                beats += 1
        for conn in core.conns:
            core.heard(conn, now)  # the peers answer
    assert wakeups <= 60 / HEARTBEAT * 1.2 + 60 / GOSSIP_INTERVAL * 1.4 + 2  # liveness rounds and summaries only
    # One heartbeat per idle spell. A spell lasts from IDLE - HEARTBEAT/2 (the round's
    # threshold) to that plus one jittered round; a SUMMARY (at most one per 0.75 x
    # GOSSIP_INTERVAL) counts as traffic and can put off one connection's beat.
    longest, shortest = IDLE - HEARTBEAT / 2 + HEARTBEAT * 1.1, IDLE - HEARTBEAT / 2
    summaries = 60 / (GOSSIP_INTERVAL * 0.75) + 1
    assert 200 * (60 // longest) - summaries <= beats <= 200 * (60 // shortest + 1)
