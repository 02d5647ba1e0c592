"""The "restricted" Pod Security Standard (baseline included), checked on a pod spec.

Written from the standard's table, independently of the code that builds the node's pod, so
that a template which drifts from the standard fails the tests. Adds what Nexus requires on
top: a read-only root filesystem and no service-account token.
"""

from __future__ import annotations

from typing import Any

_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
}  # fmt: skip


def violations(pod: dict[str, Any]) -> list[str]:
    """Every rule of the restricted profile the pod spec breaks (empty when it passes)."""
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(f"pod: {field}")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= _VOLUMES:
            out.append(f"volume {v['name']}: type {sorted(kinds - _VOLUMES)}")
    for s in psc.get("sysctls") or []:
        if s.get("name") not in _SAFE_SYSCTLS:
            out.append(f"pod: sysctl {s.get('name')}")
    if psc.get("runAsUser") == 0:
        out.append("pod: runAsUser 0")
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        out.append(f"pod: seccompProfile {pod_seccomp}")
    out += _selinux("pod", psc.get("seLinuxOptions"))
    if pod.get("automountServiceAccountToken") is not False:
        out.append("pod: automountServiceAccountToken is not false")
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    if not containers:
        out.append("pod: no containers")
    for c in containers:
        name = f"container {c.get('name')}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: adds capabilities {caps['add']}")
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runs as UID 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount {sc['procMount']}")
        out += _selinux(name, sc.get("seLinuxOptions"))
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{name}: hostPort")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"{name}: root filesystem is writable")
    return out


def _selinux(where: str, opts: dict[str, Any] | None) -> list[str]:
    if not opts:
        return []
    out = [f"{where}: seLinuxOptions.{k}" for k in ("user", "role") if opts.get(k)]
    if opts.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
        out.append(f"{where}: seLinuxOptions.type {opts['type']}")
    return out
