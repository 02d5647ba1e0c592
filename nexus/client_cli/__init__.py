"""The tenant-user side of the ``nexus`` command: login, tenants, API keys and agents.

It only speaks the public REST API; nothing here imports the control plane. ``parser`` holds
the command line and runs a command; one module per noun (``auth``, ``tenants``, ``keys``,
``agents``) does the work; ``render`` and ``terminal`` turn answers into output.
"""

from __future__ import annotations

from nexus.client_cli.parser import register, run

__all__ = ["register", "run"]
