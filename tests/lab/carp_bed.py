"""A CARP test bed: hafs agents and stock ucarp processes in namespaces of one Lab.

Everything runs inside namespaces the test created; the root namespace only reads state
through netlink (``ip -n``) and the agents' control sockets.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hafs.carp import control
from hafs.lab.netns import Lab, Netns, Port, new_prefix

UP_SCRIPT = '#!/bin/sh\nip addr add "$2/32" dev "$1" label "$1:$3"\n'
DOWN_SCRIPT = '#!/bin/sh\nip addr del "$2/32" dev "$1" 2>/dev/null || true\n'
# keepalived.conf: the globals, then one instance per vhid. VRRP only, no vrrp_strict (it would
# add firewall rules), no scripts; preempt is the default
KEEPALIVED_CONF = """\
global_defs {{
    router_id {name}
    vrrp_version 3
}}
"""
KEEPALIVED_INSTANCE = """\
vrrp_instance hafs_test_{vhid} {{
    state BACKUP
    interface eth0
    virtual_router_id {vhid}
    priority {priority}
    advert_int {interval}
{unicast}    virtual_ipaddress {{
        {vip}/32 dev eth0
    }}
}}
"""

KEEPALIVED_UNICAST = """\
    unicast_src_ip {src}
    check_unicast_src
    unicast_peer {{
{peers}    }}
"""


@dataclass
class Peer:
    name: str
    node: Netns
    port: Port
    address: str
    proc: subprocess.Popen[bytes] | None = None
    kind: str = ""
    socket: str | None = None
    log: Path | None = None

    def status(self) -> dict[str, Any]:
        assert self.socket is not None, f"{self.name} is not a hafs agent"
        return control.request(self.socket, {"op": "status"})

    def vhid_state(self, vhid: int) -> str:
        state: str = next(v["state"] for v in self.status()["vhids"] if v["vhid"] == vhid)
        return state

    def holds(self, vip: str) -> bool:
        return f" {vip}/32" in f" {self.node.ip('-4', '-o', 'addr', 'show')}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text() if self.log and self.log.exists() else ""


@dataclass
class CarpBed:
    lab: Lab
    tmp: Path
    peers: dict[str, Peer] = field(default_factory=dict)
    subnet: str = "10.77.0"
    # run the agents from this tree's ``hafs`` (a checkout of another commit: a benchmark's
    # before and after in one run); None: the ``hafs`` this process imports
    hafs_tree: Path | None = None

    def node(self, name: str) -> Peer:
        index = len(self.peers) + 1
        ns = self.lab.add_node(name)
        address = f"{self.subnet}.{index}"
        port = self.lab.connect(ns, "eth0", f"{address}/24")
        peer = self.peers[name] = Peer(name, ns, port, address)
        return peer

    def _start(self, peer: Peer, argv: list[str], kind: str) -> None:
        peer.log = self.tmp / f"{peer.name}.log"
        with peer.log.open("wb") as out:
            peer.proc = self.lab.popen(peer.node, argv, stdout=out, stderr=subprocess.STDOUT)
        peer.kind = kind

    def hafs(
        self,
        peer: Peer,
        vhids: list[tuple[int, str, int]],
        *,
        passphrase: str = "testok",
        preempt: bool = True,
        extra: str = "",
        peers: list[Peer] | None = None,
    ) -> Peer:
        """Start `hafs agent` on ``peer`` for (vhid, vip, advskew) entries; with ``peers``,
        every vhid advertises to their addresses by unicast."""
        tables = [
            [
                "[[vhid]]",
                f"vhid = {vhid}",
                f'addresses = ["{vip}"]',
                f"advskew = {skew}",
                *_peers_line(peers),
            ]
            for vhid, vip, skew in vhids
        ]
        return self._agent(peer, [f'pass = "{passphrase}"', extra], tables, preempt)

    def hafs_vrrp(
        self,
        peer: Peer,
        vhids: list[tuple[int, str, int]],
        interval: float,
        peers: list[Peer] | None = None,
    ) -> Peer:
        """Start `hafs agent` speaking VRRPv3 on ``peer`` for (vhid, vip, priority) entries,
        every one advertising each ``interval`` seconds (with ``peers``: to them, unicast)."""
        tables = [
            [
                "[[vhid]]",
                f"vhid = {vhid}",
                f'addresses = ["{vip}"]',
                f"priority = {priority}",
                f"interval = {interval}",
                *_peers_line(peers),
            ]
            for vhid, vip, priority in vhids
        ]
        return self._agent(peer, ['protocol = "vrrp3"'], tables, preempt=True)

    def _agent(
        self, peer: Peer, settings: list[str], tables: list[list[str]], preempt: bool
    ) -> Peer:
        peer.socket = str(self.tmp / f"{peer.name}.sock")
        Path(peer.socket).unlink(missing_ok=True)  # a SIGKILLed agent leaves it behind
        lines = [
            f'node = "{peer.name}"',
            'interface = "eth0"',
            f'srcip = "{peer.address}"',
            f"preempt = {'true' if preempt else 'false'}",
            "event_command = []",
            f'control_socket = "{peer.socket}"',
            *settings,
        ]
        for table in tables:
            lines += table
        config = self.tmp / f"{peer.name}.toml"
        config.write_text("\n".join(lines) + "\n")
        os.chmod(config, 0o600)
        argv = [sys.executable, "-m", "hafs", "agent", "--config", str(config)]
        if self.hafs_tree is not None:  # -P: not the working directory's hafs either
            argv = ["env", f"PYTHONPATH={self.hafs_tree}", sys.executable, "-P", *argv[1:]]
        self._start(peer, argv, "hafs")
        wait_for(lambda: Path(peer.socket or "").exists(), 10, f"{peer.name}'s control socket")
        return peer

    def keepalived(
        self,
        peer: Peer,
        vhids: list[tuple[int, str, int]],
        interval: float,
        peers: list[Peer] | None = None,
    ) -> Peer:
        """Start keepalived (VRRP only, VRRPv3, preempt) on ``peer`` in the foreground for
        (vhid, vip, priority) entries, its config and pid files in this bed's directory;
        stopped by its pid like the others. Its VRRP child (:meth:`keepalived_vrrp_pid`) sends
        the adverts; the parent does not respawn it (``--dont-respawn``) but exits with it.
        With ``peers``: ``unicast_src_ip``, ``unicast_peer`` and ``check_unicast_src``, as
        ``hafs render NODE keepalived.conf`` writes them for a unicast cluster."""
        unicast = ""
        if peers is not None:
            unicast = KEEPALIVED_UNICAST.format(
                src=peer.address, peers="".join(f"        {p.address}\n" for p in peers)
            )
        config = self.tmp / f"{peer.name}-keepalived.conf"
        instances = [
            KEEPALIVED_INSTANCE.format(
                vhid=vhid, vip=vip, priority=priority, interval=interval, unicast=unicast
            )
            for vhid, vip, priority in vhids
        ]
        config.write_text("".join([KEEPALIVED_CONF.format(name=peer.name), *instances]))
        argv = ["keepalived", "--dont-fork", "--dont-respawn", "--log-console", "--log-detail"]
        argv += ["--vrrp", "--use-file", str(config)]
        for flag, suffix in (("--pid", "main"), ("--vrrp_pid", "vrrp")):
            argv += [flag, str(self._keepalived_pidfile(peer, suffix))]
        self._start(peer, argv, "keepalived")
        return peer

    def keepalived_vrrp_pid(self, peer: Peer) -> int:
        """The pid of keepalived's VRRP child on ``peer`` (the process that advertises)."""
        return int(self._keepalived_pidfile(peer, "vrrp").read_text())

    def _keepalived_pidfile(self, peer: Peer, suffix: str) -> Path:
        return self.tmp / f"{peer.name}-keepalived-{suffix}.pid"

    def ucarp(
        self,
        peer: Peer,
        vhid: int,
        vip: str,
        advskew: int,
        *,
        passphrase: str = "testok",
        preempt: bool = True,
    ) -> Peer:
        """Start stock ucarp on ``peer``; its scripts add/remove the VIP like the seed's."""
        up, down = self.tmp / "ucarp-up.sh", self.tmp / "ucarp-down.sh"
        for path, text in ((up, UP_SCRIPT), (down, DOWN_SCRIPT)):
            path.write_text(text)
            path.chmod(0o700)
        argv = [
            "ucarp",
            "-i",
            "eth0",
            "-s",
            peer.address,
            "-v",
            str(vhid),
            "-p",
            passphrase,
            "-a",
            vip,
            "-k",
            str(advskew),
            "-u",
            str(up),
            "-d",
            str(down),
            "-x",
            str(vhid),
            "-z",
        ]
        if preempt:
            argv.append("-P")
        self._start(peer, argv, "ucarp")
        return peer

    def holders(self, vip: str) -> list[str]:
        return sorted(name for name, peer in self.peers.items() if peer.holds(vip))

    def stop_all(self) -> None:
        for peer in self.peers.values():
            try:
                peer.stop()
            except subprocess.TimeoutExpired:
                peer.stop(signal.SIGKILL)


def _peers_line(peers: list[Peer] | None) -> list[str]:
    """agent.toml's ``peers`` of a vhid (none: multicast)."""
    if peers is None:
        return []
    return [f"peers = {json.dumps([p.address for p in peers])}"]


@contextlib.contextmanager
def running_bed(tmp: Path, prefix: str | None = None) -> Iterator[CarpBed]:
    """A bed in a fresh lab (named ``prefix``, default a fresh ``hafs-t`` one); every process
    it started is stopped, every namespace removed."""
    with Lab(prefix or new_prefix()) as lab:
        bed = CarpBed(lab, tmp)
        try:
            yield bed
        finally:
            bed.stop_all()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> float:
    """Poll ``condition`` until true; return the seconds it took, or fail naming ``what``."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def sample(
    bed: CarpBed, vips: list[str], seconds: float, step: float = 0.02
) -> Iterator[dict[str, list[str]]]:
    """Who holds each VIP, every ``step`` seconds for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        yield {vip: bed.holders(vip) for vip in vips}
        time.sleep(step)
