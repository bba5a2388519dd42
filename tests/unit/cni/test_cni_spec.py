"""CNI protocol without I/O: versions, result shapes per version, error codes, CNI_ARGS,
port-mapping spellings."""

from __future__ import annotations

import json

import pytest

from meshnet.cni import spec
from meshnet.cni.spec import CniError

CID = "0123456789abcdef" * 4


def conf(version: str | None = "1.0.0", **extra) -> bytes:
    body = {"name": "meshnet", "type": "meshnet-cni", **extra}
    if version is not None:
        body["cniVersion"] = version
    return json.dumps(body).encode()


def env(command: str = "ADD", **extra) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": CID,
        "CNI_NETNS": "/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
        "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def code_of(fn, *args) -> int:
    with pytest.raises(CniError) as info:
        fn(*args)
    return info.value.code


OUTCOME = spec.AddOutcome(
    host_if="mnp0123456789a",
    host_mac="aa:bb:cc:00:00:01",
    ifname="eth0",
    mac="02:00:0a:20:00:05",
    netns="/run/netns/x",
    cidrs=("10.32.0.5/12",),
    mtu=1376,
)


# -- versions ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_supported_versions_parse(version):
    req = spec.parse_request(env(), conf(version))
    assert req.conf.version == version
    assert req.owner == f"cni:meshnet:{CID}:eth0"
    assert req.endpoint_id == f"cni:{CID}:eth0"
    assert req.path == ("/opt/cni/bin", "/usr/lib/cni")


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "2.0.0", "1.2.0", None, ""])
def test_unknown_or_old_versions_are_error_1(version):
    # a missing or empty cniVersion means 0.1.0, which we do not speak
    with pytest.raises(CniError) as info:
        spec.parse_request(env(), conf(version))
    assert info.value.code == spec.INCOMPATIBLE_VERSION
    assert "incompatible CNI version" in info.value.msg


def test_garbage_version_is_a_decode_error():
    assert code_of(spec.parse_request, env(), conf("one")) == spec.DECODE_FAILURE


def test_version_command_answers_in_the_asked_version_and_lists_all():
    req = spec.parse_request(env("VERSION"), json.dumps({"cniVersion": "0.4.0"}).encode())
    out = spec.version_result(req.conf.version)
    assert out == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_version_command_needs_no_container_env():
    req = spec.parse_request({"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": "9.9.9"}).encode())
    assert req.command == "VERSION"  # VERSION answers whatever it is asked


def test_check_needs_0_4_0():
    assert code_of(spec.parse_request, env("CHECK"), conf("0.3.1")) == spec.INCOMPATIBLE_VERSION
    assert spec.parse_request(env("CHECK"), conf("0.4.0")).command == "CHECK"


@pytest.mark.parametrize("command", ["STATUS", "GC"])
def test_status_gc_need_1_1_0(command):
    assert code_of(spec.parse_request, env(command), conf("1.0.0")) == spec.INCOMPATIBLE_VERSION
    req = spec.parse_request({"CNI_COMMAND": command}, conf("1.1.0"))
    assert req.command == command and req.container_id == ""


def test_error_version_falls_back_to_1_0_0():
    assert spec.error_version("0.4.0") == "0.4.0"
    assert spec.error_version("9.9.9") == "1.0.0"
    assert spec.error_version(None) == "1.0.0"
    err = CniError(7, "bad", "very bad").to_json("1.0.0")
    assert err == {"cniVersion": "1.0.0", "code": 7, "msg": "bad", "details": "very bad"}
    assert "details" not in CniError(7, "bad").to_json("1.0.0")


# -- result shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_0_3_and_0_4_carry_ip_version(version):
    r = spec.format_result(version, OUTCOME)
    assert r["cniVersion"] == version
    assert r["ips"] == [{"address": "10.32.0.5/12", "interface": 1, "version": "4"}]
    assert r["interfaces"][1] == {"name": "eth0", "mac": "02:00:0a:20:00:05", "sandbox": "/run/netns/x"}
    assert "sandbox" not in r["interfaces"][0]
    assert "mtu" not in r["interfaces"][0]
    assert r["routes"] == [] and r["dns"] == {}


