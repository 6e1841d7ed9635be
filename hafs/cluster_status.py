"""`hafs cluster status`: the whole cluster, from any node, in one command.

Each node says what it knows of itself (:func:`node_report`, the peer operation ``hafs
service report``, asked over the replication key like ``held``): the VIPs whose address it
holds and those it serves, its demotion holds, and its service daemon's replication report
(lag per VIP and peer, kept-aside copies, pool space). The node running the command asks
every peer at once and judges the whole (:func:`problems`): a VIP held by nobody or by two
nodes (split brain), a node that does not answer, a hold, a service daemon that reports
nothing or a stale report, a replica that is failing or behind, a kept-aside copy. Exit 0 when
there is none, 1 otherwise, so a monitor can run it. ``--json`` gives every node's report and
the problems.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hafs.carp import control
from hafs.service.config import ServiceConfig
from hafs.service.node import NodeServices
from hafs.table import table

ASK_TIMEOUT = 10.0  # a peer's ssh login and Python start, under load
LAG_ROUNDS = 3  # a replica more replication intervals behind than this is a problem


def node_report(services: NodeServices) -> dict[str, Any]:
    """What this node says of itself (no ssh): held and served VIPs, holds, the service
    daemon's replication report and how old it is."""
    from hafs.service import demotion, move
    from hafs.service.daemon import STATUS_FILE

    config = services.config
    seen = services.look()
    held = [v.name for v in config.vips if v.name in seen.addressed and services.holds(v)]
    agent: bool | None = None  # hafs agent: answers or not; None: the kernel's CARP (FreeBSD)
    causes: dict[str, str] = {}
    if config.agent_socket is None:
        holds = demotion.SysctlDemotion().holds()
    else:
        try:
            said = control.request(config.agent_socket, {"op": "status"})["demotion"]
            holds, causes, agent = dict(said["holds"]), dict(said["causes"]), True
        except (control.ControlError, KeyError, TypeError):
            holds, agent = {}, False
    report: dict[str, Any] = {
        "node": config.node,
        "held": held,
        "serving": sorted(seen.smbd),
        "agent": agent,
        "holds": holds,
        "causes": causes,
        "moved": move.moved(services),
        "service": None,
        "at": time.time(),
    }
    with contextlib.suppress(OSError, ValueError):
        report["service"] = json.loads(STATUS_FILE.read_text())
    return report


def gather(services: NodeServices) -> dict[str, dict[str, Any]]:
    """Every node's report, by name: this one's read here, the peers' asked at once. A peer
    that does not answer gets ``{"error": why}``."""
    peers = list(services.config.peers)
    with ThreadPoolExecutor(max(1, len(peers))) as pool:
        asked = {p: pool.submit(services.remote, p, ["report"], ASK_TIMEOUT) for p in peers}
        reports = {services.config.node: node_report(services)}
    for peer, future in asked.items():
        answer = future.result()
        try:
            found = json.loads(answer.stdout) if answer.returncode == 0 else None
        except ValueError:
            found = None
        if not isinstance(found, dict):
            why = answer.stderr.strip().splitlines()[-1:] or [f"exit status {answer.returncode}"]
            found = {"error": why[0]}
        reports[peer] = found
    return reports


