"""Strict parsing and full validation of astromesh/v1 Agent specs.

Two pure stages, run before anything reaches Kubernetes or a node:

* `parse_body` turns a raw request body (YAML or JSON) into a plain, JSON-serialisable dict,
  or raises `SpecError` (413 over the size cap, 400 for anything unsafe or malformed).
* `validate_agent` lists every rule violation of /work/shared/spec/agent-and-node.md at once, as
  ``"path message"`` strings, so the API can answer one ``400 {"errors": [...]}``.

YAML goes through a composer of our own on top of libyaml's event stream: aliases, anchors,
depth, tags and keys are checked on events and nodes *before* any Python value is constructed,
so a hostile document is rejected without ever being expanded or instantiated.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
import unicodedata
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingEndEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

__all__ = [
    "MAX_DEPTH",
    "MAX_ERRORS",
    "MAX_SPEC_BYTES",
    "NAME_RE",
    "ORCHESTRATION_PATTERNS",
    "PROVIDERS",
    "ROUTING_STRATEGIES",
    "TOOL_TYPES",
    "SpecError",
    "agent_name",
    "agent_version",
    "parse_body",
    "valid_name",
    "validate_agent",
]

MAX_SPEC_BYTES = 1024 * 1024
MAX_DEPTH = 64
# A 1 MiB body can hold hundreds of thousands of bad entries; echoing one message for each
# would turn a small request into a response many times its size.
MAX_ERRORS = 100

API_VERSION = "astromesh/v1"
KIND = "Agent"

# `\Z` rather than `$`: `$` also matches before a trailing newline, so "bot\n" would pass, and
# callers using NAME_RE.match/search stay safe because both ends are anchored.
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

# The providers the node builds; litellm and centinela only exist when the node has those extras,
# but they are legitimate, so they are accepted. The node silently skips anything else.
PROVIDERS = ("ollama", "openai", "openai_compat", "azure_openai", "litellm", "centinela")
# `glyph` runs a `spec.program`; a node without the glyph extra runs a program-less glyph agent
# as react (with a warning in its log) and refuses one with a program at deploy, which the
# agent's status reports. Any other pattern with a program is refused here (below).
GLYPH = "glyph"
ORCHESTRATION_PATTERNS = (
    "react",
    "plan_and_execute",
    "parallel_fan_out",
    "pipeline",
    "supervisor",
    "swarm",
    GLYPH,
)
ROUTING_STRATEGIES = (
    "cost_optimized",
    "latency_optimized",
    "quality_first",
    "round_robin",
    "capability_match",
)
TOOL_TYPES = ("builtin", "agent", "client")

YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml"})
JSON_MEDIA_TYPE = "application/json"

# Kubernetes stores custom resources as JSON and decodes integers as int64.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

# Link-local ranges are blocked wholesale (169.254.169.254 lives there); these are the metadata
# services that sit elsewhere: Alibaba, AWS IMDS over IPv6, Azure WireServer, Oracle's legacy IMDS.
_METADATA_IPS = frozenset(
    ipaddress.ip_address(a)
    for a in ("100.100.100.200", "fd00:ec2::254", "168.63.129.16", "192.0.0.192")
)
_METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# IPv6 forms that carry an IPv4 address in their low 32 bits and reach it through translation.
_V4_CARRYING_NETS = tuple(
    ipaddress.ip_network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "::/96")
)


class SpecError(Exception):
    """A body that cannot become an Agent spec: `status` is 400 or 413 (415 for a media type
    this module does not parse) and `errors` the messages for the client."""

    status: int
    errors: list[str]

    def __init__(self, status: int, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.status = status
        self.errors = errors


# --------------------------------------------------------------------------------------------
# Message helpers


def _show(text: str, limit: int = 60) -> str:
    """Quote user-controlled text for a message: bounded, and free of lone surrogates, which
    could not be encoded into the UTF-8 response."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return json.dumps(text.encode("utf-8", "backslashreplace").decode("utf-8"), ensure_ascii=False)


