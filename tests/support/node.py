"""A real astromesh node (the PyPI runtime under uvicorn) on a loopback port, for tests.

The launcher is the one `make dev` uses (:class:`nexus.dev.DevNode`); tests add a private
folder per node and a view of the node's agents.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import aiohttp

from nexus.dev import DevNode
from nexus.runtime.envtest import free_port


class AstromeshNode(DevNode):
    """Start/stop/restart a node on a fixed port, with an empty config dir (no demo agents)."""

    def __init__(self, port: int | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="nexus-node-"))
        super().__init__(port or free_port(), self._dir / "config")

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
