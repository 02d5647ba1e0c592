"""Reading the agent document of ``nexus agents apply -f FILE``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nexus.client_cli.http import CliError


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
