"""``admission.k8s.io/v1`` AdmissionReview requests and responses as plain dataclasses.

The API server POSTs an AdmissionReview whose ``request`` says who is doing what to which
object; the webhook answers with the same review carrying a ``response``: allowed or not, an
optional status (code, reason, message, causes), ``warnings`` shown to the client (kubectl
prints them as ``Warning: ...``), and for mutation a base64 JSON patch.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from nexus.runtime.objects import Object

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
#: The API server shows at most this many characters of one warning; longer ones are cut here
#: so that the end of a message is not silently lost in the middle of a word.
MAX_WARNING_CHARS = 256


class BadAdmissionReview(ValueError):
    """The body is not an ``admission.k8s.io/v1`` AdmissionReview with a request."""


@dataclass(frozen=True)
class AdmissionRequest:
    """One admission request, decoded from the review the API server sent.

    ``object`` is the object being admitted (None for DELETE and CONNECT); ``old_object`` the
    stored one for UPDATE and DELETE. ``dry_run`` requests must have no side effects.
    """

    uid: str
    operation: str
    kind: dict[str, str]
    resource: dict[str, str]
    sub_resource: str
    name: str
    namespace: str
    object: Object | None
    old_object: Object | None
    user_info: dict[str, Any]
    dry_run: bool
    options: Object | None
    raw: Object = field(repr=False)

    @classmethod
    def from_review(cls, review: Any) -> AdmissionRequest:
        """Decode a review; raises :class:`BadAdmissionReview` when it is not one."""
        if not isinstance(review, dict):
            raise BadAdmissionReview("the body must be a JSON object")
        if review.get("apiVersion") != API_VERSION or review.get("kind") != KIND:
            raise BadAdmissionReview(
                f"expected an {API_VERSION} {KIND}, got "
                f"{review.get('apiVersion')!r} {review.get('kind')!r}"
            )
        req = review.get("request")
        if not isinstance(req, dict) or not isinstance(req.get("uid"), str) or not req["uid"]:
            raise BadAdmissionReview("the AdmissionReview has no request with a uid")
        operation = req.get("operation")
        if operation not in OPERATIONS:
            raise BadAdmissionReview(f"unknown operation {operation!r}")
        obj, old = req.get("object"), req.get("oldObject")
        return cls(
            uid=req["uid"],
            operation=str(operation),
            kind=dict(req.get("kind") or {}),
            resource=dict(req.get("resource") or {}),
            sub_resource=str(req.get("subResource") or ""),
            name=str(req.get("name") or ""),
            namespace=str(req.get("namespace") or ""),
            object=obj if isinstance(obj, dict) else None,
            old_object=old if isinstance(old, dict) else None,
            user_info=dict(req.get("userInfo") or {}),
            dry_run=bool(req.get("dryRun")),
            options=req.get("options") if isinstance(req.get("options"), dict) else None,
            raw=req,
        )


@dataclass(frozen=True)
class AdmissionResponse:
    """The answer to one request; build it with :func:`allowed`, :func:`denied`,
    :func:`errored` or :func:`patched` rather than by hand.

    Guarantees of :meth:`to_review`: a refusal always carries a status with a code; a patch is
    sent only with an allowed answer; each warning is one line of at most
    ``MAX_WARNING_CHARS`` characters (they travel as HTTP ``Warning`` headers).
    """

    allowed: bool
    code: int = 200
    reason: str = ""
    message: str = ""
    causes: tuple[dict[str, str], ...] = ()
    warnings: tuple[str, ...] = ()
    patch: tuple[Object, ...] = ()
    #: ``status.details`` besides the causes: ``group``, ``kind``, ``name`` of the object, with
    #: which kubectl prints ``The <kind> "<name>" is invalid:`` and one line per cause.
    details: tuple[tuple[str, str], ...] = ()

    def to_review(self, uid: str) -> Object:
        """The AdmissionReview the API server expects back for request ``uid``."""
        response: Object = {"uid": uid, "allowed": self.allowed}
        if not self.allowed or self.message or self.code != 200:
            status: Object = {"code": self.code, "status": "Success" if self.allowed else "Failure"}
            if self.reason:
                status["reason"] = self.reason
            if self.message:
                status["message"] = self.message
            details: Object = dict(self.details)
            if self.causes:
                details["causes"] = list(self.causes)
            if details:
                status["details"] = details
            response["status"] = status
        if self.warnings:
            response["warnings"] = [_clip(w) for w in self.warnings]
        if self.patch and self.allowed:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(
                json.dumps(list(self.patch), separators=(",", ":")).encode()
            ).decode()
        return {"apiVersion": API_VERSION, "kind": KIND, "response": response}


def _clip(warning: str) -> str:
    # Warnings travel as HTTP Warning headers: one line, bounded.
    text = " ".join(warning.split())
    return text if len(text) <= MAX_WARNING_CHARS else text[: MAX_WARNING_CHARS - 1] + "…"


def allowed(message: str = "", *, warnings: Sequence[str] = ()) -> AdmissionResponse:
    return AdmissionResponse(True, message=message, warnings=tuple(warnings))


def denied(
    message: str,
    *,
    code: int = 403,
    reason: str = "Forbidden",
    causes: Sequence[dict[str, str]] = (),
    warnings: Sequence[str] = (),
    details: dict[str, str] | None = None,
) -> AdmissionResponse:
    """A refusal; the API server answers the client with ``code`` and
    ``admission webhook "<name>" denied the request: <message>``, plus ``causes``/``details``
    (kubectl prints a 422's causes one per line instead of the message)."""
    return AdmissionResponse(
        False,
        code,
        reason,
        message,
        tuple(causes),
        tuple(warnings),
        details=tuple((details or {}).items()),
    )


def errored(code: int, message: str) -> AdmissionResponse:
    """The webhook could not decide (bad request, internal error, timeout)."""
    reason = {400: "BadRequest", 504: "Timeout"}.get(code, "InternalError")
    return AdmissionResponse(False, code, reason, message)


def patched(
    original: Object, mutated: Object, *, warnings: Sequence[str] = ()
) -> AdmissionResponse:
    """Allowed, with the RFC 6902 patch that turns ``original`` into ``mutated`` (none if they
    are equal)."""
    ops = jsonpatch.make_patch(original, mutated).patch
    return AdmissionResponse(True, patch=tuple(copy.deepcopy(ops)), warnings=tuple(warnings))
