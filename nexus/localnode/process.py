"""One node process: a command in its own session, stopped within a grace period.

This is the "container runtime" of the local node agent: a container is a child process of
the agent, started with ``asyncio.create_subprocess_exec`` (never blocking the event loop),
in a process group of its own so that a stop reaches everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger("nexus.localnode.process")

#: The ASGI app of the astromesh runtime (the PyPI package), served by uvicorn.
ASTROMESH_APP = "astromesh.api.main:app"
#: The environment variable that tells the astromesh runtime where its config (agents) lives.
CONFIG_DIR_ENV = "ASTROMESH_CONFIG_DIR"


def astromesh_command(
    host: str, port: int, *, python: str = sys.executable, log_level: str = "warning"
) -> list[str]:
    """The command line of one astromesh node listening on ``host:port``."""
    return [
        python, "-m", "uvicorn", ASTROMESH_APP,
        "--host", host, "--port", str(port), "--log-level", log_level,
    ]  # fmt: skip


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a node must not outlive the agent that runs it, even when the agent
    # is killed with SIGKILL (no chance to stop its children).
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)


class NodeProcess:
    """A child process with its output appended to a log file.

    Guarantees: :meth:`start` returns once the process exists (it does not wait for it to
    serve); :meth:`stop` sends SIGTERM to the whole process group, SIGKILL after ``grace``
    seconds, and returns only once the process has been reaped; it is idempotent. On Linux the
    process is killed if the agent dies. Nothing here blocks the event loop beyond opening the
    log file.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None,
        log_path: Path,
    ) -> None:
        self.argv = list(argv)
        self.env = dict(env)
        self.cwd = cwd
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self.started_at: float | None = None  # time.time() of the start

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> int:
        """Spawn the process; returns its pid. Raises ``OSError`` if it cannot be executed."""
        if self._proc is not None:
            raise RuntimeError("a NodeProcess is started once")
        with self.log_path.open("ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} start\n".encode())
            logf.flush()
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.started_at = time.time()
        log.debug("localnode.process.started", pid=self._proc.pid, argv=self.argv[:6])
        return self._proc.pid

    async def wait(self) -> int:
        """The exit code, once the process has exited (negative: killed by that signal)."""
        if self._proc is None:
            raise RuntimeError("not started")
        return await self._proc.wait()

    def signal_group(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group (no-op once the process has exited)."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, sig)

    async def stop(self, grace: float) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            self.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._proc.wait()), max(grace, 0.0))
            except TimeoutError:
                log.info("localnode.process.kill", pid=self._proc.pid, grace=grace)
                self.signal_group(signal.SIGKILL)
        return await self._proc.wait()
