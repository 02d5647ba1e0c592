"""/api/v1/agents: NexusAgent resources in the caller's tenant namespace, and node views.

The namespace always comes from the caller's tenant, never from the body or the query; an
agent of another tenant is simply not found, and nothing reaches that tenant's node.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import structlog
from aiohttp import web

from nexus.api.context import acting_tenant, ctx, media_type, read_limited
from nexus.api.errors import ApiProblem, json_out
from nexus.api.models import (
    AgentDetail,
    AgentLive,
    AgentLogs,
    AgentMetrics,
    AgentStatusOut,
    AgentSummary,
    Deleted,
    LogLine,
)
from nexus.api.specbody import (
    JSON_MEDIA_TYPE,
    MAX_SPEC_BYTES,
    YAML_MEDIA_TYPES,
    SpecError,
    parse_body,
)
from nexus.api.store import Tenant
from nexus.domain.agent import AgentView, agent_body, live_agents, refuse_new_agent
from nexus.domain.agentspec import agent_name, valid_name, validate_agent
from nexus.domain.resources import AGENTS, TENANTS, AgentPhase
from nexus.domain.tenant import TenantSpec
from nexus.node import NodeError
from nexus.runtime import ApiError
from nexus.runtime.finalizers import is_being_deleted
from nexus.runtime.objects import Object
from nexus.runtime.resource import EVENTS

log = structlog.get_logger("nexus.api.agents")
routes = web.RouteTableDef()

SPEC_TYPES = YAML_MEDIA_TYPES | {JSON_MEDIA_TYPE}
#: astromesh-node's /v1/traces/ refuses a limit above 100.
NODE_MAX_TRACES = 100
#: Bodies below this size are parsed on the event loop: cheaper than handing them to a thread.
INLINE_PARSE_BYTES = 16384


def _parse_and_validate(raw: bytes, mt: str) -> tuple[dict[str, Any], list[str]]:
    spec = parse_body(raw, mt)
    return spec, validate_agent(spec)


async def _spec_from_body(request: web.Request) -> dict[str, Any]:
    mt = media_type(request)
    if mt not in SPEC_TYPES:
        raise ApiProblem(415, "Content-Type must be application/yaml or application/json")
    raw = await read_limited(request, MAX_SPEC_BYTES)
    try:
        # YAML near the 1 MiB cap takes seconds to parse: never on the event loop. Small
        # bodies (the usual case) are cheaper to parse here than to hand to a thread.
        if len(raw) < INLINE_PARSE_BYTES:
            spec, errors = _parse_and_validate(raw, mt)
        else:
            spec, errors = await asyncio.to_thread(_parse_and_validate, raw, mt)
    except SpecError as exc:
        if exc.status == 400:
            raise ApiProblem(400, errors=exc.errors) from None
        raise ApiProblem(exc.status, "; ".join(exc.errors)) from None
    if errors:
        raise ApiProblem(400, errors=errors)
    return spec


def _admission_problem(exc: ApiError) -> ApiProblem | ApiError:
    """A write the cluster refused: invalid (422) or forbidden (403, an admission webhook's
    quota or tenant check) keep their message; an unreachable admission webhook is a 503."""
    if exc.invalid:
        return ApiProblem(400, errors=[exc.message])
    if exc.status == 403:
        return ApiProblem(403, exc.message)
    if exc.status >= 500:
        log.warning("api.cluster_write_failed", status=exc.status, error=exc.message)
        return ApiProblem(
            503,
            "the cluster could not accept the change; retry shortly",
            headers={"Retry-After": "2"},
        )
    return exc


def _path_name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_name(name):
        raise ApiProblem(400, "agent name must be an RFC 1123 label")
    return name


async def _agent(request: web.Request, tenant: Tenant, name: str) -> Object:
    c = ctx(request)
    obj = c.cache.get(AGENTS, name, tenant.cr_name)
    if obj is None:
        # Read-your-writes right after a create: the watch may not have delivered it yet.
        obj = await c.kube.get_or_none(AGENTS, name, tenant.cr_name)
    if obj is None or is_being_deleted(obj):
        raise ApiProblem(404, f"agent {name} not found")
    return obj


def _status_fields(view: AgentView) -> dict[str, Any]:
    """The status every agent response shows, in the API's field names."""
    st = view.status
    return {"phase": st.phase, "nodeAck": st.node_ack, "lastSyncedAt": st.last_synced_at}


