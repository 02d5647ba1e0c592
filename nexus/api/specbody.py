"""Strict parsing of Agent spec request bodies (YAML or JSON) into plain documents.

`parse_body` turns a raw request body into a plain, JSON-serialisable dict, or raises
`SpecError` (413 over the size cap, 415 for another media type, 400 for anything unsafe or
malformed). What the document must say is checked afterwards by
:func:`nexus.domain.agentspec.validate_agent`.

YAML goes through a composer of our own on top of libyaml's event stream: aliases, anchors,
depth, tags and keys are checked on events and nodes *before* any Python value is constructed,
so a hostile document is rejected without ever being expanded or instantiated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Protocol

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

from nexus.domain.messages import cap, kind, show, subpath, where

__all__ = [
    "JSON_MEDIA_TYPE",
    "MAX_DEPTH",
    "MAX_SPEC_BYTES",
    "YAML_MEDIA_TYPES",
    "SpecError",
    "parse_body",
]

MAX_SPEC_BYTES = 1024 * 1024
MAX_DEPTH = 64

YAML_MEDIA_TYPES = frozenset({"application/yaml", "application/x-yaml"})
JSON_MEDIA_TYPE = "application/json"

# Kubernetes stores custom resources as JSON and decodes integers as int64.
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


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
    return "!!" + tag[len(_TAG_PREFIX) :] if tag.startswith(_TAG_PREFIX) else show(tag)


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
                    f"{show(event.value)} is not a valid {_show_tag(tag)} {_at(event.start_mark)}"
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
                    f"duplicate key {show(key.value)} {_at(key.start_mark)} "
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
            raise SpecError(400, cap(composer.errors))
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
                errors.extend(f"duplicate key {show(k)} in {where(path)}" for k in value.duplicates)
            for key, child in value.items():
                if not isinstance(key, str):  # pragma: no cover - both loaders enforce this
                    errors.append(f"{where(path)} has a non-string key")
                elif not _encodable(key):
                    errors.append(f"{where(path)} has a key with an invalid Unicode surrogate")
                if isinstance(child, dict | list):
                    visit(child, subpath(path, key), depth + 1)
                elif problem := _leaf_problem(child):
                    errors.append(f"{subpath(path, key)} {problem}")
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
                f"unsupported content type {show(media_type)}; use application/yaml, "
                "application/x-yaml or application/json"
            ],
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(400, [f"the body is not valid UTF-8 (at byte offset {exc.start})"]) from exc
    value = _load_json(text) if media_type == JSON_MEDIA_TYPE else _load_yaml(text)
    if not isinstance(value, dict):
        raise SpecError(400, [f"the body must be a mapping (an Agent spec), not {kind(value)}"])
    errors = _check_tree(value)
    if errors:
        raise SpecError(400, cap(errors))
    return value
