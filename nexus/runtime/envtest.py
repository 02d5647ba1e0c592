"""A real, throw-away Kubernetes control plane for tests (controller-runtime's envtest model).

Starts ``etcd`` and ``kube-apiserver`` (and optionally ``kube-controller-manager``, which brings
namespace deletion, garbage collection and Deployment -> ReplicaSet) on free loopback ports,
writes a kubeconfig, installs CRDs and waits until they are established, then (optionally)
registers admission webhooks served on this machine (``webhook_install_options``). There is no
kubelet and no scheduler: Pods stay ``Pending``, which is what controller tests want.

Set ``USE_EXISTING_CLUSTER=true`` (with ``KUBECONFIG``) to run the same tests against a real
cluster (kind, k3s) instead; then nothing is started or stopped, only CRDs are installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import structlog
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from nexus.runtime.client import ApiError, Client
from nexus.runtime.resource import CRDS, NAMESPACES
from nexus.runtime.webhook.install import WebhookInstallOptions

log = structlog.get_logger("nexus.envtest")

ASSETS_ENV = "KUBEBUILDER_ASSETS"
#: The version hack/setup-envtest.sh builds and caches.
K8S_VERSION = "1.20.2"
EXISTING_CLUSTER_ENV = "USE_EXISTING_CLUSTER"

# Controllers that need a cloud, a kubelet or node objects; without them the controller manager
# logs errors forever and burns CPU for nothing.
_KCM_CONTROLLERS = (
    "*,-nodeipam,-nodelifecycle,-attachdetach,-persistentvolume-binder,"
    "-persistentvolume-expander,-ttl,-bootstrapsigner,-tokencleaner,-csrsigning,"
    "-cloud-node-lifecycle,-service,-route"
)


class EnvtestError(RuntimeError):
    """The control plane could not be started, reached or configured."""


class _ExitedEarly(Exception):
    """A process died before it became ready."""


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: if the test runner is killed, the control plane must not outlive it.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)


def find_assets(
    explicit: str | os.PathLike[str] | None = None, *, show_progress: bool = False
) -> Path:
    """Locate a folder with ``etcd`` and ``kube-apiserver``.

    Order: the explicit argument, ``$KUBEBUILDER_ASSETS``, the build cache, then
    ``hack/setup-envtest.sh`` of a Nexus checkout (which builds and caches the binaries on first
    use; with ``show_progress`` its progress lines go to this process's stderr).
    """
    for candidate in (explicit, os.environ.get(ASSETS_ENV)):
        if candidate and _has_core(Path(candidate)):
            return Path(candidate)
    cache_root = os.environ.get("NEXUS_ENVTEST_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nexus" / "envtest"
    )
    cached = Path(cache_root) / K8S_VERSION
    if _has_core(cached) and (cached / "kube-controller-manager").is_file():
        return cached
    script = Path(__file__).resolve().parents[2] / "hack" / "setup-envtest.sh"
    if script.exists():
        import subprocess

        out = subprocess.run(["bash", str(script)], check=False, capture_output=True, text=True)
        if out.returncode == 0 and _has_core(Path(out.stdout.strip())):
            return Path(out.stdout.strip())
        raise EnvtestError(f"hack/setup-envtest.sh failed:\n{out.stderr[-4000:]}")
    raise EnvtestError(
        f"no control-plane binaries: set {ASSETS_ENV} to a folder holding etcd and kube-apiserver"
    )


def _has_core(d: Path) -> bool:
    return (d / "etcd").is_file() and (d / "kube-apiserver").is_file()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass
class _Process:
    name: str
    binary: Path
    args: list[str]
    ready_url: str
    proc: asyncio.subprocess.Process | None = None


@dataclass
class Environment:
    """An async context manager owning a local control plane.

    Guarantees: every process it started is stopped on exit (SIGTERM, then SIGKILL after
    ``stop_timeout``), even when the body raised; started processes also die if the owning
    Python process is killed (Linux parent-death signal). With ``data_dir`` set, the etcd data,
    certificates and credentials survive a restart (local development); otherwise everything
    lives in a temporary folder that is removed on exit.
    """

    crd_paths: Sequence[str | os.PathLike[str]] = ()
    assets_dir: str | os.PathLike[str] | None = None
    with_controller_manager: bool = False
    use_existing_cluster: bool | None = None
    data_dir: str | os.PathLike[str] | None = None
    apiserver_port: int | None = None
    start_timeout: float = 60.0
    stop_timeout: float = 20.0
    crd_install_timeout: float = 10.0
    extra_apiserver_flags: Sequence[str] = ()
    #: Webhook configurations to register once the control plane is up, re-pointed at a local
    #: server by URL with a self-signed CA (see :class:`WebhookInstallOptions`); they are
    #: removed again on exit.
    webhook_install_options: WebhookInstallOptions | None = None

    kubeconfig_path: Path = field(init=False)
    host: str = field(init=False, default="")
    token: str = field(init=False, default="")
    _root: Path = field(init=False)
    _owns_root: bool = field(init=False, default=False)
    _procs: list[_Process] = field(init=False, default_factory=list)
    _etcd_url: str = field(init=False, default="")

    # -- lifecycle -------------------------------------------------------------------------

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

    @property
    def existing(self) -> bool:
        if self.use_existing_cluster is None:
            return _truthy(os.environ.get(EXISTING_CLUSTER_ENV))
        return self.use_existing_cluster

    async def start(self) -> None:
        if self.existing:
            await self._attach_existing()
        else:
            try:
                await self._start_local()
            except BaseException:
                await self.stop()
                raise
        if self.crd_paths:
            async with await self.api_client() as api:
                await install_crds(api, self.crd_paths, timeout=self.crd_install_timeout)
        if self.webhook_install_options is not None:
            await self.install_webhooks(self.webhook_install_options)

    async def install_webhooks(self, options: WebhookInstallOptions) -> None:
        """Register ``options``' webhook configurations (by URL, self-signed CA) now."""
        default_dir = (
            self._root / "webhook-certs"
            if not self.existing
            else Path(tempfile.mkdtemp(prefix="nexus-webhook-certs-"))
        )
        async with await self.api_client() as api:
            client = Client(api)
            try:
                await options.install(client, default_dir)
            finally:
                await client.close()

    async def uninstall_webhooks(self, options: WebhookInstallOptions) -> None:
        """Remove the configurations ``options`` installed (best effort, bounded)."""
        if not options.installed:
            return
        try:
            async with asyncio.timeout(10), await self.api_client() as api:
                client = Client(api)
                try:
                    await options.uninstall(client)
                finally:
                    await client.close()
        except (ApiError, ConnectionError, OSError, TimeoutError) as exc:
            log.warning("envtest.webhook_uninstall_failed", error=str(exc))

    async def stop(self) -> None:
        """Stop every started process, newest first; idempotent."""
        if self.webhook_install_options is not None and (self.existing or self._procs):
            # A configuration left behind would point the cluster at a server that is gone.
            await self.uninstall_webhooks(self.webhook_install_options)
        while self._procs:
            await self._terminate(self._procs.pop())
        if self._owns_root:
            shutil.rmtree(self._root, ignore_errors=True)
            self._owns_root = False

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self._procs if p.proc is not None]

    # -- clients ---------------------------------------------------------------------------

    async def client_configuration(self) -> k8s_client.Configuration:
        """A fresh kubernetes-asyncio configuration for the control plane."""
        cfg = k8s_client.Configuration()
        if self.existing:
            await k8s_config.load_kube_config(
                config_file=str(self.kubeconfig_path), client_configuration=cfg
            )
            return cfg
        cfg.host = self.host
        cfg.verify_ssl = False
        cfg.api_key = {"BearerToken": self.token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return cfg

    async def api_client(self) -> k8s_client.ApiClient:
        """A new ApiClient (use ``async with``); the caller owns it."""
        return k8s_client.ApiClient(await self.client_configuration())

    # -- internals -------------------------------------------------------------------------

    async def _attach_existing(self) -> None:
        path = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        self.kubeconfig_path = Path(path.split(os.pathsep)[0])
        if not self.kubeconfig_path.exists():
            raise EnvtestError(f"{EXISTING_CLUSTER_ENV}=true but no kubeconfig at {path}")
        log.info("envtest.existing_cluster", kubeconfig=str(self.kubeconfig_path))

    async def _start_local(self) -> None:
        assets = await asyncio.to_thread(find_assets, self.assets_dir)
        if self.data_dir is not None:
            self._root = Path(self.data_dir).resolve()
            self._root.mkdir(parents=True, exist_ok=True)
        else:
            self._root = Path(tempfile.mkdtemp(prefix="nexus-envtest-"))
            self._owns_root = True
        pki = self._root / "pki"
        pki.mkdir(exist_ok=True)
        await _ensure_service_account_keys(pki)
        token_file = pki / "tokens.csv"
        if token_file.exists():
            self.token = token_file.read_text().split(",", 1)[0]
        else:
            self.token = secrets.token_urlsafe(32)
            token_file.write_text(f"{self.token},admin,admin,system:masters\n")
            token_file.chmod(0o600)

        etcd_port, peer_port = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{etcd_port}"
        await self._run(
            "etcd",
            assets / "etcd",
            [
                f"--data-dir={self._root / 'etcd'}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            f"{self._etcd_url}/health",
        )

        port = self.apiserver_port or free_port()
        self.host = f"https://127.0.0.1:{port}"
        await self._run(
            "kube-apiserver",
            assets / "kube-apiserver",
            [
                f"--etcd-servers={self._etcd_url}",
                f"--cert-dir={pki}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--insecure-port=0",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=RBAC",
                f"--token-auth-file={token_file}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--v=0",
                *self.extra_apiserver_flags,
            ],
            f"{self.host}/readyz",
        )
        self.kubeconfig_path = self._root / "kubeconfig"
        self._write_kubeconfig()
        await self._wait_default_namespace()

        if self.with_controller_manager:
            if not (assets / "kube-controller-manager").is_file():
                raise EnvtestError(f"kube-controller-manager not found in {assets}")
            kcm_port = free_port()
            kubeconfig = str(self.kubeconfig_path)
            await self._run(
                "kube-controller-manager",
                assets / "kube-controller-manager",
                [
                    f"--kubeconfig={kubeconfig}",
                    f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={kcm_port}",
                    # 1.20 also serves plain HTTP on 10252 unless told not to, which collides
                    # with any second control plane on the machine.
                    "--port=0",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    "--use-service-account-credentials=false",
                    f"--controllers={_KCM_CONTROLLERS}",
                    # Quota usage is eventually consistent: a pod admitted while the quota
                    # controller recomputes can stay uncounted until the next full sync (5 min
                    # by default), far longer than a test waits.
                    "--resource-quota-sync-period=10s",
                    "--v=0",
                ],
                f"https://127.0.0.1:{kcm_port}/healthz",
            )
        log.info("envtest.started", host=self.host, root=str(self._root))

    async def _wait_default_namespace(self) -> None:
        # /readyz turns green a moment before the bootstrap controller creates "default";
        # tests (and users) expect it to be there.
        async with await self.api_client() as api:
            client = Client(api)
            try:
                deadline = time.monotonic() + self.start_timeout
                while await client.get_or_none(NAMESPACES, "default") is None:
                    if time.monotonic() > deadline:
                        raise EnvtestError("namespace default was never created")
                    await asyncio.sleep(0.05)
            finally:
                await client.close()

    def _write_kubeconfig(self) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {"server": self.host, "insecure-skip-tls-verify": True},
                }
            ],
            "users": [{"name": "envtest-admin", "user": {"token": self.token}}],
            "contexts": [
                {"name": "envtest", "context": {"cluster": "envtest", "user": "envtest-admin"}}
            ],
            "current-context": "envtest",
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(cfg))
        self.kubeconfig_path.chmod(0o600)

    async def _run(self, name: str, binary: Path, args: list[str], ready_url: str) -> None:
        p = _Process(name, binary, args, ready_url)
        self._procs.append(p)
        await self._launch(p)

    def _log_path(self, name: str) -> Path:
        return self._root / f"{name}.log"

    async def _launch(self, p: _Process, attempts: int = 2) -> None:
        """Start ``p`` and wait until it is ready.

        kube-apiserver 1.20 built with a newer Go occasionally dies while starting under
        immediate load (a restart with clients hammering it); one more attempt is logged and
        made, so that a flaky start of the test infrastructure does not fail the test.
        """
        for attempt in range(1, attempts + 1):
            try:
                await self._launch_once(p)
                return
            except _ExitedEarly as exc:
                if attempt == attempts:
                    raise EnvtestError(str(exc)) from None
                log.warning("envtest.start_retry", process=p.name, error=str(exc)[:500])

    async def _launch_once(self, p: _Process) -> None:
        with self._log_path(p.name).open("ab") as logf:
            p.proc = await asyncio.create_subprocess_exec(
                str(p.binary),
                *p.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logf,
                stderr=logf,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        await self._wait_ready(p)

    async def _wait_ready(self, p: _Process) -> None:
        assert p.proc is not None
        deadline = time.monotonic() + self.start_timeout
        headers = {"Authorization": f"Bearer {self.token}"}
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ok_body = b'"health":"true"' if p.name == "etcd" else b"ok"
        last = ""
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if p.proc.returncode is not None:
                    raise _ExitedEarly(
                        f"{p.name} exited with {p.proc.returncode}:\n"
                        f"{_crash_summary(self._log_path(p.name))}"
                    )
                try:
                    async with session.get(
                        p.ready_url,
                        headers=headers,
                        ssl=ctx,
                        timeout=aiohttp.ClientTimeout(total=2),
                    ) as resp:
                        body = await resp.read()
                        if resp.status == 200 and ok_body in body:
                            return
                        last = f"{resp.status} {body[:200]!r}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    last = repr(exc)
                await asyncio.sleep(0.1)
        raise EnvtestError(
            f"{p.name} not ready after {self.start_timeout}s ({last}):\n"
            f"{_tail(self._log_path(p.name))}"
        )

    async def _terminate(self, p: _Process, sig: signal.Signals = signal.SIGTERM) -> None:
        if p.proc is None or p.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, sig)
        try:
            await asyncio.wait_for(p.proc.wait(), self.stop_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.proc.pid, signal.SIGKILL)
            await p.proc.wait()
        log.debug("envtest.stopped", process=p.name, pid=p.proc.pid)

    # -- fault injection for tests ------------------------------------------------------------

    def _process(self, name: str) -> _Process:
        for p in self._procs:
            if p.name == name:
                return p
        raise EnvtestError(f"{name} is not running in this environment")

    async def stop_apiserver(self, *, kill: bool = False) -> None:
        """Stop kube-apiserver (SIGTERM, or SIGKILL with ``kill``); etcd keeps the data."""
        sig = signal.SIGKILL if kill else signal.SIGTERM
        await self._terminate(self._process("kube-apiserver"), sig)

    async def start_apiserver(self) -> None:
        """Start kube-apiserver again on the same port, with the same flags."""
        await self._launch(self._process("kube-apiserver"))

    async def restart_apiserver(self, downtime: float = 0.0, *, kill: bool = False) -> None:
        await self.stop_apiserver(kill=kill)
        if downtime:
            await asyncio.sleep(downtime)
        await self.start_apiserver()

    async def compact_etcd(self) -> int:
        """Compact etcd to its current revision; watches from older versions get 410 Gone."""
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self._etcd_url}/v3/kv/range", json={"key": "AA=="}) as r:
                rev = int((await r.json())["header"]["revision"])
            async with session.post(
                f"{self._etcd_url}/v3/kv/compaction", json={"revision": str(rev), "physical": True}
            ) as r:
                if r.status != 200:
                    raise EnvtestError(f"etcd compaction failed: {r.status} {await r.text()}")
        return rev


