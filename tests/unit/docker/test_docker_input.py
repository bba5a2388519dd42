"""Input to the Docker routes and the network plugin: a bad field is an answer naming it
(a 400 on our API, an `Err` to Docker), never a traceback or a veth with a strange name."""

from __future__ import annotations

import asyncio

import pytest

from meshnet.docker.cnm import CnmDriver
from meshnet.docker.inputs import container_ref, nat_flag
from meshnet.docker.testing import FakeEndpoints, FakePlumbing, MemoryStore
from meshnet.errors import UsageError


@pytest.mark.parametrize("ref", [None, 5, "", "../../containers/x/kill", "a b", "x" * 300, ["web"]])
def test_container_must_be_a_name_or_id(ref):
    with pytest.raises(UsageError, match="'container'"):
        container_ref({"container": ref})


def test_container_names_and_ids_pass():
    assert container_ref({"container": " web-1 "}) == "web-1"
    assert container_ref({"container": "/web_1.a"}) == "/web_1.a"
    assert container_ref({"container": "0c8fa41cdc21"}) == "0c8fa41cdc21"


@pytest.mark.parametrize("nat", ["abc", 1, "true", []])
def test_nat_must_be_a_boolean(nat):
    with pytest.raises(UsageError, match="'nat'"):
        nat_flag({"nat": nat})
    assert nat_flag({"nat": True}) == {"nat": True} and nat_flag({}) == {}


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/NetworkDriver.CreateEndpoint", {"NetworkID": "zz", "EndpointID": "ab"}, "NetworkID"),
        ("/NetworkDriver.Join", {"EndpointID": "../../etc"}, "EndpointID"),
        ("/NetworkDriver.Leave", {}, "EndpointID"),
        ("/NetworkDriver.DeleteNetwork", {"NetworkID": 5}, "NetworkID"),
        ("/IpamDriver.RequestAddress", {"PoolID": "meshnet:10.32.0.0/12", "Options": ["not", "a", "map"]}, "bad request"),
    ],
)
def test_the_plugin_answers_bad_fields_with_an_error_naming_them(path, body, field):
    driver = CnmDriver(FakeEndpoints(), FakePlumbing(), MemoryStore(), universe=lambda: "10.32.0.0/12")
    reply = asyncio.run(driver.call_path(path, body))
    assert field in reply["Err"] and reply["Err"] == reply["Error"]
