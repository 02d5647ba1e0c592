"""``make dev``: Nexus on this machine, with no cluster and no Docker.

Starts an embedded control plane (etcd + kube-apiserver + kube-controller-manager, data under
``.nexus/``), installs the CRDs, starts the local node agent (a kubelet for this machine: each
tenant's ``astromesh-node`` pod becomes a real astromesh process from PyPI on a loopback
address of its own, files under ``.nexus/localnode``), and runs the manager (controllers, API
on :8080, probes, metrics, SQLite under ``.nexus/``), which reaches each tenant's node at its
pod's address. Seeds the dev account, a tenant and an API key, waits until the tenant's node
answers, prints how to use them, and stops everything on Ctrl-C. A second run reuses the data.
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

import structlog
from kubernetes_asyncio import client as k8s_client

from nexus import app
from nexus.api import auth
from nexus.api.store import Store, Tenant
from nexus.domain.resources import TENANT_NAMESPACE_LABEL, TENANTS
from nexus.domain.tenant import tenant_body
from nexus.localnode import LocalNodeAgent, LocalNodeConfig, PodInfo
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
#: Time the seeded tenant's node may take to become available (s): a node process starts in
#: about a second, but its pod's readiness probe runs every 10 s.
TENANT_READY_TIMEOUT = 120.0
#: Node processes the local node agent runs at most (one per tenant); more stay Pending.
DEFAULT_MAX_NODES = 10
#: Loopback addresses of the node processes (127.0.0.0/8 is all local on Linux).
DEFAULT_NODE_RANGE = "127.0.100.0/24"


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


async def tenant_node(
    client: Client, agent: LocalNodeAgent, tenant: Tenant, s: ManagerSettings
) -> PodInfo | None:
    """The ready node process serving ``tenant`` once the tenant is Ready, else None."""
    cr = await client.get_or_none(TENANTS, tenant.cr_name, s.namespace)
    if cr is None or (cr.get("status") or {}).get("phase") != "Ready":
        return None
    namespace = (cr.get("status") or {}).get("namespace") or tenant.cr_name
    ready = [p for p in agent.pods() if p.namespace == namespace and p.ready]
    return ready[0] if ready else None


async def wait_for_tenant_node(
    client: Client, agent: LocalNodeAgent, tenant: Tenant, s: ManagerSettings, stop: asyncio.Event
) -> PodInfo | None:
    """Wait until the tenant's node answers (None if stopped or timed out first)."""
    deadline = time.monotonic() + TENANT_READY_TIMEOUT
    while not stop.is_set() and time.monotonic() < deadline:
        node = await tenant_node(client, agent, tenant, s)
        if node is not None:
            return node
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    return None


def local_node_config(
    data: Path, s: ManagerSettings, max_nodes: int, node_range: str
) -> LocalNodeConfig:
    """The local node agent of ``make dev``: its files under ``data``, this Nexus's tenants."""
    return LocalNodeConfig(
        address_range=node_range,
        root=data / "localnode",
        max_pods=max_nodes,
        # Only this Nexus's tenants: their namespaces carry the manager's namespace.
        namespace_selector=f"{TENANT_NAMESPACE_LABEL}={s.namespace}",
        # A dev machine restarts a crashed node sooner than a cluster would.
        restart_backoff_base=1.0,
        restart_backoff_cap=30.0,
        shutdown_grace=5.0,
    )


