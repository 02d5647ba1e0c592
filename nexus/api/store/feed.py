"""Credential changes from a shared PostgreSQL database, delivered to this replica's caches.

The schema's triggers NOTIFY ``nexus_credentials`` whenever a cached row changes (a key
revoked, a tenant deleted, a user changed), in the transaction that changes it. One dedicated
connection per replica LISTENs and forwards each change to the registered caches.

Notifications sent while a listener is not connected are lost, and a connection can die
silently. So the listener also sends a heartbeat to itself every ``heartbeat`` seconds, on a
channel of its own. PostgreSQL delivers notifications to a session in the order in which their
transactions committed, so when a heartbeat sent at time *h* comes back, every change committed
before *h* has been delivered. The feed is *current* while the last heartbeat that came back
was sent less than ``max_lag`` seconds ago; the caches serve entries only while it is (and
otherwise every request reads the database), and on each (re)connection they are emptied.
Together: a change committed at *t* is never served from a cache after *t* + ``max_lag``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

import psycopg
import structlog
from psycopg import sql

from nexus.api.store.base import CredentialSink
from nexus.api.store.migrations.postgres import CREDENTIALS_CHANNEL

__all__ = ["CredentialFeed"]

log = structlog.get_logger("nexus.api.store.feed")


class CredentialFeed:
    """LISTENs for credential changes and tells its sinks; see the module docstring.

    Guarantees: :meth:`current` is true only if every change committed more than ``max_lag``
    seconds ago has been passed to every sink; after each (re)connection every sink is told
    to drop everything (:meth:`~CredentialSink.invalidate_all`) before the feed can be current.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        heartbeat: float = 0.25,
        max_lag: float = 0.75,
        connect_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < heartbeat < max_lag:
            raise ValueError("need 0 < heartbeat < max_lag")
        self._conninfo = conninfo
        self.heartbeat = heartbeat
        self.max_lag = max_lag
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._sinks: list[CredentialSink] = []
        self._task: asyncio.Task[None] | None = None
        # Send time of the newest heartbeat that came back; -inf: none yet on this connection.
        self._confirmed = -math.inf
        self._listening = asyncio.Event()
        self._channel = f"nexus_hb_{secrets.token_hex(8)}"
        #: Connections made so far (diagnostics and tests).
        self.connections = 0
        #: Backend pid of the listening connection, None while disconnected (tests kill it).
        self.backend_pid: int | None = None

    def current(self) -> bool:
        return self._confirmed >= self._clock() - self.max_lag

    def add(self, sink: CredentialSink) -> None:
        self._sinks.append(sink)
        sink.trust_while(self.current)

    async def start(self, wait: float = 5.0) -> None:
        """Start listening; wait up to ``wait`` seconds for the feed to be current.

        Returns either way: until the feed connects, the caches are simply not trusted.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="credential-feed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), wait)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._confirmed = -math.inf

    # -- the listening loop ----------------------------------------------------------------

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                log.warning("store.feed_disconnected", error=str(exc)[:300], retry_in=delay)
            finally:
                self._confirmed = -math.inf
                self._listening.clear()
                self.backend_pid = None
            await asyncio.sleep(delay)
            # At most a second apart: the caches stay closed until the feed is back.
            delay = min(delay * 2, 1.0)

    async def _listen(self) -> None:
        conn = await asyncio.wait_for(
            psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=int(self._connect_timeout)
            ),
            self._connect_timeout + 1,
        )
        async with conn:
            channels = sql.SQL("LISTEN {}; LISTEN {}").format(
                sql.Identifier(CREDENTIALS_CHANNEL), sql.Identifier(self._channel)
            )
            await asyncio.wait_for(conn.execute(channels), self._connect_timeout)
            self.connections += 1
            self.backend_pid = conn.info.backend_pid
            # What changed while nobody listened is unknown: forget everything, now that any
            # later change will be heard.
            for sink in self._sinks:
                sink.invalidate_all()
            log.info("store.feed_listening", connections=self.connections)
            await self._pump(conn)

    async def _pump(self, conn: psycopg.AsyncConnection[Any]) -> None:
        sent: dict[str, float] = {}
        seq = 0
        # Without a reply within this long the connection is presumed dead and replaced.
        silence = max(self.max_lag * 4, 2.0)
        while True:
            seq += 1
            payload = str(seq)
            sent[payload] = self._clock()
            await asyncio.wait_for(
                conn.execute("SELECT pg_notify(%s, %s)", (self._channel, payload)), silence
            )
            async for note in conn.notifies(timeout=self.heartbeat):
                if note.channel == self._channel:
                    at = sent.pop(note.payload, None)
                    if at is not None:
                        self._confirmed = max(self._confirmed, at)
                        self._listening.set()
                    # Older heartbeats still in flight are overtaken by this one.
                    for old in [p for p in sent if int(p) < int(note.payload)]:
                        del sent[old]
                else:
                    self._dispatch(note.payload)
            if sent and self._clock() - min(sent.values()) > silence:
                raise TimeoutError(f"no heartbeat back for {silence:.1f}s")

    def _dispatch(self, payload: str) -> None:
        kind, _, ident = payload.partition(":")
        for sink in self._sinks:
            if kind == "key":
                sink.invalidate_key(ident)
            elif kind == "tenant":
                sink.invalidate_tenant(ident)
            elif kind == "user":
                sink.invalidate_user(ident)
            else:  # "all" (a TRUNCATE) or anything this build does not know: be safe
                sink.invalidate_all()
