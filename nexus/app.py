"""``nexus manager``: the controllers (and, when enabled, the REST API) in one process."""

from __future__ import annotations

import os

import structlog
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.config.config_exception import ConfigException

from nexus.controllers.agent import AgentSettings
from nexus.controllers.setup import ControllerSettings, setup_controllers
from nexus.controllers.tenant import TenantSettings
from nexus.runtime import Manager, ManagerOptions
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


async def run(settings: ManagerSettings) -> None:
    configure_logging(json=settings.log_format == "json", level=settings.log_level)
    cfg = await kube_configuration(settings.kubeconfig)
    async with k8s_client.ApiClient(cfg) as api:
        mgr = build_manager(api, settings)
        log.info(
            "nexus.starting", namespace=settings.namespace, node_endpoint=settings.node_endpoint
        )
        await mgr.run()
