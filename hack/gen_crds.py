"""Writes config/crd/bases/*.yaml from the schemas below (our controller-gen).

Run: ``.venv/bin/python hack/gen_crds.py``; a test checks that the files are up to date.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "config" / "crd" / "bases"

QUANTITY: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
    "x-kubernetes-int-or-string": True,
}
CONDITION: dict[str, Any] = {
    "type": "object",
    "description": "Standard Kubernetes condition (metav1.Condition).",
    "required": ["type", "status", "lastTransitionTime", "reason", "message"],
    "properties": {
        "type": {"type": "string", "maxLength": 316},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "reason": {
            "type": "string",
            "maxLength": 1024,
            "minLength": 1,
            "pattern": r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        },
        "message": {"type": "string", "maxLength": 32768},
    },
}
CONDITIONS: dict[str, Any] = {
    "type": "array",
    "items": CONDITION,
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


def crd(
    plural: str,
    kind: str,
    short: str,
    *,
    spec: dict[str, Any],
    status: dict[str, Any],
    columns: list[dict[str, str]],
    description: str,
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.nexus.astromesh.io"},
        "spec": {
            "group": "nexus.astromesh.io",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["nexus"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


TENANT = crd(
    "nexustenants",
    "NexusTenant",
    "nt",
    spec={
        "type": "object",
        "description": "Desired state of a tenant: its namespace and astromesh-node.",
        "properties": {
            "displayName": {
                "type": "string",
                "maxLength": 256,
                "description": "Human-readable tenant name.",
            },
            "nodeProfile": {
                "type": "string",
                "default": "full",
                "maxLength": 63,
                "description": "Node profile, passed to the node as ASTROMESH_ROLE.",
            },
            "resourceQuota": {
                "type": "object",
                "description": "Limits of the tenant's node and agent count.",
                "properties": {
                    "maxAgents": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Maximum number of agents.",
                    },
                    "cpu": {**QUANTITY, "description": 'CPU limit of the node (e.g. "4").'},
                    "memory": {**QUANTITY, "description": 'Memory limit of the node ("8Gi").'},
                },
            },
        },
    },
    status={
        "type": "object",
        "properties": {
            "phase": {"type": "string", "enum": ["Pending", "Provisioning", "Ready", "Error"]},
            "namespace": {"type": "string", "description": "Provisioned tenant namespace."},
            "nodeEndpoint": {"type": "string", "description": "In-cluster node URL."},
            "agentCount": {
                "type": "integer",
                "minimum": 0,
                "description": "Agents in the tenant.",
            },
            "observedGeneration": {"type": "integer", "format": "int64"},
            "message": {"type": "string"},
            "conditions": CONDITIONS,
        },
    },
    columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Namespace", "type": "string", "jsonPath": ".status.namespace"},
        {"name": "Agents", "type": "integer", "jsonPath": ".status.agentCount"},
        {
            "name": "Node",
            "type": "string",
            "description": "Whether the tenant's astromesh-node is available",
            "jsonPath": '.status.conditions[?(@.type=="NodeAvailable")].status',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    description="NexusTenant is a tenant of Nexus: one namespace and one astromesh-node.",
)

AGENT = crd(
    "nexusagents",
    "NexusAgent",
    "na",
    spec={
        "type": "object",
        "description": "Desired state of an agent on its tenant's node.",
        "required": ["agentSpec"],
        "properties": {
            "agentSpec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "description": "A full astromesh/v1 Agent spec, passed through to the node.",
            },
            "suspend": {
                "type": "boolean",
                "default": False,
                "description": "Pause the agent on its node (phase Stopped) while true.",
            },
        },
    },
    status={
        "type": "object",
        "properties": {
            "phase": {
                "type": "string",
                "enum": ["Pending", "Deploying", "Running", "Failed", "Stopped"],
            },
            "nodeAck": {
                "type": "boolean",
                "description": "Whether the node acknowledged the deploy.",
            },
            "lastSyncedAt": {
                "type": "string",
                "format": "date-time",
                "description": "Last successful sync with the node.",
            },
            "observedGeneration": {"type": "integer", "format": "int64"},
            "message": {"type": "string"},
            "conditions": CONDITIONS,
        },
    },
    columns=[
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "NodeAck", "type": "boolean", "jsonPath": ".status.nodeAck"},
        {"name": "Last Synced", "type": "date", "jsonPath": ".status.lastSyncedAt"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    description="NexusAgent is an astromesh/v1 Agent deployed on its tenant's node.",
)

HEADER = "# Generated by hack/gen_crds.py; do not edit by hand.\n---\n"
FILES = {
    "nexus.astromesh.io_nexustenants.yaml": TENANT,
    "nexus.astromesh.io_nexusagents.yaml": AGENT,
}


def render(doc: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    OUT.mkdir(parents=True, exist_ok=True)
    for name, doc in FILES.items():
        path = OUT / name
        text = render(doc)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale CRDs (run hack/gen_crds.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
