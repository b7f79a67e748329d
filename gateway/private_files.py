"""Secrets at rest: the store holds every meter key, and the config may hold the MQTT
password, so the store's folder is created owner-only (0700) and every file of the
store and the config owner-only (0600), whoever creates them and whatever the umask.
The gateway refuses to start on any of them open to group or others (runner.py), as
ssh does for keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: the mode of the store's folder
PRIVATE_DIR = 0o700
#: the mode of the store's files, the config and the keys
PRIVATE_FILE = 0o600


def open_to_others(mode: int) -> bool:
    """Whether group or others have any access (read, write or search)."""
    return bool(mode & (stat.S_IRWXG | stat.S_IRWXO))


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) owner-only; an existing folder is left as
    it is (the gateway says if it is open to others)."""
    if path.is_dir():
        return
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)  # mkdir's mode went through the umask


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty and owner-only if it does not exist; whether it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return True


def write_private_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` through an owner-only temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(fd, PRIVATE_FILE)
            out.write(text)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
