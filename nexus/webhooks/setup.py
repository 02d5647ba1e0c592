"""Registers Nexus's webhooks on a webhook server; the paths and names match config/webhook."""

from __future__ import annotations

from dataclasses import dataclass

from nexus.domain.resources import AGENTS, TENANTS
from nexus.domain.tenant import ResourceQuota
from nexus.runtime import Manager
from nexus.runtime.webhook import WebhookServer, defaulting, validating
from nexus.webhooks.agent import NexusAgentValidator
from nexus.webhooks.lookup import Lookup
from nexus.webhooks.tenant import NexusTenantDefaulter, NexusTenantValidator

# kubebuilder's path scheme: /<kind of webhook>-<group with dashes>-<version>-<kind>.
AGENT_VALIDATE_PATH = "/validate-nexus-astromesh-io-v1alpha1-nexusagent"
TENANT_VALIDATE_PATH = "/validate-nexus-astromesh-io-v1alpha1-nexustenant"
TENANT_MUTATE_PATH = "/mutate-nexus-astromesh-io-v1alpha1-nexustenant"

VALIDATING_CONFIGURATION = "nexus-validating-webhook-configuration"
MUTATING_CONFIGURATION = "nexus-mutating-webhook-configuration"


@dataclass(frozen=True)
class WebhookSettings:
    #: Nexus's own namespace, where the NexusTenant objects live.
    system_namespace: str
    #: ``resourceQuota`` the REST API gives its tenants: the defaults of kubectl-made ones.
    tenant_quota: ResourceQuota


def setup_webhooks(server: WebhookServer, mgr: Manager, settings: WebhookSettings) -> None:
    """Register the NexusAgent and NexusTenant webhooks; they read through ``mgr``'s cache
    (the informers the controllers share) and its client."""
    mgr.cache.informer_for(TENANTS, namespace=settings.system_namespace)
    mgr.cache.informer_for(AGENTS)
    lookup = Lookup(mgr.cache, mgr.client, settings.system_namespace)
    server.register(AGENT_VALIDATE_PATH, validating(NexusAgentValidator(lookup)))
    server.register(TENANT_VALIDATE_PATH, validating(NexusTenantValidator(lookup)))
    server.register(TENANT_MUTATE_PATH, defaulting(NexusTenantDefaulter(settings.tenant_quota)))
