"""The tenant-user CLI (`nexus login|tenants|keys|agents ...`) against an in-process fake API."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from rich.console import Console

from nexus import cli
from nexus.client_cli import agents, progress, render, terminal
from nexus.client_cli.config import Credentials, CredentialStore, default_config_dir

Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeNexus:
    """Routes are ``(METHOD, path) -> fn(Seen) -> (status, json[, headers])``; runs in a thread."""

    routes: dict[tuple[str, str], Callable[[Seen], Reply]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def on(self, method: str, path: str, fn: Callable[[Seen], Reply]) -> None:
        self.routes[(method, path)] = fn

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            await request.read(),
        )
        self.seen.append(seen)
        fn = self.routes.get((request.method, request.path))
        if fn is None:
            return web.json_response({"error": "not found"}, status=404)
        reply = fn(seen)
        status, body = reply[0], reply[1]
        headers = reply[2] if len(reply) == 3 else None
        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def fake() -> Iterator[FakeNexus]:
    f = FakeNexus()
    f.start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("NEXUS_SERVER", "NEXUS_API_KEY", "NEXUS_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(agents, "POLL_INTERVAL", 0.02)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def nexus(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Callable[..., Result]:
    def run(*argv: str) -> Result:
        code = cli.main([*argv, "--config-dir", str(tmp_path / "cfg")])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def nexus_tty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """Like ``nexus``, with stdout and stderr that are (fake) terminals."""
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.delenv("NO_COLOR", raising=False)

    def run(*argv: str) -> Result:
        out, err = TtyIO(), TtyIO()
        monkeypatch.setattr("sys.stdout", out)
        monkeypatch.setattr("sys.stderr", err)
        code = cli.main([*argv, "--config-dir", str(tmp_path / "cfg")])
        return Result(code, out.getvalue(), err.getvalue())

    return run


def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "cfg")


def logged_in(tmp_path: Path, server: str, *, tenant: str | None = "t_1") -> Credentials:
    creds = Credentials(server, "at_old", "rt_old", {"id": "usr_1", "email": "a@b.io"}, tenant)
    store(tmp_path).save(creds)
    return creds


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


class TtyIO(io.StringIO):
    """A captured stream that says it is a terminal."""

    encoding = "utf-8"

    def isatty(self) -> bool:
        return True


def tty_console(buf: io.StringIO, width: int = 80) -> Console:
    return Console(
        file=buf,
        force_terminal=True,
        force_interactive=True,
        color_system="standard",
        width=width,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


BUNDLE = {
    "accessToken": "at_1",
    "refreshToken": "rt_1",
    "user": {"id": "usr_1", "email": "a@b.io", "displayName": "A"},
}
AGENT_YAML = """\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: bot, version: "1.0.0"}
spec:
  model:
    primary: {provider: ollama, model: "llama3.1:8b"}
