"""``make dev``: Nexus on this machine, with no cluster and no Docker.

Starts an embedded control plane (etcd + kube-apiserver + kube-controller-manager, data under
``.nexus/``), installs the CRDs, starts a real astromesh node from PyPI on loopback as every
tenant's node, and runs the manager (controllers, API on :8080, probes, metrics, SQLite under
``.nexus/``). Seeds the dev account, a tenant and an API key, prints how to use them, and
stops everything on Ctrl-C. A second run reuses the data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import aiohttp
import structlog
from kubernetes_asyncio import client as k8s_client

from nexus import app
from nexus.api import auth
from nexus.api.store import Store, Tenant
from nexus.domain.resources import TENANTS
from nexus.domain.tenant import tenant_body
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment, find_assets
from nexus.runtime.logging import configure_logging
from nexus.runtime.resource import NAMESPACES
from nexus.runtime.webhook import WebhookInstallOptions
from nexus.settings import ManagerSettings

log = structlog.get_logger("nexus.dev")

ROOT = Path(__file__).resolve().parents[1]
DEV_EMAIL = "dev@astromesh.local"
DEV_PASSWORD = "astromesh-dev-2024"
DEV_TENANT = "Development Tenant"

#: Time the embedded control plane may take to start (s); the first start initialises etcd.
CONTROL_PLANE_START_TIMEOUT = 120.0
#: Time the astromesh node may take to answer /v1/health after it was started (s).
NODE_START_TIMEOUT = 90.0
#: Time the node is given to exit after SIGTERM before it is killed (s).
NODE_STOP_TIMEOUT = 10.0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def secret_file(path: Path, make: str) -> str:
    """Read a local secret, or create it with mode 0600."""
    if path.exists():
        return path.read_text().strip()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(make)
    return make


class DevNode:
    """The astromesh node from PyPI, on loopback, shared by every tenant in dev mode."""

    def __init__(self, port: int, config_dir: Path) -> None:
        self.port = port
        self.config_dir = config_dir
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.config_dir.parent / "node.log"
        with log_path.open("ab") as logf:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "uvicorn", "astromesh.api.main:app",
                "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
                stdin=asyncio.subprocess.DEVNULL, stdout=logf, stderr=logf,
                env={**os.environ, "ASTROMESH_CONFIG_DIR": str(self.config_dir)},
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + NODE_START_TIMEOUT
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"the astromesh node exited; see {log_path}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with s.get(f"{self.url}/v1/health") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the astromesh node did not become healthy; see {log_path}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), NODE_STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()


async def seed(store: Store, data: Path) -> tuple[Tenant, str]:
    """The dev account, its tenant and an API key; idempotent across runs."""
    user = await store.get_user_by_email(DEV_EMAIL)
    if user is None:
        user = await store.create_user(
            DEV_EMAIL, "Developer", await auth.hash_password(DEV_PASSWORD)
        )
    tenants = await store.list_user_tenants(user.id)
    tenant = tenants[0] if tenants else await store.create_tenant(user.id, DEV_TENANT, "full")
    key_file = data / "dev-api-key"
    raw = key_file.read_text().strip() if key_file.exists() else ""
    if not raw or await store.lookup_api_key(auth.hash_secret(raw)) is None:
        raw, digest = auth.new_api_key()
        await store.create_api_key(tenant.id, digest, "dev")
        key_file.unlink(missing_ok=True)
        secret_file(key_file, raw)
    return tenant, raw


async def ensure_tenant_cr(client: Client, tenant: Tenant, s: ManagerSettings) -> None:
    """The dev tenant's NexusTenant, as the REST API would have created it."""
    if await client.get_or_none(TENANTS, tenant.cr_name, s.namespace) is not None:
        return
    await client.create(
        TENANTS,
        tenant_body(
            tenant.cr_name,
            s.namespace,
            tenant_id=tenant.id,
            display_name=tenant.display_name,
            node_profile=tenant.node_profile,
            quota=app.tenant_quota(s),
        ),
    )


