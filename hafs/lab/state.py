"""A lab's state on disk: its directory, ``state.json`` in it, and the processes it records.

A lab named NAME lives in ``/var/tmp/hafs-lab/NAME`` (0700: it holds keys, each node's
cluster.json and pools with the users' NT hashes):

- ``state.json``: what was made, written again after every step (so ``hafs lab down`` also
  cleans up after a lab command that crashed half way): ``name``, ``inventory`` (its absolute
  path: the cluster is loaded from it again), ``foreign``, ``created``; ``client`` and
  ``gateway`` (their namespace and addresses; no gateway: null); ``nodes``, per node name:
  ``index``, ``ns`` (``NAME-n<index>``), ``ifname`` and ``address`` (as in the inventory),
  ``peer`` (the switch side of its cable, in ``NAME-sw``), ``impl`` (``hafs``, ``ucarp`` or
  ``keepalived``), ``pool_created``, ``booted`` (it was up before: it comes back demoted) and
  ``procs``: every process of the node the lab started, by key (``anchor``, ``zfs-fuse``,
  ``sshd``, ``agent``, ``ucarp-<vhid>``, ``keepalived``, ``service``), as its pid and kernel
  start time (:class:`Proc`).
- ``replication_key`` (+ ``.pub``): the one ssh key of the lab's nodes;
- per node a directory: ``pool.img`` (sparse), ``etc-upper``/``etc-work`` (its /etc overlay,
  with /etc/hafs), the CARP daemon's configs and scripts, and ``<key>.log`` per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hafs.cluster import Cluster, load
from hafs.errors import HafsError
from hafs.lab.netns import Netns, Port, check_prefix, list_namespaces

LAB_ROOT = Path("/var/tmp/hafs-lab")


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


@dataclass(frozen=True)
class Proc:
    """A process the lab started: its pid and start time, so a recycled pid is never hit."""

    pid: int
    start: int

    @classmethod
    def of(cls, popen: subprocess.Popen[Any]) -> Proc:
        return cls(popen.pid, start_time(popen.pid) or 0)

    @property
    def alive(self) -> bool:
        return start_time(self.pid) == self.start

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class LabState:
    """One lab's record: read at construction, saved after every change."""

    def __init__(self, name: str, root: Path = LAB_ROOT) -> None:
        check_prefix(name)  # first: the name is a directory under root
        self.name = name
        self.dir = root / name
        self.state_file = self.dir / "state.json"
        self.state: dict[str, Any] = {}
        self._cluster: Cluster | None = None
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())

    @property
    def exists(self) -> bool:
        return bool(self.state) or bool(list_namespaces(self.name))

    def _save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2))
        tmp.replace(self.state_file)

    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = load(self.state["inventory"])
        return self._cluster

    def node_state(self, node: str) -> dict[str, Any]:
        nodes: dict[str, dict[str, Any]] = self.state.get("nodes", {})
        if node not in nodes:
            known = ", ".join([*nodes, "client"])
            raise HafsError(f"lab {self.name}: no node {node!r}: choose one of {known}")
        return nodes[node]

    def procs(self, node: str) -> dict[str, Proc]:
        return {k: Proc(**v) for k, v in self.node_state(node).get("procs", {}).items()}

    def _record(self, node: str, key: str, proc: Proc) -> None:
        """Record ``proc`` as the node's process ``key``."""
        self.node_state(node).setdefault("procs", {})[key] = {"pid": proc.pid, "start": proc.start}
        self._save()

    def _port(self, node: str) -> Port:
        ns = self.node_state(node)
        return Port(Netns(ns["ns"]), ns["ifname"], Netns(f"{self.name}-sw"), ns["peer"])
