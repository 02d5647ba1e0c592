"""Nexus's admission webhooks: kubectl users get the REST API's answers at apply time.

``NexusAgent`` writes are checked with the very agent-spec validation the API uses, plus the
tenant and ``maxAgents`` rules; ``NexusTenant`` writes get reserved names, quota sanity and an
immutable ``nodeProfile``, and creates get the API's defaults. Served by
:class:`nexus.runtime.webhook.WebhookServer`; registered by :func:`setup.setup_webhooks`.
"""
