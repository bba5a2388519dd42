"""The resolver's sans-IO core: answers, negative answers, reverse lookups and garbage."""

from __future__ import annotations

import asyncio
import os
import socket

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnet.dns.answer import FORWARD, Records, answer, normalize_domain, parse_upstreams
from meshnet.dns.server import DnsServer

REC = Records.build("meshnet.local", [("web", ["10.32.0.5/12"]), ("web", ["10.32.1.5/12"]), ("db", ["10.32.0.9/12", "fd00::1/64"]), ("", ["10.32.0.10/12"])])


def ask(name: str, rdtype: str = "A", records: Records = REC, **kw) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    out = answer(q.to_wire(), records, **kw)
    assert isinstance(out, bytes)
    resp = dns.message.from_wire(out)
    assert resp.id == q.id and resp.flags & dns.flags.QR
    return resp


def addresses(resp: dns.message.Message) -> set[str]:
    return {rd.address for rrset in resp.answer for rd in rrset}


def test_a_records_and_round_robin():
    resp = ask("web.meshnet.local")
    assert resp.rcode() == dns.rcode.NOERROR and resp.flags & dns.flags.AA
    assert addresses(resp) == {"10.32.0.5", "10.32.1.5"}
    assert resp.answer[0].ttl == 1
    assert addresses(ask("DB.MeshNet.Local.")) == {"10.32.0.9"}  # case-insensitive; IPv6 skipped


def test_negative_answers_are_authoritative_with_soa():
    resp = ask("nope.meshnet.local")
    assert resp.rcode() == dns.rcode.NXDOMAIN and resp.flags & dns.flags.AA
    assert resp.authority and resp.authority[0].rdtype == dns.rdatatype.SOA
    nodata = ask("web.meshnet.local", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority
    apex = ask("meshnet.local", "SOA")
    assert apex.answer[0].rdtype == dns.rdatatype.SOA


def test_reverse_lookup():
    resp = ask("5.0.32.10.in-addr.arpa", "PTR")
    assert [rd.target.to_text() for rd in resp.answer[0]] == ["web.meshnet.local."]
    unknown = answer(dns.message.make_query("1.1.1.1.in-addr.arpa", "PTR").to_wire(), REC)
    assert dns.message.from_wire(unknown).rcode() == dns.rcode.REFUSED


def test_outside_the_domain_refused_or_forwarded():
    assert ask("example.com").rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("example.com", "A").to_wire()
    assert answer(q, REC, forward=True) is FORWARD
    # our own names are never forwarded
    assert isinstance(answer(dns.message.make_query("web.meshnet.local", "A").to_wire(), REC, forward=True), bytes)


def test_configurable_domain():
    rec = Records.build(normalize_domain("Corp.Example."), [("api", ["10.32.0.3/12"])])
    assert addresses(ask("api.corp.example", records=rec)) == {"10.32.0.3"}
    assert ask("api.meshnet.local", records=rec).rcode() == dns.rcode.REFUSED
    for bad in ("", ".", "a..b", "x" * 64 + ".com"):
        with pytest.raises(ValueError):
            normalize_domain(bad)


def test_truncation_over_udp_not_tcp():
    many = Records.build("meshnet.local", [("big", [f"10.32.{i // 250}.{i % 250 + 1}/12" for i in range(200)])])
    resp = ask("big.meshnet.local", records=many)
    assert resp.flags & dns.flags.TC and not resp.answer
    tcp = ask("big.meshnet.local", records=many, tcp=True)
    assert len(addresses(tcp)) == 200
    edns = dns.message.make_query("big.meshnet.local", "A", use_edns=0, payload=4096)
    assert len(addresses(dns.message.from_wire(answer(edns.to_wire(), many)))) == 200


def test_garbage():
    assert answer(b"", REC) is None
    assert answer(b"\x00" * 5, REC) is None
    q = bytearray(dns.message.make_query("web.meshnet.local", "A").to_wire())
    resp = dns.message.from_wire(answer(bytes(q), REC))
    assert resp.rcode() == dns.rcode.NOERROR
    # a response is never answered (no loops)
    q2 = bytearray(q)
    q2[2] |= 0x80
    assert answer(bytes(q2), REC) is None
    # truncated question: FORMERR with the id echoed
    cut = answer(bytes(q[:-3]), REC)
    assert cut[:2] == bytes(q[:2]) and cut[3] & 0x0F == dns.rcode.FORMERR
    # two questions
    two = dns.message.make_query("web.meshnet.local", "A")
    two.question.append(dns.message.make_query("db.meshnet.local", "A").question[0])
    assert dns.message.from_wire(answer(two.to_wire(), REC)).rcode() == dns.rcode.FORMERR
    # another opcode
    notify = dns.message.make_query("web.meshnet.local", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(answer(notify.to_wire(), REC)).rcode() == dns.rcode.NOTIMP
    assert answer("not bytes", REC) is None  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_never_raises(data):
    out = answer(data, REC, forward=True)
    assert out is None or out is FORWARD or isinstance(out, bytes)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.integers(min_value=12, max_value=200))
def test_fuzz_mutated_queries(noise, cut):
    q = dns.message.make_query("web.meshnet.local", "A").to_wire()
    data = (q[:cut] + noise)[:512]
    out = answer(data, REC)
    assert out is None or isinstance(out, bytes)


def test_parse_upstreams():
    assert parse_upstreams("") == [] and parse_upstreams("none") == []
    assert parse_upstreams("127.0.0.1, 127.0.0.2:5353") == [("127.0.0.1", 53), ("127.0.0.2", 5353)]
    with pytest.raises(ValueError):
        parse_upstreams("resolver.example")


def test_server_on_loopback_udp_tcp_and_forward():
    """The asyncio shell on 127.0.0.1 (high ports): UDP, TCP, and forwarding to a fake upstream."""

    async def main():
        loop = asyncio.get_running_loop()

        class Upstream(asyncio.DatagramProtocol):
            def connection_made(self, transport):
                self.transport = transport

            def datagram_received(self, data, addr):
                msg = dns.message.from_wire(data)
                resp = dns.message.make_response(msg)
                resp.answer.append(dns.rrset.from_text(msg.question[0].name, 60, "IN", "A", "127.0.0.9"))
                self.transport.sendto(resp.to_wire(), addr)

        up, _ = await loop.create_datagram_endpoint(Upstream, local_addr=("127.0.0.1", 0))
        up_port = up.get_extra_info("sockname")[1]
        port = 20000 + os.getpid() % 20000
        server = DnsServer(lambda: REC, port=port, upstreams=[("127.0.0.1", up_port)])
        await server.set_addresses(["127.0.0.1"])
        assert server.addresses == ["127.0.0.1"]
        try:
            for name, want in (("web.meshnet.local", {"10.32.0.5", "10.32.1.5"}), ("example.com", {"127.0.0.9"})):
                q = dns.message.make_query(name, "A")
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setblocking(False)
                sock.connect(("127.0.0.1", port))
                await loop.sock_sendall(sock, q.to_wire())
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
                sock.close()
                assert addresses(dns.message.from_wire(data)) == want
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            wire = dns.message.make_query("db.meshnet.local", "A").to_wire()
            writer.write(len(wire).to_bytes(2, "big") + wire)
            length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
            resp = dns.message.from_wire(await reader.readexactly(length))
            writer.close()
            assert addresses(resp) == {"10.32.0.9"}
        finally:
            await server.close()
            up.close()
        assert server.addresses == []

    asyncio.run(main())
