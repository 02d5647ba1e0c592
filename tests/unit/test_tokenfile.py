"""TokenFile: a client sends the token now in its file, swapped as the kubelet swaps it."""

from __future__ import annotations

import os
from pathlib import Path

from kubernetes_asyncio import client as k8s_client

from nexus.runtime.client import Client
from nexus.runtime.tokenfile import TokenFile


def kubelet_write(volume: Path, token: str, n: int) -> None:
    """A new folder, then an atomic rename of ``..data`` (the kubelet's atomic writer)."""
    folder = volume / f"..2026_{n}"
    folder.mkdir()
    (folder / "token").write_text(token)
    tmp = volume / "..data_tmp"
    tmp.symlink_to(folder.name)
    os.replace(tmp, volume / "..data")
    if not (volume / "token").is_symlink():
        (volume / "token").symlink_to("..data/token")


async def test_every_request_after_a_swap_carries_the_new_token(tmp_path: Path) -> None:
    kubelet_write(tmp_path, "first", 1)
    cfg = k8s_client.Configuration()
    cfg.host = "https://127.0.0.1:1"
    TokenFile(tmp_path / "token").install(cfg)
    async with k8s_client.ApiClient(cfg) as api:
        client = Client(api)
        assert (await client._headers(None))["authorization"] == "Bearer first"
        kubelet_write(tmp_path, "second", 2)
        # At once, not after kubernetes-asyncio's one-minute refresh period.
        assert (await client._headers(None))["authorization"] == "Bearer second"
        await client.close()


async def test_a_missing_or_empty_file_keeps_the_last_good_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("good\n")
    cfg = k8s_client.Configuration()
    TokenFile(path).install(cfg)
    path.unlink()
    assert await cfg.get_api_key_with_prefix("BearerToken") == "Bearer good"
    path.write_text("")
    assert await cfg.get_api_key_with_prefix("BearerToken") == "Bearer good"
    path.write_text("rewritten in place, longer")
    assert await cfg.get_api_key_with_prefix("BearerToken") == "Bearer rewritten in place, longer"
