"""`hafs lab`: the cluster of an inventory as light containers on one Linux machine.

A lab named NAME is made of:

- network namespaces ``NAME-sw`` (holding the bridge ``NAME-br``), ``NAME-n<i>`` for node i
  of the inventory, ``NAME-client`` and ``NAME-gw``, which owns the nodes' ``gateway``
  addresses and answers ping (the quorum witness a node asks when it hears no peer) but
  routes nowhere; no default route anywhere, nothing in the root namespace. Each node's
  interface carries the inventory's name (``em0``, ``ens36``) and fixed address.
- per node an *anchor* process, the node's "hardware": it holds a mount and UTS namespace with
  the hostname of the node, private tmpfs over ``/run`` and ``/var/lib/zfs`` and an overlay
  over ``/etc``. Everything of the node runs entered into the anchor's namespaces: its
  zfs-fuse daemon (pool on a sparse file), its CARP daemon (``hafs agent``, or stock ucarp
  for FreeBSD nodes with ``--foreign ucarp``) and whatever those start.
- a work directory ``/var/tmp/hafs-lab/NAME`` with ``state.json`` (what was made, every pid
  with its start time), each node's pool file, /etc upper layer, configs and logs.

Every command reads the state, so ``down`` also cleans up after a crash of the lab command.
Processes are stopped by pid only: the ones recorded, and those found inside the lab's own
namespaces. Traffic stays inside the lab: clients run in ``NAME-client``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from hafs import agentconf
from hafs.check import check
from hafs.cluster import Cluster, Node, load
from hafs.errors import HafsError
from hafs.lab.netns import (
    NETNS_DIR,
    Lab,
    LabError,
    Netns,
    Port,
    check_prefix,
    cleanup,
    list_namespaces,
)
from hafs.service import config as service_config
from hafs.service.daemon import STATUS_FILE
from hafs.service.transport import peer_key_options

LAB_ROOT = Path("/var/tmp/hafs-lab")
POOL_SIZE = "512M"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SERVICE_STOP_TIMEOUT = 60.0
ZFS_MOUNT_ROOT = "/run/zpool"  # pools mount inside the node's private /run

ANCHOR = r"""
set -e
umount -R -l /run/netns 2>/dev/null || true
mount -t tmpfs -o mode=755,size=64m "hafs-$1-run" /run
mkdir -p /run/lock /run/hafs /run/sshd
mount -t tmpfs -o mode=755,size=1m "hafs-$1-zfs" /var/lib/zfs
mount -t overlay "hafs-$1-etc" -o "lowerdir=/etc,upperdir=$2/etc-upper,workdir=$2/etc-work" /etc
hostname "$1"
# root's commands over ssh run in a plain sh: no login-shell init (pyenv, rc files) on nodes
usermod -s /bin/sh root >/dev/null 2>&1 || true
echo ready
exec sleep infinity
"""
# Stock ucarp stands in for FreeBSD's kernel CARP, which goes on advertising while devd runs
# `hafs event`. ucarp waits for its scripts and sends nothing meanwhile (its first advert as
# master comes after the up script), so the event runs in the background: waited for, a
# takeover's seconds let every other backup time out and take the VIP too. The address
# changes first, as in the kernel; the events serialise on the VIP's lock and look at the
# address they find, so their order does not matter.
UCARP_UP = (
    '#!/bin/sh\nip addr add "$2/32" dev "$1" label "$1:$3"\n'
    '{hafs} event "$3@$1" MASTER </dev/null &\n'
)
UCARP_DOWN = (
    '#!/bin/sh\nip addr del "$2/32" dev "$1" 2>/dev/null || true\n'
    '{hafs} event "$3@$1" BACKUP </dev/null &\n'
)
HAFS = (sys.executable, "-m", "hafs")  # the hafs of this checkout, inside every node
# The agent supervised as systemd runs it (hooks/hafs-agent.service): when it dies otherwise
# than by a graceful stop (exit 0: it bowed out and ran its own hooks), its cleanup removes
# its VIPs and steps its services down (ExecStopPost), and it starts again 2 s later with the
# restart config, which holds it demoted (Restart=always). SIGTERM/SIGINT go to the agent and
# end the supervision. The lab records the supervisor's pid as the node's "agent"; its kill
# (power loss) kills both, and no cleanup runs, as with a real power loss.
# Arguments: the config, the restart config, then the agent's argv.
AGENT_SUPERVISOR = r"""
trap 'stopping=1; [ -z "$pid" ] || kill -TERM "$pid"' TERM INT
config=$1 restart=$2
shift 2
while [ -z "$stopping" ]; do
    "$@" --config "$config" &
    pid=$!
    [ -z "$stopping" ] || kill -TERM "$pid"
    while :; do  # a trapped signal interrupts wait: wait again until the agent is gone
        wait "$pid" 2>/dev/null  # no untimestamped "Killed" in the log
        status=$?
        [ "$status" -ge 128 ] && kill -0 "$pid" 2>/dev/null || break
    done
    pid=
    [ "$status" -eq 0 ] || "$@" --config "$config" --cleanup
    [ -n "$stopping" ] || sleep 2
    config=$restart
