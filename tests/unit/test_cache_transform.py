"""Cache transforms: pruning to a mask, shared strings and subtrees, and the masks of the
tenant's children, which must not change what the drift comparison decides."""

from __future__ import annotations

import copy
import json
import pickle
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.app import controller_settings
from nexus.controllers import desired
from nexus.controllers.cachetrim import LAST_APPLIED, children, transforms
from nexus.domain.resources import TENANTS
from nexus.runtime.resource import DEPLOYMENTS, PODS
from nexus.runtime.transform import (
    FrozenDict,
    FrozenList,
    StringPool,
    keep,
    mask_of,
    prune,
)
from nexus.settings import ManagerSettings

# -- prune and masks --------------------------------------------------------------------------


def test_prune_keeps_what_the_mask_names_in_maps_and_list_elements() -> None:
    obj = {"a": 1, "b": {"c": 2, "d": 3}, "l": [{"x": 1, "y": 2}, {"x": 3}], "s": "v"}
    out = prune(obj, {"b": {"c": True}, "l": {"x": True}, "s": {"deep": True}})
    assert out == {"b": {"c": 2}, "l": [{"x": 1}, {"x": 3}], "s": "v"}
    assert obj["b"] == {"c": 2, "d": 3}  # the input is left alone


def test_mask_of_keeps_maps_of_scalars_and_named_paths_whole() -> None:
    value = {
        "labels": {"a": "1"},
        "spec": {"inner": {"k": "v"}, "list": [{"p": 1, "q": {"r": 1}}], "exact": {"m": {"n": 1}}},
    }
    mask = mask_of(value, whole=frozenset({".spec.exact"}))
    assert mask == {
        "labels": True,
        "spec": {"inner": True, "list": {"p": True, "q": True}, "exact": True},
    }


# -- the string pool ----------------------------------------------------------------------------


def fresh(s: str) -> str:
    """An equal string that is a new object (not a constant of this module)."""
    return "".join(list(s))


def test_pool_shares_equal_strings_and_forgets_unused_ones() -> None:
    pool = StringPool(min_sweep=10**9)
    a, b = pool.share(fresh("value-1")), pool.share(fresh("value-1"))
    assert a is b
    temp = pool.share(fresh("temporary"))
    del temp
    assert pool.sweep() == 1  # only "temporary": "value-1" is still referenced
    assert pool.share(fresh("value-1")) is a


def test_pool_does_not_share_unique_values_or_long_strings() -> None:
    pool = StringPool(max_length=8, min_sweep=10**9)
    tree = pool.share_tree({"uid": fresh("abc"), "name": fresh("abc"), "x": fresh("long-string")})
    assert len(pool) == 4  # the keys uid, name, x and the name's value
    assert tree == {"uid": "abc", "name": "abc", "x": "long-string"}


def test_frozen_subtrees_are_shared_equal_and_read_only() -> None:
    pool = StringPool(min_sweep=10**9)

    def make(flag: Any) -> dict[str, Any]:
        return {"x": [1, flag, {"y": fresh("z")}], "n": None}

    a, b, c = (
        pool.share_frozen(make(True)),
        pool.share_frozen(make(True)),
        pool.share_frozen(make(1)),
    )
    assert a is b and a == make(True)
    assert c is not a and c == make(1)  # True == 1 in Python, but not in JSON
    assert a["x"][2] is c["x"][2]
    assert isinstance(a, FrozenDict) and isinstance(a["x"], FrozenList)
    with pytest.raises(TypeError):
        a["q"] = 1
    with pytest.raises(TypeError):
        a.setdefault("q", 1)
    with pytest.raises(TypeError):
        a["x"].append(1)
    # Copies are plain, writable containers; serialisers see ordinary maps and lists.
    clone = copy.deepcopy(a)
    clone["x"].append(2)
    assert type(clone) is dict and type(clone["x"]) is list
    assert type(copy.copy(a)) is dict
    assert json.loads(json.dumps(a)) == make(True) == orjson.loads(orjson.dumps(a))
    assert pickle.loads(pickle.dumps(a)) == make(True)


