"""Secret key files: hex text, created owner-only, and refused when anyone else may read
them (a vending key that leaks can mint credit for every meter). A key written into a
folder that does not exist yet (``--out keys/PE1-000042.key``) gets that folder (and any
missing above it) created owner-only: a folder made to hold keys is no more open than they
are."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gateway.public import PRIVATE_DIR
from provisioning.errors import ProvisionError


class KeyFileError(ProvisionError):
    """A key file that is missing, unsafe or not a key (the operator's to fix)."""


def _make_key_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each owner-only whatever the umask."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=PRIVATE_DIR)
            os.chmod(made, PRIVATE_DIR)  # mkdir's mode went through the umask
        except FileExistsError:
            continue  # made meanwhile by someone else: left as it is
        except OSError as exc:
            raise KeyFileError(f"cannot create the folder {made}: {exc.strerror}") from None


def write_secret_file(path: Path, secret: bytes) -> None:
    """Write ``secret`` as hex to a new file with mode 0600 (missing parent folders are
    created 0700, existing ones left as they are); never overwrite."""
    _make_key_folders(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(secret.hex() + "\n")


def read_secret_file(path: Path, length: int) -> bytes:
    """The ``length``-byte secret in ``path``; refuses files group or others can access."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not a hex key file") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path} is not a hex key file") from None
    if len(secret) != length:
        raise KeyFileError(f"{path} holds {len(secret)} bytes, a key here is {length}")
    return secret