def _summary(obj: Object) -> AgentSummary:
    view = AgentView.of(obj)
    return AgentSummary(
        name=view.name,
        namespace=view.namespace,
        version=view.spec.version,
        phase=view.status.phase,
    )


@routes.post("/api/v1/agents")
async def create_agent(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    spec = await _spec_from_body(request)
    name = agent_name(spec)
    assert name is not None  # validated
    c = ctx(request)
    ns = tenant.cr_name
    quota = TenantSpec.of(c.cache.get(TENANTS, ns, c.settings.system_namespace)).quota
    refusal = refuse_new_agent(quota.max_agents, live_agents(c.cache.list(AGENTS, ns)))
    if refusal:
        raise ApiProblem(403, refusal)
    try:
        created = await c.kube.create(AGENTS, agent_body(name, ns, spec))
    except ApiError as exc:
        if exc.already_exists:
            raise ApiProblem(409, f"agent {name} already exists") from None
        if exc.not_found:
            raise ApiProblem(
                503,
                "the tenant is still being provisioned; retry shortly",
                headers={"Retry-After": "2"},
            ) from None
        raise _admission_problem(exc) from None
    log.info("api.agent_created", agent=name, namespace=ns)
    return json_out(_summary(created), status=201)


@routes.get("/api/v1/agents")
async def list_agents(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    items = [
        _list_item(a)
        for a in ctx(request).cache.list(AGENTS, tenant.cr_name)
        if not a["metadata"].get("deletionTimestamp")  # being deleted: gone for the API
    ]
    items.sort(key=_by_name)
    # orjson: ten times faster than json on this list (bench/api_breakdown.py).
    return web.Response(body=orjson.dumps(items), content_type="application/json", charset="utf-8")


def _list_item(obj: Object) -> dict[str, Any]:
    """AgentListItem's fields, read straight from the cached object.

    The hottest read of the API: the same fields as :class:`AgentView` (and its defaults),
    without its three dataclasses and copied conditions per agent. Cached objects are dicts
    (``isinstance(..., dict)`` is several times cheaper than ``Mapping``).
    """
    meta = obj["metadata"]
    spec = obj.get("spec")
    status = obj.get("status")
    if not isinstance(status, dict):
        status = {}
    version = None
    agent_spec = spec.get("agentSpec") if isinstance(spec, dict) else None
    if isinstance(agent_spec, dict):
        spec_meta = agent_spec.get("metadata")
        if isinstance(spec_meta, dict):
            version = spec_meta.get("version")
            if not isinstance(version, str):
                version = None
    return {
        "name": meta["name"],
        "namespace": meta["namespace"],
        "version": version,
        "phase": str(status.get("phase") or _PENDING),
        "nodeAck": bool(status.get("nodeAck")),
        "lastSyncedAt": status.get("lastSyncedAt"),
        "createdAt": meta.get("creationTimestamp"),
    }


_PENDING = str(AgentPhase.PENDING)


def _by_name(item: dict[str, Any]) -> str:
    name: str = item["name"]
    return name


@routes.get("/api/v1/agents/{name}")
async def get_agent(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    view = AgentView.of(await _agent(request, tenant, _path_name(request)))
    return json_out(
        AgentDetail(
            name=view.name,
            namespace=view.namespace,
            version=view.spec.version,
            spec=dict(view.spec.agent_spec),
            status=AgentStatusOut(**_status_fields(view), conditions=view.status.conditions),
            createdAt=view.created_at,
        )
    )


@routes.put("/api/v1/agents/{name}")
async def update_agent(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    name = _path_name(request)
    spec = await _spec_from_body(request)
    if agent_name(spec) != name:
        # A valid spec for another agent: it conflicts with the agent addressed (409, not 400).
        raise ApiProblem(409, f"metadata.name must be {name!r} (the name in the path)")
    await _agent(request, tenant, name)
    c = ctx(request)
    try:
        # Replace, not merge: keys removed from the spec must disappear from the resource.
        updated = await c.kube.patch(
            AGENTS,
            name,
            [{"op": "replace", "path": "/spec/agentSpec", "value": spec}],
            tenant.cr_name,
            patch_type="json",
        )
    except ApiError as exc:
        if exc.not_found:
            raise ApiProblem(404, f"agent {name} not found") from None
        raise _admission_problem(exc) from None
    return json_out(_summary(updated))


@routes.delete("/api/v1/agents/{name}")
async def delete_agent(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    name = _path_name(request)
    await _agent(request, tenant, name)
    try:
        await ctx(request).kube.delete(AGENTS, name, tenant.cr_name)
    except ApiError as exc:
        if exc.not_found:
            raise ApiProblem(404, f"agent {name} not found") from None
        raise
    return json_out(Deleted(deleted=name))


def _node_failed(exc: NodeError) -> ApiProblem:
    log.warning("api.node_unreachable", error=str(exc))
    return ApiProblem(502, f"the tenant's node could not be reached: {exc.message}"[:500])


@routes.get("/api/v1/agents/{name}/status")
async def agent_status(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    obj = await _agent(request, tenant, _path_name(request))
    name = obj["metadata"]["name"]
    try:
        on_node = next(
            (
                a
                for a in await ctx(request).node.list_agents(tenant.cr_name)
                if a.get("name") == name
            ),
            None,
        )
    except NodeError as exc:
        raise _node_failed(exc) from None
    return json_out(
        AgentLive(
            name=name,
            **_status_fields(AgentView.of(obj)),
            node=on_node or {"name": name, "status": "absent"},
        )
    )


@routes.get("/api/v1/agents/{name}/logs")
async def agent_logs(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    obj = await _agent(request, tenant, _path_name(request))
    name = obj["metadata"]["name"]
    try:
        lines = int(request.query.get("lines", "100"))
    except ValueError:
        raise ApiProblem(400, "lines must be an integer") from None
    if not 1 <= lines <= 1000:
        raise ApiProblem(400, "lines must be between 1 and 1000")
    c = ctx(request)
    try:
        # The node serves at most NODE_MAX_TRACES per query (more is a 422 there).
        traces = await c.node.traces(tenant.cr_name, name, min(lines, NODE_MAX_TRACES))
    except NodeError as exc:
        raise _node_failed(exc) from None
    out = [_trace_line(t) for t in traces.get("traces") or [] if isinstance(t, dict)]
    try:
        page = await c.kube.list(EVENTS, tenant.cr_name, limit=500)
        for ev in page.get("items") or []:
            if (ev.get("regarding") or {}).get("name") == name:
                out.append(
                    LogLine(
                        timestamp=str(
                            ev.get("eventTime") or ev["metadata"].get("creationTimestamp")
                        ),
                        level="warning" if ev.get("type") == "Warning" else "info",
                        message=f"{ev.get('reason')}: {ev.get('note') or ''}".strip(),
                    )
                )
    except (ApiError, ConnectionError, OSError) as exc:
        log.info("api.events_unavailable", error=str(exc))
    out.sort(key=lambda line: line.timestamp)
    return json_out(AgentLogs(agent=name, lines=out[-lines:]))


def _trace_line(trace: dict[str, Any]) -> LogLine:
    ts = trace.get("start_time") or trace.get("timestamp") or trace.get("created_at") or ""
    status = str(trace.get("status") or "")
    message = trace.get("message") or trace.get("name") or trace.get("trace_id") or "trace"
    return LogLine(
        timestamp=str(ts),
        level="error" if status.lower() in ("error", "failed") else "info",
        message=str(message),
    )


@routes.get("/api/v1/agents/{name}/metrics")
async def agent_metrics(request: web.Request) -> web.Response:
    tenant = await acting_tenant(request)
    obj = await _agent(request, tenant, _path_name(request))
    try:
        metrics = await ctx(request).node.metrics(tenant.cr_name)
    except NodeError as exc:
        raise _node_failed(exc) from None
    return json_out(AgentMetrics(agent=obj["metadata"]["name"], metrics=metrics))
