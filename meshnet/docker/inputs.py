"""The fields of the Docker routes (`/docker/attach`, `/docker/detach`, `/expose`) that need
more than a type check: each bad one is a `UsageError` naming it (a 400), before Docker or
the kernel sees it."""

from __future__ import annotations

import re
from typing import Any

from meshnet.errors import UsageError

CONTAINER_REF = re.compile(r"^/?[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")  # a Docker container name or id


def container_ref(body: dict[str, Any]) -> str:
    """The `container` field: a Docker name or id (UsageError naming it otherwise)."""
    ref = body.get("container")
    if not isinstance(ref, str) or not CONTAINER_REF.match(ref.strip()):
        raise UsageError(f"'container' must be a container name or id, got {str(ref)[:80]!r}")
    return ref.strip()


def nat_flag(body: dict[str, Any]) -> dict[str, Any]:
    """The `nat` field is absent, null or a boolean (UsageError naming it otherwise)."""
    if body.get("nat") is not None and not isinstance(body["nat"], bool):
        raise UsageError(f"'nat' must be true or false, got {str(body['nat'])[:80]!r}")
    return body
