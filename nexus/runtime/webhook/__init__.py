"""Admission webhooks for operators on nexus.runtime (controller-runtime's ``pkg/webhook``).

A :class:`WebhookServer` is a manager runnable serving ``admission.k8s.io/v1``
AdmissionReviews over TLS on ``:9443``. Register a :class:`Validator` (wrapped by
:func:`validating`) or a :class:`Defaulter` (wrapped by :func:`defaulting`, answered with a
JSON patch) per path, add the server to the manager, and its :meth:`~WebhookServer.started_check`
to readiness::

    server = WebhookServer(WebhookServerOptions(cert_dir="/certs"))
    server.register("/validate-example-io-v1-widget", validating(WidgetValidator()))
    mgr.add(server)
    mgr.add_readyz_check("webhook", server.started_check)

Certificates come from a cert-manager style directory, reloaded when the files change;
:func:`generate_self_signed` makes a pair for development and tests, and
:func:`inject_ca_bundle` publishes a CA into the webhook configurations. For envtest,
:class:`WebhookInstallOptions` installs configurations that call a local server by URL.
"""

from nexus.runtime.webhook.admission import (
    AdmissionRequest,
    AdmissionResponse,
    BadAdmissionReview,
    allowed,
    denied,
    errored,
    patched,
)
from nexus.runtime.webhook.certs import (
    CertificateBundle,
    CertWatcher,
    generate_self_signed,
    has_pair,
    write_bundle,
)
from nexus.runtime.webhook.configurations import (
    MUTATING,
    VALIDATING,
    inject_ca_bundle,
    load_configurations,
    local_configurations,
)
from nexus.runtime.webhook.handlers import (
    Defaulter,
    Denied,
    Handler,
    Problem,
    Validator,
    Warnings,
    defaulting,
    validating,
)
from nexus.runtime.webhook.install import WebhookInstallOptions
from nexus.runtime.webhook.server import DEFAULT_CERT_DIR, WebhookServer, WebhookServerOptions

__all__ = [
    "DEFAULT_CERT_DIR",
    "MUTATING",
    "VALIDATING",
    "AdmissionRequest",
    "AdmissionResponse",
    "BadAdmissionReview",
    "CertWatcher",
    "CertificateBundle",
    "Defaulter",
    "Denied",
    "Handler",
    "Problem",
    "Validator",
    "Warnings",
    "WebhookInstallOptions",
    "WebhookServer",
    "WebhookServerOptions",
    "allowed",
    "defaulting",
    "denied",
    "errored",
    "generate_self_signed",
    "has_pair",
    "inject_ca_bundle",
    "load_configurations",
    "local_configurations",
    "patched",
    "validating",
    "write_bundle",
]