def test_result_1_0_0_has_no_ip_version():
    r = spec.format_result("1.0.0", OUTCOME)
    assert r["ips"] == [{"address": "10.32.0.5/12", "interface": 1}]
    assert "mtu" not in r["interfaces"][1]


def test_result_1_1_0_has_interface_mtu():
    r = spec.format_result("1.1.0", OUTCOME)
    assert r["interfaces"][0]["mtu"] == 1376 and r["interfaces"][1]["mtu"] == 1376
    assert "version" not in r["ips"][0]


def test_result_gateway_and_routes():
    out = spec.AddOutcome(**{**OUTCOME.__dict__, "gateway": "10.32.0.1", "routes": (("10.96.0.0/12", None), ("0.0.0.0/0", "10.32.0.1"))})
    r = spec.format_result("1.0.0", out)
    assert r["ips"][0]["gateway"] == "10.32.0.1"
    assert r["routes"] == [{"dst": "10.96.0.0/12"}, {"dst": "0.0.0.0/0", "gw": "10.32.0.1"}]


def test_gateway_becomes_a_default_route():
    req = spec.parse_request(env(), conf(gateway="10.32.0.1", routes=[{"dst": "10.96.0.0/12"}]))
    assert req.conf.routes == (("10.96.0.0/12", None), ("0.0.0.0/0", "10.32.0.1"))


def test_prev_cidrs_picks_our_interface():
    prev = spec.format_result("1.0.0", OUTCOME)
    assert spec.prev_cidrs(prev, "eth0") == ["10.32.0.5/12"]
    assert spec.prev_cidrs(None, "eth0") == []


# -- environment and config errors -------------------------------------------------------


@pytest.mark.parametrize(
    "stdin",
    [b"{not json", b"", b"[1, 2]", b"\xff\xfe"],
)
def test_malformed_config_is_error_6(stdin):
    assert code_of(spec.parse_request, env(), stdin) == spec.DECODE_FAILURE


@pytest.mark.parametrize("missing", ["CNI_NETNS", "CNI_CONTAINERID", "CNI_IFNAME"])
def test_add_missing_env_is_error_4_and_names_it(missing):
    with pytest.raises(CniError) as info:
        spec.parse_request(env(**{missing: None}), conf())
    assert info.value.code == spec.INVALID_ENV
    assert missing in info.value.msg


def test_del_may_have_no_netns():
    req = spec.parse_request(env("DEL", CNI_NETNS=None), conf())
    assert req.netns == ""


def test_bad_command_and_bad_names():
    assert code_of(spec.parse_request, env("FROB"), conf()) == spec.INVALID_ENV
    assert code_of(spec.parse_request, env(CNI_CONTAINERID="-bad"), conf()) == spec.INVALID_ENV
    assert code_of(spec.parse_request, env(CNI_IFNAME="a/b"), conf()) == spec.INVALID_ENV
    assert code_of(spec.parse_request, env(CNI_IFNAME="x" * 16), conf()) == spec.INVALID_ENV


