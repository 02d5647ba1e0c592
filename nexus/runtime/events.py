"""Kubernetes Events about objects, on the ``events.k8s.io/v1`` API (client-go's ``tools/events``).

Recording an event must never slow down or break a reconcile: :meth:`EventRecorder.event` only
updates memory and schedules a write; the write runs in the background, bounded in number, and
its failures are logged. Repeats of one event are folded into a single Event's ``series``, as
client-go's events library does, so a hot error loop cannot flood etcd with Events.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog

from nexus.runtime.client import ApiError, Client
from nexus.runtime.clock import Clock, RealClock
from nexus.runtime.resource import EVENTS

__all__ = ["NORMAL", "SERIES_WINDOW", "WARNING", "EventRecorder"]

log = structlog.get_logger("nexus.events")

NORMAL: Final = "Normal"
WARNING: Final = "Warning"
#: client-go's finishTime: a series whose last occurrence is older than this is over, and the
#: next occurrence starts a new Event.
SERIES_WINDOW: Final = 6 * 60.0

# Field limits enforced by the API server's validation of events.k8s.io/v1 Events.
_REASON_LIMIT = 128
_ACTION_LIMIT = 128
_NOTE_LIMIT_BYTES = 1024
_INSTANCE_LIMIT = 128
_NAME_LIMIT = 253

_RETRIES = 3
_RETRY_DELAY = 0.2
_DROP_LOG_INTERVAL = 10.0
_INVALID_NAME_CHARS = re.compile(r"[^a-z0-9.-]+")

# Errors worth another try: socket errors and timeouts (OSError), aiohttp errors while
# reading a body; ApiErrors are retried only for throttling and server errors.
_TRANSIENT = (OSError, aiohttp.ClientError)

type _Key = tuple[str, str, str, str, str]


def _micro_time() -> str:
    """Now as a ``metav1.MicroTime``: RFC 3339 in UTC with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _truncate_bytes(text: str, limit: int) -> str:
    # The API server counts bytes (Go's len), so cut the UTF-8 form, then drop a split
    # trailing character rather than send invalid UTF-8.
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[:limit].decode(errors="ignore")


def _reference(obj: Mapping[str, Any]) -> dict[str, str]:
    """``regarding`` for an object, or a copy of an ObjectReference-shaped mapping."""
    meta = obj.get("metadata")
    src: Mapping[str, Any] = meta if isinstance(meta, Mapping) else obj
    ref = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "name": src.get("name"),
        "namespace": src.get("namespace"),
        "uid": src.get("uid"),
        "resourceVersion": src.get("resourceVersion"),
    }
    return {k: str(v) for k, v in ref.items() if v}


def _name_prefix(name: str) -> str:
    # Event names must be DNS subdomains; object names need not be (e.g. "system:node").
    prefix = _INVALID_NAME_CHARS.sub("-", name.lower()).strip(".-")
    return (prefix or "event")[: _NAME_LIMIT - 18]


@dataclass(slots=True)
class _Series:
    """One distinct event and its repeats within the window."""

    body: dict[str, Any]  # the Event to create (metadata.name fixed at first sight)
    last_observed: str  # MicroTime of the latest occurrence
    seen_at: float  # clock time of the latest occurrence
    count: int = 1  # occurrences recorded
    written: int = 0  # occurrences the API server knows of; 0 = Event not created yet
    writer: asyncio.Task[None] | None = None


