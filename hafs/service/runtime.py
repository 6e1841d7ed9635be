"""What every part of the service layer shares: where its run-time state lives, its error,
and how a takeover's or step-down's steps are logged."""

from __future__ import annotations

import contextlib
import logging
import os
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


TAKEOVER_NICE = -5  # above the node's other work; replication runs at +10


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """Run the enclosed (a takeover: the clients wait) at :data:`TAKEOVER_NICE`, and what it
    starts too: smbd keeps it, so the clients come before replication and the rest. On
    Linux only the calling thread (the service daemon's handback runs in one of its
    threads); on FreeBSD the process. A node that refuses it (not root) takes over as is."""
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, TAKEOVER_NICE)
    except OSError as exc:
        log.debug("takeover at the usual CPU priority: %s", exc)
        yield
        return
    try:
        yield
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before)


def read_text(path: Path) -> str | None:
    """The file's text, or None if it cannot be read (a marker not written yet)."""
    try:
        return path.read_text()
    except OSError:
        return None