def test_subtrees_met_again_are_found_by_their_json_with_the_same_answers() -> None:
    pool = StringPool(min_sweep=10**9)
    template = {"spec": {"containers": [{"name": "node", "ports": [8000]}]}, "n": 1}
    first = pool.share_frozen(copy.deepcopy(template))
    second = pool.share_frozen(copy.deepcopy(template))  # remembered by its JSON now
    third = pool.share_frozen(copy.deepcopy(template))  # found by it
    assert first is second is third
    # What JSON cannot tell apart, or Python's equality cannot, still gets its own tree.
    nan = pool.share_frozen({"v": float("nan"), "w": [1]})
    assert pool.share_frozen({"v": None, "w": [1]})["v"] is None
    assert pool.share_frozen({"v": float("nan"), "w": [1]})["v"] != nan["v"]  # NaN != NaN
    assert pool.share_frozen({"t": True, "w": [1]})["t"] is True
    assert pool.share_frozen({"t": 1, "w": [1]})["t"] is not True
    # Strings under a unique key are not pooled, in a list as well.
    uids = [fresh("u-1"), fresh("u-2")]
    pool.share_frozen({"uid": list(uids)})
    pool.share_frozen({"uid": list(uids)})
    again = [fresh("u-1"), fresh("u-2")]
    got = pool.share_frozen({"uid": again})["uid"]
    assert got == again
    # Not JSON (an int beyond 64 bits): the slow path, the same answer.
    big = pool.share_frozen({"n": 2**70, "w": [1]})
    assert big == {"n": 2**70, "w": [1]} and big is pool.share_frozen({"n": 2**70, "w": [1]})
    # A sweep forgets the memo with the subtrees it drops.
    del first, second, third
    pool.sweep()
    assert pool.share_frozen(copy.deepcopy(template)) == template


def test_sweep_drops_subtrees_no_object_uses_any_more() -> None:
    pool = StringPool(min_sweep=10**9)
    kept = [pool.share_frozen({"a": {"b": fresh(f"v{i}")}}) for i in range(3)]
    gone = [pool.share_frozen({"a": {"b": fresh(f"w{i}")}}) for i in range(3)]
    assert pool.subtrees == 12
    del gone
    pool.sweep()
    assert pool.subtrees == 6
    assert pool.share_frozen({"a": {"b": fresh("v1")}}) is kept[1]


def test_pool_sweeps_by_itself_as_it_grows() -> None:
    pool = StringPool(min_sweep=64)
    for i in range(10_000):
        pool.share(fresh(f"name-{i}"))
        pool.share_frozen({"k": fresh(f"name-{i}")})
    assert len(pool) < 200 and pool.subtrees < 200


# -- the masks of a tenant's children -----------------------------------------------------------

SETTINGS = controller_settings(
    ManagerSettings(node_image="astromesh/node:test", node_ingress_cidrs="192.0.2.0/24")
).tenant

# What the API server adds to objects as served: defaults, identity, other writers' status.
SERVER_FIELDS: dict[str, Any] = {
    "metadata": {
        "uid": "u",
        "resourceVersion": "7",
        "creationTimestamp": "2026-01-01T00:00:00Z",
        "generation": 1,
        "annotations": {"deployment.kubernetes.io/revision": "1"},
        "managedFields": [{"manager": "nexus", "fieldsV1": {"f:spec": {}}}],
    },
    "status": {"observedGeneration": 1, "conditions": [{"type": "Available"}]},
}


def served(want: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``want`` as the API server would serve it: with its defaults, status and identity."""
    live = copy.deepcopy(want)
    live["metadata"].update(copy.deepcopy(SERVER_FIELDS["metadata"]))
    live["status"] = copy.deepcopy(SERVER_FIELDS["status"])
    _add_defaults(live, rng)
    return live


def _add_defaults(node: Any, rng: random.Random, path: str = "") -> None:
    # Never into the maps the comparison takes whole (the server defaults nothing there).
    if isinstance(node, dict) and path not in desired._EXACT_MAPS:
        for key, value in list(node.items()):
            _add_defaults(value, rng, f"{path}.{key}")
        if node and path != ".metadata.labels" and rng.random() < 0.5:
            node["defaultedByServer"] = rng.choice([1, "x", True, {"deep": 1}])
    elif isinstance(node, list):
        for value in node:
            _add_defaults(value, rng, path)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def drift(live: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``live`` changed somewhere, as a person or another controller might change it."""
    out = copy.deepcopy(live)
    paths = [p for p in _paths(out) if p and p[0] not in ("metadata", "status")]
    if not paths:
        return out
    path = rng.choice(paths)
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = rng.choice(["change", "add-key", "delete"])
    if action == "add-key" and isinstance(parent[last], dict):
        parent[last]["addedByHand"] = "x"
    elif action == "delete":
        del parent[last]
    else:
        parent[last] = "changed-by-hand"
    return out


def _owned(want: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in want.items() if k != "metadata"}
    out["metadata"] = {"labels": want["metadata"].get("labels") or {}}
    return out


tenant_specs = st.fixed_dictionaries(
    {
        "displayName": st.text(max_size=5),
        "nodeProfile": st.sampled_from(["full", "minimal", "gateway"]),
        "resourceQuota": st.fixed_dictionaries(
            {},
            optional={
                "maxAgents": st.integers(0, 50),
                "cpu": st.sampled_from(["1", "500m", "2"]),
                "memory": st.sampled_from(["1Gi", "512Mi"]),
            },
        ),
    }
)


@settings(max_examples=60, deadline=None)
@given(
    spec=tenant_specs,
    name=st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True),
    seed=st.integers(),
)
def test_trimmed_children_decide_drift_and_patches_as_the_served_ones(
    spec: dict[str, Any], name: str, seed: int
) -> None:
    rng = random.Random(seed)
    tenant = {"metadata": {"name": name, "namespace": "nexus-system", "uid": "t"}, "spec": spec}
    trim = transforms(SETTINGS, StringPool())
    for res, want in children(tenant, SETTINGS):
        owned = _owned(want)
        for live in (served(want, rng), drift(served(want, rng), rng)):
            cached = trim[res](copy.deepcopy(live))
            assert desired.is_subset(owned, cached) == desired.is_subset(owned, live), res
            assert desired.merge_patch(owned, cached) == desired.merge_patch(owned, live), res
            assert cached["metadata"]["labels"] == live["metadata"]["labels"]
            assert "managedFields" not in cached["metadata"]
        assert desired.is_subset(owned, trim[res](served(want, rng))), res


