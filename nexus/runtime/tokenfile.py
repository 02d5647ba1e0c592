"""A bearer token that follows its file, for in-cluster clients whose token gets rotated.

The kubelet rotates a pod's ServiceAccount token by swapping the file behind its mount (a new
folder, then an atomic rename of ``..data``). kubernetes-asyncio's in-cluster loader re-reads
the file only once a minute, so a client keeps sending a revoked token for up to a minute and
a leader loses its Lease. Here the file's identity is checked on every request (one ``stat``,
which the rename changes) and the token re-read as soon as it differs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("nexus.runtime.tokenfile")

SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"

_Stamp = tuple[int, int, int, int]


class TokenFile:
    """The current content of a token file, as ``Configuration.refresh_api_key_hook``.

    Guarantees: every request made after the file was replaced or rewritten (a different
    inode, mtime or size of the file the path resolves to) carries the new token; the file is
    read only when it changed; a missing, unreadable or empty file keeps the last good token
    (a swap in progress must not turn into unauthenticated requests), and is logged once.
    """

    def __init__(self, path: str | os.PathLike[str] = SERVICE_ACCOUNT_TOKEN) -> None:
        self.path = Path(path)
        self._stamp: _Stamp | None = None
        self._token: str | None = None
        self._failing = False

    def install(self, configuration: Any) -> None:
        """Make ``configuration`` send this file's token (``Bearer``), re-read on change."""
        self.refresh(configuration)
        configuration.refresh_api_key_hook = self.refresh

    def token(self) -> str | None:
        """The token now in the file (re-read if it changed), or the last good one."""
        try:
            st = os.stat(self.path)
            stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                content = self.path.read_text().strip()
                if not content:
                    raise OSError("token file is empty")
                if self._token is not None and content != self._token:
                    log.info("tokenfile.rotated", path=str(self.path))
                self._token, self._stamp, self._failing = content, stamp, False
        except OSError as exc:
            if not self._failing:
                log.warning("tokenfile.unreadable", path=str(self.path), error=str(exc))
                self._failing = True
        return self._token

    def refresh(self, configuration: Any, *_: Any) -> None:
        token = self.token()
        if token is not None:
            configuration.api_key["BearerToken"] = token
            configuration.api_key_prefix["BearerToken"] = "Bearer"
