"""The plugin's commands against a fake router and fake links (no root, no router):
ADD/DEL/CHECK/STATUS/GC, rollback, DEL idempotence, and the journal when the router is down."""

from __future__ import annotations

import errno
import io
import ipaddress
import json

import pytest

from meshnet.cni import spec
from meshnet.cni.plugin import Plugin, main
from meshnet.state.journal import Journal, parse
from meshnet.kernel.errors import KernelError
from meshnet.kernel.links import Attachment
from meshnet.errors import Conflict, MeshnetError, NotFound, RouterUnavailable, Unavailable, UsageError

CID = "feedc0de" * 8


class FakeRouter:
    """The router's API contract (see docs/kubernetes.md), in memory."""

    def __init__(self):
        self.up = True
        self.range = ipaddress.ip_network("10.32.0.0/12")
        self.held: dict[str, list[str]] = {}
        self.endpoints: dict[str, dict] = {}
        self.calls: list[tuple[str, str, dict]] = []
        self.fail: dict[str, MeshnetError] = {}
        self.podnet: dict | None = None  # GET /podnet: None = the router runs without --pod-network

    def client(self, path: str, timeout: float) -> FakeRouter:
        self.socket = path
        return self

    def _check(self, method: str, path: str, body: dict) -> None:
        self.calls.append((method, path, body))
        if not self.up:
            raise RouterUnavailable(f"no meshnet router is running (nothing answers on {self.socket})")
        if path in self.fail:
            raise self.fail[path]

    def get(self, path: str) -> dict:
        self._check("GET", path, {})
        if path == "/status":
            return {"router": {"bridge": "meshnet", "mtu": 1376}}
        if path == "/ipam/owners":
            return {"owners": {k: list(v) for k, v in self.held.items()}}
        if path == "/endpoints":
            return {"local": [dict(e) for e in self.endpoints.values()], "mesh": []}
        if path == "/podnet" and self.podnet is not None:
            return dict(self.podnet)
        raise NotFound(path)

    def post(self, path: str, body: dict) -> dict:
        self._check("POST", path, body)
        if path == "/ipam/allocate":
            owner = body["owner"]
            if owner in self.held:
                return {"address": self.held[owner][0], "cidr": f"{self.held[owner][0]}/12", "owner": owner}
            taken = {a for v in self.held.values() for a in v}
            if "address" in body:
                if ipaddress.ip_address(body["address"]) not in self.range:
                    raise UsageError(f"{body['address']} is outside {self.range}")
                if body["address"] in taken:
                    raise Conflict(f"{body['address']} is held by another owner")
                address = body["address"]
            else:
                address = next(str(a) for a in self.range.hosts() if str(a) not in taken)
            self.held[owner] = [address]
            return {"address": address, "cidr": f"{address}/12", "owner": owner}
        if path == "/ipam/release":
            return {"released": self.held.pop(body["owner"], [])}
        if path == "/endpoints/add":
            self.endpoints[body["id"]] = body
            return {"id": body["id"]}
        if path == "/endpoints/del":
            return {"id": body["id"], "removed": self.endpoints.pop(body["id"], None) is not None}
        raise NotFound(path)


class FakeLinks:
    def __init__(self):
        self.veths: dict[str, dict] = {}  # host_if -> details
        self.fail_add: KernelError | None = None
        self.closed = 0

    def add_pod_veth(self, netns, *, host_if, ifname, bridge, cidrs, mtu, mac=None, routes=()):
        if self.fail_add:
            raise self.fail_add
        self.veths[host_if] = {"netns": netns, "ifname": ifname, "bridge": bridge, "cidrs": list(cidrs), "mtu": mtu, "routes": routes}
        return Attachment(netns, host_if, ifname, mac or "02:00:00:00:00:01", tuple(cidrs))

    def delete_link(self, name):
        return self.veths.pop(name, None) is not None

    def mac_of(self, name):
        return "aa:00:00:00:00:01" if name in self.veths else None

    def mtu_of(self, name):
        return 1376 if name == "meshnet" else None

    def master_of(self, name):
        return self.veths[name]["bridge"] if name in self.veths else None

    def pod_interface(self, netns, ifname):
        for v in self.veths.values():
            if v["netns"] == netns and v["ifname"] == ifname:
                return {"mac": "02:00:00:00:00:01", "mtu": v["mtu"], "up": True, "cidrs": v["cidrs"], "routes": []}
        return None

    def close(self):
        self.closed += 1


