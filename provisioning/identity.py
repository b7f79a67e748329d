"""The gateway's identity: its private key, a certificate signing request for the
utility's CA, and on request a self-signed development certificate.

Key files are written owner-only (0600) and never overwritten without ``force``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.public import PRIVATE_FILE, make_private_dir
from provisioning.broker_url import DEFAULT_BROKER, BrokerAddress
from provisioning.errors import ProvisionError

KeyType = Literal["ed25519", "p256"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class IdentityError(ProvisionError):
    """The identity cannot be created as asked (the operator's to fix)."""


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    key: Path
    csr: Path
    cert: Path | None


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` whole: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_private(path: Path, data: str | bytes) -> None:
    """Write a secret owner-only, atomically."""
    write_atomic(path, data, PRIVATE_FILE)


def _new_key(kind: KeyType) -> PrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    # Ed25519 signs without a separate hash; cryptography wants None for it.
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _subject(gateway_id: str, organisation: str | None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)]
    if organisation:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    return x509.Name(attrs)


def create_identity(
    folder: Path,
    gateway_id: str,
    *,
    key_type: KeyType = "ed25519",
    organisation: str | None = None,
    self_signed_days: int | None = None,
    force: bool = False,
    now: dt.datetime | None = None,
) -> IdentityFiles:
    """Create ``gateway.key`` and ``gateway.csr`` (and ``gateway.crt`` if asked) in ``folder``."""
    files = IdentityFiles(
        key=folder / "gateway.key",
        csr=folder / "gateway.csr",
        cert=folder / "gateway.crt" if self_signed_days else None,
    )
    if files.key.exists() and not force:
        raise IdentityError(f"{files.key} exists: refusing to replace the identity without --force")
    make_private_dir(folder)
    key = _new_key(key_type)
    subject = _subject(gateway_id, organisation)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, _hash_for(key))
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(files.key, pem_key)
    files.csr.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    if files.cert is not None and self_signed_days:
        start = now or dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(minutes=5))
            .not_valid_after(start + dt.timedelta(days=self_signed_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(key, _hash_for(key))
        )
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


STARTER_CONFIG = """\
# prepaid-edge gateway configuration (written by meter-provision init).
# Secrets can be given in the environment instead: PREPAID_EDGE__MQTT__PASSWORD=...
gateway_id = "{gateway_id}"
store = "{store}"

# One [[buses]] table per RS-485 line or Modbus TCP endpoint.
# [[buses]]
# name = "rs485-1"
# kind = "rtu"
# device = "/dev/ttyUSB0"      # or socket://device-server:4001
# baud = 9600
#
# [[buses]]
# name = "tcp-1"
# kind = "tcp"
# host = "192.0.2.10"
# port = 502

[mqtt]
brokers = [{broker}]
{off}ca_file = "{folder}/ca.pem"
{off}cert_file = "{folder}/gateway.crt"
{off}key_file = "{folder}/gateway.key"

[tokens]
currency = "USD"
# online_public_keys = {{ vend-2026 = "base64url Ed25519 public key" }}
# headend_public_keys = {{ hq-2026 = "base64url Ed25519 public key" }}
"""


def starter_config(
    gateway_id: str, folder: Path, store: Path, broker: BrokerAddress = DEFAULT_BROKER
) -> str:
    """The config ``init`` writes; the TLS files are commented out for a broker without TLS."""
    return STARTER_CONFIG.format(
        gateway_id=gateway_id,
        folder=folder,
        store=store,
        broker=broker.toml(),
        off="" if broker.tls else "# ",
    )
