"""``GET /openapi.json``: an OpenAPI 3.1 document built from the same pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from nexus.api import models as m
from nexus.api.specbody import MAX_DEPTH, MAX_SPEC_BYTES
from nexus.domain.agentspec_schema import NAME_PATTERN, agent_spec_schemas

# (method, path, summary, auth, request body model (or "spec"), {status: response model})
Operation = tuple[str, str, str, bool, type[BaseModel] | str | None, dict[int, Any]]

_E = m.ErrorOut
#: A 400 is ``{"error": ...}`` (bad JSON, header or path) or ``{"errors": [...]}`` (validation).
_BAD = "bad_request"
_COMMON: dict[int, Any] = {401: _E, 429: _E}
_TENANT_SCOPED: dict[int, Any] = {400: _BAD, 401: _E, 403: _E, 404: _E}
#: ``/api/v1/me``: a user (access token) or a tenant's API key.
_ME = "me"

OPERATIONS: list[Operation] = [
    ("post", "/auth/register", "Register a user", False, m.RegisterRequest,
     {201: m.AuthBundle, 400: _BAD, 409: _E, 413: _E, 415: _E, 429: _E}),
    ("post", "/auth/login", "Log in", False, m.LoginRequest,
     {200: m.AuthBundle, 400: _BAD, 401: _E, 413: _E, 415: _E, 429: _E}),
    ("post", "/auth/refresh", "Rotate a refresh token", False, m.RefreshRequest,
     {200: m.TokenPair, 400: _BAD, 401: _E, 413: _E, 415: _E, 429: _E}),
    ("get", "/api/v1/me", "Who am I", True, None, {200: _ME, **_COMMON}),
    ("post", "/api/v1/tenants", "Create a tenant", True, m.TenantCreateRequest,
     {201: m.TenantOut, 400: _BAD, 401: _E, 415: _E, 503: _E}),
    ("get", "/api/v1/tenants", "List tenants", True, None, {200: list[m.TenantOut], 401: _E}),
    ("get", "/api/v1/tenants/{tenant_id}", "Get a tenant", True, None,
     {200: m.TenantOut, 401: _E, 403: _E}),
    ("delete", "/api/v1/tenants/{tenant_id}", "Delete a tenant", True, None,
     {200: m.Deleted, 401: _E, 403: _E, 503: _E}),
    ("post", "/api/v1/tenants/{tenant_id}/keys", "Create an API key", True, m.KeyCreateRequest,
     {201: m.KeyCreated, 400: _BAD, 401: _E, 403: _E, 415: _E}),
    ("get", "/api/v1/tenants/{tenant_id}/keys", "List API keys", True, None,
     {200: list[m.KeyOut], 401: _E, 403: _E}),
    ("delete", "/api/v1/tenants/{tenant_id}/keys/{hash}", "Revoke an API key", True, None,
     {200: m.Revoked, 401: _E, 403: _E, 404: _E}),
    ("post", "/api/v1/agents", "Create an agent", True, "spec",
     {201: m.AgentSummary, 409: _E, 413: _E, 415: _E, 503: _E, **_TENANT_SCOPED}),
    ("get", "/api/v1/agents", "List agents", True, None,
     {200: list[m.AgentListItem], **_TENANT_SCOPED}),
    ("get", "/api/v1/agents/{name}", "Get an agent", True, None,
     {200: m.AgentDetail, **_TENANT_SCOPED}),
    ("put", "/api/v1/agents/{name}", "Replace an agent's spec", True, "spec",
     {200: m.AgentSummary, 409: _E, 413: _E, 415: _E, 503: _E, **_TENANT_SCOPED}),
    ("delete", "/api/v1/agents/{name}", "Delete an agent", True, None,
     {200: m.Deleted, **_TENANT_SCOPED}),
    ("get", "/api/v1/agents/{name}/status", "Live status from the node", True, None,
     {200: m.AgentLive, 502: _E, **_TENANT_SCOPED}),
    ("get", "/api/v1/agents/{name}/logs", "Traces and events", True, None,
     {200: m.AgentLogs, 502: _E, **_TENANT_SCOPED}),
    ("get", "/api/v1/agents/{name}/metrics", "Node metrics", True, None,
     {200: m.AgentMetrics, 502: _E, **_TENANT_SCOPED}),
    ("get", "/healthz", "Liveness", False, None, {200: m.Health}),
    ("get", "/readyz", "Readiness", False, None, {200: m.Health, 503: m.Health}),
]  # fmt: skip


_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": NAME_PATTERN, "description": "An RFC 1123 label"},
}


def _link(operation: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation, "parameters": parameters}


# OpenAPI links: what a client (and a stateful fuzzer) can do with what a call returned.
_AGENT = {"name": "$response.body#/name"}
_LINKS: dict[tuple[str, str], dict[int, dict[str, Any]]] = {
    ("post", "/api/v1/tenants"): {
        201: {
            "GetTenant": _link("get_api_v1_tenants_tenant_id", tenant_id="$response.body#/id"),
            "CreateKey": _link(
                "post_api_v1_tenants_tenant_id_keys", tenant_id="$response.body#/id"
            ),
            "ListKeys": _link("get_api_v1_tenants_tenant_id_keys", tenant_id="$response.body#/id"),
            "DeleteTenant": _link(
                "delete_api_v1_tenants_tenant_id", tenant_id="$response.body#/id"
            ),
        }
    },
    ("post", "/api/v1/tenants/{tenant_id}/keys"): {
        201: {
            "RevokeKey": _link(
                "delete_api_v1_tenants_tenant_id_keys_hash",
                tenant_id="$request.path.tenant_id",
                hash="$response.body#/hash",
            )
        }
    },
    ("post", "/api/v1/agents"): {
        201: {
            "GetAgent": _link("get_api_v1_agents_name", **_AGENT),
            "ReplaceAgent": _link("put_api_v1_agents_name", **_AGENT),
            "AgentStatus": _link("get_api_v1_agents_name_status", **_AGENT),
            "AgentLogs": _link("get_api_v1_agents_name_logs", **_AGENT),
            "AgentMetrics": _link("get_api_v1_agents_name_metrics", **_AGENT),
            "DeleteAgent": _link("delete_api_v1_agents_name", **_AGENT),
        }
    },
}


def _model_of(tp: Any) -> type[BaseModel]:
    if tp == _BAD:
        return m.ErrorsOut
    if tp == _ME:
        return m.MeUser
    return tp.__args__[0] if hasattr(tp, "__args__") else tp  # type: ignore[no-any-return]


def _operation_id(method: str, path: str) -> str:
    cleaned = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
    return f"{method}_{cleaned}"


def build_openapi() -> dict[str, Any]:
    model_set: set[type[BaseModel]] = {m.ErrorOut, m.ErrorsOut, m.MeKey}
    for *_, body, responses in OPERATIONS:
        if isinstance(body, type):
            model_set.add(body)
        model_set.update(_model_of(r) for r in responses.values())
    ordered = sorted(model_set, key=lambda c: c.__name__)
    _, defs = models_json_schema(
        [(c, "validation") for c in ordered], ref_template="#/components/schemas/{model}"
    )
    schemas: dict[str, Any] = dict(defs.get("$defs", {}))
    schemas.update(agent_spec_schemas(max_bytes=MAX_SPEC_BYTES, max_depth=MAX_DEPTH))

    def ref(tp: Any) -> dict[str, Any]:
        if tp == _BAD:
            return {"anyOf": [ref(m.ErrorOut), ref(m.ErrorsOut)]}
        if tp == _ME:
            return {"oneOf": [ref(m.MeUser), ref(m.MeKey)]}
        if hasattr(tp, "__args__"):
            return {"type": "array", "items": ref(tp.__args__[0])}
        return {"$ref": f"#/components/schemas/{tp.__name__}"}

    paths: dict[str, Any] = {}
    for method, path, summary, secured, body, responses in OPERATIONS:
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": _operation_id(method, path),
            "responses": {
                str(code): {
                    "description": summary if code < 300 else "error",
                    "content": {"application/json": {"schema": ref(model)}},
                }
                for code, model in responses.items()
            },
        }
        params = [
            {
                "name": p.strip("{}"),
                "in": "path",
                "required": True,
                "schema": _PATH_SCHEMAS.get(p.strip("{}"), {"type": "string"}),
            }
            for p in path.split("/")
            if p.startswith("{")
        ]
        if path.endswith("/logs"):
            params.append(
                {"name": "lines", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}
            )  # fmt: skip
        if params:
            op["parameters"] = params
        if secured and path.startswith("/api/v1/agents"):
            # A user acts in one of its tenants, named by X-Tenant-ID (400 without it); an API
            # key acts in its own tenant (X-Tenant-ID, if sent, must name it: else 403).
            op["security"] = [{"apiKey": []}, {"bearerAuth": [], "tenantId": []}]
        elif secured:
            op["security"] = [{"apiKey": []}, {"bearerAuth": []}]
        if (method, path) in _LINKS:
            for code, links in _LINKS[(method, path)].items():
                op["responses"][str(code)]["links"] = links
        if body == "spec":
            spec_ref = {"$ref": "#/components/schemas/AgentSpec"}
            op["requestBody"] = {
                "required": True,
                "content": {
                    "application/yaml": {"schema": spec_ref},
                    "application/json": {"schema": spec_ref},
                },
            }
        elif isinstance(body, type):
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(body)}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Nexus API", "version": "0.1.0"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "tenantId": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Tenant-ID",
                    "description": (
                        "The tenant (its id, t_...) a user access token acts in on the agent "
                        "routes: required with bearerAuth there. With an API key it may be "
                        "omitted; if sent, it must be the key's own tenant (else 403)."
                    ),
                },
            },
        },
    }
