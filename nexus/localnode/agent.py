"""The local node agent: a kubelet for a control plane that has none.

It registers a Node, binds the selected pods (those of astromesh node Deployments) to it, runs
each as a local process on a loopback address of its own, and reports their status, so that
the controller manager computes Deployment availability exactly as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s_client

from nexus.localnode import podspec
from nexus.localnode.addresses import AddressPool
from nexus.localnode.config import LocalNodeConfig
from nexus.localnode.node import NodeRegistration
from nexus.localnode.status import unschedulable
from nexus.localnode.worker import GONE_GRACE, PodInfo, PodWorker, StopReason, pod_dir
from nexus.runtime.client import ApiError, Client
from nexus.runtime.controller import Controller, ControllerOptions
from nexus.runtime.events import EventRecorder
from nexus.runtime.handler import enqueue_for_object
from nexus.runtime.informer import Informer
from nexus.runtime.reconcile import Request, Result
from nexus.runtime.resource import NAMESPACES, PODS

log = structlog.get_logger("nexus.localnode")

Object = dict[str, Any]

REPORTING_CONTROLLER = "nexus.astromesh.io/localnode"
#: Event reason (and scheduling failure) when the agent's cap is reached.
REASON_CAPACITY = "NodeCapacity"
_TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class LocalNodeAgent:
    """Runs the pods of astromesh node Deployments as local processes, one address each.

    Use it as ``async with LocalNodeAgent(api_client, LocalNodeConfig(...)) as agent:``, or
    call :meth:`start` and :meth:`stop`. ``api`` is a kubernetes-asyncio ``ApiClient`` (or a
    runtime :class:`~nexus.runtime.client.Client`, which the agent then does not close).

    Guarantees:
      * after :meth:`start`: the Node ``config.node_name`` exists and is Ready, its Lease is
        renewed; the pod cache has synced; pods already bound to this node run again (as
        container restarts); folders of pods that no longer exist are removed; the root folder
        is locked, so a second agent cannot use it at the same time;
      * every pod that matches ``config.label_selector`` and is unbound or bound to this node
        is served (an unbound one only if its namespace matches ``config.namespace_selector``,
        when set; it is considered again when its namespace appears): an unbound pod is bound
        here (``pods/binding``) while fewer than ``config.max_pods`` pods run and an address is
        free; otherwise it stays Pending with ``PodScheduled=False`` (reason
        ``Unschedulable``) and a Warning event (reason ``NodeCapacity``), and is tried again
        as soon as a pod goes and every ``config.pending_retry`` seconds;
      * each bound pod runs as a :class:`~nexus.localnode.worker.PodWorker`: one process on the
        pod's own 127.x address, probes from the pod spec, status in ``pods/status``;
      * a deleted pod's process is stopped within its grace period, its folder removed, and the
        pod deleted with grace period 0, so that namespace deletion completes;
      * :meth:`stop` stops every process (``config.shutdown_grace``), leaves the pods bound and
        not ready, sets the Node's Ready condition to Unknown and leaves nothing running.
        Pods being deleted are finished first.
      * nothing blocks the event loop: processes, probes and API calls are all asynchronous.
    """

    def __init__(
        self,
        api: k8s_client.ApiClient | Client,
        config: LocalNodeConfig | None = None,
    ) -> None:
        self.config = config or LocalNodeConfig()
        self._owns_client = not isinstance(api, Client)
        self.client = api if isinstance(api, Client) else Client(api)
        self._pool = AddressPool(self.config.address_range)
        self._workers: dict[str, PodWorker] = {}
        self._informer = Informer(self.client, PODS, label_selector=self.config.label_selector)
        self._controller = Controller(
            "localnode",
            self,
            ControllerOptions(
                max_concurrent_reconciles=self.config.workers, need_leader_election=False
            ),
        )
        self._controller.watch(self._informer, enqueue_for_object)
        # Namespaces are watched only to know which ones this agent serves; a namespace event
        # re-queues its pods, since a pod's event may be seen before its namespace's.
        self._namespaces: Informer | None = None
        if self.config.namespace_selector:
            self._namespaces = Informer(
                self.client, NAMESPACES, label_selector=self.config.namespace_selector
            )
            self._controller.watch(self._namespaces, self._pods_in_namespace)
        self._node = NodeRegistration(self.client, self.config)
        self.recorder = EventRecorder(
            self.client, REPORTING_CONTROLLER, reporting_instance=self.config.node_name
        )
        self._session: aiohttp.ClientSession | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._lock: IO[bytes] | None = None
        self._started = False
        self._stopping = False
        self._log = log.bind(node=self.config.node_name)

    # -- public -----------------------------------------------------------------------------

    @property
    def node_name(self) -> str:
        return self.config.node_name

    @property
    def root(self) -> Path:
        return self.config.root_dir

    def pods(self) -> list[PodInfo]:
        """The pods this agent runs now (being deleted included)."""
        return [w.info() for w in self._workers.values()]

    def pod(self, namespace: str, name: str) -> PodInfo | None:
        worker = self._workers.get(f"{namespace}/{name}")
        return worker.info() if worker is not None else None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Register the Node, sync the pod cache, resume this node's pods, start serving."""
        if self._started:
            raise RuntimeError("a LocalNodeAgent is started once")
        self._started = True
        try:
            await asyncio.to_thread(self._lock_root)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True, limit=0)
            )
            await self._node.register()
            self._heartbeat = asyncio.create_task(
                self._node.run(), name=f"localnode-heartbeat:{self.node_name}"
            )
            self._informer.start()
            if self._namespaces is not None:
                self._namespaces.start()
            async with asyncio.timeout(60):
                await self._informer.wait_for_sync()
                if self._namespaces is not None:
                    await self._namespaces.wait_for_sync()
            for pod in self._informer.list():
                if self._runnable_here(pod) and podspec.node_name(pod) == self.node_name:
                    worker = self._admit(pod)
                    if worker is not None:
                        worker.start()
            known = {
                podspec.uid(p)
                for p in self._informer.list()
                if podspec.node_name(p) == self.node_name
            }
            await asyncio.to_thread(self._remove_orphans, known)
            await self._controller.start()
        except BaseException:
            await self.stop()
            raise
        self._log.info(
            "localnode.started",
            range=self.config.address_range,
            max_pods=self.config.max_pods,
            root=str(self.root),
            resumed=len(self._workers),
        )

    async def stop(self) -> None:
        """Stop every process and mark the node stopped; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        await self._controller.stop(timeout=10)
        for worker in list(self._workers.values()):
            worker.terminate(StopReason.SHUTDOWN, self.config.shutdown_grace)
        if self._workers:
            await asyncio.gather(*(w.wait() for w in list(self._workers.values())))
        await self._informer.stop()
        if self._namespaces is not None:
            await self._namespaces.stop()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._node.uid is not None:
            await self._node.mark_stopped()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.recorder.flush()
        if self._session is not None:
            await self._session.close()
        if self._owns_client:
            await self.client.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._log.info("localnode.stopped")

    # -- reconcile --------------------------------------------------------------------------

    async def reconcile(self, request: Request) -> Result | None:
        """Bring one pod in line: bind it, run it, stop it or finish its deletion."""
        pod = self._informer.get(request.name, request.namespace)
        worker = self._workers.get(request.key)
        if worker is not None and (pod is None or podspec.uid(pod) != worker.uid):
            # Force-deleted, or replaced by a new pod of the same name: the worker's end
            # queues this key again, and the new pod (if any) is served then.
            worker.terminate(StopReason.GONE, GONE_GRACE)
            return None
        if pod is None:
            return None
        bound = podspec.node_name(pod)
        if bound and bound != self.node_name:
            return None
        if podspec.deleting(pod):
            if worker is not None:
                worker.update(pod)
                worker.terminate(StopReason.DELETED, podspec.grace_period(pod))
            elif bound:
                # Bound here but not running (the agent was down): nothing to stop.
                await self._delete_now(pod)
                await asyncio.to_thread(shutil.rmtree, pod_dir(self.root, pod), True)
            return None
        if (pod.get("status") or {}).get("phase") in _TERMINAL_PHASES:
            return None
        if worker is not None:
            worker.update(pod)
            return None
        if not bound:
            if not self._serves_namespace(pod):
                return None
            return await self._schedule(pod)
        why = podspec.unsupported(pod)
        if why is not None:
            self.recorder.warning(pod, "UnsupportedPod", why, "Admitting")
            return None
        worker = self._admit(pod)
        if worker is None:
            self.recorder.warning(pod, REASON_CAPACITY, self._capacity_message(), "Admitting")
            return Result(requeue_after=self.config.pending_retry)
        worker.start()
        return None

    def _runnable_here(self, pod: Object) -> bool:
        return (
            not podspec.deleting(pod)
            and (pod.get("status") or {}).get("phase") not in _TERMINAL_PHASES
            and podspec.unsupported(pod) is None
        )

    def _serves_namespace(self, pod: Object) -> bool:
        if self._namespaces is None:
            return True
        return self._namespaces.get(str(podspec.meta(pod).get("namespace"))) is not None

    def _pods_in_namespace(self, namespace: Object) -> list[Request]:
        name = str((namespace.get("metadata") or {}).get("name"))
        return [Request(str(podspec.meta(p).get("name")), name) for p in self._informer.list(name)]

    def _capacity_message(self) -> str:
        return (
            f"0/1 nodes are available: {self.node_name} is at its cap of "
            f"{self.config.max_pods} pods (--max-pods)"
        )

    async def _schedule(self, pod: Object) -> Result | None:
        why = podspec.unsupported(pod)
        if why is not None:
            await self._unschedulable(pod, "UnsupportedPod", why)
            return None
        if len(self._workers) >= self.config.max_pods:
            await self._unschedulable(pod, REASON_CAPACITY, self._capacity_message())
            return Result(requeue_after=self.config.pending_retry)
        bound = {**pod, "spec": {**podspec.spec(pod), "nodeName": self.node_name}}
        worker = self._admit(bound)
        if worker is None:
            await self._unschedulable(
                pod, "NoAddress", f"no free address left in {self.config.address_range}"
            )
            return Result(requeue_after=self.config.pending_retry)
        try:
            await self._bind(pod)
        except ApiError as exc:
            self._discard(worker)
            if exc.conflict or exc.not_found:
                return None  # bound meanwhile, or gone: the next event tells
            raise
        except BaseException:
            self._discard(worker)
            raise
        m = podspec.meta(pod)
        self.recorder.normal(
            pod,
            "Scheduled",
            f"Successfully assigned {m.get('namespace')}/{m.get('name')} to {self.node_name}",
            "Binding",
        )
        worker.start()
        return None

    def _admit(self, pod: Object) -> PodWorker | None:
        """Reserve a slot and an address for the pod: a worker, not started yet."""
        if len(self._workers) >= self.config.max_pods or self._session is None:
            return None
        c = podspec.container(pod)
        preferred = (pod.get("status") or {}).get("podIP")
        try:
            ip = self._pool.allocate(
                podspec.uid(pod), preferred=preferred, port=podspec.serving_port(c)
            )
        except LookupError:
            return None
        worker = PodWorker(
            pod,
            ip=ip,
            config=self.config,
            client=self.client,
            session=self._session,
            recorder=self.recorder,
            on_done=self._worker_done,
        )
        self._workers[worker.key] = worker
        return worker

    def _discard(self, worker: PodWorker) -> None:
        if self._workers.get(worker.key) is worker:
            del self._workers[worker.key]
        self._pool.release(worker.uid)

    def _worker_done(self, worker: PodWorker) -> None:
        self._discard(worker)
        if self._stopping:
            return
        # A slot and an address are free: the pod's key (a replacement of the same name) and
        # the pods waiting for a slot get another chance.
        queue = self._controller.queue
        queue.add(Request(worker.name, worker.namespace))
        for pod in self._informer.list():
            if not podspec.node_name(pod) and not podspec.deleting(pod):
                m = podspec.meta(pod)
                queue.add(Request(str(m.get("name")), m.get("namespace")))

    async def _bind(self, pod: Object) -> None:
        m = podspec.meta(pod)
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": m.get("name"), "namespace": m.get("namespace")},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        await self.client.request(
            "POST", PODS.path(m.get("namespace"), m.get("name"), "binding"), body=body
        )
        self._log.info("localnode.pod.bound", pod=podspec.key(pod))

    async def _unschedulable(self, pod: Object, reason: str, message: str) -> None:
        """A Warning event, and ``PodScheduled=False`` as a scheduler would write it."""
        self.recorder.warning(pod, reason, message, "Scheduling")
        for cond in (pod.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "PodScheduled" and (
                cond.get("status") == "False" and cond.get("message") == message
            ):
                return
        m = podspec.meta(pod)
        try:
            await self.client.patch(
                PODS,
                str(m.get("name")),
                {
                    "metadata": {"uid": m.get("uid")},
                    "status": {"conditions": [unschedulable(message)]},
                },
                m.get("namespace"),
                subresource="status",
            )
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise
        self._log.info("localnode.pod.pending", pod=podspec.key(pod), reason=reason)

    async def _delete_now(self, pod: Object) -> None:
        m = podspec.meta(pod)
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": m.get("uid")},
        }
        try:
            await self.client.request(
                "DELETE", PODS.path(m.get("namespace"), m.get("name")), body=body
            )
        except ApiError as exc:
            if not (exc.not_found or exc.conflict):
                raise

    # -- files ------------------------------------------------------------------------------

    def _lock_root(self) -> None:
        pods = self.root / "pods"
        pods.mkdir(parents=True, exist_ok=True)
        lock = (self.root / ".lock").open("ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"another local node agent uses {self.root}") from None
        self._lock = lock

    def _remove_orphans(self, known_uids: set[str]) -> None:
        """Remove the folders of pods that no longer exist (deleted while the agent was down)."""
        held = {w.uid for w in self._workers.values()}
        for entry in (self.root / "pods").iterdir():
            uid = entry.name.rpartition("_")[2]
            if uid in held or (uid in known_uids and entry.is_dir()):
                continue
            self._log.info("localnode.pod.orphan_removed", folder=entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry)
