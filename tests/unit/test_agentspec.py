"""Agent spec bodies: strict parsing (size, encoding, YAML/JSON hazards) and full validation."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nexus.api import specbody
from nexus.api.specbody import MAX_DEPTH, MAX_SPEC_BYTES, SpecError, parse_body
from nexus.domain import agentspec
from nexus.domain.agentspec import NAME_RE, agent_name, agent_version, valid_name, validate_agent
from nexus.domain.messages import MAX_ERRORS

YAML = "application/yaml"
JSON = "application/json"

EXAMPLE = b"""\
apiVersion: astromesh/v1
kind: Agent
metadata: {name: support-bot, version: "1.0.0"}
spec:
  identity: {display_name: "Support Bot"}
  model:
    primary: {provider: ollama, model: "llama3.1:8b"}
  orchestration: {pattern: react}
"""

PROVIDER_MSG = "must be one of: ollama, openai, openai_compat, azure_openai, litellm, centinela"


def example() -> dict[str, Any]:
    return parse_body(EXAMPLE, YAML)


def errors_of(raw: bytes, content_type: str = YAML) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_body(raw, content_type)
    assert info.value.status == 400
    return info.value.errors


# --------------------------------------------------------------------------------------------
# The example


def test_example_is_valid_and_round_trips_through_json() -> None:
    spec = example()
    assert validate_agent(spec) == []
    assert spec == {
        "apiVersion": "astromesh/v1",
        "kind": "Agent",
        "metadata": {"name": "support-bot", "version": "1.0.0"},
        "spec": {
            "identity": {"display_name": "Support Bot"},
            "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
            "orchestration": {"pattern": "react"},
        },
    }
    text = json.dumps(spec, allow_nan=False)
    assert json.loads(text) == spec
    assert parse_body(text.encode(), JSON) == spec
    assert agent_name(spec) == "support-bot"
    assert agent_version(spec) == "1.0.0"


def test_content_type_parameters_and_case_are_tolerated() -> None:
    assert parse_body(EXAMPLE, "Application/X-YAML; charset=utf-8") == example()


# --------------------------------------------------------------------------------------------
# Each rule alone


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets a dotted path (creating mappings on the way)."""

    def apply(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return apply


def _both(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def apply(spec: dict[str, Any]) -> None:
        for mutate in mutations:
            mutate(spec)

    return apply


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    def apply(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[part]
        del node[last]

    return apply


RFC1123 = (
    "metadata.name must be an RFC 1123 label: at most 63 lowercase letters, digits and '-', "
    "starting and ending with a letter or digit"
)
OLLAMA = {"provider": "ollama", "model": "llama3"}

SINGLE_VIOLATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("no apiVersion", _delete("apiVersion"), "apiVersion is required"),
    ("bad apiVersion", _set("apiVersion", "astromesh/v2"), 'apiVersion must be "astromesh/v1"'),
    ("no kind", _delete("kind"), "kind is required"),
    ("bad kind", _set("kind", "Tenant"), 'kind must be "Agent"'),
    ("no metadata", _delete("metadata"), "metadata is required"),
    ("metadata list", _set("metadata", ["x"]), "metadata must be a mapping"),
    ("no spec", _delete("spec"), "spec is required"),
    ("spec scalar", _set("spec", "x"), "spec must be a mapping"),
    ("no name", _delete("metadata.name"), "metadata.name is required"),
    ("name number", _set("metadata.name", 12), "metadata.name must be a string"),
    ("name uppercase", _set("metadata.name", "Support-Bot"), RFC1123),
    ("name underscore", _set("metadata.name", "support_bot"), RFC1123),
    ("name leading dash", _set("metadata.name", "-bot"), RFC1123),
    ("name trailing dash", _set("metadata.name", "bot-"), RFC1123),
    ("name 64 chars", _set("metadata.name", "a" * 64), RFC1123),
    ("name newline", _set("metadata.name", "bot\n"), RFC1123),
    ("name path", _set("metadata.name", "../bot"), RFC1123),
    ("name empty", _set("metadata.name", ""), RFC1123),
    (
        "version float",
        _set("metadata.version", 1.1),
        'metadata.version must be a string (quote it, e.g. "1.0.0")',
    ),
    ("no model", _delete("spec.model"), "spec.model is required"),
    ("model list", _set("spec.model", []), "spec.model must be a mapping"),
    (
        "model empty",
        _set("spec.model", {}),
        "spec.model must define primary (provider and model) or default (candidates)",
    ),
    ("primary list", _set("spec.model.primary", []), "spec.model.primary must be a mapping"),
    (
        "no provider",
        _delete("spec.model.primary.provider"),
        "spec.model.primary.provider is required",
    ),
    (
        "unknown provider",
        _set("spec.model.primary.provider", "anthropic"),
        f"spec.model.primary.provider {PROVIDER_MSG}",
    ),
    (
        "provider wrong case",
        _set("spec.model.primary.provider", "Ollama"),
        f"spec.model.primary.provider {PROVIDER_MSG}",
    ),
    ("no model name", _delete("spec.model.primary.model"), "spec.model.primary.model is required"),
    (
        "blank model name",
        _set("spec.model.primary.model", " "),
        "spec.model.primary.model must be a non-empty string",
    ),
    (
        "unknown source",
        _set("spec.model.primary.source", "bogus"),
        f"spec.model.primary.source {PROVIDER_MSG}",
    ),
    (
        "fallback bad provider",
        _set("spec.model.fallback", {"provider": "x", "model": "m"}),
        f"spec.model.fallback.provider {PROVIDER_MSG}",
    ),
    (
        "extra entry without model",
        _set("spec.model.extra", {"big": {"provider": "openai"}}),
        "spec.model.extra.big.model is required",
    ),
    ("routing scalar", _set("spec.model.routing", "fast"), "spec.model.routing must be a mapping"),
    (
        "bad routing",
        _set("spec.model.routing", {"strategy": "cheapest"}),
        "spec.model.routing.strategy must be one of: cost_optimized, latency_optimized, "
        "quality_first, round_robin, capability_match",
    ),
    (
        "both shapes",
        _set("spec.model.default", {"candidates": [OLLAMA]}),
        "spec.model must use either primary/fallback or default/roles, not both",
    ),
    (
        "no candidates",
        _set("spec.model", {"default": {}}),
        "spec.model.default.candidates is required",
    ),
    (
        "empty candidates",
        _set("spec.model", {"default": {"candidates": []}}),
        "spec.model.default.candidates must be a non-empty list",
    ),
    (
        "bad candidate source",
        _set("spec.model", {"default": {"candidates": [OLLAMA, {"source": "x", "model": "m"}]}}),
        f"spec.model.default.candidates[1].source {PROVIDER_MSG}",
    ),
    (
        "candidate without provider",
        _set("spec.model", {"default": {"candidates": [{"model": "m"}]}}),
        "spec.model.default.candidates[0].provider is required",
    ),
    (
        "bad default strategy",
        _set("spec.model", {"default": {"candidates": [OLLAMA], "strategy": "x"}}),
        "spec.model.default.strategy must be one of: cost_optimized, latency_optimized, "
        "quality_first, round_robin, capability_match",
    ),
    (
        "roles without default",
        _set("spec.model", {"roles": {"planner": {"candidates": [OLLAMA]}}}),
        "spec.model.default is required",
    ),
    (
        "bad role candidate",
        _set(
            "spec.model",
            {
                "default": {"candidates": [OLLAMA]},
                "roles": {"planner": {"candidates": [{"provider": "gemini", "model": "m"}]}},
            },
        ),
        f"spec.model.roles.planner.candidates[0].provider {PROVIDER_MSG}",
    ),
    (
        "temperature too high",
        _set("spec.model.primary.temperature", 2.5),
        "spec.model.primary.temperature must be a number between 0 and 2",
    ),
    (
        "temperature string",
        _set("spec.model.primary.parameters", {"temperature": "0.7"}),
        "spec.model.primary.parameters.temperature must be a number between 0 and 2",
    ),
    (
        "temperature bool",
        _set("spec.model.primary.parameters", {"temperature": True}),
        "spec.model.primary.parameters.temperature must be a number between 0 and 2",
    ),
    (
        "top_p too high",
        _set("spec.model.primary.parameters", {"top_p": 1.01}),
        "spec.model.primary.parameters.top_p must be a number between 0 and 1",
    ),
    (
        "negative top_p in a candidate",
        _set("spec.model", {"default": {"candidates": [{**OLLAMA, "top_p": -0.1}]}}),
        "spec.model.default.candidates[0].top_p must be a number between 0 and 1",
    ),
    (
        "orchestration list",
        _set("spec.orchestration", []),
        "spec.orchestration must be a mapping",
    ),
    (
        "bad pattern",
        _set("spec.orchestration.pattern", "chain_of_thought"),
        "spec.orchestration.pattern must be one of: react, plan_and_execute, parallel_fan_out, "
        "pipeline, supervisor, swarm, glyph",
    ),
    *[
        (
            f"max_iterations {value!r}",
            _set("spec.orchestration.max_iterations", value),
            "spec.orchestration.max_iterations must be an integer between 1 and 100",
        )
        for value in (0, 101, True, 5.5, "10", None)
    ],
    *[
        (
            f"timeout_seconds {value!r}",
            _set("spec.orchestration.timeout_seconds", value),
            "spec.orchestration.timeout_seconds must be a number between 1 and 300",
        )
        for value in (0, 0.5, 300.5, 301, True, "30")
    ],
    ("tools mapping", _set("spec.tools", {"a": 1}), "spec.tools must be a list"),
    ("tool scalar", _set("spec.tools", ["web"]), "spec.tools[0] must be a mapping"),
    (
        "tool without name",
        _set("spec.tools", [{"type": "builtin"}]),
        "spec.tools[0].name is required",
    ),
    (
        "tool blank name",
        _set("spec.tools", [{"name": "", "type": "builtin"}]),
        "spec.tools[0].name must be a non-empty string",
    ),
    ("tool without type", _set("spec.tools", [{"name": "a"}]), "spec.tools[0].type is required"),
    (
        "tool bad type",
        _set("spec.tools", [{"name": "a", "type": "builtin"}, {"name": "b", "type": "mcp"}]),
        "spec.tools[1].type must be one of: builtin, agent, client",
    ),
    (
        "duplicate tool",
        _set(
            "spec.tools",
            [
                {"name": "a", "type": "builtin"},
                {"name": "b", "type": "client"},
                {"name": "a", "type": "agent"},
            ],
        ),
        "spec.tools[2].name duplicates spec.tools[0]",
    ),
    ("identity scalar", _set("spec.identity", "bot"), "spec.identity must be a mapping"),
    (
        # The node refuses to deploy a program under any pattern but glyph.
        "program without glyph",
        _set("spec.program", "answer = 42"),
        'spec.program needs spec.orchestration.pattern "glyph"',
    ),
    (
        "program not a string",
        _both(_set("spec.orchestration", {"pattern": "glyph"}), _set("spec.program", 42)),
        "spec.program must be a non-empty string (a Glyph program)",
    ),
    (
        "display_name number",
        _set("spec.identity.display_name", 5),
        "spec.identity.display_name must be a string",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e, id=name) for name, m, e in SINGLE_VIOLATIONS],
)
def test_each_rule_alone_gives_exactly_its_message(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    spec = example()
    mutate(spec)
    assert validate_agent(spec) == [expected]


VALID_VARIANTS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("version string 1.10", _set("metadata.version", "1.10")),
    ("no version", _delete("metadata.version")),
    ("name 63 chars", _set("metadata.name", "a" + "-" * 61 + "b")),
    ("name one char", _set("metadata.name", "a")),
    ("name digits", _set("metadata.name", "007")),
    ("no orchestration", _delete("spec.orchestration")),
    ("no identity", _delete("spec.identity")),
    (
        "full orchestration",
        _set(
            "spec.orchestration",
            {"pattern": "swarm", "max_iterations": 100, "timeout_seconds": 300.0},
        ),
    ),
    ("max_iterations 1", _set("spec.orchestration.max_iterations", 1)),
    ("max_iterations 5.0 is 5", _set("spec.orchestration.max_iterations", 5.0)),
    ("timeout 1", _set("spec.orchestration.timeout_seconds", 1)),
    ("temperature 0", _set("spec.model.primary.parameters", {"temperature": 0, "top_p": 1})),
    ("temperature 2", _set("spec.model.primary.temperature", 2.0)),
    ("source alias", _set("spec.model.primary", {"source": "openai", "model": "gpt-4o"})),
    *[(f"provider {p}", _set("spec.model.primary.provider", p)) for p in agentspec.PROVIDERS],
    (
        "fallback and routing",
        _set(
            "spec.model",
            {
                "primary": OLLAMA,
                "fallback": {"provider": "openai", "model": "gpt-4o-mini"},
                "routing": {"strategy": "capability_match"},
            },
        ),
    ),
    (
        "per-role shape",
        _set(
            "spec.model",
            {
                "default": {
                    "candidates": [OLLAMA, {"source": "litellm", "model": "openai/gpt-4o"}],
                    "strategy": "round_robin",
                },
                "roles": {"summarizer": {"candidates": [{"source": "centinela", "model": "c"}]}},
            },
        ),
    ),
    (
        "tools of each type",
        _set(
            "spec.tools",
            [
                {"name": "search", "type": "builtin", "config": {"k": 1}},
                {"name": "helper", "type": "agent", "agent": "other"},
                {"name": "ui", "type": "client"},
            ],
        ),
    ),
    ("empty tools", _set("spec.tools", [])),
    # astromesh 0.74.1 accepts glyph (without its extra it runs such an agent as react).
    ("glyph pattern", _set("spec.orchestration.pattern", "glyph")),
    (
        "glyph with a program",
        _both(
            _set("spec.orchestration", {"pattern": "glyph"}), _set("spec.program", "answer = 42")
        ),
    ),
    ("identity without display_name", _set("spec.identity", {"avatar": "x.png"})),
    ("metadata.namespace ignored", _set("metadata.namespace", "someone-else")),
]


@pytest.mark.parametrize("mutate", [pytest.param(m, id=name) for name, m in VALID_VARIANTS])
def test_valid_variants_have_no_errors(mutate: Callable[[dict[str, Any]], None]) -> None:
    spec = example()
    mutate(spec)
    assert validate_agent(spec) == []


def test_six_violations_are_all_reported_at_once() -> None:
    spec = example()
    spec["kind"] = "Agnet"
    spec["metadata"]["name"] = "Bad Name"
    spec["metadata"]["version"] = 2
    spec["spec"]["model"]["primary"]["provider"] = "skynet"
    spec["spec"]["orchestration"]["max_iterations"] = 1000
    spec["spec"]["tools"] = [{"name": "t", "type": "laser"}]
    assert validate_agent(spec) == [
        'kind must be "Agent"',
        RFC1123,
        'metadata.version must be a string (quote it, e.g. "1.0.0")',
        f"spec.model.primary.provider {PROVIDER_MSG}",
        "spec.orchestration.max_iterations must be an integer between 1 and 100",
        "spec.tools[0].type must be one of: builtin, agent, client",
    ]


def test_validation_of_an_empty_mapping_lists_the_required_fields() -> None:
    assert validate_agent({}) == [
        "apiVersion is required",
        "kind is required",
        "metadata is required",
        "spec is required",
    ]


def test_error_list_is_capped() -> None:
    spec = example()
    spec["spec"]["tools"] = [1] * 500
    errors = validate_agent(spec)
    assert len(errors) == MAX_ERRORS
    assert errors[0] == "spec.tools[0] must be a mapping"
    assert errors[-1] == f"... and {500 - MAX_ERRORS + 1} more errors"


def test_validate_never_raises_on_hostile_dicts() -> None:
    cyclic: dict[str, Any] = {"provider": "ollama", "model": "m"}
    cyclic["self"] = cyclic
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(10_000):
        node["x"] = {}
        node = node["x"]
    weird_keys = {1: "a", None: [], (1, 2): {}, "temperature": float("nan")}
    models: list[dict[Any, Any]] = [
        {"primary": cyclic},
        {"primary": OLLAMA, "deep": deep},
        {"primary": OLLAMA, "w": weird_keys},
        {"default": {"candidates": [[], None, {"provider": ["ollama"], "model": {}}]}},
        {"roles": {1: None}, "default": {"candidates": "x"}},
    ]
    for model in models:
        spec = example()
        spec["spec"]["model"] = model
        assert all(isinstance(e, str) for e in validate_agent(spec))
    assert validate_agent({"metadata": {"name": ["x"]}, "spec": {"tools": [{"name": ["x"]}]}})
    assert validate_agent([1, 2]) == [  # type: ignore[arg-type]
        "the body must be a mapping (an Agent spec), not a list"
    ]
    nan_temperature = example()
    nan_temperature["spec"]["model"]["primary"]["temperature"] = float("nan")
    assert validate_agent(nan_temperature) == [
        "spec.model.primary.temperature must be a number between 0 and 2"
    ]


# --------------------------------------------------------------------------------------------
# Endpoints

ENDPOINT_MSG = "must not target a link-local or cloud metadata address"


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("http://169.254.169.254/latest", ENDPOINT_MSG),
        ("http://[fe80::1]:80", ENDPOINT_MSG),
        ("http://[fe80::1%25eth0]/", ENDPOINT_MSG),
        ("http://169.254.1.1:11434", ENDPOINT_MSG),
        ("http://metadata.google.internal/computeMetadata/v1/", ENDPOINT_MSG),
        ("http://METADATA.google.internal./", ENDPOINT_MSG),
        ("http://100.100.100.200/latest/meta-data", ENDPOINT_MSG),
        ("http://[fd00:ec2::254]/latest", ENDPOINT_MSG),
        ("http://[::ffff:169.254.169.254]/", ENDPOINT_MSG),
        ("http://[64:ff9b::a9fe:a9fe]/", ENDPOINT_MSG),
        ("http://2852039166/", ENDPOINT_MSG),
        ("http://0xa9fea9fe/", ENDPOINT_MSG),
        ("http://169.254.43518/", ENDPOINT_MSG),
        ("http://169.254.169.0254/", ENDPOINT_MSG),
        ("http://[2002:a9fe:a9fe::1]/", ENDPOINT_MSG),
        ("http://[fd00:ec2::254%25eth0]/", ENDPOINT_MSG),
        ("http://\uff4d\uff45\uff54\uff41\uff44\uff41\uff54\uff41.google.internal/", ENDPOINT_MSG),
        ("http://user:pw@169.254.169.254/", ENDPOINT_MSG),
        ("ftp://x", "must be an http(s) URL"),
        ("file:///etc/passwd", "must be an http(s) URL"),
        ("ollama:11434", "must be an http(s) URL"),
        ("http://", "must be an http(s) URL with a host"),
        ("http://ollama:99999", "must be a valid http(s) URL"),
        ("http://[::1", "must be a valid http(s) URL"),
        (11434, "must be an http(s) URL"),
    ],
)
def test_bad_endpoints_are_rejected(endpoint: object, message: str) -> None:
    spec = example()
    spec["spec"]["model"]["primary"]["endpoint"] = endpoint
    assert validate_agent(spec) == [f"spec.model.primary.endpoint {message}"]


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://ollama:11434",
        "https://api.openai.com/v1",
        "http://10.0.0.5:11434",
        "http://127.0.0.1:11434",
        "HTTPS://my-resource.openai.azure.com/",
        "http://[2001:db8::1]:8080/v1",
        "http://metadata-service.internal.example.com",
    ],
)
def test_ordinary_endpoints_are_allowed(endpoint: str) -> None:
    spec = example()
    spec["spec"]["model"]["primary"]["endpoint"] = endpoint
    assert validate_agent(spec) == []


