"""Informer cache memory: RSS growth per cached ~1 KB ConfigMap (target <= 4 KB/object).

Creates N ConfigMaps on a fresh local control plane, then, in a child process, measures RSS
before and after an informer has synced them, with managedFields stripped (the default) and
kept (no transform), side by side.

    .venv/bin/python -m bench.cache_memory [--n 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from bench.common import bounded, table
from nexus.runtime.client import Client
from nexus.runtime.envtest import Environment
from nexus.runtime.resource import CONFIGMAPS, NAMESPACES

CHILD = r"""
import asyncio, json, sys
from kubernetes_asyncio import client as k8s
from bench.common import settle
from nexus.runtime.client import Client
from nexus.runtime.informer import Informer
from nexus.runtime.resource import CONFIGMAPS

async def main(host, token, strip):
    cfg = k8s.Configuration(); cfg.host = host; cfg.verify_ssl = False
    cfg.api_key = {"BearerToken": token}; cfg.api_key_prefix = {"BearerToken": "Bearer"}
    async with k8s.ApiClient(cfg) as api:
        client = Client(api)
        await client.list(CONFIGMAPS, "bench", limit=1)  # warm the connection and imports
        before = settle()
        kw = {} if strip else {"transform": None}
        inf = Informer(client, CONFIGMAPS, namespace="bench", **kw)
        inf.start()
        await inf.wait_for_sync()
        after = settle()
        n = len(inf)
        await inf.stop()
        print(json.dumps({"objects": n, "bytes": after - before}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "1"))
"""


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    payload = "x" * 900  # with metadata, about 1 KB per object as served
    async with Environment() as env, await env.api_client() as api:
        client = Client(api)
        await client.create(NAMESPACES, {"metadata": {"name": "bench"}})

        async def create(i: int) -> None:
            await client.create(
                CONFIGMAPS,
                {"metadata": {"name": f"cm-{i:06}", "namespace": "bench"}, "data": {"v": payload}},
            )

        await bounded(range(args.n), create, concurrency=64)
        sample = await client.get(CONFIGMAPS, "cm-000000", "bench")
        served = len(json.dumps(sample))
        results = {}
        for strip in (True, False):
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                CHILD,
                env.host,
                env.token,
                "1" if strip else "0",
                stdout=asyncio.subprocess.PIPE,
            )
            stdout, _ = await child.communicate()
            if child.returncode != 0:
                raise SystemExit(f"measuring child failed ({child.returncode})")
            results[strip] = json.loads(stdout.decode().strip().splitlines()[-1])
    per = {k: v["bytes"] / v["objects"] for k, v in results.items()}
    print(
        table(
            [
                ("objects", str(results[True]["objects"])),
                ("served JSON per object", f"{served} B"),
                ("RSS per object, managedFields stripped", f"{per[True]:.0f} B"),
                ("RSS per object, managedFields kept", f"{per[False]:.0f} B"),
                ("stripped / kept", f"{per[True] / per[False]:.2f}"),
            ]
        )
    )
    print(f"bytes_per_object={per[True]:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
