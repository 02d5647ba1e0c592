"""The credential cache: hits, expiry, invalidation, bounds; and the list item's shape."""

from __future__ import annotations

from datetime import UTC, datetime

from nexus.api.credcache import CredentialCache
from nexus.api.models import AgentListItem
from nexus.api.routes_agents import _list_item
from nexus.api.store import ApiKey, Tenant, User

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def key(h: str, tenant: str = "t_1") -> ApiKey:
    return ApiKey(hash=h, tenant_id=tenant, label="", created_at=NOW)


def tenant(tid: str = "t_1") -> Tenant:
    return Tenant(
        id=tid, cr_name=f"tenant-{tid}", display_name="T", node_profile="full", created_at=NOW
    )


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_hit_expiry_and_invalidation() -> None:
    clock = Clock()
    cache = CredentialCache(ttl=10, clock=clock)
    cache.put_key(key("a"), tenant())
    cache.put_key(key("b", "t_2"), tenant("t_2"))
    assert cache.key("a") == (key("a"), tenant())
    cache.invalidate_key("a")
    assert cache.key("a") is None
    cache.invalidate_tenant("t_2")
    assert cache.key("b") is None
    cache.put_key(key("c"), tenant())
    clock.t = 10.0
    assert cache.key("c") is None
    user = User(id="usr_1", email="a@b", display_name="A", password_hash="x", created_at=NOW)
    cache.put_user(user)
    assert cache.user("usr_1") == user
    clock.t = 25.0
    assert cache.user("usr_1") is None


def test_bounded() -> None:
    cache = CredentialCache(max_entries=3)
    for i in range(10):
        cache.put_key(key(f"k{i}"), tenant())
    assert len(cache) == 3
    assert cache.key("k9") is not None and cache.key("k0") is None


def test_list_item_matches_the_documented_model() -> None:
    obj = {
        "metadata": {
            "name": "bot",
            "namespace": "tenant-x",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {"agentSpec": {"metadata": {"name": "bot", "version": "1.0.0"}}},
        "status": {"phase": "Running", "nodeAck": True, "lastSyncedAt": "2026-01-01T00:00:01Z"},
    }
    item = _list_item(obj)
    assert set(item) == set(AgentListItem.model_fields)
    assert AgentListItem.model_validate(item).model_dump(mode="json") == item


def test_a_lookup_that_raced_an_invalidation_is_not_cached() -> None:
    cache = CredentialCache()
    since = cache.generation  # a request starts reading the store ...
    cache.invalidate_key("a")  # ... the key is revoked meanwhile (here or on another replica)
    cache.put_key(key("a"), tenant(), since)  # ... and the stale read comes back
    assert cache.key("a") is None
    user = User(id="usr_1", email="a@b", display_name="A", password_hash="x", created_at=NOW)
    since = cache.generation
    cache.invalidate_user("usr_1")
    cache.put_user(user, since)
    assert cache.user("usr_1") is None
    # Without a race the entry is kept.
    since = cache.generation
    cache.put_key(key("a"), tenant(), since)
    cache.put_user(user, since)
    assert cache.key("a") is not None and cache.user("usr_1") == user


def test_entries_are_served_only_while_the_feed_is_current() -> None:
    cache = CredentialCache()
    current = [True]
    cache.trust_while(lambda: current[0])
    cache.put_key(key("a"), tenant())
    assert cache.key("a") is not None
    current[0] = False
    assert cache.key("a") is None
    current[0] = True
    assert cache.key("a") is not None
    cache.invalidate_all()
    assert cache.key("a") is None and len(cache) == 0
