"""Consensus bootstrap on its own: Paxos never lets two values be chosen, whatever the schedule."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.ipam.paxos import NO_BALLOT, Acceptor, Consensus

NAMES = [bytes([0xB0, i]) + bytes(14) for i in range(7)]
A, B, C = NAMES[:3]


def test_a_proposer_adopts_a_value_already_accepted_in_its_quorum() -> None:
    a = Consensus(A, 3, Acceptor())
    a.merge({B: Acceptor()})  # A knows only A and B: quorum, and the grace period runs
    a.step(now=0, reachable={B})
    a.step(now=10, reachable={B})  # proposes (1, A)
    assert a.own.promised == (1, A)
    a.merge({B: Acceptor(promised=(1, A))})
    a.step(now=10, reachable={B})
    assert a.own.accepted == (1, A) and a.own.value == (A, B)  # accepted alone: not chosen
    assert a.chosen() is None

    c = Consensus(C, 3, Acceptor())  # C has not seen A accept; it proposes once A seems stuck
    c.merge({A: Acceptor(promised=(1, A)), B: Acceptor(promised=(1, A))})
    c.step(now=20, reachable=set())
    assert c.own.promised == (1, A)
    c.step(now=30, reachable=set())
    ballot = c.own.promised
    assert ballot[1] == C and ballot > (1, A)
    c.merge({A: Acceptor(promised=ballot, accepted=(1, A), value=(A, B))})
    c.step(now=20, reachable={A, B})
    assert c.own.accepted == ballot and c.own.value == (A, B)  # not its own (A, B, C)


def test_acceptor_state_round_trips_through_the_store() -> None:
    state = Acceptor((3, A), (2, B), (A, B))
    assert Acceptor.from_bytes(state.to_bytes()) == state
    assert Acceptor.from_bytes(Acceptor().to_bytes()) == Acceptor() == Acceptor.from_bytes(None)
    assert Acceptor().promised == NO_BALLOT


action = st.one_of(
    st.tuples(st.just("gossip"), st.integers(0, 6), st.integers(0, 6)),  # dst merges a snapshot of src
    st.tuples(st.just("direct"), st.integers(0, 6), st.integers(0, 6)),  # dst hears only src's own entry
    st.tuples(st.just("tick"), st.integers(0, 6), st.sampled_from([0.5, 2.0, 5.0])),
    st.tuples(st.just("restart"), st.integers(0, 6)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(3, 7), st.lists(action, max_size=120))
def test_never_two_values_chosen(n: int, schedule: list[tuple]) -> None:
    names = NAMES[:n]
    nodes = {name: Consensus(name, n, Acceptor()) for name in names}
    now = 0.0
    chosen: set[tuple[bytes, ...]] = set()
    for act in schedule:
        if act[0] in ("gossip", "direct"):
            src, dst = names[act[1] % n], names[act[2] % n]
            if src == dst:
                continue
            heard = nodes[src].states if act[0] == "gossip" else {src: nodes[src].own}
            nodes[dst].merge(dict(heard))  # knowledge spreads unevenly
            nodes[dst].step(now=now, reachable=set(names) - {dst})
        elif act[0] == "tick":
            now += act[2]
            node = names[act[1] % n]
            nodes[node].step(now=now, reachable=set(names) - {node})
        else:  # kill -9: only its own persisted entry survives
            node = names[act[1] % n]
            nodes[node] = Consensus(node, n, nodes[node].own)
        for c in nodes.values():
            if (value := c.chosen()) is not None:
                chosen.add(value)
        assert len(chosen) <= 1, chosen
