"""`meshnet ps` rows: every endpoint once, plugin endpoints by container id, stale ones gone."""

from __future__ import annotations

from meshnet.docker.listing import rows
from meshnet.runtime.endpoints import Endpoint

CNM = [
    {"endpoint": "e-old", "network": "n" * 64, "name": "web", "mac": "02:00:00:00:00:01", "cidrs": ["10.32.0.5/12"], "joined": True},
    {"endpoint": "e-new", "network": "n" * 64, "name": "web", "mac": "02:00:00:00:00:02", "cidrs": ["10.32.0.6/12"], "joined": True},
]
LOCAL = [
    Endpoint("cnm:e-new", "02:00:00:00:00:02", ("10.32.0.6/12",), "web", "mndx"),
    Endpoint("netns:/run/netns/c1", "02:00:00:00:00:03", ("10.32.0.7/12",), "", "vm1"),
    Endpoint("host:bridge", "02:00:00:00:00:04", ("10.32.0.1/12",), ""),
]
CONTAINERS = [{"id": "c" * 64, "name": "db", "mac": "02:00:00:00:00:05", "cidrs": ["10.32.0.8/12"], "state": "attached"}]


def test_every_endpoint_once_with_current_state():
    out = rows(containers=CONTAINERS, cnm=CNM, local=LOCAL, current={"e-new": ("d" * 64, "web", True)})
    assert [(r["kind"], r["id"][:4], r["name"]) for r in out] == [
        ("container", "cccc", "db"),
        ("network", "dddd", "web"),  # by container id; the stale endpoint of before the dockerd restart is gone
        ("netns", "/run", ""),
        ("host", "host", ""),
    ]
    assert out[1]["state"].startswith("attached") and out[2]["id"] == "/run/netns/c1" and out[3]["state"] == "exposed"


def test_without_docker_the_plugin_records_are_shown_as_they_are():
    out = rows(containers=[], cnm=CNM, local=[], current=None)
    assert [r["id"] for r in out] == ["e-old", "e-new"]
