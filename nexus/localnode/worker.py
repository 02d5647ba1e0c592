"""One pod on the local node: its container as a process, its probes, its status, its end.

The kubelet's pod worker, reduced to what an astromesh node pod needs: one container,
``restartPolicy: Always`` with the crash-loop backoff, startup/liveness/readiness probes from
the pod spec, status written to ``pods/status``, and the final delete after a graceful stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from nexus.localnode import podspec
from nexus.localnode.config import LocalNodeConfig
from nexus.localnode.probes import Check, Probe, ProbeLoop, run_probe
from nexus.localnode.process import CONFIG_DIR_ENV, NodeProcess, astromesh_command
from nexus.localnode.status import (
    Conditions,
    ContainerStatus,
    pod_status,
    rfc3339,
    skipped_init_status,
)
from nexus.runtime.client import ApiError, Client
from nexus.runtime.events import EventRecorder
from nexus.runtime.resource import PODS

log = structlog.get_logger("nexus.localnode.worker")

Object = dict[str, Any]

#: How long the agent waits for the last status write of a pod when it shuts down.
_FINAL_WRITE_TIMEOUT = 5.0
#: Grace period for the process of a pod that vanished without a graceful delete.
GONE_GRACE = 2.0


class StopReason(StrEnum):
    #: The pod is being deleted: stop, remove its folder, then delete it for good.
    DELETED = "deleted"
    #: The pod no longer exists (force-deleted, or replaced by a pod of the same name).
    GONE = "gone"
    #: The agent is stopping: the pod stays, not ready, and runs again on the next start.
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A snapshot of one pod the agent runs."""

    namespace: str
    name: str
    uid: str
    ip: str
    port: int
    pid: int | None
    workdir: Path
    ready: bool
    restart_count: int
    phase: str

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"


def pod_dir(root: Path, pod: Object) -> Path:
    """``<root>/pods/<namespace>_<name>_<uid>`` (the uid last: orphan clean-up reads it)."""
    m = podspec.meta(pod)
    return root / "pods" / f"{m.get('namespace')}_{m.get('name')}_{podspec.uid(pod)}"


def _make_dirs(paths: Iterable[Path]) -> None:
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