def test_children_keep_their_identity_and_the_deployment_its_status() -> None:
    rng = random.Random(1)
    tenant = {"metadata": {"name": "t1", "namespace": "nexus-system", "uid": "t"}, "spec": {}}
    trim = transforms(SETTINGS, StringPool())
    for res, want in children(tenant, SETTINGS):
        cached = trim[res](served(want, rng))
        meta = cached["metadata"]
        assert {"name", "uid", "resourceVersion", "labels", "creationTimestamp"} <= set(meta)
        assert "annotations" not in meta
        assert ("status" in cached) == (res == DEPLOYMENTS)
        assert cached["status" if res == DEPLOYMENTS else "metadata"]


def test_equal_pod_templates_of_different_tenants_are_one_object() -> None:
    rng = random.Random(2)
    pool = StringPool()
    trim = transforms(SETTINGS, pool)
    deps = []
    for name in ("t1", "t2"):
        tenant = {"metadata": {"name": name, "namespace": "nexus-system"}, "spec": {}}
        want = dict(children(tenant, SETTINGS))[DEPLOYMENTS]
        live = served(want, random.Random(3))
        deps.append(trim[DEPLOYMENTS](live))
    assert rng  # the same defaults on both (seeded alike)
    a, b = (d["spec"]["template"]["spec"] for d in deps)
    assert a is b
    assert deps[0]["spec"]["selector"] != deps[1]["spec"]["selector"]


def test_node_pods_keep_metadata_and_status_only() -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "t", "uid": "u", "labels": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "i"}]},
        "status": {"podIP": "127.0.0.2", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    cached = transforms(SETTINGS, StringPool())[PODS](copy.deepcopy(pod))
    assert cached == {k: v for k, v in pod.items() if k != "spec"}


def test_tenants_lose_kubectls_copy_and_managed_fields_only() -> None:
    tenant = {
        "apiVersion": "nexus.astromesh.io/v1alpha1",
        "kind": "NexusTenant",
        "metadata": {
            "name": "t",
            "annotations": {LAST_APPLIED: "{...}", "keep": "me"},
            "managedFields": [{}],
        },
        "spec": {"displayName": "T"},
        "status": {"phase": "Ready"},
    }
    cached = transforms(SETTINGS, StringPool())[TENANTS](copy.deepcopy(tenant))
    assert cached["metadata"] == {"name": "t", "annotations": {"keep": "me"}}
    assert cached["spec"] == tenant["spec"] and cached["status"] == tenant["status"]


def test_keep_without_a_pool_only_prunes() -> None:
    out = keep({"metadata": {"name": True}})(
        {"apiVersion": "v1", "kind": "X", "metadata": {"name": "n", "uid": "u"}, "spec": {}}
    )
    assert out == {"apiVersion": "v1", "kind": "X", "metadata": {"name": "n"}}


# -- informer index buckets -------------------------------------------------------------------


def test_index_buckets_hold_one_key_as_a_string_and_many_as_a_set() -> None:
    from typing import cast

    from nexus.runtime.informer import Informer
    from nexus.runtime.resource import CONFIGMAPS

    inf = Informer(cast(Any, None), CONFIGMAPS)

    def obj(name: str, ns: str, rv: str = "1") -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv}}

    inf._put("a/x", obj("x", "a"))
    assert inf.index_keys("namespace", "a") == ["a/x"]
    inf._put("a/y", obj("y", "a"))
    inf._put("a/y", obj("y", "a", "2"))  # an update: still two keys
    assert inf.index_keys("namespace", "a") == ["a/x", "a/y"]
    assert sorted(o["metadata"]["name"] for o in inf.by_index("namespace", "a")) == ["x", "y"]
    inf._delete("a/x")
    assert inf.index_keys("namespace", "a") == ["a/y"]
    assert [o["metadata"]["name"] for o in inf.by_index("namespace", "a")] == ["y"]
    inf._delete("a/y")
    assert inf.index_keys("namespace", "a") == [] and inf.by_index("namespace", "a") == []
    assert inf.index_sizes() == {"namespace": 0}