def _segment(key: object) -> str:
    """A mapping key as a path segment; keys are normally strings, but validate_agent accepts
    any dict and must not fail while describing one."""
    if isinstance(key, str):
        if len(key) > 60:
            key = key[:60] + "…"
        return key.encode("utf-8", "backslashreplace").decode("utf-8")
    if key is None or isinstance(key, bool | int | float):
        return repr(key)
    return f"<{type(key).__name__}>"


def _child(path: str, key: object) -> str:
    segment = _segment(key)
    return f"{path}.{segment}" if path else segment


def _where(path: str) -> str:
    return path or "the body"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _one_of(values: tuple[str, ...]) -> str:
    return "must be one of: " + ", ".join(values)


# --------------------------------------------------------------------------------------------
# YAML: a strict loader

_TAG_PREFIX = "tag:yaml.org,2002:"
_STR = _TAG_PREFIX + "str"
_INT = _TAG_PREFIX + "int"
_FLOAT = _TAG_PREFIX + "float"
_BOOL = _TAG_PREFIX + "bool"
_NULL = _TAG_PREFIX + "null"
_SEQ = _TAG_PREFIX + "seq"
_MAP = _TAG_PREFIX + "map"
_MERGE = _TAG_PREFIX + "merge"
_SCALAR_TAGS = frozenset({_STR, _INT, _FLOAT, _BOOL, _NULL})

# safe_load's implicit typing minus timestamps (a date must stay a JSON string for the custom
# resource) and `=` (the `value` tag, which SafeConstructor cannot even build). `<<` still
# resolves to `merge` so it can be rejected by name instead of silently becoming a plain key.
_IMPLICIT_TAGS = _SCALAR_TAGS | {_MERGE}
_CORE_IMPLICIT_RESOLVERS = {
    first: kept
    for first, resolvers in Resolver.yaml_implicit_resolvers.items()
    if (kept := [(tag, regexp) for tag, regexp in resolvers if tag in _IMPLICIT_TAGS])
}
# Defence in depth: even if a tag slipped past the composer, nothing beyond the JSON-shaped
# core types could be constructed (no !!binary bytes, !!set, !!timestamp, !!omap ...).
_CORE_CONSTRUCTORS = {
    tag: constructor
    for tag, constructor in SafeConstructor.yaml_constructors.items()
    if tag is None or tag in _SCALAR_TAGS or tag in (_SEQ, _MAP)
}
# Large enough for any int64 in any YAML notation (binary with underscores included), small
# enough that int() never meets Python's 4300-digit conversion limit.
_MAX_INT_TEXT = 100


class _Loader(Protocol):
    """What the composer needs from a PyYAML loader; CSafeLoader and SafeLoader both fit."""

    def get_event(self) -> Any: ...
    def peek_event(self) -> Any: ...
    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any: ...
    def construct_document(self, node: Any) -> Any: ...
    def dispose(self) -> None: ...


class _PyStrictLoader(yaml.SafeLoader):
    """The pure-Python parser, used when PyYAML was built without libyaml."""

    yaml_implicit_resolvers = _CORE_IMPLICIT_RESOLVERS
    yaml_constructors = _CORE_CONSTRUCTORS


_YAML_LOADER: Callable[[str], _Loader]
if yaml.__with_libyaml__:

    class _CStrictLoader(yaml.CSafeLoader):
        """libyaml's scanner and parser (much faster on a 1 MiB body); composition is ours."""

        yaml_implicit_resolvers = _CORE_IMPLICIT_RESOLVERS
        yaml_constructors = _CORE_CONSTRUCTORS

    _YAML_LOADER = _CStrictLoader
else:  # pragma: no cover - depends on how PyYAML was built
    _YAML_LOADER = _PyStrictLoader


class _Fatal(Exception):
    """A problem after which composing further is unsafe or pointless."""


