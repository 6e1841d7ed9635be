"""`hafs check` and `hafs render`: read the inventory, report problems, print config files."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from hafs import cluster as cluster_mod
from hafs import render as render_mod
from hafs.check import check

DEFAULT_INVENTORY = "inventory.py"


def add_inventory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i",
        "--inventory",
        default=DEFAULT_INVENTORY,
        metavar="INVENTORY",
        help="pyinfra inventory file (group_data/ beside it is read too); default: %(default)s",
    )


def cmd_check(args: argparse.Namespace) -> int:
    cluster = cluster_mod.load(args.inventory)
    problems = check(cluster)
    errors = sum(p.level == "error" for p in problems)
    if args.json:
        json.dump(
            {"inventory": str(cluster.source), "problems": [asdict(p) for p in problems]},
            sys.stdout,
            indent=2,
        )
        print()
    else:
        for problem in problems:
            print(problem)
        warnings = len(problems) - errors
        summary = f"{len(cluster.nodes)} nodes, {len(cluster.vips)} VIPs: "
        print(summary + f"{errors} error(s), {warnings} warning(s)", file=sys.stderr)
    return 1 if errors else 0


def cmd_render(args: argparse.Namespace) -> int:
    cluster = cluster_mod.load(args.inventory)
    sys.stdout.write(render_mod.render(cluster, args.node, args.file))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="report every problem of the cluster defined by an inventory",
        description="Load the inventory and print every problem as one line naming the node or "
        "VIP and the fix. Exit 0 when there are no errors (warnings allowed), 1 on errors, "
        "2 when the inventory cannot be read.",
    )
    add_inventory_option(p)
    p.add_argument("--json", action="store_true", help="print the problems as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "render",
        help="print a node's configuration file",
        description="Print one configuration file of one node, rendered from the inventory: "
        "rc.conf, loader.conf, sysctl.conf, devd.conf (FreeBSD) or agent.toml (Linux); "
        "cluster.json; keepalived.conf (a VRRPv3 cluster's node run by keepalived).",
    )
    add_inventory_option(p)
    p.add_argument("node", metavar="NODE", help="node name as in the inventory")
    p.add_argument("file", metavar="FILE", choices=sorted(render_mod.RENDERERS), help="%(choices)s")
    p.set_defaults(func=cmd_render)
