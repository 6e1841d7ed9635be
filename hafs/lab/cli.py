"""`hafs lab ...`: build, inspect, break and repair the namespace cluster."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hafs.commands import add_inventory_option
from hafs.errors import HafsError
from hafs.lab.cluster import ClusterLab
from hafs.table import table

DEFAULT_NAME = "hafs"


def progress(message: str) -> None:
    print(f"hafs lab: {message}", file=sys.stderr, flush=True)


def _lab(args: argparse.Namespace, must_exist: bool = True) -> ClusterLab:
    lab = ClusterLab(args.name)  # refuses a bad --name before anything else
    if os.geteuid() != 0:
        raise HafsError("hafs lab needs root (network and mount namespaces)")
    if must_exist and not lab.state:
        raise HafsError(f"no lab named {args.name!r}: hafs lab up --name {args.name}")
    return lab


def format_status(status: dict[str, Any]) -> str:
    header = ("NODE", "OS", "CARP", "ADDRESS", "LINK", "DAEMONS", "VIPS")
    rows = []
    for n in status["nodes"]:
        alive = [k for k, ok in n["daemons"].items() if ok and k != "anchor"]
        daemons = ",".join(alive) if n["daemons"].get("anchor") else "powered off"
        rows.append(
            (
                n["name"],
                n["os"],
                n["carp"],
                f"{n['interface']} {n['address']}",
                n["link"],
                daemons or "-",
                " ".join(n["vips"]) or "-",
            )
        )
    head = f"lab {status['name']} ({status['inventory']}); client {status['client']['address']}"
    if status.get("gateway"):
        head += f"; gateway {', '.join(status['gateway']['addresses'])}"
    lines = [head]
    lines.append(table(header, rows))
    for v in status["vips"]:
        holders = v["holders"]
        where = ", ".join(holders) if holders else "NOBODY"
        note = "" if holders == [v["home"]] else f"  (home {v['home']})"
        if len(holders) > 1:
            note += "  WARNING: more than one holder"
        lines.append(f"vhid {v['vhid']} {v['vip']} ({v['name']}): {where}{note}")
    for n in status["nodes"]:
        for copy in n.get("diverged", []):
            lines.append(
                f"KEPT ASIDE on {n['name']}: {copy} (diverged data found only there; "
                f"`hafs service diverged show {copy}` on that node)"
            )
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    lab = _lab(args, must_exist=False)
    took = lab.up(args.inventory, args.foreign, progress)
    progress(f"up in {took:.1f}s")
    print(format_status(lab.status()))
    print(
        f"\nnext: hafs lab status --name {args.name}; hafs lab kill --name {args.name} NODE; "
        f"hafs lab down --name {args.name}"
    )
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = _lab(args).status()
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not command:
        raise HafsError("exec: give a command after --, e.g. hafs lab exec client -- ip addr")
    # `hafs` in the node is this one, also from a venv that sudo's PATH does not name
    here = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([here, os.environ.get("PATH", "")])}
    return subprocess.run([*_lab(args).enter(args.node), *command], check=False, env=env).returncode


def _node_action(action: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        lab = _lab(args)
        began = time.monotonic()
        if action == "start":
            lab.start(args.node, progress)
        elif action == "reload":
            print(lab.reload(args.node), end="")
        else:
            getattr(lab, action)(args.node)
        progress(f"{action} {args.node}: done in {time.monotonic() - began:.1f}s")
        return 0

    return run


def cmd_down(args: argparse.Namespace) -> int:
    lab = _lab(args, must_exist=False)
    if not lab.exists:
        progress(f"no lab named {args.name!r}: nothing to remove")
        return 0
    began = time.monotonic()
    removed = lab.down()
    progress(f"removed {len(removed)} namespace(s) in {time.monotonic() - began:.1f}s")
    return 0


NODE_ACTIONS = {
    "kill": "power loss: cut the node's cable and SIGKILL everything on it",
    "stop": "graceful shutdown: the CARP daemon bows out, the pool is exported",
    "start": "power the node on again (plugs its cable back in)",
    "partition": "cut the node's cable, killing nothing (the node sees its link go down)",
    "heal": "plug the node's cable back in (this also ends an isolation)",
    "isolate": "the switch drops the node's traffic; the node keeps its link up and hears nobody",
    "rejoin": "the switch forwards the node's traffic again (after isolate)",
    "reload": "reload the node's daemons in place, as a deploy does: its VIPs stay served",
}


def register(sub: Any) -> None:
    lab = sub.add_parser(
        "lab",
        help="run the whole cluster on this machine in network namespaces (root)",
        description="The cluster of an inventory as light containers on this machine: one "
        "network + mount + UTS namespace per node on one bridge, a zfs-fuse pool and a CARP "
        "daemon per node, and a client namespace. Nothing leaves the lab's namespaces.",
    )
    lab_sub = lab.add_subparsers(dest="lab_command", metavar="COMMAND")
    lab_sub.required = True

    def parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = lab_sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--name",
            default=DEFAULT_NAME,
            help="which lab: 1-10 of a-z, 0-9 and -, starting with a letter (default: %(default)s)",
        )
        return p

    p = parser("up", "build the lab and start every node")
    add_inventory_option(p)
    p.add_argument(
        "--foreign",
        choices=["ucarp", "keepalived"],
        help="run stock ucarp (CARP), or keepalived (a VRRPv3 inventory), on the FreeBSD nodes",
    )
    p.set_defaults(func=cmd_up)

    p = parser("status", "nodes, their daemons and link, and who holds each VIP")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = parser("exec", "run a command inside a node (or the client namespace)")
    p.add_argument("node", metavar="NODE|client")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    p.set_defaults(func=cmd_exec)

    for action, help_text in NODE_ACTIONS.items():
        p = parser(action, help_text)
        p.add_argument("node", metavar="NODE")
        p.set_defaults(func=_node_action(action))

    p = parser("down", "remove every namespace, mount, file and process of the lab")
    p.set_defaults(func=cmd_down)
