"""The runtime's webhook server on loopback TLS: review round trips, patches, refusals,
deadlines, bad requests, metrics, readiness and certificate reload (no control plane)."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonpatch
import pytest
from prometheus_client import REGISTRY

from nexus.runtime.webhook import (
    AdmissionRequest,
    BadAdmissionReview,
    Defaulter,
    Denied,
    Validator,
    Warnings,
    WebhookServer,
    WebhookServerOptions,
    defaulting,
    generate_self_signed,
    validating,
    write_bundle,
)
from nexus.runtime.webhook.server import parse_go_duration

Object = dict[str, Any]


class Rules(Validator):
    async def validate_create(self, request: AdmissionRequest, obj: Object) -> Warnings:
        if obj.get("spec", {}).get("sleep"):
            await asyncio.sleep(obj["spec"]["sleep"])
        if obj.get("spec", {}).get("crash"):
            raise RuntimeError("bug")
        problems = [f"spec.{k} must be positive" for k, v in obj.get("spec", {}).items() if v == -1]
        if problems:
            raise Denied(problems, field="spec")
        return ["looks fine"]

    async def validate_update(
        self, request: AdmissionRequest, old: Object, new: Object
    ) -> Warnings:
        if old["spec"] != new["spec"]:
            raise Denied([("spec", "spec is immutable")], code=403, reason="Forbidden")
        return ()


class Labels(Defaulter):
    async def default(self, request: AdmissionRequest, obj: Object) -> Warnings:
        obj.setdefault("metadata", {}).setdefault("labels", {})["team"] = "core"
        obj["spec"].setdefault("replicas", 1)
        return ()


def review(operation: str, obj: Object | None, old: Object | None = None) -> Object:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "example.io", "version": "v1", "kind": "Widget"},
            "resource": {"group": "example.io", "version": "v1", "resource": "widgets"},
            "name": "w",
            "namespace": "ns",
            "operation": operation,
            "userInfo": {"username": "alice"},
            "object": obj,
            "oldObject": old,
        },
    }


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[WebhookServer]:
    write_bundle(generate_self_signed(["127.0.0.1"]), tmp_path)
    srv = WebhookServer(
        WebhookServerOptions(
            bind_address="127.0.0.1:0",
            cert_dir=str(tmp_path),
            request_timeout=0.5,
            cert_poll_interval=0.05,
        )
    )
    srv.register("/validate", validating(Rules()))
    srv.register("/mutate", defaulting(Labels()))
    await srv.start()
    yield srv
    await srv.stop()


async def post(srv: WebhookServer, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    ctx = ssl.create_default_context(cafile=str(Path(srv.options.cert_dir) / "ca.crt"))
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"https://127.0.0.1:{srv.port}{path}", json=body, ssl=ctx, **kw) as r,
    ):
        return r.status, await r.json()


async def test_allowed_with_warnings_and_denied_with_every_problem(server: WebhookServer) -> None:
    status, answer = await post(server, "/validate", review("CREATE", {"spec": {"a": 1}}))
    assert status == 200
    assert answer["response"] == {"uid": "u-1", "allowed": True, "warnings": ["looks fine"]}

    status, answer = await post(server, "/validate", review("CREATE", {"spec": {"a": -1, "b": -1}}))
    res = answer["response"]
    assert res["allowed"] is False
    assert res["status"]["code"] == 422 and res["status"]["reason"] == "Invalid"
    assert res["status"]["message"] == "spec.a must be positive; spec.b must be positive"
    assert res["status"]["details"]["kind"] == "Widget"
    assert res["status"]["details"]["name"] == "w"
    assert [c["message"] for c in res["status"]["details"]["causes"]] == [
        "spec.a must be positive",
        "spec.b must be positive",
    ]

    _, answer = await post(
        server, "/validate", review("UPDATE", {"spec": {"a": 2}}, {"spec": {"a": 1}})
    )
    assert answer["response"]["status"]["code"] == 403
    _, answer = await post(server, "/validate", review("DELETE", None, {"spec": {}}))
    assert answer["response"]["allowed"] is True


async def test_defaulting_answers_with_a_json_patch(server: WebhookServer) -> None:
    original = {"metadata": {"name": "w"}, "spec": {"size": 3}}
    _, answer = await post(server, "/mutate", review("CREATE", original))
    res = answer["response"]
    assert res["allowed"] is True and res["patchType"] == "JSONPatch"
    patch = jsonpatch.JsonPatch.from_string(base64.b64decode(res["patch"]).decode())
    assert patch.apply(original) == {
        "metadata": {"name": "w", "labels": {"team": "core"}},
        "spec": {"size": 3, "replicas": 1},
    }
    # Nothing to change: no patch at all.
    done = {"metadata": {"labels": {"team": "core"}}, "spec": {"replicas": 2}}
    _, answer = await post(server, "/mutate", review("CREATE", done))
    assert "patch" not in answer["response"]


async def test_deadline_bug_and_bad_requests_are_clear_answers(server: WebhookServer) -> None:
    _, answer = await post(server, "/validate", review("CREATE", {"spec": {"sleep": 5}}))
    assert answer["response"]["status"]["code"] == 504
    assert "did not decide within 0.5s" in answer["response"]["status"]["message"]
    # The API server's own deadline (?timeout=) wins when it is shorter.
    _, answer = await post(
        server, "/validate?timeout=200ms", review("CREATE", {"spec": {"sleep": 5}})
    )
    assert "within 0.18s" in answer["response"]["status"]["message"]
    _, answer = await post(server, "/validate", review("CREATE", {"spec": {"crash": True}}))
    assert answer["response"]["status"]["code"] == 500
    assert answer["response"]["allowed"] is False

    status, answer = await post(server, "/validate", {"kind": "Pod"})
    assert status == 400 and answer["response"]["allowed"] is False
    status, _ = await post(server, "/validate", [], headers={"Content-Type": "text/plain"})
    assert status == 400


async def test_metrics_count_every_request(server: WebhookServer) -> None:
    def value(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok = {"webhook": "/mutate", "code": "200"}
    bad = {"webhook": "/mutate", "code": "400"}
    before_ok, before_bad = (
        value("controller_runtime_webhook_requests_total", ok),
        value("controller_runtime_webhook_requests_total", bad),
    )
    await post(server, "/mutate", review("CREATE", {"spec": {}}))
    await post(server, "/mutate", {"nonsense": True})
    assert value("controller_runtime_webhook_requests_total", ok) == before_ok + 1
    assert value("controller_runtime_webhook_requests_total", bad) == before_bad + 1
    assert value("controller_runtime_webhook_requests_in_flight", {"webhook": "/mutate"}) == 0
    assert value("controller_runtime_webhook_latency_seconds_count", {"webhook": "/mutate"}) >= 2


async def test_ready_only_while_serving(tmp_path: Path) -> None:
    write_bundle(generate_self_signed(["127.0.0.1"]), tmp_path)
    srv = WebhookServer(WebhookServerOptions(bind_address="127.0.0.1:0", cert_dir=str(tmp_path)))
    assert srv.need_leader_election is False
    assert await srv.started_check() == "webhook server not started"
    await srv.start()
    assert await srv.started_check() is None
    await srv.stop()
    assert await srv.started_check() is not None


async def test_missing_certificate_is_a_clear_start_error(tmp_path: Path) -> None:
    srv = WebhookServer(WebhookServerOptions(bind_address="127.0.0.1:0", cert_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="mount the certificate Secret"):
        await srv.start()


async def test_rotation_on_disk_serves_the_new_pair_to_new_connections(
    server: WebhookServer,
) -> None:
    cert_dir = Path(server.options.cert_dir)
    seen: list[bytes] = []

    async def record(bundle: Any) -> None:
        seen.append(bundle.ca_pem)

    server.on_certificate(record)
    rotated = generate_self_signed(["127.0.0.1"])
    write_bundle(rotated, cert_dir)
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen == [rotated.ca_pem]
    await asyncio.sleep(0.05)
    # Trusting only the new CA works: the new pair is served without a restart.
    status, _ = await post(server, "/validate", review("CREATE", {"spec": {}}))
    assert status == 200


def test_review_decoding_and_go_durations() -> None:
    with pytest.raises(BadAdmissionReview):
        AdmissionRequest.from_review({"apiVersion": "admission.k8s.io/v1beta1"})
    with pytest.raises(BadAdmissionReview):
        AdmissionRequest.from_review({**review("PATCH", {}), "kind": "AdmissionReview"})
    req = AdmissionRequest.from_review(review("CREATE", {"spec": {}}))
    assert (req.uid, req.operation, req.namespace, req.user_info["username"]) == (
        "u-1",
        "CREATE",
        "ns",
        "alice",
    )
    assert parse_go_duration("10s") == 10
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("250ms") == 0.25
    assert parse_go_duration("soon") is None
