"""Client.watch / watch_batches on a real HTTP stream whose chunks do not follow event lines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from nexus.runtime.client import ApiError, Client
from nexus.runtime.resource import NAMESPACES


def line(kind: str, name: str) -> bytes:
    return orjson.dumps({"type": kind, "object": {"metadata": {"name": name}}}) + b"\n"


MakeClient = Callable[[list[bytes]], Awaitable[Client]]

GONE = orjson.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410}}) + b"\n"


async def serve(chunks: list[bytes]) -> tuple[web.AppRunner, str]:
    async def watch(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for chunk in chunks:
            await resp.write(chunk)
            await asyncio.sleep(0.05)  # each write its own read on the other side
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/v1/namespaces", watch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.fixture
async def client_for() -> AsyncIterator[MakeClient]:
    made: list[tuple[web.AppRunner, Client, k8s_client.ApiClient]] = []

    async def make(chunks: list[bytes]) -> Client:
        runner, url = await serve(chunks)
        cfg = k8s_client.Configuration()
        cfg.host = url
        api = k8s_client.ApiClient(cfg)
        client = Client(api)
        made.append((runner, client, api))
        return client

    yield make
    for runner, client, api in made:
        await client.close()
        await api.close()
        await runner.cleanup()


async def test_events_split_across_chunks_and_sharing_one_come_whole_and_in_order(
    client_for: MakeClient,
) -> None:
    a, b, c, d = line("ADDED", "a"), line("ADDED", "b"), line("MODIFIED", "c"), line("ADDED", "d")
    chunks = [a[:10], a[10:] + b[:5], b[5:] + c, b"\n", d.rstrip(b"\n")]  # d: no final newline
    client = await client_for(chunks)
    batches = [
        [e["object"]["metadata"]["name"] for e in batch]
        async for batch in client.watch_batches(NAMESPACES, idle_timeout=5)
    ]
    assert [n for batch in batches for n in batch] == ["a", "b", "c", "d"]
    assert ["b", "c"] in batches  # two events that arrived in one read come as one batch
    assert all(batches)


async def test_an_error_event_ends_the_watch_after_the_events_before_it(
    client_for: MakeClient,
) -> None:
    client = await client_for([line("ADDED", "a") + line("ADDED", "b") + GONE])
    seen = []
    with pytest.raises(ApiError) as err:
        async for event in client.watch(NAMESPACES, idle_timeout=5):
            seen.append(event["object"]["metadata"]["name"])
    assert err.value.status == 410
    assert seen == ["a", "b"]
