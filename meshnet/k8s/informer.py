"""List, then watch, with a cache: what every meshnet agent that follows the API runs.

`Informer(client, resource, on_change=..., on_synced=...)`, then `await informer.run()`
(a task; cancel it to stop):

1. list every object (all pages) and remember the list's resourceVersion; the cache is
   replaced, and the difference to the old cache is told as ADDED / MODIFIED / DELETED
   (so a relist after a long gap tells what was missed, deletions included); then
   `on_synced()`.
2. watch from that resourceVersion with bookmarks; every event updates the cache and is
   told; every event and bookmark advances the resourceVersion.
3. the server ends the watch (its timeout): watch again from where we were, at once.
   The connection drops or the server is unreachable: the same, after a backoff
   (exponential with jitter, capped; reset once a watch has delivered). 410 Gone (an
   ERROR event or the HTTP status): the history is gone, so list again (step 1).

Callbacks run on the loop and must not block; an exception in one is logged and counted,
never the end of the informer. The cache is bounded (`max_objects`): when full, new
objects are dropped and counted, and the informer says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, Callable

from meshnet.k8s.client import KubeApiError, KubeClient, KubeProtocolError, KubeUnreachable, Resource, WatchEvent, object_key

log = logging.getLogger("meshnet.k8s")

MAX_OBJECTS = 100_000
WATCH_TIMEOUT = 300  # seconds: the server ends each watch after this (a fresh one follows)
BACKOFF_MIN = 0.5
BACKOFF_MAX = 30.0

OnChange = Callable[[str, dict[str, Any], "dict[str, Any] | None"], None]


class Backoff:
    """Exponential delays with jitter, capped; `reset()` after a success."""

    def __init__(self, low: float = BACKOFF_MIN, high: float = BACKOFF_MAX, rng: random.Random | None = None):
        self.low, self.high = low, high
        self._rng = rng or random.Random()
        self._next = low

    def next(self) -> float:
        delay = self._next * self._rng.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.high)
        return min(delay, self.high)

    def reset(self) -> None:
        self._next = self.low


class Informer:
    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        on_change: OnChange | None = None,
        on_synced: Callable[[], None] | None = None,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_timeout: int = WATCH_TIMEOUT,
        max_objects: int = MAX_OBJECTS,
        backoff: Backoff | None = None,
    ):
        self.client = client
        self.resource = resource
        self.on_change = on_change
        self.on_synced = on_synced
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.max_objects = max_objects
        self.backoff = backoff or Backoff()
        self.cache: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.synced = False  # a list has completed at least once
        self.last_error = ""
        self.counters = {"lists": 0, "watches": 0, "relists_gone": 0, "errors": 0, "events": 0, "bookmarks": 0,
                         "dropped_full": 0, "callback_errors": 0}
        self._synced_event = asyncio.Event()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self._synced_event.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                delivered = await self._watch()
                if delivered:
                    self.backoff.reset()
                continue  # the server ended the watch: resume at once
            except asyncio.CancelledError:
                raise
            except KubeApiError as exc:
                self._failed(exc)
                if exc.gone and not need_list:  # a 410 from the list itself (an expired page) backs off
                    self.counters["relists_gone"] += 1
                    log.info("%s watch: resourceVersion %s is too old; listing again", self.resource.plural, self.resource_version)
                    need_list = True
                    continue
            except (KubeUnreachable, KubeProtocolError, OSError) as exc:
                self._failed(exc)
            await asyncio.sleep(self.backoff.next())

    def _failed(self, exc: Exception) -> None:
        self.counters["errors"] += 1
        text = str(exc)
        if text != self.last_error:
            log.warning("%s list/watch: %s", self.resource.plural, text)
        self.last_error = text

    async def _list(self) -> None:
        items, version = await self.client.list(self.resource, namespace=self.namespace, label_selector=self.label_selector,
                                                field_selector=self.field_selector)
        self.counters["lists"] += 1
        fresh: dict[str, dict[str, Any]] = {}
        for item in items:
            key = object_key(item)
            if not key:
                continue
            if len(fresh) >= self.max_objects:
                self.counters["dropped_full"] += 1
                continue
            fresh[key] = item
        old, self.cache = self.cache, fresh
        self.resource_version = version
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._tell("ADDED", obj, None)
            elif _version(before) != _version(obj):
                self._tell("MODIFIED", obj, before)
        for key, obj in old.items():
            if key not in fresh:
                self._tell("DELETED", obj, obj)
        self.synced = True
        self.last_error = ""
        self._synced_event.set()
        if self.on_synced is not None:
            try:
                self.on_synced()
            except Exception:  # noqa: BLE001 - a callback bug must not stop the informer
                self.counters["callback_errors"] += 1
                log.exception("%s: on_synced failed", self.resource.plural)

    async def _watch(self) -> bool:
        self.counters["watches"] += 1
        delivered = False
        stream = self.client.watch(self.resource, resource_version=self.resource_version, namespace=self.namespace,
                                   label_selector=self.label_selector, field_selector=self.field_selector,
                                   timeout_seconds=self.watch_timeout)
        try:
            async for event in stream:
                self._apply(event)
                delivered = True
        finally:
            await stream.aclose()
        return delivered

    def _apply(self, event: WatchEvent) -> None:
        if event.resource_version:
            self.resource_version = event.resource_version
        if event.type == "BOOKMARK":
            self.counters["bookmarks"] += 1
            return
        self.counters["events"] += 1
        key = object_key(event.object)
        before = self.cache.get(key)
        if event.type == "DELETED":
            if self.cache.pop(key, None) is not None:
                self._tell("DELETED", event.object, before)
            return
        if before is None and len(self.cache) >= self.max_objects:
            self.counters["dropped_full"] += 1
            log.warning("%s cache is full (%d objects): %s dropped", self.resource.plural, self.max_objects, key)
            return
        self.cache[key] = event.object
        self._tell("ADDED" if before is None else "MODIFIED", event.object, before)

    def _tell(self, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(kind, obj, before)
        except Exception:  # noqa: BLE001 - a callback bug must not stop the informer
            self.counters["callback_errors"] += 1
            log.exception("%s: handling %s %s failed", self.resource.plural, kind, object_key(obj))

    def status(self) -> dict[str, Any]:
        return {"resource": self.resource.plural, "synced": self.synced, "objects": len(self.cache),
                "resource_version": self.resource_version, "last_error": self.last_error or None, **self.counters}


def _version(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")

