"""A real PostgreSQL server for the tests: Debian's binaries, a temp dir, a free loopback port.

``initdb`` refuses to run as root, so under root the data directory belongs to the
``postgres`` system user (created by Debian's package; ``nobody`` otherwise) and the server
runs as that user. The server listens on 127.0.0.1 only, with password (SCRAM) authentication,
so the URLs the tests hand to Nexus look like the ones a Secret would hold.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg

from nexus.runtime.envtest import free_port

__all__ = ["PostgresServer", "find_bindir"]

SUPERUSER = "nexus"


def find_bindir() -> Path | None:
    """The folder of ``initdb``/``pg_ctl`` (newest Debian major first), or None if absent."""
    for pattern in ("/usr/lib/postgresql/*/bin",):
        found = sorted(
            (Path(p) for p in glob.glob(pattern) if (Path(p) / "initdb").is_file()),
            key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True,
        )
        if found:
            return found[0]
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    return None


def _run_as() -> pwd.struct_passwd | None:
    """The account to run the server as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


class PostgresServer:
    """One ``postgres`` process on ``127.0.0.1:<free port>`` with a throwaway data directory."""

    def __init__(self, bindir: Path, *, max_connections: int = 300) -> None:
        self.bindir = bindir
        self.max_connections = max_connections
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        # Not under pytest's tmp dirs: those are 0700 root-owned, and the server may not be root.
        self.root = Path(tempfile.mkdtemp(prefix="nexus-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._user = _run_as()

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        return subprocess.run(
            args, check=check, capture_output=True, text=True, cwd=self.root, timeout=120,
            **kwargs,
        )  # fmt: skip

    def start(self) -> None:
        self._chown(self.root)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        self.log.touch()
        self._chown(self.log)
        try:
            self._run(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
                "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions",
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"initdb failed: {exc.stderr or exc.stdout}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                f"-c max_connections={self.max_connections}",
                # Small, and no background noise competing with the suites that share the CPUs.
                "-c shared_buffers=32MB",
                "-c autovacuum=off",
                "-c log_min_messages=warning",
            ]
        )
        started = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", "start", check=False,
        )  # fmt: skip
        if started.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {started.stderr}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.data.exists():
            self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop",
                check=False,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