@pytest.mark.parametrize(
    "extra",
    [
        {"name": "bad name"},
        {"mtu": "1400"},
        {"mtu": 100},
        {"subnet": "10.32.0.0/33"},
        {"gateway": "nope"},
        {"routes": [{"gw": "10.0.0.1"}]},
        {"runtimeConfig": {"ips": ["10.1.1.1/40"]}},
        {"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}},
        {"socket": 5},
    ],
)
def test_invalid_config_is_error_7(extra):
    assert code_of(spec.parse_request, env(), conf(**extra)) == spec.INVALID_CONFIG


def test_config_fields():
    req = spec.parse_request(
        env(), conf(socket="/run/x.sock", state_dir="/var/lib/x", bridge="br9", mtu=1400, subnet="10.32.5.0/24", wait=3)
    )
    c = req.conf
    assert (c.socket, c.state_dir, c.bridge, c.mtu, c.subnet, c.wait) == ("/run/x.sock", "/var/lib/x", "br9", 1400, "10.32.5.0/24", 3.0)


# -- CNI_ARGS ----------------------------------------------------------------------------


def test_cni_args_podman_and_cri_forms():
    podman = spec.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=p1;IP=10.32.1.9;MAC=02:42:0A:20:01:09")
    assert podman["IP"] == "10.32.1.9" and podman["K8S_POD_NAME"] == "p1"
    cri = spec.parse_cni_args("K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web")
    assert cri["K8S_POD_NAMESPACE"] == "default"
    assert spec.parse_cni_args("") == {}
    assert spec.parse_cni_args("FOO=bar;IgnoreUnknown=true") == {"FOO": "bar", "IgnoreUnknown": "true"}


def test_cni_args_errors():
    assert code_of(spec.parse_cni_args, "FOO=bar") == spec.INVALID_ENV  # unknown without IgnoreUnknown
    assert code_of(spec.parse_cni_args, "IgnoreUnknown=1;novalue") == spec.INVALID_ENV
    assert code_of(spec.parse_cni_args, "IP=10.32.0.300") == spec.INVALID_ENV
    assert code_of(spec.parse_cni_args, "MAC=zz:00:00:00:00:00") == spec.INVALID_ENV


def test_static_ip_and_mac_from_cni_args():
    req = spec.parse_request(env(CNI_ARGS="IgnoreUnknown=1;IP=10.32.7.7;MAC=02:AA:00:00:00:01"), conf())
    assert req.static_ip == "10.32.7.7" and req.mac == "02:aa:00:00:00:01"
    req = spec.parse_request(env(CNI_ARGS="IP=10.32.7.7/12"), conf())
    assert req.static_ip == "10.32.7.7"


def test_runtime_config_ips_win_over_cni_args():
    req = spec.parse_request(env(CNI_ARGS="IP=10.32.7.7"), conf(runtimeConfig={"ips": ["10.32.8.8/12"]}))
    assert req.static_ip == "10.32.8.8"


# -- port mappings: both spellings ---------------------------------------------------------


def test_port_mappings_camel_case_from_podman():
    pm = spec.parse_port_mappings([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}])
    assert pm == (spec.PortMapping(8080, 80, "tcp", ""),)


def test_port_mappings_go_case_from_cri():
    pm = spec.parse_port_mappings([{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": "192.168.1.1"}])
    assert pm == (spec.PortMapping(8080, 80, "tcp", "192.168.1.1"),)


def test_port_mappings_reach_the_request():
    req = spec.parse_request(env(), conf(runtimeConfig={"portMappings": [{"HostPort": 53, "ContainerPort": 53, "Protocol": "UDP"}]}))
    assert req.conf.port_mappings == (spec.PortMapping(53, 53, "udp", ""),)


@pytest.mark.parametrize(
    "bad",
    [{"hostPort": "x", "containerPort": 80}, {"hostPort": 80, "containerPort": 70000}, {"hostPort": 1, "containerPort": 1, "protocol": "icmp"}, 5],
)
def test_port_mappings_invalid(bad):
    assert code_of(spec.parse_port_mappings, [bad]) == spec.INVALID_CONFIG


# -- owners and names ------------------------------------------------------------------------


def test_owner_round_trip_and_scoping():
    owner = spec.ipam_owner("meshnet", CID, "eth0")
    assert spec.parse_owner(owner, "meshnet") == (CID, "eth0")
    assert spec.parse_owner(owner, "other") is None
    assert spec.parse_owner("docker:abc", "meshnet") is None
    assert spec.parse_owner("cni:meshnet:", "meshnet") is None


def test_host_ifname_is_stable_and_short():
    a = spec.host_ifname(CID, "eth0")
    assert a == spec.host_ifname(CID, "eth0") != spec.host_ifname(CID, "eth1")
    assert a.startswith("mnp") and len(a) <= 15


def test_gc_valid_attachments_both_keys():
    body = [{"containerID": "c1", "ifname": "eth0"}]
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        req = spec.parse_request({"CNI_COMMAND": "GC"}, conf("1.1.0", **{key: body}))
        assert req.conf.valid_attachments == (("c1", "eth0"),)


def test_mac_for_is_derived_from_the_address():
    assert spec.mac_for("10.32.0.5/12") == "0a:58:0a:20:00:05"
    assert spec.mac_for("10.32.0.5") == spec.mac_for("10.32.0.5/16") != spec.mac_for("10.32.0.6")
    first = int(spec.mac_for("10.32.0.5")[:2], 16)
    assert first & 2 and not first & 1  # locally administered, unicast
