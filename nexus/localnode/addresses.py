"""Pod addresses: one loopback IPv4 address per pod, from a configured range.

All of 127.0.0.0/8 is routed to the loopback interface on Linux, so every pod can listen on
the same container port (8000) at an address of its own, as pods do in a cluster.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket

LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def parse_range(spec: str) -> list[ipaddress.IPv4Address]:
    """The addresses of ``127.0.100.0/24`` (hosts only) or ``127.0.100.1-127.0.100.50``.

    Raises ``ValueError`` for malformed input and for any address outside 127.0.0.0/8: pods
    must never listen on a routable interface.
    """
    spec = spec.strip()
    try:
        if "-" in spec:
            first_s, _, last_s = spec.partition("-")
            first = ipaddress.IPv4Address(first_s.strip())
            last = ipaddress.IPv4Address(last_s.strip())
            if last < first:
                raise ValueError(f"address range {spec!r} ends before it starts")
            addrs = [ipaddress.IPv4Address(i) for i in range(int(first), int(last) + 1)]
        else:
            net = ipaddress.IPv4Network(spec, strict=False)
            addrs = list(net.hosts()) if net.prefixlen < 31 else list(net)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError) as exc:
        raise ValueError(f"invalid address range {spec!r}: {exc}") from exc
    if not addrs:
        raise ValueError(f"address range {spec!r} is empty")
    outside = [a for a in (addrs[0], addrs[-1]) if a not in LOOPBACK]
    if outside:
        raise ValueError(f"address range {spec!r} leaves 127.0.0.0/8 ({outside[0]})")
    # 127.0.0.1 is the host's own address (hostIP): never give it to a pod.
    return [a for a in addrs if str(a) != "127.0.0.1"]


def port_free(ip: str, port: int) -> bool:
    """True when nothing listens on ``ip:port`` (checked with SO_REUSEADDR, as uvicorn binds,
    so that a socket in TIME_WAIT from a previous pod does not count as busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


class AddressPool:
    """Hands out the addresses of a range, one per owner (a pod uid).

    Guarantees: an address is held by at most one owner until released; allocation is
    deterministic (the lowest free address, or the owner's ``preferred`` one when it is in the
    range and free, so that a pod keeps its IP across a restart of the agent); an address on
    which some other process already listens at ``port`` is skipped, so two agents sharing a
    range do not hand out the same address. Not thread-safe: use it from the event loop.
    """

    def __init__(self, spec: str, *, port: int | None = None) -> None:
        self.spec = spec
        self._addrs = [str(a) for a in parse_range(spec)]
        self._known = frozenset(self._addrs)
        self._port = port
        self._owner_of: dict[str, str] = {}  # address -> owner
        self._address_of: dict[str, str] = {}  # owner -> address

    @property
    def size(self) -> int:
        return len(self._addrs)

    @property
    def in_use(self) -> int:
        return len(self._owner_of)

    def contains(self, address: str) -> bool:
        return address in self._known

    def address_of(self, owner: str) -> str | None:
        return self._address_of.get(owner)

    def allocate(self, owner: str, preferred: str | None = None, *, port: int | None = None) -> str:
        """The owner's address (the same one on every call until released).

        Raises ``LookupError`` when every address is taken.
        """
        held = self._address_of.get(owner)
        if held is not None:
            return held
        check = port if port is not None else self._port
        candidates = self._addrs
        if preferred is not None and preferred in self._known:
            candidates = [preferred, *self._addrs]
        for addr in candidates:
            if addr in self._owner_of:
                continue
            if check is not None and not port_free(addr, check):
                continue
            self._owner_of[addr] = owner
            self._address_of[owner] = addr
            return addr
        raise LookupError(f"no free address left in {self.spec} ({self.size} addresses)")

    def release(self, owner: str) -> None:
        addr = self._address_of.pop(owner, None)
        if addr is not None:
            with contextlib.suppress(KeyError):
                del self._owner_of[addr]
