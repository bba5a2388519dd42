"""The one place meshnet changes nftables and the sysctls that go with forwarding.

Tables are planned in `meshnet.dataplane.netfilter` and applied here with `nft -f -`
(one run is one transaction: a table is replaced whole or not at all). The sysctls are
read and written under /proc/sys of the namespace the calling thread is in.

`Nft` is the same for the NetworkPolicy table (`meshnet.k8s.policy`): scripts that are
diffs as well as whole tables, a check without commit, named counters read back as JSON,
optionally in another namespace (`ip netns exec`), with nft's own message on failure.
Every call blocks (a subprocess with a timeout): callers on the event loop run it in a
thread.
"""

from __future__ import annotations

import errno
import json
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


MAX_OUTPUT = 64 * 1024 * 1024  # a listing bigger than this is not ours to parse


class Nft:
    def __init__(self, *, netns: str | None = None, timeout: float = NFT_TIMEOUT, binary: str = "nft"):
        self.prefix = ["ip", "netns", "exec", netns] if netns else []
        self.timeout = timeout
        self.binary = binary

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        try:
            result = subprocess.run([*self.prefix, self.binary, *args], input=stdin, text=True, capture_output=True, timeout=self.timeout)
        except FileNotFoundError:
            raise KernelError(errno.ENOENT, f"{self.binary} not found: install nftables") from None
        except subprocess.TimeoutExpired:
            raise KernelError(errno.ETIMEDOUT, f"nft {' '.join(args)} took longer than {self.timeout:g}s") from None
        if result.returncode != 0:
            message = result.stderr.strip()[:2000]
            code = errno.ENOENT if "No such file or directory" in message else errno.EINVAL
            raise KernelError(code, f"nft {' '.join(args)}: {message}")
        if len(result.stdout) > MAX_OUTPUT:
            raise KernelError(errno.E2BIG, f"nft {' '.join(args)}: output over {MAX_OUTPUT} bytes")
        return result.stdout

    def apply(self, script: str) -> None:
        """Run `script` as one transaction."""
        self._run(["-f", "-"], script)

    def check(self, script: str) -> None:
        """Parse and validate `script` against the kernel without committing it."""
        self._run(["-c", "-f", "-"], script)

    def has_table(self, family: str, table: str) -> bool:
        try:
            self._run(["list", "table", family, table])
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def delete_table(self, family: str, table: str) -> None:
        self._run(["-f", "-"], f"add table {family} {table}\ndelete table {family} {table}\n")

    def list_json(self, *what: str) -> list[dict]:
        """`nft -j list ...` as its list of objects (the `nftables` array)."""
        try:
            data = json.loads(self._run(["-j", "list", *what]))
        except ValueError:
            raise KernelError(errno.EINVAL, "nft -j printed something that is not JSON") from None
        items = data.get("nftables") if isinstance(data, dict) else None
        return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []

    def counters(self, family: str, table: str) -> dict[str, tuple[int, int]]:
        """Every named counter of the table: name -> (packets, bytes)."""
        out = {}
        for item in self.list_json("counters", "table", family, table):
            c = item.get("counter")
            if isinstance(c, dict) and c.get("table") == table and isinstance(c.get("name"), str):
                packets, octets = c.get("packets", 0), c.get("bytes", 0)
                if isinstance(packets, int) and isinstance(octets, int):
                    out[c["name"]] = (packets, octets)
        return out
