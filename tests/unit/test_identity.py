"""meter-provision's identity: an owner-only key, a CSR naming the gateway, an optional self-signed certificate, a starter config that loads, and no silent overwrite."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.config import parse_config
from provisioning.identity import IdentityError, create_identity, starter_config


@pytest.mark.parametrize("key_type", ["ed25519", "p256"])
def test_identity_files(tmp_path: Path, key_type: str) -> None:
    files = create_identity(tmp_path, "gw-7", key_type=key_type, self_signed_days=30)  # type: ignore[arg-type]
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    csr = x509.load_pem_x509_csr(files.csr.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-7"
    assert files.cert is not None
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.subject == csr.subject
    assert cert.public_key() == csr.public_key()


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    first = create_identity(tmp_path, "gw-7")
    key = first.key.read_bytes()
    with pytest.raises(IdentityError, match="--force"):
        create_identity(tmp_path, "gw-7")
    assert first.key.read_bytes() == key
    create_identity(tmp_path, "gw-7", force=True)
    assert first.key.read_bytes() != key


def test_starter_config_is_valid(tmp_path: Path) -> None:
    cfg = parse_config(starter_config("gw-7", tmp_path, tmp_path / "gw.db"), "gateway.toml", env={})
    assert cfg.gateway_id == "gw-7"
    assert cfg.mqtt.key_file == tmp_path / "gateway.key"
