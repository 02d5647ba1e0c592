"""``nexus manager``: the controllers (and, when enabled, the REST API) in one process."""

from __future__ import annotations

import os

import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from nexus.api.auth import MIN_SECRET_BYTES, TokenService
from nexus.api.context import ApiContext, ApiSettings
from nexus.api.server import ApiServer
from nexus.api.store import open_store
from nexus.controllers.agent import AgentSettings
from nexus.controllers.node_client import NodeClient, NodeEndpoints
from nexus.controllers.setup import ControllerSettings, setup_controllers
from nexus.controllers.tenant import TenantSettings
from nexus.runtime import Manager, ManagerOptions
from nexus.runtime.healthz import parse_bind_address
from nexus.runtime.informer import InformerOptions
from nexus.runtime.logging import configure_logging
from nexus.settings import ManagerSettings

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
    """The REST API on ``--api-bind-address`` (unless "0"), with its store (``--database``)."""
    if parse_bind_address(settings.api_bind_address) is None:
        return None
    tokens = TokenService(check_jwt_secret(settings.jwt_secret))
    store = await open_store(settings.database)
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

    await store.watch_credentials(context.credentials)

    async def database() -> str | None:
        await store.ping()
        return None

    context.ready_checks["database"] = database
    context.ready_checks["caches"] = lambda: None if mgr.cache.has_synced else "not synced"
    server = ApiServer(context, settings.api_bind_address)
    mgr.add(server)
    return server


async def run(settings: ManagerSettings) -> None:
    configure_logging(json=settings.log_format == "json", level=settings.log_level)
    if parse_bind_address(settings.api_bind_address) is not None:
        check_jwt_secret(settings.jwt_secret)  # refuse before touching anything
    cfg = await kube_configuration(settings.kubeconfig)
    async with k8s_client.ApiClient(cfg) as api:
        mgr = build_manager(api, settings)
        await add_api(mgr, settings)
        log.info(
            "nexus.starting", namespace=settings.namespace, node_endpoint=settings.node_endpoint
        )
        await mgr.run()
