"""What every part of the service layer shares: where its run-time state lives, its error,
and how a takeover's or step-down's steps are logged."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

from hafs.errors import HafsError
from hafs.service.config import VipService

log = logging.getLogger("hafs.service")

RUN_DIR = Path("/var/run/hafs")  # FreeBSD has no /run; on Linux /var/run is /run


class ServiceError(HafsError):
    exit_code = 1


@contextlib.contextmanager
def step(
    vip: VipService, action: str, name: str, times: list[tuple[str, float]] | None = None
) -> Iterator[None]:
    """Log one step of a takeover or step-down: what, how long, and whether it failed;
    ``times``: where the step's name and seconds are added once it is done."""
    began = time.monotonic()
    try:
        yield
    except Exception as exc:
        log.error(
            "%s %s: %s: failed after %.2fs: %s",
            vip.name,
            action,
            name,
            time.monotonic() - began,
            exc,
        )
        raise
    took = time.monotonic() - began
    log.info("%s %s: %s: done in %.2fs", vip.name, action, name, took)
    if times is not None:
        times.append((name, round(took, 4)))


def read_text(path: Path) -> str | None:
    """The file's text, or None if it cannot be read (a marker not written yet)."""
    try:
        return path.read_text()
    except OSError:
        return None
