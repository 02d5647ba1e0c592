"""Serving certificates: self-signed ones for development and tests, and a watcher that
reloads a cert-manager style directory (``tls.crt``, ``tls.key``, optional ``ca.crt``) when
its files change, so a rotated certificate is served without a restart.

``python -m nexus.runtime.webhook --host SVC.NS.svc --out DIR`` writes a CA and a serving
pair for a hand-made Secret (``kubectl create secret generic NAME --from-file=DIR``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = structlog.get_logger("nexus.webhook.certs")

CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"
CA_NAME = "ca.crt"


@dataclass(frozen=True)
class CertificateBundle:
    """PEM bytes of a serving certificate, its key, and the CA that signed it (if known)."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None = None


def generate_self_signed(
    hosts: Sequence[str],
    *,
    valid_for: dt.timedelta = dt.timedelta(days=365),
    common_name: str = "webhook-server",
) -> CertificateBundle:
    """A fresh CA and a serving certificate it signed, for ``hosts`` (DNS names or IPs).

    The CA is what goes into a webhook configuration's ``caBundle``; the API server checks the
    serving certificate's subjectAltNames against the host it dials, so every name or IP a
    client uses must be listed.
    """
    if not hosts:
        raise ValueError("a serving certificate needs at least one host")
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)  # tolerate small clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{common_name}-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + valid_for)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(now + valid_for)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return CertificateBundle(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
    )


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bundle(
    bundle: CertificateBundle,
    directory: str | os.PathLike[str],
    *,
    cert_name: str = CERT_NAME,
    key_name: str = KEY_NAME,
    ca_name: str = CA_NAME,
) -> Path:
    """Write the bundle as a cert-manager style directory; each file is replaced atomically
    (key first), so a watcher sees either the old or the new file, never half of one."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _write_atomic(d / key_name, bundle.key_pem, 0o600)
    _write_atomic(d / cert_name, bundle.cert_pem, 0o644)
    if bundle.ca_pem is not None:
        _write_atomic(d / ca_name, bundle.ca_pem, 0o644)
    return d


def certificate_expires(cert_pem: bytes) -> dt.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def has_pair(
    directory: str | os.PathLike[str], cert_name: str = CERT_NAME, key_name: str = KEY_NAME
) -> bool:
    d = Path(directory)
    return (d / cert_name).is_file() and (d / key_name).is_file()


Fingerprint = tuple[tuple[int, int, int], ...]
OnChange = Callable[[CertificateBundle], Awaitable[None]]


class CertWatcher:
    """Serves the current certificate pair of a directory, reloading it when the files change.

    Guarantees: :attr:`context` is always a context built from a pair that loaded correctly
    (the key matches the certificate); a half-written or mismatched pair is logged and the
    previous one is kept until a good pair appears. The files are polled (inode, size and
    modification time, through symlinks), which also sees a Secret volume's atomic ``..data``
    swap. Reading and parsing happen off the event loop. Callbacks registered with
    :meth:`on_change` run on each successful load (the first one included), before the new
    pair is served.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        cert_name: str = CERT_NAME,
        key_name: str = KEY_NAME,
        ca_name: str = CA_NAME,
        poll_interval: float = 5.0,
    ) -> None:
        self.directory = Path(directory)
        self.cert_path = self.directory / cert_name
        self.key_path = self.directory / key_name
        self.ca_path = self.directory / ca_name
        self.poll_interval = poll_interval
        self.context: ssl.SSLContext | None = None
        self.bundle: CertificateBundle | None = None
        self.loads = 0
        self._fingerprint: Fingerprint | None = None
        self._callbacks: list[OnChange] = []
        self._task: asyncio.Task[None] | None = None

    def on_change(self, callback: OnChange) -> None:
        self._callbacks.append(callback)

    def _stat(self) -> Fingerprint:
        out = []
        for p in (self.cert_path, self.key_path, self.ca_path):
            try:
                st = p.stat()
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append((0, 0, 0))
        return tuple(out)

    def _load(self) -> tuple[ssl.SSLContext, CertificateBundle, Fingerprint]:
        fingerprint = self._stat()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ca = self.ca_path.read_bytes() if self.ca_path.is_file() else None
        bundle = CertificateBundle(self.cert_path.read_bytes(), self.key_path.read_bytes(), ca)
        return ctx, bundle, fingerprint

    async def load(self) -> None:
        """Load the pair now; raises if it cannot be loaded (use at start-up)."""
        ctx, bundle, fingerprint = await asyncio.to_thread(self._load)
        await self._apply(ctx, bundle, fingerprint)

    async def _apply(
        self, ctx: ssl.SSLContext, bundle: CertificateBundle, fingerprint: Fingerprint
    ) -> None:
        # Callbacks first: a new CA is published (next to the old one) before the new pair is
        # served, which keeps the window in which a client trusts neither as short as can be.
        for callback in self._callbacks:
            try:
                await callback(bundle)
            except Exception as exc:
                log.warning("webhook.certificate_callback_failed", error=str(exc))
        self.context, self.bundle, self._fingerprint = ctx, bundle, fingerprint
        self.loads += 1
        log.info(
            "webhook.certificate_loaded",
            directory=str(self.directory),
            expires=certificate_expires(bundle.cert_pem).isoformat(),
        )

    async def poll_once(self) -> bool:
        """Reload if the files changed since the last load; True if a new pair was loaded."""
        fingerprint = await asyncio.to_thread(self._stat)
        if fingerprint == self._fingerprint:
            return False
        try:
            ctx, bundle, loaded = await asyncio.to_thread(self._load)
        except (OSError, ssl.SSLError, ValueError) as exc:
            # Mid-rotation (key written, certificate not yet) or a broken pair: keep serving the
            # previous one and look again on the next poll.
            log.warning("webhook.certificate_reload_failed", error=str(exc))
            return False
        await self._apply(ctx, bundle, loaded)
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll_once()
            except Exception as exc:  # never let the watcher die silently
                log.warning("webhook.certificate_watch_failed", error=str(exc))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"certwatcher:{self.directory}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nexus.runtime.webhook",
        description="Write a self-signed CA and a serving certificate (tls.crt, tls.key, ca.crt).",
    )
    parser.add_argument("--host", action="append", required=True, help="DNS name or IP (repeat)")
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    bundle = generate_self_signed(args.host, valid_for=dt.timedelta(days=args.days))
    print(write_bundle(bundle, args.out))
    return 0
