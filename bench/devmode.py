"""``make dev`` with several tenants: time to ready and the memory of every process it runs.

Runs ``python -m nexus.dev`` on a fresh data folder (free ports, its own loopback range), then
  * times start -> the banner (control plane up, the seeded tenant's node available);
  * registers ``--tenants - 1`` more users with a tenant each through the REST API and times
    until every tenant is Ready (each with its own node process);
  * sums the RSS of the whole process tree (``nexus dev`` itself, which holds the manager and
    the local node agent, etcd, kube-apiserver, kube-controller-manager, the node processes);
  * stops it (Ctrl-C), starts it again on the same data and times start -> every tenant Ready.

    .venv/bin/python -m bench.devmode [--tenants 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp

from bench.common import table
from nexus.runtime.envtest import free_port
from tests.support.tenants import Account

ROOT = Path(__file__).resolve().parents[1]
READY_LINE = "Press Ctrl-C to stop."


def tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def kind(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    for name in ("kube-apiserver", "kube-controller-manager", "etcd"):
        if name in cmd.split(" ", 1)[0]:
            return name
    if "astromesh.api.main:app" in cmd:
        return "node processes"
    if "nexus.dev" in cmd:
        return "nexus dev (manager + API + local node agent)"
    return "other"


def node_urls(root: int) -> list[str]:
    """The addresses the node processes of the tree listen on (from their command lines)."""
    urls = []
    for pid in tree(root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "astromesh.api.main:app" in argv and "--host" in argv and "--port" in argv:
            host, port = argv[argv.index("--host") + 1], argv[argv.index("--port") + 1]
            urls.append(f"http://{host}:{port}")
    return sorted(urls)


async def all_answer(urls: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s:
        for url in urls:
            while True:
                try:
                    async with s.get(f"{url}/v1/health") as r:
                        if r.status == 200:
                            break
                except (aiohttp.ClientError, OSError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(url)
                await asyncio.sleep(0.1)


def memory(root: int) -> dict[str, tuple[int, int]]:
    """kind -> (processes, RSS KiB)."""
    by: dict[str, list[int]] = defaultdict(list)
    for pid in tree(root):
        by[kind(pid)].append(rss_kib(pid))
    return {k: (len(v), sum(v)) for k, v in by.items()}


async def start(data: Path, ports: dict[str, int]) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nexus.dev", f"--data={data}",
        f"--api-port={ports['api']}", f"--probe-port={ports['probe']}",
        f"--metrics-port={ports['metrics']}", f"--webhook-port={ports['webhook']}",
        "--node-range=127.0.201.0/24",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdout is not None
    text = ""
    while READY_LINE not in text:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError(f"nexus dev exited:\n{text}")
        text += line.decode()
    return proc, text


async def stop(proc: asyncio.subprocess.Process) -> float:
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    await proc.stdout.read()
    await proc.wait()
    return time.perf_counter() - t0


async def main(tenants: int) -> None:
    ports = {k: free_port() for k in ("api", "probe", "metrics", "webhook")}
    base = f"http://127.0.0.1:{ports['api']}"
    rows: list[tuple[str, str]] = []
    headline: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-devmode-") as tmp:
        data = Path(tmp) / "nexus"
        t0 = time.perf_counter()
        proc, text = await start(data, ports)
        banner = time.perf_counter() - t0
        assert re.search(r"node\s+astromesh-node-\S+ at http://", text), text
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
            t1 = time.perf_counter()
            accounts = await asyncio.gather(
                *(Account.open(http, base, f"Bench {i}") for i in range(tenants - 1))
            )
            await asyncio.gather(*(a.wait_ready(timeout=300) for a in accounts))
            more = time.perf_counter() - t1
            await asyncio.sleep(3)
            mem = memory(proc.pid)
            urls = node_urls(proc.pid)
            assert len(urls) == tenants, urls
            stopped = await stop(proc)

            # Every node process of the first run answers again (the pods keep their
            # addresses); tenant phases are not used here, since they are stale until the
            # manager has seen the restarted nodes.
            t2 = time.perf_counter()
            proc, _ = await start(data, ports)
            warm_banner = time.perf_counter() - t2
            await all_answer(urls)
            warm_all = time.perf_counter() - t2
            assert node_urls(proc.pid) == urls
            await asyncio.sleep(3)
            warm_mem = memory(proc.pid)
            await stop(proc)

    total = sum(r for _, r in mem.values())
    rows += [
        ("first start -> banner (seeded tenant Ready)", f"{banner:.1f} s"),
        (f"{tenants - 1} more tenants via the API -> all Ready", f"{more:.1f} s"),
        (f"first start -> {tenants} tenants Ready", f"{banner + more:.1f} s"),
        (f"restart on the same data -> banner / all {tenants} nodes answer",
         f"{warm_banner:.1f} s / {warm_all:.1f} s"),
        ("Ctrl-C -> every process gone", f"{stopped:.1f} s"),
    ]  # fmt: skip
    for name, (n, kib) in sorted(mem.items(), key=lambda kv: -kv[1][1]):
        rows.append((f"RSS {name} ({n})", f"{kib / 1024:.0f} MiB"))
    rows.append((f"RSS total, {tenants} tenants", f"{total / 1024:.0f} MiB"))
    warm_total = sum(r for _, r in warm_mem.values())
    rows.append((f"RSS total after the restart, {tenants} tenants", f"{warm_total / 1024:.0f} MiB"))
    headline.update(
        tenants=str(tenants),
        start_to_ready_s=f"{banner + more:.1f}",
        restart_to_ready_s=f"{warm_all:.1f}",
        rss_total_mb=f"{total / 1024:.0f}",
        nodes_rss_mb=f"{mem.get('node processes', (0, 0))[1] / 1024:.0f}",
    )
    print(table(rows))
    print(" ".join(f"{k}={v}" for k, v in headline.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=5)
    os.environ.setdefault("NEXUS_LOG_LEVEL", "warning")
    asyncio.run(main(parser.parse_args().tenants))