@pytest.fixture
def rig(tmp_path):
    router, links = FakeRouter(), FakeLinks()
    state = tmp_path / "state"
    state.mkdir()
    plugin = Plugin(client=router.client, links=lambda: links, journal=Journal, path_exists=lambda p: p.startswith("/run/netns/"))

    def call(command, version="1.0.0", cid=CID, ifname="eth0", netns="/run/netns/pod", args="IgnoreUnknown=1", **conf):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin"}
        if netns:
            env["CNI_NETNS"] = netns
        body = {"cniVersion": version, "name": "meshnet", "type": "meshnet-cni", "state_dir": str(state), **conf}
        out = io.StringIO()
        rc = main(env=env, stdin=json.dumps(body).encode(), stdout=out, plugin=plugin)
        text = out.getvalue()
        return rc, (json.loads(text) if text else None)

    return router, links, call, state


def test_add_allocates_attaches_registers(rig):
    router, links, call, _ = rig
    rc, result = call("ADD", args="IgnoreUnknown=1;K8S_POD_NAME=web-1")
    assert rc == 0
    owner = f"cni:meshnet:{CID}:eth0"
    assert router.held == {owner: ["10.32.0.1"]}
    host_if = spec.host_ifname(CID, "eth0")
    assert links.veths[host_if]["cidrs"] == ["10.32.0.1/12"] and links.veths[host_if]["mtu"] == 1376
    ep = router.endpoints[f"cni:{CID}:eth0"]
    assert ep["ips"] == ["10.32.0.1/12"] and ep["host_if"] == host_if and ep["name"] == "web-1"
    assert result["ips"] == [{"address": "10.32.0.1/12", "interface": 1}]
    assert result["interfaces"][0]["name"] == host_if and result["interfaces"][1]["sandbox"] == "/run/netns/pod"
    assert links.closed == 1


@pytest.mark.parametrize("version", spec.SUPPORTED_VERSIONS)
def test_add_answers_in_config_version(rig, version):
    _, _, call, _ = rig
    rc, result = call("ADD", version=version)
    assert rc == 0 and result["cniVersion"] == version
    assert ("version" in result["ips"][0]) == (version < "1.0.0")


def test_static_ip_from_cni_args(rig):
    router, _, call, _ = rig
    rc, result = call("ADD", args="IgnoreUnknown=1;IP=10.32.9.9")
    assert rc == 0 and result["ips"][0]["address"] == "10.32.9.9/12"
    assert router.calls[1][2]["address"] == "10.32.9.9"


def test_static_ip_taken_is_ipam_error_and_nothing_made(rig):
    router, links, call, _ = rig
    call("ADD", cid="other", args="IgnoreUnknown=1;IP=10.32.9.9")
    rc, err = call("ADD", args="IgnoreUnknown=1;IP=10.32.9.9")
    assert rc == 1 and err["code"] == spec.IPAM_FAILURE and "in use" in err["msg"]
    assert list(links.veths) == [spec.host_ifname("other", "eth0")]


def test_static_ip_outside_range(rig):
    _, _, call, _ = rig
    rc, err = call("ADD", args="IP=192.0.2.1")
    assert rc == 1 and err["code"] == spec.IPAM_FAILURE and "outside" in err["msg"]


def test_add_router_down_is_try_again_later(rig):
    router, links, call, _ = rig
    router.up = False
    rc, err = call("ADD")
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER and err["cniVersion"] == "1.0.0"
    assert links.veths == {}


def test_add_no_space_is_try_again_later(rig):
    router, _, call, _ = rig
    router.fail["/ipam/allocate"] = Unavailable("no free address in 10.32.0.0/12 within 10s")
    rc, err = call("ADD")
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER and "no free address" in err["msg"]


def test_add_missing_netns_is_error_3_before_anything(rig):
    router, links, call, _ = rig
    rc, err = call("ADD", netns="/proc/999999999/ns/net")
    assert rc == 1 and err["code"] == spec.UNKNOWN_CONTAINER
    assert router.calls == [] and links.veths == {}


def test_add_kernel_failure_releases_the_address(rig):
    router, links, call, _ = rig
    links.fail_add = KernelError(errno.EEXIST, "'/run/netns/pod' already has an interface named eth0")
    rc, err = call("ADD")
    assert rc == 1 and err["code"] == spec.INTERFACE_FAILURE and "eth0" in err["msg"]
    assert router.held == {} and router.endpoints == {} and links.veths == {}


def test_add_endpoint_refused_undoes_everything(rig):
    router, links, call, _ = rig
    router.fail["/endpoints/add"] = UsageError("bad mac")
    rc, err = call("ADD")
    assert rc == 1 and err["code"] == spec.INTERNAL
    assert router.held == {} and links.veths == {}


