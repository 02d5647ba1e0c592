"""The tenant-user CLI as a subprocess against a real `nexus manager` (real apiserver and node)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..support.manager import ManagerProcess

pytestmark = pytest.mark.cluster

AGENT = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {{name: cli-bot, version: "{version}"}}
spec:
  identity: {{display_name: "{display}"}}
  model:
    primary: {{provider: {provider}, model: "llama3.1:8b"}}
  orchestration: {{pattern: react}}
"""


@dataclass
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return (
            f"nexus {' '.join(self.args)} -> {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"
        )

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``python -m nexus.cli ... --config-dir <tmp>`` with a clean NEXUS_* environment."""

    def __init__(self, config_dir: Path, manager: ManagerProcess) -> None:
        self.config_dir = config_dir
        self.manager = manager
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NEXUS_")}

    async def __call__(self, *args: str, stdin: bytes | None = None, timeout: float = 200) -> Run:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "nexus.cli",
            *args,
            "--config-dir",
            str(self.config_dir),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        assert proc.returncode is not None
        return Run(args, proc.returncode, out.decode(), err.decode())

    async def ok(self, *args: str, stdin: bytes | None = None, timeout: float = 200) -> Run:
        run = await self(*args, stdin=stdin, timeout=timeout)
        assert run.code == 0, f"{run}\nmanager log:\n{self.manager.log_tail()}"
        return run


async def test_cli_walkthrough(manager: ManagerProcess, tmp_path: Path) -> None:
    cfg = tmp_path / "config" / "nexus"
    nexus = Cli(cfg, manager)
    email = f"cli-{uuid.uuid4().hex[:10]}@example.com"

    # register (password on stdin); the session is stored 0600 in a 0700 directory
    run = await nexus.ok(
        "register",
        "--server",
        manager.url,
        "--email",
        email,
        "--display-name",
        "CLI User",
        "--password-stdin",
        stdin=b"correct-horse-battery\n",
    )
    assert f"Registered {email}" in run.out
    creds_path = cfg / "credentials.json"
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o700
    assert json.loads(creds_path.read_text())["server"] == manager.url

    # login again (the stored server is used from now on: no --server below)
    run = await nexus.ok(
        "login", "--email", email, "--password-stdin", stdin=b"correct-horse-battery\n"
    )
    assert f"Logged in to {manager.url} as {email}." in run.out

    # a wrong password is a clean error
    run = await nexus("login", "--email", email, "--password-stdin", stdin=b"wrong-password\n")
    assert run.code == 1 and run.err.startswith("error: "), run

    # tenant
    tenant = (
        await nexus.ok("tenants", "create", "--display-name", "CLI Tenant", "-o", "json")
    ).json()
    tenant_id = tenant["id"]
    assert tenant_id.startswith("t_")
    await nexus.ok("use", tenant_id)
    assert json.loads(creds_path.read_text())["tenant"] == tenant_id

    deadline = time.monotonic() + 90
    phase = None
    while time.monotonic() < deadline:
        phase = (await nexus.ok("tenants", "get", tenant_id, "-o", "json")).json()["phase"]
        if phase == "Ready":
            break
        await asyncio.sleep(1)
    assert phase == "Ready", manager.log_tail()
    run = await nexus.ok("tenants", "list")
    assert "\x1b" not in run.out  # a pipe: plain text, no colours
    table = run.out.splitlines()
    # a NODE column follows once the server reports node availability
    assert table[0].split()[:5] == ["ID", "NAME", "PHASE", "NAMESPACE", "AGENTS"]
    assert table[0].split()[5:] in ([], ["NODE"])
    assert any(line.startswith(tenant_id) and "Ready" in line for line in table[1:])

    # API key: the raw key alone on stdout
    key = (await nexus.ok("keys", "create", "--label", "cli")).out.strip()
    assert key.startswith("nxk_")
    keys = (await nexus.ok("keys", "list", "-o", "json")).json()
    assert [k["label"] for k in keys] == ["cli"]

    # apply --wait: created, Running with nodeAck
    sample = tmp_path / "sample.yaml"
    sample.write_text(AGENT.format(version="1.0.0", display="Support Bot", provider="ollama"))
    run = await nexus.ok("agents", "apply", "-f", str(sample), "--wait", "--timeout", "120")
    assert "agent cli-bot created" in run.out
    assert "agent cli-bot is Running (nodeAck)" in run.out
    assert "cli-bot Running (nodeAck)" in run.err  # not a TTY: one line per phase change
    assert "\x1b" not in run.err and "\r" not in run.err  # ... and no live spinner

    agents = (await nexus.ok("agents", "list", "-o", "json")).json()
    (bot,) = [a for a in agents if a["name"] == "cli-bot"]
    assert bot["phase"] == "Running" and bot["nodeAck"] is True
    table = (await nexus.ok("agents", "list")).out.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "NODEACK", "LAST", "SYNCED", "AGE"]
    assert table[1].split()[:3] == ["cli-bot", "Running", "true"]

    status = (await nexus.ok("agents", "status", "cli-bot", "-o", "json")).json()
    assert status["phase"] == "Running" and status["node"]["status"] == "deployed", status
    run = await nexus.ok("agents", "status", "cli-bot")
    assert "Node status:" in run.out and "deployed" in run.out
    await nexus.ok("agents", "logs", "cli-bot", "--lines", "20")

    # the API key works instead of the session
    agents = (await nexus.ok("agents", "list", "--api-key", key, "-o", "json")).json()
    assert [a["name"] for a in agents] == ["cli-bot"]

    # apply again with a changed spec: PUT, and --wait waits for the new generation
    sample.write_text(AGENT.format(version="1.0.1", display="Support Bot v2", provider="ollama"))
    run = await nexus.ok("agents", "apply", "-f", str(sample), "--wait", "--timeout", "120")
    assert "agent cli-bot configured" in run.out
    assert "is Running (nodeAck)" in run.out
    detail = (await nexus.ok("agents", "get", "cli-bot", "-o", "json")).json()
    assert detail["version"] == "1.0.1"
    assert detail["spec"]["spec"]["identity"]["display_name"] == "Support Bot v2"
    assert detail["status"]["phase"] == "Running" and detail["status"]["nodeAck"] is True
    run = await nexus.ok("agents", "apply", "-f", str(sample))
    assert "agent cli-bot unchanged" in run.out

    # an invalid spec: exit 1 with every server error on stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(AGENT.format(version="1.0.0", display="Bad", provider="nope"))
    run = await nexus("agents", "apply", "-f", str(bad))
    assert run.code == 1, run
    assert run.err.startswith("error: ")
    assert "spec.model.primary.provider must be one of" in run.err, run
    # and a file that is not YAML never reaches the server
    (tmp_path / "broken.yaml").write_text("metadata: {name: [\n")
    run = await nexus("agents", "apply", "-f", str(tmp_path / "broken.yaml"))
    assert run.code == 1 and "is not valid YAML" in run.err, run

    # an access token the server rejects is refreshed once and the new pair saved (0600)
    data = json.loads(creds_path.read_text())
    old_refresh = data["refreshToken"]
    data["accessToken"] = "not-a-valid-jwt"
    creds_path.write_text(json.dumps(data))
    await nexus.ok("agents", "get", "cli-bot")
    data = json.loads(creds_path.read_text())
    assert data["accessToken"] != "not-a-valid-jwt" and data["refreshToken"] != old_refresh
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    # ... and a session that cannot be refreshed asks for a new login
    data.update(accessToken="not-a-valid-jwt", refreshToken=old_refresh)  # rotated: reuse
    creds_path.write_text(json.dumps(data))
    run = await nexus("agents", "list")
    assert run.code == 1 and "nexus login" in run.err, run
    await nexus.ok("login", "--email", email, "--password-stdin", stdin=b"correct-horse-battery\n")
    # logging in again kept the current tenant
    assert json.loads(creds_path.read_text())["tenant"] == tenant_id

    # delete the agent, then the tenant
    run = await nexus.ok("agents", "delete", "cli-bot")
    assert "agent cli-bot deleted" in run.out
    deadline = time.monotonic() + 30  # the API reads through the watch cache
    while time.monotonic() < deadline:
        run = await nexus("agents", "get", "cli-bot")
        if run.code == 1:
            break
        await asyncio.sleep(0.5)
    assert run.code == 1 and "not found" in run.err, run
    agents = (await nexus.ok("agents", "list", "-o", "json")).json()
    assert "cli-bot" not in [a["name"] for a in agents]

    await nexus.ok("tenants", "delete", tenant_id)
    assert json.loads(creds_path.read_text())["tenant"] is None
    run = await nexus.ok("logout")
    assert not creds_path.exists()


async def test_cli_unreachable_server(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nexus.cli",
        "login",
        "--server",
        "http://127.0.0.1:1",
        "--email",
        "a@example.com",
        "--password-stdin",
        "--config-dir",
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(b"whatever-password\n"), 60)
    assert proc.returncode == 1
    assert err.decode().strip() == "error: cannot reach Nexus at http://127.0.0.1:1"