class PodWorker:
    """Runs one pod from admission to its end.

    Guarantees:
      * at most one process runs for the pod at any time; it listens on the pod's own address
        and container port, with an empty config dir of its own at every start (a restarted
        container loses what it kept, as in a cluster);
      * a process that exits, fails its liveness probe or never passes its startup probe is
        stopped and started again after the crash-loop backoff (``base`` doubling to ``cap``,
        forgotten after ``reset_after`` seconds of running); ``restartCount`` counts the
        restarts;
      * the pod's status follows the container (phase, podIP, hostIP, conditions,
        containerStatuses); writes are serialised, only sent when the status changed, carry
        the pod's uid as a precondition, and are retried until they succeed or the pod is gone;
      * :meth:`terminate` stops the process (SIGTERM, SIGKILL after the grace period); a
        deleted or vanished pod's folder is removed, and a deleted pod is then deleted with
        grace period 0 (the kubelet's final delete); ``on_done`` is called exactly once, last.
    """

    def __init__(
        self,
        pod: Object,
        *,
        ip: str,
        config: LocalNodeConfig,
        client: Client,
        session: aiohttp.ClientSession,
        recorder: EventRecorder,
        on_done: Callable[[PodWorker], None],
    ) -> None:
        m = podspec.meta(pod)
        self.pod = pod
        self.namespace = str(m.get("namespace"))
        self.name = str(m.get("name"))
        self.uid = podspec.uid(pod)
        self.key = f"{self.namespace}/{self.name}"
        self.ip = ip
        self.config = config
        self._client = client
        self._session = session
        self._recorder = recorder
        self._on_done = on_done
        c = podspec.container(pod)
        self._container_spec = c
        self.port = podspec.serving_port(c)
        self.workdir = pod_dir(config.root_dir, pod)
        status: Object = pod.get("status") or {}
        self.conditions = Conditions.from_status(status)
        previous = (status.get("containerStatuses") or [{}])[0]
        self.container = ContainerStatus(
            name=str(c.get("name") or "main"),
            image=str(c.get("image") or ""),
            restart_count=int(previous.get("restartCount") or 0),
            last_state=dict(previous.get("lastState") or {}),
        )
        if previous.get("containerID"):
            # Adopted after an agent restart: the old process is gone, so this start is a
            # restart of the container.
            self.container.restart_count += 1
        self.start_time = str(status.get("startTime") or rfc3339())
        self._init_containers = podspec.init_containers(pod)
        self._init_statuses = [
            skipped_init_status(ic, self.start_time) for ic in self._init_containers
        ]
        # emptyDir volumes: folders of the pod, kept across container restarts as in a cluster.
        self._volumes = {
            path: self.workdir / "volumes" / name
            for path, name in podspec.empty_dir_mounts(pod, c).items()
        }
        self._log = log.bind(pod=self.key, uid=self.uid, ip=ip)
        self._proc: NodeProcess | None = None
        self._stop = asyncio.Event()
        self._reason: StopReason | None = None
        self._grace = podspec.grace_period(pod)
        self._dirty = asyncio.Event()
        self._written: Object | None = None
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._crashes = 0

    # -- control ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"localnode:{self.key}")

    def update(self, pod: Object) -> None:
        """The latest state of the pod (its spec is immutable where it matters here)."""
        if podspec.uid(pod) == self.uid:
            self.pod = pod

    def terminate(self, reason: StopReason, grace: float | None = None) -> None:
        """Ask the worker to stop; returns at once (see :meth:`wait`).

        A later call may shorten the grace period or turn a shutdown into a deletion.
        """
        grace = self._grace if grace is None else grace
        if self._reason is None or (
            self._reason is StopReason.SHUTDOWN and reason is not StopReason.SHUTDOWN
        ):
            self._reason = reason
        self._grace = min(self._grace, grace) if self._stop.is_set() else grace
        self._stop.set()

    @property
    def terminating(self) -> bool:
        return self._stop.is_set()

    async def wait(self) -> None:
        await self._done.wait()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def info(self) -> PodInfo:
        return PodInfo(
            namespace=self.namespace,
            name=self.name,
            uid=self.uid,
            ip=self.ip,
            port=self.port,
            pid=self._proc.pid if self._proc is not None and self._proc.running else None,
            workdir=self.workdir,
            ready=self.container.ready,
            restart_count=self.container.restart_count,
            phase=str(self._status()["phase"]),
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def _run(self) -> None:
        writer = asyncio.create_task(self._status_loop(), name=f"localnode-status:{self.key}")
        try:
            self._changed()
            await self._container_loop()
        except Exception:
            self._log.exception("localnode.pod.worker_error")
            # Without a working loop the pod cannot run here; it waits for its deletion.
            await self._stop.wait()
        finally:
            await self._finish(writer)

    async def _finish(self, writer: asyncio.Task[None]) -> None:
        reason = self._reason or StopReason.SHUTDOWN
        try:
            if self._proc is not None:
                await self._proc.stop(self._grace)
                if reason is StopReason.SHUTDOWN and "running" in self.container.state:
                    self._terminated(self._proc, "NodeShutdown")
            self.container.ready = False
            self.container.started = False
            self._changed()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if reason is StopReason.SHUTDOWN:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(_FINAL_WRITE_TIMEOUT):
                        await self._write_status()
            else:
                await asyncio.to_thread(shutil.rmtree, self.workdir, True)
            if reason is StopReason.DELETED:
                await self._final_delete()
            self._log.info("localnode.pod.stopped", reason=str(reason))
        finally:
            self._done.set()
            self._on_done(self)

    async def _container_loop(self) -> None:
        first = True
        while not self._stop.is_set():
            if not first:
                delay = min(
                    self.config.restart_backoff_base * 2 ** (self._crashes - 1),
                    self.config.restart_backoff_cap,
                )
                self.container.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {delay:g}s restarting failed container "
                        f"{self.container.name} of pod {self.key}",
                    }
                }
                self._changed()
                self._recorder.warning(
                    self.pod, "BackOff", "Back-off restarting failed container", "Starting"
                )
                if await self._wait_stop(delay):
                    return
            first = False
            proc = await self._start_process()
            if proc is None:
                self._crashes += 1
                continue
            why = await self._supervise(proc)
            if why is None:
                return
            if why != "exited":
                self._recorder.normal(
                    self.pod,
                    "Killing",
                    f"Container {self.container.name} failed {why} probe, will be restarted",
                )
                await proc.stop(podspec.grace_period(self.pod))
            ran = time.time() - (proc.started_at or time.time())
            if ran >= self.config.restart_backoff_reset_after:
                self._crashes = 0
            self._crashes += 1
            self._terminated(proc, "")
            self.container.restart_count += 1
            self._changed()
            self._log.warning(
                "localnode.container.exited",
                cause=why,
                exit_code=proc.returncode,
                ran_seconds=round(ran, 1),
                restart_count=self.container.restart_count,
            )

    async def _wait_stop(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _start_process(self) -> NodeProcess | None:
        config_dir = self.workdir / "config"
        await asyncio.to_thread(_fresh_dir, config_dir)
        await asyncio.to_thread(_make_dirs, self._volumes.values())
        pod_env, skipped = podspec.environment(
            self.pod, self._container_spec, self.ip, self.config.host_ip
        )
        pod_env = {k: podspec.relocate(v, self._volumes) for k, v in pod_env.items()}
        if self._init_containers and self.container.restart_count == 0 and self._proc is None:
            names = ", ".join(str(ic.get("name")) for ic in self._init_containers)
            self._recorder.normal(
                self.pod,
                "InitSkipped",
                f"Init containers not run on the local node (no images; the pod's folders "
                f"stand in for its volumes): {names}",
                "Starting",
            )
        if skipped:
            self._recorder.warning(
                self.pod,
                "EnvNotResolved",
                f"the local node agent does not resolve these variables: {', '.join(skipped)}",
                "Starting",
            )
        env = {
            **os.environ,
            **self.config.extra_env,
            **pod_env,
            "HOSTNAME": self.name,
            CONFIG_DIR_ENV: str(config_dir),
        }
        template = self.config.command
        argv = (
            [a.format(host=self.ip, port=self.port) for a in template]
            if template
            else astromesh_command(
                self.ip, self.port, python=self.config.python, log_level=self.config.node_log_level
            )
        )
        proc = NodeProcess(argv, env=env, cwd=self.workdir, log_path=self.workdir / "node.log")
        try:
            pid = await proc.start()
        except OSError as exc:
            self.container.state = {
                "waiting": {"reason": "RunContainerError", "message": str(exc)[:500]}
            }
            self._changed()
            self._recorder.warning(self.pod, "Failed", f"Error: {exc}", "Starting")
            self._log.error("localnode.container.start_failed", error=str(exc))
            return None
        self._proc = proc
        self.container.state = {"running": {"startedAt": rfc3339(proc.started_at)}}
        self.container.container_id = f"localnode://{self.uid[:8]}-{pid}"
        self.container.ready = False
        self.container.started = False
        self._changed()
        self._recorder.normal(
            self.pod,
            "Started",
            f"Started container {self.container.name} (pid {pid}) on {self.ip}:{self.port}",
            "Starting",
        )
        self._log.info("localnode.container.started", pid=pid, port=self.port)
        return proc

    def _terminated(self, proc: NodeProcess, reason: str) -> None:
        code = proc.returncode if proc.returncode is not None else -9
        term: Object = {
            # A process killed by signal N shows as exit code 128 + N, as a shell reports it.
            "exitCode": code if code >= 0 else 128 - code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": rfc3339(proc.started_at),
            "finishedAt": rfc3339(),
            "containerID": self.container.container_id,
        }
        if code < 0:
            term["signal"] = -code
        self.container.last_state = {"terminated": term}
        self.container.state = {"terminated": term} if reason else self.container.state
        self.container.ready = False
        self.container.started = False

    # -- probes -----------------------------------------------------------------------------

    def _probe(self, kind: str) -> tuple[Probe, Check] | None:
        """The container's ``<kind>Probe`` and the check that runs it, or None."""
        spec = self._container_spec.get(f"{kind}Probe")
        if not spec:
            return None
        try:
            probe = Probe.from_spec(spec, podspec.ports(self._container_spec))
        except ValueError as exc:
            # As the kubelet does, a probe it cannot run fails, on the pod's own timing.
            message = str(exc)
            timing = Probe(
                "exec",
                command=("false",),
                period=float(spec.get("periodSeconds") or 10),
                failure_threshold=int(spec.get("failureThreshold") or 3),
            )

            async def broken() -> tuple[bool, str]:
                return False, message

            return timing, broken

        async def check() -> tuple[bool, str]:
            return await run_probe(probe, session=self._session, pod_ip=self.ip, cwd=self.workdir)

        return probe, check

    async def _supervise(self, proc: NodeProcess) -> str | None:
        """Wait until the process must go: ``exited``, ``liveness``, ``startup``, or None
        when the worker is stopping."""
        killed: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        tasks: list[asyncio.Task[Any]] = []

        def kill(why: str) -> None:
            if not killed.done():
                killed.set_result(why)

        def unhealthy(kind: str) -> Callable[[str], None]:
            def note(message: str) -> None:
                self._recorder.warning(
                    self.pod, "Unhealthy", f"{kind.capitalize()} probe failed: {message}"
                )

            return note

        def on_ready(ready: bool, message: str) -> None:
            self.container.ready = ready
            self._changed()
            self._log.info("localnode.pod.readiness", ready=ready, message=message or None)

        def on_started(ok: bool, _message: str) -> None:
            if not ok:
                kill("startup")
                return
            self.container.started = True
            if readiness is None:
                self.container.ready = True
            self._changed()

        def started() -> bool:
            return self.container.started

        def spawn(loop: ProbeLoop, kind: str) -> None:
            async def guarded() -> None:
                try:
                    await loop.run()
                except Exception:
                    # A probe that cannot run counts as failing: restart rather than freeze.
                    self._log.exception("localnode.probe.error", probe=kind)
                    kill(kind)

            tasks.append(asyncio.create_task(guarded(), name=f"probe:{kind}:{self.key}"))

        # As in the kubelet, every probe ticks from the container's start; liveness and
        # readiness are skipped until the startup probe (if any) has passed.
        startup = self._probe("startup")
        readiness = self._probe("readiness")
        liveness = self._probe("liveness")
        if startup is None:
            on_started(True, "")
        else:
            loop = ProbeLoop(
                *startup,
                initial=False,
                on_change=on_started,
                on_failure=unhealthy("startup"),
                startup=True,
            )
            spawn(loop, "startup")
        if readiness is not None:
            loop = ProbeLoop(
                *readiness,
                initial=False,
                on_change=on_ready,
                on_failure=unhealthy("readiness"),
                gate=started,
            )
            spawn(loop, "readiness")
        if liveness is not None:
            loop = ProbeLoop(
                *liveness,
                initial=True,
                on_change=lambda ok, _m: None if ok else kill("liveness"),
                on_failure=unhealthy("liveness"),
                gate=started,
            )
            spawn(loop, "liveness")
        exited = asyncio.create_task(proc.wait())
        stopping = asyncio.create_task(self._stop.wait())
        try:
            waits: set[asyncio.Future[Any]] = {exited, stopping, killed}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (*tasks, exited, stopping):
                t.cancel()
            await asyncio.gather(*tasks, exited, stopping, return_exceptions=True)
            if self.container.ready:
                self.container.ready = False
                self._changed()
        if self._stop.is_set():
            return None
        if killed.done():
            return killed.result()
        return "exited"

    # -- status -----------------------------------------------------------------------------

    def _changed(self) -> None:
        ready = self.container.ready and "running" in self.container.state
        not_ready = f"containers with unready status: [{self.container.name}]"
        self.conditions.set("Initialized", True)
        self.conditions.set("PodScheduled", True)
        for kind in ("ContainersReady", "Ready"):
            self.conditions.set(
                kind,
                ready,
                "" if ready else "ContainersNotReady",
                "" if ready else not_ready,
            )
        self._dirty.set()

    def _status(self) -> Object:
        return pod_status(
            container=self.container,
            conditions=self.conditions,
            host_ip=self.config.host_ip,
            pod_ip=self.ip,
            start_time=self.start_time,
            init_containers=self._init_statuses,
        )

    async def _write_status(self) -> bool:
        """One write of the current status; False when the pod is gone or was replaced."""
        status = self._status()
        if status == self._written:
            return True
        try:
            await self._client.patch(
                PODS,
                self.name,
                {"metadata": {"uid": self.uid}, "status": status},
                self.namespace,
                subresource="status",
            )
        except ApiError as exc:
            if exc.not_found or exc.conflict:
                # 409 here is the uid precondition: a new pod of the same name.
                self._log.info("localnode.pod.status_gone", status=exc.status)
                return False
            raise
        self._written = status
        return True

    async def _status_loop(self) -> None:
        delay = 0.2
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                if not await self._write_status():
                    return
                delay = 0.2
            except (ApiError, ConnectionError, OSError, aiohttp.ClientError) as exc:
                self._log.warning("localnode.pod.status_retry", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                self._dirty.set()

    async def _final_delete(self) -> None:
        """Delete the pod with grace period 0, only if it is still this pod (uid)."""
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid},
        }
        for attempt in range(6):
            try:
                await self._client.request(
                    "DELETE", PODS.path(self.namespace, self.name), body=body
                )
                return
            except ApiError as exc:
                if exc.not_found or exc.conflict:
                    return
                self._log.warning("localnode.pod.delete_retry", error=str(exc))
            except (ConnectionError, OSError) as exc:
                self._log.warning("localnode.pod.delete_retry", error=str(exc))
            await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        self._log.error("localnode.pod.delete_failed")
