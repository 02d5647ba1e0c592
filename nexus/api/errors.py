"""JSON errors: every failure leaves the API as ``{"error": ...}`` or ``{"errors": [...]}``."""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from nexus.api.store import EmailTaken, NotFound, StoreError

log = structlog.get_logger("nexus.api")


class ApiProblem(Exception):
    """Raised by handlers; the middleware turns it into a JSON response."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        errors: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or "; ".join(errors or []))
        self.status = status
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def response(self) -> web.Response:
        body: dict[str, Any] = (
            {"errors": self.errors} if self.errors is not None else {"error": self.message}
        )
        return web.json_response(body, status=self.status, headers=self.headers)


def json_out(model: BaseModel | list[BaseModel], status: int = 200) -> web.Response:
    if isinstance(model, list):
        data: Any = [m.model_dump(mode="json") for m in model]
    else:
        data = model.model_dump(mode="json")
    return web.json_response(data, status=status, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def validation_errors(exc: ValidationError) -> list[str]:
    """pydantic's errors as "field message" lines, without echoing the input back."""
    out = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        msg = err.get("msg", "is invalid")
        if err.get("type") == "missing":
            msg = "is required"
        elif err.get("type") == "extra_forbidden":
            msg = "is not allowed"
        out.append(f"{where} {msg}")
    return out


_STATUS_TEXT = {
    404: "not found",
    405: "method not allowed",
    413: "request body too large",
    415: "unsupported content type",
}


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Maps exceptions to JSON; a 5xx other than 502/503 is a bug and is logged as one."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiProblem as problem:
        return problem.response()
    except StoreError as exc:
        if isinstance(exc, (EmailTaken, NotFound)):
            # A handler should have turned these into a 4xx: a bug.
            log.exception("api.unhandled_error", method=request.method, path=request.path)
            return web.json_response({"error": "internal error"}, status=500)
        # The database is unreachable or failing (a PostgreSQL failover, a locked file):
        # the request may well succeed if retried.
        log.warning("api.store_unavailable", method=request.method, error=str(exc)[:300])
        return web.json_response(
            {"error": "the database is unavailable; retry"},
            status=503,
            headers={"Retry-After": "1"},
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = _STATUS_TEXT.get(exc.status, exc.reason or "error")
        # RFC 9110: a 405 lists the methods the resource supports.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": message}, status=exc.status, headers=allow)
    except Exception:
        log.exception("api.unhandled_error", method=request.method, path=request.path)
        return web.json_response({"error": "internal error"}, status=500)
