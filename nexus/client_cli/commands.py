"""The tenant-user subcommands of ``nexus`` (everything except ``nexus manager``).

::

    nexus register --email E --display-name N   # creates the account and logs in
    nexus login --email E [--password-stdin]     # stores <config-dir>/credentials.json (0600)
    nexus logout
    nexus tenants create --display-name N | list | get ID | delete ID
    nexus use TENANT_ID                          # the tenant sent as X-Tenant-ID
    nexus keys create --label L | list | revoke HASH
    nexus agents apply -f FILE [--wait] | list | get | status | logs | delete

Global options, accepted after any subcommand: ``--server URL`` (env ``NEXUS_SERVER``; default
the server of the stored session, else http://localhost:8080), ``-o table|json``,
``--config-dir`` (env ``NEXUS_CONFIG_DIR``; default ``$XDG_CONFIG_HOME/nexus`` or
``~/.config/nexus``). Tenant-scoped commands take ``--tenant ID``; agent commands also take
``--api-key KEY`` (env ``NEXUS_API_KEY``), which is used instead of the stored session.

Exit codes: 0 success; 1 any error (server error, bad file, unreachable server, expired
session, and for ``agents apply --wait`` an agent that ends ``Failed`` or does not reach
``Running`` with ``nodeAck`` within ``--timeout``); 2 usage errors; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import shutil
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import yaml

from nexus.client_cli import render
from nexus.client_cli.config import (
    ConfigError,
    Credentials,
    CredentialStore,
    default_config_dir,
    normalize_server,
)
from nexus.client_cli.http import ApiError, Auth, CliError, NexusClient, Unreachable

DEFAULT_SERVER = "http://localhost:8080"
OUTPUTS = ("table", "json")
POLL_INTERVAL = 1.0

Handler = Callable[["Context"], Coroutine[Any, Any, int]]
if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


# -- argument parsing ---------------------------------------------------------------------------


def _global_options() -> argparse.ArgumentParser:
    # SUPPRESS: a subcommand's parser must not overwrite a value given to its parent group.
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("global options")
    g.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        metavar="URL",
        help=f"Nexus API [env NEXUS_SERVER; default: the logged-in server, else {DEFAULT_SERVER}]",
    )
    g.add_argument(
        "-o",
        "--output",
        choices=OUTPUTS,
        default=argparse.SUPPRESS,
        help="output format (default table)",
    )
    g.add_argument(
        "--config-dir",
        default=argparse.SUPPRESS,
        metavar="DIR",
        help="where credentials.json lives [env NEXUS_CONFIG_DIR; default "
        "$XDG_CONFIG_HOME/nexus or ~/.config/nexus]",
    )
    return p


def _tenant_option(api_key: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--tenant",
        default=argparse.SUPPRESS,
        metavar="ID",
        help="tenant to act on (default: the one chosen with `nexus use`)",
    )
    if api_key:
        p.add_argument(
            "--api-key",
            default=argparse.SUPPRESS,
            metavar="KEY",
            help="authenticate with this tenant API key instead of the stored session "
            "[env NEXUS_API_KEY]",
        )
    return p


def _password_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--password", help="the password (visible to other local users; avoid)")
    g.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )


def register(sub: SubParsers) -> None:
    """Add the tenant-user subcommands to the ``nexus`` parser's subparsers."""
    common = _global_options()
    scoped = _tenant_option(api_key=False)
    agent_scoped = _tenant_option(api_key=True)

    def leaf(
        group: SubParsers,
        name: str,
        handler: Handler,
        help_text: str,
        parents: tuple[argparse.ArgumentParser, ...] = (),
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, parents=[common, *parents]
        )
        p.set_defaults(handler=handler)
        return p

    def grouped(name: str, help_text: str) -> SubParsers:
        p = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        group: SubParsers = p.add_subparsers(
            dest=f"{name}_command", required=True, metavar="COMMAND"
        )
        return group

    p = leaf(sub, "login", cmd_login, "log in and store the session")
    p.add_argument("--email", required=True)
    _password_options(p)

    p = leaf(sub, "register", cmd_register, "create an account and log in")
    p.add_argument("--email", required=True)
    p.add_argument("--display-name", required=True)
    _password_options(p)

    leaf(sub, "logout", cmd_logout, "forget the stored session")

    p = leaf(sub, "use", cmd_use, "choose the current tenant (sent as X-Tenant-ID)")
    p.add_argument("tenant_id", metavar="TENANT_ID")

    tenants = grouped("tenants", "manage your tenants")
    p = leaf(tenants, "create", cmd_tenants_create, "create a tenant")
    p.add_argument("--display-name", required=True)
    p.add_argument("--node-profile", default="full")
    leaf(tenants, "list", cmd_tenants_list, "list your tenants")
    p = leaf(tenants, "get", cmd_tenants_get, "show one tenant")
    p.add_argument("tenant_id", metavar="ID")
    p = leaf(tenants, "delete", cmd_tenants_delete, "delete a tenant and everything in it")
    p.add_argument("tenant_id", metavar="ID")

    keys = grouped("keys", "manage the API keys of a tenant")
    p = leaf(keys, "create", cmd_keys_create, "create an API key (shown once)", (scoped,))
    p.add_argument("--label", required=True)
    leaf(keys, "list", cmd_keys_list, "list the API keys", (scoped,))
    p = leaf(keys, "revoke", cmd_keys_revoke, "revoke an API key", (scoped,))
    p.add_argument("hash", metavar="HASH")

    agents = grouped("agents", "manage the agents of a tenant")
    p = leaf(
        agents, "apply", cmd_agents_apply, "create or update an agent from a file", (agent_scoped,)
    )
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="YAML/JSON; - = stdin")
    p.add_argument("--wait", action="store_true", help="wait until Running (or Failed)")
    p.add_argument("--timeout", type=_positive_float, default=120.0, help="seconds (default 120)")
    leaf(agents, "list", cmd_agents_list, "list agents", (agent_scoped,))
    for name, handler, text in (
        ("get", cmd_agents_get, "show an agent"),
        ("status", cmd_agents_status, "show an agent's live status on its node"),
        ("delete", cmd_agents_delete, "delete an agent"),
    ):
        p = leaf(agents, name, handler, text, (agent_scoped,))
        p.add_argument("name", metavar="NAME")
    p = leaf(agents, "logs", cmd_agents_logs, "show an agent's recent log lines", (agent_scoped,))
    p.add_argument("name", metavar="NAME")
    p.add_argument("--lines", type=int, default=100, help="how many lines (1-1000, default 100)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


# -- running ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run the parsed subcommand; returns the exit code."""
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        print("error: unknown command", file=sys.stderr)
        return 2
    try:
        ctx = Context.from_args(args)
        return asyncio.run(handler(ctx))
    except (CliError, ConfigError) as exc:
        report(exc)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def report(exc: Exception) -> None:
    print(f"error: {exc}", file=sys.stderr)
    for line in getattr(exc, "errors", None) or []:
        print(f"  {line}", file=sys.stderr)


@dataclass
class Context:
    args: argparse.Namespace
    store: CredentialStore
    output: str
    explicit_server: str | None
    _creds: Credentials | None = None
    _loaded: bool = field(default=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        config_dir = getattr(args, "config_dir", None)
        directory = Path(config_dir).expanduser() if config_dir else default_config_dir()
        server = getattr(args, "server", None) or os.environ.get("NEXUS_SERVER") or None
        return cls(
            args=args,
            store=CredentialStore(directory),
            output=getattr(args, "output", None) or "table",
            explicit_server=normalize_server(server) if server else None,
        )

    @property
    def json(self) -> bool:
        return self.output == "json"

    @property
    def stored(self) -> Credentials | None:
        if not self._loaded:
            self._creds = self.store.load()
            self._loaded = True
        return self._creds

    @property
    def server(self) -> str:
        if self.explicit_server:
            return self.explicit_server
        stored = self.stored
        return stored.server if stored is not None else DEFAULT_SERVER

    def session(self) -> Credentials:
        """The stored session, which must belong to the server we talk to."""
        stored = self.stored
        if stored is None:
            raise CliError("not logged in; run `nexus login` (or `nexus register`)")
        if normalize_server(stored.server) != self.server:
            # Never send a token to a server it was not issued by.
            raise CliError(
                f"not logged in to {self.server} (the stored session is for {stored.server}); "
                f"run `nexus login --server {self.server}`"
            )
        return stored

    def client(self, creds: Credentials | None = None) -> NexusClient:
        return NexusClient(self.server, store=self.store, creds=creds)

    def session_tenant(self, creds: Credentials) -> str:
        tenant: str | None = getattr(self.args, "tenant", None) or creds.tenant
        if not tenant:
            raise CliError(
                "no tenant selected; run `nexus use TENANT_ID` or pass --tenant "
                "(`nexus tenants list` shows yours)"
            )
        return tenant

    def agent_auth(self) -> tuple[Auth, Credentials | None]:
        key = getattr(self.args, "api_key", None) or os.environ.get("NEXUS_API_KEY")
        if key:
            # A key is bound to its tenant: only an explicit --tenant is sent (and checked).
            return Auth(api_key=key, tenant=getattr(self.args, "tenant", None)), None
        creds = self.session()
        return Auth(session=True, tenant=self.session_tenant(creds)), creds

    # output helpers
    def out(self, text: str) -> None:
        render.write_line(sys.stdout, text)

    def note(self, text: str) -> None:
        render.write_line(sys.stderr, text)

    def dump(self, data: Any) -> None:
        self.out(render.to_json(data))


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# -- auth ---------------------------------------------------------------------------------------


def _read_password(ctx: Context, *, confirm: bool) -> str:
    args = ctx.args
    if args.password_stdin:
        text = sys.stdin.readline() if sys.stdin.isatty() else sys.stdin.read()
        password = text.rstrip("\r\n")
    elif args.password is not None:
        ctx.note("warning: --password is visible to other local users; prefer --password-stdin")
        password = args.password
    else:
        try:
            password = getpass.getpass("Password: ")
            if confirm and getpass.getpass("Confirm password: ") != password:
                raise CliError("the passwords do not match")
        except EOFError:
            raise CliError("no password given") from None
    if not password:
        raise CliError("the password is empty")
    return password


def _save_session(ctx: Context, bundle: Any) -> Credentials:
    if not isinstance(bundle, dict) or not all(
        isinstance(bundle.get(k), str) for k in ("accessToken", "refreshToken")
    ):
        raise CliError("unexpected answer from the server (no tokens)")
    user = bundle.get("user") if isinstance(bundle.get("user"), dict) else {}
    previous = ctx.stored
    tenant = None
    if (
        previous is not None
        and previous.server == ctx.server
        and previous.user.get("id") == (user or {}).get("id")
    ):
        tenant = previous.tenant  # logging in again keeps the current tenant
    creds = Credentials(
        server=ctx.server,
        access_token=bundle["accessToken"],
        refresh_token=bundle["refreshToken"],
        user=dict(user or {}),
        tenant=tenant,
    )
    ctx.store.save(creds)
    return creds


def _session_view(creds: Credentials) -> dict[str, Any]:
    return {"server": creds.server, "user": creds.user, "tenant": creds.tenant}


async def cmd_login(ctx: Context) -> int:
    password = _read_password(ctx, confirm=False)
    async with ctx.client() as c:
        bundle = await c.call(
            "POST", "/auth/login", json_body={"email": ctx.args.email, "password": password}
        )
    creds = _save_session(ctx, bundle)
    if ctx.json:
        ctx.dump(_session_view(creds))
    else:
        who = creds.user.get("email") or ctx.args.email
        ctx.out(f"Logged in to {creds.server} as {who}.")
    return 0


async def cmd_register(ctx: Context) -> int:
    password = _read_password(ctx, confirm=True)
    body = {"email": ctx.args.email, "password": password, "displayName": ctx.args.display_name}
    async with ctx.client() as c:
        bundle = await c.call("POST", "/auth/register", json_body=body)
    creds = _save_session(ctx, bundle)
    if ctx.json:
        ctx.dump(_session_view(creds))
    else:
        who = creds.user.get("email") or ctx.args.email
        ctx.out(f"Registered {who} and logged in to {creds.server}.")
        ctx.note("Next: `nexus tenants create --display-name NAME`, then `nexus use ID`.")
    return 0


async def cmd_logout(ctx: Context) -> int:
    existed = ctx.store.delete()
    if ctx.json:
        ctx.dump({"loggedOut": existed})
    else:
        ctx.out("Logged out." if existed else "Not logged in.")
    return 0


async def cmd_use(ctx: Context) -> int:
    creds = ctx.session()
    tenant_id = ctx.args.tenant_id
    async with ctx.client(creds) as c:
        tenant = await c.call("GET", f"/api/v1/tenants/{_q(tenant_id)}", auth=Auth(session=True))
    creds.tenant = tenant_id
    ctx.store.save(creds)
    if ctx.json:
        ctx.dump(tenant)
    else:
        name = tenant.get("displayName") if isinstance(tenant, dict) else None
        ctx.out(f"Now using tenant {tenant_id}" + (f" ({name})." if name else "."))
    return 0


# -- tenants ------------------------------------------------------------------------------------


async def cmd_tenants_create(ctx: Context) -> int:
    creds = ctx.session()
    body = {"displayName": ctx.args.display_name, "nodeProfile": ctx.args.node_profile}
    async with ctx.client(creds) as c:
        tenant = await c.call("POST", "/api/v1/tenants", json_body=body, auth=Auth(session=True))
    if ctx.json:
        ctx.dump(tenant)
    else:
        ctx.out(f"tenant {tenant.get('id')} created (phase {tenant.get('phase')})")
        if creds.tenant is None:
            ctx.note(f"Run `nexus use {tenant.get('id')}` to make it the current tenant.")
    return 0


async def cmd_tenants_list(ctx: Context) -> int:
    creds = ctx.session()
    async with ctx.client(creds) as c:
        items = await c.call("GET", "/api/v1/tenants", auth=Auth(session=True))
    if ctx.json:
        ctx.dump(items)
    elif not items:
        ctx.note("No tenants found.")
    else:
        ctx.out(render.tenants_table(items))
    return 0


async def cmd_tenants_get(ctx: Context) -> int:
    creds = ctx.session()
    async with ctx.client(creds) as c:
        tenant = await c.call(
            "GET", f"/api/v1/tenants/{_q(ctx.args.tenant_id)}", auth=Auth(session=True)
        )
    if ctx.json:
        ctx.dump(tenant)
    else:
        ctx.out(render.tenants_table([tenant]))
    return 0


async def cmd_tenants_delete(ctx: Context) -> int:
    creds = ctx.session()
    tenant_id = ctx.args.tenant_id
    async with ctx.client(creds) as c:
        body = await c.call("DELETE", f"/api/v1/tenants/{_q(tenant_id)}", auth=Auth(session=True))
    if creds.tenant == tenant_id:
        creds.tenant = None
        ctx.store.save(creds)
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.out(f"tenant {tenant_id} deleted")
    return 0


# -- keys ---------------------------------------------------------------------------------------


async def cmd_keys_create(ctx: Context) -> int:
    creds = ctx.session()
    tenant = ctx.session_tenant(creds)
    async with ctx.client(creds) as c:
        key = await c.call(
            "POST",
            f"/api/v1/tenants/{_q(tenant)}/keys",
            json_body={"label": ctx.args.label},
            auth=Auth(session=True),
        )
    if ctx.json:
        ctx.dump(key)
    else:
        # The raw key alone on stdout (KEY=$(nexus keys create ...)); the rest on stderr.
        ctx.note(
            f"API key {key.get('hash')} created for tenant {tenant}. "
            "Store it now: it will not be shown again."
        )
        ctx.out(str(key.get("rawKey")))
    return 0


async def cmd_keys_list(ctx: Context) -> int:
    creds = ctx.session()
    tenant = ctx.session_tenant(creds)
    async with ctx.client(creds) as c:
        items = await c.call("GET", f"/api/v1/tenants/{_q(tenant)}/keys", auth=Auth(session=True))
    if ctx.json:
        ctx.dump(items)
    elif not items:
        ctx.note(f"No API keys in tenant {tenant}.")
    else:
        ctx.out(render.keys_table(items))
    return 0


async def cmd_keys_revoke(ctx: Context) -> int:
    creds = ctx.session()
    tenant = ctx.session_tenant(creds)
    digest = ctx.args.hash
    async with ctx.client(creds) as c:
        body = await c.call(
            "DELETE", f"/api/v1/tenants/{_q(tenant)}/keys/{_q(digest)}", auth=Auth(session=True)
        )
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.out(f"key {digest} revoked")
    return 0


# -- agents -------------------------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    """safe_load minus implicit timestamps: dates stay strings, as the server keeps them."""

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


@dataclass
class AgentFile:
    raw: bytes
    data: dict[str, Any]
    name: str | None
    content_type: str


def read_agent_file(path: str) -> AgentFile:
    """Read and pre-check an agent document; the server does the real validation."""
    label = "standard input" if path == "-" else path
    if path == "-":
        raw = sys.stdin.buffer.read()
    else:
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise CliError(f"cannot read {path}: no such file") from None
        except IsADirectoryError:
            raise CliError(f"cannot read {path}: it is a directory") from None
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not raw.strip():
        raise CliError(f"{label} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"{label} is not UTF-8 text") from None
    try:
        doc = yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise CliError(f"{label} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(doc, dict):
        raise CliError(
            f"{label} does not hold an agent (expected a mapping with apiVersion, kind, "
            "metadata and spec)"
        )
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    return AgentFile(
        raw=raw,
        data=doc,
        name=name if isinstance(name, str) and name else None,
        content_type="application/json" if path.lower().endswith(".json") else "application/yaml",
    )


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{exc.problem}{where}"
    return str(exc).replace("\n", " ")


def _ready_condition(detail: Any) -> dict[str, Any]:
    status = (detail or {}).get("status") if isinstance(detail, dict) else None
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond
    return {}


def _observed_generation(detail: Any) -> int | None:
    gen = _ready_condition(detail).get("observedGeneration")
    return gen if isinstance(gen, int) else None


async def cmd_agents_apply(ctx: Context) -> int:
    doc = read_agent_file(ctx.args.filename)
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        status, body = await c.call_status(
            "POST", "/api/v1/agents", data=doc.raw, content_type=doc.content_type, auth=auth
        )
        stale_generation: int | None = None
        if status == 409 and doc.name:
            # Apply semantics: it exists, so replace its spec.
            path = f"/api/v1/agents/{_q(doc.name)}"
            before = await c.call("GET", path, auth=auth)
            body = await c.call("PUT", path, data=doc.raw, content_type=doc.content_type, auth=auth)
            changed = before.get("spec") != doc.data
            action = "configured" if changed else "unchanged"
            if changed:
                # Its status still describes the old spec until the controller catches up.
                stale_generation = _observed_generation(before)
        elif status >= 400:
            raise ApiError(status, body)
        else:
            action = "created"
        name = str(body.get("name") or doc.name)
        if ctx.json:
            ctx.dump(body)
        else:
            ctx.out(f"agent {name} {action}")
        if not ctx.args.wait:
            return 0
        return await wait_for_agent(
            ctx, c, auth, name, timeout=ctx.args.timeout, stale_generation=stale_generation
        )


class Progress:
    """Phase changes of one agent: a single live line on a terminal, else one line each."""

    FRAMES_UTF8 = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    FRAMES_ASCII = "|/-\\"

    def __init__(self, stream: TextIO, name: str, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.name = name
        self.tty = stream.isatty() if tty is None else tty
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.frames = self.FRAMES_UTF8 if encoding == "utf8" else self.FRAMES_ASCII
        self.started = time.monotonic()
        self.state: tuple[str, bool, str] | None = None
        self._frame = 0
        self._drawn = False

    def elapsed(self) -> str:
        return render.human_duration(time.monotonic() - self.started)

    def update(self, phase: str, node_ack: bool, message: str) -> None:
        state = (phase, node_ack, message)
        if state == self.state:
            return
        self.state = state
        if self.tty:
            self.draw()
        else:
            ack = " (nodeAck)" if node_ack else ""
            detail = f": {message}" if message else ""
            self.stream.write(f"[{self.elapsed():>5}] {self.name} {phase}{ack}{detail}\n")
            self.stream.flush()

    def draw(self) -> None:
        if not self.tty or self.state is None:
            return
        phase, node_ack, message = self.state
        frame = self.frames[self._frame % len(self.frames)]
        self._frame += 1
        ack = " (nodeAck)" if node_ack else ""
        line = f"{frame} {self.name}  {phase}{ack}  {self.elapsed()}"
        if message:
            line += f"  {message}"
        width = max(shutil.get_terminal_size((80, 24)).columns - 1, 20)
        self.stream.write("\r\x1b[K" + line[:width])
        self.stream.flush()
        self._drawn = True

    async def pause(self, seconds: float) -> None:
        """Sleep, animating the spinner on a terminal."""
        if not self.tty:
            await asyncio.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(0.1, left))
            self.draw()

    def clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


async def wait_for_agent(
    ctx: Context,
    client: NexusClient,
    auth: Auth,
    name: str,
    *,
    timeout: float,
    stale_generation: int | None = None,
) -> int:
    """Poll until Running with nodeAck (0); Failed or timeout raise (exit 1).

    ``stale_generation``: after an update, a status observed at this generation or earlier
    describes the previous spec and cannot end the wait.
    """
    progress = Progress(sys.stderr, name)
    deadline = time.monotonic() + timeout
    path = f"/api/v1/agents/{_q(name)}"
    phase = "Pending"
    try:
        while True:
            try:
                # A slow answer must not stretch the wait past --timeout.
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.5)):
                    detail = await client.call("GET", path, auth=auth)
            except TimeoutError:
                detail = None  # the deadline check below reports it
            except ApiError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                detail = None  # transient: keep waiting
                progress.update(phase, False, f"(server: {exc.message})")
            except Unreachable as exc:
                detail = None
                progress.update(phase, False, f"({exc.message})")
            if isinstance(detail, dict):
                status = detail.get("status") or {}
                phase = str(status.get("phase") or "Pending")
                node_ack = bool(status.get("nodeAck"))
                cond = _ready_condition(detail)
                message = str(cond.get("message") or "")
                observed = _observed_generation(detail)
                fresh = stale_generation is None or (
                    observed is not None and observed > stale_generation
                )
                if not fresh:
                    progress.update("Pending", False, "waiting for the update to be picked up")
                else:
                    progress.update(phase, node_ack, message)
                    if phase == "Running" and node_ack:
                        progress.clear()
                        done = f"agent {name} is Running (nodeAck) after {progress.elapsed()}"
                        (ctx.note if ctx.json else ctx.out)(done)
                        return 0
                    if phase == "Failed":
                        progress.clear()
                        reason = cond.get("reason")
                        raise CliError(
                            f"agent {name} failed"
                            + (f" ({reason})" if reason else "")
                            + (f": {message}" if message else "")
                        )
            left = deadline - time.monotonic()
            if left <= 0:
                progress.clear()
                raise CliError(
                    f"timed out after {render.human_duration(timeout)} waiting for agent "
                    f"{name} to be Running (phase {phase})"
                )
            await progress.pause(min(POLL_INTERVAL, left))
    finally:
        progress.clear()


async def cmd_agents_list(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        items = await c.call("GET", "/api/v1/agents", auth=auth)
    if ctx.json:
        ctx.dump(items)
    elif not items:
        ctx.note("No agents found" + (f" in tenant {auth.tenant}." if auth.tenant else "."))
    else:
        ctx.out(render.agents_table(items))
    return 0


async def cmd_agents_get(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        agent = await c.call("GET", f"/api/v1/agents/{_q(ctx.args.name)}", auth=auth)
    if ctx.json:
        ctx.dump(agent)
    else:
        ctx.out(render.agent_detail_row(agent))
        cond = _ready_condition(agent)
        if cond.get("message"):
            ctx.out(f"\nReady: {cond.get('status')} ({cond.get('reason')}): {cond['message']}")
    return 0


async def cmd_agents_status(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        body = await c.call("GET", f"/api/v1/agents/{_q(ctx.args.name)}/status", auth=auth)
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.out(render.agent_status(body))
    return 0


async def cmd_agents_logs(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        body = await c.call(
            "GET",
            f"/api/v1/agents/{_q(ctx.args.name)}/logs",
            params={"lines": str(ctx.args.lines)},
            auth=auth,
        )
    if ctx.json:
        ctx.dump(body)
    elif not body.get("lines"):
        ctx.note(f"No log lines for agent {ctx.args.name}.")
    else:
        ctx.out(render.log_lines(body))
    return 0


async def cmd_agents_delete(ctx: Context) -> int:
    auth, creds = ctx.agent_auth()
    async with ctx.client(creds) as c:
        body = await c.call("DELETE", f"/api/v1/agents/{_q(ctx.args.name)}", auth=auth)
    if ctx.json:
        ctx.dump(body)
    else:
        ctx.out(f"agent {ctx.args.name} deleted")
    return 0
