"""Files that hold secrets (CARP pass, SMB passwords) must be readable by their owner only."""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from hafs.errors import HafsError


def check_private(path: Path, what: str, error: type[HafsError] = HafsError) -> None:
    """Raise ``error`` (one line) unless ``path`` exists and group and others cannot read it."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise error(f"{what} {path}: {exc.strerror}: create it, mode 0600") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(
            f"{what} {path} is readable by group or others: chmod 600 {path} "
            f"(now {stat.filemode(mode)})"
        )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, readable by its owner only (also if it was wider before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)


def private_key(path: Path) -> bytes:
    """The random 32-byte key in ``path`` (mode 0600), made on first use. Processes making it
    at once agree on one key: it is linked into place only if no key is there yet."""
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=path.parent)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_bytes(32))
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_bytes()
