"""Nexus: multi-tenant control plane for Astromesh agents on Kubernetes."""

__version__ = "0.1.0"