async def run(
    data: Path,
    api_port: int,
    node_port: int,
    probe_port: int = 8081,
    metrics_port: int = 9090,
    *,
    webhook_port: int = 9443,
) -> None:
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    say("nexus dev: preparing the control-plane binaries (the first run builds them: minutes)")
    await asyncio.to_thread(find_assets, show_progress=True)
    say("nexus dev: starting etcd, kube-apiserver and kube-controller-manager")
    # The API server calls the manager's admission webhooks on loopback, by URL, trusting a
    # self-signed CA kept in .nexus/ (as the tests do), so kubectl gets the API's answers.
    webhooks = WebhookInstallOptions(
        paths=[ROOT / "config" / "webhook"],
        local_serving_port=webhook_port,
        local_serving_cert_dir=data / "webhook-certs",
    )
    env = Environment(
        crd_paths=[ROOT / "config" / "crd" / "bases"],
        with_controller_manager=True,
        data_dir=data / "cluster",
        start_timeout=CONTROL_PLANE_START_TIMEOUT,
        webhook_install_options=webhooks,
    )
    node = DevNode(node_port, data / "node")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await env.start()
        say("nexus dev: starting the astromesh node")
        await node.start()
        settings = ManagerSettings(
            kubeconfig=str(env.kubeconfig_path),
            api_bind_address=f":{api_port}",
            health_probe_bind_address=f":{probe_port}",
            metrics_bind_address=f":{metrics_port}",
            webhook_bind_address=webhooks.bind_address,
            webhook_cert_dir=str(webhooks.local_serving_cert_dir),
            database=str(data / "nexus.db"),
            jwt_secret=secret_file(data / "jwt-secret", secrets.token_urlsafe(48)),
            node_endpoint=node.url,
            node_image="astromesh/node:dev",
            log_format="console",
            log_level=os.environ.get("NEXUS_LOG_LEVEL", "warning"),
        )
        cfg = await env.client_configuration()
        async with k8s_client.ApiClient(cfg) as api:
            nexus = app.Nexus(api, settings)
            mgr = nexus.manager
            if await mgr.client.get_or_none(NAMESPACES, settings.namespace) is None:
                await mgr.client.create(NAMESPACES, {"metadata": {"name": settings.namespace}})
            server = await nexus.add_api()
            assert server is not None
            nexus.add_webhooks()
            await mgr.start()
            tenant, raw_key = await seed(server.context.store, data)
            await ensure_tenant_cr(mgr.client, tenant, settings)
            print(
                f"""
Nexus ready at http://localhost:{api_port}

  account      {DEV_EMAIL} / {DEV_PASSWORD}
  tenant       {tenant.id} ({tenant.cr_name})
  API key      {raw_key}
  kubeconfig   {env.kubeconfig_path}
  node         {node.url}
  probes       http://localhost:{probe_port}/readyz   metrics http://localhost:{metrics_port}/metrics
  webhooks     https://{webhooks.bind_address} (kubectl writes of NexusAgents/NexusTenants)

  try:  NEXUS_URL=http://localhost:{api_port} hack/walkthrough.sh
        KUBECONFIG={env.kubeconfig_path} kubectl get nexustenants -A
Press Ctrl-C to stop.""",
                flush=True,
            )
            await stop.wait()
            say("nexus dev: stopping")
            await mgr.stop()
    finally:
        await node.stop()
        await env.stop()
        say("nexus dev: stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nexus dev", description=__doc__)
    parser.add_argument("--data", default=str(ROOT / ".nexus"), help="state folder")
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--node-port", type=int, default=18000)
    parser.add_argument("--probe-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument("--webhook-port", type=int, default=9443)
    args = parser.parse_args(argv)
    configure_logging(json=False, level="warning")
    try:
        asyncio.run(
            run(
                Path(args.data),
                args.api_port,
                args.node_port,
                args.probe_port,
                args.metrics_port,
                webhook_port=args.webhook_port,
            )
        )
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        say(f"nexus dev: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
