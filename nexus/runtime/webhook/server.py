"""The HTTPS admission webhook server, a manager runnable (controller-runtime's webhook.Server).

Handlers are registered per path (one path per resource and kind of webhook, e.g.
``/validate-example-io-v1-widget``) before the server starts. Each POSTed AdmissionReview is
decoded, handed to its handler under a deadline, answered, and counted in
controller-runtime's webhook metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from nexus.runtime.healthz import parse_bind_address
from nexus.runtime.webhook import metrics
from nexus.runtime.webhook.admission import (
    AdmissionRequest,
    AdmissionResponse,
    BadAdmissionReview,
    errored,
)
from nexus.runtime.webhook.certs import (
    CA_NAME,
    CERT_NAME,
    KEY_NAME,
    CertWatcher,
    OnChange,
)
from nexus.runtime.webhook.handlers import Handler

log = structlog.get_logger("nexus.webhook")

#: controller-runtime's default, where cert-manager style Secrets are usually mounted.
DEFAULT_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"
#: An AdmissionReview holds the object and the old object, each up to etcd's 1.5 MiB; this is
#: controller-runtime's cap too.
MAX_REQUEST_BYTES = 7 * 1024 * 1024

_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go duration such as ``10s``, ``1m30s`` or ``9.5s``; None if not one."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNITS[u] for n, u in parts)


@dataclass(frozen=True)
class WebhookServerOptions:
    """Settings of a :class:`WebhookServer`; defaults follow controller-runtime."""

    #: ``host:port``; ``:9443`` listens on every address, port 0 picks a free port.
    bind_address: str = ":9443"
    #: Directory with the serving pair (and optionally the CA), as a cert-manager Secret.
    cert_dir: str = DEFAULT_CERT_DIR
    cert_name: str = CERT_NAME
    key_name: str = KEY_NAME
    ca_name: str = CA_NAME
    #: How often the certificate files are checked for a rotation.
    cert_poll_interval: float = 5.0
    #: Upper bound for one request; the API server's own deadline (``?timeout=``, from the
    #: configuration's ``timeoutSeconds``, 10 s by default) is honoured when it is shorter, so
    #: the client gets the webhook's clear answer rather than the API server's timeout.
    request_timeout: float = 10.0


class WebhookServer:
    """Serves admission webhooks over TLS; every replica serves (no leader election).

    Guarantees: every request gets an AdmissionReview answer — a handler that raises or
    exceeds the deadline yields a refusal with a clear message (500, or 504 for the timeout),
    never a dropped connection; malformed requests get HTTP 400. The certificate is reloaded
    from ``cert_dir`` when its files change, without a restart: new connections get the new
    pair, open ones finish with the old. :meth:`started_check` (a readiness check) passes only
    once the server completes TLS handshakes on its port. Every request is counted in
    ``controller_runtime_webhook_requests_total{webhook,code}``,
    ``controller_runtime_webhook_requests_in_flight{webhook}`` and
    ``controller_runtime_webhook_latency_seconds{webhook}``.
    """

    need_leader_election = False

    def __init__(self, options: WebhookServerOptions | None = None) -> None:
        self.options = options or WebhookServerOptions()
        address = parse_bind_address(self.options.bind_address)
        if address is None:
            raise ValueError("the webhook server needs a bind address")
        self.address = address
        self.certs = CertWatcher(
            self.options.cert_dir,
            cert_name=self.options.cert_name,
            key_name=self.options.key_name,
            ca_name=self.options.ca_name,
            poll_interval=self.options.cert_poll_interval,
        )
        self._handlers: dict[str, Handler] = {}
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- wiring -----------------------------------------------------------------------------

    def register(self, path: str, handler: Handler) -> None:
        """Serve ``handler`` at ``path`` (before :meth:`start`)."""
        if not path.startswith("/"):
            raise ValueError(f"webhook path must start with '/': {path!r}")
        if path in self._handlers:
            raise ValueError(f"a webhook is already registered at {path}")
        if self._runner is not None:
            raise RuntimeError("register webhooks before the server starts")
        self._handlers[path] = handler
        metrics.REQUEST_IN_FLIGHT.labels(path).set(0)

    def on_certificate(self, callback: OnChange) -> None:
        """Run ``callback`` with each certificate bundle loaded (e.g. to publish the CA)."""
        self.certs.on_change(callback)

    @property
    def paths(self) -> list[str]:
        return sorted(self._handlers)

    # -- lifecycle --------------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        assert self.certs.context is not None
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.minimum_version = ssl.TLSVersion.TLSv1_2
        base.load_cert_chain(self.certs.cert_path, self.certs.key_path)

        # Called for every handshake, with or without SNI: hand the connection the context
        # of the newest good pair, so a rotation applies to the next connection.
        def pick(sslobj: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            if self.certs.context is not None:
                sslobj.context = self.certs.context

        base.sni_callback = pick
        return base

    async def start(self) -> None:
        if not Path(self.certs.cert_path).is_file() or not Path(self.certs.key_path).is_file():
            raise FileNotFoundError(
                f"webhook serving certificate not found: {self.certs.cert_path} and "
                f"{self.certs.key_path} are needed (mount the certificate Secret there)"
            )
        await self.certs.load()
        tls = await asyncio.to_thread(self._tls_context)
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        for path in self._handlers:
            app.router.add_post(path, self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address[0], self.address[1], ssl_context=tls)
        await site.start()
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.address[1]
        self.certs.start()
        log.info("webhook.server_started", host=self.address[0], port=self.port, paths=self.paths)

    async def stop(self) -> None:
        await self.certs.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("webhook.server_stopped")

    async def started_check(self) -> str | None:
        """Readiness: None once a TLS handshake with the server succeeds."""
        if self._runner is None or self.port is None:
            return "webhook server not started"
        host = self.address[0]
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            async with asyncio.timeout(2):
                _, writer = await asyncio.open_connection(host, self.port, ssl=ctx)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            return f"webhook server not serving: {exc}"
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return None

    # -- requests ---------------------------------------------------------------------------

    def _deadline(self, request: web.Request) -> float:
        timeout = self.options.request_timeout
        asked = parse_go_duration(request.query.get("timeout", ""))
        if asked is not None:
            # Leave a little of the API server's budget for the answer to travel back.
            timeout = min(timeout, max(asked * 0.9, asked - 1.0, 0.1))
        return timeout

    async def _serve(self, request: web.Request) -> web.Response:
        path = request.path
        metrics.REQUEST_IN_FLIGHT.labels(path).inc()
        started = time.perf_counter()
        try:
            response = await self._answer(request)
        finally:
            metrics.REQUEST_IN_FLIGHT.labels(path).dec()
            metrics.REQUEST_LATENCY.labels(path).observe(time.perf_counter() - started)
        metrics.REQUEST_TOTAL.labels(path, str(response.status)).inc()
        return response

    async def _answer(self, request: web.Request) -> web.Response:
        handler = self._handlers[request.path]
        content_type = (request.content_type or "").lower()
        if content_type != "application/json":
            return _bad_request(f"Content-Type must be application/json, not {content_type!r}")
        try:
            raw = await request.read()
            review: Any = json.loads(raw)
            admission = AdmissionRequest.from_review(review)
        except web.HTTPRequestEntityTooLarge:
            return _bad_request(f"the AdmissionReview exceeds {MAX_REQUEST_BYTES} bytes")
        except (ValueError, UnicodeDecodeError) as exc:
            return _bad_request(str(exc) if isinstance(exc, BadAdmissionReview) else "bad JSON")
        timeout = self._deadline(request)
        try:
            async with asyncio.timeout(timeout):
                answer: AdmissionResponse = await handler.handle(admission)
        except TimeoutError:
            log.warning("webhook.timeout", path=request.path, uid=admission.uid, timeout=timeout)
            answer = errored(504, f"the webhook did not decide within {timeout:g}s; retry")
        except Exception as exc:  # a Handler must not raise; keep the promise anyway
            log.exception("webhook.handler_failed", path=request.path, uid=admission.uid)
            answer = errored(500, f"the webhook failed: {type(exc).__name__}")
        log.debug(
            "webhook.answered",
            path=request.path,
            uid=admission.uid,
            operation=admission.operation,
            allowed=answer.allowed,
            code=answer.code,
        )
        return web.json_response(answer.to_review(admission.uid))


def _bad_request(message: str) -> web.Response:
    return web.json_response(errored(400, message).to_review(""), status=400)
