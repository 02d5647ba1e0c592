"""Container probes as the kubelet runs them: httpGet, tcpSocket and exec, with thresholds.

The probe settings come from the pod's own spec, with the API server's defaults (period 10 s,
timeout 1 s, success threshold 1, failure threshold 3), so a pod behaves here as it would on a
cluster node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import structlog

log = structlog.get_logger("nexus.localnode.probes")

Handler = Literal["httpGet", "tcpSocket", "exec"]
USER_AGENT = "kube-probe/nexus-localnode"


@dataclass(frozen=True, slots=True)
class Probe:
    """One probe of a container spec, its port resolved to a number."""

    handler: Handler
    port: int = 0
    path: str = "/"
    host: str | None = None
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], ports: Mapping[str, int]) -> Probe:
        """Parse a ``livenessProbe``/``readinessProbe``/``startupProbe``.

        ``ports`` maps the container's port names to numbers (for ``port: http``). Raises
        ``ValueError`` for a probe without a supported handler or with an unknown port name.
        """
        timing: dict[str, Any] = {
            "initial_delay": float(spec.get("initialDelaySeconds") or 0),
            "period": float(spec.get("periodSeconds") or 10),
            "timeout": float(spec.get("timeoutSeconds") or 1),
            "success_threshold": int(spec.get("successThreshold") or 1),
            "failure_threshold": int(spec.get("failureThreshold") or 3),
        }
        if (http := spec.get("httpGet")) is not None:
            headers = tuple(
                (str(h.get("name", "")), str(h.get("value", "")))
                for h in http.get("httpHeaders") or ()
            )
            return cls(
                "httpGet",
                port=_port(http.get("port"), ports),
                path=str(http.get("path") or "/"),
                host=http.get("host") or None,
                scheme=str(http.get("scheme") or "HTTP").upper(),
                headers=headers,
                **timing,
            )
        if (tcp := spec.get("tcpSocket")) is not None:
            return cls(
                "tcpSocket", port=_port(tcp.get("port"), ports), host=tcp.get("host"), **timing
            )
        if (exe := spec.get("exec")) is not None:
            command = tuple(str(c) for c in exe.get("command") or ())
            if not command:
                raise ValueError("exec probe without a command")
            return cls("exec", command=command, **timing)
        raise ValueError("probe without httpGet, tcpSocket or exec")


def _port(value: Any, ports: Mapping[str, int]) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        if value in ports:
            return ports[value]
    raise ValueError(f"probe port {value!r} is not a number nor a named container port")


async def run_probe(
    probe: Probe,
    *,
    session: aiohttp.ClientSession,
    pod_ip: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> tuple[bool, str]:
    """Run the probe once; ``(success, message)``. Never raises (but for cancellation)."""
    try:
        async with asyncio.timeout(probe.timeout):
            if probe.handler == "httpGet":
                return await _http(probe, session, pod_ip)
            if probe.handler == "tcpSocket":
                return await _tcp(probe, pod_ip)
            return await _exec(probe, env, cwd)
    except TimeoutError:
        return False, f"{_target(probe, pod_ip)}: timeout after {probe.timeout:g}s"
    except (OSError, aiohttp.ClientError) as exc:
        return False, f"{_target(probe, pod_ip)}: {type(exc).__name__}: {exc}"


def _target(probe: Probe, pod_ip: str) -> str:
    if probe.handler == "exec":
        return f"exec {' '.join(probe.command)[:80]}"
    scheme = probe.scheme.lower() if probe.handler == "httpGet" else "tcp"
    path = probe.path if probe.handler == "httpGet" else ""
    return f"{scheme}://{probe.host or pod_ip}:{probe.port}{path}"


async def _http(probe: Probe, session: aiohttp.ClientSession, pod_ip: str) -> tuple[bool, str]:
    # The kubelet counts 2xx and 3xx as success and does not verify TLS certificates.
    headers = {"User-Agent": USER_AGENT, **dict(probe.headers)}
    async with session.get(
        _target(probe, pod_ip), headers=headers, allow_redirects=False, ssl=False
    ) as resp:
        if 200 <= resp.status < 400:
            return True, ""
        return False, f"HTTP probe failed with statuscode: {resp.status}"


async def _tcp(probe: Probe, pod_ip: str) -> tuple[bool, str]:
    _, writer = await asyncio.open_connection(probe.host or pod_ip, probe.port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def _exec(probe: Probe, env: Mapping[str, str] | None, cwd: Path | None) -> tuple[bool, str]:
    proc = await asyncio.create_subprocess_exec(
        *probe.command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode == 0:
        return True, ""
    return False, f"exec probe exited with {proc.returncode}: {out[-200:].decode(errors='replace')}"


Check = Callable[[], Awaitable[tuple[bool, str]]]


class ProbeLoop:
    """Runs one probe of one container instance periodically (the kubelet's prober worker).

    Guarantees: the first probe runs ``initial_delay`` seconds after :meth:`run` starts, then
    one every ``period`` seconds (never two at once); :attr:`result` starts at ``initial`` and
    flips only after ``success_threshold`` consecutive successes or ``failure_threshold``
    consecutive failures; ``on_change(result, message)`` is called on every flip and
    ``on_failure(message)`` on every failed probe, synchronously, on the event loop.
    A startup probe (``startup=True``, initial result False) ends after its first success,
    and reports ``on_change(False, ...)`` once ``failure_threshold`` consecutive failures
    happened before it: the container never started. While ``gate()`` is false a period
    passes without a probe (liveness and readiness wait for the startup probe this way).
    """

    def __init__(
        self,
        probe: Probe,
        check: Check,
        *,
        initial: bool,
        on_change: Callable[[bool, str], None],
        on_failure: Callable[[str], None] | None = None,
        startup: bool = False,
        gate: Callable[[], bool] | None = None,
    ) -> None:
        self.probe = probe
        self.result = initial
        self._check = check
        self._on_change = on_change
        self._on_failure = on_failure
        self._startup = startup
        self._gate = gate
        self._successes = 0
        self._failures = 0
        self.probes = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.probe.initial_delay)
        while True:
            started = loop.time()
            if self._gate is None or self._gate():
                ok, message = await self._check()
                self.probes += 1
                self._record(ok, message)
                if self._startup and self.result:
                    return
            await asyncio.sleep(max(0.0, self.probe.period - (loop.time() - started)))

    def _record(self, ok: bool, message: str) -> None:
        if ok:
            self._successes += 1
            self._failures = 0
            if not self.result and self._successes >= self.probe.success_threshold:
                self.result = True
                self._on_change(True, "")
            return
        self._failures += 1
        self._successes = 0
        if self._on_failure is not None:
            self._on_failure(message)
        if self._failures >= self.probe.failure_threshold and (
            self.result or (self._startup and self._failures == self.probe.failure_threshold)
        ):
            self.result = False
            self._on_change(False, message)
