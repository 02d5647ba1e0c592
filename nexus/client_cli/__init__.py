"""The tenant-user side of the ``nexus`` command: login, tenants, API keys and agents.

It only speaks the public REST API (see ``commands`` for the subcommands); nothing here imports
the control plane.
"""

from __future__ import annotations

from nexus.client_cli.commands import register, run

__all__ = ["register", "run"]