done
"""
# The service daemon supervised as systemd runs it (hooks/hafs-service.service: Restart=always,
# RestartSec=1): killed or crashed, it runs again a second later. SIGTERM/SIGINT go to the
# daemon (it quiesces and sends the final incremental) and end the supervision.
SERVICE_SUPERVISOR = r"""
trap 'stopping=1; [ -z "$pid" ] || kill -TERM "$pid"' TERM INT
while [ -z "$stopping" ]; do
    "$@" &
    pid=$!
    [ -z "$stopping" ] || kill -TERM "$pid"
    while :; do  # a trapped signal interrupts wait: wait again until the daemon is gone
        wait "$pid" 2>/dev/null
        status=$?
        [ "$status" -ge 128 ] && kill -0 "$pid" 2>/dev/null || break
    done
    pid=
    [ -n "$stopping" ] || sleep 1
done
"""
SSHD_CONFIG = """# hafs lab: replication and fencing between nodes, on the node's fixed address only
ListenAddress {address}
HostKey /etc/hafs/ssh_host_ed25519_key
AuthorizedKeysFile /etc/hafs/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/hafs/sshd.pid
# a replication stream from a node that lost power must end within the master-down time:
# the receive holds the VIP's lock, and the takeover waits for it
ClientAliveInterval 1
ClientAliveCountMax 2
"""

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """A progress sink that shows nothing."""


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


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str]:
    """The arguments of ``pid``; empty if it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def triples(argv: Sequence[str]) -> set[tuple[str, str, str]]:
    """Every three consecutive arguments of ``argv``."""
    return set(zip(argv, argv[1:], argv[2:], strict=False))


def pids_in_netns(ns: str) -> list[int]:
    """Every process whose network namespace is ``ns`` (by inode, never by name)."""
    try:
        target = os.stat(os.path.join(NETNS_DIR, ns)).st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                    pids.append(int(entry))
    return pids