"""


def agent_detail(
    phase: str, ack: bool = False, message: str = "", gen: int = 1, reason: str = "R"
) -> dict[str, Any]:
    cond = {
        "type": "Ready",
        "status": "True" if phase == "Running" else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": gen,
    }
    return {
        "name": "bot",
        "namespace": "tenant-t-1",
        "version": "1.0.0",
        "spec": {},
        "status": {"phase": phase, "nodeAck": ack, "lastSyncedAt": None, "conditions": [cond]},
        "createdAt": "2024-01-01T00:00:00Z",
    }


# -- credentials ---------------------------------------------------------------------------------


def test_login_stores_credentials_0600_in_a_0700_dir(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    fake.on("POST", "/auth/login", lambda s: (200, BUNDLE))
    old = os.umask(0)  # the modes must not depend on the umask
    try:
        r = nexus("login", "--server", fake.url, "--email", "a@b.io", "--password", "pw-123456")
    finally:
        os.umask(old)
    assert r.code == 0, r.err
    assert f"Logged in to {fake.url} as a@b.io" in r.out
    path = tmp_path / "cfg" / "credentials.json"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    data = json.loads(path.read_text())
    assert data["server"] == fake.url
    assert (data["accessToken"], data["refreshToken"]) == ("at_1", "rt_1")
    assert data["user"]["id"] == "usr_1"
    assert json.loads(fake.calls("POST", "/auth/login")[0].body) == {
        "email": "a@b.io",
        "password": "pw-123456",
    }
    # no leftover temporary files
    assert sorted(p.name for p in path.parent.iterdir()) == ["credentials.json"]


def test_register_with_password_stdin(
    fake: FakeNexus,
    nexus: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.on("POST", "/auth/register", lambda s: (201, BUNDLE))
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret-password\n"))
    r = nexus(
        "register",
        "--server",
        fake.url,
        "--email",
        "a@b.io",
        "--display-name",
        "A",
        "--password-stdin",
    )
    assert r.code == 0, r.err
    body = json.loads(fake.calls("POST", "/auth/register")[0].body)
    assert body == {"email": "a@b.io", "password": "s3cret-password", "displayName": "A"}
    assert mode(tmp_path / "cfg" / "credentials.json") == 0o600


def test_save_replaces_a_too_open_file_with_a_0600_one(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir(mode=0o700)
    path = tmp_path / "cfg" / "credentials.json"
    path.write_text("{}")
    path.chmod(0o644)
    store(tmp_path).save(Credentials("http://x", "a", "r"))
    assert mode(path) == 0o600
    loaded = store(tmp_path).load()
    assert loaded is not None and loaded.access_token == "a"


def test_corrupt_credentials_are_a_clear_error(
    nexus: Callable[..., Result], tmp_path: Path
) -> None:
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "credentials.json").write_text("{not json")
    r = nexus("tenants", "list")
    assert r.code == 1
    assert "is corrupt" in r.err and "nexus login" in r.err


def test_logout_deletes_the_file(nexus: Callable[..., Result], tmp_path: Path) -> None:
    logged_in(tmp_path, "http://127.0.0.1:1")
    r = nexus("logout")
    assert r.code == 0 and "Logged out." in r.out
    assert not (tmp_path / "cfg" / "credentials.json").exists()
    assert nexus("logout").out.strip() == "Not logged in."


def test_default_config_dir() -> None:
    assert default_config_dir({"NEXUS_CONFIG_DIR": "/a/b"}) == Path("/a/b")
    assert default_config_dir({"XDG_CONFIG_HOME": "/x"}) == Path("/x/nexus")
    assert default_config_dir({"XDG_CONFIG_HOME": "rel"}) == Path.home() / ".config" / "nexus"
    assert default_config_dir({}) == Path.home() / ".config" / "nexus"


def test_a_session_is_never_sent_to_another_server(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, "http://other.example:8080")
    r = nexus("agents", "list", "--server", fake.url)
    assert r.code == 1
    assert f"not logged in to {fake.url}" in r.err
    assert fake.seen == []


# -- refresh on 401 ------------------------------------------------------------------------------


def test_401_refreshes_once_saves_the_new_pair_and_retries(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)

    def agents(s: Seen) -> Reply:
        if s.headers.get("Authorization") != "Bearer at_new":
            return 401, {"error": "token expired"}
        return 200, [{"name": "bot", "phase": "Running", "nodeAck": True}]

    def refresh(s: Seen) -> Reply:
        assert json.loads(s.body) == {"refreshToken": "rt_old"}
        return 200, {"accessToken": "at_new", "refreshToken": "rt_new"}

    fake.on("GET", "/api/v1/agents", agents)
    fake.on("POST", "/auth/refresh", refresh)
    r = nexus("agents", "list", "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == [{"name": "bot", "phase": "Running", "nodeAck": True}]
    assert [(s.method, s.path) for s in fake.seen] == [
        ("GET", "/api/v1/agents"),
        ("POST", "/auth/refresh"),
        ("GET", "/api/v1/agents"),
    ]
    assert all(s.headers.get("X-Tenant-ID") == "t_1" for s in fake.calls("GET", "/api/v1/agents"))
    path = tmp_path / "cfg" / "credentials.json"
    saved = json.loads(path.read_text())
    assert (saved["accessToken"], saved["refreshToken"]) == ("at_new", "rt_new")
    assert saved["tenant"] == "t_1"
    assert mode(path) == 0o600

    # the next command uses the saved token straight away
    fake.seen.clear()
    assert nexus("agents", "list").code == 0
    assert [(s.method, s.path) for s in fake.seen] == [("GET", "/api/v1/agents")]


def test_failed_refresh_tells_the_user_to_log_in(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    fake.on("GET", "/api/v1/tenants", lambda s: (401, {"error": "token expired"}))
    fake.on("POST", "/auth/refresh", lambda s: (401, {"error": "refresh token expired"}))
    r = nexus("tenants", "list")
    assert r.code == 1
    assert "error: your session has expired" in r.err and "nexus login" in r.err
    assert len(fake.calls("POST", "/auth/refresh")) == 1
    assert len(fake.calls("GET", "/api/v1/tenants")) == 1
    saved = store(tmp_path).load()
    assert saved is not None and saved.refresh_token == "rt_old"


def test_refresh_happens_at_most_once(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    fake.on("GET", "/api/v1/tenants", lambda s: (401, {"error": "still no"}))
    fake.on("POST", "/auth/refresh", lambda s: (200, {"accessToken": "a2", "refreshToken": "r2"}))
    r = nexus("tenants", "list")
    assert r.code == 1
    assert "error: still no" in r.err
    assert len(fake.calls("POST", "/auth/refresh")) == 1
    assert len(fake.calls("GET", "/api/v1/tenants")) == 2


def test_api_key_is_sent_instead_of_the_session_and_never_refreshed(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logged_in(tmp_path, fake.url)
    fake.on("GET", "/api/v1/agents", lambda s: (401, {"error": "invalid API key"}))
    monkeypatch.setenv("NEXUS_API_KEY", "nxk_env")
    r = nexus("agents", "list")
    assert r.code == 1 and "error: invalid API key" in r.err
    (seen,) = fake.seen
    assert seen.headers["X-API-Key"] == "nxk_env"
    assert "Authorization" not in seen.headers and "X-Tenant-ID" not in seen.headers
    fake.seen.clear()
    nexus("agents", "list", "--api-key", "nxk_flag", "--tenant", "t_9")
    assert fake.seen[0].headers["X-API-Key"] == "nxk_flag"
    assert fake.seen[0].headers["X-Tenant-ID"] == "t_9"


# -- errors --------------------------------------------------------------------------------------


def test_connection_refused(nexus: Callable[..., Result]) -> None:
    r = nexus("login", "--server", "http://127.0.0.1:1", "--email", "a@b.io", "--password", "x")
    assert r.code == 1
    assert "error: cannot reach Nexus at http://127.0.0.1:1" in r.err


def test_no_tenant_selected(fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path) -> None:
    logged_in(tmp_path, fake.url, tenant=None)
    r = nexus("agents", "list")
    assert r.code == 1 and "nexus use" in r.err
    assert fake.seen == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("", "is empty"),
        ("metadata: [unclosed\n", "is not valid YAML"),
        ("- just\n- a list\n", "does not hold an agent"),
        ("a: 1\n---\nb: 2\n", "is not valid YAML"),
    ],
)
def test_bad_file_exits_1_without_calling_the_server(
    fake: FakeNexus,
    nexus: Callable[..., Result],
    tmp_path: Path,
    content: str | None,
    message: str,
) -> None:
    logged_in(tmp_path, fake.url)
    path = tmp_path / "agent.yaml"
    if content is not None:
        path.write_text(content)
    r = nexus("agents", "apply", "-f", str(path))
    assert r.code == 1
    assert r.err.startswith("error: ") and message in r.err, r.err
    assert fake.seen == []


def test_server_validation_errors_are_all_printed(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    errors = [
        "spec.model.primary.provider must be one of: ollama, openai, openai_compat, azure_openai",
        "spec.orchestration.pattern is required",
    ]
    fake.on("POST", "/api/v1/agents", lambda s: (400, {"errors": errors}))
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML)
    r = nexus("agents", "apply", "-f", str(path))
    assert r.code == 1
    lines = r.err.splitlines()
    assert lines[0].startswith("error: ")
    assert [ln.strip() for ln in lines[1:]] == errors
    (post,) = fake.seen
    assert post.headers["Content-Type"] == "application/yaml"
    assert post.body == AGENT_YAML.encode()


def test_non_json_server_error(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    fake.on("GET", "/api/v1/tenants", lambda s: (500, "Internal Server Error"))
    r = nexus("tenants", "list")
    assert r.code == 1 and "error: HTTP 500: Internal Server Error" in r.err


def test_retry_after_is_honoured(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    answers: Iterator[Reply] = iter(
        [(429, {"error": "rate limited"}, {"Retry-After": "0"}), (200, [])]
    )
    fake.on("GET", "/api/v1/tenants", lambda s: next(answers))
    r = nexus("tenants", "list")
    assert r.code == 0, r.err
    assert len(fake.calls("GET", "/api/v1/tenants")) == 2


# -- tenants, use, keys --------------------------------------------------------------------------


def test_use_checks_the_tenant_and_stores_it(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url, tenant=None)
    fake.on("GET", "/api/v1/tenants/t_2", lambda s: (200, {"id": "t_2", "displayName": "Two"}))
    r = nexus("use", "t_2")
    assert r.code == 0 and "Now using tenant t_2 (Two)." in r.out
    saved = store(tmp_path).load()
    assert saved is not None and saved.tenant == "t_2"
    assert nexus("use", "t_404").code == 1
    saved = store(tmp_path).load()
    assert saved is not None and saved.tenant == "t_2"

    fake.on("DELETE", "/api/v1/tenants/t_2", lambda s: (200, {"deleted": "t_2"}))
    assert nexus("tenants", "delete", "t_2").out.strip() == "tenant t_2 deleted"
    saved = store(tmp_path).load()
    assert saved is not None and saved.tenant is None


def test_tenants_create_and_list(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url, tenant=None)
    fake.on("POST", "/api/v1/tenants", lambda s: (201, {"id": "t_9", "phase": "Pending"}))
    fake.on(
        "GET",
        "/api/v1/tenants",
        lambda s: (
            200,
            [
                {
                    "id": "t_9",
                    "displayName": "Acme Corp",
                    "phase": "Ready",
                    "namespace": "tenant-t-9",
                    "agentCount": 2,
                }
            ],
        ),
    )
    r = nexus("tenants", "create", "--display-name", "Acme Corp")
    assert r.code == 0 and "tenant t_9 created" in r.out and "nexus use t_9" in r.err
    body = json.loads(fake.calls("POST", "/api/v1/tenants")[0].body)
    assert body == {"displayName": "Acme Corp", "nodeProfile": "full"}
    r = nexus("tenants", "list")
    assert r.out.splitlines() == [
        "ID    NAME        PHASE   NAMESPACE    AGENTS",
        "t_9   Acme Corp   Ready   tenant-t-9   2",
    ]


def test_keys_create_prints_the_raw_key_alone(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    fake.on(
        "POST",
        "/api/v1/tenants/t_1/keys",
        lambda s: (201, {"rawKey": "nxk_abc", "hash": "ff00", "label": "ci", "createdAt": "x"}),
    )
    r = nexus("keys", "create", "--label", "ci")
    assert r.code == 0
    assert r.out == "nxk_abc\n"
    assert "shown again" in r.err
    assert json.loads(fake.seen[0].body) == {"label": "ci"}
    fake.on("DELETE", "/api/v1/tenants/t_5/keys/ff00", lambda s: (200, {"revoked": "ff00"}))
    assert nexus("keys", "revoke", "ff00", "--tenant", "t_5").out == "key ff00 revoked\n"


# -- agents apply --------------------------------------------------------------------------------


def test_apply_creates_then_updates_with_put_on_409(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML)
    summary = {"name": "bot", "namespace": "tenant-t-1", "version": "1.0.0", "phase": "Pending"}
    fake.on("POST", "/api/v1/agents", lambda s: (201, summary))
    r = nexus("agents", "apply", "-f", str(path))
    assert r.code == 0 and r.out == "agent bot created\n"

    fake.on("POST", "/api/v1/agents", lambda s: (409, {"error": "agent bot already exists"}))
    fake.on("GET", "/api/v1/agents/bot", lambda s: (200, agent_detail("Running", True)))
    fake.on("PUT", "/api/v1/agents/bot", lambda s: (200, summary))
    r = nexus("agents", "apply", "-f", str(path))
    assert r.code == 0, r.err
    assert r.out == "agent bot configured\n"
    (put,) = fake.calls("PUT", "/api/v1/agents/bot")
    assert put.body == AGENT_YAML.encode() and put.headers["Content-Type"] == "application/yaml"


def test_apply_from_stdin(
    fake: FakeNexus,
    nexus: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    logged_in(tmp_path, fake.url)
    fake.on("POST", "/api/v1/agents", lambda s: (201, {"name": "bot", "phase": "Pending"}))

    class Stdin(io.StringIO):
        buffer = io.BytesIO(AGENT_YAML.encode())

    monkeypatch.setattr("sys.stdin", Stdin())
    r = nexus("agents", "apply", "-f", "-")
    assert r.code == 0, r.err
    assert fake.seen[0].body == AGENT_YAML.encode()


def _apply_wait(
    fake: FakeNexus,
    nexus: Callable[..., Result],
    tmp_path: Path,
    details: list[dict[str, Any]],
    *extra: str,
) -> Result:
    logged_in(tmp_path, fake.url)
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML)
    fake.on("POST", "/api/v1/agents", lambda s: (201, {"name": "bot", "phase": "Pending"}))
    it = iter(details)
    last = details[-1]
    fake.on("GET", "/api/v1/agents/bot", lambda s: (200, next(it, last)))
    return nexus("agents", "apply", "-f", str(path), "--wait", *extra)


def test_apply_wait_reports_each_phase_and_exits_0_on_running(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    r = _apply_wait(
        fake,
        nexus,
        tmp_path,
        [
            agent_detail("Pending", message="waiting for tenant"),
            agent_detail("Pending", message="waiting for tenant"),
            agent_detail("Deploying", message="deploying"),
            agent_detail("Running", False, "deployed"),
            agent_detail("Running", True, "deployed"),
        ],
    )
    assert r.code == 0, r.err
    phases = [ln.split("] ", 1)[1] for ln in r.err.splitlines()]
    assert phases == [
        "bot Pending: waiting for tenant",
        "bot Deploying: deploying",
        "bot Running: deployed",
        "bot Running (nodeAck): deployed",
    ]
    assert "\r" not in r.err  # not a terminal: plain lines
    assert r.out.splitlines()[0] == "agent bot created"
    assert r.out.splitlines()[1].startswith("agent bot is Running (nodeAck) after ")


def test_apply_wait_exits_1_on_failed_with_the_message(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    r = _apply_wait(
        fake,
        nexus,
        tmp_path,
        [
            agent_detail("Deploying"),
            agent_detail("Failed", message="node refused: bad model", reason="InvalidSpec"),
        ],
    )
    assert r.code == 1
    assert "error: agent bot failed (InvalidSpec): node refused: bad model" in r.err


def test_apply_wait_times_out_with_exit_1(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    r = _apply_wait(fake, nexus, tmp_path, [agent_detail("Deploying")], "--timeout", "0.3")
    assert r.code == 1
    assert "error: timed out" in r.err and "(phase Deploying)" in r.err


def test_apply_wait_after_an_update_ignores_the_old_status(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML)
    fake.on("POST", "/api/v1/agents", lambda s: (409, {"error": "agent bot already exists"}))
    fake.on("PUT", "/api/v1/agents/bot", lambda s: (200, {"name": "bot", "phase": "Running"}))
    details = iter(
        [
            agent_detail("Running", True, gen=3),  # read before the PUT
            agent_detail("Running", True, gen=3),  # still the old generation
            agent_detail("Running", True, gen=3),
            agent_detail("Deploying", gen=4),
            agent_detail("Running", True, gen=4),
        ]
    )
    fake.on("GET", "/api/v1/agents/bot", lambda s: (200, next(details)))
    r = nexus("agents", "apply", "-f", str(path), "--wait")
    assert r.code == 0, r.err
    assert "agent bot configured" in r.out
    assert len(fake.calls("GET", "/api/v1/agents/bot")) == 5
    assert "bot Deploying" in r.err


def test_apply_wait_json_keeps_stdout_a_single_document(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    r = _apply_wait(fake, nexus, tmp_path, [agent_detail("Running", True)], "-o", "json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == {"name": "bot", "phase": "Pending"}
    assert "is Running" in r.err


def test_progress_on_a_terminal_is_a_live_spinner_above_a_coloured_history() -> None:
    buf = io.StringIO()
    console = tty_console(buf)
    now = [100.0]
    with progress.Progress(console, "bot", clock=lambda: now[0]) as p:
        assert p.live
        p.update("Pending", False, "waiting for tenant")
        p.update("Pending", False, "waiting for tenant")  # no change: nothing new
        now[0] += 3
        p.update("Deploying", False, "deploying")
        now[0] += 2
        p.update("Running", True, "deployed")
    assert not p.live
    raw = buf.getvalue()
    assert "\x1b[33mPending\x1b[0m" in raw and "\x1b[32mRunning\x1b[0m" in raw  # coloured
    text = strip_ansi(raw)
    assert re.findall(r"\[\s*\d+s\] bot [^\r\n]*", text) == [
        "[   0s] bot Pending: waiting for tenant",
        "[   3s] bot Deploying: deploying",
        "[   5s] bot Running (nodeAck): deployed",
    ]
    # the live line: spinner, phase and time waited, redrawn in place ...
    assert re.search(r"[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏] bot  Deploying  3s  deploying\r", text)
    # ... with the cursor hidden meanwhile, and erased at the end (transient)
    assert raw.startswith("\x1b[?25l")
    tail = raw[raw.rindex("[   5s]") :]
    assert "\x1b[?25h" in tail and tail.endswith("\x1b[2K")


def test_progress_on_a_pipe_is_plain_lines_only() -> None:
    buf = io.StringIO()
    now = [0.0]
    with progress.Progress(terminal.console_for(buf), "bot", clock=lambda: now[0]) as p:
        assert not p.live
        p.update("Pending", False, "")
        now[0] = 130
        p.update("Running", True, "deployed")
    assert buf.getvalue() == "[   0s] bot Pending\n[2m10s] bot Running (nodeAck): deployed\n"


# -- other agent commands ------------------------------------------------------------------------


def test_agents_list_table_and_json(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    items = [
        {
            "name": "support-bot",
            "phase": "Running",
            "nodeAck": True,
            "lastSyncedAt": "2000-01-01T00:00:00Z",
            "createdAt": "2000-01-01T00:00:00Z",
        }
    ]
    fake.on("GET", "/api/v1/agents", lambda s: (200, items))
    r = nexus("agents", "list")
    header, row = r.out.splitlines()
    assert header.split() == ["NAME", "PHASE", "NODEACK", "LAST", "SYNCED", "AGE"]
    assert row.split()[:3] == ["support-bot", "Running", "true"]
    assert row.split()[3].endswith("y")
    assert json.loads(nexus("agents", "list", "-o", "json").out) == items
    fake.on("GET", "/api/v1/agents", lambda s: (200, []))
    r = nexus("agents", "list")
    assert r.out == "" and "No agents found in tenant t_1." in r.err


def test_agents_status_logs_delete(
    fake: FakeNexus, nexus: Callable[..., Result], tmp_path: Path
) -> None:
    logged_in(tmp_path, fake.url)
    fake.on(
        "GET",
        "/api/v1/agents/bot/status",
        lambda s: (
            200,
            {
                "name": "bot",
                "phase": "Running",
                "nodeAck": True,
                "lastSyncedAt": None,
                "node": {"name": "bot", "status": "deployed"},
            },
        ),
    )
    r = nexus("agents", "status", "bot")
    assert r.code == 0
    assert "Phase:        Running" in r.out and "Node status:  deployed" in r.out
    fake.on(
        "GET",
        "/api/v1/agents/bot/logs",
        lambda s: (
            200,
            {"agent": "bot", "lines": [{"timestamp": "t1", "level": "info", "message": "hi"}]},
        ),
    )
    r = nexus("agents", "logs", "bot", "--lines", "5")
    assert r.out == "t1  INFO     hi\n"
    assert fake.calls("GET", "/api/v1/agents/bot/logs")[0].query == {"lines": "5"}
    fake.on("DELETE", "/api/v1/agents/bot", lambda s: (200, {"deleted": "bot"}))
    assert nexus("agents", "delete", "bot").out == "agent bot deleted\n"
    r = nexus("agents", "get", "nope")
    assert r.code == 1 and r.err == "error: not found\n"


# -- rendering -----------------------------------------------------------------------------------


def test_tables_are_aligned() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    text = terminal.to_text(
        render.agents_table(
            [
                {
                    "name": "a",
                    "phase": "Running",
                    "nodeAck": True,
                    "lastSyncedAt": "2024-01-01T11:59:30Z",
                    "createdAt": "2023-12-30T09:00:00Z",
                },
                {
                    "name": "much-longer-name",
                    "phase": "Pending",
                    "nodeAck": False,
                    "lastSyncedAt": None,
                    "createdAt": "2024-01-01T11:55:00Z",
                },
            ],
            now,
        )
    )
    assert text.splitlines() == [
        "NAME               PHASE     NODEACK   LAST SYNCED   AGE",
        "a                  Running   true      30s           2d3h",
        "much-longer-name   Pending   false     <none>        5m",
    ]
    tenants = render.tenants_table([{"id": "t_1", "displayName": "X", "phase": "Pending"}])
    assert terminal.to_text(tenants) == (
        "ID    NAME   PHASE     NAMESPACE   AGENTS\nt_1   X      Pending   <none>      0"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (100 * 86400, "100d"),
        (3 * 365 * 86400 + 5 * 86400, "3y5d"),
        (10 * 365 * 86400, "10y"),
    ],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert render.human_duration(seconds) == text


# -- terminals and pipes -------------------------------------------------------------------------

TENANTS = [
    {
        "id": "t_1",
        "displayName": "Acme Corp",
        "phase": "Ready",
        "namespace": "tenant-t-1",
        "agentCount": 2,
        "nodeAvailable": True,
    },
    {
        "id": "t_2",
        "displayName": "Beta",
        "phase": "Provisioning",
        "namespace": "tenant-t-2",
        "agentCount": 0,
        "conditions": [{"type": "NodeAvailable", "status": "False", "reason": "NodeStarting"}],
    },
    {"id": "t_3", "displayName": "Old server", "phase": "Ready", "namespace": "tenant-t-3"},
]
AGENTS = [
    {
        "name": "bot",
        "phase": "Running",
        "nodeAck": True,
        "lastSyncedAt": None,
        "createdAt": "2024-01-01T00:00:00Z",
    }
]
KEYS = [{"hash": "ff00", "label": "ci", "createdAt": "2024-01-01T00:00:00Z", "lastUsedAt": None}]
STATUS = {
    "name": "bot",
    "phase": "Running",
    "nodeAck": True,
    "lastSyncedAt": None,
    "node": {"name": "bot", "status": "deployed", "tools": ["a", "b"]},
}
LOGS = {"agent": "bot", "lines": [{"timestamp": "t1", "level": "error", "message": "[b]oom"}]}


def _serve_everything(fake: FakeNexus, tmp_path: Path) -> Path:
    logged_in(tmp_path, fake.url)
    fake.on("GET", "/api/v1/tenants", lambda s: (200, TENANTS))
    fake.on("GET", "/api/v1/agents", lambda s: (200, AGENTS))
    fake.on("GET", "/api/v1/tenants/t_1/keys", lambda s: (200, KEYS))
    fake.on("GET", "/api/v1/agents/bot/status", lambda s: (200, STATUS))
    fake.on("GET", "/api/v1/agents/bot/logs", lambda s: (200, LOGS))
    fake.on("POST", "/api/v1/agents", lambda s: (201, {"name": "bot", "phase": "Pending"}))
    details = iter([agent_detail("Pending"), agent_detail("Deploying")])
    last = agent_detail("Running", True, "deployed")
    fake.on("GET", "/api/v1/agents/bot", lambda s: (200, next(details, last)))
    path = tmp_path / "agent.yaml"
    path.write_text(AGENT_YAML)
    return path


def test_output_on_a_pipe_has_no_escape_codes_even_when_colour_is_forced(
    fake: FakeNexus,
    nexus: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = _serve_everything(fake, tmp_path)
    # None of these may style a pipe or squeeze its columns.
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("COLUMNS", "20")
    runs = {
        argv: nexus(*argv)
        for argv in [
            ("agents", "apply", "-f", str(path), "--wait"),  # first: it reads the phases
            ("tenants", "list"),
            ("agents", "list"),
            ("agents", "get", "bot"),
            ("keys", "list"),
            ("agents", "status", "bot"),
            ("agents", "logs", "bot"),
        ]
    }
    for argv, r in runs.items():
        assert r.code == 0, (argv, r.err)
        assert r.out, argv
        for text in (r.out, r.err):
            assert "\x1b" not in text and "\r" not in text, (argv, text)
            assert all(line == line.rstrip() for line in text.splitlines()), (argv, text)
    assert runs[("tenants", "list")].out.splitlines() == [
        "ID    NAME         PHASE          NAMESPACE    AGENTS   NODE",
        "t_1   Acme Corp    Ready          tenant-t-1   2        available",
        "t_2   Beta         Provisioning   tenant-t-2   0        unavailable",
        "t_3   Old server   Ready          tenant-t-3   0        <none>",
    ]
    assert runs[("agents", "logs", "bot")].out == "t1  ERROR    [b]oom\n"
    assert 'Node tools:   [   "a",   "b" ]' in runs[("agents", "status", "bot")].out
    apply = runs[("agents", "apply", "-f", str(path), "--wait")]
    assert [ln.split("] ", 1)[1] for ln in apply.err.splitlines()] == [
        "bot Pending",
        "bot Deploying",
        "bot Running (nodeAck): deployed",
    ]


def test_json_output_is_plain_json_even_on_a_terminal(
    fake: FakeNexus, nexus_tty: Callable[..., Result], tmp_path: Path
) -> None:
    path = _serve_everything(fake, tmp_path)
    for argv, expected in [
        (("tenants", "list"), TENANTS),
        (("agents", "list"), AGENTS),
        (("keys", "list"), KEYS),
        (("agents", "status", "bot"), STATUS),
        (("agents", "logs", "bot"), LOGS),
        (("agents", "apply", "-f", str(path), "--wait"), {"name": "bot", "phase": "Pending"}),
    ]:
        r = nexus_tty(*argv, "-o", "json")
        assert r.code == 0, (argv, r.err)
        assert "\x1b" not in r.out, argv
        assert json.loads(r.out) == expected, argv
    # the wait's progress went to stderr, live: stdout stayed one document
    assert "is Running (nodeAck)" in strip_ansi(r.err)
    assert "\x1b[" in r.err


def test_apply_wait_on_a_terminal_shows_each_phase_change(
    fake: FakeNexus, nexus_tty: Callable[..., Result], tmp_path: Path
) -> None:
    r = _apply_wait(
        fake,
        nexus_tty,
        tmp_path,
        [
            agent_detail("Pending", message="waiting for tenant"),
            agent_detail("Pending", message="waiting for tenant"),
            agent_detail("Deploying", message="deploying"),
            agent_detail("Running", False, "deployed"),
            agent_detail("Running", True, "deployed"),
        ],
    )
    assert r.code == 0, r.err
    history = re.findall(r"\[\s*\d+s\] (bot [^\r\n]*)", strip_ansi(r.err))
    assert history == [
        "bot Pending: waiting for tenant",
        "bot Deploying: deploying",
        "bot Running: deployed",
        "bot Running (nodeAck): deployed",
    ]
    assert "\x1b[33mDeploying" in r.err  # coloured
    assert "\x1b[?25l" in r.err and "\x1b[?25h" in r.err  # live: cursor hidden, then shown
    assert r.out.splitlines()[0] == "agent bot created"
    assert r.out.splitlines()[1].startswith("agent bot is Running (nodeAck) after ")


def test_tables_on_a_terminal_are_drawn_by_rich() -> None:
    buf = io.StringIO()
    screen = terminal.Screen(buf, tty_console(buf, width=120))
    assert screen.is_terminal
    screen.show(render.tenants_table(TENANTS))
    raw = buf.getvalue()
    assert raw.startswith("\x1b[1mID")  # bold headers
    assert "\x1b[32mReady" in raw and "\x1b[33mProvisioning" in raw
    assert "\x1b[32mavailable" in raw and "\x1b[31munavailable" in raw
    lines = [line.rstrip() for line in strip_ansi(raw).splitlines()]
    assert lines == terminal.to_text(render.tenants_table(TENANTS)).splitlines()

    # server data is never read as markup
    buf = io.StringIO()
    screen = terminal.Screen(buf, tty_console(buf))
    screen.show(render.tenants_table([{"id": "t_1", "displayName": "[bold red]x[/]"}]))
    assert "[bold red]x[/]" in strip_ansi(buf.getvalue())


def test_a_narrow_terminal_folds_cells_instead_of_cutting_them() -> None:
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    buf = io.StringIO()
    terminal.Screen(buf, tty_console(buf, width=40)).show(
        render.keys_table([{"hash": digest, "label": "ci", "createdAt": None}])
    )
    text = strip_ansi(buf.getvalue())
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 40
    hash_column = "".join(line.split()[0] for line in text.splitlines()[1:] if line.strip())
    assert hash_column.startswith(digest)


@pytest.mark.parametrize(
    ("tenant", "shown"),
    [
        ({}, None),
        ({"nodeAvailable": True}, "available"),
        ({"nodeAvailable": False}, "unavailable"),
        ({"node": {"available": True}}, "available"),
        ({"conditions": [{"type": "Ready", "status": "True"}]}, None),
        ({"conditions": [{"type": "NodeAvailable", "status": "True"}]}, "available"),
        ({"conditions": [{"type": "NodeAvailable", "status": "Unknown"}]}, "unknown"),
        ({"conditions": [{"type": "NodeAvailable"}]}, "unknown"),
    ],
)
def test_node_availability_is_read_from_any_shape(
    tenant: dict[str, Any], shown: str | None
) -> None:
    assert render.node_availability(tenant) == shown
