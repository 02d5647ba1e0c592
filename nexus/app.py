"""``nexus manager``: the controllers (and, when enabled, the REST API and the admission
webhooks) in one process.

The composition root: every dependency the parts share (the manager's cache and client, the
node client) is built here, once, and ``ManagerSettings`` is mapped here onto the settings of
each part, which have no defaults of their own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable

import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from nexus.api.auth import MIN_SECRET_BYTES, TokenService
from nexus.api.context import ApiContext, ApiSettings
from nexus.api.server import ApiServer
from nexus.api.store import open_store
from nexus.controllers.agent import AgentSettings
from nexus.controllers.fence import FenceSettings, parse_cidrs
from nexus.controllers.setup import (
    Controllers,
    ControllerSettings,
    node_pods,
    setup_controllers,
)
from nexus.controllers.tenant import TenantSettings
from nexus.domain.tenant import ResourceQuota
from nexus.node import NodeClient, NodeEndpoints, per_tenant_endpoint
from nexus.runtime import Manager, ManagerOptions
from nexus.runtime.healthz import parse_bind_address
from nexus.runtime.informer import InformerOptions
from nexus.runtime.logging import configure_logging
from nexus.runtime.tokenfile import TokenFile
from nexus.runtime.webhook import (
    CertificateBundle,
    WebhookServer,
    WebhookServerOptions,
    generate_self_signed,
    has_pair,
    inject_ca_bundle,
    write_bundle,
)
from nexus.settings import ManagerSettings
from nexus.webhooks.setup import (
    MUTATING_CONFIGURATION,
    VALIDATING_CONFIGURATION,
    WebhookSettings,
    setup_webhooks,
)

log = structlog.get_logger("nexus")


async def kube_configuration(kubeconfig: str | None) -> k8s_client.Configuration:
    """``--kubeconfig``, else in-cluster, else ``$KUBECONFIG`` / ``~/.kube/config``."""
    cfg = k8s_client.Configuration()
    if kubeconfig:
        await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        return cfg
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
            # The kubelet rotates the token: send the file's current one on every request.
            TokenFile().install(cfg)
            return cfg
        except ConfigException:
            pass
    await k8s_config.load_kube_config(client_configuration=cfg)
    return cfg


# -- settings of each part ----------------------------------------------------------------------


def manager_options(s: ManagerSettings) -> ManagerOptions:
    return ManagerOptions(
        metrics_bind_address=s.metrics_bind_address,
        health_probe_bind_address=s.health_probe_bind_address,
        leader_election=s.leader_elect,
        leader_election_id=s.leader_election_id,
        leader_election_namespace=s.namespace,
        lease_duration=s.lease_duration,
        renew_deadline=s.renew_deadline,
        retry_period=s.retry_period,
        informer=InformerOptions(idle_timeout=s.watch_idle_timeout),
    )


def controller_settings(s: ManagerSettings) -> ControllerSettings:
    return ControllerSettings(
        tenant=TenantSettings(
            system_namespace=s.namespace,
            node_image=s.node_image,
            resync_period=s.resync_period,
            error_retry=s.error_requeue,
            node_run_as_user=s.node_run_as_user,
            fence=fence_settings(s),
            wait_for_node=s.wait_for_node,
            # Pruning a node that every tenant shares would remove other tenants' agents.
            prune_orphans=per_tenant_endpoint(s.node_endpoint),
        ),
        agent=AgentSettings(
            system_namespace=s.namespace,
            resync_period=s.resync_period,
            error_retry=s.error_requeue,
            # Waiting for a tenant is not an error, but has no cadence of its own: the
            # tenant's Ready transition wakes its agents anyway.
            pending_retry=s.error_requeue,
        ),
        tenant_concurrency=s.tenant_concurrency,
        agent_concurrency=s.agent_concurrency,
    )


def fence_settings(s: ManagerSettings) -> FenceSettings:
    return FenceSettings(
        pod_cidrs=parse_cidrs(s.cluster_pod_cidr),
        service_cidrs=parse_cidrs(s.cluster_service_cidr),
        egress_deny_cidrs=parse_cidrs(s.egress_deny_cidrs),
        egress_allow_cidrs=parse_cidrs(s.egress_allow_cidrs),
        node_ingress_cidrs=parse_cidrs(s.node_ingress_cidrs),
    )


def tenant_quota(s: ManagerSettings) -> ResourceQuota:
    """The ``resourceQuota`` of tenants created by the REST API (and by ``make dev``)."""
    return ResourceQuota(
        max_agents=s.default_max_agents, cpu=s.default_cpu, memory=s.default_memory
    )


def api_settings(s: ManagerSettings) -> ApiSettings:
    return ApiSettings(system_namespace=s.namespace, tenant_quota=tenant_quota(s))


def webhook_settings(s: ManagerSettings) -> WebhookSettings:
    # The defaulter fills kubectl-made tenants with what the REST API gives its own.
    return WebhookSettings(system_namespace=s.namespace, tenant_quota=tenant_quota(s))


def webhook_serving_hosts(s: ManagerSettings) -> list[str]:
    """The names a self-signed webhook certificate is made for: loopback and the Service."""
    return ["127.0.0.1", "localhost", f"nexus-webhook-service.{s.namespace}.svc"]


# -- the parts ----------------------------------------------------------------------------------


class _Closing:
    """Runs ``close`` when the manager stops (a runnable that needs no leadership)."""

    need_leader_election = False

    def __init__(self, close: Callable[[], Awaitable[None]]) -> None:
        self._close = close

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._close()


class Nexus:
    """The manager with the controllers, the node client they share with the REST API, and
    (after :meth:`add_api` and :meth:`add_webhooks`) the REST API and the admission webhooks."""

    def __init__(self, api: k8s_client.ApiClient, settings: ManagerSettings) -> None:
        self.settings = settings
        self.manager = Manager(api, manager_options(settings))
        # Declared before anything reads the cache: the ``pod`` endpoint reads node pods.
        node_pods(self.manager)
        self.node = NodeClient(
            NodeEndpoints(settings.node_endpoint, self.manager.client, self.manager.cache),
            timeout=settings.node_timeout,
        )
        # Added first, so stopped last: after the controllers and the API that use it.
        self.manager.add(_Closing(self.node.close))
        self.controllers: Controllers = setup_controllers(
            self.manager, self.node, controller_settings(settings)
        )
        self.api: ApiServer | None = None
        self.webhooks: WebhookServer | None = None

    async def add_api(self) -> ApiServer | None:
        """The REST API on ``--api-bind-address`` (unless "0"), with its store (``--database``)."""
        s = self.settings
        if parse_bind_address(s.api_bind_address) is None:
            return None
        tokens = TokenService(check_jwt_secret(s.jwt_secret))
        store = await open_store(s.database)
        mgr = self.manager
        context = ApiContext(
            settings=api_settings(s),
            store=store,
            tokens=tokens,
            kube=mgr.client,
            cache=mgr.cache,
            node=self.node,
        )
        # Another replica's revocations and password changes reach this replica's cache.
        await store.watch_credentials(context.credentials)

        async def database() -> str | None:
            await store.ping()
            return None

        context.ready_checks["database"] = database
        context.ready_checks["caches"] = lambda: None if mgr.cache.has_synced else "not synced"
        self.api = ApiServer(context, s.api_bind_address)
        mgr.add(self.api)
        return self.api

    def add_webhooks(self) -> WebhookServer | None:
        """The admission webhooks on ``--webhook-bind-address`` (unless "0").

        The serving pair comes from ``--webhook-cert-dir`` (a mounted Secret, reloaded when it
        changes); when that folder holds a ``ca.crt`` too (cert-manager's Secrets do), the
        manager publishes it into the caBundle of its webhook configurations, at start and on
        every rotation. Without a pair there (a manager run outside the cluster), a self-signed
        one is made for loopback and nothing is published.
        """
        s = self.settings
        if parse_bind_address(s.webhook_bind_address) is None:
            return None
        mgr = self.manager
        cert_dir = s.webhook_cert_dir
        publish_ca = has_pair(cert_dir)
        if not publish_ca:
            cert_dir = tempfile.mkdtemp(prefix="nexus-webhook-certs-")
            write_bundle(
                generate_self_signed(webhook_serving_hosts(s), common_name="nexus-webhook"),
                cert_dir,
            )
            mgr.add(_Closing(_remover(cert_dir)))
            log.warning(
                "webhook.self_signed",
                missing=s.webhook_cert_dir,
                hint="mount the webhook certificate Secret there for a cluster",
            )
        server = WebhookServer(
            WebhookServerOptions(bind_address=s.webhook_bind_address, cert_dir=cert_dir)
        )
        setup_webhooks(server, mgr, webhook_settings(s))
        if publish_ca:

            async def publish(bundle: CertificateBundle) -> None:
                if bundle.ca_pem:
                    await inject_ca_bundle(
                        mgr.client,
                        bundle.ca_pem,
                        validating=[VALIDATING_CONFIGURATION],
                        mutating=[MUTATING_CONFIGURATION],
                    )

            server.on_certificate(publish)
        mgr.add(server)
        mgr.add_readyz_check("webhook", server.started_check)
        self.webhooks = server
        return server


def _remover(path: str) -> Callable[[], Awaitable[None]]:
    async def remove() -> None:
        shutil.rmtree(path, ignore_errors=True)

    return remove


def build_manager(api: k8s_client.ApiClient, s: ManagerSettings) -> Manager:
    """The manager with the controllers only (no REST API)."""
    return Nexus(api, s).manager


class ConfigError(Exception):
    """The manager refuses to start with these settings."""


def check_jwt_secret(secret: str | None) -> str:
    if not secret or len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"--jwt-secret (NEXUS_JWT_SECRET) must be at least {MIN_SECRET_BYTES} bytes of "
            "random data; generate one with: python -c 'import secrets; "
            "print(secrets.token_urlsafe(48))'"
        )
    return secret


async def run(settings: ManagerSettings) -> None:
    configure_logging(json=settings.log_format == "json", level=settings.log_level)
    if parse_bind_address(settings.api_bind_address) is not None:
        check_jwt_secret(settings.jwt_secret)  # refuse before touching anything
    cfg = await kube_configuration(settings.kubeconfig)
    async with k8s_client.ApiClient(cfg) as api:
        nexus = Nexus(api, settings)
        await nexus.add_api()
        nexus.add_webhooks()
        log.info(
            "nexus.starting", namespace=settings.namespace, node_endpoint=settings.node_endpoint
        )
        await nexus.manager.run()