def holders(config: ServiceConfig, reports: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """VIP name -> the nodes that say they hold it."""
    return {
        vip.name: [n for n, r in sorted(reports.items()) if vip.name in r.get("held", ())]
        for vip in config.vips
    }


def moves(config: ServiceConfig, reports: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """VIP name -> where its carriers that answered say it is moved to (``hafs move``): one
    node, or none (at its configured ranks); two or more: the carriers disagree."""
    found = {}
    for vip in config.vips:
        said = {
            r.get("moved", {}).get(vip.name, vip.home)
            for n, r in reports.items()
            if n in vip.carriers and "error" not in r
        }
        found[vip.name] = sorted(said) if len(said) > 1 else sorted(said - {vip.home})
    return found


def problems(config: ServiceConfig, reports: dict[str, dict[str, Any]]) -> list[str]:
    """Everything an operator should look at, one line each; none: healthy."""
    found = []
    held = holders(config, reports)
    for vip in config.vips:
        if not held[vip.name]:
            found.append(f"{vip.name}: held by no node that answered")
        elif len(held[vip.name]) > 1:
            found.append(f"{vip.name}: split brain: held by {', '.join(held[vip.name])}")
    for name, targets in moves(config, reports).items():
        if len(targets) > 1:
            found.append(f"{name}: its carriers disagree where it is moved to "
                         f"({', '.join(targets)}): `hafs move {name} NODE` again")  # fmt: skip
    stale = LAG_ROUNDS * config.replication_interval
    for node, report in sorted(reports.items()):
        if "error" in report:
            found.append(f"{node}: no answer: {report['error']}")
            continue
        if report.get("agent") is False:
            found.append(f"{node}: its hafs agent does not answer")
        for name, value in sorted((report.get("holds") or {}).items()):
            why = report.get("causes", {}).get(name)
            found.append(
                f"{node}: demoted by the {name!r} hold (+{value})" + (f": {why}" if why else "")
            )
        service = report.get("service")
        if service is None:
            found.append(f"{node}: no replication report: is `hafs service run` running?")
            continue
        age = report["at"] - service["at"]
        if age > stale:
            found.append(f"{node}: its replication report is {age:.0f}s old")
        for copy in service.get("diverged", []):
            found.append(f"{node}: kept-aside copy {copy['name']} of {copy['vip']}")
        for vip_name, peers in sorted(service.get("vips", {}).items()):
            if vip_name not in report.get("held", ()):
                continue  # an old report of a VIP it no longer holds
            for peer, item in sorted(peers.items()):
                if not item.get("ok"):
                    found.append(f"{vip_name}: replication {node} -> {peer} failing: "
                                 f"{item.get('error', '?')}")  # fmt: skip
                elif report["at"] - item["as_of"] > stale:
                    found.append(f"{vip_name}: {peer} is {report['at'] - item['as_of']:.0f}s "
                                 f"behind {node}")  # fmt: skip
    return found


def format_status(config: ServiceConfig, reports: dict[str, dict[str, Any]]) -> str:
    held = holders(config, reports)
    moved = moves(config, reports)
    vip_rows = []
    for vip in config.vips:
        holder = held[vip.name][0] if len(held[vip.name]) == 1 else None
        peers = reports.get(holder or "", {}).get("service") or {}
        lags = peers.get("vips", {}).get(vip.name, {})
        behind = [
            f"{peer} {reports[holder or '']['at'] - item['as_of']:.0f}s" if item.get("ok")
            else f"{peer} FAILING"
            for peer, item in sorted(lags.items())
        ]  # fmt: skip
        vip_rows.append([
            vip.name, str(vip.address), vip.home, ", ".join(moved[vip.name]) or "-",
            ", ".join(held[vip.name]) or "-", ", ".join(behind) or "-",
        ])  # fmt: skip
    node_rows = []
    for node, report in sorted(reports.items()):
        if "error" in report:
            node_rows.append([node, "NO ANSWER", "-", "-", "-"])
            continue
        holds = report.get("holds") or {}
        service = report.get("service")
        node_rows.append([
            node, ", ".join(report["held"]) or "-",
            ", ".join(f"{k} +{v}" for k, v in sorted(holds.items())) or "-",
            "running" if service else "NO REPORT",
            str(len(service.get("diverged", []))) if service else "-",
        ])  # fmt: skip
    lines = [
        table(["VIP", "ADDRESS", "HOME", "MOVED TO", "HELD BY", "BACKUPS BEHIND"], vip_rows),
        *(
            f"{vip.name}: moved to {moved[vip.name][0]} (`hafs move`): it stays there; "
            f"`hafs move {vip.name} {vip.home}` on its holder brings it home"
            for vip in config.vips
            if len(moved[vip.name]) == 1
        ),
        "",
        table(["NODE", "HOLDS VIPS", "DEMOTION HOLDS", "SERVICE", "KEPT ASIDE"], node_rows),
    ]
    found = problems(config, reports)
    lines += ["", *found] if found else ["", "healthy"]
    return "\n".join(lines)


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from hafs.service import config as service_config

    services = NodeServices(service_config.load(args.config))
    reports = gather(services)
    found = problems(services.config, reports)
    if args.json:
        print(json.dumps({"nodes": reports, "problems": found}, indent=2))
    else:
        print(format_status(services.config, reports))
    return 1 if found else 0


def register(sub: Any) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="the whole cluster, asked from this node",
        description="Commands that look at every node of the cluster from this one.",
    )
    csub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND")
    csub.required = True
    p = csub.add_parser(
        "status",
        help="who holds each VIP, each node's holds and service, replication lag (exit 1: "
        "something to look at)",
        description="Ask every node (over the replication key) what it holds and how its "
        "replication goes; exit 0 when healthy, 1 when not.",
    )
    p.add_argument("--config", help="the node's cluster.json (default: the deployed one)")
    p.add_argument("--json", action="store_true", help="print every node's report as JSON")
    p.set_defaults(func=cmd_cluster_status)
