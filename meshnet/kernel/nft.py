"""The one place meshnet changes nftables and the sysctls that go with forwarding.

Tables are planned in `meshnet.dataplane.netfilter` and applied here with `nft -f -`
(one run is one transaction: a table is replaced whole or not at all). The sysctls are
read and written under /proc/sys of the namespace the calling thread is in.
"""

from __future__ import annotations

import errno
import subprocess

from meshnet.dataplane.netfilter import NetfilterPlan, render, replace_script
from meshnet.kernel.errors import KernelError

NFT_TIMEOUT = 10.0  # seconds one nft run may take


def run_nft(script: str) -> None:
    """Raises KernelError if nft is missing or refuses the script."""
    try:
        result = subprocess.run(["nft", "-f", "-"], input=script, text=True, capture_output=True, timeout=NFT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(errno.ENOENT, f"cannot run nft (install nftables): {exc}") from None
    if result.returncode != 0:
        raise KernelError(errno.EINVAL, f"nft failed: {result.stderr.strip()[:500]}")


def apply(plan: NetfilterPlan | None, *, table: str, family: str = "ip") -> None:
    """Replace table `table` by the plan's, or remove it (None)."""
    run_nft(replace_script(family, table, render(plan) if plan is not None else None))


def table_text(table: str, family: str = "ip") -> str | None:
    """`nft list table` output, None if there is no such table."""
    try:
        result = subprocess.run(["nft", "list", "table", family, table], text=True, capture_output=True, timeout=NFT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def _path(key: str) -> str:
    if not key or ".." in key or key.startswith("/"):
        raise ValueError(f"bad sysctl {key!r}")
    return "/proc/sys/" + key.replace(".", "/") if "/" not in key else "/proc/sys/" + key


def sysctl_get(key: str) -> str | None:
    """The value (stripped), None if the kernel has no such setting."""
    try:
        with open(_path(key)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise KernelError(exc.errno or 0, f"cannot read {key}: {exc.strerror}") from None


def sysctl_set(key: str, value: str) -> str | None:
    """Write `value`; return what was there (None: no such setting, nothing written)."""
    old = sysctl_get(key)
    if old is None:
        return None
    if old != value:
        try:
            with open(_path(key), "w") as f:
                f.write(value + "\n")
        except OSError as exc:
            raise KernelError(exc.errno or 0, f"cannot set {key}={value}: {exc.strerror}") from None
    return old
