"""The agent-spec rules of :mod:`nexus.domain.agentspec` as JSON Schema, for the OpenAPI document.

Built from the same constants, so the document cannot drift from the validator. The schema
lists the keys Nexus checks, with exactly the rules the validator applies; every other key of
an Agent spec (``spec.prompts``, a model's ``endpoint``, ...) is accepted and passed to the
node untouched, which the descriptions say rather than the schema: an open schema would let
clients (and fuzzers) expect any JSON there, while Kubernetes refuses integers beyond int64.
What JSON Schema cannot say is in the descriptions too: tool names are unique, an endpoint
must be an http(s) URL not aimed at link-local or metadata addresses, and the limits of the
request body (its size and nesting), which belong to the body parser and are passed in.
"""

from __future__ import annotations

import sys
from typing import Any

from nexus.domain.agentspec import (
    API_VERSION,
    GLYPH,
    KIND,
    ORCHESTRATION_PATTERNS,
    PROVIDERS,
    ROUTING_STRATEGIES,
    TOOL_TYPES,
)

Schema = dict[str, Any]

# The validator's "non-empty" is `str.strip() != ""`: a character outside Python's whitespace.
# Spelled out, because a regex `\S` means different things in Python and in ECMAScript.
_SPACE = [c for c in range(sys.maxunicode + 1) if chr(c).isspace()]


def _char_class(codes: list[int]) -> str:
    ranges: list[tuple[int, int]] = []
    for c in codes:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))

    def esc(c: int) -> str:
        return f"\\u{c:04x}"

    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


#: Python's whitespace as a regex character class body (the same in ECMAScript).
SPACE_CLASS = _char_class(_SPACE)
NON_BLANK = f"[^{SPACE_CLASS}]"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
REF = "#/components/schemas/"
OTHER_KEYS = "Other keys are accepted and passed to the node untouched."


def _ref(name: str) -> Schema:
    return {"$ref": REF + name}


def _closed(properties: Schema, *, required: list[str] | None = None, **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = required
    out.update(extra)
    return out


def _size(count: int) -> str:
    mib = 1024 * 1024
    return f"{count // mib} MiB" if count % mib == 0 else f"{count} bytes"


def agent_spec_schemas(*, max_bytes: int, max_depth: int) -> dict[str, Schema]:
    """``AgentSpec`` and the schemas it refers to, for ``components.schemas``; `max_bytes` and
    `max_depth` are the request body's limits, stated in the description."""
    non_blank: Schema = {"type": "string", "pattern": NON_BLANK}
    sampling: Schema = {
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    }
    routing = _closed({"strategy": {"enum": list(ROUTING_STRATEGIES)}})
    entry = _closed(
        {
            "provider": {"enum": list(PROVIDERS)},
            "source": {"enum": list(PROVIDERS)},
            "model": non_blank,
            **sampling,
            "parameters": _closed(sampling),
        },
        required=["model"],
        anyOf=[{"required": ["provider"]}, {"required": ["source"]}],
        description=(
            "A model: `provider` (or its newer name `source`) and `model`. Wherever they "
            "appear under spec.model, temperature is 0-2 and top_p 0-1; an `endpoint` must be "
            "an http(s) URL not aimed at a link-local or cloud metadata address. " + OTHER_KEYS
        ),
    )
    role = _closed(
        {
            "candidates": {"type": "array", "minItems": 1, "items": _ref("ModelEntry")},
            "strategy": {"enum": list(ROUTING_STRATEGIES)},
        },
        required=["candidates"],
    )
    # The two shapes exclude each other: a mix is refused.
    legacy = _closed(
        {
            "primary": _ref("ModelEntry"),
            "fallback": _ref("ModelEntry"),
            "extra": {"type": "object", "additionalProperties": _ref("ModelEntry")},
            "routing": routing,
            **sampling,
        },
        required=["primary"],
        title="primary/fallback",
    )
    per_role = _closed(
        {
            "default": _ref("ModelRole"),
            "roles": {"type": "object", "additionalProperties": _ref("ModelRole")},
            **sampling,
        },
        required=["default"],
        title="default/roles",
    )
    tool = _closed(
        {"name": non_blank, "type": {"enum": list(TOOL_TYPES)}}, required=["name", "type"]
    )
    orchestration = _closed(
        {
            "pattern": {"enum": list(ORCHESTRATION_PATTERNS), "default": "react"},
            "max_iterations": {"type": "integer", "minimum": 1, "maximum": 100},
            "timeout_seconds": {"type": "number", "minimum": 1, "maximum": 300},
        }
    )
    common: Schema = {
        "identity": _closed({"display_name": {"type": "string"}}),
        "model": {"anyOf": [_ref("ModelPrimary"), _ref("ModelPerRole")]},
        "tools": {
            "type": "array",
            "description": "Tool names are unique.",
            "items": _ref("AgentTool"),
        },
    }
    spec: Schema = {
        "description": "The node runs a Glyph `program` only under the glyph pattern. "
        + OTHER_KEYS,
        "anyOf": [
            _closed({**common, "orchestration": orchestration}, required=["model"]),
            _closed(
                {
                    **common,
                    "orchestration": {
                        **orchestration,
                        "required": ["pattern"],
                        "properties": {
                            **orchestration["properties"],
                            "pattern": {"const": GLYPH},
                        },
                    },
                    "program": non_blank,
                },
                required=["model", "orchestration", "program"],
            ),
        ],
    }
    agent = _closed(
        {
            "apiVersion": {"const": API_VERSION},
            "kind": {"const": KIND},
            "metadata": _closed(
                {
                    "name": {"type": "string", "pattern": NAME_PATTERN},
                    "version": {"type": "string", "description": 'Quoted, e.g. "1.0.0".'},
                },
                required=["name"],
            ),
            "spec": spec,
        },
        required=["apiVersion", "kind", "metadata", "spec"],
        description=(
            f"An {API_VERSION} Agent spec (YAML or JSON, at most {_size(max_bytes)}, nested at "
            f"most {max_depth} levels, no duplicate keys, no YAML aliases or tags). Every "
            "violation is reported at once in a 400 `errors` list. " + OTHER_KEYS
        ),
    )
    return {
        "AgentSpec": agent,
        "ModelPrimary": legacy,
        "ModelPerRole": per_role,
        "ModelEntry": entry,
        "ModelRole": role,
        "AgentTool": tool,
    }
