"""`nexus manager` as a real subprocess (killed for real in the tests that need it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import aiohttp

from nexus.runtime.envtest import free_port


class ManagerProcess:
    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        node_url: str,
        extra: list[str] | None = None,
        jwt_secret: str | None = None,
        database: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.node_url = node_url
        self.extra = extra or []
        self.jwt_secret = jwt_secret or secrets.token_urlsafe(48)
        self.api_port = free_port()
        self.probe_port = free_port()
        self.metrics_port = free_port()
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / "manager.log"
        #: ``--database``: a SQLite file in ``workdir`` unless a PostgreSQL URL is given.
        self.database = database or str(workdir / "nexus.db")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def args(self) -> list[str]:
        return [
            sys.executable, "-m", "nexus.cli", "manager",
            f"--kubeconfig={self.kubeconfig}",
            f"--api-bind-address=127.0.0.1:{self.api_port}",
            f"--health-probe-bind-address=127.0.0.1:{self.probe_port}",
            f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
            f"--database={self.database}",
            f"--node-endpoint={self.node_url}",
            # One node process for all tenants and no kubelet: Ready when the objects exist
            # (``extra`` may say --wait-for-node; the last flag wins).
            "--no-wait-for-node",
            "--node-image=astromesh/node:test",
            "--error-requeue=1",
            # Off unless a test asks (several managers run at once; :9443 is shared).
            *([] if any(a.startswith("--webhook-bind-address") for a in self.extra)
              else ["--webhook-bind-address=0"]),
            *self.extra,
        ]  # fmt: skip

    async def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "NEXUS_JWT_SECRET": self.jwt_secret}
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"nexus manager exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"nexus manager not ready after {timeout}s: {self.log_tail()}")

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 35.0) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else 0
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return await self.proc.wait()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
