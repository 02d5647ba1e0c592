"""Small in-memory stand-ins for what the reconcilers use, for unit tests.

* :class:`FakeApiServer` keeps objects and answers the calls of ``nexus.controllers.ports.Writer``
  like the API server does where the reconcilers depend on it: creates that collide are 409
  AlreadyExists, merge and JSON patches (a failed ``test`` is 422), the ``status``
  subresource, deletion that waits for finalizers (and, for namespaces, for the namespace
  controller). Every call is recorded; failures can be injected per verb and kind.
* :class:`FakeCache` is the informer cache: a copy of the server taken by :meth:`FakeCache.sync`,
  so a test decides when the cache catches up; child kinds are cached only with Nexus's label,
  and pods only with the node pods' label, as the manager's label-scoped informers do.
* :class:`FakeEvents` records events; :class:`FakeNode` is an astromesh node (list, register,
  deploy, pause, delete; deployed agents carry ``spec.skills``), with injectable failures.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from nexus.controllers.agent import AgentSettings, NexusAgentReconciler
from nexus.controllers.fence import FenceSettings
from nexus.controllers.tenant import NexusTenantReconciler, TenantSettings
from nexus.controllers.watches import TENANT_BY_NAMESPACE, tenant_namespace_index
from nexus.domain.resources import AGENTS, TENANT_LABEL, TENANTS
from nexus.node import NODE_NAME, NODE_POD_LABELS, NodeError
from nexus.runtime import Request, Result
from nexus.runtime.client import ApiError
from nexus.runtime.clock import FakeClock
from nexus.runtime.objects import Object
from nexus.runtime.resource import DEPLOYMENTS, NAMESPACES, PODS, SERVICES, Resource

SYSTEM_NS = "nexus-system"
#: The FakeClock's start in unit tests: 2026-01-01T00:00:00Z, as seconds since the epoch.
EPOCH_2026 = 1_767_225_600.0

#: Kinds the manager caches only when they carry TENANT_LABEL.
LABEL_SCOPED = frozenset({NAMESPACES.plural, DEPLOYMENTS.plural, SERVICES.plural})

Key = tuple[str, str | None, str]  # (plural, namespace, name)


def _key(res: Resource, name: str, namespace: str | None) -> Key:
    return (res.plural, namespace if res.namespaced else None, name)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


@dataclass
class Call:
    verb: str
    kind: str
    namespace: str | None
    name: str
    body: Any = None


class FakeApiServer:
    """Objects by (kind, namespace, name), and the calls made to them."""

    def __init__(self) -> None:
        self.objects: dict[Key, Object] = {}
        self.calls: list[Call] = []
        self._failures: dict[tuple[str, str], list[BaseException]] = {}
        self._rv = itertools.count(1)
        self._uid = itertools.count(1)

    # -- test controls ------------------------------------------------------------------------

    def fail(self, verb: str, res: Resource, *errors: BaseException) -> None:
        """The next calls ``verb`` (create, get, patch, patch_status, delete) on ``res`` raise
        ``errors``, one per call, in order."""
        self._failures.setdefault((verb, res.plural), []).extend(errors)

    def put(self, res: Resource, obj: Object) -> Object:
        """Store ``obj`` as if it had been created earlier (no call recorded)."""
        stored = self._stamp(res, copy.deepcopy(obj))
        meta = stored["metadata"]
        self.objects[_key(res, meta["name"], meta.get("namespace"))] = stored
        return copy.deepcopy(stored)

    def peek(self, res: Resource, name: str, namespace: str | None = None) -> Object | None:
        obj = self.objects.get(_key(res, name, namespace))
        return copy.deepcopy(obj) if obj is not None else None

    def writes(self) -> list[Call]:
        return [c for c in self.calls if c.verb not in ("get",)]

    def finish_namespace_deletion(self, name: str) -> None:
        """What the namespace controller does once a terminating namespace is empty."""
        self.objects.pop(_key(NAMESPACES, name, None), None)

    # -- the Writer protocol ------------------------------------------------------------------

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> Object:
        self._record("get", res, namespace, name)
        obj = self.objects.get(_key(res, name, namespace))
        if obj is None:
            raise ApiError(404, "NotFound", {"message": f"{res.kind} {name} not found"})
        return copy.deepcopy(obj)

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> Object | None:
        try:
            return await self.get(res, name, namespace)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None
    ) -> Object:
        meta = obj["metadata"]
        ns = namespace or meta.get("namespace")
        self._record("create", res, ns, meta["name"], obj)
        key = _key(res, meta["name"], ns)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", {"message": f"{res.kind} exists"})
        stored = self._stamp(res, copy.deepcopy(dict(obj)))
        self.objects[key] = stored
        return copy.deepcopy(stored)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: str = "merge",
    ) -> Object:
        self._record("patch", res, namespace, name, patch)
        current = self._existing(res, name, namespace)
        if patch_type == "json":
            try:
                updated = jsonpatch.apply_patch(current, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", {"message": str(exc)}) from None
        else:
            updated = merge_patch(current, {k: v for k, v in patch.items() if k != "status"})
        return self._store(res, current, updated)

    async def patch_status(
        self, res: Resource, name: str, status: Mapping[str, Any], namespace: str | None = None
    ) -> Object:
        self._record("patch_status", res, namespace, name, dict(status))
        current = self._existing(res, name, namespace)
        updated = copy.deepcopy(current)
        updated["status"] = merge_patch(current.get("status") or {}, dict(status))
        return self._store(res, current, updated)

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        ignore_not_found: bool = False,
    ) -> Object | None:
        self._record("delete", res, namespace, name)
        key = _key(res, name, namespace)
        obj = self.objects.get(key)
        if obj is None:
            if ignore_not_found:
                return None
            raise ApiError(404, "NotFound", {"message": f"{res.kind} {name} not found"})
        if obj["metadata"].get("finalizers") or res == NAMESPACES:
            obj["metadata"].setdefault("deletionTimestamp", "2026-01-01T00:00:00Z")
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            return copy.deepcopy(obj)
        del self.objects[key]
        return None

    # -- internals ----------------------------------------------------------------------------

    def _record(
        self, verb: str, res: Resource, namespace: str | None, name: str, body: Any = None
    ) -> None:
        self.calls.append(Call(verb, res.kind, namespace, name, copy.deepcopy(body)))
        pending = self._failures.get((verb, res.plural))
        if pending:
            raise pending.pop(0)

    def _stamp(self, res: Resource, obj: Object) -> Object:
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        meta["resourceVersion"] = str(next(self._rv))
        return obj

    def _existing(self, res: Resource, name: str, namespace: str | None) -> Object:
        obj = self.objects.get(_key(res, name, namespace))
        if obj is None:
            raise ApiError(404, "NotFound", {"message": f"{res.kind} {name} not found"})
        return copy.deepcopy(obj)

    def _store(self, res: Resource, before: Object, after: Object) -> Object:
        meta = after["metadata"]
        if after.get("spec") != before.get("spec"):
            meta["generation"] = int(meta.get("generation") or 0) + 1
        meta["resourceVersion"] = str(next(self._rv))
        key = _key(res, meta["name"], meta.get("namespace"))
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and res != NAMESPACES:
            self.objects.pop(key, None)  # the last finalizer is gone: the object goes
        else:
            self.objects[key] = after
        return copy.deepcopy(after)


def _cached(key: Key, obj: Object) -> bool:
    labels = obj["metadata"].get("labels") or {}
    if key[0] in LABEL_SCOPED:
        return TENANT_LABEL in labels
    if key[0] == PODS.plural:
        return all(labels.get(k) == v for k, v in NODE_POD_LABELS.items())
    return True


class FakeCache:
    """The informer cache: what the server held at the last :meth:`sync`."""

    def __init__(
        self,
        server: FakeApiServer,
        indexers: Mapping[tuple[Resource, str], Callable[[Object], list[str]]] | None = None,
    ) -> None:
        self.server = server
        self.indexers = dict(indexers or {})
        self.objects: dict[Key, Object] = {}

    def sync(self) -> None:
        self.objects = {
            key: copy.deepcopy(obj) for key, obj in self.server.objects.items() if _cached(key, obj)
        }

    def get(self, resource: Resource, name: str, namespace: str | None = None) -> Object | None:
        obj = self.objects.get(_key(resource, name, namespace))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource: Resource, namespace: str | None = None) -> list[Object]:
        return [
            copy.deepcopy(obj)
            for (plural, ns, _), obj in sorted(
                self.objects.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])
            )
            if plural == resource.plural and (namespace is None or ns == namespace)
        ]

    def by_index(
        self, resource: Resource, index: str, value: str, namespace: str | None = None
    ) -> list[Object]:
        fn = self.indexers.get((resource, index))
        if fn is None:
            raise LookupError(f"no index {index!r} on {resource}")
        return [obj for obj in self.list(resource, namespace) if value in fn(obj)]


@dataclass
class Event:
    type: str
    reason: str
    note: str
    regarding: str


class FakeEvents:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def normal(
        self, regarding: Mapping[str, Any], reason: str, note: str, action: str | None = None
    ) -> None:
        self.events.append(Event("Normal", reason, note, regarding["metadata"]["name"]))

    def warning(
        self, regarding: Mapping[str, Any], reason: str, note: str, action: str | None = None
    ) -> None:
        self.events.append(Event("Warning", reason, note, regarding["metadata"]["name"]))

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.events]


@dataclass
class NodeAgent:
    config: Object
    status: str = "draft"  # draft | deployed | paused
    built: bool = False


@dataclass
class FakeNode:
    """One astromesh node per namespace, held in memory."""

    agents: dict[str, dict[str, NodeAgent]] = field(default_factory=dict)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    #: Raised by every call while set (a node that is down, hangs, or answers 5xx).
    down: NodeError | None = None
    #: Raised once by the next call of that method ("get_agent", "register", ...).
    failures: dict[str, NodeError] = field(default_factory=dict)

    def _call(self, method: str, namespace: str, name: str) -> dict[str, NodeAgent]:
        self.calls.append((method, namespace, name))
        if self.down is not None:
            raise self.down
        if method in self.failures:
            raise self.failures.pop(method)
        return self.agents.setdefault(namespace, {})

    def calls_of(self, method: str) -> list[tuple[str, str, str]]:
        return [c for c in self.calls if c[0] == method]

    def state(self, namespace: str, name: str) -> str | None:
        agent = self.agents.get(namespace, {}).get(name)
        return agent.status if agent else None

    def put(self, namespace: str, spec: Object, status: str = "deployed") -> None:
        """An agent on the node that got there some other way (no call recorded)."""
        self.agents.setdefault(namespace, {})[spec["metadata"]["name"]] = NodeAgent(
            config=copy.deepcopy(spec), status=status, built=status == "deployed"
        )

    def restart(self, namespace: str) -> None:
        """The node process restarted without its agents (nothing kept on disk)."""
        self.agents.pop(namespace, None)

    async def list_agents(self, namespace: str) -> list[dict[str, Any]]:
        agents = self._call("list_agents", namespace, "")
        return [
            {
                "name": name,
                "version": (a.config.get("metadata") or {}).get("version"),
                "namespace": (a.config.get("metadata") or {}).get("namespace", "default"),
                "status": a.status,
            }
            for name, a in agents.items()
        ]

    async def get_agent(self, namespace: str, name: str) -> dict[str, Any] | None:
        agent = self._call("get_agent", namespace, name).get(name)
        if agent is None:
            return None
        body = copy.deepcopy(agent.config)
        if agent.built and isinstance(body.get("spec"), dict):
            # As the real node: a built agent shows the skills it validated.
            body["spec"]["skills"] = copy.deepcopy(body["spec"].get("skills") or [])
        return body

    async def register(self, namespace: str, spec: Mapping[str, Any]) -> None:
        name = spec["metadata"]["name"]
        agents = self._call("register", namespace, name)
        current = agents.get(name)
        agents[name] = NodeAgent(
            config=copy.deepcopy(dict(spec)), built=current.built if current else False
        )

    async def deploy(self, namespace: str, name: str) -> None:
        agent = self._call("deploy", namespace, name).get(name)
        if agent is None:
            raise NodeError(404, f"Agent '{name}' not found")
        agent.status, agent.built = "deployed", True

    async def pause(self, namespace: str, name: str) -> None:
        agent = self._call("pause", namespace, name).get(name)
        if agent is None or agent.status != "deployed":
            raise NodeError(404, f"Agent '{name}' is not deployed")
        agent.status, agent.built = "paused", False

    async def delete(self, namespace: str, name: str) -> None:
        agents = self._call("delete", namespace, name)
        if agents.pop(name, None) is None:
            raise NodeError(404, f"Agent '{name}' not found")


# -- objects ------------------------------------------------------------------------------------


def tenant(name: str, *, max_agents: int | None = 10, **spec: Any) -> Object:
    quota: Object = {"cpu": "2", "memory": "4Gi"}
    if max_agents is not None:
        quota["maxAgents"] = max_agents
    return {
        "metadata": {"name": name, "namespace": SYSTEM_NS},
        "spec": {
            "displayName": f"Tenant {name}",
            "nodeProfile": "full",
            "resourceQuota": quota,
            **spec,
        },
    }


def agent(
    name: str, namespace: str, *, created: str = "2026-01-01T00:00:00Z", **spec: Any
) -> Object:
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": {
            "agentSpec": {
                "apiVersion": "astromesh/v1",
                "kind": "Agent",
                "metadata": {"name": name, "version": "1.0.0"},
                "spec": {
                    "identity": {"display_name": name},
                    "model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}},
                    "orchestration": {"pattern": "react"},
                },
            },
            **spec,
        },
    }


def node_pod(
    namespace: str,
    *,
    name: str = "astromesh-node-abc12",
    ready: bool = False,
    ip: str | None = "127.0.100.7",
    restarts: int = 0,
    uid: str | None = None,
    **status: Any,
) -> Object:
    """A pod of the node Deployment of ``namespace``, as a kubelet reports it."""
    meta: Object = {
        "name": name,
        "namespace": namespace,
        "labels": {**NODE_POD_LABELS, TENANT_LABEL: namespace},
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    if uid is not None:
        meta["uid"] = uid
    st: Object = {
        "phase": "Running" if ip else "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
        "containerStatuses": [
            {"name": NODE_NAME, "ready": ready, "restartCount": restarts, "state": {}}
        ],
    }
    if ip:
        st["podIP"] = ip
    st.update(status)
    return {"metadata": meta, "spec": {}, "status": st}


def ready_tenant(name: str, **kw: Any) -> Object:
    """A tenant as the tenant controller leaves it once its namespace is in place."""
    t = tenant(name, **kw)
    t["metadata"]["finalizers"] = ["nexus.astromesh.io/tenant-cleanup"]
    t["status"] = {
        "phase": "Ready",
        "namespace": name,
        "nodeEndpoint": f"http://astromesh-node.{name}.svc:8000",
        "agentCount": 0,
    }
    return t


class World:
    """One fake API server, its cache, an event sink, a node and a clock; and the reconcilers
    built on them, as ``nexus.controllers.setup`` builds them on a manager.

    By default the tenant reconciler does not wait for the node (there is no kubelet here to
    make a Deployment available): ``World(wait_for_node=True)`` does, and
    :meth:`node_available` plays the kubelet and the controller manager.
    """

    RESYNC = 60.0
    ERROR_RETRY = 30.0
    PENDING_RETRY = 15.0

    def __init__(self, *, wait_for_node: bool = False, prune_orphans: bool = True) -> None:
        self.server = FakeApiServer()
        self.cache = FakeCache(
            self.server, indexers={(TENANTS, TENANT_BY_NAMESPACE): tenant_namespace_index}
        )
        self.events = FakeEvents()
        self.node = FakeNode()
        self.clock = FakeClock(EPOCH_2026)
        self.tenants = NexusTenantReconciler(
            cache=self.cache,
            client=self.server,
            events=self.events,
            node=self.node,
            settings=TenantSettings(
                system_namespace=SYSTEM_NS,
                node_image="astromesh/node:test",
                resync_period=self.RESYNC,
                error_retry=self.ERROR_RETRY,
                node_run_as_user=65532,
                fence=FenceSettings(),
                wait_for_node=wait_for_node,
                prune_orphans=prune_orphans,
            ),
            clock=self.clock,
        )
        self.agents = NexusAgentReconciler(
            cache=self.cache,
            client=self.server,
            events=self.events,
            node=self.node,
            settings=AgentSettings(
                system_namespace=SYSTEM_NS,
                resync_period=self.RESYNC,
                error_retry=self.ERROR_RETRY,
                pending_retry=self.PENDING_RETRY,
            ),
            clock=self.clock,
        )

    async def reconcile_tenant(self, name: str) -> Result | None:
        """Let the cache catch up with the server, then reconcile the tenant ``name``."""
        self.cache.sync()
        return await self.tenants.reconcile(Request(name=name, namespace=SYSTEM_NS))

    async def reconcile_agent(self, name: str, namespace: str) -> Result | None:
        self.cache.sync()
        return await self.agents.reconcile(Request(name=name, namespace=namespace))

    def tenant(self, name: str) -> Object:
        obj = self.server.peek(TENANTS, name, SYSTEM_NS)
        assert obj is not None, f"tenant {name} is gone"
        return obj

    def agent(self, name: str, namespace: str) -> Object:
        obj = self.server.peek(AGENTS, name, namespace)
        assert obj is not None, f"agent {namespace}/{name} is gone"
        return obj

    def node_available(
        self, namespace: str, *, available: bool = True, pod: Object | None = None
    ) -> None:
        """The node Deployment of ``namespace`` as the controller manager reports it (one
        available pod, or none), with its pod (default: a Ready one, or none at all)."""
        key = ("deployments", namespace, NODE_NAME)
        dep = self.server.objects[key]
        dep["status"] = (
            {
                "replicas": 1,
                "availableReplicas": 1,
                "readyReplicas": 1,
                "conditions": [{"type": "Available", "status": "True"}],
            }
            if available
            else {
                "replicas": 1,
                "unavailableReplicas": 1,
                "conditions": [{"type": "Available", "status": "False"}],
            }
        )
        for k in [k for k in self.server.objects if k[0] == "pods" and k[1] == namespace]:
            del self.server.objects[k]
        if pod is None and available:
            pod = node_pod(namespace, ready=True)
        if pod is not None:
            self.server.put(PODS, pod)

    def forget_calls(self) -> None:
        """Start counting calls and events afresh (after the set-up of a test)."""
        self.server.calls.clear()
        self.node.calls.clear()
        self.events.events.clear()


__all__ = [
    "AGENTS",
    "EPOCH_2026",
    "SYSTEM_NS",
    "TENANTS",
    "FakeApiServer",
    "FakeCache",
    "FakeEvents",
    "FakeNode",
    "World",
    "agent",
    "merge_patch",
    "node_pod",
    "ready_tenant",
    "tenant",
]
