"""Gossip cost per change must grow no faster than N log N in total (Weave's is N²)."""

import importlib.util
import pathlib

spec = importlib.util.spec_from_file_location(
    "gossip_scale", pathlib.Path(__file__).parents[3] / "bench" / "gossip_scale.py"
)
gossip_scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gossip_scale)


def test_bytes_per_change_grow_linearly():
    small, big = gossip_scale.run(40), gossip_scale.run(160)
    for phase in ("join", "leave"):
        per_peer_small = small[phase][2] / 40
        per_peer_big = big[phase][2] / 160
        # 4x the peers: total bytes may grow 4x (linear); log factor allowance 1.4x; N² would be 16x.
        assert per_peer_big <= 1.4 * per_peer_small, (phase, per_peer_small, per_peer_big)
    assert big["join"][1] <= 10 and big["leave"][1] <= 10  # simulated seconds to converge
