"""The README documents every manager flag and its environment variable."""

from __future__ import annotations

from pathlib import Path

from nexus.settings import ManagerSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_flag_and_variable_is_documented() -> None:
    missing = [
        name
        for name in ManagerSettings.model_fields
        if f"`--{name.replace('_', '-')}`" not in README or f"`NEXUS_{name.upper()}`" not in README
    ]
    assert missing == [], f"README lacks flags: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = README.splitlines()[:6]
    assert any(line.startswith("make dev") for line in head)
    assert any(line.startswith("make test") for line in head)
