"""IPAM on real routers: concurrent allocations, kill -9, rmpeer, bad input.

Three lab hosts launched with --ipalloc-init consensus=3 share 10.32.0.0/12.
"""

import ipaddress
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from meshnet.api.client import ApiClient
from meshnet.errors import Conflict, MeshnetError, UsageError
from meshnet.lab import Lab, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lab():
    lab = Lab(prefix="mni", hosts=3)
    try:
        lab.up()
        lab.wait_mesh()
        assert wait_for(lambda: all(api(lab, i).get("/ipam/status")["state"] == "ready" for i in (1, 2, 3)), 20)
        yield lab
    finally:
        lab.down()


def api(lab, i, timeout=60):
    return ApiClient(f"{lab.run_dir(i)}/meshnet.sock", timeout=timeout)


def all_owners(lab):
    owners = {}
    for i in (1, 2, 3):
        for owner, addresses in api(lab, i).get("/ipam/owners")["owners"].items():
            owners.setdefault(owner, []).extend(addresses)
    return owners


def assert_no_address_twice(lab):
    seen = {}
    for owner, addresses in all_owners(lab).items():
        for address in addresses:
            assert address not in seen, f"{address} held by {seen[address]} and {owner}"
            seen[address] = owner
    return seen


def test_500_concurrent_allocations_are_distinct(lab):
    def allocate(k):
        i = 1 + k % 3
        return api(lab, i).post("/ipam/allocate", {"owner": f"bulk:{k}"})["address"]

    with ThreadPoolExecutor(24) as pool:
        addresses = list(pool.map(allocate, range(500)))
    assert len(set(addresses)) == 500
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("10.32.0.0/12") for a in addresses)
    again = api(lab, 2).post("/ipam/allocate", {"owner": "bulk:1"})["address"]  # idempotent per owner
    assert again == addresses[1]
    held = assert_no_address_twice(lab)
    assert sum(1 for owner in held.values() if owner.startswith("bulk:")) == 500


def test_kill_9_during_allocations_loses_nothing_committed(lab):
    acknowledged = {}
    stop = threading.Event()

    def worker(t):
        k = 0
        while not stop.is_set():
            owner = f"crash:{t}:{k}"
            try:
                acknowledged[owner] = api(lab, 2, timeout=5).post("/ipam/allocate", {"owner": owner, "wait": 2})["address"]
            except (MeshnetError, OSError):
                pass
            k += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    assert wait_for(lambda: len(acknowledged) >= 60, 30)
    lab.kill_router(2)  # SIGKILL, mid-stream
    stop.set()
    for t in threads:
        t.join()
    lab.start_router(2)
    lab.wait_mesh()
    owners = api(lab, 2).get("/ipam/owners")["owners"]
    lost = {o: a for o, a in acknowledged.items() if owners.get(o) != [a]}
    assert lost == {}, f"{len(lost)} acknowledged allocations lost or changed"
    assert_no_address_twice(lab)
    fresh = api(lab, 2).post("/ipam/allocate", {"owner": "after-crash"})["address"]
    assert fresh not in acknowledged.values()


def test_bad_input_is_refused_and_changes_nothing(lab):
    before = all_owners(lab)
    client = api(lab, 1)
    cases = [
        {"owner": "bad", "subnet": "10.32.0.0/33"},
        {"owner": "bad", "subnet": "banana"},
        {"owner": "bad", "address": "192.168.1.1"},  # outside the range
        {"owner": "", "address": "10.32.0.9"},
        {"owner": "bad", "wait": "abc"},
    ]
    for body in cases:
        with pytest.raises(UsageError) as info:  # HTTP 400 on the wire
            client.post("/ipam/allocate", body)
        assert info.value.message, body
    taken = next(iter(all_owners(lab)["bulk:0"]))
    holder = next(i for i in (1, 2, 3) if "bulk:0" in api(lab, i).get("/ipam/owners")["owners"])
    with pytest.raises(Conflict):  # HTTP 409
        api(lab, holder).post("/ipam/allocate", {"owner": "thief", "address": taken})
    with pytest.raises(UsageError) as info:
        api(lab, holder).post("/ipam/release", {"owner": "bulk:0", "address": all_owners(lab)["bulk:3"][0]})
    assert "not" in info.value.message
    assert all_owners(lab) == before
    result = subprocess.run(lab.meshnet(1, "status", "ipam"), capture_output=True, text=True)
    assert result.returncode == 0 and "10.32.0.0/12" in result.stdout


def test_rmpeer_of_a_dead_peer_frees_its_space_once(lab):
    h3 = api(lab, 3).get("/status")["router"]["name"]
    with pytest.raises(Conflict) as info:
        api(lab, 1).post("/ipam/rmpeer", {"peer": h3})  # still reachable: refused
    assert "reachable" in info.value.message
    lab.stop_router(3)
    subprocess.run(["ip", "netns", "del", lab.host_ns(3)], check=True)  # gone for good
    assert wait_for(lambda: h3 in api(lab, 1).get("/ipam/status")["unreachable_owners"], 15)
    first = api(lab, 1).post("/ipam/rmpeer", {"peer": h3})
    second = api(lab, 2).post("/ipam/rmpeer", {"peer": h3})  # on another peer too: safe
    assert first["reclaimed"] > 0
    assert wait_for(lambda: all(h3 not in api(lab, i).get("/ipam/status")["peers"] for i in (1, 2)), 20), second
    status = api(lab, 1).get("/ipam/status")
    assert status["unreachable_owners"] == [] and status["conflicts"] == []
    total = sum(p["size"] for p in status["peers"].values())
    assert total == 1 << 20  # the whole /12 is owned, exactly once, by the two live peers
    assert api(lab, 2).get("/ipam/status")["peers"].keys() == status["peers"].keys()
