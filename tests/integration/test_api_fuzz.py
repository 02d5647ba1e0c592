"""Property-based fuzzing of the REST API: schemathesis against the ``/openapi.json`` of a live
`nexus manager` subprocess (real kube-apiserver, real node).

Two layers. The ``st run --checks all`` tests run the schemathesis CLI as an outside user
would, with every check (the document must say what the server enforces: valid data accepted,
invalid data refused, auth enforced, 405 with ``Allow``) and every phase, the stateful one
following the document's links, once with an API key and once with a user token plus
``X-Tenant-ID``; examples are bounded so the suite stays fast.

Every operation of the document gets positive and negative examples, sent with real
credentials: a user access token for ``/api/v1/me`` and the tenant routes (with the user's own
tenant id in the path for a share of the cases, so that the success paths are reached too), an
API key, or the token plus ``X-Tenant-ID``, for the agent routes. Checks: no 5xx at all, every
status code documented, every body (and its content type) conforming to the document. A last
test makes sure the fuzzer got past authentication: success paths were reached.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nexus.api.openapi import build_openapi
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import NAMESPACES

from ..support.manager import ManagerProcess
from ..support.node import AstromeshNode

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXAMPLES = 15
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    response_schema_conformance,
    content_type_conformance,
]
# Operations that would destroy the fixtures the other cases rely on when aimed at the real
# tenant: they still run, with generated ids.
NEVER_REAL_TENANT = {("DELETE", "/api/v1/tenants/{tenant_id}")}
NEVER_REAL_AGENT = {("DELETE", "/api/v1/agents/{name}")}
AGENT = "fuzz-bot"
#: Status codes seen per operation, for the reachability check at the end.
SEEN: defaultdict[str, Counter[int]] = defaultdict(Counter)


@dataclass
class Creds:
    url: str
    token: str
    tenant: str
    key: str
    key_hash: str


@pytest.fixture(scope="module")
async def fuzz_node() -> AsyncIterator[AstromeshNode]:
    n = AstromeshNode()
    await n.start()
    yield n
    await n.stop()


@pytest.fixture(scope="module")
async def fuzz_manager(
    envtest: Environment,
    kube: Client,
    fuzz_node: AstromeshNode,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[ManagerProcess]:
    if await kube.get_or_none(NAMESPACES, "nexus-system") is None:
        await kube.create(NAMESPACES, {"metadata": {"name": "nexus-system"}})
    proc = ManagerProcess(
        envtest.kubeconfig_path, tmp_path_factory.mktemp("fuzz"), node_url=fuzz_node.url
    )
    await proc.start()
    yield proc
    code = await proc.stop()
    assert code == 0, proc.log_tail()
    # A 5xx other than 502/503 is logged as api.unhandled_error: there must be none.
    assert "api.unhandled_error" not in proc.log_tail(10**9)


@pytest.fixture(scope="module")
async def creds(fuzz_manager: ManagerProcess) -> AsyncIterator[Creds]:
    url = fuzz_manager.url
    async with aiohttp.ClientSession() as s:

        async def call(method: str, path: str, **kw: object) -> dict[str, str]:
            async with s.request(method, url + path, **kw) as r:  # type: ignore[arg-type]
                assert r.status < 300, await r.text()
                body: dict[str, str] = await r.json()
                return body

        email = f"fuzz-{secrets.token_hex(4)}@example.com"
        reg = await call(
            "POST",
            "/auth/register",
            json={"email": email, "password": secrets.token_urlsafe(16), "displayName": "Fuzz"},
        )
        token = reg["accessToken"]
        auth = {"Authorization": f"Bearer {token}"}
        tenant = (
            await call(
                "POST",
                "/api/v1/tenants",
                json={"displayName": "Fuzz", "nodeProfile": "full"},
                headers=auth,
            )
        )["id"]
        key = await call(
            "POST", f"/api/v1/tenants/{tenant}/keys", json={"label": "fuzz"}, headers=auth
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (await call("GET", f"/api/v1/tenants/{tenant}", headers=auth))["phase"] == "Ready":
                break
            await asyncio.sleep(0.3)
        spec = {
            "apiVersion": "astromesh/v1",
            "kind": "Agent",
            "metadata": {"name": AGENT, "version": "1.0.0"},
            "spec": {"model": {"primary": {"provider": "ollama", "model": "llama3.1:8b"}}},
        }
        await call("POST", "/api/v1/agents", json=spec, headers={"X-API-Key": key["rawKey"]})
        yield Creds(url, token, tenant, key["rawKey"], key["hash"])
        # Remove every tenant the fuzzer created, so the next module starts clean.
        async with s.get(f"{url}/api/v1/tenants", headers=auth) as r:
            tenants = await r.json() if r.status == 200 else []
        for t in tenants:
            async with s.delete(f"{url}/api/v1/tenants/{t['id']}", headers=auth):
                pass


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# The document is built in-process (the schemathesis lazy loader does not run on pytest 9);
# test_the_fuzzed_document_is_the_served_one proves it is byte for byte what the server serves.
schema = schemathesis.openapi.from_dict(
    build_openapi(), config=schemathesis.Config.from_dict({"generation": {"mode": "all"}})
)


#: Per operation and phase; with a fixed seed, a run is the same run every time.
CLI_EXAMPLES = 10
CLI_CONFIG = """
[auth]
# The credentials are the ones given on the command line, nothing else.
auto-signup = false
"""


async def _st_run(creds: Creds, tmp: Path, *headers: str, seed: int) -> tuple[int, str]:
    config = tmp / "schemathesis.toml"
    config.write_text(CLI_CONFIG)
    st = Path(sys.executable).parent / "st"
    args = [str(st), f"--config-file={config}", "--no-color", "run", f"{creds.url}/openapi.json",
            "--checks=all", f"--max-examples={CLI_EXAMPLES}", f"--seed={seed}", "--workers=1",
            "--phases=examples,coverage,fuzzing,stateful"]  # fmt: skip
    for h in headers:
        args += ["-H", h]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 240)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _assert_clean(code: int, out: str) -> None:
    assert code == 0, out[-12000:]
    assert "Stateful" in out and "API Links:" in out, out[-3000:]
    assert " failures" not in out.splitlines()[-1], out[-3000:]


def test_the_fuzzed_document_is_the_served_one(creds: Creds, http: requests.Session) -> None:
    served = http.get(f"{creds.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(build_openapi()))


def _real_tenant_share(case: schemathesis.Case) -> bool:
    """Deterministic per case: about half of the cases use the real tenant / real key hash."""
    seed = repr((case.method, case.path, case.path_parameters, case.query, case.body))
    return zlib.crc32(seed.encode()) % 2 == 0


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_openapi_fuzz(case: schemathesis.Case, creds: Creds, http: requests.Session) -> None:
    op = (case.method.upper(), case.path)
    headers: dict[str, str] = {}
    real = _real_tenant_share(case)
    if case.path.startswith("/api/v1/agents"):
        params = case.path_parameters
        if real and op not in NEVER_REAL_AGENT and params and "name" in params:
            params["name"] = AGENT
        if real:
            headers = {"Authorization": f"Bearer {creds.token}", "X-Tenant-ID": creds.tenant}
        else:
            headers = {"X-API-Key": creds.key}
    elif case.path.startswith("/api/"):
        headers = {"Authorization": f"Bearer {creds.token}"}
        params = case.path_parameters
        if real and op not in NEVER_REAL_TENANT and params and "tenant_id" in params:
            params["tenant_id"] = creds.tenant
    if headers and case.headers is not None:
        # Generated credentials would only test the 401 path; X-Tenant-ID stays generated
        # for the API-key cases (a foreign one must be a 403, and documented).
        for name in ("Authorization", "X-API-Key"):
            case.headers.pop(name, None)
    response = case.call(base_url=creds.url, session=http, headers=headers, timeout=30)
    SEEN[f"{op[0]} {op[1]}"][response.status_code] += 1
    case.validate_response(response, checks=CHECKS, headers=headers)


def test_the_fuzzer_reached_the_success_paths() -> None:
    if not SEEN:
        pytest.skip("the fuzz test did not run")
    for op, statuses in sorted(SEEN.items()):
        print(f"{op:45} {dict(sorted(statuses.items()))}")
    for op in (
        "GET /api/v1/me",
        "GET /api/v1/tenants",
        "GET /api/v1/tenants/{tenant_id}",
        "GET /api/v1/tenants/{tenant_id}/keys",
        "POST /api/v1/tenants/{tenant_id}/keys",
        "GET /api/v1/agents",
        "GET /api/v1/agents/{name}",
        "GET /api/v1/agents/{name}/status",
        "GET /api/v1/agents/{name}/logs",
        "GET /api/v1/agents/{name}/metrics",
        "POST /api/v1/tenants",
        "GET /healthz",
    ):
        assert any(200 <= code < 300 for code in SEEN[op]), (op, SEEN[op])
    # Everything else at least got past authentication sometimes.
    for op, statuses in SEEN.items():
        assert set(statuses) != {401}, op


# Last: the CLI's stateful phase follows links it infers from the responses too, and may well
# delete the tenant the tests above use (the user token's run comes last for that reason).
async def test_st_run_all_checks_with_an_api_key(creds: Creds, tmp_path: Path) -> None:
    code, out = await _st_run(creds, tmp_path, f"X-API-Key: {creds.key}", seed=16)
    _assert_clean(code, out)


async def test_st_run_all_checks_with_a_user_token_and_tenant(creds: Creds, tmp_path: Path) -> None:
    code, out = await _st_run(
        creds,
        tmp_path,
        f"Authorization: Bearer {creds.token}",
        f"X-Tenant-ID: {creds.tenant}",
        seed=17,
    )
    _assert_clean(code, out)
