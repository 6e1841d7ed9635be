"""`hafs lab`: the cluster of an inventory as light containers on one Linux machine.

A lab named NAME is made of:

- network namespaces ``NAME-sw`` (holding the bridge ``NAME-br``), ``NAME-n<i>`` for node i
  of the inventory, ``NAME-client`` and ``NAME-gw``, which owns the nodes' ``gateway``
  addresses and answers ping (the quorum witness a node asks when it hears no peer) but
  routes nowhere; no default route anywhere, nothing in the root namespace. Each node's
  interface carries the inventory's name (``em0``, ``ens36``) and fixed address.
- per node an *anchor* process, the node's "hardware" (mount and UTS namespaces with the
  node's hostname, its own /run and /etc), into which everything of the node is entered: its
  zfs-fuse daemon (pool on a sparse file), sshd, its CARP daemon (``hafs agent``, or stock
  ucarp or keepalived for FreeBSD nodes with ``--foreign``) and its service daemon.
- a work directory ``/var/tmp/hafs-lab/NAME`` with ``state.json`` (what was made, every pid
  with its start time), each node's pool file, /etc upper layer, configs and logs.

Every command reads the state, so ``down`` also cleans up after a crash of the lab command.
Processes are stopped by pid only: the ones recorded, and those found inside the lab's own
namespaces. Traffic stays inside the lab: clients run in ``NAME-client``.

:class:`ClusterLab` is every operation on a lab. Its parts, one module each:

- :mod:`hafs.lab.state`: the lab directory and ``state.json`` (:class:`LabState`);
- :mod:`hafs.lab.supervise`: commands and daemons inside a node, started, found and stopped
  by pid (:class:`NodeProcesses`, on the state);
- :mod:`hafs.lab.boot`: a node made and powered on (:class:`NodeBoot`);
- :mod:`hafs.lab.status`: what the lab shows (:class:`LabStatus`);
- this module: the lab built (``up``) and removed (``down``), its nodes broken and repaired.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from ipaddress import IPv4Interface
from pathlib import Path

from hafs.check import check
from hafs.cluster import Cluster, load
from hafs.errors import HafsError
from hafs.lab.boot import NodeBoot, Progress, check_programs
from hafs.lab.netns import Lab, LabError, Netns, cleanup, list_namespaces
from hafs.lab.status import LabStatus
from hafs.lab.supervise import HAFS


def _quiet(message: str) -> None:
    """A progress sink that shows nothing."""


class ClusterLab(NodeBoot, LabStatus):
    """One lab: every operation on it, over its state on disk (the parts: see the module)."""

    # --- up ----------------------------------------------------------------------------------

    def up(self, inventory: str, foreign: str | None, progress: Progress = _quiet) -> float:
        """Build the lab; returns the seconds it took."""
        began = time.monotonic()
        if self.exists:
            raise LabError(f"lab {self.name!r} already exists: hafs lab down --name {self.name}")
        check_programs(foreign)
        cluster = self._cluster = load(inventory)
        if foreign == "ucarp" and cluster.protocol == "vrrp3":  # usage errors: exit 2
            raise HafsError(f"--foreign ucarp: ucarp speaks CARP only; {inventory} says vrrp3")
        if foreign == "keepalived" and cluster.protocol != "vrrp3":
            raise HafsError(
                f'--foreign keepalived: keepalived speaks VRRP only; set protocol = "vrrp3" '
                f"in the group_data beside {inventory}"
            )
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

    # --- failures and repairs --------------------------------------------------------------------

    def kill(self, node: str) -> None:
        """Power loss: the cable goes, every process of the node dies at once, its RAM state too."""
        state = self.node_state(node)
        self._port(node).cut()
        self._kill_netns(state["ns"])
        self._drop_vips(node)

    def stop(self, node: str) -> None:
        """Graceful shutdown: the CARP daemon bows out and its hooks run, the pool is exported."""
        self._stop_daemons(node)
        self._kill_netns(self.node_state(node)["ns"])
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

    def reload(self, node: str) -> str:
        """What a deploy does to a changed node: the service daemon and the agent re-execute
        themselves in place (SIGHUP; ``hafs agent --reload``), quiescing nothing and keeping
        the VIPs; the agent's report, or LabError."""
        if self.node_state(node)["impl"] != "hafs":
            raise LabError(f"node {node} runs stock ucarp: it has no hafs agent to reload")
        service = self.service(node)
        if service is not None:
            service.signal(signal.SIGHUP)
        config = self.dir / node / "agent.toml"
        argv = [*HAFS, "agent", "--config", str(config), "--reload"]
        proc = subprocess.run(
            [*self.enter(node), *argv], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise LabError(f"{node}: agent reload: {(proc.stdout + proc.stderr).strip()}")
        return proc.stdout

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
