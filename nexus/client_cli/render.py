"""Output for people (kubectl-style aligned tables) and for programs (``-o json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

NONE = "<none>"
COLUMN_GAP = "   "


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart, no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append(COLUMN_GAP.join(cells).rstrip())
    return "\n".join(lines)


def key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """``Key:   value`` lines, values aligned (kubectl describe)."""
    if not pairs:
        return ""
    width = max(len(k) for k, _ in pairs) + 3
    return "\n".join(f"{(k + ':').ljust(width)}{v}".rstrip() for k, v in pairs)


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


def agents_table(items: Sequence[dict[str, Any]], now: datetime | None = None) -> str:
    headers = ["NAME", "PHASE", "NODEACK", "LAST SYNCED", "AGE"]
    rows = [
        [
            _text(a.get("name")),
            _text(a.get("phase")),
            _text(bool(a.get("nodeAck"))),
            age(a.get("lastSyncedAt"), now),
            age(a.get("createdAt"), now),
        ]
        for a in items
    ]
    return table(headers, rows)


def agent_detail_row(agent: dict[str, Any], now: datetime | None = None) -> str:
    """``agents get NAME`` as a one-row table (with VERSION)."""
    st = agent.get("status") or {}
    headers = ["NAME", "VERSION", "PHASE", "NODEACK", "LAST SYNCED", "AGE"]
    row = [
        _text(agent.get("name")),
        _text(agent.get("version")),
        _text(st.get("phase")),
        _text(bool(st.get("nodeAck"))),
        age(st.get("lastSyncedAt"), now),
        age(agent.get("createdAt"), now),
    ]
    return table(headers, [row])


def tenants_table(items: Sequence[dict[str, Any]]) -> str:
    headers = ["ID", "NAME", "PHASE", "NAMESPACE", "AGENTS"]
    rows = [
        [
            _text(t.get("id")),
            _text(t.get("displayName")),
            _text(t.get("phase")),
            _text(t.get("namespace")),
            _text(t.get("agentCount", 0)),
        ]
        for t in items
    ]
    return table(headers, rows)


def keys_table(items: Sequence[dict[str, Any]], now: datetime | None = None) -> str:
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


def agent_status(body: dict[str, Any], now: datetime | None = None) -> str:
    """``agents status NAME``: the resource's view, then the node's live view."""
    synced = body.get("lastSyncedAt")
    pairs = [
        ("Name", _text(body.get("name"))),
        ("Phase", _text(body.get("phase"))),
        ("Node ack", _text(bool(body.get("nodeAck")))),
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


def log_lines(body: dict[str, Any]) -> str:
    out = []
    for line in body.get("lines") or []:
        if isinstance(line, dict):
            level = str(line.get("level") or "").upper()
            out.append(f"{line.get('timestamp') or '-'}  {level:<7}  {line.get('message') or ''}")
    return "\n".join(out)


def write_line(stream: TextIO, text: str) -> None:
    if text:
        stream.write(text + "\n")
