"""What a daemon tells systemd (sd_notify(3), without libsystemd): readiness and the watchdog.

Under a unit with ``WatchdogSec=`` systemd sets ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``) and
kills and restarts the process when no ``WATCHDOG=1`` came for that long; half of it between
two is what sd_watchdog_enabled(3) advises. Outside systemd (the lab, FreeBSD) nothing is
sent: ``NOTIFY_SOCKET`` is not set.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable


def notify(message: str) -> None:
    """Tell systemd ``message`` (``READY=1``, ``WATCHDOG=1``...); nothing when not started by
    systemd, and never an error."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(message.encode(), address)


def watchdog_every() -> float | None:
    """Seconds between two ``WATCHDOG=1`` when systemd watches this process (half its
    ``WatchdogSec``); None when it does not (or watches another pid: an inherited setting)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


def feed_watchdog(every: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """``WATCHDOG=1`` every ``every`` seconds for as long as the process runs Python (a thread
    of its own): systemd restarts it only when it no longer does (stopped, frozen, its
    interpreter hung), not while one of its operations runs long."""
    while True:
        notify("WATCHDOG=1")
        sleep(every)
