"""Random bytes from the underlay and on the TAP never crash a pump; every datagram and
frame is accounted for exactly once, as forwarded or as a counted drop."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pump_harness import Rig, header

LOCAL = 100
UDP_FATES = (
    "tap_tx", "drop_tap_write", "relayed", "drop_unknown_sender", "drop_short",
    "drop_version", "drop_type", "drop_unknown_peer", "drop_ttl", "drop_no_route",
)

# Mostly noise, some of it behind a plausible header so the deeper rules are reached.
noise = st.binary(max_size=200)
headed = st.builds(
    lambda src, dst, ttl, rest: header(src, dst, ttl=ttl) + rest,
    st.sampled_from([1, 2, 3, 7, LOCAL]),
    st.sampled_from([1, 2, 3, 7, LOCAL]),
    st.integers(0, 255),
    noise,
)
datagrams = st.lists(st.one_of(noise, headed), max_size=30)
# One rig serves all examples of a test: it must stay usable whatever came before.
FUZZ = settings(max_examples=150, deadline=None)
# The largest IPv4 datagram too (a frame for us), without making every example huge.
biggest = st.sampled_from([0, 65507]).map(lambda n: (header(1, LOCAL) + b"\x02" * n)[:n])


@pytest.fixture(scope="module")
def rig(impl):
    rig = Rig(impl, LOCAL)
    rig.connect(1)
    rig.connect(2)
    rig.pump.set_peer(3, None, 2)
    yield rig
    rig.close()


@FUZZ
@given(datagrams=datagrams, big=biggest)
def test_random_datagrams_only_count(rig, datagrams, big):
    before = rig.stats()
    sent = [d for d in datagrams + [big] if d]
    for i, d in enumerate(sent):
        rig.send_from(1 + i % 2, d)
    rig.run_until_idle(timeout_ms=1)
    rig.from_tap()
    rig.received(1)
    rig.received(2)
    after = rig.stats()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["udp_rx"] == len(sent)
    assert delta["udp_rx_bytes"] == sum(map(len, sent))
    assert sum(delta[k] for k in UDP_FATES) == len(sent)


@FUZZ
@given(frames=st.lists(st.binary(max_size=300), max_size=30))
def test_random_tap_frames_only_count(rig, frames):
    before = rig.stats()
    for f in frames:
        rig.to_tap(f)
    rig.run_until_idle(timeout_ms=1)
    rig.received(1)
    rig.received(2)
    after = rig.stats()
    delta = {k: after[k] - before[k] for k in after}
    assert delta["tap_rx"] == len(frames)
    short = sum(len(f) < 14 for f in frames)
    assert delta["drop_short_frame"] == short
    assert delta["udp_tx"] + delta["drop_send_error"] >= len(frames) - short
