"""The resolver's sans-IO core: query bytes + records in, response bytes out.

`answer()` never raises and never does I/O. What it returns:
  * `bytes`: the response to send back;
  * `None`: send nothing (not a DNS query at all: too short, or a response);
  * `FORWARD`: a well-formed query for a name outside our domain, and the caller said it
    has upstream servers; it relays the query as is.

Names: `NAME.DOMAIN.` (A), the reverse `d.c.b.a.in-addr.arpa.` (PTR) of any address we
know, and the domain's own SOA (for negative answers, so clients cache NXDOMAIN briefly).
Anything under our domain that we do not know is NXDOMAIN, answered authoritatively. A name
outside the domain with no upstream gets REFUSED. Malformed queries get FORMERR when their
header is readable, nothing otherwise. The wire format is dnspython's.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field
from typing import Iterable

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rrset

DEFAULT_DOMAIN = "meshnet.local"
TTL = 1  # seconds: containers come and go; a stale answer should not outlive a restart
NEGATIVE_TTL = 1
UDP_LIMIT = 512  # without EDNS
MAX_PAYLOAD = 4096  # what we honour of a client's EDNS buffer size

FORWARD = object()


def normalize_domain(domain: str) -> str:
    """`Meshnet.Local.` -> `meshnet.local`. Raises ValueError for something that is no domain."""
    text = (domain or "").strip().rstrip(".").lower()
    if not text:
        raise ValueError("the DNS domain must not be empty")
    try:
        dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{domain!r} is not a valid DNS domain: {exc}") from None
    if any(not label or len(label) > 63 for label in text.split(".")):
        raise ValueError(f"{domain!r} is not a valid DNS domain")
    return text


@dataclass
class Records:
    """name -> IPv4 addresses, and address -> names, for one domain."""

    domain: str = DEFAULT_DOMAIN
    by_name: dict[str, list[str]] = field(default_factory=dict)  # label -> [ip]
    by_ip: dict[str, list[str]] = field(default_factory=dict)  # ip -> [label]

    @classmethod
    def build(cls, domain: str, entries: Iterable[tuple[str, Iterable[str]]]) -> Records:
        """`entries`: (label, [ip or ip/prefix, ...]). Empty labels and IPv6 are skipped."""
        rec = cls(domain=normalize_domain(domain))
        for label, ips in entries:
            label = (label or "").strip().lower()
            if not label:
                continue
            for ip in ips:
                try:
                    addr = ipaddress.ip_interface(ip).ip
                except ValueError:
                    continue
                if addr.version != 4:
                    continue
                text = str(addr)
                names = rec.by_name.setdefault(label, [])
                if text not in names:
                    names.append(text)
                labels = rec.by_ip.setdefault(text, [])
                if label not in labels:
                    labels.append(label)
        return rec


def _formerr(query: bytes) -> bytes | None:
    """A FORMERR reply built from the raw header: id echoed, QR set, no sections."""
    if len(query) < 12:
        return None
    qid = query[:2]
    flags1 = query[2]
    if flags1 & 0x80:  # QR set: it is a response; never answer those (loops)
        return None
    opcode_rd = flags1 & 0x79  # keep opcode and RD
    return qid + bytes([0x80 | opcode_rd, dns.rcode.FORMERR]) + b"\x00" * 8


def _reply(query: dns.message.Message, rcode: int, *, aa: bool) -> dns.message.Message:
    resp = dns.message.make_response(query, recursion_available=False)
    resp.set_rcode(rcode)
    if aa:
        resp.flags |= dns.flags.AA
    return resp


def _soa(zone: dns.name.Name) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(zone, dns.rdataclass.IN, dns.rdatatype.SOA)
    rrset.ttl = NEGATIVE_TTL
    rrset.add(
        dns.rdtypes.ANY.SOA.SOA(
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            dns.name.from_text("ns", zone),
            dns.name.from_text("hostmaster", zone),
            1,
            3600,
            600,
            86400,
            NEGATIVE_TTL,
        )
    )
    return rrset


def _to_wire(resp: dns.message.Message, limit: int) -> bytes:
    try:
        return resp.to_wire(max_size=limit)
    except dns.exception.TooBig:
        resp.answer.clear()
        resp.authority.clear()
        resp.additional.clear()
        resp.flags |= dns.flags.TC
        return resp.to_wire(max_size=limit)


_REVERSE = dns.name.from_text("in-addr.arpa.")


def answer(
    query: bytes, records: Records, *, forward: bool = False, shuffle: bool = True, tcp: bool = False
) -> bytes | None | object:
    """Answer one DNS message (see the module doc). Never raises. `tcp`: no 512-byte limit."""
    try:
        return _answer(query, records, forward, shuffle, tcp)
    except Exception:  # the last line of defence: a resolver must not die on input
        return _formerr(query) if isinstance(query, (bytes, bytearray)) else None


def _answer(query: bytes, records: Records, forward: bool, shuffle: bool, tcp: bool) -> bytes | None | object:
    if not isinstance(query, (bytes, bytearray)) or len(query) < 12 or query[2] & 0x80:
        return None
    try:
        msg = dns.message.from_wire(bytes(query))
    except dns.message.ShortHeader:
        return None
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return _formerr(query)
    limit = 65535 if tcp else UDP_LIMIT
    if msg.edns >= 0 and not tcp:
        limit = max(UDP_LIMIT, min(MAX_PAYLOAD, msg.payload))
    if msg.opcode() != dns.opcode.QUERY:
        resp = _reply(msg, dns.rcode.NOTIMP, aa=False)
        return _to_wire(resp, limit)
    if len(msg.question) != 1:
        return _to_wire(_reply(msg, dns.rcode.FORMERR, aa=False), limit)
    q = msg.question[0]
    zone = dns.name.from_text(records.domain)
    qname = q.name
    if qname.is_subdomain(zone):
        return _to_wire(_zone_answer(msg, q, zone, records, shuffle), limit)
    if qname.is_subdomain(_REVERSE) and q.rdclass == dns.rdataclass.IN:
        ip = _reverse_ip(qname)
        if ip is not None and ip in records.by_ip:
            resp = _reply(msg, dns.rcode.NOERROR, aa=True)
            if q.rdtype in (dns.rdatatype.PTR, dns.rdatatype.ANY):
                rrset = dns.rrset.RRset(qname, dns.rdataclass.IN, dns.rdatatype.PTR)
                rrset.ttl = TTL
                for label in records.by_ip[ip]:
                    target = dns.name.from_text(label, zone)
                    rrset.add(dns.rdtypes.ANY.PTR.PTR(dns.rdataclass.IN, dns.rdatatype.PTR, target))
                resp.answer.append(rrset)
            return _to_wire(resp, limit)
    if forward:
        return FORWARD
    return _to_wire(_reply(msg, dns.rcode.REFUSED, aa=False), limit)


def _reverse_ip(qname: dns.name.Name) -> str | None:
    labels = qname.relativize(_REVERSE).labels
    if len(labels) != 4:
        return None
    try:
        parts = [int(x.decode("ascii")) for x in reversed(labels)]
    except (ValueError, UnicodeDecodeError):
        return None
    if any(not 0 <= p <= 255 for p in parts):
        return None
    return ".".join(map(str, parts))


def _zone_answer(
    msg: dns.message.Message, q: dns.rrset.RRset, zone: dns.name.Name, records: Records, shuffle: bool
) -> dns.message.Message:
    rel = q.name.relativize(zone)
    label = rel.to_text().lower() if rel.labels else ""
    if q.rdclass != dns.rdataclass.IN:
        resp = _reply(msg, dns.rcode.REFUSED, aa=False)
        return resp
    if label in ("", "@"):  # the apex: SOA, and NODATA for the rest
        resp = _reply(msg, dns.rcode.NOERROR, aa=True)
        if q.rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
            resp.answer.append(_soa(zone))
        else:
            resp.authority.append(_soa(zone))
        return resp
    ips = records.by_name.get(label)
    if not ips:
        resp = _reply(msg, dns.rcode.NXDOMAIN, aa=True)
        resp.authority.append(_soa(zone))
        return resp
    resp = _reply(msg, dns.rcode.NOERROR, aa=True)
    if q.rdtype in (dns.rdatatype.A, dns.rdatatype.ANY):
        order = list(ips)
        if shuffle and len(order) > 1:
            random.shuffle(order)  # round robin between containers of one name
        rrset = dns.rrset.RRset(q.name, dns.rdataclass.IN, dns.rdatatype.A)
        rrset.ttl = TTL
        for ip in order:
            rrset.add(dns.rdtypes.IN.A.A(dns.rdataclass.IN, dns.rdatatype.A, ip))
        resp.answer.append(rrset)
    else:  # the name exists, the type does not (AAAA, MX, ...): NODATA
        resp.authority.append(_soa(zone))
    return resp


def parse_upstreams(text: str | None) -> list[tuple[str, int]]:
    """`"1.1.1.1, 9.9.9.9:5353"` -> [(ip, port)]; "", None or "none" -> []. Raises ValueError."""
    out: list[tuple[str, int]] = []
    if not text or text.strip().lower() == "none":
        return out
    for item in text.replace(",", " ").split():
        host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
        host = host or item
        try:
            ipaddress.IPv4Address(host)
            port_num = int(port) if port else 53
        except ValueError:
            raise ValueError(f"{item!r} is not an upstream DNS server like 192.0.2.53 or 192.0.2.53:53") from None
        if not 0 < port_num < 65536:
            raise ValueError(f"{item!r}: bad port")
        out.append((host, port_num))
    return out
