"""What a lab shows (``hafs lab status``): who holds which VIP, what runs on each node.

Read from outside, never from what the nodes say of themselves alone: a VIP's holders are the
nodes that carry its address on their interface now (``ip addr`` in each node's namespace),
a node serves a VIP when an smbd listens on the VIP's port 445 inside it, a daemon runs when
its recorded pid still has its start time, and a cable's state is read on the switch's side.
Only the kept-aside copies come from the node's service daemon (its replication report).
"""

from __future__ import annotations

import json
from typing import Any

from hafs.lab.netns import LabError, Netns
from hafs.lab.state import Proc
from hafs.lab.supervise import NodeProcesses
from hafs.service.daemon import STATUS_FILE


class LabStatus(NodeProcesses):
    """Observing a lab: nothing here changes it."""

    def serving(self, node: str, vip: str) -> bool:
        """Does an smbd listen on ``vip``:445 inside ``node``?"""
        return f" {vip}:445 " in self.run(node, ["ss", "-Hltn"], check=False)

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
