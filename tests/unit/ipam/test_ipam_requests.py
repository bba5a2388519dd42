"""The queue of waiting requests (`outcome.Requests`): oldest first, each ends exactly once."""

from __future__ import annotations

from meshnet.ipam import Cancelled, Result
from meshnet.ipam.addr import parse_subnet, parse_universe
from meshnet.ipam.outcome import Pending, Request, Requests

U = parse_universe("10.32.0.0/24")
LOW = parse_subnet("10.32.0.0/25", U)


def test_requests_end_exactly_once_in_order() -> None:
    q = Requests()
    a, b, c = Request(1, "a", U, None, "r1"), Request(2, "b", LOW, None, "r2"), Request(3, "c", U, 9, "r3")
    for r in (a, b, c):
        q.add(r)
    assert len(q) == 3 and q.oldest() is a and a.pending() == Pending(1, "r1")
    assert q.allocation("b", LOW) is b and q.allocation("b", U) is None and q.allocation("c", U) is None
    assert q.claim("c", 9) is c and q.claim("c", 10) is None
    for r in q:  # a copy: finishing while iterating is fine
        if r.owner != "b":
            q.finish(r, Result(r.owner, "10.32.0.9", 24) if r is c else Cancelled("gone"))
    assert [i for i, _ in q.completed()] == [1, 3] and q.completed() == []
    assert q.cancel(2) and not q.cancel(2) and len(q) == 0 and q.oldest() is None
    assert q.completed() == []  # a cancelled request has no outcome
