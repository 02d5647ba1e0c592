"""Validating/MutatingWebhookConfigurations: CA bundle injection, and local installation.

:func:`inject_ca_bundle` writes a CA into the ``caBundle`` of every webhook of the named
configurations (what cert-manager's CA injector does), so that the API server trusts the
serving certificate. :func:`local_configurations` rewrites configurations written for an
in-cluster Service into ones that call a local server by URL, for envtest and development.
"""

from __future__ import annotations

import base64
import copy
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import structlog
import yaml

from nexus.runtime.client import ApiError, Client
from nexus.runtime.objects import Object
from nexus.runtime.resource import Resource

log = structlog.get_logger("nexus.webhook")


VALIDATING = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "validatingwebhookconfigurations",
    "ValidatingWebhookConfiguration",
    namespaced=False,
)
MUTATING = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "mutatingwebhookconfigurations",
    "MutatingWebhookConfiguration",
    namespaced=False,
)
_BY_KIND = {VALIDATING.kind: VALIDATING, MUTATING.kind: MUTATING}


def resource_of(doc: Object) -> Resource:
    kind = doc.get("kind", "")
    if kind not in _BY_KIND:
        raise ValueError(f"not a webhook configuration: {kind!r}")
    return _BY_KIND[kind]


async def inject_ca_bundle(
    client: Client,
    ca_pem: bytes,
    *,
    validating: Sequence[str] = (),
    mutating: Sequence[str] = (),
) -> list[str]:
    """Put ``ca_pem`` first in the ``caBundle`` of every webhook of the named configurations,
    keeping the CA that was first there before (a rotation: connections made with the old
    pair stay trusted until the new one is served); returns the configurations changed.

    A configuration that does not exist (not installed yet) is skipped; a webhook whose bundle
    already starts with this CA is not written. Each write is a JSON patch that first tests
    the webhook names at the indices it patches, so a concurrent edit of the list fails rather
    than putting the CA on the wrong entry. Needs ``get`` and ``patch`` on those
    configurations.
    """
    new = _certificates(ca_pem)
    if not new:
        raise ValueError("ca_pem holds no PEM certificate")
    changed: list[str] = []
    for res, names in ((VALIDATING, validating), (MUTATING, mutating)):
        for name in names:
            current = await client.get_or_none(res, name)
            if current is None:
                log.info("webhook.ca_injection_skipped", configuration=name, reason="not found")
                continue
            ops: list[Object] = []
            for i, hook in enumerate(current.get("webhooks") or []):
                raw = (hook.get("clientConfig") or {}).get("caBundle") or ""
                try:
                    old = _certificates(base64.b64decode(raw))
                except ValueError:
                    old = []
                if old[: len(new)] == new:
                    continue
                kept = [c for c in old[:1] if c not in new]
                bundle = base64.b64encode(b"".join(new + kept)).decode()
                ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": hook["name"]})
                ops.append(
                    {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
                )
            if ops:
                await client.patch(res, name, ops, patch_type="json")
                changed.append(name)
                log.info("webhook.ca_injected", configuration=name, kind=res.kind)
    return changed


_PEM_END = b"-----END CERTIFICATE-----"


def _certificates(pem: bytes) -> list[bytes]:
    """The PEM certificate blocks of a bundle, normalised (one trailing newline each)."""
    out = []
    for block in pem.split(_PEM_END)[:-1]:
        start = block.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(block[start:].strip() + b"\n" + _PEM_END + b"\n")
    return out


def load_configurations(paths: Iterable[str | os.PathLike[str]]) -> list[Object]:
    """Webhook configurations from YAML files or folders (other documents are ignored)."""
    docs: list[Object] = []
    for raw in paths:
        p = Path(raw)
        files = sorted(p.glob("*.y*ml")) if p.is_dir() else [p]
        for f in files:
            for doc in yaml.safe_load_all(f.read_text()):
                if isinstance(doc, dict) and doc.get("kind") in _BY_KIND:
                    docs.append(doc)
    return docs


def local_configurations(
    docs: Iterable[Object], *, host: str, port: int, ca_pem: bytes
) -> list[Object]:
    """Copies of ``docs`` whose webhooks call ``https://host:port<path>`` and trust ``ca_pem``.

    The path is the one of each webhook's ``clientConfig.service`` (or of its URL), as
    controller-runtime's envtest does for configurations written for a Service.
    """
    bundle = base64.b64encode(ca_pem).decode()
    out = []
    for doc in docs:
        local = copy.deepcopy(doc)
        meta = local.setdefault("metadata", {})
        for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
            meta.pop(key, None)
        for hook in local.get("webhooks") or []:
            cc = hook.get("clientConfig") or {}
            path = (cc.get("service") or {}).get("path")
            if path is None and cc.get("url"):
                path = "/" + cc["url"].split("://", 1)[-1].split("/", 1)[-1]
            url = f"https://{host}:{port}{path or '/'}"
            hook["clientConfig"] = {"url": url, "caBundle": bundle}
        out.append(local)
    return out


async def apply_configurations(client: Client, docs: Iterable[Object]) -> list[str]:
    """Create or replace each configuration; returns their names."""
    names = []
    for doc in docs:
        res = resource_of(doc)
        name = doc["metadata"]["name"]
        body = {"apiVersion": res.api_version, "kind": res.kind, **doc}
        try:
            await client.create(res, body)
        except ApiError as exc:
            if not exc.conflict:
                raise
            current = await client.get(res, name)
            body["metadata"] = {
                **body["metadata"],
                "resourceVersion": current["metadata"]["resourceVersion"],
            }
            await client.replace(res, body)
        names.append(name)
    return names


async def delete_configurations(client: Client, docs: Iterable[Object]) -> None:
    for doc in docs:
        await client.delete(resource_of(doc), doc["metadata"]["name"], ignore_not_found=True)
