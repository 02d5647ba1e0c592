"""A loopback TCP proxy for fault injection between a client and the API server.

Modes: forwarding (normal); ``blackhole()`` keeps every current connection open but stops
forwarding bytes (a silent stream, as behind a broken load balancer); ``cut()`` closes every
connection and refuses new ones until ``restore()``.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter, asyncio.Event]] = []
        self._refusing = False
        self.accepted = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        """Close every connection and refuse new ones until restore()."""
        self._refusing = True
        for a, b, _ in self._conns:
            a.close()
            b.close()
        self._conns.clear()

    def blackhole(self) -> None:
        """Stop forwarding on the current connections, leaving their sockets open."""
        for _, _, paused in self._conns:
            paused.set()

    def restore(self) -> None:
        self._refusing = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.accepted += 1
        paused = asyncio.Event()
        entry = (writer, up_w, paused)
        self._conns.append(entry)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if paused.is_set():
                        # Swallow everything from now on: the peer sees a live, silent socket.
                        continue
                    dst.write(data)
                    await dst.drain()
            if not paused.is_set():
                dst.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        if entry in self._conns:
            self._conns.remove(entry)