class EventRecorder:
    """Records ``events.k8s.io/v1`` Events about objects without getting in the caller's way.

    Guarantees:

    - :meth:`event` never raises and never waits: it updates memory and schedules a write on
      the running loop. Write failures are retried briefly when transient, then logged and
      dropped, never raised.
    - An identical event (same object uid, type, reason, action and note) repeated within
      ``series_window`` of its previous occurrence updates the existing Event's
      ``series {count, lastObservedTime}`` by merge patch instead of creating another Event.
      At most one write per Event is in flight; when it ends, one more write catches up with
      any repeats recorded meanwhile, so the stored count ends up exact.
    - Bounded memory and work: at most ``cache_size`` distinct events are remembered (least
      recently seen evicted first, and any not seen for ``series_window``) and at most
      ``max_in_flight`` writes run at once; events beyond that are dropped and counted in
      :attr:`dropped`.
    - :meth:`flush` returns once every write scheduled before or during it has finished.
    """

    def __init__(
        self,
        client: Client,
        reporting_controller: str,
        reporting_instance: str | None = None,
        *,
        max_in_flight: int = 100,
        cache_size: int = 4096,
        series_window: float = SERIES_WINDOW,
        request_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if max_in_flight < 1 or cache_size < 1:
            raise ValueError("max_in_flight and cache_size must be at least 1")
        self._client = client
        self.reporting_controller = reporting_controller
        self.reporting_instance = (reporting_instance or socket.gethostname())[:_INSTANCE_LIMIT]
        self._max_in_flight = max_in_flight
        self._cache_size = cache_size
        self._window = series_window
        self._timeout = request_timeout
        self._clock: Clock = clock or RealClock()
        # Ordered by last occurrence (oldest first), so expiry and eviction pop from the front.
        self._series: OrderedDict[_Key, _Series] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._dropped = 0
        self._last_drop_log = -_DROP_LOG_INTERVAL
        self._last_ns = 0
        # Where events about cluster-scoped objects go: "default" as client-go writes them and
        # API servers >= 1.22 require, until a server refuses that (see _write_once).
        self._cluster_scoped_namespace = "default"
        self._log = log.bind(controller=reporting_controller)

    @property
    def dropped(self) -> int:
        """Events not written because ``max_in_flight`` writes were already running."""
        return self._dropped

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def cached(self) -> int:
        """Distinct events remembered for aggregation."""
        return len(self._series)

    # -- recording ---------------------------------------------------------------------------

    def event(
        self,
        regarding: Mapping[str, Any],
        type_: str,
        reason: str,
        note: str,
        action: str | None = None,
    ) -> None:
        """Record that ``reason``/``action`` happened to ``regarding`` (an object or a reference).

        ``type_`` is ``Normal`` or ``Warning``; ``action`` defaults to ``reason``. Over-long
        reason, action (128) and note (1 KiB) are truncated.
        """
        try:
            self._record(regarding, type_, reason, note, action)
        except Exception:
            # A bug or odd input here must not fail the caller's reconcile.
            self._log.warning("events.record_failed", reason=reason, exc_info=True)

    def normal(
        self, regarding: Mapping[str, Any], reason: str, note: str, action: str | None = None
    ) -> None:
        self.event(regarding, NORMAL, reason, note, action)

    def warning(
        self, regarding: Mapping[str, Any], reason: str, note: str, action: str | None = None
    ) -> None:
        self.event(regarding, WARNING, reason, note, action)

    async def flush(self) -> None:
        """Wait for every outstanding write (for tests and shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _record(
        self,
        regarding: Mapping[str, Any],
        type_: str,
        reason: str,
        note: str,
        action: str | None,
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._log.warning("events.no_event_loop", reason=reason)
            return
        if type_ not in (NORMAL, WARNING) or not reason:
            self._log.warning("events.invalid", type=type_, reason=reason)
            return
        ref = _reference(regarding)
        reason = reason[:_REASON_LIMIT]
        action = (action or reason)[:_ACTION_LIMIT]
        note = _truncate_bytes(note, _NOTE_LIMIT_BYTES)
        identity = ref.get("uid") or "/".join(
            ref.get(k, "") for k in ("apiVersion", "kind", "namespace", "name")
        )
        key: _Key = (identity, type_, reason, action, note)
        now = self._clock.now()
        stamp = _micro_time()
        self._expire(now)

        entry = self._series.get(key)
        if entry is not None:
            self._series.move_to_end(key)
            entry.count += 1
            entry.last_observed = stamp
            entry.seen_at = now
        else:
            entry = _Series(
                self._new_event(ref, type_, reason, action, note, stamp=stamp), stamp, now
            )
            self._series[key] = entry
            while len(self._series) > self._cache_size:
                self._series.popitem(last=False)

        if entry.writer is not None:
            return  # the running write picks up the new count when it finishes
        if len(self._tasks) >= self._max_in_flight:
            self._drop(reason, now)
            return
        task = loop.create_task(self._write(entry), name=f"event:{reason}")
        entry.writer = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _expire(self, now: float) -> None:
        while self._series:
            oldest = next(iter(self._series.values()))
            if now - oldest.seen_at <= self._window:
                return
            self._series.popitem(last=False)

    def _drop(self, reason: str, now: float) -> None:
        self._dropped += 1
        # One line per interval: under overload, logging every drop would add to the load.
        if now - self._last_drop_log >= _DROP_LOG_INTERVAL:
            self._last_drop_log = now
            self._log.warning(
                "events.dropped",
                reason=reason,
                dropped_total=self._dropped,
                max_in_flight=self._max_in_flight,
            )

    def _new_event(
        self, ref: dict[str, str], type_: str, reason: str, action: str, note: str, *, stamp: str
    ) -> dict[str, Any]:
        # Strictly increasing, so two events about one object in the same clock tick
        # still get distinct names.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return {
            "apiVersion": EVENTS.api_version,
            "kind": EVENTS.kind,
            "metadata": {
                "name": f"{_name_prefix(ref.get('name', ''))}.{self._last_ns:x}",
                "namespace": ref.get("namespace") or self._cluster_scoped_namespace,
            },
            "eventTime": stamp,
            "reportingController": self.reporting_controller,
            "reportingInstance": self.reporting_instance,
            "action": action,
            "reason": reason,
            "note": note,
            "type": type_,
            "regarding": ref,
        }

    # -- writing -----------------------------------------------------------------------------

    async def _write(self, entry: _Series) -> None:
        try:
            while entry.written < entry.count:
                count = entry.count
                if not await self._write_once(entry, count):
                    return  # logged; a later occurrence tries again with its count
                entry.written = count
        except Exception:
            # E.g. an undecodable answer: still nothing the caller should ever see.
            self._log.warning("events.write_failed", reason=entry.body["reason"], exc_info=True)
        finally:
            entry.writer = None

    async def _write_once(self, entry: _Series, count: int) -> bool:
        meta = entry.body["metadata"]
        series = {"count": count, "lastObservedTime": entry.last_observed} if count > 1 else None
        for attempt in range(_RETRIES):
            try:
                if entry.written and series is not None:
                    try:
                        await self._timed(
                            self._client.patch(
                                EVENTS, meta["name"], {"series": series}, meta["namespace"]
                            )
                        )
                        return True
                    except ApiError as exc:
                        if not exc.not_found:
                            raise
                        # The Event expired (its TTL) or was deleted: recreate it.
                body = dict(entry.body)
                if series is not None:
                    body["series"] = series
                try:
                    await self._timed(self._client.create(EVENTS, body))
                except ApiError as exc:
                    if self._use_kube_system(entry, exc):
                        continue
                    if not exc.already_exists:
                        raise
                    # An earlier create of ours landed though its answer was lost.
                    if series is None:
                        return True
                    entry.written = 1
                    continue
                return True
            except ApiError as exc:
                retry = exc.status == 429 or exc.status >= 500
                if not retry or attempt == _RETRIES - 1:
                    self._log.warning(
                        "events.write_failed",
                        reason=entry.body["reason"],
                        namespace=meta["namespace"],
                        status=exc.status,
                        error=exc.message,
                    )
                    return False
            except _TRANSIENT as exc:
                if attempt == _RETRIES - 1:
                    self._log.warning(
                        "events.write_failed",
                        reason=entry.body["reason"],
                        namespace=meta["namespace"],
                        error=str(exc) or type(exc).__name__,
                    )
                    return False
            self._log.debug("events.write_retry", reason=entry.body["reason"], attempt=attempt)
            await asyncio.sleep(_RETRY_DELAY * 2**attempt)
        return False

    def _use_kube_system(self, entry: _Series, exc: ApiError) -> bool:
        """Move a cluster-scoped object's event to kube-system if the server demands it.

        API servers before 1.22 validate new-style Events about cluster-scoped objects
        against kube-system instead of default (kubernetes#100125); the recorder remembers
        the answer for its next events.
        """
        meta = entry.body["metadata"]
        if not (
            exc.invalid
            and "involvedObject.namespace" in exc.message
            and not entry.body["regarding"].get("namespace")
            and meta["namespace"] == "default"
        ):
            return False
        meta["namespace"] = self._cluster_scoped_namespace = "kube-system"
        self._log.info("events.cluster_scoped_namespace", namespace="kube-system")
        return True

    async def _timed[T](self, call: Coroutine[Any, Any, T]) -> T:
        async with asyncio.timeout(self._timeout):
            return await call
