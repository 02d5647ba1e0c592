"""Example operator on nexus.runtime: mirror ConfigMaps into labelled namespaces."""
