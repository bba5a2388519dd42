"""Shared fixtures of the netns tests: `docker_lab`, 3 simulated Docker hosts; `upgrade_build`.

A test that asks for `docker_lab` gets the markers that lab needs (netns, slow, root,
docker.io and busybox-static) added at collection, so `-m` selection and the skips work
as if the test module had declared them.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

import meshnet
from meshnet.lab import running_lab

UPGRADE_VERSION = "99.0.0+upgrade"

DOCKER_LAB_MARKS = (
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not shutil.which("dockerd") or not os.path.exists("/bin/busybox"), reason="needs docker.io and busybox-static"),
)


def pytest_itemcollected(item: pytest.Item) -> None:
    if "docker_lab" in getattr(item, "fixturenames", ()):
        for mark in DOCKER_LAB_MARKS:
            item.add_marker(mark)


@pytest.fixture
def docker_lab():
    """A `DockerLab` (prefix mndk, 3 hosts, each with a router and a dockerd), mesh formed;
    torn down after the test, even a failed one (MNDK_KEEP=1 keeps it)."""
    with running_lab(3) as lab:
        yield lab


@pytest.fixture(scope="module")
def upgrade_build():
    """Another build of meshnet, as `Lab.start_router` keywords: a copy of the package with
    another version, run from another path (an upgrade without a second checkout)."""
    root = tempfile.mkdtemp(prefix="mnr-upgrade-")
    try:
        src = os.path.dirname(meshnet.__file__)
        shutil.copytree(src, os.path.join(root, "meshnet"), ignore=shutil.ignore_patterns("__pycache__"))
        init = os.path.join(root, "meshnet", "__init__.py")
        text = open(init).read().replace(f'__version__ = "{meshnet.__version__}"', f'__version__ = "{UPGRADE_VERSION}"')
        assert UPGRADE_VERSION in text
        with open(init, "w") as f:
            f.write(text)
        yield {"env": {"PYTHONPATH": root}, "cwd": root}
    finally:
        shutil.rmtree(root, ignore_errors=True)
