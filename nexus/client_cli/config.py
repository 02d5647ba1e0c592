"""Where the CLI keeps its session: ``<config-dir>/credentials.json`` (0600, directory 0700).

The file holds the server it belongs to, the access and refresh tokens, the user, and the
current tenant chosen with ``nexus use``. It is replaced atomically (write a private temporary
file, then rename), so a crash never leaves half a token behind, and a refresh is serialised
across processes with an advisory lock (refresh tokens rotate: two CLIs refreshing the same
token at once would make the server revoke the whole session).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CREDENTIALS_FILE = "credentials.json"
LOCK_FILE = ".credentials.lock"
FILE_MODE = 0o600
DIR_MODE = 0o700


class ConfigError(Exception):
    """The configuration directory or the credentials file cannot be used."""


def default_config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$NEXUS_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/nexus``, else ``~/.config/nexus``."""
    env = os.environ if env is None else env
    explicit = env.get("NEXUS_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    # The XDG spec says relative values are invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "nexus"


def normalize_server(url: str) -> str:
    return url.strip().rstrip("/")


@dataclass
class Credentials:
    server: str
    access_token: str
    refresh_token: str
    user: dict[str, Any] = field(default_factory=dict)
    tenant: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
            "user": self.user,
            "tenant": self.tenant,
        }

    @classmethod
    def from_json(cls, data: Any) -> Credentials:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        server, access, refresh = (
            data.get("server"),
            data.get("accessToken"),
            data.get("refreshToken"),
        )
        if not all(isinstance(v, str) and v for v in (server, access, refresh)):
            raise ValueError("server, accessToken and refreshToken are required")
        user = data.get("user") if isinstance(data.get("user"), dict) else {}
        tenant = data.get("tenant") if isinstance(data.get("tenant"), str) else None
        return cls(str(server), str(access), str(refresh), dict(user or {}), tenant)

    def copy(self) -> Credentials:
        return Credentials(**asdict(self))


class CredentialStore:
    """The credentials file of one configuration directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def path(self) -> Path:
        return self.directory / CREDENTIALS_FILE

    def load(self) -> Credentials | None:
        """The stored session, or None when there is none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        try:
            return Credentials.from_json(json.loads(text))
        except ValueError as exc:
            raise ConfigError(f"{self.path} is corrupt ({exc}); run `nexus login` again") from None

    def save(self, creds: Credentials) -> None:
        """Write the file atomically; it is created 0600 and never exists with wider rights."""
        self._ensure_dir()
        data = (json.dumps(creds.to_json(), indent=2) + "\n").encode()
        tmp = self.directory / f".{CREDENTIALS_FILE}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except OSError as exc:
            raise ConfigError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        try:
            try:
                os.fchmod(fd, FILE_MODE)  # in case the umask or the filesystem widened it
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ConfigError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def delete(self) -> bool:
        """Remove the file; False when there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise ConfigError(f"cannot remove {self.path}: {exc.strerror or exc}") from None
        return True

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive advisory lock across processes (held while a refresh runs)."""
        self._ensure_dir()
        try:
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise ConfigError(f"cannot lock {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _ensure_dir(self) -> None:
        d = self.directory
        if d.is_dir():
            return
        if d.exists():
            raise ConfigError(f"{d} exists and is not a directory")
        try:
            d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(d, DIR_MODE)
        except OSError as exc:
            raise ConfigError(f"cannot create {d}: {exc.strerror or exc}") from None
