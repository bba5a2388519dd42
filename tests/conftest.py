"""Test tiers: unit and pump (no root, no kernel state), netns (root: namespaces, links, daemons).

netns tests are skipped unless running as root; each builds its own namespaces and
removes them in a finally/fixture teardown, even when it fails.

Root-tier modules take a machine-wide lock (`E2E_LOCK`) for as long as they run: their
namespaces, run dirs and dockerds have fixed names, so two pytest runs on one machine
(two checkouts, two developers) must not interleave them. One run, as in CI, never waits.
"""

import fcntl
import os

import pytest

E2E_LOCK = "/run/meshnet-e2e.lock"


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module", autouse=True)
def _one_e2e_module_at_a_time(request):
    if os.geteuid() != 0 or not any("netns" in item.keywords for item in request.session.items if item.module is request.module):
        yield
        return
    fd = os.open(E2E_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks while another run's root-tier module runs
        yield
    finally:
        os.close(fd)