async def run(
    data: Path,
    api_port: int,
    probe_port: int = 8081,
    metrics_port: int = 9090,
    *,
    max_nodes: int = DEFAULT_MAX_NODES,
    node_range: str = DEFAULT_NODE_RANGE,
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await env.start()
        settings = dev_settings(
            data,
            env,
            webhooks,
            api_port=api_port,
            probe_port=probe_port,
            metrics_port=metrics_port,
        )
        cfg = await env.client_configuration()
        async with k8s_client.ApiClient(cfg) as api:
            say(f"nexus dev: starting the local node agent (at most {max_nodes} nodes)")
            agent = LocalNodeAgent(api, local_node_config(data, settings, max_nodes, node_range))
            await agent.start()
            try:
                await serve(env, webhooks, api, agent, settings, data=data, stop=stop)
            finally:
                await agent.stop()
    finally:
        await env.stop()
        say("nexus dev: stopped")


def dev_settings(
    data: Path,
    env: Environment,
    webhooks: WebhookInstallOptions,
    *,
    api_port: int,
    probe_port: int,
    metrics_port: int,
) -> ManagerSettings:
    return ManagerSettings(
        kubeconfig=str(env.kubeconfig_path),
        api_bind_address=f":{api_port}",
        health_probe_bind_address=f":{probe_port}",
        metrics_bind_address=f":{metrics_port}",
        webhook_bind_address=webhooks.bind_address,
        webhook_cert_dir=str(webhooks.local_serving_cert_dir),
        database=str(data / "nexus.db"),
        jwt_secret=secret_file(data / "jwt-secret", secrets.token_urlsafe(48)),
        # Each tenant's node at its Ready pod's address: no cluster DNS here.
        node_endpoint="pod",
        wait_for_node=True,
        node_image="astromesh/node:dev",
        log_format="console",
        log_level=os.environ.get("NEXUS_LOG_LEVEL", "warning"),
    )


async def serve(
    env: Environment,
    webhooks: WebhookInstallOptions,
    api: k8s_client.ApiClient,
    agent: LocalNodeAgent,
    settings: ManagerSettings,
    *,
    data: Path,
    stop: asyncio.Event,
) -> None:
    """The manager with its API, the seeded tenant, the banner; until ``stop``."""
    nexus = app.Nexus(api, settings)
    mgr = nexus.manager
    if await mgr.client.get_or_none(NAMESPACES, settings.namespace) is None:
        await mgr.client.create(NAMESPACES, {"metadata": {"name": settings.namespace}})
    server = await nexus.add_api()
    assert server is not None
    nexus.add_webhooks()
    await mgr.start()
    try:
        tenant, raw_key = await seed(server.context.store, data)
        await ensure_tenant_cr(mgr.client, tenant, settings)
        say("nexus dev: waiting for the dev tenant's node")
        node = await wait_for_tenant_node(mgr.client, agent, tenant, settings, stop)
        if stop.is_set():
            return
        if node is None:
            node_line = (
                f"not available after {TENANT_READY_TIMEOUT:g}s; see "
                f"KUBECONFIG={env.kubeconfig_path} kubectl describe nexustenant -n "
                f"{settings.namespace} {tenant.cr_name}"
            )
        else:
            node_line = f"{node.name} at {node.url} (pid {node.pid})"
        api_port = settings.api_bind_address.rpartition(":")[2]
        probe_port = settings.health_probe_bind_address.rpartition(":")[2]
        metrics_port = settings.metrics_bind_address.rpartition(":")[2]
        print(
            f"""
Nexus ready at http://localhost:{api_port}

  account      {DEV_EMAIL} / {DEV_PASSWORD}
  tenant       {tenant.id} ({tenant.cr_name})
  API key      {raw_key}
  kubeconfig   {env.kubeconfig_path}
  node         {node_line}
  nodes        one per tenant, at most {agent.config.max_pods}, on {agent.config.address_range}
  probes       http://localhost:{probe_port}/readyz   metrics http://localhost:{metrics_port}/metrics
  webhooks     https://{webhooks.bind_address} (kubectl writes of NexusAgents/NexusTenants)

  try:  NEXUS_URL=http://localhost:{api_port} hack/walkthrough.sh
        KUBECONFIG={env.kubeconfig_path} kubectl get nexustenants,pods -A -o wide
Press Ctrl-C to stop.""",
            flush=True,
        )
        await stop.wait()
        say("nexus dev: stopping")
    finally:
        await mgr.stop()


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nexus dev", description=__doc__)
    parser.add_argument("--data", default=str(ROOT / ".nexus"), help="state folder")
    parser.add_argument("--api-port", type=int, default=8080)
    parser.add_argument("--probe-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=9090)
    parser.add_argument(
        "--max-nodes",
        type=int,
        default=env_int("NEXUS_DEV_MAX_NODES", DEFAULT_MAX_NODES),
        help="node processes at most (one per tenant); the tenants beyond stay Provisioning "
        f"[env NEXUS_DEV_MAX_NODES; default {DEFAULT_MAX_NODES}]",
    )
    parser.add_argument(
        "--node-range",
        default=os.environ.get("NEXUS_DEV_NODE_RANGE") or DEFAULT_NODE_RANGE,
        help="loopback addresses of the node processes (a 127.0.0.0/8 network or first-last) "
        f"[env NEXUS_DEV_NODE_RANGE; default {DEFAULT_NODE_RANGE}]",
    )
    parser.add_argument("--webhook-port", type=int, default=9443)
    args = parser.parse_args(argv)
    configure_logging(json=False, level="warning")
    try:
        asyncio.run(
            run(
                Path(args.data),
                args.api_port,
                args.probe_port,
                args.metrics_port,
                max_nodes=args.max_nodes,
                node_range=args.node_range,
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
