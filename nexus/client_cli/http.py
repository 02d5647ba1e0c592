"""The CLI's HTTP client for the Nexus REST API.

* every call has a 30 s total timeout;
* errors come back as :class:`ApiError` carrying the server's ``error`` / ``errors``;
* a ``401`` on a call made with the stored session triggers one ``/auth/refresh`` (the new
  pair is saved 0600) and one retry; if the refresh fails the user is told to log in again;
* ``429`` / ``503`` with a short ``Retry-After`` are retried a couple of times.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from nexus.client_cli.config import ConfigError, Credentials, CredentialStore

DEFAULT_TIMEOUT = 30.0
MAX_RETRY_AFTER = 10  # seconds we are willing to sleep on a Retry-After
RETRY_ATTEMPTS = 2


class CliError(Exception):
    """Something to report as ``error: <message>`` (plus one line per ``errors`` entry)."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class ApiError(CliError):
    """The server answered with a 4xx/5xx."""

    def __init__(self, status: int, body: Any) -> None:
        message: str | None = None
        errors: list[str] = []
        if isinstance(body, dict):
            if isinstance(body.get("error"), str):
                message = body["error"]
            if isinstance(body.get("errors"), list):
                errors = [str(e) for e in body["errors"]]
        if message is None:
            if errors:
                message = f"the server rejected the request (HTTP {status}):"
            elif isinstance(body, str) and body.strip():
                message = f"HTTP {status}: {body.strip()[:300]}"
            else:
                message = f"HTTP {status}"
        super().__init__(message, errors)
        self.status = status
        self.body = body


class SessionExpired(CliError):
    """The stored session cannot be refreshed."""


class Unreachable(CliError):
    """No HTTP answer at all (connection refused, DNS, timeout)."""


@dataclass(frozen=True)
class Auth:
    """How to authenticate one call."""

    api_key: str | None = None
    session: bool = False  # send the stored access token
    tenant: str | None = None  # X-Tenant-ID

    def headers(self, creds: Credentials | None) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.api_key:
            out["X-API-Key"] = self.api_key
        elif self.session and creds is not None:
            out["Authorization"] = f"Bearer {creds.access_token}"
        if self.tenant:
            out["X-Tenant-ID"] = self.tenant
        return out


NO_AUTH = Auth()


def check_server_url(url: str) -> str:
    url = url.strip().rstrip("/")
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise CliError(f"invalid server URL {url!r} (expected http://host:port)")
    return url


class NexusClient:
    """One aiohttp session against one server; use as ``async with``."""

    def __init__(
        self,
        server: str,
        *,
        store: CredentialStore | None = None,
        creds: Credentials | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.server = check_server_url(server)
        self.store = store
        self.creds = creds
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> NexusClient:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "nexus-cli", "Accept": "application/json"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- public ---------------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        auth: Auth = NO_AUTH,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer of a 2xx; raises :class:`CliError` otherwise."""
        status, body = await self.call_status(
            method,
            path,
            auth=auth,
            json_body=json_body,
            data=data,
            content_type=content_type,
            params=params,
        )
        if status >= 400:
            raise ApiError(status, body)
        return body

    async def call_status(
        self,
        method: str,
        path: str,
        *,
        auth: Auth = NO_AUTH,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded body) without raising on 4xx/5xx (still on transport errors)."""
        if json_body is not None:
            data = json.dumps(json_body).encode()
            content_type = "application/json"
        refreshed = False
        retries = 0
        while True:
            headers = auth.headers(self.creds)
            if content_type:
                headers["Content-Type"] = content_type
            status, resp_headers, body = await self._send(method, path, headers, data, params)
            if (
                status == 401
                and not refreshed
                and auth.session
                and not auth.api_key
                and self.creds is not None
            ):
                await self._refresh(headers.get("Authorization", ""))
                refreshed = True
                continue
            delay = _retry_after(status, resp_headers)
            if delay is not None and retries < RETRY_ATTEMPTS:
                retries += 1
                await asyncio.sleep(delay)
                continue
            return status, body

    # -- internals ------------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        data: bytes | None,
        params: Mapping[str, str] | None,
    ) -> tuple[int, Mapping[str, str], Any]:
        assert self._session is not None, "use NexusClient as an async context manager"
        url = self.server + path
        try:
            async with self._session.request(
                method, url, headers=headers, data=data, params=params
            ) as resp:
                raw = await resp.read()
                return resp.status, resp.headers, _decode(raw)
        except aiohttp.ClientConnectorError:
            raise Unreachable(f"cannot reach Nexus at {self.server}") from None
        except TimeoutError:
            raise Unreachable(
                f"Nexus at {self.server} did not answer within {self.timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise Unreachable(
                f"request to Nexus at {self.server} failed: {exc or type(exc).__name__}"
            ) from None

    async def _refresh(self, used_authorization: str) -> None:
        """Rotate the refresh token once (serialised with other CLI processes)."""
        creds = self.creds
        assert creds is not None
        expired = "your session has expired; run `nexus login`"
        if self.store is None:
            raise SessionExpired(expired)
        try:
            with self.store.locked():
                on_disk = self.store.load()
                if (
                    on_disk is not None
                    and on_disk.server == creds.server
                    and f"Bearer {on_disk.access_token}" != used_authorization
                ):
                    # Another process refreshed while we waited for the lock: use its pair.
                    creds.access_token = on_disk.access_token
                    creds.refresh_token = on_disk.refresh_token
                    return
                status, _, body = await self._send(
                    "POST",
                    "/auth/refresh",
                    {"Content-Type": "application/json"},
                    json.dumps({"refreshToken": creds.refresh_token}).encode(),
                    None,
                )
                if (
                    status != 200
                    or not isinstance(body, dict)
                    or not isinstance(body.get("accessToken"), str)
                    or not isinstance(body.get("refreshToken"), str)
                ):
                    reason = body.get("error") if isinstance(body, dict) else None
                    raise SessionExpired(
                        f"your session has expired ({reason}); run `nexus login`"
                        if reason
                        else expired
                    )
                creds.access_token = body["accessToken"]
                creds.refresh_token = body["refreshToken"]
                saved = creds.copy()
                if on_disk is not None and on_disk.server == creds.server:
                    saved.tenant = on_disk.tenant  # a concurrent `nexus use` wins
                self.store.save(saved)
        except ConfigError as exc:
            raise CliError(str(exc)) from None


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _retry_after(status: int, headers: Mapping[str, str]) -> float | None:
    if status not in (429, 503):
        return None
    value = headers.get("Retry-After", "")
    if not value.isdigit():
        return None
    seconds = int(value)
    return float(seconds) if seconds <= MAX_RETRY_AFTER else None
