"""The offload path: TAP frames with a virtio_net_hdr (IFF_VNET_HDR), TSO frames cut into
segments with partial checksums (CSUM datagrams), checksums completed or handed to the
TAP, the compiled pump's merging of segments into one GSO write, and ICMP for frames
that do not fit the underlay. A socketpair stands in for the TAP (vnet_hdr=True)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnet.dataplane._pump_py import checksums
from meshnet.dataplane._pump_py.tap_side import segment_tso
from meshnet.dataplane.counters import COMPILED_ONLY
from meshnet.dataplane.layout import (
    FLAG_CSUM,
    HINT_SHIFT,
    VNET_F_NEEDS_CSUM,
    VNET_GSO_TCPV4,
    VNET_GSO_TCPV6,
    VNET_GSO_UDP,
    flow_hint,
)
from meshnet.dataplane.offloads import Offloads
from meshnet.dataplane.pump import load_pump
from pump_harness import (
    VNET,
    Rig,
    frame,
    header,
    inet_sum,
    ipv4_ok,
    ipv4_tcp,
    ipv6_tcp,
    l4_valid,
    mac,
    vnet,
)

LOCAL = 100
PEER_MAC = b"\x02\x00\x00\x00\x00\x01"


def tso(payload: bytes, mss: int, *, v6: bool = False, **kw) -> bytes:
    """A TSO frame as the kernel hands it to a TAP with TUN_F_TSO4/6."""
    f = (ipv6_tcp if v6 else ipv4_tcp)(payload, **kw)
    l4 = 54 if v6 else 34
    return vnet(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV6 if v6 else VNET_GSO_TCPV4, l4 + 20, mss, l4, 16) + f


def tap_frames(rig: Rig) -> list[tuple[tuple, bytes]]:
    return [(VNET.unpack(m[:10]), m[10:]) for m in rig.from_tap()]


def segment_uso(f: bytes, hdr_len: int, gso_size: int) -> list[bytes]:
    """Cut a GSO_UDP_L4 frame the way the kernel does (IPv4 id + k per datagram)."""
    v6 = f[12:14] == b"\x86\xdd"
    l4 = hdr_len - 8
    out = []
    for k, off in enumerate(range(hdr_len, len(f), gso_size)):
        chunk = f[off : off + gso_size]
        h = bytearray(f[:hdr_len])
        if v6:
            h[18:20] = (8 + len(chunk)).to_bytes(2, "big")
        else:
            h[16:18] = (l4 - 14 + 8 + len(chunk)).to_bytes(2, "big")
            h[18:20] = ((int.from_bytes(f[18:20], "big") + k) & 0xFFFF).to_bytes(2, "big")
            ip = h[14:l4]
            checksums.ipv4_header_checksum(ip)
            h[14:l4] = ip
        h[l4 + 4 : l4 + 6] = (8 + len(chunk)).to_bytes(2, "big")
        h[l4 + 6 : l4 + 8] = checksums.pseudo_sum(bytes(h), 8 + len(chunk), 17).to_bytes(2, "big")
        out.append(checksums.complete_checksum(bytes(h) + chunk, l4, 6))
    return out


def normalize(messages: list[tuple[tuple, bytes]]) -> list[bytes]:
    """What the receiving host's stack makes of the TAP writes: GSO frames cut back into
    segments, partial checksums completed (the kernel's job)."""
    out = []
    for (flags, gso_type, hdr_len, gso_size, start, offset), f in messages:
        if gso_type == 5:  # VIRTIO_NET_HDR_GSO_UDP_L4
            out += segment_uso(f, hdr_len, gso_size)
        elif gso_type:
            out += [checksums.complete_checksum(s, *checksums.l4_checksum_at(s))
                    for s in segment_tso(f, gso_type, gso_size)]
        elif flags & VNET_F_NEEDS_CSUM:
            out.append(checksums.complete_checksum(f, start, offset))
        else:
            out.append(f)
    return out


def sender(impl, **kw) -> Rig:
    rig = Rig(impl, LOCAL, vnet_hdr=True, **kw)
    rig.connect(1)
    rig.pump.set_mac(PEER_MAC, 1)
    return rig


def receiver(impl, *, vnet_hdr: bool, **kw) -> Rig:
    rig = Rig(impl, 1, vnet_hdr=vnet_hdr, **kw)
    rig.connect(LOCAL)
    return rig


@pytest.fixture
def rigs():
    made = []
    yield made
    for r in made:
        r.close()


@pytest.mark.parametrize("v6", [False, True])
def test_a_tso_frame_leaves_as_mss_segments_with_partial_checksums(impl, rigs, v6):
    rig = sender(impl)
    rigs.append(rig)
    payload = bytes(range(256)) * 20  # 5120 bytes
    rig.to_tap(tso(payload, 1400, v6=v6, seq=0xFFFFF000, flags=0x19 | 0x80))  # FIN PSH CWR ACK
    rig.run_until_idle()
    got = rig.received(1)
    assert len(got) == 4 and rig.stats()["gso_segments"] == 4
    l4 = 54 if v6 else 34
    data = b""
    hint = flow_hint(got[0][12:]) << HINT_SHIFT  # every segment carries the frame's flow hint
    assert hint  # a TCP flow: not the hint of non-IP frames
    for k, d in enumerate(got):
        assert d[:12] == header(LOCAL, 1, flags=FLAG_CSUM | hint)
        seg = d[12:]
        data += seg[l4 + 20 :]
        assert int.from_bytes(seg[l4 + 4 : l4 + 8], "big") == (0xFFFFF000 + 1400 * k) & 0xFFFFFFFF
        tcp_flags = seg[l4 + 13]
        assert tcp_flags & 0x80 == (0x80 if k == 0 else 0)
        assert tcp_flags & 0x09 == (0x09 if k == 3 else 0)
        if not v6:
            assert ipv4_ok(seg) and int.from_bytes(seg[18:20], "big") == 7 + k
        assert not l4_valid(seg)  # partial: the receiver completes it
        assert l4_valid(checksums.complete_checksum(seg, l4, 16))
    assert data == payload
    assert [len(d) - 12 - l4 - 20 for d in got] == [1400, 1400, 1400, 920]


def test_segments_are_completed_by_a_receiver_without_vnet_hdr(impl, rigs):
    rx = receiver(impl, vnet_hdr=False)
    rigs.append(rx)
    segs = segment_tso(ipv4_tcp(b"x" * 3000), VNET_GSO_TCPV4, 1000)
    for s in segs:
        rx.send_from(LOCAL, header(LOCAL, 1, flags=FLAG_CSUM) + s)
    rx.run_until_idle()
    out = rx.from_tap()
    assert len(out) == 3 and all(l4_valid(f) for f in out)
    assert out == [checksums.complete_checksum(s, 34, 16) for s in segs]


def test_segments_reach_a_vnet_tap_with_needs_csum_and_the_compiled_pump_merges_them(impl, rigs):
    rx = receiver(impl, vnet_hdr=True)
    rigs.append(rx)
    original = ipv4_tcp(bytes(range(200)) * 30, flags=0x18)
    segs = segment_tso(original, VNET_GSO_TCPV4, 1448)
    for s in segs:
        rx.send_from(LOCAL, header(LOCAL, 1, flags=FLAG_CSUM) + s)
    rx.run_until_idle()
    got = tap_frames(rx)
    assert normalize(got) == [checksums.complete_checksum(s, 34, 16) for s in segs]
    s = rx.stats()
    assert s["tap_tx"] == 5 and s["tap_tx_bytes"] == sum(map(len, segs))
    assert rx.pump.peer_stats()[LOCAL]["rx_frames"] == 5
    if rx.pump.features()["gro_merge"]:
        assert len(got) == 1
        (flags, gso_type, hdr_len, gso_size, start, offset), f = got[0]
        assert (flags, gso_type, hdr_len, gso_size, start, offset) == (1, VNET_GSO_TCPV4, 54, 1448, 34, 16)
        assert f == original[:16] + f[16:18] + original[18:24] + f[24:26] + original[26:50] + f[50:52] + original[52:]
        assert ipv4_ok(f) and s["gro_frames"] == 1 and s["gro_segments"] == 5
    else:
        assert len(got) == 5 and all(h[0] == VNET_F_NEEDS_CSUM and h[1] == 0 for h, _ in got)


def test_only_consecutive_segments_of_one_flow_merge(impl, rigs):
    rx = receiver(impl, vnet_hdr=True)
    rigs.append(rx)
    a = segment_tso(ipv4_tcp(b"a" * 4000, seq=0), VNET_GSO_TCPV4, 1000)
    b = segment_tso(ipv4_tcp(b"b" * 3000, seq=5000, src=b"\x0a\x20\x01\x09"), VNET_GSO_TCPV4, 1000)
    order = [a[0], a[1], a[3], a[2], b[0], b[1], a[0], b[2]]  # a gap, another flow, a retransmit
    plain = frame(mac(50), mac(5))
    for s in order[:4]:
        rx.send_from(LOCAL, header(LOCAL, 1, flags=FLAG_CSUM) + s)
    rx.send_from(LOCAL, header(LOCAL, 1) + plain)
    for s in order[4:]:
        rx.send_from(LOCAL, header(LOCAL, 1, flags=FLAG_CSUM) + s)
    rx.run_until_idle()
    got = tap_frames(rx)
    want = [checksums.complete_checksum(s, 34, 16) for s in order[:4]] + [plain]
    want += [checksums.complete_checksum(s, 34, 16) for s in order[4:]]
    assert normalize(got) == want
    if rx.pump.features()["gro_merge"]:
        assert len(got) == 7  # a0+a1 merged, b0+b1 merged


def udp_datagram(payload: bytes, ip_id: int, *, sport: int = 5000, partial: bool = True) -> bytes:
    f = bytearray(ipv4_tcp(payload, ip_id=ip_id))
    f[23] = 17
    f[24:26] = b"\0\0"
    f[24:26] = ((~inet_sum(bytes(f[14:34]))) & 0xFFFF).to_bytes(2, "big")
    udp = struct.pack("!HHHH", sport, 5201, 8 + len(payload), 0)
    f = bytes(f[:34]) + udp + payload
    f = f[:16] + (len(f) - 14).to_bytes(2, "big") + f[18:]
    f = bytearray(f)
    f[24:26] = b"\0\0"
    f[24:26] = ((~inet_sum(bytes(f[14:34]))) & 0xFFFF).to_bytes(2, "big")
    f[40:42] = checksums.pseudo_sum(bytes(f), 8 + len(payload), 17).to_bytes(2, "big")
    f = bytes(f)
    return f if partial else checksums.complete_checksum(f, 34, 6)


def test_udp_datagrams_of_one_flow_reach_a_vnet_tap_merged_by_the_compiled_pump(impl, rigs):
    rx = receiver(impl, vnet_hdr=True)
    rigs.append(rx)
    flow = [udp_datagram(bytes([k]) * 64, 100 + k) for k in range(6)] + [udp_datagram(b"end", 106)]
    other = udp_datagram(b"o" * 64, 1, sport=6000)
    done = udp_datagram(b"d" * 64, 2, partial=False)  # complete checksum: not merged
    seq = flow[:3] + [other] + flow[3:] + [done]
    for d in seq:
        rx.send_from(LOCAL, header(LOCAL, 1, flags=FLAG_CSUM if d is not done else 0) + d)
    rx.run_until_idle()
    got = tap_frames(rx)
    assert normalize(got) == [checksums.complete_checksum(d, 34, 6) if d is not done else d for d in seq]
    assert all(l4_valid(f) for f in normalize(got))
    if rx.pump.features()["gro_merge_udp"]:
        assert [h[1] for h, _ in got] == [5, 0, 5, 0]  # 3 merged, other, 4 merged (last short), done
        assert got[2][0][3] == 64 and rx.stats()["gro_segments"] == 7
    else:
        assert len(got) == len(seq)


def test_needs_csum_frames_keep_a_partial_checksum_only_where_the_receiver_finds_it(impl, rigs):
    rig = sender(impl)
    rigs.append(rig)
    udp = bytearray(ipv4_tcp(b"u" * 100))
    udp[23] = 17  # make it UDP: length 8 + ... checksum at 40
    udp[24:26] = b"\0\0"
    udp[24:26] = ((~inet_sum(bytes(udp[14:34]))) & 0xFFFF).to_bytes(2, "big")
    udp[38:40] = (len(udp) - 34).to_bytes(2, "big")
    pseudo = inet_sum(bytes(udp[26:34]) + struct.pack("!HH", 17, len(udp) - 34))
    udp[40:42] = pseudo.to_bytes(2, "big")
    udp = bytes(udp)
    rig.to_tap(vnet(VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 6) + udp)  # where the receiver looks
    tcp = ipv4_tcp(b"t" * 100)
    odd = bytearray(tcp)
    odd[34 + 18 : 34 + 20] = b"\0\0"
    rig.to_tap(vnet(VNET_F_NEEDS_CSUM, 0, 0, 0, 34 + 2, 16) + tcp)  # elsewhere: completed here
    rig.to_tap(vnet(VNET_F_NEEDS_CSUM, 0, 0, 0, 10, 16) + tcp)  # nonsense: dropped
    rig.to_tap(vnet(VNET_F_NEEDS_CSUM, 0, 0, 0, 34, 4000) + tcp)
    rig.run_until_idle()
    got = rig.received(1)
    assert got[0] == header(LOCAL, 1, flags=FLAG_CSUM | flow_hint(udp) << HINT_SHIFT) + udp
    assert got[1] == header(LOCAL, 1, flags=flow_hint(tcp) << HINT_SHIFT) + checksums.complete_checksum(tcp, 36, 16)
    assert len(got) == 2 and rig.stats()["drop_bad_csum"] == 2
    rx = receiver(impl, vnet_hdr=False)
    rigs.append(rx)
    rx.send_from(LOCAL, got[0])
    rx.run_until_idle()
    assert l4_valid(rx.from_tap()[0])


@pytest.mark.parametrize(
    "data",
    [
        vnet(0, VNET_GSO_UDP, 42, 1000) + ipv4_tcp(b"x" * 3000),  # UFO: never enabled
        vnet(0, VNET_GSO_TCPV4, 54, 0) + ipv4_tcp(b"x" * 3000),  # no MSS
        vnet(0, VNET_GSO_TCPV6, 54, 1000) + ipv4_tcp(b"x" * 3000),  # not IPv6
        vnet(0, VNET_GSO_TCPV4, 54, 1000) + ipv4_tcp(b""),  # no payload
        vnet(0, VNET_GSO_TCPV4, 54, 1000) + frame(PEER_MAC, mac(50), b"\x45" + bytes(40), 0x0800),
    ],
)
def test_bad_gso_frames_are_dropped(impl, rigs, data):
    rig = sender(impl)
    rigs.append(rig)
    rig.to_tap(data)
    rig.run_until_idle()
    assert rig.received(1) == []
    assert rig.stats()["drop_bad_gso"] == 1


def test_short_vnet_reads_are_short_frames(impl, rigs):
    rig = sender(impl)
    rigs.append(rig)
    rig.to_tap(b"\x00" * 5)
    rig.to_tap(vnet() + b"\x00" * 13)
    rig.run_until_idle()
    s = rig.stats()
    assert s["drop_short_frame"] == 2 and s["tap_rx_bytes"] == 13


def test_plain_frames_from_a_vnet_tap(impl, rigs):
    rig = sender(impl)
    rigs.append(rig)
    f = frame(PEER_MAC, mac(50))
    rig.to_tap(vnet() + f)
    rig.run_until_idle()
    assert rig.received(1) == [header(LOCAL, 1) + f]
    rx = receiver(impl, vnet_hdr=True)
    rigs.append(rx)
    rx.send_from(LOCAL, header(LOCAL, 1) + f)
    rx.run_until_idle()
    assert rx.from_tap() == [vnet() + f]


def test_encrypted_segments_round_trip(impl, rigs):
    key_a, key_b = b"\x11" * 32, b"\x22" * 32
    tx = sender(impl, crypto=True)
    tx.pump.set_peer_keys(1, key_a, key_b, epoch=0)
    rx = Rig(impl, 1, vnet_hdr=True, crypto=True)
    rx.pump.set_peer(LOCAL, tx.addr, LOCAL)
    rx.pump.set_peer_keys(LOCAL, key_b, key_a, epoch=0)
    tx.pump.set_peer(1, rx.addr, 1)
    rigs += [tx, rx]
    original = ipv4_tcp(bytes(range(256)) * 40)
    tx.to_tap(tso(bytes(range(256)) * 40, 1380))
    while tx.stats()["udp_tx"] < 8:
        tx.pump.poll(100)
    while rx.stats()["udp_rx"] < 8:
        rx.pump.poll(100)
    got = normalize(tap_frames(rx))
    segs = segment_tso(original, VNET_GSO_TCPV4, 1380)
    assert got == [checksums.complete_checksum(s, 34, 16) for s in segs]
    assert all(l4_valid(g) for g in got)
    assert sum(v for k, v in rx.stats().items() if k.startswith("drop_")) == 0


# -- MTU: frames that cannot fit the underlay get an ICMP error back ---------------------


def _icmp_ok(f: bytes) -> bool:
    if f[12:14] == b"\x08\x00":
        return ipv4_ok(f) and inet_sum(f[34:]) == 0xFFFF
    icmp = f[54:]
    return inet_sum(f[22:54] + len(icmp).to_bytes(4, "big") + b"\0\0\0\x3a" + icmp) == 0xFFFF


@pytest.mark.parametrize("crypto", [False, True])
def test_too_big_for_the_underlay_gets_frag_needed(impl, rigs, crypto):
    rig = Rig(impl, LOCAL, underlay_mtu=1500, crypto=crypto)
    rigs.append(rig)
    rig.connect(1)
    rig.pump.set_mac(PEER_MAC, 1)
    if crypto:
        rig.pump.set_peer_keys(1, b"\x01" * 32, b"\x02" * 32, epoch=0)
    fits = 1500 - (64 if crypto else 40)  # inner frame that still fits: 1460 / 1436
    ok = ipv4_tcp(b"x" * (fits - 54))
    big = ipv4_tcp(b"x" * (fits - 53))
    nodf = ipv4_tcp(b"x" * (fits - 53), df=False)
    v6 = ipv6_tcp(b"x" * (fits - 73))
    for f in (ok, big, nodf, v6):
        rig.to_tap(f)
    rig.run_until_idle()
    assert [len(d) for d in rig.received(1)] == [1472, 1473]  # ok, and nodf (fragmented)
    back = rig.from_tap()
    assert len(back) == 2 and rig.stats()["frag_needed"] == 2
    icmp4, icmp6 = back
    mtu = fits - 14
    assert icmp4[:12] == big[6:12] + big[:6] and icmp4[23] == 1 and icmp4[34:36] == b"\x03\x04"
    assert int.from_bytes(icmp4[40:42], "big") == mtu and icmp4[26:34] == big[30:34] + big[26:30]
    assert icmp4[42:] == big[14 : 14 + 28] and _icmp_ok(icmp4)
    assert icmp6[12:14] == b"\x86\xdd" and icmp6[54] == 2 and int.from_bytes(icmp6[58:62], "big") == mtu
    assert len(icmp6) == 14 + 1280 and _icmp_ok(icmp6)


def test_broadcasts_and_unknown_l3_are_never_answered(impl, rigs):
    rig = Rig(impl, LOCAL, underlay_mtu=576)
    rigs.append(rig)
    rig.connect(1)
    rig.to_tap(frame(b"\xff" * 6, mac(50), b"\x45" + bytes(1000)))
    rig.to_tap(frame(mac(9), mac(50), bytes(1000), 0x0806))
    rig.run_until_idle()
    assert rig.from_tap() == [] and len(rig.received(1)) == 2


# -- both pumps, the same random TSO input: the same datagrams, the same TAP contents ------

sizes = st.tuples(st.integers(1, 40), st.sampled_from([1, 7])) | st.tuples(
    st.integers(1, 9000), st.sampled_from([536, 1380, 1448, 9000]))
tso_frames = st.builds(
    lambda size, v6, flags, seq, opts: (*size, v6, flags, seq, opts),
    sizes,
    st.booleans(),
    st.sampled_from([0x10, 0x18, 0x19, 0x90, 0x50]),
    st.integers(0, 2**32 - 1),
    st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(inputs=st.lists(tso_frames, min_size=1, max_size=4))
def test_both_pumps_cut_and_deliver_tso_frames_alike(both, inputs):
    made = []
    try:
        outs = []
        for cls in both:
            tx, rx = sender(cls), receiver(cls, vnet_hdr=True)
            made += [tx, rx]
            for n, mss, v6, flags, seq, opts in inputs:
                payload = bytes((i * 7) & 0xFF for i in range(n))
                if v6:
                    tx.to_tap(tso(payload, mss, v6=True, flags=flags, seq=seq))
                else:
                    f = ipv4_tcp(payload, flags=flags, seq=seq, options=opts)
                    tx.to_tap(vnet(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, 54 + len(opts), mss, 34, 16) + f)
            tx.run_until_idle(timeout_ms=1)
            datagrams = tx.received(1)
            for d in datagrams:
                rx.send_from(LOCAL, d)
            rx.run_until_idle(timeout_ms=1)
            outs.append((datagrams, normalize(tap_frames(rx)), tx.stats(), rx.stats()))
        (d0, t0, s0, r0), (d1, t1, s1, r1) = outs
        assert d0 == d1 and t0 == t1 and s0 == s1
        for k in COMPILED_ONLY:
            r0.pop(k)
            r1.pop(k)
        assert r0 == r1
        assert all(l4_valid(f) for f in t1)
    finally:
        for r in made:
            r.close()


def test_features_report_what_was_probed(impl, rigs):
    plain = Rig(impl, LOCAL)  # a socketpair is no TAP: no virtio_net_hdr, no TAP offloads
    off = Rig(impl, LOCAL, offload=False, vnet_hdr=True)
    rigs += [plain, off]
    f = plain.pump.features()
    assert f["vnet_hdr"] is False and f["tap_offload"] == [] and f["threads"] == 1
    assert off.pump.features()["udp_gso"] is False and off.pump.features()["udp_gro"] is False
    if f["implementation"] == "compiled":
        assert f["udp_gso"] and f["udp_gro"] and f["syscall_batching"]  # loopback has both
    else:
        assert not (f["udp_gso"] or f["udp_gro"] or f["syscall_batching"])


def test_the_twin_refuses_udp_gro(rigs):
    """recvfrom() would hand it many coalesced datagrams as one."""
    cls, _ = load_pump(prefer_compiled=False)
    rig = Rig(cls, LOCAL)
    rigs.append(rig)
    with pytest.raises(ValueError):
        cls(rig.tap.fileno(), rig.udp.fileno(), LOCAL, offloads=Offloads(udp_gro=True))