def _mark(mark: object) -> Any:
    # libyaml's marks and the pure parser's carry the same fields but have distinct stub types.
    return mark


def _at(mark: Any) -> str:
    if mark is None:
        return "in the body"
    return f"at line {mark.line + 1}, column {mark.column + 1}"


def _show_tag(tag: str) -> str:
    return "!!" + tag[len(_TAG_PREFIX) :] if tag.startswith(_TAG_PREFIX) else _show(tag)


class _Composer:
    """Builds a node graph from parser events, refusing what safe_load would accept but an
    API must not: aliases and anchors, nesting beyond MAX_DEPTH, non-core tags, non-string and
    duplicate keys. Fatal problems stop at once; the rest are collected so the client sees them
    together."""

    def __init__(self, loader: _Loader) -> None:
        self._loader = loader
        self.errors: list[str] = []

    def compose(self) -> Node | None:
        """The single document of the stream, or None for an empty stream."""
        loader = self._loader
        loader.get_event()  # StreamStartEvent
        if isinstance(loader.peek_event(), StreamEndEvent):
            return None
        loader.get_event()  # DocumentStartEvent
        node = self._node(0)
        loader.get_event()  # DocumentEndEvent
        following = loader.peek_event()
        if not isinstance(following, StreamEndEvent):
            raise _Fatal(
                f"only one YAML document is allowed; another starts {_at(following.start_mark)}"
            )
        return node

    def _node(self, depth: int) -> Node:
        event: NodeEvent = self._loader.peek_event()
        # Reject anchors as well as aliases: an anchor is only ever useful to an alias, and
        # refusing both keeps expansion bombs ("billion laughs") out at the first event.
        if isinstance(event, AliasEvent):
            raise _Fatal(f"YAML aliases are not allowed {_at(event.start_mark)}")
        if event.anchor is not None:
            raise _Fatal(f"YAML anchors are not allowed {_at(event.start_mark)}")
        if isinstance(event, ScalarEvent):
            self._loader.get_event()
            return ScalarNode(
                self._scalar_tag(event),
                event.value,
                _mark(event.start_mark),
                _mark(event.end_mark),
                event.style,
            )
        if depth + 1 > MAX_DEPTH:
            raise _Fatal(
                f"the body is nested deeper than {MAX_DEPTH} levels {_at(event.start_mark)}"
            )
        if isinstance(event, SequenceStartEvent):
            return self._sequence(event, depth + 1)
        if isinstance(event, MappingStartEvent):
            return self._mapping(event, depth + 1)
        # The parser emits nothing else in a node position; this keeps a surprise a 400.
        raise _Fatal(f"unexpected YAML event {_at(event.start_mark)}")  # pragma: no cover

    def _scalar_tag(self, event: ScalarEvent) -> str:
        tag = event.tag
        if tag is None or tag == "!":
            resolved: str = self._loader.resolve(ScalarNode, event.value, event.implicit)
            if resolved == _INT and len(event.value) > _MAX_INT_TEXT:
                self.errors.append(f"integer out of range {_at(event.start_mark)}")
                return _STR
            return resolved
        if tag not in _SCALAR_TAGS:
            self.errors.append(f"YAML tag {_show_tag(tag)} is not allowed {_at(event.start_mark)}")
            return _STR
        if tag != _STR:
            # SafeConstructor would raise a bare ValueError/KeyError on `!!int abc` or
            # `!!bool maybe`; check the text against the same patterns implicit typing uses.
            implied = self._loader.resolve(ScalarNode, event.value, (True, False))
            if implied != tag and not (tag == _FLOAT and implied == _INT):
                self.errors.append(
                    f"{_show(event.value)} is not a valid {_show_tag(tag)} {_at(event.start_mark)}"
                )
                return _STR
            if implied == _INT and len(event.value) > _MAX_INT_TEXT:
                self.errors.append(f"integer out of range {_at(event.start_mark)}")
                return _STR
        return tag

    def _collection_tag(self, event: MappingStartEvent | SequenceStartEvent, default: str) -> str:
        tag = event.tag
        if tag is not None and tag not in ("!", default):
            self.errors.append(f"YAML tag {_show_tag(tag)} is not allowed {_at(event.start_mark)}")
        return default

    def _sequence(self, start: SequenceStartEvent, depth: int) -> SequenceNode:
        loader = self._loader
        loader.get_event()
        node = SequenceNode(
            self._collection_tag(start, _SEQ), [], _mark(start.start_mark), None, start.flow_style
        )
        while not isinstance(loader.peek_event(), SequenceEndEvent):
            node.value.append(self._node(depth))
        node.end_mark = loader.get_event().end_mark
        return node

    def _mapping(self, start: MappingStartEvent, depth: int) -> MappingNode:
        loader = self._loader
        loader.get_event()
        node = MappingNode(
            self._collection_tag(start, _MAP), [], _mark(start.start_mark), None, start.flow_style
        )
        seen: dict[str, Any] = {}
        while not isinstance(loader.peek_event(), MappingEndEvent):
            key = self._node(depth)
            value = self._node(depth)
            node.value.append((key, value))
            if key.tag == _MERGE:
                self.errors.append(f"YAML merge keys (<<) are not supported {_at(key.start_mark)}")
            elif not isinstance(key, ScalarNode) or key.tag != _STR:
                self.errors.append(
                    f"mapping keys must be strings {_at(key.start_mark)} (quote the key)"
                )
            elif key.value in seen:
                self.errors.append(
                    f"duplicate key {_show(key.value)} {_at(key.start_mark)} "
                    f"(first {_at(seen[key.value])})"
                )
            else:
                seen[key.value] = key.start_mark
        node.end_mark = loader.get_event().end_mark
        return node


