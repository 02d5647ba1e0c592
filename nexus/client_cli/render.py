"""What the CLI shows: kubectl-style tables and ``describe`` views as ``rich`` renderables,
plus ``-o json`` documents.

Builders here only turn API answers into renderables; :mod:`nexus.client_cli.terminal` decides
whether they are drawn with styles (a terminal) or as plain aligned columns (a pipe). Every value
that comes from the server is wrapped in :class:`rich.text.Text`, so brackets in a name or a log
line are shown as they are, never interpreted as markup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich.table import Table
from rich.text import Text

NONE = "<none>"
# Three blanks between columns, as kubectl prints them.
COLUMN_GAP = 3

PHASE_STYLES = {
    "Running": "green",
    "Ready": "green",
    "Pending": "yellow",
    "Deploying": "yellow",
    "Provisioning": "yellow",
    "Terminating": "yellow",
    "Suspended": "blue",
    "Failed": "bold red",
    "Error": "bold red",
}
LEVEL_STYLES = {"ERROR": "bold red", "CRITICAL": "bold red", "WARNING": "yellow", "DEBUG": "dim"}
BOOL_STYLES = {"true": "green", "false": "yellow"}
NODE_STYLES = {"available": "green", "unavailable": "red", "unknown": "yellow"}

Cell = str | Text


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> Table:
    """Columns as wide as their widest cell, three blanks apart, no borders.

    On a narrow terminal a cell folds onto the next line rather than being cut: an ID or a key
    hash must stay whole to be copied.
    """
    out = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, COLUMN_GAP, 0, 0),
        header_style="bold",
    )
    for header in headers:
        out.add_column(header, overflow="fold")
    for row in rows:
        out.add_row(*(cell if isinstance(cell, Text) else Text(cell) for cell in row))
    return out


def key_values(pairs: Sequence[tuple[str, Cell]]) -> Table:
    """``Key:   value`` lines, values aligned (kubectl describe)."""
    # Two blanks of padding after the widest "Key:" put values three columns past the longest key.
    grid = Table.grid(padding=(0, 2, 0, 0))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in pairs:
        grid.add_row(Text(f"{key}:"), value if isinstance(value, Text) else Text(value))
    return grid


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """kubectl's HumanDuration: 45s, 3m20s, 17m, 5h12m, 30h, 3d4h, 120d, 2y10d, 9y."""
    if seconds < -1:
        return "<invalid>"
    s = max(int(seconds), 0)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    years, days = hours // (24 * 365), (hours // 24) % 365
    if hours < 24 * 365 * 8:
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{years}y"


def age(value: Any, now: datetime | None = None) -> str:
    ts = parse_time(value)
    if ts is None:
        return NONE if not value else str(value)
    now = now or datetime.now(UTC)
    return human_duration((now - ts).total_seconds())


def _text(value: Any) -> str:
    if value is None or value == "":
        return NONE
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def phase(value: Any) -> Text:
    shown = _text(value)
    return Text(shown, style=PHASE_STYLES.get(shown, ""))


def flag(value: Any) -> Text:
    shown = _text(bool(value))
    return Text(shown, style=BOOL_STYLES[shown])


def node_availability(tenant: dict[str, Any]) -> str | None:
    """``available`` / ``unavailable`` / ``unknown`` from a tenant answer; None if it has none.

    Older servers say nothing about the tenant's node; newer ones may send a ``nodeAvailable``
    boolean, a ``node`` object with ``available``, or a ``NodeAvailable`` condition.
    """
    value: Any = tenant.get("nodeAvailable")
    node = tenant.get("node")
    if value is None and isinstance(node, dict):
        value = node.get("available")
    if value is None:
        for cond in tenant.get("conditions") or []:
            if isinstance(cond, dict) and cond.get("type") == "NodeAvailable":
                value = cond.get("status", "Unknown")
                break
    if value is None:
        return None
    if isinstance(value, bool):
        return "available" if value else "unavailable"
    text = str(value).strip().lower()
    return {"true": "available", "false": "unavailable"}.get(text, text or "unknown")


