"""What every subcommand gets: its arguments, the stored session, the server and the output."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import RenderableType

from nexus.client_cli import render
from nexus.client_cli.config import (
    Credentials,
    CredentialStore,
    default_config_dir,
    normalize_server,
)
from nexus.client_cli.http import Auth, CliError, NexusClient
from nexus.client_cli.terminal import Screen

DEFAULT_SERVER = "http://localhost:8080"
OUTPUTS = ("table", "json")

Handler = Callable[["Context"], Coroutine[Any, Any, int]]


def q(segment: str) -> str:
    """One URL path segment (an ID or a name typed by the user)."""
    return urllib.parse.quote(segment, safe="")


@dataclass
class Context:
    args: argparse.Namespace
    store: CredentialStore
    output: str
    explicit_server: str | None
    stdout: Screen
    stderr: Screen
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
            # Looked up now, not at import: tests and callers may have replaced the streams.
            stdout=Screen(sys.stdout),
            stderr=Screen(sys.stderr),
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

    # -- output ---------------------------------------------------------------------------------

    def out(self, text: str) -> None:
        """A line of the command's result on stdout."""
        self.stdout.line(text)

    def note(self, text: str) -> None:
        """A line for the person at the terminal (stderr), never mixed into the result."""
        self.stderr.line(text)

    def dump(self, data: Any) -> None:
        """The ``-o json`` result: one plain JSON document on stdout, never styled."""
        self.stdout.line(render.to_json(data))

    def show(self, renderable: RenderableType, *, soft_wrap: bool = False) -> None:
        """A table or styled text on stdout."""
        self.stdout.show(renderable, soft_wrap=soft_wrap)
