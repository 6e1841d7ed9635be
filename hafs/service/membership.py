"""Who is there: heartbeats between the nodes' service daemons, the witness, the verdict.

Every second each service daemon sends a datagram (``hafs-heartbeat 1 <node>``) to every
peer's fixed address, UDP port :data:`PORT`, and reads theirs; a heartbeat counts only from
the address the cluster config gives that peer. CARP adverts cannot serve here: only masters
send them, and FreeBSD's come from the kernel. The decision is :mod:`hafs.service.quorum`'s;
this module is its I/O: the socket, the witness ping (only when no peer is heard) and
``/var/run/hafs/quorum.json``, which ``hafs event`` reads before it takes a VIP over and
``hafs status`` shows. A verdict older than :data:`FRESH` seconds (no daemon) is unknown.
"""

from __future__ import annotations

import contextlib
import json
import logging
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from hafs.service.config import ServiceConfig
from hafs.service.quorum import Quorum, Verdict
from hafs.service.runtime import RUN_DIR

log = logging.getLogger("hafs.service")

PORT = 7387
BEAT = 1.0  # seconds between heartbeats
WITNESS_EVERY = 2.0  # seconds between witness pings while no peer is heard
QUORUM_FILE = RUN_DIR / "quorum.json"
FRESH = 5.0
MAGIC = "hafs-heartbeat 1 "


def read_verdict(now: float | None = None) -> dict[str, Any] | None:
    """The daemon's last verdict, if it is fresh (wall clock of this node alone)."""
    try:
        verdict: dict[str, Any] = json.loads(QUORUM_FILE.read_text())
    except (OSError, ValueError):
        return None
    if (now if now is not None else time.time()) - float(verdict.get("at", 0)) > FRESH:
        return None
    return verdict


def witness_answers(address: str) -> bool:
    argv = ["ping", "-c", "1", "-W", "1", "-q", address]
    return subprocess.run(argv, capture_output=True, check=False, timeout=5).returncode == 0


class Membership:
    """Heartbeats in and out on a thread of its own; ``on_change(verdict)`` when the node
    gains or loses quorum (called on that thread: keep it short)."""

    def __init__(
        self,
        config: ServiceConfig,
        on_change: Callable[[Verdict], None],
        witness: Callable[[str], bool] = witness_answers,
    ) -> None:
        self.config = config
        self.on_change = on_change
        self.witness = witness
        self.quorum = Quorum(config.node, (config.node, *config.peers), started=time.monotonic())
        self.verdict: Verdict | None = None
        self.by_address = {str(a): n for n, a in config.peers.items()}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", PORT))
        self.sock.setblocking(False)
        self._witness_at = -WITNESS_EVERY
        self._witness: bool | None = None

    def run(self, stopping: threading.Event) -> None:
        message = (MAGIC + self.config.node).encode()
        next_beat = time.monotonic()
        try:
            while not stopping.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    for address in self.by_address:  # no route (a cut cable): not heard either
                        with contextlib.suppress(OSError):
                            self.sock.sendto(message, (address, PORT))
                    next_beat = now + BEAT
                    self.evaluate(now)
                readable, _, _ = select.select([self.sock], [], [], max(0.0, next_beat - now))
                if readable:
                    self._receive(time.monotonic())
        finally:
            self.sock.close()

    def _receive(self, now: float) -> None:
        while True:
            try:
                data, (address, _) = self.sock.recvfrom(512)
            except OSError:  # BlockingIOError: all read
                return
            text = data.decode(errors="replace")
            peer = self.by_address.get(address)
            if peer is not None and text == MAGIC + peer:
                self.quorum.heartbeat(now, peer)

    def evaluate(self, now: float) -> Verdict:
        witness = None
        if self.quorum.members(now) == {self.config.node} and self.config.witness is not None:
            if now - self._witness_at >= WITNESS_EVERY:
                self._witness_at = now
                self._witness = self.witness(str(self.config.witness))
            witness = self._witness
        verdict = self.quorum.verdict(now, witness)
        changed = self.verdict is None or verdict.quorate != self.verdict.quorate
        self.verdict = verdict
        self._publish(verdict)
        if changed:
            level = logging.INFO if verdict.quorate else logging.WARNING
            log.log(
                level,
                "quorum: %s (%s; members %s)",
                "QUORATE" if verdict.quorate else "LOST",
                verdict.reason,
                ",".join(verdict.members),
            )
            self.on_change(verdict)
        return verdict

    def _publish(self, verdict: Verdict) -> None:
        QUORUM_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = QUORUM_FILE.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "at": time.time(),
                    "quorate": verdict.quorate,
                    "reason": verdict.reason,
                    "members": list(verdict.members),
                    "expected": list(verdict.expected),
                }
            )
        )
        tmp.replace(QUORUM_FILE)
