"""The node pod under the "restricted" Pod Security Standard: what its template adds.

The node serves HTTP and needs no privilege, no Kubernetes API and no writable image. It runs
as a fixed non-root UID (images differ, hence a flag), with every capability dropped, no
privilege escalation, the runtime's default seccomp profile and a read-only root filesystem.

What astromesh writes, and where it goes instead:

- its config dir (``/etc/astromesh``): the image's entrypoint renders ``runtime.yaml`` there
  from the role's profile, and the runtime stores every registered agent under ``agents/``.
  An init container copies the image's own config into an ``emptyDir`` mounted over it, so
  the profiles are still there; ``ASTROMESH_CONFIG_DIR`` points there too, for images that run
  ``uvicorn astromesh.api.main:app`` directly.
- ``/var/lib/astromesh`` (the daemon's pid file, data, models, memory);
- ``/tmp`` and ``$HOME``, for tools and model clients that write temporary files or caches.

Agents survive a container restart (the volumes live as long as the pod); a new pod starts
empty and the agent controller registers them again.
"""

from __future__ import annotations

from nexus.runtime.objects import Object

#: Mount path -> volume name of every writable place of the node.
CONFIG_DIR = "/etc/astromesh"
HOME_DIR = "/home/astromesh"
WRITABLE = {
    CONFIG_DIR: "config",
    "/var/lib/astromesh": "data",
    "/tmp": "tmp",
    HOME_DIR: "home",
}
SEED_MOUNT = "/seed"

# Copies the image's config dir, when it has one, into the writable volume. Python rather than
# cp: an astromesh image always has Python, not always the same shell tools.
_SEED = (
    "import os, shutil, sys; src, dst = sys.argv[1:]; "
    "os.path.isdir(src) and shutil.copytree(src, dst, dirs_exist_ok=True)"
)


def pod_security_context(run_as_user: int) -> Object:
    return {
        "runAsNonRoot": True,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_user,
        "fsGroup": run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Object:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def env() -> list[Object]:
    return [
        {"name": "ASTROMESH_CONFIG_DIR", "value": CONFIG_DIR},
        {"name": "HOME", "value": HOME_DIR},
        # The image's bytecode is read-only; do not try to write next to it.
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]


def volume_mounts() -> list[Object]:
    return [{"name": name, "mountPath": path} for path, name in WRITABLE.items()]


def volumes() -> list[Object]:
    return [{"name": name, "emptyDir": {}} for name in WRITABLE.values()]


def config_seed(image: str, resources: Object) -> Object:
    """The init container that fills the config volume from the image's config dir."""
    return {
        "name": "seed-config",
        "image": image,
        "command": ["python3", "-c", _SEED, CONFIG_DIR, SEED_MOUNT],
        "resources": resources,
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": WRITABLE[CONFIG_DIR], "mountPath": SEED_MOUNT}],
    }
