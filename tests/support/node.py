"""A real astromesh node (the PyPI runtime under uvicorn) on a loopback port, for tests.

The launcher is the local node agent's (:class:`nexus.localnode.process.NodeProcess`), the
one every node of ``make dev`` runs under; tests add a private folder per node, a fixed port
across restarts and a view of the node's agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from nexus.localnode.process import CONFIG_DIR_ENV, NodeProcess, astromesh_command
from nexus.runtime.envtest import free_port

#: Time the node may take to answer /v1/health after it was started (s); generous because the
#: machine is shared with other test suites.
NODE_START_TIMEOUT = 90.0
#: Time the node is given to exit after SIGTERM before it is killed (s).
NODE_STOP_TIMEOUT = 10.0


class AstromeshNode:
    """Start/stop/restart a node on a fixed port; its config dir starts empty (no demo agents)
    and is kept across restarts of this object."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="nexus-node-"))
        self.host = host
        self.port = port or free_port()
        self.config_dir = self._dir / "config"
        self.log_path = self._dir / "node.log"
        self.proc: NodeProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.running else None

    async def start(self) -> None:
        """Spawn the node and return once it answers ``/v1/health``."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        proc = self.proc = NodeProcess(
            astromesh_command(self.host, self.port),
            env={**os.environ, CONFIG_DIR_ENV: str(self.config_dir)},
            cwd=self._dir,
            log_path=self.log_path,
        )
        await proc.start()
        deadline = time.monotonic() + NODE_START_TIMEOUT
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            while time.monotonic() < deadline:
                if not proc.running:
                    raise RuntimeError(f"the astromesh node exited: {self.log_tail()}")
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with s.get(f"{self.url}/v1/health") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        await proc.stop(NODE_STOP_TIMEOUT)
        raise RuntimeError(f"the astromesh node did not become healthy: {self.log_tail()}")

    async def stop(self) -> None:
        """SIGTERM to the node's process group, SIGKILL after the grace period; idempotent."""
        if self.proc is not None:
            await self.proc.stop(NODE_STOP_TIMEOUT)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def agents(self) -> dict[str, str]:
        """name -> status on the node."""
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/v1/agents") as r:
            body = await r.json()
        return {a["name"]: a["status"] for a in body["agents"]}
