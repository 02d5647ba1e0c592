"""Both store backends behind one test interface: open a store, read the raw rows.

:meth:`StoreBackend.rows` reads through a connection of its own (what another process sees),
with SQLite's ``?`` placeholders on both backends, and shows timestamps in SQLite's stored form
(:func:`~nexus.api.store.format_ts`), so that one assertion reads the same on either backend.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from nexus.api.store import PostgresStore, SqliteStore, Store, format_ts


class StoreBackend:
    def __init__(self, name: str, location: str) -> None:
        self.name = name
        #: The SQLite file path or the PostgreSQL URL: what ``--database`` would be.
        self.location = location

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgres"

    @property
    def path(self) -> Path:
        assert not self.is_postgres
        return Path(self.location)

    async def open(self, clock: Callable[[], datetime] | None = None) -> Store:
        kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
        if self.is_postgres:
            return await PostgresStore.open(self.location, **kwargs)
        return await SqliteStore.open(self.location, **kwargs)

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        if not self.is_postgres:
            conn = sqlite3.connect(self.location)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        with psycopg.connect(self.location, autocommit=True) as pg:
            cur = pg.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]
            found = cur.fetchall() if cur.description else []
        return [tuple(format_ts(v) if isinstance(v, datetime) else v for v in r) for r in found]

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        """A write behind the store's back (an operator with psql or sqlite3)."""
        if not self.is_postgres:
            conn = sqlite3.connect(self.location)
            try:
                with conn:
                    conn.execute(sql, params)
            finally:
                conn.close()
            return
        with psycopg.connect(self.location, autocommit=True) as pg:
            pg.execute(sql.replace("?", "%s"), params)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"StoreBackend({self.name})"