def agents_table(items: Sequence[dict[str, Any]], now: datetime | None = None) -> Table:
    headers = ["NAME", "PHASE", "NODEACK", "LAST SYNCED", "AGE"]
    rows: list[list[Cell]] = [
        [
            _text(a.get("name")),
            phase(a.get("phase")),
            flag(a.get("nodeAck")),
            age(a.get("lastSyncedAt"), now),
            age(a.get("createdAt"), now),
        ]
        for a in items
    ]
    return table(headers, rows)


def agent_detail_row(agent: dict[str, Any], now: datetime | None = None) -> Table:
    """``agents get NAME`` as a one-row table (with VERSION)."""
    st = agent.get("status") or {}
    headers = ["NAME", "VERSION", "PHASE", "NODEACK", "LAST SYNCED", "AGE"]
    row: list[Cell] = [
        _text(agent.get("name")),
        _text(agent.get("version")),
        phase(st.get("phase")),
        flag(st.get("nodeAck")),
        age(st.get("lastSyncedAt"), now),
        age(agent.get("createdAt"), now),
    ]
    return table(headers, [row])


def tenants_table(items: Sequence[dict[str, Any]]) -> Table:
    """Tenants; a NODE column is added last (existing columns keep their place for scripts)
    when the server reports node availability for any of them."""
    headers = ["ID", "NAME", "PHASE", "NAMESPACE", "AGENTS"]
    nodes = [node_availability(t) for t in items]
    with_node = any(n is not None for n in nodes)
    if with_node:
        headers.append("NODE")
    rows: list[list[Cell]] = []
    for t, node in zip(items, nodes, strict=True):
        row: list[Cell] = [
            _text(t.get("id")),
            _text(t.get("displayName")),
            phase(t.get("phase")),
            _text(t.get("namespace")),
            _text(t.get("agentCount", 0)),
        ]
        if with_node:
            shown = node or NONE
            row.append(Text(shown, style=NODE_STYLES.get(shown, "")))
        rows.append(row)
    return table(headers, rows)


def keys_table(items: Sequence[dict[str, Any]], now: datetime | None = None) -> Table:
    headers = ["HASH", "LABEL", "CREATED", "LAST USED"]
    rows = [
        [
            _text(k.get("hash")),
            _text(k.get("label")),
            age(k.get("createdAt"), now),
            age(k.get("lastUsedAt"), now) if k.get("lastUsedAt") else "never",
        ]
        for k in items
    ]
    return table(headers, rows)


def agent_status(body: dict[str, Any], now: datetime | None = None) -> Table:
    """``agents status NAME``: the resource's view, then the node's live view."""
    synced = body.get("lastSyncedAt")
    pairs: list[tuple[str, Cell]] = [
        ("Name", _text(body.get("name"))),
        ("Phase", phase(body.get("phase"))),
        ("Node ack", flag(body.get("nodeAck"))),
        ("Last synced", f"{synced} ({age(synced, now)} ago)" if parse_time(synced) else NONE),
    ]
    node = body.get("node")
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "name":
                continue
            shown = to_json(value).replace("\n", " ") if isinstance(value, dict | list) else value
            pairs.append((f"Node {key}", _text(shown)))
    return key_values(pairs)


def log_lines(body: dict[str, Any]) -> Text:
    """``timestamp  LEVEL    message``, one line per entry, the level coloured on a terminal."""
    out = []
    for line in body.get("lines") or []:
        if isinstance(line, dict):
            level = str(line.get("level") or "").upper()
            out.append(
                Text.assemble(
                    f"{line.get('timestamp') or '-'}  ",
                    (f"{level:<7}", LEVEL_STYLES.get(level, "")),
                    f"  {line.get('message') or ''}",
                )
            )
    return Text("\n").join(out)
