"""kernel.offload over fds that are not a TAP (no root): what it turns on and reports."""

import socket

import pytest

from meshnet.kernel import offload
from meshnet.dataplane.offloads import Offloads
from meshnet.kernel.offload import UDP_GRO


@pytest.fixture
def fds():
    app, tap = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield tap, udp
    for s in (app, tap, udp):
        s.close()


def test_a_socketpair_is_no_tap_and_loopback_udp_has_gso_and_gro(fds):
    tap, udp = fds
    assert not offload.has_vnet_hdr(tap.fileno())
    got = offload.configure(tap.fileno(), udp.fileno())
    assert got == Offloads(vnet_hdr=False, tap=(), udp_gso=True, udp_gro=True)
    assert udp.getsockopt(socket.IPPROTO_UDP, UDP_GRO) == 1
    assert udp.fileno() >= 0 and udp.getsockname()  # the caller's fd stays open


def test_disabled_turns_udp_gro_off_again(fds):
    tap, udp = fds
    offload.configure(tap.fileno(), udp.fileno())
    assert offload.configure(tap.fileno(), udp.fileno(), enable=False) == Offloads()
    assert udp.getsockopt(socket.IPPROTO_UDP, UDP_GRO) == 0


def test_what_is_not_a_udp_socket_has_no_udp_offloads(fds):
    tap, _ = fds
    got = offload.configure(tap.fileno(), tap.fileno())
    assert not (got.udp_gso or got.udp_gro)


def test_tap_offloads_by_name():
    assert offload.tap_names(0) == ()
    every = offload.TUN_F_CSUM | offload.TUN_F_TSO4 | offload.TUN_F_TSO6 | offload.TUN_F_TSO_ECN
    assert offload.tap_names(every) == ("csum", "tso4", "tso6", "tso_ecn")