def _yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        message = f"invalid YAML {_at(exc.problem_mark)}: {exc.problem or 'syntax error'}"
        return f"{message} ({exc.context})" if exc.context else message
    if isinstance(exc, yaml.reader.ReaderError):
        return f"invalid YAML at character {exc.position + 1}: {exc.reason}"
    return "invalid YAML"


def _load_yaml(text: str, loader_factory: Callable[[str], _Loader] = _YAML_LOADER) -> Any:
    loader = loader_factory(text)
    try:
        composer = _Composer(loader)
        node = composer.compose()
        if composer.errors:
            raise SpecError(400, _cap(composer.errors))
        return None if node is None else loader.construct_document(node)
    except _Fatal as exc:
        raise SpecError(400, [str(exc)]) from exc
    except yaml.YAMLError as exc:
        raise SpecError(400, [_yaml_error(exc)]) from exc
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        # The composer already checks every explicit tag's text, so this is a backstop for a
        # constructor corner case; it must still be a 400, never a 500.
        raise SpecError(400, ["invalid YAML value"]) from exc
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# JSON


class _JsonObject(dict[str, Any]):
    """A JSON object that had duplicate keys. The hook that builds objects cannot know where
    it is, so the duplicates are reported by the tree check, which does."""

    duplicates: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    marked = _JsonObject(result)
    seen: set[str] = set()
    marked.duplicates = []
    for key, _ in pairs:
        if key in seen:
            marked.duplicates.append(key)
        seen.add(key)
    return marked


