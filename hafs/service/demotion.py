"""Demotion holds of the node's CARP daemon, whichever it is: named amounts added to every
vhid's advskew, so that a node can hold itself out of the way (resync, sick smbd).

- Linux: ``hafs agent`` keeps the holds; asked through its control socket.
- FreeBSD: the kernel has one counter, ``net.inet.carp.demotion``, and a write adds to it
  (carp(4)). The holds this node added are kept in ``/var/run/hafs/demotion.json`` (cleared
  at boot with /var/run), so each change adds the difference. At boot ``rc.d/hafs_demote``
  runs ``hafs service hold resync 240`` before rc.d/netif brings CARP up: the node comes back
  demoted and the service daemon releases the hold once its replicas are in sync.
"""

from __future__ import annotations

import fcntl
import json
import logging
import subprocess
from pathlib import Path
from typing import Any, Protocol

from hafs.carp import control
from hafs.errors import HafsError
from hafs.service import host
from hafs.service.runtime import RUN_DIR

log = logging.getLogger("hafs.service")

SYSCTL = "net.inet.carp.demotion"
FREEBSD_HOLDS = RUN_DIR / "demotion.json"  # cleared at boot with /var/run


class DemotionError(HafsError):
    exit_code = 1


class Demotion(Protocol):
    def holds(self) -> dict[str, int] | None:
        """The holds in force, or None when the CARP daemon cannot be asked."""

    def hold(self, name: str, value: int, cause: str = "") -> None:
        """Set hold ``name`` to ``value`` (0 releases it), saying why if ``cause``."""


class AgentDemotion:
    def __init__(self, socket: str) -> None:
        self.socket = socket

    def _request(self, request: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return control.request(self.socket, request)
        except control.ControlError as exc:
            log.warning("agent: %s", exc)
            return None

    def holds(self) -> dict[str, int] | None:
        status = self._request({"op": "status"})
        return None if status is None else dict(status["demotion"]["holds"])

    def hold(self, name: str, value: int, cause: str = "") -> None:
        self._request({"op": "demote", "hold": name, "value": value, "cause": cause})


class SysctlDemotion:
    def __init__(self, path: Path = FREEBSD_HOLDS) -> None:
        self.path = path

    def holds(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def hold(self, name: str, value: int, cause: str = "") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            holds = self.holds()
            delta = value - holds.get(name, 0)
            if delta == 0:
                return
            done = subprocess.run(
                ["sysctl", f"{SYSCTL}={delta}"], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise DemotionError(f"sysctl {SYSCTL}={delta}: {done.stderr.strip()}")
            if value:
                holds[name] = value
            else:
                holds.pop(name, None)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(holds))
            tmp.replace(self.path)
        why = f": {cause}" if cause else ""
        log.info("demotion hold %s: %d (%s %+d)%s", name, value, SYSCTL, delta, why)


def for_node(agent_socket: str | None) -> Demotion | None:
    """The node's demotion: its agent's (Linux), the kernel's (FreeBSD), else none."""
    if agent_socket is not None:
        return AgentDemotion(agent_socket)
    return SysctlDemotion() if host.FREEBSD else None
