"""The REST contract end to end: curl against `nexus manager` (real apiserver, real node)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from ..conftest import ROOT
from ..support.manager import ManagerProcess

pytestmark = pytest.mark.cluster


async def test_curl_walkthrough(manager: ManagerProcess) -> None:
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "hack" / "walkthrough.sh"),
        env={**os.environ, "NEXUS_URL": manager.url, "WALKTHROUGH_TIMEOUT": "60"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    text = out.decode()
    assert proc.returncode == 0, text + manager.log_tail()
    assert "walkthrough passed" in text


async def test_openapi_and_health(manager: ManagerProcess) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{manager.url}/openapi.json") as r:
            doc = await r.json()
        assert doc["openapi"].startswith("3.1")
        assert "/api/v1/agents/{name}/status" in doc["paths"]
        async with s.get(f"{manager.url}/healthz") as r:
            assert await r.json() == {"status": "ok"}
        async with s.get(f"{manager.url}/readyz") as r:
            body = await r.json()
        assert body["status"] == "ready" and body["checks"] == {"database": "ok", "caches": "ok"}
        async with s.get(f"{manager.url}/nope") as r:
            assert r.status == 404 and await r.json() == {"error": "not found"}


def test_manager_refuses_a_weak_jwt_secret(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "nexus.cli", "manager", "--jwt-secret=short",
         f"--database={tmp_path / 'x.db'}", "--kubeconfig=/nonexistent"],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert "at least 32 bytes" in out.stderr
