"""An acknowledged write survives SIGKILL of the process that made it, on both backends.

Child processes open the store on one database (a SQLite file, or a PostgreSQL database) and
write in a loop (users from one task, API keys
from another, two processes at once), printing each id only after the commit returned, the way
a handler sends 201 only after the store call returned. The parent SIGKILLs them mid-stream and
reopens the file: every printed id must be there and the database must pass integrity_check.

SIGKILL leaves the OS page cache intact, so this proves ack-after-commit and (SQLite) WAL crash
recovery; SQLite's power-loss durability rests on ``synchronous=FULL``, asserted in the unit
tests, PostgreSQL's on its own WAL (``fsync`` and ``synchronous_commit`` are left on).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

from ..support.stores import StoreBackend

ROOT = Path(__file__).resolve().parents[2]
RUN_FOR = 1.5
STARTUP_TIMEOUT = 30.0

CHILD = r"""
import asyncio
import logging
import sys

import structlog

from nexus.api.auth import new_api_key
from nexus.api.store import open_store

# Logs go to stdout by default; keep it for acknowledgements only.
structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


async def users(store, tag):
    i = 0
    while True:
        user = await store.create_user(f"{tag}-{i}@Example.com", "User", "$2b$04$notahash")
        print("ACK user", user.id, flush=True)
        i += 1


async def keys(store, tag):
    owner = await store.create_user(f"{tag}-owner@example.com", "Owner", "$2b$04$notahash")
    tenant = await store.create_tenant(owner.id, "Acme", "small")
    print("ACK tenant", tenant.id, flush=True)
    while True:
        _, key_hash = new_api_key()
        await store.create_api_key(tenant.id, key_hash, "k")
        print("ACK key", key_hash, flush=True)


async def main():
    store = await open_store(sys.argv[1])
    await asyncio.gather(users(store, sys.argv[2]), keys(store, sys.argv[2]))


asyncio.run(main())
"""


async def spawn(db: str, tag: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        db,
        tag,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )


async def collect(proc: asyncio.subprocess.Process) -> list[tuple[str, str]]:
    """Acks for RUN_FOR seconds after the first one, then SIGKILL, then what was buffered."""
    assert proc.stdout is not None
    acked: list[tuple[str, str]] = []

    def take(line: bytes) -> None:
        # A line cut short by the kill has no newline and was never fully acknowledged.
        if line.startswith(b"ACK ") and line.endswith(b"\n"):
            _, kind, value = line.decode().split()
            acked.append((kind, value))

    until = time.monotonic() + STARTUP_TIMEOUT
    try:
        while (remaining := until - time.monotonic()) > 0:
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), remaining)
            except TimeoutError:
                break
            if not line:
                break  # the child died on its own: stderr will say why
            if not acked:
                until = time.monotonic() + RUN_FOR
            take(line)
    finally:
        if proc.returncode is None:
            proc.kill()
    rest = await proc.stdout.read()
    for line in rest.splitlines(keepends=True):
        take(line)
    await proc.wait()
    return acked


async def test_acknowledged_writes_survive_sigkill(backend: StoreBackend) -> None:
    # Create the schema first so both children start writing at once rather than migrating.
    await (await backend.open()).close()
    procs = [await spawn(backend.location, tag) for tag in ("a", "b")]
    try:
        results = await asyncio.gather(*(collect(p) for p in procs))
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    for proc in procs:
        assert proc.returncode == -signal.SIGKILL, await _stderr(proc)
    acked = [entry for result in results for entry in result]
    # The last acknowledgements were the closest to the kill: the likeliest to be lost.
    last_keys = [h for result in results for h in [v for k, v in result if k == "key"][-3:]]
    users = [v for k, v in acked if k == "user"]
    keys = [v for k, v in acked if k == "key"]
    tenants = [v for k, v in acked if k == "tenant"]
    assert len(tenants) == 2
    assert len(users) > 20 and len(keys) > 20, (len(users), len(keys))

    store = await backend.open()
    try:
        for user_id in users:
            assert await store.get_user(user_id) is not None, user_id
        live_keys: set[str] = set()
        for tenant_id in tenants:
            assert await store.get_tenant(tenant_id) is not None, tenant_id
            live_keys.update(k.hash for k in await store.list_api_keys(tenant_id))
        assert set(keys) <= live_keys
        for key_hash in last_keys:
            assert await store.lookup_api_key(key_hash) is not None, key_hash
        # The store still works after recovery.
        await store.create_user("after@example.com", "After", "h")
    finally:
        await store.close()

    if not backend.is_postgres:
        conn = sqlite3.connect(backend.path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        finally:
            conn.close()
    orphans = backend.rows(
        "SELECT COUNT(*) FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id"
        " WHERE t.id IS NULL"
    )
    assert orphans == [(0,)]
    stored_users = int(str(backend.rows("SELECT COUNT(*) FROM users")[0][0]))
    # Commits not yet printed when the kill came may exist too; never fewer.
    assert stored_users >= len(users) + len(tenants) + 1


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    return (await proc.stderr.read()).decode(errors="replace")
