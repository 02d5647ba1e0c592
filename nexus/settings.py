"""Manager settings: kubebuilder-style flags, each defaulting from a NEXUS_* variable.

The one place where the manager's defaults live: ``nexus.app`` maps these fields onto the
settings of each part, which have no defaults of their own.
"""

from __future__ import annotations

import argparse
import ipaddress
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ManagerSettings(BaseSettings):
    """Every flag of ``nexus manager``; the environment variable is ``NEXUS_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_", extra="ignore")

    kubeconfig: str | None = Field(
        None, description="Kubeconfig file (else in-cluster or ~/.kube/config)"
    )
    metrics_bind_address: str = Field(":9090", description='Prometheus /metrics ("0" disables)')
    health_probe_bind_address: str = Field(":8081", description="/healthz and /readyz")
    api_bind_address: str = Field(":8080", description='REST API ("0" disables)')
    webhook_bind_address: str = Field(
        ":9443", description='Admission webhooks over HTTPS ("0" disables)'
    )
    webhook_cert_dir: str = Field(
        "/tmp/k8s-webhook-server/serving-certs",
        description="tls.crt/tls.key (and ca.crt) of the webhook server; self-signed if absent",
    )
    database: str = Field(
        "nexus.db",
        description="The REST API's store: a SQLite file (one replica) or a postgresql:// URL",
    )
    jwt_secret: str | None = Field(None, description="HS256 secret, at least 32 bytes")
    leader_elect: bool = Field(False, description="Elect a leader before running controllers")
    leader_election_id: str = Field("nexus.astromesh.io", description="Name of the Lease")
    lease_duration: float = Field(
        15.0, gt=0, description="How long standbys wait before taking over an unrenewed Lease (s)"
    )
    renew_deadline: float = Field(
        10.0, gt=0, description="How long the leader retries renewing before it gives up (s)"
    )
    retry_period: float = Field(2.0, gt=0, description="Pause between leader-election attempts (s)")
    node_endpoint: str = Field(
        "dns",
        description=(
            'How to reach tenant nodes: "dns", "proxy", "pod" (the Ready node pod\'s IP), or a '
            "URL/template with {namespace}"
        ),
    )
    wait_for_node: bool = Field(
        True,
        description=(
            "Tenant Ready (and its agents deployed) only once its node Deployment is available; "
            "--no-wait-for-node for control planes without kubelets"
        ),
    )
    node_timeout: float = Field(
        10.0, gt=0, description="Time limit of one call to a tenant's node (s)"
    )
    node_image: str = Field(
        "ghcr.io/monaccode/astromesh:latest", description="astromesh-node image"
    )
    namespace: str = Field("nexus-system", description="Namespace of NexusTenants and the Lease")
    tenant_concurrency: int = Field(16, ge=1, description="Parallel tenant reconciles")
    agent_concurrency: int = Field(16, ge=1, description="Parallel agent reconciles")
    resync_period: float = Field(60.0, gt=0, description="Requeue of a converged object (s)")
    error_requeue: float = Field(30.0, gt=0, description="Requeue after an error (s)")
    watch_idle_timeout: float = Field(
        70.0, gt=0, description="Reopen a watch that delivered nothing for this long (s)"
    )
    default_max_agents: int = Field(10, ge=0, description="maxAgents of tenants created by the API")
    default_cpu: str = Field("4", description="CPU limit of nodes of tenants created by the API")
    default_memory: str = Field("8Gi", description="Memory limit of nodes of API-created tenants")
    # The fence around tenant namespaces (NetworkPolicies, node pods); CIDR lists are
    # comma-separated.
    cluster_pod_cidr: str = Field(
        "10.244.0.0/16", description="Pod ranges of the cluster, denied to tenant egress"
    )
    cluster_service_cidr: str = Field(
        "10.96.0.0/12", description="Service ranges of the cluster, denied to tenant egress"
    )
    egress_deny_cidrs: str = Field(
        "169.254.169.254/32", description="More ranges denied to tenant egress (cloud metadata)"
    )
    egress_allow_cidrs: str = Field(
        "0.0.0.0/0", description="What tenant egress may reach, minus the denied ranges"
    )
    node_ingress_cidrs: str = Field(
        "", description="Sources admitted to tenant nodes besides the manager's pods"
    )
    node_run_as_user: int = Field(
        65532, ge=1, description="Non-root UID and GID of the tenant nodes' pods"
    )
    log_format: Literal["json", "console"] = Field("json", description="Log format")
    log_level: str = Field("info", description="Log level")

    @field_validator(
        "cluster_pod_cidr",
        "cluster_service_cidr",
        "egress_deny_cidrs",
        "egress_allow_cidrs",
        "node_ingress_cidrs",
    )
    @classmethod
    def _cidrs(cls, value: str) -> str:
        # Checked at startup: a typo must stop the manager, not every tenant's reconcile.
        items = [item.strip() for item in value.split(",") if item.strip()]
        return ",".join(str(ipaddress.ip_network(item, strict=False)) for item in items)

    @model_validator(mode="after")
    def _lease_timings(self) -> ManagerSettings:
        # Checked here so that bad timings stop the manager before it touches anything,
        # rather than after its caches synced (where LeaderElectionConfig would refuse them).
        # Imported here: the client subcommands of the CLI import this module too, and must
        # not pay for loading the runtime.
        from nexus.runtime.leader_election import JITTER_FACTOR

        if not self.lease_duration > self.renew_deadline > JITTER_FACTOR * self.retry_period:
            raise ValueError(
                "leader election needs lease_duration > renew_deadline > "
                f"{JITTER_FACTOR} * retry_period, got {self.lease_duration} / "
                f"{self.renew_deadline} / {self.retry_period}"
            )
        return self

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One ``--flag`` per field; unset flags fall back to NEXUS_* and then the default."""
        for name, info in cls.model_fields.items():
            flag = "--" + name.replace("_", "-")
            env = f"NEXUS_{name.upper()}"
            help_text = f"{info.description} [env {env}; default {info.default!r}]"
            if info.annotation is bool:
                parser.add_argument(
                    flag,
                    dest=name,
                    default=None,
                    action=argparse.BooleanOptionalAction,
                    help=help_text,
                )
            else:
                parser.add_argument(flag, dest=name, default=None, help=help_text)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ManagerSettings:
        given: dict[str, Any] = {
            k: v for k, v in vars(args).items() if k in cls.model_fields and v is not None
        }
        return cls(**given)
