"""How messages about a client's document are worded: bounded quotes, dotted paths, kinds.

Shared by the parser of request bodies and the validator of Agent specs, so that a client sees
one style whichever stage refused its document.
"""

from __future__ import annotations

import json

# A 1 MiB body can hold hundreds of thousands of bad entries; echoing one message for each
# would turn a small request into a response many times its size.
MAX_ERRORS = 100


def show(text: str, limit: int = 60) -> str:
    """Quote user-controlled text for a message: bounded, and free of lone surrogates, which
    could not be encoded into the UTF-8 response."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return json.dumps(text.encode("utf-8", "backslashreplace").decode("utf-8"), ensure_ascii=False)


def segment(key: object) -> str:
    """A mapping key as a path segment; keys are normally strings, but validate_agent accepts
    any dict and must not fail while describing one."""
    if isinstance(key, str):
        if len(key) > 60:
            key = key[:60] + "…"
        return key.encode("utf-8", "backslashreplace").decode("utf-8")
    if key is None or isinstance(key, bool | int | float):
        return repr(key)
    return f"<{type(key).__name__}>"


def subpath(path: str, key: object) -> str:
    """``path.key``, or ``key`` at the top."""
    seg = segment(key)
    return f"{path}.{seg}" if path else seg


def where(path: str) -> str:
    """A path as the subject of a sentence."""
    return path or "the body"


def kind(value: object) -> str:
    """What a JSON value is, in words ("a list", "null")."""
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


def one_of(values: tuple[str, ...]) -> str:
    return "must be one of: " + ", ".join(values)


def cap(errors: list[str]) -> list[str]:
    """At most MAX_ERRORS messages, the last one counting those left out."""
    if len(errors) <= MAX_ERRORS:
        return errors
    return [*errors[: MAX_ERRORS - 1], f"... and {len(errors) - MAX_ERRORS + 1} more errors"]
