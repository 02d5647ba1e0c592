"""Resource.path quotes names exactly as urllib's quote(safe="") does, fast path or not."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from nexus.runtime.resource import NAMESPACES, PODS


@given(st.text(min_size=1), st.text(min_size=1))
def test_names_and_namespaces_are_quoted_as_by_urllib(namespace: str, name: str) -> None:
    want = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
    assert PODS.path(namespace, name) == want


def test_plain_and_unusual_names() -> None:
    assert PODS.path("tenant-00001", "astromesh-node.x") == (
        "/api/v1/namespaces/tenant-00001/pods/astromesh-node.x"
    )
    assert NAMESPACES.path(None, "system:node") == "/api/v1/namespaces/system%3Anode"
    assert PODS.path("a", "../x") == "/api/v1/namespaces/a/pods/..%2Fx"
