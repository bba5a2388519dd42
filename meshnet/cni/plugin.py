"""`meshnet-cni`: the CNI plugin. ADD, DEL, CHECK, VERSION (0.3.0 ... 1.0.0), STATUS, GC (1.1.0).

The protocol is in `meshnet.cni.spec` (pure); this module does the I/O around it:
- the router's local API (`ApiClient`): `/ipam/allocate`, `/ipam/release`, `/ipam/owners`,
  `/endpoints/add`, `/endpoints/del`, `/status`;
- the kernel, only through `meshnet.kernel.links.Links` (`add_pod_veth`, `delete_link`, ...);
- the IPAM release journal (`meshnet.state.journal`) when DEL finds the router down.

Every command is all or nothing: ADD undoes what it made (veth, address, endpoint) when a
later step fails; DEL succeeds whatever is already gone, and journals the release when the
router is down, so the router frees the address exactly once when it comes back.
`Plugin` takes its collaborators as factories, so the unit tests run it without root and
without a router.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from meshnet.api.client import ApiClient
from meshnet.cni import spec
from meshnet.cni.spec import CniError, Request
from meshnet.errors import Conflict, MeshnetError, NotFound, RouterUnavailable, Unavailable

log = logging.getLogger("meshnet.cni")
LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _default_links() -> Any:
    from meshnet.kernel.links import Links

    return Links()


def _default_journal(state_dir: str) -> Any:
    from meshnet.state.journal import Journal

    return Journal(state_dir)


class Plugin:
    def __init__(
        self,
        client: Callable[[str, float], Any] = ApiClient,
        links: Callable[[], Any] = _default_links,
        journal: Callable[[str], Any] = _default_journal,
        path_exists: Callable[[str], bool] = os.path.exists,
    ):
        self._client_factory = client
        self._links_factory = links
        self._journal_factory = journal
        self._exists = path_exists
        self._links: Any = None

    # -- plumbing ------------------------------------------------------------------------

    def links(self) -> Any:
        if self._links is None:
            self._links = self._links_factory()
        return self._links

    def close(self) -> None:
        if self._links is not None:
            try:
                self._links.close()
            finally:
                self._links = None

    def client(self, req: Request) -> Any:
        return self._client_factory(req.conf.socket, max(req.conf.timeout, req.conf.wait + 5))

    def run(self, req: Request) -> dict[str, Any] | None:
        """Dispatch; returns the JSON to print (None: print nothing). Raises CniError."""
        try:
            if req.command == "VERSION":
                return spec.version_result(req.conf.version)
            handler = {"ADD": self.add, "DEL": self.delete, "CHECK": self.check, "STATUS": self.status, "GC": self.gc}
            return handler[req.command](req)
        finally:
            self.close()

    # -- ADD -------------------------------------------------------------------------------

    def add(self, req: Request) -> dict[str, Any]:
        from meshnet.kernel.errors import KernelError

        conf = req.conf
        if not self._exists(req.netns):
            raise CniError(spec.UNKNOWN_CONTAINER, f"CNI_NETNS {req.netns} does not exist")
        api = self.client(req)
        try:
            status = api.get("/status")
        except RouterUnavailable as exc:
            raise CniError(spec.TRY_AGAIN_LATER, "the meshnet router is not running", str(exc)) from None
        except MeshnetError as exc:
            raise CniError(spec.TRY_AGAIN_LATER, f"the meshnet router is not ready: {exc.message}") from None
        router = status.get("router", {})
        if router.get("bridge") and router["bridge"] != conf.bridge:
            raise CniError(
                spec.INVALID_CONFIG,
                f"network config says bridge {conf.bridge!r} but the router at {conf.socket} runs bridge {router['bridge']!r}",
            )
        mtu = conf.mtu or int(router.get("mtu") or 1376)
        gateway, routes = self._gateway(api, conf)
        body: dict[str, Any] = {"owner": req.owner, "wait": conf.wait}
        if req.static_ip:
            body["address"] = req.static_ip
        if conf.subnet:
            body["subnet"] = conf.subnet
        alloc = self._allocate(api, body)
        cidr = alloc["cidr"]
        host_if = spec.host_ifname(req.container_id, req.ifname)
        links = self.links()
        made_link = made_endpoint = False
        try:
            try:
                att = links.add_pod_veth(
                    req.netns,
                    host_if=host_if,
                    ifname=req.ifname,
                    bridge=conf.bridge,
                    cidrs=[cidr],
                    mtu=mtu,
                    mac=req.mac or spec.mac_for(cidr),
                    routes=routes,
                )
            except ValueError as exc:
                raise CniError(spec.INVALID_CONFIG, str(exc)) from None
            except KernelError as exc:
                raise CniError(spec.INTERFACE_FAILURE, f"cannot set up {req.ifname}: {exc.strerror or exc}") from None
            made_link = True
            endpoint = {"id": req.endpoint_id, "mac": att.mac, "ips": [cidr], "host_if": host_if}
            name = req.pod_name.lower()
            if LABEL_RE.match(name):
                endpoint["name"] = name
            try:
                api.post("/endpoints/add", endpoint)
            except RouterUnavailable as exc:
                raise CniError(spec.TRY_AGAIN_LATER, "the meshnet router went away during ADD", str(exc)) from None
            except MeshnetError as exc:
                raise CniError(spec.INTERNAL, f"the router refused the endpoint: {exc.message}") from None
            made_endpoint = True
            host_mac = links.mac_of(host_if) or ""
        except BaseException:
            self._undo_add(api, req, host_if if made_link else None, made_endpoint)
            raise
        log.info("ADD %s: %s %s on %s (host %s)", req.owner, req.ifname, cidr, conf.bridge, host_if)
        outcome = spec.AddOutcome(
            host_if=host_if,
            host_mac=host_mac,
            ifname=req.ifname,
            mac=att.mac,
            netns=req.netns,
            cidrs=(cidr,),
            mtu=mtu,
            gateway=gateway,
            routes=routes,
        )
        return spec.format_result(conf.version, outcome)

    def _gateway(self, api: Any, conf: spec.NetConf) -> tuple[str | None, tuple[tuple[str, str | None], ...]]:
        """The pod's gateway and routes. `"gateway": "auto"`: the router's pod gateway
        (`GET /podnet`) when it runs the pod network; none when it does not; and "try again
        later" while its gateway is not up yet (before anything is allocated)."""
        if conf.gateway != spec.AUTO:
            return conf.gateway, conf.routes
        try:
            gateway = api.get("/podnet").get("gateway")
        except NotFound:
            return None, conf.routes
        except RouterUnavailable as exc:
            raise CniError(spec.TRY_AGAIN_LATER, "the meshnet router is not running", str(exc)) from None
        except MeshnetError as exc:
            raise CniError(spec.TRY_AGAIN_LATER, f"the pod network is not ready: {exc.message}") from None
        try:
            if not isinstance(gateway, str):
                raise ValueError
            ipaddress.IPv4Address(gateway)
        except ValueError:
            raise CniError(spec.INTERNAL, f"the router answered /podnet with gateway {gateway!r}") from None
        return gateway, (*conf.routes, ("0.0.0.0/0", gateway))

    def _allocate(self, api: Any, body: dict[str, Any]) -> dict[str, Any]:
        try:
            alloc = api.post("/ipam/allocate", body)
        except RouterUnavailable as exc:
            raise CniError(spec.TRY_AGAIN_LATER, "the meshnet router is not running", str(exc)) from None
        except MeshnetError as exc:
            if isinstance(exc, Unavailable):
                raise CniError(spec.TRY_AGAIN_LATER, f"no address available: {exc.message}") from None
            if isinstance(exc, Conflict):
                raise CniError(spec.IPAM_FAILURE, f"address {body.get('address')} is in use: {exc.message}") from None
            if isinstance(exc, NotFound):
                raise CniError(spec.IPAM_FAILURE, "this meshnet router has no IPAM (/ipam/allocate is missing)") from None
            raise CniError(spec.IPAM_FAILURE, f"IPAM refused: {exc.message}") from None
        try:
            ipaddress.ip_interface(alloc["cidr"])
        except (KeyError, TypeError, ValueError):
            self._release(api, body["owner"])
            raise CniError(spec.IPAM_FAILURE, f"the router answered /ipam/allocate with {alloc!r}") from None
        return alloc

    def _undo_add(self, api: Any, req: Request, host_if: str | None, endpoint: bool) -> None:
        """Best effort, never raises: the original failure is what the runtime must see."""
        if host_if:
            try:
                self.links().delete_link(host_if)
            except Exception as exc:  # noqa: BLE001
                log.warning("undo ADD: cannot delete %s: %s", host_if, exc)
        try:
            if endpoint:
                api.post("/endpoints/del", {"id": req.endpoint_id})
            self._release(api, req.owner)
        except Exception as exc:  # noqa: BLE001
            log.warning("undo ADD: %s; journalling the release", exc)
            self._journal_release(req)

    def _release(self, api: Any, owner: str) -> list[str]:
        return api.post("/ipam/release", {"owner": owner}).get("released", [])

    # -- DEL -------------------------------------------------------------------------------

    def delete(self, req: Request) -> None:
        from meshnet.kernel.errors import KernelError

        host_if = spec.host_ifname(req.container_id, req.ifname)
        try:
            self.links().delete_link(host_if)  # its pod end goes with it; gone already is fine
        except KernelError as exc:
            raise CniError(spec.INTERFACE_FAILURE, f"cannot delete {host_if}: {exc.strerror or exc}") from None
        api = self.client(req)
        try:
            api.post("/endpoints/del", {"id": req.endpoint_id})
            released = self._release(api, req.owner)
            log.info("DEL %s: released %s", req.owner, released)
        except RouterUnavailable:
            self._journal_release(req)
            log.info("DEL %s: router down, release journalled in %s", req.owner, req.conf.state_dir)
        except MeshnetError as exc:
            raise CniError(spec.IPAM_FAILURE, f"the router refused the release: {exc.message}") from None

    def _journal_release(self, req: Request) -> None:
        if not os.path.isdir(req.conf.state_dir):
            log.info("no state dir %s: no router ever ran here, nothing to release", req.conf.state_dir)
            return
        try:
            self._journal_factory(req.conf.state_dir).append(req.owner, None)
        except OSError as exc:
            raise CniError(spec.IO_FAILURE, f"cannot journal the release in {req.conf.state_dir}: {exc}") from None

    # -- CHECK -----------------------------------------------------------------------------

    def check(self, req: Request) -> None:
        from meshnet.kernel.errors import KernelError

        conf = req.conf
        if conf.prev_result is None:
            raise CniError(spec.INVALID_CONFIG, "CHECK needs the prevResult of the ADD")
        if not self._exists(req.netns):
            raise CniError(spec.UNKNOWN_CONTAINER, f"CNI_NETNS {req.netns} does not exist")
        expected = spec.prev_cidrs(conf.prev_result, req.ifname)
        links = self.links()
        try:
            iface = links.pod_interface(req.netns, req.ifname)
        except KernelError as exc:
            raise CniError(spec.UNKNOWN_CONTAINER, str(exc.strerror or exc)) from None
        if iface is None:
            raise CniError(spec.CHECK_FAILED, f"{req.ifname} is missing in {req.netns}")
        if not iface["up"]:
            raise CniError(spec.CHECK_FAILED, f"{req.ifname} in {req.netns} is down")
        missing = [c for c in expected if c not in iface["cidrs"]]
        if missing:
            raise CniError(spec.CHECK_FAILED, f"{req.ifname} lacks {', '.join(missing)} (has {', '.join(iface['cidrs']) or 'none'})")
        host_if = spec.host_ifname(req.container_id, req.ifname)
        master = links.master_of(host_if)
        if master != conf.bridge:
            raise CniError(spec.CHECK_FAILED, f"host end {host_if} is {'missing' if master is None else 'not on ' + conf.bridge}")
        api = self.client(req)
        try:
            owners = api.get("/ipam/owners").get("owners", {})
            local = {e.get("id") for e in api.get("/endpoints").get("local", [])}
        except RouterUnavailable as exc:
            raise CniError(spec.TRY_AGAIN_LATER, "the meshnet router is not running", str(exc)) from None
        except MeshnetError as exc:
            raise CniError(spec.CHECK_FAILED, f"the router cannot confirm the attachment: {exc.message}") from None
        held = set(owners.get(req.owner, []))
        lost = [c for c in expected if c.split("/")[0] not in held]
        if lost:
            raise CniError(spec.CHECK_FAILED, f"IPAM no longer reserves {', '.join(lost)} for {req.owner}")
        if req.endpoint_id not in local:
            raise CniError(spec.CHECK_FAILED, f"the router does not know endpoint {req.endpoint_id}")

    # -- STATUS / GC (1.1.0) -----------------------------------------------------------------

    def status(self, req: Request) -> None:
        api = self.client(req)
        try:
            api.get("/status")
        except (MeshnetError, OSError) as exc:
            # Pods already on the bridge lose their sleeve peers while the router is down.
            bridge_up = self._bridge_exists(req.conf.bridge)
            code = spec.PLUGIN_NOT_AVAILABLE_LIMITED if bridge_up else spec.PLUGIN_NOT_AVAILABLE
            raise CniError(code, "the meshnet router is not running", str(exc)) from None

    def _bridge_exists(self, bridge: str) -> bool:
        try:
            return self.links().mtu_of(bridge) is not None
        except Exception:  # noqa: BLE001
            return False

    def gc(self, req: Request) -> None:
        """Release every attachment of this network that the runtime no longer lists."""
        from meshnet.kernel.errors import KernelError

        valid = set(req.conf.valid_attachments or ())
        api = self.client(req)
        try:
            owners = api.get("/ipam/owners").get("owners", {})
        except RouterUnavailable as exc:
            raise CniError(spec.TRY_AGAIN_LATER, "the meshnet router is not running", str(exc)) from None
        except MeshnetError as exc:
            raise CniError(spec.IPAM_FAILURE, f"cannot list IPAM owners: {exc.message}") from None
        failures = []
        for owner in sorted(owners):
            attachment = spec.parse_owner(owner, req.conf.name)
            if attachment is None or attachment in valid:
                continue
            cid, ifname = attachment
            try:
                self.links().delete_link(spec.host_ifname(cid, ifname))
                api.post("/endpoints/del", {"id": f"cni:{cid}:{ifname}"})
                self._release(api, owner)
                log.info("GC: released %s %s", owner, owners[owner])
            except (KernelError, MeshnetError) as exc:
                failures.append(f"{owner}: {exc}")
        if failures:
            raise CniError(spec.IPAM_FAILURE, f"GC could not release {len(failures)} attachment(s)", "; ".join(failures))


