"""The ``nexus`` command: ``nexus manager`` runs the control plane; the other subcommands
(login, tenants, keys, agents, ...) are the tenant-user CLI of ``nexus.client_cli``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from nexus import client_cli
from nexus.localnode import cli as localnode_cli
from nexus.settings import ManagerSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nexus", description="Nexus control plane for Astromesh")
    sub = parser.add_subparsers(dest="command", required=True)
    mgr = sub.add_parser("manager", help="run the controllers and the REST API")
    ManagerSettings.add_arguments(mgr)
    localnode_cli.register(sub)
    client_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "manager":
        from nexus import app
        from nexus.runtime import LeaderElectionLost

        try:
            settings = ManagerSettings.from_args(args)
        except ValueError as exc:
            print(f"nexus manager: {exc}", file=sys.stderr)
            return 2
        try:
            asyncio.run(app.run(settings))
        except app.ConfigError as exc:
            print(f"nexus manager: {exc}", file=sys.stderr)
            return 2
        except LeaderElectionLost as exc:
            print(f"nexus manager: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        return 0
    if args.command == "localnode":
        return localnode_cli.run(args)
    return client_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