def test_add_router_dies_midway_journals_the_release(rig):
    router, links, call, state = rig

    real_post = router.post

    def post(path, body):
        if path == "/endpoints/add":
            router.up = False
        return real_post(path, body)

    router.post = post
    rc, err = call("ADD")
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER
    assert links.veths == {}
    assert parse((state / "ipam-releases.journal").read_bytes()) == [spec_release(f"cni:meshnet:{CID}:eth0")]


def spec_release(owner):
    from meshnet.state.journal import Release

    return Release(owner, None)


def test_add_bridge_mismatch_is_config_error(rig):
    _, _, call, _ = rig
    rc, err = call("ADD", bridge="other")
    assert rc == 1 and err["code"] == spec.INVALID_CONFIG and "bridge" in err["msg"]


def test_add_passes_routes_and_mtu(rig):
    _, links, call, _ = rig
    rc, result = call("ADD", mtu=1300, gateway="10.32.0.1", routes=[{"dst": "10.96.0.0/12"}])
    assert rc == 0
    v = links.veths[spec.host_ifname(CID, "eth0")]
    assert v["mtu"] == 1300 and v["routes"] == (("10.96.0.0/12", None), ("0.0.0.0/0", "10.32.0.1"))
    assert result["routes"] == [{"dst": "10.96.0.0/12"}, {"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]


# -- DEL -----------------------------------------------------------------------------------------


def test_del_releases_and_is_idempotent(rig):
    router, links, call, state = rig
    call("ADD")
    for _ in range(2):
        rc, out = call("DEL")
        assert rc == 0 and out is None
    assert router.held == {} and router.endpoints == {} and links.veths == {}
    assert not (state / "ipam-releases.journal").exists()


def test_del_without_netns_or_prev_result(rig):
    router, _, call, _ = rig
    call("ADD")
    rc, _ = call("DEL", netns="")
    assert rc == 0 and router.held == {}


def test_del_router_down_journals_once_per_call(rig):
    router, links, call, state = rig
    call("ADD")
    router.up = False
    rc, _ = call("DEL")
    assert rc == 0 and links.veths == {}
    journal = parse((state / "ipam-releases.journal").read_bytes())
    assert [(r.owner, r.address) for r in journal] == [(f"cni:meshnet:{CID}:eth0", None)]
    # the router, back, drains the journal: the address is free once
    router.up = True
    applied = []
    Journal(str(state)).drain(lambda rs: applied.extend(router.post("/ipam/release", {"owner": r.owner})["released"] for r in rs))
    assert applied == [["10.32.0.1"]] and router.held == {}
    assert Journal(str(state)).drain(lambda rs: applied.append(rs)) == 0


def test_del_router_down_without_state_dir_is_fine(rig, tmp_path):
    router, _, call, _ = rig
    router.up = False
    rc, _ = call("DEL", state_dir=str(tmp_path / "never"))
    assert rc == 0


def test_del_kernel_error_is_reported(rig):
    _, links, call, _ = rig

    def boom(name):
        raise KernelError(errno.EPERM, "Operation not permitted")

    links.delete_link = boom
    rc, err = call("DEL")
    assert rc == 1 and err["code"] == spec.INTERFACE_FAILURE


# -- CHECK ---------------------------------------------------------------------------------------


def test_check_after_add(rig):
    router, links, call, _ = rig
    _, result = call("ADD")
    rc, out = call("CHECK", prevResult=result)
    assert rc == 0 and out is None
    # the address leaks out of IPAM -> CHECK fails
    router.held.clear()
    rc, err = call("CHECK", prevResult=result)
    assert rc == 1 and err["code"] == spec.CHECK_FAILED and "no longer reserves" in err["msg"]


def test_check_interface_gone(rig):
    _, links, call, _ = rig
    _, result = call("ADD")
    links.veths.clear()
    rc, err = call("CHECK", prevResult=result)
    assert rc == 1 and err["code"] == spec.CHECK_FAILED and "missing" in err["msg"]


def test_check_needs_prev_result(rig):
    _, _, call, _ = rig
    rc, err = call("CHECK")
    assert rc == 1 and err["code"] == spec.INVALID_CONFIG


def test_check_router_down(rig):
    router, _, call, _ = rig
    _, result = call("ADD")
    router.up = False
    rc, err = call("CHECK", prevResult=result)
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER


# -- STATUS / GC ---------------------------------------------------------------------------------


def test_status(rig):
    router, links, call, _ = rig
    assert call("STATUS", version="1.1.0", netns="") == (0, None)
    router.up = False
    rc, err = call("STATUS", version="1.1.0")
    assert rc == 1 and err["code"] == spec.PLUGIN_NOT_AVAILABLE_LIMITED  # the bridge is there
    links.mtu_of = lambda name: None
    rc, err = call("STATUS", version="1.1.0")
    assert rc == 1 and err["code"] == spec.PLUGIN_NOT_AVAILABLE


def test_gc_releases_only_what_no_pod_holds(rig):
    router, links, call, _ = rig
    for cid in ("keep", "gone"):
        call("ADD", version="1.1.0", cid=cid)
    router.held["docker:someone"] = ["10.32.0.99"]  # not ours: GC leaves it
    router.held["cni:othernet:x:eth0"] = ["10.32.0.98"]  # another network: left alone
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    rc, out = call("GC", version="1.1.0", netns="", **{"cni.dev/valid-attachments": valid})
    assert rc == 0 and out is None
    assert set(router.held) == {"cni:meshnet:keep:eth0", "docker:someone", "cni:othernet:x:eth0"}
    assert list(links.veths) == [spec.host_ifname("keep", "eth0")]
    assert list(router.endpoints) == ["cni:keep:eth0"]


def test_gc_router_down(rig):
    router, _, call, _ = rig
    router.up = False
    rc, err = call("GC", version="1.1.0", **{"cni.dev/valid-attachments": []})
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER


# -- entry point ---------------------------------------------------------------------------------


def test_version_and_errors_through_main(rig):
    _, _, call, _ = rig
    assert call("VERSION", version="0.3.1")[1] == {"cniVersion": "0.3.1", "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    rc, err = call("ADD", version="0.2.0")
    assert rc == 1 and err["code"] == spec.INCOMPATIBLE_VERSION and err["cniVersion"] == "1.0.0"


def test_main_malformed_json():
    out = io.StringIO()
    rc = main(env={"CNI_COMMAND": "ADD"}, stdin=b"{oops", stdout=out, plugin=Plugin())
    err = json.loads(out.getvalue())
    assert rc == 1 and err["code"] == spec.DECODE_FAILURE and err["cniVersion"] == "1.0.0"


def test_main_unexpected_exception_is_a_cni_error(rig):
    router, _, call, _ = rig
    router.get = lambda path: 1 / 0
    rc, err = call("ADD")
    assert rc == 1 and err["code"] == spec.INTERNAL and "ZeroDivisionError" in err["msg"]


def test_del_twice_while_router_down(rig):
    """The runtime may DEL again (CRI: Stop and Remove) while the router is still down."""
    router, _, call, state = rig
    call("ADD")
    router.up = False
    assert call("DEL")[0] == 0
    rc, err = call("DEL")
    assert rc == 0, err
    journal = parse((state / "ipam-releases.journal").read_bytes())
    assert [r.owner for r in journal] == [f"cni:meshnet:{CID}:eth0"] * 2


def test_gateway_auto_takes_the_routers_pod_gateway(rig):
    router, links, call, _ = rig
    router.podnet = {"gateway": "10.32.0.1", "cidr": "10.32.0.1/12", "mtu": 1376}
    rc, result = call("ADD", gateway="auto", routes=[{"dst": "10.96.0.0/12"}])
    assert rc == 0, result
    veth = links.veths[spec.host_ifname(CID, "eth0")]
    assert veth["routes"] == (("10.96.0.0/12", None), ("0.0.0.0/0", "10.32.0.1"))
    assert result["ips"][0]["gateway"] == "10.32.0.1"
    assert {"dst": "0.0.0.0/0", "gw": "10.32.0.1"} in result["routes"]


def test_gateway_auto_without_a_pod_network_gives_no_default_route(rig):
    router, links, call, _ = rig
    rc, result = call("ADD", gateway="auto")
    assert rc == 0 and links.veths[spec.host_ifname(CID, "eth0")]["routes"] == ()
    assert "gateway" not in result["ips"][0]


@pytest.mark.parametrize("answer", [Unavailable("the pod gateway is not ready yet"), RouterUnavailable("down")])
def test_gateway_auto_not_ready_is_try_again_later_before_anything_is_made(rig, answer):
    router, links, call, _ = rig
    router.podnet = {"gateway": "10.32.0.1"}
    router.fail["/podnet"] = answer
    rc, err = call("ADD", gateway="auto")
    assert rc == 1 and err["code"] == spec.TRY_AGAIN_LATER
    assert router.held == {} and links.veths == {}


@pytest.mark.parametrize("bad", [None, 42, "not-an-ip", "fd00::1"])
def test_gateway_auto_with_a_bad_answer_is_an_error(rig, bad):
    router, links, call, _ = rig
    router.podnet = {"gateway": bad}
    rc, err = call("ADD", gateway="auto")
    assert rc == 1 and err["code"] == spec.INTERNAL and links.veths == {} and router.held == {}
