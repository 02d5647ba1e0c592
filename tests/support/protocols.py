"""Check at run time that a class implements a ``typing.Protocol`` method by method.

mypy checks structural matches in ``nexus/`` only, and ``isinstance`` against a
``runtime_checkable`` protocol looks at names alone. This compares what a caller relies on:
every member exists, is async where the protocol's is, and accepts the protocol's parameters
(same names, kinds and order, defaults where the protocol has them, nothing extra required).
"""

from __future__ import annotations

import inspect
from typing import Any

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def protocol_members(proto: type) -> list[str]:
    """Public methods and properties declared by ``proto`` (and its protocol bases)."""
    names: set[str] = set()
    for klass in proto.__mro__:
        if klass is object or not getattr(klass, "_is_protocol", False):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and (
                inspect.isfunction(value) or isinstance(value, property)
            ):
                names.add(name)
    return sorted(names)


def _params(fn: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())[1:]  # drop self


def _signature_problems(name: str, want: Any, got: Any) -> list[str]:
    problems = []
    for check in (inspect.iscoroutinefunction, inspect.isasyncgenfunction):
        if check(want) != check(got):
            problems.append(
                f"{name}: {check.__name__} is {check(got)}, protocol says {check(want)}"
            )
    wanted, given = _params(want), _params(got)
    by_name = {p.name: p for p in given}
    matched: set[str] = set()
    for i, w in enumerate(wanted):
        g: inspect.Parameter | None
        if w.kind in _POSITIONAL:
            g = given[i] if i < len(given) and given[i].kind in _POSITIONAL else None
            if g is None:
                problems.append(f"{name}: no positional parameter #{i} ({w.name})")
                continue
            if w.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and g.name != w.name:
                problems.append(f"{name}: parameter #{i} is {g.name!r}, protocol says {w.name!r}")
        elif w.kind is inspect.Parameter.KEYWORD_ONLY:
            g = by_name.get(w.name)
            if g is None or g.kind is inspect.Parameter.POSITIONAL_ONLY:
                problems.append(f"{name}: no keyword parameter {w.name!r}")
                continue
        else:  # *args / **kwargs
            if not any(p.kind is w.kind for p in given):
                problems.append(f"{name}: does not accept {w}")
            continue
        matched.add(g.name)
        if w.default is not inspect.Parameter.empty and g.default is inspect.Parameter.empty:
            problems.append(f"{name}: {w.name!r} needs a default, as in the protocol")
    for g in given:
        required = g.default is inspect.Parameter.empty and g.kind in (
            *_POSITIONAL,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and g.name not in matched:
            problems.append(f"{name}: requires {g.name!r}, which the protocol does not pass")
    return problems


def implementation_problems(impl: type, proto: type) -> list[str]:
    """Why ``impl`` does not structurally implement ``proto`` (empty when it does)."""
    problems: list[str] = []
    members = protocol_members(proto)
    if not members:
        return [f"{proto.__name__} declares no public members"]
    for name in members:
        want = inspect.getattr_static(proto, name)
        got = inspect.getattr_static(impl, name, None)
        if got is None:
            problems.append(f"{name}: missing")
        elif isinstance(want, property):
            continue  # a property, a slot or a plain attribute all read the same
        elif isinstance(got, (staticmethod, classmethod)) or not inspect.isfunction(got):
            problems.append(f"{name}: not a plain method ({type(got).__name__})")
        else:
            problems.extend(_signature_problems(name, want, got))
    return problems
