"""A real astromesh node (the PyPI runtime under uvicorn) on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from nexus.runtime.envtest import free_port


class AstromeshNode:
    """Start/stop/restart a node on a fixed port, with an empty config dir (no demo agents)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="nexus-node-"))
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 60.0) -> None:
        env = {**os.environ, "ASTROMESH_CONFIG_DIR": str(self._dir)}
        log = (self._dir / "node.log").open("ab")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "astromesh.api.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"astromesh node exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{self.url}/v1/health") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"astromesh node not healthy after {timeout}s: {self.log_tail()}")

    async def stop(self) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()

    def log_tail(self) -> str:
        try:
            return (self._dir / "node.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def agents(self) -> dict[str, str]:
        """name -> status on the node."""
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/v1/agents") as r:
            body = await r.json()
        return {a["name"]: a["status"] for a in body["agents"]}
