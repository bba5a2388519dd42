"""Test tiers: unit and pump (no root, no kernel state), netns (root: namespaces, links, daemons).

netns tests are skipped unless running as root; each builds its own namespaces and
removes them in a finally/fixture teardown, even when it fails.
"""

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
