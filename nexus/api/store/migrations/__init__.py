"""Versioned schema migrations, one list per backend (``sqlite``, ``postgres``).

Each entry of a list is ``(version, sql)``. Versions strictly increase; a migration is applied
once, in its own transaction, together with the ``schema_version`` row that records it, so a
crash mid-migration leaves the database at the previous version rather than half-way. Released
migrations are never edited: a schema change is a new entry at the end of each backend's list.
"""

from __future__ import annotations

import itertools

__all__ = ["Migration", "MigrationError", "check_migrations", "refuse_newer"]

Migration = tuple[int, str]


class MigrationError(Exception):
    """The database cannot be brought to this build's schema (newer than the code, or broken)."""


def check_migrations(migrations: list[Migration]) -> int:
    """Raise unless versions are positive and increasing; return the latest (0 if none)."""
    versions = [v for v, _ in migrations]
    if any(b <= a for a, b in itertools.pairwise(versions)) or (versions and versions[0] < 1):
        raise MigrationError(f"migration versions must be positive and increasing: {versions}")
    return versions[-1] if versions else 0


def refuse_newer(version: int, latest: int) -> None:
    # Running old code against a newer schema could silently drop data it does not know.
    if version > latest:
        raise MigrationError(
            f"database schema version {version} is newer than this build's {latest}"
        )
