"""The tenant-user subcommands of ``nexus`` (everything except ``nexus manager``): the whole
command line in one place, and running one command.

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

Output: ``-o json`` prints one plain JSON document on stdout. Tables and the ``--wait`` progress
use colours and a live spinner only on a terminal; on a pipe they are plain, stable columns.

Exit codes: 0 success; 1 any error (server error, bad file, unreachable server, expired
session, and for ``agents apply --wait`` an agent that ends ``Failed`` or does not reach
``Running`` with ``nodeAck`` within ``--timeout``); 2 usage errors; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from nexus.client_cli import agents, auth, keys, tenants
from nexus.client_cli.config import ConfigError
from nexus.client_cli.context import DEFAULT_SERVER, OUTPUTS, Context, Handler
from nexus.client_cli.http import CliError

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


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


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

    # auth
    p = leaf(sub, "login", auth.cmd_login, "log in and store the session")
    p.add_argument("--email", required=True)
    _password_options(p)

    p = leaf(sub, "register", auth.cmd_register, "create an account and log in")
    p.add_argument("--email", required=True)
    p.add_argument("--display-name", required=True)
    _password_options(p)

    leaf(sub, "logout", auth.cmd_logout, "forget the stored session")

    # tenants
    p = leaf(sub, "use", tenants.cmd_use, "choose the current tenant (sent as X-Tenant-ID)")
    p.add_argument("tenant_id", metavar="TENANT_ID")

    group = grouped("tenants", "manage your tenants")
    p = leaf(group, "create", tenants.cmd_tenants_create, "create a tenant")
    p.add_argument("--display-name", required=True)
    p.add_argument("--node-profile", default="full")
    leaf(group, "list", tenants.cmd_tenants_list, "list your tenants")
    p = leaf(group, "get", tenants.cmd_tenants_get, "show one tenant")
    p.add_argument("tenant_id", metavar="ID")
    p = leaf(group, "delete", tenants.cmd_tenants_delete, "delete a tenant and everything in it")
    p.add_argument("tenant_id", metavar="ID")

    # keys
    group = grouped("keys", "manage the API keys of a tenant")
    p = leaf(group, "create", keys.cmd_keys_create, "create an API key (shown once)", (scoped,))
    p.add_argument("--label", required=True)
    leaf(group, "list", keys.cmd_keys_list, "list the API keys", (scoped,))
    p = leaf(group, "revoke", keys.cmd_keys_revoke, "revoke an API key", (scoped,))
    p.add_argument("hash", metavar="HASH")

    # agents
    group = grouped("agents", "manage the agents of a tenant")
    p = leaf(
        group,
        "apply",
        agents.cmd_agents_apply,
        "create or update an agent from a file",
        (agent_scoped,),
    )
    p.add_argument("-f", "--filename", required=True, metavar="FILE", help="YAML/JSON; - = stdin")
    p.add_argument("--wait", action="store_true", help="wait until Running (or Failed)")
    p.add_argument("--timeout", type=positive_float, default=120.0, help="seconds (default 120)")
    leaf(group, "list", agents.cmd_agents_list, "list agents", (agent_scoped,))
    for name, handler, text in (
        ("get", agents.cmd_agents_get, "show an agent"),
        ("status", agents.cmd_agents_status, "show an agent's live status on its node"),
        ("delete", agents.cmd_agents_delete, "delete an agent"),
    ):
        p = leaf(group, name, handler, text, (agent_scoped,))
        p.add_argument("name", metavar="NAME")
    p = leaf(
        group, "logs", agents.cmd_agents_logs, "show an agent's recent log lines", (agent_scoped,)
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--lines", type=int, default=100, help="how many lines (1-1000, default 100)")


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
