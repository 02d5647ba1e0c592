"""The kubectl of the control-plane binaries, run against an Environment."""

from __future__ import annotations

import asyncio
import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path

from nexus.runtime.envtest import Environment

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def kubectl_path() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "setup-envtest.sh")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    path = Path(out.stdout.strip()) / "kubectl"
    assert path.is_file(), "hack/setup-envtest.sh must provide kubectl"
    return str(path)


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


async def run_kubectl(
    kubeconfig: Path | Environment, *args: str, stdin: str | None = None
) -> Result:
    """Run kubectl; never raises for a non-zero exit (tests look at the refusal)."""
    config = kubeconfig.kubeconfig_path if isinstance(kubeconfig, Environment) else kubeconfig
    proc = await asyncio.create_subprocess_exec(
        kubectl_path(), f"--kubeconfig={config}", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())
