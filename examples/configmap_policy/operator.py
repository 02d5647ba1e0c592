"""Admission policy for ConfigMaps labelled ``policy.example.io/enforce=true``.

A webhook-only operator written only against ``nexus.runtime`` (its webhook server, no
controller): on create, a defaulting webhook records who made the ConfigMap in the label
``policy.example.io/created-by``; a validating webhook refuses data keys that are not lowercase
names, more than ``max_bytes`` of data, and a change of the ``policy.example.io/tier`` label
once set, reporting every problem at once, and warns about empty values. The object selector
keeps every other ConfigMap (those of the control plane included) out of its reach.

Run it against any cluster (its API server must reach this process):
``python -m examples.configmap_policy.operator --cert-dir DIR``; with ``ca.crt`` in ``DIR`` it
writes that CA into its webhook configurations.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from nexus.runtime import Manager, ManagerOptions
from nexus.runtime.webhook import (
    AdmissionRequest,
    CertificateBundle,
    Defaulter,
    Denied,
    Problem,
    Validator,
    Warnings,
    WebhookServer,
    WebhookServerOptions,
    defaulting,
    inject_ca_bundle,
    validating,
)

Object = dict[str, Any]

ENFORCE_LABEL = "policy.example.io/enforce"
CREATED_BY_LABEL = "policy.example.io/created-by"
TIER_LABEL = "policy.example.io/tier"
VALIDATE_PATH = "/validate-v1-configmap"
MUTATE_PATH = "/mutate-v1-configmap"
CONFIGURATION = "configmap-policy"

_KEY = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9._-]+")


def _labels(obj: Object) -> dict[str, str]:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    return labels


class ConfigMapPolicy(Validator):
    def __init__(self, max_bytes: int = 1024) -> None:
        self.max_bytes = max_bytes

    def _check(self, obj: Object) -> tuple[list[Problem], list[str]]:
        data: dict[str, str] = obj.get("data") or {}
        problems: list[Problem] = [
            (f"data[{key}]", f"data key {key!r} must be a lowercase name (a-z, 0-9, '.', '_', '-')")
            for key in sorted(data)
            if not _KEY.match(key)
        ]
        size = sum(len(k) + len(v.encode()) for k, v in data.items())
        if size > self.max_bytes:
            problems.append(
                ("data", f"data holds {size} bytes; at most {self.max_bytes} are allowed")
            )
        warnings = [f"data key {key!r} is empty" for key in sorted(data) if not data[key]]
        return problems, warnings

    async def validate_create(self, request: AdmissionRequest, obj: Object) -> Warnings:
        problems, warnings = self._check(obj)
        if problems:
            raise Denied(problems, warnings=warnings)
        return warnings

    async def validate_update(
        self, request: AdmissionRequest, old: Object, new: Object
    ) -> Warnings:
        problems, warnings = self._check(new)
        before = _labels(old).get(TIER_LABEL)
        if before is not None and _labels(new).get(TIER_LABEL) != before:
            problems.append(
                (
                    f"metadata.labels[{TIER_LABEL}]",
                    f"label {TIER_LABEL} is immutable (it is {before!r})",
                )
            )
        if problems:
            raise Denied(problems, warnings=warnings)
        return warnings


class CreatedBy(Defaulter):
    async def default(self, request: AdmissionRequest, obj: Object) -> Warnings:
        if request.operation == "CREATE":
            user = str(request.user_info.get("username") or "unknown")
            value = _LABEL_VALUE.sub("-", user).strip("-._")[:63] or "unknown"
            obj.setdefault("metadata", {}).setdefault("labels", {})[CREATED_BY_LABEL] = value
        return ()


def configurations(service_namespace: str = "default") -> list[Object]:
    """The webhook configurations (for a Service ``configmap-policy``; envtest rewrites them
    to a local URL)."""
    common: Object = {
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "timeoutSeconds": 5,
        "objectSelector": {"matchLabels": {ENFORCE_LABEL: "true"}},
    }

    def hook(name: str, path: str, operations: list[str]) -> Object:
        return {
            "name": name,
            "clientConfig": {
                "service": {"name": CONFIGURATION, "namespace": service_namespace, "path": path}
            },
            "rules": [
                {
                    "apiGroups": [""],
                    "apiVersions": ["v1"],
                    "operations": operations,
                    "resources": ["configmaps"],
                    "scope": "Namespaced",
                }
            ],
            **common,
        }

    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": CONFIGURATION},
            "webhooks": [hook("mconfigmap.policy.example.io", MUTATE_PATH, ["CREATE"])],
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": CONFIGURATION},
            "webhooks": [hook("vconfigmap.policy.example.io", VALIDATE_PATH, ["CREATE", "UPDATE"])],
        },
    ]


def build(mgr: Manager, options: WebhookServerOptions, *, max_bytes: int = 1024) -> WebhookServer:
    """The webhook server with both handlers, added to ``mgr``; it publishes the CA of its
    certificate folder (if any) into its configurations, at start and on every rotation."""
    server = WebhookServer(options)
    server.register(VALIDATE_PATH, validating(ConfigMapPolicy(max_bytes)))
    server.register(MUTATE_PATH, defaulting(CreatedBy()))

    async def publish(bundle: CertificateBundle) -> None:
        if bundle.ca_pem:
            await inject_ca_bundle(
                mgr.client, bundle.ca_pem, validating=[CONFIGURATION], mutating=[CONFIGURATION]
            )

    server.on_certificate(publish)
    mgr.add(server)
    mgr.add_readyz_check("webhook", server.started_check)
    return server


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--cert-dir", required=True)
    parser.add_argument("--bind-address", default=":9443")
    args = parser.parse_args()
    cfg = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    async with k8s_client.ApiClient(cfg) as api:
        mgr = Manager(api, ManagerOptions(metrics_bind_address="0"))
        build(mgr, WebhookServerOptions(bind_address=args.bind_address, cert_dir=args.cert_dir))
        await mgr.run()


if __name__ == "__main__":
    asyncio.run(main())
