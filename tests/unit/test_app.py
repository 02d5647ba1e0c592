"""The composition root: each shared part built once, the flags mapped onto every part."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client as k8s_client

from nexus import app
from nexus.domain.tenant import ResourceQuota
from nexus.settings import ManagerSettings


@pytest.fixture
async def api() -> AsyncIterator[k8s_client.ApiClient]:
    cfg = k8s_client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # never called: nothing here starts the manager
    async with k8s_client.ApiClient(cfg) as client:
        yield client


async def test_controllers_and_api_share_one_node_client(
    api: k8s_client.ApiClient, tmp_path: Path
) -> None:
    settings = ManagerSettings(
        api_bind_address="127.0.0.1:0",
        jwt_secret=secrets.token_urlsafe(48),
        database=str(tmp_path / "nexus.db"),
        node_timeout=7.5,
    )
    nexus = app.Nexus(api, settings)
    server = await nexus.add_api()
    try:
        assert server is not None and nexus.api is server
        assert server.context.node is nexus.node
        assert nexus.controllers.agent.node is nexus.node
        assert nexus.node._timeout.total == 7.5
    finally:
        await server.context.store.close()  # type: ignore[union-attr]
        await nexus.node.close()


async def test_without_an_api_address_there_is_no_api(api: k8s_client.ApiClient) -> None:
    nexus = app.Nexus(api, ManagerSettings(api_bind_address="0"))
    assert await nexus.add_api() is None and nexus.api is None


def test_the_namespace_reaches_every_part() -> None:
    s = ManagerSettings(namespace="ops")
    assert app.manager_options(s).leader_election_namespace == "ops"
    c = app.controller_settings(s)
    assert c.tenant.system_namespace == c.agent.system_namespace == "ops"
    assert app.api_settings(s).system_namespace == "ops"


def test_retry_periods_come_from_the_flags() -> None:
    s = ManagerSettings(resync_period=5, error_requeue=2, tenant_concurrency=3)
    c = app.controller_settings(s)
    assert (c.tenant.resync_period, c.agent.resync_period) == (5, 5)
    assert (c.tenant.error_retry, c.agent.error_retry, c.agent.pending_retry) == (2, 2, 2)
    assert c.tenant_concurrency == 3


def test_api_created_tenants_get_the_default_quota() -> None:
    s = ManagerSettings(default_max_agents=4, default_cpu="1", default_memory="1Gi")
    assert app.api_settings(s).tenant_quota == ResourceQuota(4, "1", "1Gi")
    assert app.tenant_quota(s) == ResourceQuota(4, "1", "1Gi")


def test_webhooks_default_tenants_as_the_api_does() -> None:
    s = ManagerSettings(
        namespace="ops", default_max_agents=4, default_cpu="1", default_memory="1Gi"
    )
    w = app.webhook_settings(s)
    assert w.system_namespace == "ops"
    assert w.tenant_quota == app.api_settings(s).tenant_quota == ResourceQuota(4, "1", "1Gi")
    assert "nexus-webhook-service.ops.svc" in app.webhook_serving_hosts(s)


def test_without_a_webhook_address_there_are_no_webhooks(api: k8s_client.ApiClient) -> None:
    nexus = app.Nexus(api, ManagerSettings(webhook_bind_address="0"))
    assert nexus.add_webhooks() is None and nexus.webhooks is None


def test_webhooks_without_a_mounted_pair_serve_a_self_signed_one(
    api: k8s_client.ApiClient, tmp_path: Path
) -> None:
    s = ManagerSettings(webhook_bind_address="127.0.0.1:0", webhook_cert_dir=str(tmp_path / "no"))
    nexus = app.Nexus(api, s)
    server = nexus.add_webhooks()
    assert server is not None and nexus.webhooks is server
    made = Path(server.options.cert_dir)
    try:
        assert made != tmp_path / "no"
        assert (made / "tls.crt").is_file() and (made / "tls.key").is_file()
    finally:
        shutil.rmtree(made, ignore_errors=True)
