"""Validating and defaulting handlers, controller-runtime's CustomValidator/CustomDefaulter.

A :class:`Validator` gets the object (and the old one on update) and either returns warnings,
or raises :class:`Denied` with every problem it found. A :class:`Defaulter` changes the object
in place; the handler turns the difference into a JSON patch. Both are wrapped into a
:class:`Handler` with :func:`validating` / :func:`defaulting` and registered on the
:class:`~nexus.runtime.webhook.server.WebhookServer` under a path.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Protocol

import structlog

from nexus.runtime.objects import Object
from nexus.runtime.webhook.admission import (
    AdmissionRequest,
    AdmissionResponse,
    allowed,
    denied,
    errored,
    patched,
)

log = structlog.get_logger("nexus.webhook")

Warnings = Sequence[str]


class Handler(Protocol):
    """Anything that answers an admission request; it must not raise for bad input."""

    async def handle(self, request: AdmissionRequest) -> AdmissionResponse: ...


Problem = str | tuple[str, str]


class Denied(Exception):
    """Refuse the request with every problem at once.

    Each problem is a message, or a ``(field, message)`` pair; a plain message is about
    ``field``. The messages become one status message joined with ``"; "`` (kubectl prints a
    403 as ``admission webhook "<name>" denied the request: <message>``) and one status cause
    each (kubectl prints a 422 as ``The <Kind> "<name>" is invalid:`` and a ``field: message``
    line per cause). ``code``/``reason`` default to 422 Invalid, as for a Kubernetes
    validation error; use 403 Forbidden for policy refusals such as quotas.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        *,
        code: int = 422,
        reason: str = "Invalid",
        field: str = "",
        warnings: Sequence[str] = (),
    ) -> None:
        pairs = [p if isinstance(p, tuple) else (field, p) for p in problems]
        super().__init__("; ".join(message for _, message in pairs))
        self.problems = [message for _, message in pairs]
        self.fields = [f for f, _ in pairs]
        self.code = code
        self.reason = reason
        self.warnings = list(warnings)

    def response(self, request: AdmissionRequest | None = None) -> AdmissionResponse:
        cause_type = "FieldValueInvalid" if self.code == 422 else "FieldValueForbidden"
        causes = [
            {"type": cause_type, "message": p, **({"field": f} if f else {})}
            for f, p in zip(self.fields, self.problems, strict=True)
        ]
        details: dict[str, str] = {}
        if request is not None:
            obj = request.object or request.old_object or {}
            name = request.name or (obj.get("metadata") or {}).get("name") or ""
            details = {
                k: v
                for k, v in (
                    ("group", request.kind.get("group", "")),
                    ("kind", request.kind.get("kind", "")),
                    ("name", name),
                )
                if v
            }
        return denied(
            str(self),
            code=self.code,
            reason=self.reason,
            causes=causes,
            warnings=self.warnings,
            details=details,
        )


class Validator:
    """Override the operations to check; the defaults allow everything.

    Each method returns warnings for an allowed request, or raises :class:`Denied`. Any other
    exception is a bug: the request is answered 500 (and so refused under
    ``failurePolicy: Fail``) and logged with its traceback.
    """

    async def validate_create(self, request: AdmissionRequest, obj: Object) -> Warnings:
        return ()

    async def validate_update(
        self, request: AdmissionRequest, old: Object, new: Object
    ) -> Warnings:
        return ()

    async def validate_delete(self, request: AdmissionRequest, obj: Object) -> Warnings:
        return ()


class Defaulter:
    """Set defaults on ``obj`` in place (a deep copy of the request's object); return warnings.

    Raising :class:`Denied` refuses the request, as a validator would.
    """

    async def default(self, request: AdmissionRequest, obj: Object) -> Warnings:
        return ()


class _Validating:
    def __init__(self, validator: Validator) -> None:
        self.validator = validator

    async def handle(self, request: AdmissionRequest) -> AdmissionResponse:
        try:
            if request.operation == "CREATE" and request.object is not None:
                warnings = await self.validator.validate_create(request, request.object)
            elif (
                request.operation == "UPDATE"
                and request.object is not None
                and request.old_object is not None
            ):
                warnings = await self.validator.validate_update(
                    request, request.old_object, request.object
                )
            elif request.operation == "DELETE" and request.old_object is not None:
                warnings = await self.validator.validate_delete(request, request.old_object)
            elif request.operation == "CONNECT":
                return allowed()
            else:
                return errored(400, f"{request.operation} request without the object to check")
        except Denied as exc:
            return exc.response(request)
        except Exception as exc:
            log.exception("webhook.validator_failed", uid=request.uid, operation=request.operation)
            return errored(500, f"the validating webhook failed: {type(exc).__name__}")
        return allowed(warnings=warnings)


class _Defaulting:
    def __init__(self, defaulter: Defaulter) -> None:
        self.defaulter = defaulter

    async def handle(self, request: AdmissionRequest) -> AdmissionResponse:
        if request.operation not in ("CREATE", "UPDATE"):
            return allowed()
        if request.object is None:
            return errored(400, f"{request.operation} request without an object")
        mutated = copy.deepcopy(request.object)
        try:
            warnings = await self.defaulter.default(request, mutated)
        except Denied as exc:
            return exc.response(request)
        except Exception as exc:
            log.exception("webhook.defaulter_failed", uid=request.uid, operation=request.operation)
            return errored(500, f"the defaulting webhook failed: {type(exc).__name__}")
        return patched(request.object, mutated, warnings=warnings)


def validating(validator: Validator) -> Handler:
    """A handler that dispatches CREATE/UPDATE/DELETE to ``validator``."""
    return _Validating(validator)


def defaulting(defaulter: Defaulter) -> Handler:
    """A handler that answers CREATE/UPDATE with the JSON patch ``defaulter`` implies."""
    return _Defaulting(defaulter)
