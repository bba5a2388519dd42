"""Scale on real routers: a bounded control graph keeps direct data paths (the 40-router
test is in test_mesh.py; bench/router_scale.py goes to 100 and saturation)."""

import pytest

from meshnet.lab import Lab, ping, wait_for

pytestmark = pytest.mark.netns


def established(status) -> set[str]:
    return {c["nick"] for c in status["connections"] if c["state"] == "established"}


def test_bounded_control_graph_keeps_every_data_path_direct():
    """Eight routers, full mesh only up to 3: each keeps 2 chosen connections (and whoever
    chose it), yet containers on routers without a control connection talk over fastdp."""
    n, degree = 8, 2
    lab = Lab(prefix="mnb", hosts=n, extra_flags=["--full-mesh-limit=3", f"--mesh-degree={degree}"])
    try:
        lab.up()
        lab.wait_mesh(timeout=60)
        graph_ok = lambda: all(
            (g := lab.status(i)["control_graph"])["full_mesh"] is False and g["wanted_connected"] == g["wanted"] == degree
            for i in range(1, n + 1)
        )
        assert wait_for(graph_ok, 30) is not None, [lab.status(i)["control_graph"] for i in range(1, n + 1)]
        # Seed connections nobody chose are pruned after 30 s: at most `degree` per router stay.
        edges = lambda: sum(len(established(lab.status(i))) for i in range(1, n + 1)) // 2
        assert wait_for(lambda: edges() <= n * degree, 60) is not None, edges()
        links = {i: established(lab.status(i)) for i in range(1, n + 1)}
        assert edges() < n * (n - 1) // 2 and all(len(v) >= degree for v in links.values()), links
        # two routers without a control connection between them
        a, b = next((i, j) for i in range(1, n + 1) for j in range(i + 1, n + 1) if f"mnb-h{j}" not in links[i])
        (ca, _), (cb, ipb) = lab.add_container(a, 1), lab.add_container(b, 1)
        assert wait_for(lambda: ping(ca, ipb, wait=1), 15) is not None
        peer = lambda: next(p for p in lab.status(a)["peers"] if p["nick"] == f"mnb-h{b}")
        assert wait_for(lambda: peer()["mode"] == "fastdp", 20) is not None, peer()
        assert peer()["via"] is None or peer()["mode"] == "fastdp"
        assert ping(ca, ipb)
    finally:
        lab.down()
