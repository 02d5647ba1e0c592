"""Nexus: multi-tenant control plane for Astromesh agents on Kubernetes."""

from nexus import kubelazy

# Before anything imports kubernetes-asyncio: its generated classes load on first use only.
kubelazy.install()

__version__ = "0.1.0"
