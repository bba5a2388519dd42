"""Extra DNS records (dns-add / dns-remove): kept, gossiped, and what peers gossip is checked."""

from __future__ import annotations

import pytest

from meshnet.docker.names import MAX_ADDRESSES, DnsNames, checked, label_of
from meshnet.docker.testing import FakeEndpoints, MemoryStore
from meshnet.errors import NotFound, UsageError


def names(store=None):
    return DnsNames(FakeEndpoints(), store or MemoryStore(), "meshnet.local")


def test_add_remove_publish_and_persist():
    store = MemoryStore()
    n = names(store)
    assert n.add({"name": "DB.meshnet.local.", "ips": ["10.32.0.9"]}) == {"name": "db.meshnet.local", "ips": ["10.32.0.9"]}
    assert n.add({"name": "db", "ips": ["10.32.0.10/12", "10.32.0.9"]})["ips"] == ["10.32.0.9", "10.32.0.10"]
    assert n.endpoints.names == [["db", ["10.32.0.9", "10.32.0.10"]]]
    assert names(store).local == {"db": ["10.32.0.9", "10.32.0.10"]}  # a restarted router keeps them
    assert n.remove({"name": "db", "ips": ["10.32.0.9"]})["removed"] == ["10.32.0.9"]
    assert n.remove({"name": "db"})["removed"] == ["10.32.0.10"]
    assert n.local == {} and n.endpoints.names == []
    with pytest.raises(NotFound):
        n.remove({"name": "db"})


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "ips": ["10.32.0.9"]},
        {"name": "a.b", "ips": ["10.32.0.9"]},
        {"name": "db.other.domain", "ips": ["10.32.0.9"]},
        {"name": "db", "ips": ["fe80::1"]},
        {"name": "db", "ips": "10.32.0.9"},
        {"name": "db", "ips": []},
        {"name": "db", "ips": [f"10.32.1.{i}" for i in range(MAX_ADDRESSES + 1)]},
    ],
)
def test_bad_records_are_usage_errors(body):
    with pytest.raises(UsageError):
        names().add(body)


def test_gossiped_records_are_checked():
    raw = [["ok", ["10.32.0.1", "nope", 5, "fe80::1"]], ["BAD LABEL", ["10.32.0.2"]], "junk", ["x"], ["empty", []], ["y", "10.0.0.1"]]
    assert list(checked(raw)) == [("ok", ["10.32.0.1"])]
    assert list(checked({"not": "a list"})) == []
    n = names()
    n.endpoints.remote_names = [raw, None]
    n.add({"name": "db", "ips": ["10.32.0.9"]})
    assert sorted(n.mesh()) == [("db", ["10.32.0.9"]), ("ok", ["10.32.0.1"])]


def test_label_of():
    assert label_of("Web.MESHNET.local", "meshnet.local") == "web"
