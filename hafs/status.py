"""`hafs status`: the node's view in one command, the CARP agent's and the service daemon's.

The agent answers on its control socket (its vhids, their states and the node's demotion:
:func:`hafs.carp.commands.format_status`); the service daemon, where it runs on this node,
leaves its replication report in a file (:data:`hafs.service.daemon.STATUS_FILE`: lag per
VIP and peer, kept-aside copies, pool space). This command sits above both layers so that
neither imports the other: the agent knows nothing of the service.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from hafs import agentconf
from hafs.carp import control
from hafs.carp.commands import SOCKET_HELP, format_status


def cmd_status(args: argparse.Namespace) -> int:
    from hafs.service.cli import format_replication
    from hafs.service.daemon import STATUS_FILE

    status = control.request(args.socket, {"op": "status"})
    status.pop("ok")
    try:  # the service daemon's replication report, when it runs on this node
        status["replication"] = json.loads(STATUS_FILE.read_text())
    except (OSError, ValueError):
        status["replication"] = None
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
        if status["replication"]:
            print(format_replication(status["replication"]))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show the agent's vhids: state, since, why, master, counters",
        description="Ask the running agent for the state of every vhid.",
    )
    p.add_argument("--socket", default=agentconf.DEFAULT_CONTROL_SOCKET, help=SOCKET_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
