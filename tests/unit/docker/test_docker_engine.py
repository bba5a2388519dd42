"""Socket discovery, `docker run` argument parsing and the CLI's argument split."""

from __future__ import annotations

import pytest

from meshnet.cli import build_parser
from meshnet.cli.docker import split_addresses
from meshnet.config import child_argv, from_args
from meshnet.errors import UsageError
from meshnet.docker.engine import Container, dns_label, find_docker_host
from meshnet.docker.run_args import parse_run_args


def test_find_docker_host_order(tmp_path):
    assert find_docker_host("/x/d.sock", env={"DOCKER_HOST": "unix:///y"}) == "unix:///x/d.sock"
    assert find_docker_host(None, env={"MESHNET_DOCKER_SOCKET": "tcp://127.0.0.1:2375", "DOCKER_HOST": "unix:///y"}) == "tcp://127.0.0.1:2375"
    assert find_docker_host(None, env={"DOCKER_HOST": "unix:///y"}) == "unix:///y"
    assert find_docker_host("none", env={"DOCKER_HOST": "unix:///y"}) is None
    assert find_docker_host("relative.sock", env={}).startswith("unix:///")


def test_dns_label():
    assert dns_label("/My_App.1") == "my-app-1"
    assert dns_label("___") == ""
    assert len(dns_label("x" * 100)) == 63


def test_container_from_inspect():
    c = Container.from_inspect(
        {"Id": "abc", "Name": "/web", "State": {"Running": True, "Pid": 42, "Status": "running"}, "HostConfig": {"RestartPolicy": {"Name": "always"}}}
    )
    assert (c.name, c.netns, c.restart_policy) == ("web", "/proc/42/ns/net", "always")
    stopped = Container.from_inspect({"Id": "abc", "Name": "/web", "State": {"Running": False, "Pid": 0}})
    assert stopped.netns is None


def test_parse_run_args():
    spec = parse_run_args(
        ["-dit", "--name=web", "-e", "A=1", "-eB=2", "--restart", "on-failure:3", "-v", "/h:/c:ro", "-v", "/anon", "--stop-timeout", "1", "--dns", "1.2.3.4", "--add-host", "x:1.1.1.1", "bb:local", "sleep", "-x", "600"]
    )
    assert spec.image == "bb:local" and spec.create["command"] == ["sleep", "-x", "600"]
    assert spec.name == "web" and spec.create["environment"] == ["A=1", "B=2"]
    assert spec.create["tty"] and spec.create["stdin_open"] and spec.create["stop_timeout"] == 1
    assert spec.host_config["restart_policy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert spec.host_config["binds"] == ["/h:/c:ro"] and spec.create["volumes"] == ["/c", "/anon"]
    assert spec.host_config["extra_hosts"] == {"x": "1.1.1.1"} and spec.host_config["dns"] == ["1.2.3.4"]


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--frobnicate", "80:80", "img"], "does not support"),
        (["-p", "80:80:80:80", "img"], "-p"),
        (["-p", "70000", "img"], "outside"),
        (["-p", "8080-8081:80", "img"], "differ"),
        (["--pull", "sometimes", "img"], "--pull"),
        (["--name"], "needs a value"),
        (["-d"], "needs an image"),
        (["--restart", "sometimes", "img"], "--restart"),
        (["--stop-timeout", "soon", "img"], "whole number"),
    ],
)
def test_parse_run_args_refuses(argv, words):
    with pytest.raises(ValueError) as exc:
        parse_run_args(argv)
    assert words in str(exc.value)


def test_split_addresses():
    assert split_addresses(["10.32.1.1/12", "10.32.1.2/12", "--name", "x", "img"]) == (["10.32.1.1/12", "10.32.1.2/12"], ["--name", "x", "img"])
    assert split_addresses(["img/with/slash", "sh"]) == ([], ["img/with/slash", "sh"])
    assert split_addresses([]) == ([], [])


def test_launch_flags_round_trip():
    args = build_parser().parse_args(["launch", "--docker-socket", "/run/d.sock", "--dns-domain", "Corp.Example.", "--dns-upstream", "127.0.0.1:5353"])
    cfg = from_args(args, environ={})
    assert cfg.dns_domain == "corp.example" and cfg.docker_socket == "/run/d.sock"
    argv, env = child_argv(cfg)
    again = build_parser().parse_args(["launch", *argv])
    assert from_args(again, environ=env) == cfg
    bad = build_parser().parse_args(["launch", "--dns-upstream", "not-an-ip"])
    with pytest.raises(UsageError, match="--dns-upstream"):
        from_args(bad, environ={})


def test_parse_run_args_publish():
    spec = parse_run_args(["-p", "8080:80", "-p", "127.0.0.1:5353:53/udp", "-p", "9000", "-p", "8000-8001:7000-7001", "--expose", "22", "-P", "img"])
    assert spec.create["ports"] == [(22, "tcp"), (53, "udp"), (80, "tcp"), (7000, "tcp"), (7001, "tcp"), (9000, "tcp")]
    assert spec.host_config["port_bindings"] == {
        "80/tcp": 8080,
        "53/udp": ("127.0.0.1", 5353),
        "9000/tcp": None,
        "7000/tcp": 8000,
        "7001/tcp": 8001,
    }
    assert spec.host_config["publish_all_ports"] is True and spec.pull == "missing"
    assert parse_run_args(["--pull=never", "img"]).pull == "never"


@pytest.mark.parametrize("argv, flag", [(["launch", "host:99999"], "peers"), (["launch", "--router-mode", "vm"], "--router-mode"), (["launch", "--router-image", "-x"], "--router-image")])
def test_launch_flags_checked_before_anything_starts(argv, flag):
    with pytest.raises(UsageError, match=flag.lstrip("-")):
        from_args(build_parser().parse_args(argv), environ={})
