"""meshnet.dataplane.netfilter: the nft tables for `expose --nat` and the pod network; and
`expose`/`hide` keep the forwarding setting they found (docker/service.py with the fakes).
`nft --check` parses the rendered table when nft is installed (no root needed for --check)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from meshnet.dataplane.netfilter import NetfilterPlan, parse_cidrs, render, replace_script
from meshnet.docker.service import DockerService, DockerSettings
from meshnet.docker.testing import FakeEndpoints, FakePlumbing, MemoryStore


def test_masquerade_keeps_the_range_and_the_list_and_guard_drops_new_flows_into_the_bridge():
    text = render(NetfilterPlan("meshnet-pods", "meshnet", "10.32.0.0/12", non_masquerade=("192.168.0.0/16", "10.96.1.0/24", "10.40.1.0/24")))
    assert "elements = { 10.32.0.0/12, 10.96.1.0/24, 192.168.0.0/16 }" in text
    assert 'ip saddr 10.32.0.0/12 ip daddr != @no-masquerade oifname != "meshnet" counter masquerade' in text
    guard = [l.strip() for l in text.splitlines() if l.strip().startswith('oifname "meshnet"')]
    assert guard == [
        'oifname "meshnet" iifname != "meshnet" ct state established,related counter accept',
        'oifname "meshnet" iifname != "meshnet" ct status dnat counter accept',
        'oifname "meshnet" iifname != "meshnet" counter drop',
    ]


def test_overlapping_cidrs_are_merged_and_bad_ones_refused():
    text = render(NetfilterPlan("t", "br", "10.32.0.0/12", non_masquerade=("10.0.0.0/8",)))
    assert "elements = { 10.0.0.0/8 }" in text
    assert parse_cidrs("10.1.2.3/8, 192.168.1.0/24 192.168.1.0/24") == ("10.0.0.0/8", "192.168.1.0/24")
    for bad in ("fd00::/8", "10.0.0.0/33", "x"):
        with pytest.raises(ValueError):
            parse_cidrs(bad)
    with pytest.raises(ValueError):
        render(NetfilterPlan("bad table", "br", "10.32.0.0/12"))


def test_without_masquerade_only_the_guard():
    text = render(NetfilterPlan("t", "br", "10.32.0.0/12", masquerade=False))
    assert "masquerade" not in text and "hook forward" in text


@pytest.mark.skipif(not shutil.which("nft"), reason="needs nftables")
def test_nft_accepts_the_script():
    script = replace_script("ip", "mnk-check", render(NetfilterPlan("mnk-check", "meshnet", "10.32.0.0/12", non_masquerade=("0.0.0.0/0",))))
    r = subprocess.run(["nft", "--check", "-f", "-"], input=script, text=True, capture_output=True)
    if r.returncode and "Operation not permitted" in r.stderr:
        pytest.skip("nft --check needs CAP_NET_ADMIN here")
    assert r.returncode == 0, r.stderr


def _service():
    plumbing = FakePlumbing()
    svc = DockerService(DockerSettings(docker_socket="none"), endpoints=FakeEndpoints(), plumbing=plumbing, store=MemoryStore(),
                        api=type("R", (), {"add_routes": lambda self, r: None})(), host_owner="host:me")
    svc.dns.set_addresses = lambda addrs: asyncio.sleep(0)
    return svc, plumbing


@pytest.mark.parametrize("found", ["0", "1"])
def test_hide_restores_the_forwarding_it_found(found):
    async def go():
        svc, plumbing = _service()
        plumbing.forwarding = found
        await svc.expose({"nat": True})
        assert plumbing.nat and plumbing.forwarding == "1"
        assert svc._exposure()["forward_was"] == found
        await svc.hide({})
        assert not plumbing.nat and plumbing.forwarding == found

    asyncio.run(go())


def test_a_router_restart_keeps_what_forwarding_was():
    async def go():
        svc, plumbing = _service()
        await svc.expose({"nat": True})  # forwarding was 0
        again = DockerService(DockerSettings(docker_socket="none"), endpoints=svc.endpoints, plumbing=plumbing, store=svc.store,
                              api=type("R", (), {"add_routes": lambda self, r: None})(), host_owner="host:me")
        again.dns.set_addresses = lambda addrs: asyncio.sleep(0)
        await again._restore_exposure()  # finds forwarding on (ours): must still remember 0
        await again.hide({})
        assert plumbing.forwarding == "0"

    asyncio.run(go())
