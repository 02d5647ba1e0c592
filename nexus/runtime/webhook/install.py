"""Registering webhooks served on this machine with a local control plane (envtest, dev).

The model is controller-runtime's envtest ``WebhookInstallOptions``: configurations written
for the in-cluster Service are rewritten to call ``https://<host>:<port><path>``, a
self-signed CA (generated once per folder) goes into their ``caBundle``, and the serving pair
is left in ``cert_dir`` for the webhook server to load.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from nexus.runtime.client import Client
from nexus.runtime.objects import Object
from nexus.runtime.webhook.certs import (
    CA_NAME,
    CERT_NAME,
    certificate_expires,
    generate_self_signed,
    has_pair,
    write_bundle,
)
from nexus.runtime.webhook.configurations import (
    apply_configurations,
    delete_configurations,
    load_configurations,
    local_configurations,
)

log = structlog.get_logger("nexus.webhook")


#: A kept certificate is replaced when it has less than this left.
_RENEW_BEFORE = dt.timedelta(days=7)


def _free_port(host: str) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class WebhookInstallOptions:
    """Which configurations to install, and where the local webhook server will listen.

    Set ``paths`` (files or folders of Validating/MutatingWebhookConfiguration YAML, e.g.
    ``config/webhook``) and/or ``configurations``. ``local_serving_port`` 0 picks a free port,
    and ``local_serving_cert_dir`` None a folder of the environment. After
    :meth:`install`, ``local_serving_port``, ``local_serving_cert_dir`` and ``ca_pem`` hold
    what the webhook server needs (``bind_address`` and ``cert_dir``).

    Guarantees: a certificate already in ``local_serving_cert_dir`` that is still valid for a
    week is kept (so a restarted dev setup keeps its pair); the installed configurations are
    exactly the given ones, re-pointed at the local server, and :meth:`uninstall` removes them.
    """

    paths: Sequence[str | os.PathLike[str]] = ()
    configurations: Sequence[Object] = ()
    local_serving_host: str = "127.0.0.1"
    local_serving_port: int = 0
    local_serving_cert_dir: str | os.PathLike[str] | None = None
    ca_pem: bytes = field(init=False, default=b"")
    installed: list[Object] = field(init=False, default_factory=list)

    @property
    def bind_address(self) -> str:
        return f"{self.local_serving_host}:{self.local_serving_port}"

    def _documents(self) -> list[Object]:
        return [*load_configurations(self.paths), *self.configurations]

    def _ensure_certificate(self, default_dir: Path) -> None:
        cert_dir = Path(self.local_serving_cert_dir or default_dir)
        self.local_serving_cert_dir = cert_dir
        ca = cert_dir / CA_NAME
        if has_pair(cert_dir) and ca.is_file():
            left = certificate_expires((cert_dir / CERT_NAME).read_bytes()) - dt.datetime.now(
                dt.UTC
            )
            if left > _RENEW_BEFORE:
                self.ca_pem = ca.read_bytes()
                return
        bundle = generate_self_signed(
            [self.local_serving_host, "localhost"], common_name="envtest-webhook"
        )
        write_bundle(bundle, cert_dir)
        assert bundle.ca_pem is not None
        self.ca_pem = bundle.ca_pem

    async def install(self, client: Client, default_cert_dir: str | os.PathLike[str]) -> None:
        """Generate (or keep) the certificate and create or replace the configurations."""
        if not self.local_serving_port:
            self.local_serving_port = _free_port(self.local_serving_host)
        self._ensure_certificate(Path(default_cert_dir))
        docs = local_configurations(
            self._documents(),
            host=self.local_serving_host,
            port=self.local_serving_port,
            ca_pem=self.ca_pem,
        )
        await apply_configurations(client, docs)
        self.installed = docs
        log.info(
            "envtest.webhooks_installed",
            configurations=[d["metadata"]["name"] for d in docs],
            url=f"https://{self.bind_address}",
        )

    async def uninstall(self, client: Client) -> None:
        await delete_configurations(client, self.installed)
        self.installed = []
