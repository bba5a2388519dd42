"""Denied packets from NFLOG: the netlink messages, the packet headers, the log line, its budget."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshnet.k8s.policy.denials import Denied, LogBudget, describe, parse_denied
from meshnet.kernel.nflog import NFULA_PAYLOAD, NFULA_PREFIX, _attr, parse_messages


def ipv4(proto: int, src: str, dst: str, l4: bytes, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, frag, 64, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + l4


def nflog_message(prefix: str, payload: bytes) -> bytes:
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7)) + _attr(NFULA_PREFIX, prefix.encode() + b"\0") + _attr(NFULA_PAYLOAD, payload)
    return struct.pack("=IHHII", 16 + len(body), 4 << 8, 0, 0, 0) + body


def test_a_denied_tcp_syn_from_the_netlink_message_to_the_log_line():
    packet = ipv4(6, "10.32.0.3", "10.32.0.1", struct.pack("!HH", 40000, 80) + b"\0" * 16)
    ack = struct.pack("=IHHII", 36, 2, 0, 1, 0) + struct.pack("=i", 0) + b"\0" * 16
    packets, acks = parse_messages(nflog_message("meshnet-deny-in", packet) + ack)
    assert acks == [0] and packets == [("meshnet-deny-in", packet)]
    d = parse_denied(*packets[0])
    assert d == Denied("ingress", "tcp", "10.32.0.3", "10.32.0.1", 40000, 80)
    names = {"10.32.0.1": "x/a", "10.32.0.3": "y/c"}
    assert describe(d, names.get) == "policy denied ingress to x/a: tcp 10.32.0.3:40000 -> 10.32.0.1:80 (from pod y/c)"


def test_egress_icmp_and_fragments_have_no_ports():
    d = parse_denied("meshnet-deny-eg", ipv4(1, "10.32.0.1", "8.8.8.8", b"\x08\0\0\0"))
    assert d == Denied("egress", "icmp", "10.32.0.1", "8.8.8.8", None, None)
    assert describe(d, {"10.32.0.1": "x/a"}.get) == "policy denied egress from x/a: icmp 10.32.0.1 -> 8.8.8.8"
    assert parse_denied("meshnet-deny-eg", ipv4(17, "10.32.0.1", "8.8.8.8", b"\0" * 8, frag=5)).dport is None


@pytest.mark.parametrize("prefix,packet", [
    ("other-prefix", ipv4(6, "1.1.1.1", "2.2.2.2", b"\0" * 20)),
    ("meshnet-deny-xx", ipv4(6, "1.1.1.1", "2.2.2.2", b"\0" * 20)),
    ("meshnet-deny-in", b"\x45\0\0"),
    ("meshnet-deny-in", b"\x60" + b"\0" * 39),  # IPv6
    ("meshnet-deny-in", b"\x4f" + b"\0" * 25),  # header longer than the packet
])
def test_what_is_not_a_denial_is_none(prefix, packet):
    assert parse_denied(prefix, packet) is None


@given(st.binary(max_size=300), st.text(max_size=30))
def test_garbage_never_raises(data, prefix):
    parse_messages(data)
    parse_denied("meshnet-deny-in", data)
    parse_denied(prefix, data)


def test_log_budget_holds_back_and_reports_what_it_held():
    now = [0.0]
    budget = LogBudget(lambda: now[0], rate=2)
    assert [budget.take() for _ in range(4)] == [(True, 0), (True, 0), (False, 0), (False, 0)]
    now[0] = 1.5
    assert budget.take() == (True, 2)
