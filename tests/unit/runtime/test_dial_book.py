"""known_peers, a rejoin hint, is written at most every KNOWN_PEERS_EVERY s while the mesh
changes (each write is a disk sync on the event loop); the last version is never lost."""

from meshnet.mesh.policy import Plan
from meshnet.mesh.targets import Targets
from meshnet.runtime.dial_book import KNOWN_PEERS_EVERY, DialBook
from meshnet.state.statedir import StateDir


def plan(*addresses: str) -> Plan:
    return Plan(dial={a: bytes(16) for a in addresses}, prune=[], wanted=frozenset(), full_mesh=True)


def test_a_forming_mesh_writes_known_peers_at_a_bounded_rate_and_the_last_one_at_the_end(tmp_path, monkeypatch):
    state = StateDir(str(tmp_path))
    writes = []
    real_put = state.put
    monkeypatch.setattr(state, "put", lambda key, value: (writes.append((key, value)), real_put(key, value)))
    book = DialBook(state, Targets(), wake=lambda: None)
    book.load([])
    clock = [1000.0]
    monkeypatch.setattr("meshnet.runtime.dial_book.time.monotonic", lambda: clock[0])
    for i in range(1, 21):  # twenty joins in two seconds
        book.remember(plan(*(f"10.0.0.{k}:6783" for k in range(1, i + 1))))
        clock[0] += 0.1
    known = [v for k, v in writes if k == "known_peers"]
    assert len(known) == 1  # the first; the rest waits
    assert book.next_deadline() == 1000.0 + KNOWN_PEERS_EVERY
    book.flush(book.next_deadline())  # the timer's turn
    assert state.get("known_peers") == sorted(f"10.0.0.{k}:6783" for k in range(1, 21))
    assert book.next_deadline() is None
    book.remember(plan("10.0.0.99:6783"))
    book.flush(clock[0], force=True)  # what stop does
    assert state.get("known_peers") == ["10.0.0.99:6783"]
    state.close()


def test_persist_writes_at_once_and_persist_soon_waits_its_turn(tmp_path, monkeypatch):
    state = StateDir(str(tmp_path))
    book = DialBook(state, Targets(), wake=lambda: None)
    book.load([])
    book._wanted = {"10.0.0.1:6783"}
    book.persist_soon(now=1000.0)  # the first write of a while
    assert state.get("known_peers") == ["10.0.0.1:6783"]
    book._wanted = {"10.0.0.2:6783"}
    book.persist_soon(now=1001.0)  # within KNOWN_PEERS_EVERY: pending
    assert state.get("known_peers") == ["10.0.0.1:6783"]
    assert book.next_deadline() == 1000.0 + KNOWN_PEERS_EVERY
    monkeypatch.setattr("meshnet.runtime.dial_book.time.monotonic", lambda: 1002.0)
    book.connect("10.0.0.3:6783")  # a user's change: written now, whatever the rate
    assert state.get("direct_peers") == ["10.0.0.3:6783"]
    assert state.get("known_peers") == ["10.0.0.2:6783"]
    assert book.next_deadline() is None
    state.close()


def test_an_address_forgotten_while_known_peers_waits_is_never_written_back(tmp_path):
    state = StateDir(str(tmp_path))
    book = DialBook(state, Targets(), wake=lambda: None)
    book.load(["10.0.0.1:6783"])
    book._wanted = {"10.0.0.1:6783", "10.0.0.2:6783"}
    book.persist_soon(now=1000.0)
    book._wanted = {"10.0.0.1:6783"}
    book.persist_soon(now=1001.0)  # pending: ["10.0.0.1:6783"]
    book._wanted = set()  # the policy wants nobody now, and nothing is connected
    book.forget("10.0.0.1:6783")
    book.flush(1000.0 + 60, force=True)  # the timer's turn, or stop
    assert "10.0.0.1:6783" not in (state.get("known_peers") or [])
    state.close()