_KLOG_FATAL = re.compile(r"^F\d{4} \d\d:\d\d:\d\d")


def _crash_summary(path: Path) -> str:
    """The first panic/fatal lines of a Go crash (its stack is long) and the log's tail."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    # Go runtime crashes ("panic:", "fatal error:") and klog fatals ("F1126 12:00:00.000 ...").
    starts = [
        i
        for i, line in enumerate(lines)
        if line.startswith(("panic:", "fatal error:")) or _KLOG_FATAL.match(line)
    ]
    head = lines[starts[-1] : starts[-1] + 6] if starts else []
    return "\n".join([*head, "...", *lines[-15:]]) if head else "\n".join(lines[-30:])


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


async def _ensure_service_account_keys(pki: Path) -> None:
    key, pub = pki / "sa.key", pki / "sa.pub"
    if key.exists() and pub.exists():
        return
    for cmd in (
        ["openssl", "genrsa", "-out", str(key), "2048"],
        ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
    ):
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            raise EnvtestError(f"{' '.join(cmd)} failed: {err.decode(errors='replace')}")
    key.chmod(0o600)


def load_crd_documents(paths: Iterable[str | os.PathLike[str]]) -> list[dict[str, Any]]:
    """Read CRDs from files or folders of YAML files (multi-document files allowed)."""
    docs: list[dict[str, Any]] = []
    for raw in paths:
        p = Path(raw)
        files = sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    docs.append(doc)
    return docs


async def install_crds(
    api: k8s_client.ApiClient,
    paths: Iterable[str | os.PathLike[str]],
    *,
    timeout: float = 10.0,
) -> list[str]:
    """Create or update CRDs and wait until each is Established; returns their names."""
    client = Client(api)
    try:
        return await _install_crds(client, paths, timeout)
    finally:
        await client.close()


async def _install_crds(
    client: Client, paths: Iterable[str | os.PathLike[str]], timeout: float
) -> list[str]:
    names: list[str] = []
    for doc in load_crd_documents(paths):
        name = doc["metadata"]["name"]
        names.append(name)
        try:
            await client.create(CRDS, doc)
        except ApiError as exc:
            if not exc.conflict:
                raise
            current = await client.get(CRDS, name)
            updated = {**doc, "metadata": {**doc["metadata"]}}
            updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await client.replace(CRDS, updated)
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            crd = await client.get(CRDS, name)
            conds = (crd.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                pending.discard(name)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise EnvtestError(f"CRDs not established after {timeout}s: {sorted(pending)}")
        await asyncio.sleep(0.1)
    return names
