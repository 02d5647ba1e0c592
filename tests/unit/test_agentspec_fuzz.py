"""Property tests for agent spec bodies.

1. Whatever the body (random JSON-like values serialised as JSON or YAML, random bytes, random
   YAML-ish text), parse_body either returns a JSON-serialisable mapping or raises SpecError;
   nothing else escapes. A JSON mapping the custom resource can hold comes back unchanged.
2. validate_agent returns a list of strings for any dict, including agent-shaped ones with
   random values in every field, and finds nothing wrong in specs built from the rules.
"""

from __future__ import annotations

import json
import math
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus.api.specbody import MAX_DEPTH, SpecError, parse_body
from nexus.domain.agentspec import (
    ORCHESTRATION_PATTERNS,
    PROVIDERS,
    ROUTING_STRATEGIES,
    TOOL_TYPES,
    validate_agent,
)

CONTENT_TYPES = ("application/yaml", "application/x-yaml", "application/json")

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["2024-01-01", "1.10", "yes", "<<", "=", "~", "!x", "&a", "*a", "0x1F"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)


def _storable(value: Any, depth: int = 0) -> bool:
    """Whether a value is one the custom resource can hold (what parse_body must accept)."""
    if isinstance(value, dict):
        return depth < MAX_DEPTH and all(_storable(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(_storable(v, depth + 1) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return -(2**63) <= value < 2**63
    return True


def _parse(raw: bytes, content_type: str) -> dict[str, Any] | None:
    try:
        result = parse_body(raw, content_type)
    except SpecError as error:
        assert error.status in (400, 413)
        assert error.errors
        assert all(isinstance(e, str) for e in error.errors)
        for message in error.errors:
            message.encode("utf-8")
        return None
    assert isinstance(result, dict)
    json.dumps(result, allow_nan=False)
    return result


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_json_bodies_parse_or_raise_spec_error(value: Any) -> None:
    raw = json.dumps(value).encode()
    result = _parse(raw, "application/json")
    if isinstance(value, dict) and _storable(value):
        assert result == value
    elif not isinstance(value, dict):
        assert result is None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values, st.sampled_from([None, True, False]))
def test_yaml_bodies_parse_or_raise_spec_error(value: Any, flow: bool | None) -> None:
    raw = yaml.safe_dump(value, default_flow_style=flow, allow_unicode=True).encode()
    result = _parse(raw, "application/yaml")
    if not isinstance(value, dict):
        assert result is None


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from(CONTENT_TYPES))
def test_random_bytes_parse_or_raise_spec_error(raw: bytes, content_type: str) -> None:
    _parse(raw, content_type)


# Tokens rather than characters, so indicators and document markers meet often.
yamlish = st.lists(
    st.sampled_from(
        [*"ab01 :-?[]{},&*!|>'\"#%@`\n\t.~<=\\", "!!", "---", "...", "  ", "\n  ", "- ", ": "]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500)
@given(yamlish)
def test_random_yaml_text_parses_or_raises_spec_error(text: str) -> None:
    _parse(text.encode(), "application/yaml")
    _parse(text.encode(), "application/json")


# --------------------------------------------------------------------------------------------
# validate_agent

anything = st.recursive(
    scalars | st.floats(allow_nan=True),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers() | st.none(), children, max_size=4)
    ),
    max_leaves=30,
)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value most of the time, anything at all otherwise."""
    return st.one_of(strategy, strategy, anything)


provider_entry = st.fixed_dictionaries(
    {"provider": _maybe(st.sampled_from(PROVIDERS)), "model": _maybe(st.text(max_size=10))},
    optional={
        "source": _maybe(st.sampled_from(PROVIDERS)),
        "endpoint": _maybe(
            st.sampled_from(["http://ollama:11434", "http://169.254.169.254/", "ftp://x"])
            | st.text(max_size=30)
        ),
        "temperature": anything,
        "parameters": _maybe(
            st.fixed_dictionaries({}, optional={"temperature": anything, "top_p": anything})
        ),
    },
)
model = st.one_of(
    st.fixed_dictionaries(
        {"primary": _maybe(provider_entry)},
        optional={
            "fallback": _maybe(provider_entry),
            "routing": _maybe(
                st.fixed_dictionaries({"strategy": _maybe(st.sampled_from(ROUTING_STRATEGIES))})
            ),
            "extra": _maybe(st.dictionaries(st.text(max_size=5), provider_entry, max_size=2)),
        },
    ),
    st.fixed_dictionaries(
        {
            "default": _maybe(
                st.fixed_dictionaries({"candidates": _maybe(st.lists(provider_entry))})
            )
        },
        optional={
            "roles": _maybe(
                st.dictionaries(
                    st.text(max_size=5),
                    st.fixed_dictionaries({"candidates": _maybe(st.lists(provider_entry))}),
                    max_size=2,
                )
            )
        },
    ),
    anything,
)
agent_like = st.fixed_dictionaries(
    {},
    optional={
        "apiVersion": _maybe(st.just("astromesh/v1")),
        "kind": _maybe(st.just("Agent")),
        "metadata": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": _maybe(st.from_regex(r"[a-z0-9-]{1,70}", fullmatch=True)),
                    "version": anything,
                },
            )
        ),
        "spec": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "model": model,
                    "orchestration": _maybe(
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "pattern": _maybe(st.sampled_from(ORCHESTRATION_PATTERNS)),
                                "max_iterations": anything,
                                "timeout_seconds": anything,
                            },
                        )
                    ),
                    "tools": _maybe(
                        st.lists(
                            st.fixed_dictionaries(
                                {},
                                optional={
                                    "name": _maybe(st.sampled_from(["a", "b", ""])),
                                    "type": _maybe(st.sampled_from(TOOL_TYPES)),
                                },
                            ),
                            max_size=4,
                        )
                    ),
                    "identity": _maybe(
                        st.fixed_dictionaries({}, optional={"display_name": anything})
                    ),
                },
            )
        ),
    },
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(agent_like, st.dictionaries(st.text(max_size=10), anything, max_size=6)))
def test_validate_agent_never_raises(spec: dict[str, Any]) -> None:
    errors = validate_agent(spec)
    assert isinstance(errors, list)
    assert all(isinstance(e, str) for e in errors)


def _tool_name(tool: Any) -> str:
    return str(tool["name"])


valid_entry = st.fixed_dictionaries(
    {
        "provider": st.sampled_from(PROVIDERS),
        "model": st.from_regex(r"[a-z][a-z0-9.:-]{0,20}", fullmatch=True),
    },
    optional={
        "endpoint": st.sampled_from(["http://ollama:11434", "https://api.openai.com/v1"]),
        "temperature": st.floats(min_value=0, max_value=2),
        "parameters": st.fixed_dictionaries(
            {},
            optional={
                "top_p": st.floats(min_value=0, max_value=1),
                "max_tokens": st.integers(1, 4096),
            },
        ),
    },
)
# Names and versions stay ASCII: PyYAML's dumper folds characters such as U+0085 into spaces,
# which would test the dumper rather than parse_body.
valid_agent = st.fixed_dictionaries(
    {
        "apiVersion": st.just("astromesh/v1"),
        "kind": st.just("Agent"),
        "metadata": st.fixed_dictionaries(
            {"name": st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)},
            optional={"version": st.from_regex(r"[0-9a-z.+-]{0,10}", fullmatch=True)},
        ),
        "spec": st.fixed_dictionaries(
            {
                "model": st.one_of(
                    st.fixed_dictionaries(
                        {"primary": valid_entry},
                        optional={
                            "fallback": valid_entry,
                            "routing": st.fixed_dictionaries(
                                {"strategy": st.sampled_from(ROUTING_STRATEGIES)}
                            ),
                        },
                    ),
                    st.fixed_dictionaries(
                        {
                            "default": st.fixed_dictionaries(
                                {"candidates": st.lists(valid_entry, min_size=1, max_size=3)}
                            )
                        }
                    ),
                )
            },
            optional={
                "orchestration": st.fixed_dictionaries(
                    {},
                    optional={
                        "pattern": st.sampled_from(ORCHESTRATION_PATTERNS),
                        "max_iterations": st.integers(1, 100),
                        "timeout_seconds": st.integers(1, 300) | st.floats(1, 300),
                    },
                ),
                "tools": st.lists(
                    st.fixed_dictionaries(
                        {
                            "name": st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                            "type": st.sampled_from(TOOL_TYPES),
                        }
                    ),
                    max_size=4,
                    unique_by=_tool_name,
                ),
                "identity": st.fixed_dictionaries(
                    {}, optional={"display_name": st.text(max_size=10)}
                ),
                "memory": json_values,
            },
        ),
    }
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(valid_agent)
def test_specs_built_from_the_rules_are_valid_and_survive_both_formats(
    spec: dict[str, Any],
) -> None:
    assert validate_agent(spec) == []
    if not _storable(spec):
        return  # e.g. a non-finite float inside the free-form `memory`
    assert parse_body(json.dumps(spec).encode(), "application/json") == spec
    as_yaml = parse_body(yaml.safe_dump(spec, allow_unicode=True).encode(), "application/yaml")
    assert validate_agent(as_yaml) == []
    assert as_yaml["metadata"] == spec["metadata"]