def test_endpoints_are_checked_in_every_provider_entry() -> None:
    spec = example()
    bad = "http://169.254.169.254/"
    spec["spec"]["model"] = {
        "default": {"candidates": [OLLAMA, {**OLLAMA, "endpoint": bad}]},
        "roles": {"r": {"candidates": [{**OLLAMA, "endpoint": "gopher://x"}]}},
    }
    assert sorted(validate_agent(spec)) == [
        f"spec.model.default.candidates[1].endpoint {ENDPOINT_MSG}",
        "spec.model.roles.r.candidates[0].endpoint must be an http(s) URL",
    ]


# --------------------------------------------------------------------------------------------
# Bodies: size, encoding, shape


def test_over_one_mib_is_413_before_any_parsing() -> None:
    # Invalid UTF-8 and invalid YAML: any decoding or parsing would have produced a 400.
    huge = b"\xff{[" * (MAX_SPEC_BYTES // 3 + 1)
    for content_type in (YAML, JSON, "text/plain"):
        with pytest.raises(SpecError) as info:
            parse_body(huge, content_type)
        assert info.value.status == 413


def test_exactly_one_mib_is_parsed() -> None:
    body = EXAMPLE + b"#" * (MAX_SPEC_BYTES - len(EXAMPLE))
    assert len(body) == MAX_SPEC_BYTES
    assert parse_body(body, YAML) == example()


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(SpecError) as info:
        parse_body(b"{}", "text/plain")
    assert info.value.status == 415


@pytest.mark.parametrize("content_type", [YAML, JSON])
def test_invalid_utf8_is_400(content_type: str) -> None:
    assert errors_of(b'{"a": "caf\xe9"}', content_type) == [
        "the body is not valid UTF-8 (at byte offset 10)"
    ]


def test_utf8_text_is_kept() -> None:
    assert parse_body('{"a": "café ☕"}'.encode(), JSON) == {"a": "café ☕"}
    assert parse_body("a: café ☕".encode(), YAML) == {"a": "café ☕"}


@pytest.mark.parametrize(
    ("raw", "content_type", "kind"),
    [
        (b"- a\n- b\n", YAML, "a list"),
        (b"just text", YAML, "a string"),
        (b"42", YAML, "a number"),
        (b"null", YAML, "null"),
        (b"~", YAML, "null"),
        (b"", YAML, "null"),
        (b"# only a comment\n", YAML, "null"),
        (b"[1, 2]", JSON, "a list"),
        (b'"text"', JSON, "a string"),
        (b"true", JSON, "a boolean"),
        (b"null", JSON, "null"),
    ],
)
def test_top_level_must_be_a_mapping(raw: bytes, content_type: str, kind: str) -> None:
    assert errors_of(raw, content_type) == [
        f"the body must be a mapping (an Agent spec), not {kind}"
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": ', "invalid JSON at line 1, column 7: Expecting value"),
        (b'{"a": 1]', "invalid JSON at line 1, column 8: Expecting ',' delimiter"),
        (
            b"{'a': 1}",
            "invalid JSON at line 1, column 2: Expecting property name enclosed in double quotes",
        ),
        (b'{"a": 1}\n{"b": 2}', "invalid JSON at line 2, column 1: Extra data"),
        (b"", "invalid JSON at line 1, column 1: Expecting value"),
        (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON: a number is too large"),
    ],
)
def test_malformed_json_is_400_with_position(raw: bytes, message: str) -> None:
    assert errors_of(raw, JSON) == [message]


def test_yaml_syntax_errors_have_line_and_column() -> None:
    [message] = errors_of(b"a: 1\nb: [1, 2\nc: 3\n")
    assert message.startswith("invalid YAML at line 3, column 2: ")
    [message] = errors_of(b"a: 1\n  b: 2\n")
    assert message == (
        "invalid YAML at line 2, column 4: mapping values are not allowed in this context"
    )
    assert errors_of(b"a: \x01") == [
        "invalid YAML at character 4: control characters are not allowed"
    ]
    assert "<unicode string>" not in message


def test_a_byte_order_mark_is_accepted() -> None:
    assert parse_body(b'\xef\xbb\xbf{"a": 1}', JSON) == {"a": 1}
    assert parse_body(b"\xef\xbb\xbfa: 1", YAML) == {"a": 1}


def test_only_one_yaml_document() -> None:
    assert errors_of(b"a: 1\n---\nb: 2\n") == [
        "only one YAML document is allowed; another starts at line 2, column 1"
    ]
    assert parse_body(b"---\na: 1\n...\n", YAML) == {"a": 1}


# --------------------------------------------------------------------------------------------
# Bodies: YAML hazards

BILLION_LAUGHS = b"""\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_billion_laughs_is_rejected_fast() -> None:
    started = time.perf_counter()
    assert errors_of(BILLION_LAUGHS) == ["YAML anchors are not allowed at line 1, column 4"]
    assert time.perf_counter() - started < 0.1


def test_any_anchor_or_alias_is_rejected() -> None:
    assert errors_of(b"a: &x 1\nb: 2\n") == ["YAML anchors are not allowed at line 1, column 4"]
    assert errors_of(b"a: *x\n") == ["YAML aliases are not allowed at line 1, column 4"]
    assert errors_of(b"base: &b {x: 1}\nother:\n  <<: *b\n") == [
        "YAML anchors are not allowed at line 1, column 7"
    ]


def test_python_tags_are_rejected_and_never_executed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []

    def fake_system(*args: Any) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(os, "system", fake_system)
    marker = tmp_path / "pwned"
    for raw in (
        b'a: !!python/object/apply:os.system ["echo pwned"]\n',
        f'a: !!python/object/apply:os.system ["touch {marker}"]\n'.encode(),
        f'!!python/object/apply:os.system ["touch {marker}"]\n'.encode(),
        b"a: !!python/name:os.system\n",
        b"a: !!python/object:collections.OrderedDict {}\n",
    ):
        [message] = errors_of(raw)
        assert "is not allowed" in message
    assert errors_of(b'a: !!python/object/apply:os.system ["echo pwned"]\n') == [
        "YAML tag !!python/object/apply:os.system is not allowed at line 1, column 4"
    ]
    assert calls == []
    assert not marker.exists()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"a: !custom x\n", 'YAML tag "!custom" is not allowed at line 1, column 4'),
        (b"a: !custom {b: 1}\n", 'YAML tag "!custom" is not allowed at line 1, column 4'),
        (b"a: !!binary aGk=\n", "YAML tag !!binary is not allowed at line 1, column 4"),
        (b"a: !!set {x}\n", "YAML tag !!set is not allowed at line 1, column 4"),
        (b"a: !!omap [{x: 1}]\n", "YAML tag !!omap is not allowed at line 1, column 4"),
        (b"a: !!timestamp 2024-01-01\n", "YAML tag !!timestamp is not allowed at line 1, column 4"),
        (b"a: !!str [1]\n", "YAML tag !!str is not allowed at line 1, column 4"),
        (b"a: !!map [1]\n", "YAML tag !!map is not allowed at line 1, column 4"),
        (b"a: !!int abc\n", '"abc" is not a valid !!int at line 1, column 4'),
        (b"a: !!bool maybe\n", '"maybe" is not a valid !!bool at line 1, column 4'),
        (b"a: !!float x\n", '"x" is not a valid !!float at line 1, column 4'),
        (b"a: !!null x\n", '"x" is not a valid !!null at line 1, column 4'),
        (
            b"%TAG !! tag:evil.example,2024:\n---\na: !!str x\n",
            'YAML tag "tag:evil.example,2024:str" is not allowed at line 3, column 4',
        ),
        (
            b"%TAG !e! tag:example.com,2000:\n---\na: !e!thing x\n",
            'YAML tag "tag:example.com,2000:thing" is not allowed at line 3, column 4',
        ),
    ],
)
def test_non_core_tags_are_rejected(raw: bytes, message: str) -> None:
    assert errors_of(raw) == [message]


def test_core_tags_are_accepted() -> None:
    raw = b"a: !!str 1\nb: !!int '7'\nc: !!float 1\nd: !!bool yes\ne: !!null ''\nf: !!seq [1]\n"
    raw += b"g: !!map {x: 1}\ni: !<tag:yaml.org,2002:str> 3\n"
    assert parse_body(raw, YAML) == {
        "a": "1",
        "b": 7,
        "c": 1.0,
        "d": True,
        "e": None,
        "f": [1],
        "g": {"x": 1},
        "i": "3",
    }


@pytest.mark.parametrize(
    ("raw", "content_type", "message"),
    [
        (
            b"a: 1\nb: 2\na: 3\n",
            YAML,
            'duplicate key "a" at line 3, column 1 (first at line 1, column 1)',
        ),
        (
            b"spec:\n  model:\n    primary: {provider: ollama, provider: openai}\n",
            YAML,
            'duplicate key "provider" at line 3, column 33 (first at line 3, column 15)',
        ),
        (
            b"a: 1\n'a': 2\n",
            YAML,
            'duplicate key "a" at line 2, column 1 (first at line 1, column 1)',
        ),
        (b'{"a": 1, "a": 2}', JSON, 'duplicate key "a" in the body'),
        (
            b'{"spec": {"tools": [{"name": "x", "name": "y"}]}}',
            JSON,
            'duplicate key "name" in spec.tools[0]',
        ),
    ],
)
def test_duplicate_keys_are_rejected(raw: bytes, content_type: str, message: str) -> None:
    assert errors_of(raw, content_type) == [message]


def test_all_duplicate_keys_are_reported_together() -> None:
    assert len(errors_of(b"a: 1\na: 2\nb: {c: 1, c: 2}\n")) == 2
    assert len(errors_of(b'{"a": 1, "a": 2, "b": {"c": 1, "c": 2}}', JSON)) == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"1: x\n", "mapping keys must be strings at line 1, column 1 (quote the key)"),
        (b"yes: x\n", "mapping keys must be strings at line 1, column 1 (quote the key)"),
        (b"null: x\n", "mapping keys must be strings at line 1, column 1 (quote the key)"),
        (b"a:\n  1.5: x\n", "mapping keys must be strings at line 2, column 3 (quote the key)"),
        (b"? [a]\n: b\n", "mapping keys must be strings at line 1, column 3 (quote the key)"),
        (b"<<: {a: 1}\n", "YAML merge keys (<<) are not supported at line 1, column 1"),
    ],
)
def test_non_string_keys_are_rejected(raw: bytes, message: str) -> None:
    assert errors_of(raw) == [message]


def test_quoted_keys_are_strings() -> None:
    assert parse_body(b"'1': x\n\"yes\": y\n'<<': z\n", YAML) == {"1": "x", "yes": "y", "<<": "z"}


def _nested_yaml(depth: int) -> bytes:
    lines = [f"{'  ' * level}k:" for level in range(depth - 1)]
    lines.append(f"{'  ' * (depth - 1)}k: leaf")
    return "\n".join(lines).encode()


def _nested_json(depth: int) -> bytes:
    return (b'{"k": ' * depth) + b"0" + (b"}" * depth)


def test_depth_limit_yaml() -> None:
    value = parse_body(_nested_yaml(MAX_DEPTH), YAML)
    for _ in range(MAX_DEPTH - 1):
        value = value["k"]
    assert value == {"k": "leaf"}
    assert errors_of(_nested_yaml(MAX_DEPTH + 1)) == [
        f"the body is nested deeper than {MAX_DEPTH} levels at line {MAX_DEPTH + 1}, "
        f"column {2 * MAX_DEPTH + 1}"
    ]


def test_depth_limit_yaml_counts_sequences_too() -> None:
    ok = b"a: " + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)
    assert parse_body(ok, YAML)["a"]
    deep = b"a: " + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    [message] = errors_of(deep)
    assert message.startswith(f"the body is nested deeper than {MAX_DEPTH} levels")


def test_depth_limit_json() -> None:
    assert parse_body(_nested_json(MAX_DEPTH), JSON)["k"]["k"]
    deep_path = ".".join(["k"] * MAX_DEPTH)
    assert errors_of(_nested_json(MAX_DEPTH + 1), JSON) == [
        f"the body is nested deeper than {MAX_DEPTH} levels at {deep_path}"
    ]
    ok_list = b'{"a": ' + b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1) + b"}"
    assert parse_body(ok_list, JSON)
    deep_list = b'{"a": ' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"
    assert len(errors_of(deep_list, JSON)) == 1


def test_pathologically_deep_bodies_are_400_not_a_crash() -> None:
    half = MAX_SPEC_BYTES // 2 - 10
    # libyaml gives up at its own limit (1000 levels) before our composer sees the events.
    [message] = errors_of(b"a: " + b"[" * half + b"]" * half)
    assert "nest" in message
    assert errors_of(b'{"a": ' + b"[" * half + b"]" * half + b"}", JSON) == [
        f"the body is nested deeper than {MAX_DEPTH} levels"
    ]


# --------------------------------------------------------------------------------------------
# Bodies: values


def test_version_number_is_an_error_and_quoted_version_is_not() -> None:
    unquoted = EXAMPLE.replace(b'version: "1.0.0"', b"version: 1.10")
    spec = parse_body(unquoted, YAML)
    assert spec["metadata"]["version"] == 1.1
    assert validate_agent(spec) == ['metadata.version must be a string (quote it, e.g. "1.0.0")']
    assert agent_version(spec) is None
    quoted = EXAMPLE.replace(b'version: "1.0.0"', b'version: "1.10"')
    spec = parse_body(quoted, YAML)
    assert validate_agent(spec) == []
    assert agent_version(spec) == "1.10"


def test_dates_stay_strings() -> None:
    raw = b"d: 2024-01-01\nt: 2024-01-01T10:00:00Z\ns: 2001-12-14 21:59:43.10 -5\n"
    value = parse_body(raw, YAML)
    assert value == {
        "d": "2024-01-01",
        "t": "2024-01-01T10:00:00Z",
        "s": "2001-12-14 21:59:43.10 -5",
    }
    json.dumps(value, allow_nan=False)


def test_yaml_scalars_keep_safe_load_typing() -> None:
    raw = b"i: 42\nh: 0x1F\nf: 1.5\nb: true\nn: ~\ns: hello\nv: '='\ne: =\nm: llama3.1:8b\n"
    assert parse_body(raw, YAML) == {
        "i": 42,
        "h": 31,
        "f": 1.5,
        "b": True,
        "n": None,
        "s": "hello",
        "v": "=",
        "e": "=",
        "m": "llama3.1:8b",
    }


@pytest.mark.parametrize(
    ("raw", "content_type", "message"),
    [
        (b"a: .inf\n", YAML, "a must be a finite number"),
        (b"a: [.nan]\n", YAML, "a[0] must be a finite number"),
        (b'{"a": NaN}', JSON, "a must be a finite number"),
        (b'{"a": {"b": -Infinity}}', JSON, "a.b must be a finite number"),
        (b'{"a": 1e400}', JSON, "a must be a finite number"),
        (b"a: 9223372036854775808\n", YAML, "a is out of the 64-bit integer range"),
        (b'{"a": -9223372036854775809}', JSON, "a is out of the 64-bit integer range"),
        (b"a: " + b"1" * 200 + b"\n", YAML, "integer out of range at line 1, column 4"),
        (b'{"a": "\\ud800"}', JSON, "a contains an invalid Unicode surrogate"),
        (b'{"\\udfff": 1}', JSON, "the body has a key with an invalid Unicode surrogate"),
    ],
)
def test_values_kubernetes_cannot_store_are_rejected(
    raw: bytes, content_type: str, message: str
) -> None:
    assert errors_of(raw, content_type) == [message]


def test_int64_bounds_are_accepted() -> None:
    raw = b'{"a": 9223372036854775807, "b": -9223372036854775808}'
    assert parse_body(raw, JSON) == {"a": 2**63 - 1, "b": -(2**63)}


def test_unknown_keys_are_preserved() -> None:
    raw = EXAMPLE + (
        b"  memory:\n"
        b"    conversational: {backend: redis, connection: {url: 'redis://r:6379'}}\n"
        b"  skills:\n"
        b"    - {id: s1, name: Search, description: finds, tags: [a, b]}\n"
        b"  x-custom: {nested: [1, 2.5, null, true, 'text']}\n"
    )
    spec = parse_body(raw, YAML)
    assert validate_agent(spec) == []
    assert spec["spec"]["memory"] == {
        "conversational": {"backend": "redis", "connection": {"url": "redis://r:6379"}}
    }
    assert spec["spec"]["skills"] == [
        {"id": "s1", "name": "Search", "description": "finds", "tags": ["a", "b"]}
    ]
    assert spec["spec"]["x-custom"] == {"nested": [1, 2.5, None, True, "text"]}
    assert parse_body(json.dumps(spec).encode(), JSON) == spec


def test_json_parsed_as_json_not_yaml() -> None:
    # YAML 1.1 would read 1e3 as a string; JSON as a number.
    assert parse_body(b'{"a": 1e3, "b": "yes"}', JSON) == {"a": 1000.0, "b": "yes"}


def test_parse_errors_are_bounded_and_encodable() -> None:
    raw = b"\n".join(b"k: %d" % i for i in range(1000))
    errors = errors_of(raw)
    assert len(errors) == MAX_ERRORS
    long_key = "x" * 10_000
    [message] = errors_of(f'{{"{long_key}": 1, "{long_key}": 2}}'.encode(), JSON)
    assert len(message) < 200
    [message] = errors_of(b'{"\\udfff": 1, "\\udfff": 2, "a": "\\ud800"}', JSON)[-1:]
    message.encode("utf-8")


# --------------------------------------------------------------------------------------------
# The pure-Python YAML fallback behaves the same


@pytest.mark.parametrize(
    "raw",
    [
        BILLION_LAUGHS,
        b"a: !custom x\n",
        b'a: !!python/object/apply:os.system ["echo pwned"]\n',
        b"a: 1\na: 2\n",
        b"1: x\n",
        _nested_yaml(MAX_DEPTH + 1),
        b"a: [1\n",
        b"a: 1\n---\nb: 2\n",
    ],
)
def test_pure_python_loader_rejects_the_same_bodies(raw: bytes) -> None:
    fast = errors_of(raw)
    with pytest.raises(SpecError) as info:
        specbody._load_yaml(raw.decode(), specbody._PyStrictLoader)
    if not fast[0].startswith("invalid YAML"):  # wording of syntax errors differs
        assert info.value.errors == fast


def test_pure_python_loader_parses_the_same_values() -> None:
    raw = EXAMPLE + b"  when: 2024-01-01\n  n: [1, 0x10, 1.5, yes, ~]\n"
    assert specbody._load_yaml(raw.decode(), specbody._PyStrictLoader) == parse_body(raw, YAML)


# --------------------------------------------------------------------------------------------
# Names


def test_name_helpers() -> None:
    assert valid_name("support-bot")
    assert valid_name("a" * 63)
    for bad in ("", "a" * 64, "Bot", "bot\n", "bot/x", "bot.x", "-a", "a-", "ä", "a b"):
        assert not valid_name(bad), bad
    assert not valid_name(7)
    # Anchored at both ends, so match() and search() are as safe as fullmatch().
    assert NAME_RE.match("bot/../x") is None
    assert NAME_RE.search("../bot") is None
    assert agent_name({"metadata": {"name": "Bad"}}) is None
    assert agent_name({"metadata": "x"}) is None
    assert agent_name({}) is None
    assert agent_version({"metadata": {"version": 1.1}}) is None


def test_spec_error_carries_status_and_errors() -> None:
    error = SpecError(400, ["a is required", "b must be a string"])
    assert error.status == 400
    assert error.errors == ["a is required", "b must be a string"]
    assert str(error) == "a is required; b must be a string"
