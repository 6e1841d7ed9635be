"""Files that hold secrets (CARP pass, SMB passwords) must be readable by their owner only."""

from __future__ import annotations

import stat
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
