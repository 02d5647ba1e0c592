"""A small dynamic Kubernetes client over kubernetes-asyncio's connection and auth handling.

Objects are plain JSON dicts. kubernetes-asyncio provides the configuration (kubeconfig,
in-cluster, exec plugins, TLS) and the aiohttp session; requests, JSON decoding, watch streams
and error mapping are done here so that every resource, built-in or custom, is served the same
way and watch streams can be read with an idle timeout.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Literal, TypedDict, Unpack

import aiohttp
import orjson
from kubernetes_asyncio import client as k8s_client

from nexus.runtime import metrics
from nexus.runtime.resource import Resource

PatchType = Literal["merge", "json", "strategic", "apply"]
_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: Accept headers of a metadata-only list and watch: the API server answers with
#: ``PartialObjectMetadata`` (``metadata`` alone) for any resource, built-in or custom.
METADATA_LIST_ACCEPT = (
    "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
)
METADATA_WATCH_ACCEPT = (
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
)


class ApiError(Exception):
    """An error answer of the API server, with its HTTP status and ``Status`` body."""

    def __init__(self, status: int, reason: str = "", body: Mapping[str, Any] | None = None):
        self.status = status
        self.body: dict[str, Any] = dict(body or {})
        self.reason = str(self.body.get("reason") or reason)
        self.message = str(self.body.get("message") or reason)
        super().__init__(f"{status} {self.reason}: {self.message}")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        """409: an optimistic-concurrency conflict or an existing name."""
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def gone(self) -> bool:
        """410: the requested resourceVersion was compacted away; relist."""
        return self.status == 410

    @property
    def invalid(self) -> bool:
        """422: invalid object, or a failed JSON-patch ``test`` operation."""
        return self.status == 422


#: Requests to the API server at once (watches have connections of their own). Each is a TLS
#: connection with its own 256 KiB read buffer in asyncio (and OpenSSL's state): a pool sized
#: for bursts that the API server cannot serve faster anyway costs tens of megabytes, and the
#: freed buffers fragment the heap. 32 keeps a 2-core API server saturated
#: (docs/benchmarks.md).
MAX_CONNECTIONS = 32


class WatchOptions(TypedDict, total=False):
    """What a watch asks for (:meth:`Client.watch`); every key is optional."""

    resource_version: str | None
    label_selector: str | None
    field_selector: str | None
    #: The server ends the stream after this long (client-go's reflector draws it at random).
    timeout_seconds: int | None
    #: No byte at all for this long (not even a bookmark): ``TimeoutError``.
    idle_timeout: float | None
    #: Ask for bookmarks (default: yes).
    allow_bookmarks: bool
    #: Objects as ``PartialObjectMetadata`` (default: no).
    metadata_only: bool


class Client:
    """Async CRUD, patch and watch for any resource, on one kubernetes-asyncio ``ApiClient``.

    Every response is counted in ``rest_client_requests_total{code,method,host}`` (the metric
    controller-runtime always registers), which also makes API writes observable in tests.
    """

    def __init__(
        self,
        api_client: k8s_client.ApiClient,
        *,
        timeout: float = 30.0,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.api_client = api_client
        self.timeout = timeout
        cfg = api_client.configuration
        self._host = str(cfg.host or "").rstrip("/")
        self._host_label = self._host.split("://", 1)[-1]
        self._server_hostname = getattr(cfg, "tls_server_name", None)
        self._proxy = getattr(cfg, "proxy", None)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._stream_session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session to the API server (for callers that stream or proxy)."""
        return self._get_session()

    def _get_session(self, *, stream: bool = False) -> aiohttp.ClientSession:
        # Our own session: kubernetes-asyncio's has trust_env=True, which re-reads the proxy
        # variables and ~/.netrc on every request (measured: a fifth of the CPU of a busy
        # controller). TLS and proxy settings come from the same configuration.
        # Watches get a session of their own, without a limit: each holds its connection for
        # minutes, and must neither wait for a request's connection nor take one from requests.
        session = self._stream_session if stream else self._session
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    ssl=_ssl_context(self.api_client.configuration),
                    limit=0 if stream else self._max_connections,
                ),
                read_bufsize=2**21,  # watch events of large objects
            )
            if stream:
                self._stream_session = session
            else:
                self._session = session
        return session

    async def close(self) -> None:
        for session in (self._session, self._stream_session):
            if session is not None:
                await session.close()
        self._session = self._stream_session = None

    @property
    def host(self) -> str:
        return self._host

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers: dict[str, str] = {"Accept": "application/json"}
        headers.update(self.api_client.default_headers)
        if content_type:
            headers["Content-Type"] = content_type
        await self.api_client.update_params_for_auth(headers, [], ["BearerToken"])
        return headers

    async def _open(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
        accept: str | None = None,
        stream: bool = False,
    ) -> aiohttp.ClientResponse:
        data: bytes | None = None
        if body is not None:
            data = _dumps(body)
            content_type = content_type or "application/json"
        headers = await self._headers(content_type)
        if accept:
            headers["Accept"] = accept
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        kwargs: dict[str, Any] = {}
        if self._server_hostname:
            kwargs["server_hostname"] = self._server_hostname
        if self._proxy:
            kwargs["proxy"] = self._proxy
        resp = await self._get_session(stream=stream).request(
            method,
            self._host + path,
            params=query,
            data=data,
            headers=headers,
            timeout=timeout or aiohttp.ClientTimeout(total=self.timeout),
            **kwargs,
        )
        metrics.REST_CLIENT_REQUESTS.labels(str(resp.status), method, self._host_label).inc()
        if resp.status >= 400:
            try:
                raw = await resp.read()
            finally:
                resp.release()
            raise _api_error(resp.status, resp.reason or "", raw)
        return resp

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str | None = None,
        accept: str | None = None,
    ) -> Any:
        """One request; returns the decoded JSON answer (None for an empty body).

        ``accept`` overrides the Accept header, e.g. for server-side printed Tables.
        """
        try:
            resp = await self._open(
                method, path, params=params, body=body, content_type=content_type, accept=accept
            )
        except aiohttp.ClientError as exc:
            metrics.REST_CLIENT_REQUESTS.labels("<error>", method, self._host_label).inc()
            raise ConnectionError(f"{method} {path}: {exc}") from exc
        try:
            raw = await resp.read()
        finally:
            resp.release()
        # orjson: several times faster than json on the API server's answers, and it shares the
        # key strings of the objects it decodes (the cache holds thousands of them).
        return orjson.loads(raw) if raw else None

    # -- CRUD -------------------------------------------------------------------------------

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = await self.request("GET", res.path(namespace, name))
        return obj

    async def get_or_none(
        self, res: Resource, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return await self.get(res, name, namespace)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        metadata_only: bool = False,
    ) -> dict[str, Any]:
        """One page of a list (the raw ``List`` object, with ``metadata.continue``).

        ``metadata_only``: items are ``PartialObjectMetadata`` (apiVersion, kind, metadata).
        """
        result: dict[str, Any] = await self.request(
            "GET",
            res.path(namespace),
            params={
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
                "resourceVersion": resource_version,
                "limit": limit,
                "continue": continue_token,
            },
            accept=METADATA_LIST_ACCEPT if metadata_only else None,
        )
        return result

    async def list_all(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        metadata_only: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Every item, paginated like client-go's pager; returns (items, list resourceVersion).

        ``transform`` is applied to each item as its page arrives, so that a caller keeping
        only part of each item never holds the whole list decoded.
        """
        items: builtins.list[dict[str, Any]] = []
        async for page in self.pages(
            res,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            page_size=page_size,
            metadata_only=metadata_only,
        ):
            raw = page.get("items") or []
            items.extend(map(transform, raw) if transform is not None else raw)
            meta = page["metadata"]
            if not meta.get("continue"):
                return items, str(meta.get("resourceVersion", ""))
            del page, raw  # not held while the next page is read and decoded
        raise AssertionError("unreachable")

    async def pages(
        self,
        res: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        metadata_only: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """The pages of a list, one ``List`` object at a time; the last has no
        ``metadata.continue`` and carries the list's resourceVersion.

        A reader that keeps only part of each item never holds the whole list decoded.
        """
        token: str | None = None
        while True:
            page = await self.list(
                res,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=page_size,
                continue_token=token,
                metadata_only=metadata_only,
            )
            token = page.setdefault("metadata", {}).get("continue") or None
            yield page
            del page  # not held while the next page is read and decoded
            if not token:
                return

    async def create(
        self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        ns = namespace or (obj.get("metadata") or {}).get("namespace")
        body = {"apiVersion": res.api_version, "kind": res.kind, **obj}
        created: dict[str, Any] = await self.request("POST", res.path(ns), body=body)
        return created

    async def replace(
        self, res: Resource, obj: Mapping[str, Any], *, subresource: str = ""
    ) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        result: dict[str, Any] = await self.request(
            "PUT", res.path(meta.get("namespace"), meta["name"], subresource), body=obj
        )
        return result

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
        subresource: str = "",
        field_manager: str | None = None,
        force: bool | None = None,
    ) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            params={"fieldManager": field_manager, "force": force},
            body=patch,
            content_type=_PATCH_CONTENT_TYPES[patch_type],
        )
        return result

    async def patch_status(
        self,
        res: Resource,
        name: str,
        status: Mapping[str, Any],
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the ``status`` subresource (the main resource ignores status writes)."""
        return await self.patch(res, name, {"status": status}, namespace, subresource="status")

    async def delete(
        self,
        res: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        preconditions: Mapping[str, str] | None = None,
        ignore_not_found: bool = False,
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if preconditions:
            body["preconditions"] = dict(preconditions)
        try:
            result: dict[str, Any] | None = await self.request(
                "DELETE", res.path(namespace, name), body=body
            )
        except ApiError as exc:
            if ignore_not_found and exc.not_found:
                return None
            raise
        return result

    # -- watch ------------------------------------------------------------------------------

    async def watch(
        self, res: Resource, namespace: str | None = None, **options: Unpack[WatchOptions]
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events (``{"type", "object"}``) until the server closes the stream.

        An ``ERROR`` event raises :class:`ApiError` (410 for an expired resourceVersion). With
        ``idle_timeout``, a stream that delivers nothing (not even a bookmark) for that long
        raises ``TimeoutError``: the connection may look alive while no events flow.
        ``metadata_only``: objects are ``PartialObjectMetadata``.
        """
        async for batch in self.watch_batches(res, namespace, **options):
            for event in batch:
                yield event

    async def watch_batches(
        self, res: Resource, namespace: str | None = None, **options: Unpack[WatchOptions]
    ) -> AsyncIterator[builtins.list[dict[str, Any]]]:
        """:meth:`watch`, a list of events at a time: every complete event that had arrived
        when the stream was read, in order (never empty).

        Under load many events wait in the socket at once; taking them in one read saves a
        wake-up, a timeout and a generator step per event. An ``ERROR`` event raises once
        the events before it in the same read have been yielded.
        """
        idle_timeout = options.get("idle_timeout")
        metadata_only = options.get("metadata_only", False)
        params = {
            "watch": "true",
            "resourceVersion": options.get("resource_version"),
            "labelSelector": options.get("label_selector"),
            "fieldSelector": options.get("field_selector"),
            "timeoutSeconds": options.get("timeout_seconds"),
            "allowWatchBookmarks": "true" if options.get("allow_bookmarks", True) else None,
        }
        # No total timeout: the server ends the stream after timeoutSeconds; the idle timeout
        # below catches a stream that stalls. It bounds the wait for the response headers too:
        # the API server sends them at once, and a watch sent over a pooled keep-alive
        # connection that died silently would otherwise wait for them forever.
        async with asyncio.timeout(idle_timeout):
            resp = await self._open(
                "GET",
                res.path(namespace),
                params=params,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                accept=METADATA_WATCH_ACCEPT if metadata_only else None,
                stream=True,
            )
        pending = bytearray()  # the start of an event whose end has not arrived yet
        try:
            while True:
                async with asyncio.timeout(idle_timeout):
                    chunk = await resp.content.readany()
                if not chunk:  # the end: the last event may lack its newline
                    lines = [bytes(pending)]
                else:
                    end = chunk.rfind(b"\n")
                    if end < 0:
                        pending += chunk
                        continue
                    if pending:
                        pending += chunk[: end + 1]
                        lines = bytes(pending).split(b"\n")
                    else:
                        lines = chunk[:end].split(b"\n")
                    pending.clear()
                    pending += chunk[end + 1 :]
                batch, error = _watch_events(lines)
                if batch:
                    yield batch
                if error is not None:
                    raise error
                if not chunk:
                    return
        finally:
            resp.close()


async def retry_on_conflict[T](
    fn: Callable[[], Awaitable[T]], *, steps: int = 5, delay: float = 0.01
) -> T:
    """Run ``fn`` again on 409 Conflict, up to ``steps`` times (client-go's DefaultRetry).

    ``fn`` must re-read what it writes, or the retry will conflict again.
    """
    for attempt in range(steps):
        try:
            return await fn()
        except ApiError as exc:
            if not exc.conflict or attempt == steps - 1:
                raise
            await asyncio.sleep(delay * (1 + 0.1 * attempt))
    raise AssertionError("unreachable")


def _ssl_context(cfg: k8s_client.Configuration) -> ssl.SSLContext:
    """The TLS settings kubernetes-asyncio derives from a configuration."""
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _dumps(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:
        # What orjson refuses and json takes (keys that are not strings, integers beyond 64 bits).
        return json.dumps(body, separators=(",", ":")).encode()


def is_write(method: str) -> bool:
    return method.upper() in _WRITE_METHODS


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _api_error(status: int, reason: str, raw: bytes) -> ApiError:
    try:
        body = orjson.loads(raw) if raw else {}
    except ValueError:
        body = {"message": raw[:500].decode(errors="replace")}
    if not isinstance(body, dict):
        body = {"message": str(body)[:500]}
    return ApiError(status, reason, body)


def _watch_events(lines: list[bytes]) -> tuple[list[dict[str, Any]], ApiError | None]:
    """The events of complete watch lines, up to an ``ERROR`` event (returned apart)."""
    events: list[dict[str, Any]] = []
    for line in lines:
        if not line or line.isspace():
            continue
        event: dict[str, Any] = orjson.loads(line)
        if event.get("type") == "ERROR":
            status = event.get("object") or {}
            return events, ApiError(int(status.get("code") or 500), "watch error", status)
        events.append(event)
    return events, None
