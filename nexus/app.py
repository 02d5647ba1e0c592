"""``nexus manager``: the controllers (and, when enabled, the REST API) in one process."""

from __future__ import annotations

import os
import shutil
import tempfile

import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from nexus.api.auth import MIN_SECRET_BYTES, TokenService
from nexus.api.context import ApiContext, ApiSettings
from nexus.api.server import ApiServer
from nexus.api.store import SqliteStore
from nexus.controllers.agent import AgentSettings
from nexus.controllers.node_client import NodeClient, NodeEndpoints
from nexus.controllers.setup import ControllerSettings, setup_controllers
from nexus.controllers.tenant import TenantSettings
from nexus.runtime import Manager, ManagerOptions
from nexus.runtime.healthz import parse_bind_address
from nexus.runtime.informer import InformerOptions
from nexus.runtime.logging import configure_logging
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
from nexus.webhooks.tenant import TenantDefaults

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
            return cfg
        except ConfigException:
            pass
    await k8s_config.load_kube_config(client_configuration=cfg)
    return cfg


def controller_settings(s: ManagerSettings) -> ControllerSettings:
    return ControllerSettings(
        tenant=TenantSettings(
            namespace=s.namespace,
            node_image=s.node_image,
            resync_period=s.resync_period,
            error_retry=s.error_requeue,
        ),
        agent=AgentSettings(
            tenant_namespace=s.namespace,
            resync_period=s.resync_period,
            error_retry=s.error_requeue,
            pending_retry=s.error_requeue,
        ),
        node_endpoint=s.node_endpoint,
        tenant_concurrency=s.tenant_concurrency,
        agent_concurrency=s.agent_concurrency,
    )


def build_manager(api: k8s_client.ApiClient, s: ManagerSettings) -> Manager:
    mgr = Manager(
        api,
        ManagerOptions(
            metrics_bind_address=s.metrics_bind_address,
            health_probe_bind_address=s.health_probe_bind_address,
            leader_election=s.leader_elect,
            leader_election_id=s.leader_election_id,
            leader_election_namespace=s.namespace,
            lease_duration=s.lease_duration,
            renew_deadline=s.renew_deadline,
            retry_period=s.retry_period,
            informer=InformerOptions(idle_timeout=s.watch_idle_timeout),
        ),
    )
    controllers = setup_controllers(mgr, controller_settings(s))
    mgr.add(_Closing(controllers.node.close))
    return mgr


class _Closing:
    """Closes the node client's HTTP session when the manager stops."""

    need_leader_election = False

    def __init__(self, close: object) -> None:
        self._close = close

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._close()  # type: ignore[operator]


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


async def add_api(mgr: Manager, settings: ManagerSettings) -> ApiServer | None:
    """The REST API on ``--api-bind-address`` (unless "0"), with its SQLite store."""
    if parse_bind_address(settings.api_bind_address) is None:
        return None
    tokens = TokenService(check_jwt_secret(settings.jwt_secret))
    store = await SqliteStore.open(settings.database)
    context = ApiContext(
        settings=ApiSettings(
            namespace=settings.namespace,
            default_max_agents=settings.default_max_agents,
            default_cpu=settings.default_cpu,
            default_memory=settings.default_memory,
        ),
        store=store,
        tokens=tokens,
        kube=mgr.client,
        cache=mgr.cache,
        node=NodeClient(NodeEndpoints(settings.node_endpoint, mgr.client), timeout=5.0),
    )

    async def database() -> str | None:
        await store.ping()
        return None

    context.ready_checks["database"] = database
    context.ready_checks["caches"] = lambda: None if mgr.cache.has_synced else "not synced"
    server = ApiServer(context, settings.api_bind_address)
    mgr.add(server)
    return server


def add_webhooks(mgr: Manager, settings: ManagerSettings) -> WebhookServer | None:
    """The admission webhooks on ``--webhook-bind-address`` (unless "0").

    The serving pair comes from ``--webhook-cert-dir`` (a mounted Secret, reloaded when it
    changes); when that folder holds a ``ca.crt`` too (cert-manager's Secrets do), the manager
    publishes it into the caBundle of its webhook configurations, at start and on every
    rotation. Without a pair there (a manager run outside the cluster), a self-signed one is
    made for loopback and nothing is published.
    """
    if parse_bind_address(settings.webhook_bind_address) is None:
        return None
    cert_dir = settings.webhook_cert_dir
    publish_ca = True
    if not has_pair(cert_dir):
        cert_dir = tempfile.mkdtemp(prefix="nexus-webhook-certs-")
        hosts = ["127.0.0.1", "localhost", f"nexus-webhook-service.{settings.namespace}.svc"]
        write_bundle(generate_self_signed(hosts, common_name="nexus-webhook"), cert_dir)
        publish_ca = False
        mgr.add(_Closing(_remover(cert_dir)))
        log.warning(
            "webhook.self_signed",
            missing=settings.webhook_cert_dir,
            hint="mount the webhook certificate Secret there for a cluster",
        )
    server = WebhookServer(
        WebhookServerOptions(bind_address=settings.webhook_bind_address, cert_dir=cert_dir)
    )
    setup_webhooks(
        server,
        mgr,
        WebhookSettings(
            tenant_namespace=settings.namespace,
            defaults=TenantDefaults(
                max_agents=settings.default_max_agents,
                cpu=settings.default_cpu,
                memory=settings.default_memory,
            ),
        ),
    )
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
    return server


def _remover(path: str) -> object:
    async def remove() -> None:
        shutil.rmtree(path, ignore_errors=True)

    return remove


async def run(settings: ManagerSettings) -> None:
    configure_logging(json=settings.log_format == "json", level=settings.log_level)
    if parse_bind_address(settings.api_bind_address) is not None:
        check_jwt_secret(settings.jwt_secret)  # refuse before touching anything
    cfg = await kube_configuration(settings.kubeconfig)
    async with k8s_client.ApiClient(cfg) as api:
        mgr = build_manager(api, settings)
        await add_api(mgr, settings)
        add_webhooks(mgr, settings)
        log.info(
            "nexus.starting", namespace=settings.namespace, node_endpoint=settings.node_endpoint
        )
        await mgr.run()
