"""controller-runtime's webhook metrics, with its exact names and labels.

``webhook`` is the path a handler is registered under; ``code`` the HTTP status of the answer
(200 for every AdmissionReview answered, allowed or not).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from nexus.runtime.metrics import REGISTRY

REQUEST_LATENCY = Histogram(
    "controller_runtime_webhook_latency_seconds",
    "Histogram of the latency of processing admission requests",
    ["webhook"],
    registry=REGISTRY,
)
REQUEST_TOTAL = Counter(
    "controller_runtime_webhook_requests_total",
    "Total number of admission requests by HTTP status code.",
    ["webhook", "code"],
    registry=REGISTRY,
)
REQUEST_IN_FLIGHT = Gauge(
    "controller_runtime_webhook_requests_in_flight",
    "Current number of admission requests being served.",
    ["webhook"],
    registry=REGISTRY,
)