# -- entry point -----------------------------------------------------------------------------


def _setup_logging(stdin: bytes) -> None:
    try:
        conf = json.loads(stdin)
        path = conf.get("log_file") if isinstance(conf, dict) else None
    except ValueError:
        path = None
    handler: logging.Handler
    if isinstance(path, str) and path:
        try:
            handler = logging.FileHandler(path)
        except OSError:
            handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s meshnet-cni[%(process)d] %(levelname)s %(message)s"))
    for old in list(log.handlers):
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def main(
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    stdout: Any = None,
    plugin: Plugin | None = None,
) -> int:
    env = dict(os.environ) if env is None else env
    if stdin is None:
        try:
            stdin = sys.stdin.buffer.read()
        except OSError as exc:
            return _fail(stdout, CniError(spec.IO_FAILURE, f"cannot read the network config from stdin: {exc}"), None)
    _setup_logging(stdin)
    started = time.monotonic()
    requested = spec.peek_version(stdin)
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION" and not stdin.strip():
        return _emit(stdout, spec.version_result(spec.LATEST))
    try:
        req = spec.parse_request(env, stdin)
        result = (plugin or Plugin()).run(req)
    except CniError as exc:
        log.warning("%s %s failed (%d): %s %s", command, env.get("CNI_CONTAINERID", ""), exc.code, exc.msg, exc.details)
        return _fail(stdout, exc, requested)
    except Exception as exc:  # noqa: BLE001 - the runtime must get a CNI error, never a traceback alone
        log.exception("%s failed unexpectedly", command)
        return _fail(stdout, CniError(spec.INTERNAL, f"{exc.__class__.__name__}: {exc}"), requested)
    log.info("%s %s done in %.0f ms", command, env.get("CNI_CONTAINERID", ""), 1000 * (time.monotonic() - started))
    return _emit(stdout, result) if result is not None else 0


def _emit(stdout: Any, obj: dict[str, Any]) -> int:
    out = stdout or sys.stdout
    out.write(json.dumps(obj))
    out.flush()
    return 0


def _fail(stdout: Any, exc: CniError, requested: str | None) -> int:
    _emit(stdout, exc.to_json(spec.error_version(requested)))
    return 1
