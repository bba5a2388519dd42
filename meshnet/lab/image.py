"""The router image for lab tests: image/build.sh from this checkout, cached by its key.

`router_image()` runs the recipe (a few minutes the first time on a machine, about a
second after that, since both layers are cached by a hash of what makes them) and returns
the path of the image archive, which `docker load` and `ctr images import` both read.
"""

from __future__ import annotations

import os
import subprocess

import meshnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(meshnet.__file__)))
BUILD = os.path.join(ROOT, "image", "build.sh")
BUILD_TIMEOUT = 1200.0  # seconds: a first build downloads the Debian packages


def router_image() -> str:
    """Build (or reuse) the image; the archive's path. Raises RuntimeError with the build's words."""
    if not os.path.exists(BUILD):
        raise RuntimeError(f"no image recipe at {BUILD} (meshnet is not running from a checkout)")
    result = subprocess.run([BUILD, "--quiet"], capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    if result.returncode != 0:
        raise RuntimeError(f"image/build.sh failed: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip().splitlines()[-1]