class ClusterLab:
    """One lab: its state on disk and the operations on it."""

    def __init__(self, name: str, root: Path = LAB_ROOT) -> None:
        check_prefix(name)  # first: the name is a directory under root
        self.name = name
        self.dir = root / name
        self.state_file = self.dir / "state.json"
        self.state: dict[str, Any] = {}
        self._cluster: Cluster | None = None
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())

    # --- state ----------------------------------------------------------------------------

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

    def _port(self, node: str) -> Port:
        ns = self.node_state(node)
        return Port(Netns(ns["ns"]), ns["ifname"], Netns(f"{self.name}-sw"), ns["peer"])

    # --- running things inside a node ------------------------------------------------------------

    def enter(self, node: str) -> list[str]:
        """The argv prefix that runs a command inside ``node`` (or the client namespace)."""
        if node == "client":
            return ["ip", "netns", "exec", self.state["client"]["ns"]]
        anchor = self.procs(node).get("anchor")
        if anchor is None or not anchor.alive:
            raise LabError(f"lab {self.name}: node {node} is down: hafs lab start {node}")
        return ["nsenter", f"--target={anchor.pid}", "--mount", "--net", "--uts", "--"]

    def run(self, node: str, argv: Sequence[str], check: bool = True) -> str:
        proc = subprocess.run(
            [*self.enter(node), *argv], capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise LabError(f"{node}: {' '.join(argv)}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def _daemon(self, node: str, key: str, argv: Sequence[str]) -> Proc:
        """Start ``argv`` inside ``node``, detached, logging to ``<node>/<key>.log``."""
        log = self.dir / node / f"{key}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [*self.enter(node), *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc.of(popen)
        self.node_state(node).setdefault("procs", {})[key] = {"pid": proc.pid, "start": proc.start}
        self._save()
        return proc

    # --- up ----------------------------------------------------------------------------------

    def up(self, inventory: str, foreign: str | None, progress: Progress = _quiet) -> float:
        """Build the lab; returns the seconds it took."""
        began = time.monotonic()
        if self.exists:
            raise LabError(f"lab {self.name!r} already exists: hafs lab down --name {self.name}")
        cluster = self._cluster = load(inventory)
        errors = [str(p) for p in check(cluster) if p.level == "error"]
        if errors:
            raise LabError(
                f"{inventory}: hafs check reports {len(errors)} error(s), first: {errors[0]}"
            )
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir.chmod(0o700)  # node keys, cluster.json and pools with NT hashes: root only
        self.state = {
            "name": self.name,
            "inventory": str(Path(inventory).resolve()),
            "foreign": foreign,
            "created": time.time(),
            "nodes": {},
        }
        self._save()
        try:
            lab = Lab(self.name, persistent=True)
            progress(f"switch {lab.switch.name} with bridge {lab.bridge}")
            for index, node in enumerate(cluster.nodes, start=1):
                self._make_node(lab, cluster, node, index, foreign)
                progress(
                    f"node {node.name}: namespace {self.name}-n{index}, {node.interface} "
                    f"{node.address}"
                )
            self._make_client(lab, cluster)
            progress(
                f"client namespace {self.state['client']['ns']} ({self.state['client']['address']})"
            )
            self._make_gateway(lab, cluster)
            if self.state["gateway"]:
                gateway = self.state["gateway"]
                progress(f"gateway namespace {gateway['ns']} ({', '.join(gateway['addresses'])})")
            for node in cluster.nodes:  # every node ready first, so the first election is fair
                self._boot(node.name, progress, carp=False)
            for node in cluster.nodes:  # all agents at once: the homes win the first election
                self._start_daemons(node.name)
            for node in cluster.nodes:
                self._wait_for_agent(node.name)
            self.wait_for_vips(cluster, progress)
        except BaseException:
            progress("failed: removing what was made")
            self.down()
            raise
        return time.monotonic() - began

    def _make_node(
        self, lab: Lab, cluster: Cluster, node: Node, index: int, foreign: str | None
    ) -> None:
        ns = lab.add_node(f"n{index}")
        address = node.address or IPv4Interface(f"{cluster.source_address(node)}/32")
        port = lab.connect(ns, node.interface, address.with_prefixlen)
        node_dir = self.dir / node.name
        for sub in ("etc-upper", "etc-work"):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(["truncate", "-s", POOL_SIZE, str(node_dir / "pool.img")], check=True)
        (node_dir / "pool.img").chmod(0o600)
        impl = "ucarp" if foreign == "ucarp" and node.os == "freebsd" else "hafs"
        self._write_etc(cluster, node, address, impl)
        self.state["nodes"][node.name] = {
            "index": index,
            "ns": ns.name,
            "peer": port.peer,
            "ifname": node.interface,
            "address": str(address.ip),
            "impl": impl,
            "pool_created": False,
            "procs": {},
        }
        self._save()

    def _write_etc(self, cluster: Cluster, node: Node, address: IPv4Interface, impl: str) -> None:
        """The node's /etc/hafs (in its /etc overlay): cluster.json, ssh keys, sshd_config."""
        etc = self.dir / node.name / "etc-upper" / "hafs"
        etc.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.dir / "replication_key"
        if not key.exists():  # one key for the whole lab; a real cluster has one per node
            _keygen(key, "hafs-lab-replication")
        shutil.copy(key, etc / "replication_key")
        (etc / "replication_key").chmod(0o600)
        public = (self.dir / "replication_key.pub").read_text().strip()
        peers = [(p.name, cluster.source_address(p)) for p in cluster.nodes if p.name != node.name]
        (etc / "authorized_keys").write_text(
            "".join(
                f"{peer_key_options(shlex.join(HAFS), name, address)} {public}\n"
                for name, address in peers
                if address is not None
            )
        )
        _keygen(etc / "ssh_host_ed25519_key", f"{node.name}-host")
        (etc / "sshd_config").write_text(SSHD_CONFIG.format(address=address.ip))
        socket = agentconf.DEFAULT_CONTROL_SOCKET if impl == "hafs" else None
        config = service_config.render(cluster, node, hafs_command=HAFS, agent_socket=socket)
        (etc / "cluster.json").write_text(config)
        (etc / "cluster.json").chmod(0o600)

    def _make_client(self, lab: Lab, cluster: Cluster) -> None:
        subnet = cluster.subnet(cluster.nodes[0])
        if subnet is None:
            raise LabError("the cluster has no subnet for the client: give nodes an 'address'")
        taken = {n.address.ip for n in cluster.nodes if n.address} | {
            v.address for v in cluster.vips
        }
        taken |= {n.gateway for n in cluster.nodes if n.gateway}
        address = next(a for a in reversed(list(subnet.hosts())) if a not in taken)
        ns = lab.add_node("client")
        lab.connect(ns, "eth0", f"{address}/{subnet.prefixlen}")
        self.state["client"] = {"ns": ns.name, "address": str(address)}
        self._save()

    def _make_gateway(self, lab: Lab, cluster: Cluster) -> None:
        """One namespace owning every node's gateway (within the node's subnet) on the bridge.

        It only answers (ping, ARP): no forwarding, no route beyond the subnet, so a node can
        use it as a quorum witness and still reach nothing outside the lab.
        """
        addresses: dict[str, IPv4Interface] = {}
        for node in cluster.nodes:
            subnet = cluster.subnet(node)
            if node.gateway is None or subnet is None or node.gateway not in subnet:
                continue
            if node.gateway in {n.address.ip for n in cluster.nodes if n.address} | {
                v.address for v in cluster.vips
            }:
                raise LabError(
                    f"{node.name}: gateway {node.gateway} is also a node's or a VIP's address: "
                    "give the nodes a gateway address of its own"
                )
            addresses[str(node.gateway)] = IPv4Interface(f"{node.gateway}/{subnet.prefixlen}")
        self.state["gateway"] = None
        if addresses:
            ns = lab.add_node("gw")
            first, *rest = addresses.values()
            lab.connect(ns, "eth0", first.with_prefixlen)
            for address in rest:
                ns.add_address("eth0", address.with_prefixlen)
            self.state["gateway"] = {"ns": ns.name, "addresses": list(addresses)}
        self._save()

    def _boot(self, node: str, progress: Progress, carp: bool = True) -> None:
        """Power a node on: anchor, zfs-fuse with its pool, sshd, then its CARP and service
        daemons (unless ``carp`` is False: up starts those on every node at once)."""
        began = time.monotonic()
        state = self.node_state(node)
        state["procs"] = {}
        node_dir = self.dir / node
        netns = os.path.join(NETNS_DIR, state["ns"])
        anchor = subprocess.Popen(
            [
                "nsenter",
                f"--net={netns}",
                "--",
                "unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                ANCHOR,
                "anchor",
                node,
                str(node_dir),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert anchor.stdout is not None
        if anchor.stdout.readline().strip() != b"ready":
            anchor.kill()
            _, stderr = anchor.communicate(timeout=5)
            raise LabError(f"{node}: namespaces could not be set up: {stderr.decode().strip()}")
        anchor.stdout.close()
        if anchor.stderr is not None:
            anchor.stderr.close()
        proc = Proc.of(anchor)
        state["procs"]["anchor"] = {"pid": proc.pid, "start": proc.start}
        self._save()
        self._daemon(node, "zfs-fuse", ["zfs-fuse", "--no-daemon", "--no-kstat-mount"])
        self._wait(lambda: self._ok(node, ["zpool", "list"]), f"{node}: zfs-fuse to answer")
        pool = self.cluster().zfs_pool
        if state["pool_created"]:
            # -f: after a power loss the pool was never exported; only this node uses the file
            self._import(node, pool, node_dir, progress)
        else:
            self.run(
                node,
                [
                    "zpool",
                    "create",
                    "-m",
                    f"{ZFS_MOUNT_ROOT}/{pool}",
                    pool,
                    str(node_dir / "pool.img"),
                ],
            )
            self.run(node, ["zfs", "create", f"{pool}/hafs"])
            state["pool_created"] = True
            self._save()
        self._daemon(node, "sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", "/etc/hafs/sshd_config"])
        if carp:
            self._start_daemons(node)
            self._wait_for_agent(node)
        progress(
            f"node {node}: up ({state['impl']}, pool {pool}) in {time.monotonic() - began:.1f}s"
        )

    def _import(self, node: str, pool: str, node_dir: Path, progress: Progress) -> None:
        """Import the node's pool. A dataset that does not mount (say, files lie in its
        directory) does not stop the boot, as on a real host: the service daemon mounts a
        VIP's dataset before it serves it (:mod:`hafs.service.mounts`)."""
        imported = subprocess.run(
            [*self.enter(node), "zpool", "import", "-f", "-d", str(node_dir), pool],
            capture_output=True,
            text=True,
            check=False,
        )
        if imported.returncode == 0:
            return
        if not self._ok(node, ["zpool", "list", pool]):
            raise LabError(f"{node}: zpool import {pool}: {imported.stderr.strip()}")
        progress(f"node {node}: pool {pool} imported, but: {imported.stderr.strip()}")

    def _start_daemons(self, node: str) -> None:
        """The CARP daemon, then the service daemon. A node that was up before starts demoted
        until its service daemon has re-synced its replicas (failback loses nothing)."""
        state = self.node_state(node)
        self._start_carp(node, start_demoted=bool(state.get("booted")))
        self._daemon(node, "service", supervised_service())
        state["booted"] = True
        self._save()

    def _start_carp(self, node: str, start_demoted: bool) -> None:
        cluster = self.cluster()
        model = cluster.node(node)
        state = self.node_state(node)
        if state["impl"] == "ucarp":
            self._start_ucarp(cluster, model)
            return
        configs = []
        for name, demoted in (("agent.toml", start_demoted), ("agent-restart.toml", True)):
            config = self.dir / node / name
            text = agentconf.render(
                cluster, model, event_command=(*HAFS, "event"), start_demoted=demoted
            )
            config.write_text(text)
            os.chmod(config, 0o600)
            configs.append(config)
        self._daemon(node, "agent", supervised_agent(*configs))

    def _wait_for_agent(self, node: str) -> None:
        if self.node_state(node)["impl"] == "hafs":
            self._wait(
                lambda: self._ok(node, ["test", "-S", agentconf.DEFAULT_CONTROL_SOCKET]),
                f"{node}: hafs agent to start",
            )

    def _start_ucarp(self, cluster: Cluster, node: Node) -> None:
        node_dir = self.dir / node.name
        passfile = node_dir / "carp.pass"
        passfile.write_text(cluster.carp_pass + "\n")
        os.chmod(passfile, 0o600)
        scripts = {}
        for kind, text in (("up", UCARP_UP), ("down", UCARP_DOWN)):
            scripts[kind] = node_dir / f"ucarp-{kind}.sh"
            scripts[kind].write_text(text.format(hafs=shlex.join(HAFS)))
            os.chmod(scripts[kind], 0o700)
        source = cluster.source_address(node)
        for vip in cluster.vips_of(node.name):
            argv = [
                "ucarp",
                "-i",
                node.interface,
                "-s",
                str(source),
                "-v",
                str(vip.vhid),
                "-o",
                str(passfile),
                "-a",
                str(vip.address),
                "-b",
                str(vip.advbase),
                "-k",
                str(vip.advskew[node.name]),
                "-u",
                str(scripts["up"]),
                "-d",
                str(scripts["down"]),
                "-x",
                str(vip.vhid),
                "-z",
            ]
            if node.preempt:
                argv.append("-P")
            self._daemon(node.name, f"ucarp-{vip.vhid}", argv)

    def _ok(self, node: str, argv: Sequence[str]) -> bool:
        return (
            subprocess.run([*self.enter(node), *argv], capture_output=True, check=False).returncode
            == 0
        )

    @staticmethod
    def _wait(condition: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.05)

    def serving(self, node: str, vip: str) -> bool:
        """Does an smbd listen on ``vip``:445 inside ``node``?"""
        return f" {vip}:445 " in self.run(node, ["ss", "-Hltn"], check=False)

    def wait_for_vips(self, cluster: Cluster, progress: Progress, timeout: float = 30.0) -> None:
        """Wait until every VIP has stayed on its home (with failback; else on one node) for
        1.5 s and its holder serves its shares: the lab is then ready for clients."""
        homes = {str(v.address): [v.home] for v in cluster.vips}
        since: list[float] = []

        def settled() -> bool:
            holders = self.vip_holders()
            if cluster.failback:
                placed = holders == homes
            else:
                placed = all(len(h) == 1 for h in holders.values())
            if not placed:
                since.clear()
                return False
            since[:] = since or [time.monotonic()]
            if time.monotonic() - since[0] < 1.5:
                return False
            return all(
                self.serving(holders[str(v.address)][0], str(v.address))
                for v in cluster.vips
                if v.shares
            )

        self._wait(settled, "every VIP on its node, serving its shares", timeout)
        for vip, holders in self.vip_holders().items():
            progress(f"{vip} on {holders[0]}, serving")

    # --- observing ---------------------------------------------------------------------------

    def vip_holders(self) -> dict[str, list[str]]:
        """For every VIP of the inventory, the nodes that carry it on their interface now."""
        cluster = self.cluster()
        held: dict[str, list[str]] = {str(v.address): [] for v in cluster.vips}
        for node, state in self.state["nodes"].items():
            try:
                out = Netns(state["ns"]).ip("-4", "-o", "addr", "show", "dev", state["ifname"])
            except LabError:
                continue
            for vip, holders in held.items():
                if f" {vip}/32 " in out:
                    holders.append(node)
        return held

    def link(self, node: str) -> str:
        """The node's cable: ``up``, ``cut`` (no carrier) or ``isolated`` (carrier, no traffic)."""
        return self._port(node).state()

    def agent(self, node: str) -> Proc | None:
        """The node's running ``hafs agent`` process (not its supervisor, nor its cleanup);
        None if none runs now."""
        return self._supervised(node, "agent", ("hafs", "agent", "--config"))

    def service(self, node: str) -> Proc | None:
        """The node's running ``hafs service run`` process (not its supervisor)."""
        return self._supervised(node, "service", ("hafs", "service", "run"))

    def _supervised(self, node: str, key: str, marks: tuple[str, str, str]) -> Proc | None:
        """The process the lab recorded as ``key``, or its child when it is a supervisor,
        whose argv has the three words ``marks`` in a row (a supervisor's does not)."""
        recorded = self.procs(node).get(key)
        if recorded is None or not recorded.alive:
            return None
        for pid in pids_in_netns(self.node_state(node)["ns"]):
            if recorded.pid not in (pid, parent_pid(pid)):
                continue
            argv = cmdline(pid)
            if argv[:1] != ["sh"] and marks in triples(argv) and "--cleanup" not in argv:
                start = start_time(pid)
                if start is not None:
                    return Proc(pid, start)
        return None

    def status(self) -> dict[str, Any]:
        cluster = self.cluster()
        holders = self.vip_holders()
        nodes = []
        for node in cluster.nodes:
            state = self.node_state(node.name)
            procs = self.procs(node.name)
            nodes.append(
                {
                    "name": node.name,
                    "os": node.os,
                    "carp": state["impl"],
                    "namespace": state["ns"],
                    "interface": state["ifname"],
                    "address": state["address"],
                    "link": self.link(node.name),
                    "daemons": {k: p.alive for k, p in procs.items()},
                    "agent_pid": agent.pid if (agent := self.agent(node.name)) else None,
                    "vips": sorted(v for v, h in holders.items() if node.name in h),
                    "diverged": self.diverged(node.name) if self._up(procs) else [],
                }
            )
        vips = [
            {
                "vip": str(v.address),
                "vhid": v.vhid,
                "name": v.name,
                "home": v.home,
                "holders": holders[str(v.address)],
            }
            for v in cluster.vips
        ]
        return {
            "name": self.name,
            "inventory": self.state["inventory"],
            "client": self.state["client"],
            "gateway": self.state.get("gateway"),
            "nodes": nodes,
            "vips": vips,
        }

    @staticmethod
    def _up(procs: dict[str, Proc]) -> bool:
        anchor = procs.get("anchor")
        return anchor is not None and anchor.alive

    def diverged(self, node: str) -> list[str]:
        """The kept-aside copies on ``node`` (up), as its service daemon last reported them."""
        try:
            report = json.loads(self.run(node, ["cat", str(STATUS_FILE)], check=False) or "{}")
        except (ValueError, LabError):
            return []
        return [copy["name"] for copy in report.get("diverged", [])]

    # --- failures and repairs --------------------------------------------------------------------

    def kill(self, node: str) -> None:
        """Power loss: the cable goes, every process of the node dies at once, its RAM state too."""
        state = self.node_state(node)
        self._port(node).cut()
        self._kill_netns(state["ns"])
        self._drop_vips(node)

    def stop(self, node: str) -> None:
        """Graceful shutdown: the CARP daemon bows out and its hooks run, the pool is exported."""
        state = self.node_state(node)
        procs = self.procs(node)
        service = procs.get("service")
        if service is not None:  # first: quiesce and send the final incremental
            service.signal(signal.SIGTERM)
            self._wait_gone([service], SERVICE_STOP_TIMEOUT)
        carp = [p for key, p in procs.items() if key == "agent" or key.startswith("ucarp-")]
        for proc in carp:
            proc.signal(signal.SIGTERM)
        self._wait_gone(carp, STOP_TIMEOUT)
        if procs.get("anchor") and procs["anchor"].alive:
            self.run(node, ["zpool", "export", self.cluster().zfs_pool], check=False)
        zfs = procs.get("zfs-fuse")
        if zfs is not None:
            zfs.signal(signal.SIGTERM)
            self._wait_gone([zfs], STOP_TIMEOUT)
        self._kill_netns(state["ns"])
        self._drop_vips(node)

    def start(self, node: str, progress: Progress = _quiet) -> None:
        if any(p.alive for p in self.procs(node).values()):
            raise LabError(f"node {node} is running: hafs lab stop {node} (or kill) first")
        self._port(node).plug()
        try:
            self._boot(node, progress)
        except BaseException:
            self._kill_netns(self.node_state(node)["ns"])  # no half-booted node
            raise

    def partition(self, node: str) -> None:
        """Cut the node's cable: it loses carrier, and its daemons see the link go down."""
        self._port(node).cut()

    def heal(self, node: str) -> None:
        """Plug the node's cable back in (this also ends an isolation)."""
        self._port(node).plug()

    def isolate(self, node: str) -> None:
        """The switch drops everything to and from the node; the node keeps carrier."""
        if self.link(node) == "cut":
            raise LabError(f"node {node}: its cable is cut: hafs lab heal {node} first")
        self._port(node).isolate()

    def rejoin(self, node: str) -> None:
        """The switch forwards the node's traffic again."""
        if self.link(node) == "cut":
            raise LabError(f"node {node}: its cable is cut: hafs lab heal {node} instead")
        self._port(node).rejoin()

    def _drop_vips(self, node: str) -> None:
        state = self.node_state(node)
        ns = Netns(state["ns"])
        for vip in self.cluster().vips:
            with contextlib.suppress(LabError):
                ns.ip("addr", "del", f"{vip.address}/32", "dev", state["ifname"])

    @staticmethod
    def _wait_gone(procs: Sequence[Proc], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(p.alive for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        for proc in procs:
            proc.signal(signal.SIGKILL)

    @staticmethod
    def _kill_netns(ns: str) -> None:
        """SIGKILL every process in the namespace (the node's daemons, hooks, smbd, anchor)."""
        for _ in range(50):
            pids = pids_in_netns(ns)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        raise LabError(f"processes in {ns} survive SIGKILL: {pids_in_netns(ns)}")

    # --- down ----------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything of the lab: processes, namespaces (with their mounts), files."""
        for node in self.state.get("nodes", {}):
            for proc in self.procs(node).values():
                proc.signal(signal.SIGKILL)
        namespaces = list_namespaces(self.name)
        for ns in namespaces:
            self._kill_netns(ns)
        removed = cleanup(self.name)
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.state = {}
        return removed


def supervised_agent(config: Path, restart_config: Path) -> list[str]:
    """The argv of ``hafs agent --config config`` under :data:`AGENT_SUPERVISOR`."""
    return [
        "sh", "-c", AGENT_SUPERVISOR, "hafs-agent-supervisor",
        str(config), str(restart_config), *HAFS, "agent",
    ]  # fmt: skip


def supervised_service() -> list[str]:
    """The argv of ``hafs service run`` under :data:`SERVICE_SUPERVISOR`."""
    return ["sh", "-c", SERVICE_SUPERVISOR, "hafs-service-supervisor", *HAFS, "service", "run"]


def _keygen(path: Path, comment: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