def _load_json(text: str) -> Any:
    # RFC 8259 lets a parser ignore a leading byte order mark; json.loads refuses it.
    text = text.removeprefix("\ufeff")
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise SpecError(
            400, [f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
        ) from exc
    except RecursionError as exc:
        # The C decoder recurses per level; the tree check applies the real cap afterwards.
        raise SpecError(400, [f"the body is nested deeper than {MAX_DEPTH} levels"]) from exc
    except ValueError as exc:
        # int() refuses more than 4300 digits; the message would only be noise to a client.
        raise SpecError(400, ["invalid JSON: a number is too large"]) from exc


# --------------------------------------------------------------------------------------------
# Checks shared by both formats


def _check_tree(root: dict[str, Any] | list[Any]) -> list[str]:
    """What both parsers let through but the custom resource cannot hold: nesting beyond
    MAX_DEPTH (JSON), duplicate JSON keys, non-finite floats, integers outside int64, strings
    with lone surrogates (valid in JSON escapes, unencodable as UTF-8)."""
    errors: list[str] = []

    # Recursion stops one level past MAX_DEPTH, so it stays shallow whatever json.loads built.
    def visit(value: Any, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            errors.append(f"the body is nested deeper than {MAX_DEPTH} levels at {path}")
            return
        if isinstance(value, dict):
            if isinstance(value, _JsonObject):
                errors.extend(
                    f"duplicate key {_show(k)} in {_where(path)}" for k in value.duplicates
                )
            for key, child in value.items():
                if not isinstance(key, str):  # pragma: no cover - both loaders enforce this
                    errors.append(f"{_where(path)} has a non-string key")
                elif not _encodable(key):
                    errors.append(f"{_where(path)} has a key with an invalid Unicode surrogate")
                if isinstance(child, dict | list):
                    visit(child, _child(path, key), depth + 1)
                elif problem := _leaf_problem(child):
                    errors.append(f"{_child(path, key)} {problem}")
        else:
            for index, child in enumerate(value):
                if isinstance(child, dict | list):
                    visit(child, f"{path}[{index}]", depth + 1)
                elif problem := _leaf_problem(child):
                    errors.append(f"{path}[{index}] {problem}")

    visit(root, "", 1)
    return errors


def _leaf_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return None if _encodable(value) else "contains an invalid Unicode surrogate"
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if _INT64_MIN <= value <= _INT64_MAX else "is out of the 64-bit integer range"
    if isinstance(value, float):
        return None if math.isfinite(value) else "must be a finite number"
    return f"has an unsupported type {type(value).__name__}"  # pragma: no cover


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _cap(errors: list[str]) -> list[str]:
    if len(errors) <= MAX_ERRORS:
        return errors
    return [*errors[: MAX_ERRORS - 1], f"... and {len(errors) - MAX_ERRORS + 1} more errors"]


def parse_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """Parse a request body into an Agent spec mapping, strictly.

    `content_type` is the media type (parameters are ignored if present): application/yaml,
    application/x-yaml or application/json. Raises SpecError 413 when `raw` exceeds
    MAX_SPEC_BYTES (checked before anything is decoded), 415 for another media type, and 400 for
    invalid UTF-8, syntax errors, YAML aliases/anchors, nesting deeper than MAX_DEPTH, duplicate
    keys, non-core YAML tags, non-string keys, values JSON or Kubernetes cannot hold, and a top
    level that is not a mapping. YAML dates and timestamps stay strings.
    """
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(413, [f"the body exceeds {MAX_SPEC_BYTES} bytes"])
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in YAML_MEDIA_TYPES and media_type != JSON_MEDIA_TYPE:
        raise SpecError(
            415,
            [
                f"unsupported content type {_show(media_type)}; use application/yaml, "
                "application/x-yaml or application/json"
            ],
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(400, [f"the body is not valid UTF-8 (at byte offset {exc.start})"]) from exc
    value = _load_json(text) if media_type == JSON_MEDIA_TYPE else _load_yaml(text)
    if not isinstance(value, dict):
        raise SpecError(400, [f"the body must be a mapping (an Agent spec), not {_kind(value)}"])
    errors = _check_tree(value)
    if errors:
        raise SpecError(400, _cap(errors))
    return value


# --------------------------------------------------------------------------------------------
# Validation


def valid_name(name: object) -> bool:
    """Whether `name` is an RFC 1123 label, the only agent name Kubernetes and the node accept."""
    return isinstance(name, str) and NAME_RE.match(name) is not None


def agent_name(spec: Any) -> str | None:
    """`metadata.name` when it is a valid agent name, else None."""
    metadata = spec.get("metadata") if isinstance(spec, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and valid_name(name) else None


def agent_version(spec: Any) -> str | None:
    """`metadata.version` when it is a string, else None."""
    metadata = spec.get("metadata") if isinstance(spec, dict) else None
    version = metadata.get("version") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) else None


def _is_number(value: object) -> bool:
    # bool is an int subclass; `max_iterations: true` must not read as 1.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _non_empty_string(value: object) -> bool:
    return isinstance(value, str) and value.strip() != ""


class _Validator:
    """Collects every violation of one spec; each check reports and carries on."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append(f"{path} {message}")

    def mapping(self, parent: dict[Any, Any], key: str, path: str, *, required: bool) -> Any:
        """parent[key] if it is a mapping; None (after reporting why) otherwise."""
        if key not in parent:
            if required:
                self.add(path, "is required")
            return None
        value = parent[key]
        if not isinstance(value, dict):
            self.add(path, "must be a mapping")
            return None
        return value

    def choice(self, parent: dict[Any, Any], key: str, path: str, allowed: tuple[str, ...]) -> None:
        if key in parent and not (isinstance(parent[key], str) and parent[key] in allowed):
            self.add(path, _one_of(allowed))

    def run(self, spec: dict[Any, Any]) -> list[str]:
        if spec.get("apiVersion") != API_VERSION:
            if "apiVersion" in spec:
                self.add("apiVersion", f"must be {_show(API_VERSION)}")
            else:
                self.add("apiVersion", "is required")
        if spec.get("kind") != KIND:
            if "kind" in spec:
                self.add("kind", f"must be {_show(KIND)}")
            else:
                self.add("kind", "is required")
        metadata = self.mapping(spec, "metadata", "metadata", required=True)
        if metadata is not None:
            self.metadata(metadata)
        body = self.mapping(spec, "spec", "spec", required=True)
        if body is not None:
            self.spec(body)
        return self.errors

    def metadata(self, metadata: dict[Any, Any]) -> None:
        if "name" not in metadata:
            self.add("metadata.name", "is required")
        elif not isinstance(metadata["name"], str):
            self.add("metadata.name", "must be a string")
        elif not valid_name(metadata["name"]):
            self.add(
                "metadata.name",
                "must be an RFC 1123 label: at most 63 lowercase letters, digits and '-', "
                "starting and ending with a letter or digit",
            )
        if "version" in metadata and not isinstance(metadata["version"], str):
            # YAML reads `version: 1.10` as the float 1.1: refuse it rather than store the wrong
            # version, and say how to fix it.
            self.add("metadata.version", 'must be a string (quote it, e.g. "1.0.0")')

    def spec(self, spec: dict[Any, Any]) -> None:
        identity = self.mapping(spec, "identity", "spec.identity", required=False)
        display_name = (identity or {}).get("display_name", "")
        if not isinstance(display_name, str):
            self.add("spec.identity.display_name", "must be a string")
        model = self.mapping(spec, "model", "spec.model", required=True)
        if model is not None:
            self.model(model)
        orchestration = self.mapping(spec, "orchestration", "spec.orchestration", required=False)
        if orchestration is not None:
            self.orchestration(orchestration)
        if "program" in spec:
            self.program(spec["program"], (orchestration or {}).get("pattern", "react"))
        if "tools" in spec:
            self.tools(spec["tools"])

    def model(self, model: dict[Any, Any]) -> None:
        path = "spec.model"
        # The node switches to the per-role schema as soon as `default` or `roles` appears and
        # then ignores primary/fallback/routing without a word, so a mix is refused.
        legacy = "primary" in model or "fallback" in model
        per_role = "default" in model or "roles" in model
        if legacy and per_role:
            self.add(path, "must use either primary/fallback or default/roles, not both")
        elif per_role:
            default = self.mapping(model, "default", f"{path}.default", required=True)
            if default is not None:
                self.role(default, f"{path}.default")
            roles = self.mapping(model, "roles", f"{path}.roles", required=False)
            for name, role in (roles or {}).items():
                role_path = _child(f"{path}.roles", name)
                if isinstance(role, dict):
                    self.role(role, role_path)
                else:
                    self.add(role_path, "must be a mapping")
        elif "primary" not in model:
            self.add(path, "must define primary (provider and model) or default (candidates)")
        if legacy and not per_role:
            self.entry(model, "primary", f"{path}.primary", required=True)
            self.entry(model, "fallback", f"{path}.fallback", required=False)
            extra = self.mapping(model, "extra", f"{path}.extra", required=False)
            for name in extra or {}:
                self.entry(extra, name, _child(f"{path}.extra", name), required=True)
            routing = self.mapping(model, "routing", f"{path}.routing", required=False)
            if routing is not None:
                self.choice(routing, "strategy", f"{path}.routing.strategy", ROUTING_STRATEGIES)
        self.model_subtree(model, path)

    def role(self, role: dict[Any, Any], path: str) -> None:
        candidates = role.get("candidates")
        if "candidates" not in role:
            self.add(f"{path}.candidates", "is required")
        elif not isinstance(candidates, list) or not candidates:
            self.add(f"{path}.candidates", "must be a non-empty list")
        else:
            for index, candidate in enumerate(candidates):
                self.provider_entry(candidate, f"{path}.candidates[{index}]")
        self.choice(role, "strategy", f"{path}.strategy", ROUTING_STRATEGIES)

    def entry(self, parent: dict[Any, Any], key: Any, path: str, *, required: bool) -> None:
        if key in parent:
            self.provider_entry(parent[key], path)
        elif required:
            self.add(path, "is required")

    def provider_entry(self, entry: object, path: str) -> None:
        if not isinstance(entry, dict):
            self.add(path, "must be a mapping")
            return
        # The node reads `source` first and `provider` as its legacy alias; both select an
        # adapter, so both must name one the node builds.
        if "provider" not in entry and "source" not in entry:
            self.add(f"{path}.provider", "is required")
        for key in ("provider", "source"):
            if key in entry and not (isinstance(entry[key], str) and entry[key] in PROVIDERS):
                self.add(f"{path}.{key}", _one_of(PROVIDERS))
        if "model" not in entry:
            self.add(f"{path}.model", "is required")
        elif not _non_empty_string(entry["model"]):
            self.add(f"{path}.model", "must be a non-empty string")

    def model_subtree(self, model: dict[Any, Any], path: str) -> None:
        """Sampling parameters and endpoints, wherever they sit under spec.model: the node
        accepts them both at the top of a provider entry and under its `parameters`."""
        # Iterative with an identity set: validate_agent takes any dict, including very deep or
        # self-referencing ones, and must neither recurse without bound nor loop.
        seen: set[int] = set()
        stack: list[tuple[Any, str]] = [(model, path)]
        while stack:
            value, here = stack.pop()
            if id(value) in seen:
                continue
            seen.add(id(value))
            if isinstance(value, list):
                stack.extend((child, f"{here}[{i}]") for i, child in enumerate(value))
                continue
            if not isinstance(value, dict):
                continue
            for key, child in value.items():
                child_path = _child(here, key)
                if key == "temperature" and not (_is_number(child) and 0 <= child <= 2):
                    self.add(child_path, "must be a number between 0 and 2")
                elif key == "top_p" and not (_is_number(child) and 0 <= child <= 1):
                    self.add(child_path, "must be a number between 0 and 1")
                elif key == "endpoint":
                    problem = _endpoint_problem(child)
                    if problem:
                        self.add(child_path, problem)
                elif isinstance(child, dict | list):
                    stack.append((child, child_path))

    def orchestration(self, orchestration: dict[Any, Any]) -> None:
        path = "spec.orchestration"
        self.choice(orchestration, "pattern", f"{path}.pattern", ORCHESTRATION_PATTERNS)
        if "max_iterations" in orchestration:
            value = orchestration["max_iterations"]
            # 5.0 counts as 5: JSON does not tell them apart (nor does JSON Schema's
            # "integer"), and Kubernetes stores it as 5, which is what the node then reads.
            integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if not (_is_number(value) and integral and 1 <= value <= 100):
                self.add(f"{path}.max_iterations", "must be an integer between 1 and 100")
        if "timeout_seconds" in orchestration:
            value = orchestration["timeout_seconds"]
            if not (_is_number(value) and 1 <= value <= 300):
                self.add(f"{path}.timeout_seconds", "must be a number between 1 and 300")

    def program(self, program: object, pattern: object) -> None:
        if not _non_empty_string(program):
            self.add("spec.program", "must be a non-empty string (a Glyph program)")
        if pattern != GLYPH and isinstance(pattern, str) and pattern in ORCHESTRATION_PATTERNS:
            # The node refuses to deploy it: only the glyph pattern runs a program.
            self.add("spec.program", f"needs spec.orchestration.pattern {_show(GLYPH)}")

    def tools(self, tools: object) -> None:
        if not isinstance(tools, list):
            self.add("spec.tools", "must be a list")
            return
        first_index: dict[str, int] = {}
        for index, tool in enumerate(tools):
            path = f"spec.tools[{index}]"
            if not isinstance(tool, dict):
                self.add(path, "must be a mapping")
                continue
            name = tool.get("name")
            if "name" not in tool:
                self.add(f"{path}.name", "is required")
            elif not isinstance(name, str) or not name.strip():
                self.add(f"{path}.name", "must be a non-empty string")
            elif name in first_index:
                self.add(f"{path}.name", f"duplicates spec.tools[{first_index[name]}]")
            else:
                first_index[name] = index
            if "type" not in tool:
                # The node's default type ('internal') is one it drops with only a log line.
                self.add(f"{path}.type", "is required")
            else:
                self.choice(tool, "type", f"{path}.type", TOOL_TYPES)


def _endpoint_problem(value: object) -> str | None:
    """Why `value` is not an acceptable model endpoint, or None.

    Only the literal host can be judged here: a DNS name that resolves to a metadata address is
    for the node's egress policy to stop. Known metadata host names are refused by name.
    """
    if not isinstance(value, str):
        return "must be an http(s) URL"
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a malformed or out-of-range port
    except ValueError:
        return "must be a valid http(s) URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http(s) URL"
    host = unicodedata.normalize("NFKC", parts.hostname or "").lower().rstrip(".")
    if not host:
        return "must be an http(s) URL with a host"
    if host in _METADATA_HOSTS or _is_blocked_ip(_host_ip(host)):
        return "must not target a link-local or cloud metadata address"
    return None


def _host_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # HTTP clients hand the host to the C resolver, which also reads legacy IPv4 spellings
    # such as 2852039166, 0xa9fea9fe or 169.254.43518 (all 169.254.169.254).
    if host[0].isdigit() and all(c in "0123456789abcdefx." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _is_blocked_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id is not None:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        if ip.sixtofour is not None and _is_blocked_ip(ip.sixtofour):
            return True
        carried = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if any(ip in net for net in _V4_CARRYING_NETS) and int(ip) > 1 and _is_blocked_ip(carried):
            return True
    return ip.is_link_local or ip in _METADATA_IPS


def validate_agent(spec: dict[str, Any]) -> list[str]:
    """Every violation of the astromesh/v1 Agent rules, as "path message" strings.

    An empty list means the spec is valid. Paths use dots and [i] indices, e.g.
    ``spec.tools[1].type must be one of: builtin, agent, client``. Unknown keys are allowed and
    never reported. At most MAX_ERRORS messages are returned, the last one counting the rest.
    Never raises, whatever the dict holds.
    """
    if not isinstance(spec, dict):
        return [f"the body must be a mapping (an Agent spec), not {_kind(spec)}"]
    return _cap(_Validator().run(spec))
