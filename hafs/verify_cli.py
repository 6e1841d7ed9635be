"""`hafs verify`: the SMB client check of every VIP, and `--failover`, the failover drill.

``--lab`` never talks SMB from here: it re-runs the same command (without ``--lab``) inside the
lab's client namespace, ``ip netns exec <client> python -m hafs.verify_cli verify ...``, so every
packet stays in the lab. For the drill this process stays outside and does the kills and
restores the drill asks for over two pipes (:class:`hafs.drill.killers.PipeKiller`).

Run as a module (``python -m hafs.verify_cli verify ...``) it is the same command without the
rest of the CLI, which keeps the re-executed client quick to start.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hafs
from hafs.cluster import Cluster, load
from hafs.drill.killers import CommandKiller, Killer, LabKiller, PipeKiller, serve_killer
from hafs.drill.plot import plot_timeline
from hafs.drill.report import drill_verdict, format_report
from hafs.drill.run import DrillOptions, run_drill
from hafs.errors import HafsError
from hafs.verify import (
    PysmbConnector,
    credentials,
    format_results,
    results_json,
    run_verify,
    verdict,
)

DEFAULT_INVENTORY = "inventory.py"
DEFAULT_LAB = "hafs"
DRILL_ONLY = ("node", "settle", "plot", "kill_command", "restore_command")
NETNS_DIR = "/run/netns"


def progress(message: str) -> None:
    print(f"hafs verify: {message}", file=sys.stderr, flush=True)


def _number(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds")
    return seconds


def _seconds(value: str) -> float:
    seconds = _number(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be more than 0 seconds")
    return seconds


def _settle(value: str) -> float:
    seconds = _number(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be 0 seconds or more")
    return seconds


# --- where the client may run --------------------------------------------------------------------


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def refuse_lab_inventory(inventory: Path, lab_root: Path) -> None:
    """A lab's inventory names addresses that exist only inside that lab: from anywhere but the
    client namespace of a lab of that inventory (several may run: ``lab up --name``) the
    packets would leave through this machine's default route."""
    here = _netns_inode("/proc/self/ns/net")
    try:
        states = sorted(lab_root.glob("*/state.json"))
    except OSError:
        return
    labs = []  # of this inventory: (name, inside its client namespace?)
    for path in states:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(state, dict) or state.get("inventory") != str(inventory.resolve()):
            continue
        client = state.get("client", {}).get("ns")
        inside = client is not None and _netns_inode(os.path.join(NETNS_DIR, client)) == here
        labs.append((path.parent.name, inside))
    if labs and not any(inside for _, inside in labs):
        name = labs[0][0]
        raise HafsError(
            f"{inventory}: the inventory of lab {name!r}, whose addresses exist only inside "
            f"the lab: run hafs verify --lab --name {name}"
        )


# --- verify and drill, where the client runs -----------------------------------------------------


def _verify(args: argparse.Namespace, cluster: Cluster, user: str, password: str) -> int:
    began = time.monotonic()
    results = run_verify(cluster, PysmbConnector(user, password, args.timeout))
    seconds = time.monotonic() - began
    if args.json:
        print(json.dumps(results_json(results, seconds), indent=2))
    else:
        print(format_results(results))
    progress(verdict(results, seconds))
    return 0 if all(r.ok for r in results) else 1


def _killer(args: argparse.Namespace, cluster: Cluster) -> Killer:
    if args.killer_fds is not None:  # internal: set by the --lab parent
        try:
            replies, requests = (int(fd) for fd in args.killer_fds.split(","))
            return PipeKiller(os.fdopen(requests, "w"), os.fdopen(replies, "r"))
        except (ValueError, OSError) as exc:
            raise HafsError(f"--killer-fds {args.killer_fds}: not two open pipes: {exc}") from None
    # the command line's template for every node, else each node's drill_kill/drill_restore
    kill = {n.name: args.kill_command or n.drill_kill for n in cluster.nodes}
    restore = {n.name: args.restore_command or n.drill_restore for n in cluster.nodes}
    return CommandKiller.from_templates(cluster, kill, restore)


def _drill(args: argparse.Namespace, cluster: Cluster, user: str, password: str) -> int:
    killer = _killer(args, cluster)
    settle = 2 * cluster.replication_interval if args.settle is None else args.settle
    report = run_drill(
        cluster,
        check=PysmbConnector(user, password, args.timeout),
        poll=PysmbConnector(user, password, args.poll_timeout),
        killer=killer,
        options=DrillOptions(settle=settle, timeout=args.wait, nodes=args.node),
        progress=progress,
        token=secrets.token_hex(4),
    )
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_report(report))
    if args.plot:
        plot_timeline(report, args.plot)
        progress(f"timeline written to {args.plot}")
    progress(drill_verdict(report))
    return 0 if report.ok else 1


# --- --lab: run the client inside the lab --------------------------------------------------------


def _child_argv(args: argparse.Namespace, inventory: str) -> list[str]:
    argv = ["verify", "-i", inventory, "--timeout", str(args.timeout)]
    if args.json:
        argv.append("--json")
    if args.failover:
        argv += ["--failover", "--wait", str(args.wait), "--poll-timeout", str(args.poll_timeout)]
        for node in args.node:
            argv += ["--node", node]
        if args.settle is not None:
            argv += ["--settle", str(args.settle)]
        if args.plot:
            argv += ["--plot", os.path.abspath(args.plot)]
    return argv


def _in_lab(args: argparse.Namespace) -> int:
    from hafs.lab.cluster import ClusterLab

    if os.geteuid() != 0:
        raise HafsError("--lab needs root (it runs the client in the lab's client namespace)")
    if args.kill_command or args.restore_command:
        raise HafsError("--kill-command/--restore-command: not with --lab (lab nodes lose power)")
    lab = ClusterLab(args.name)
    if not lab.state:
        raise HafsError(f"no lab named {args.name!r}: hafs lab up --name {args.name}")
    inventory = str(lab.state["inventory"])
    if args.inventory is not None and str(Path(args.inventory).resolve()) != inventory:
        raise HafsError(f"-i {args.inventory}: lab {args.name!r} runs {inventory}: drop -i")
    package_root = str(Path(hafs.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
    argv = [
        *lab.enter("client"),
        sys.executable,
        "-m",
        "hafs.verify_cli",
        *_child_argv(args, inventory),
    ]
    if not args.failover:
        return subprocess.run(argv, env=env, check=False).returncode
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    argv += ["--killer-fds", f"{reply_read},{request_write}"]
    with subprocess.Popen(argv, env=env, pass_fds=(reply_read, request_write)) as child:
        os.close(reply_read)
        os.close(request_write)
        try:
            with os.fdopen(request_read) as requests, os.fdopen(reply_write, "w") as replies:
                serve_killer(LabKiller(lab, progress), requests, replies)
        except BrokenPipeError:
            pass  # the drill ended while a reply was on its way: its exit status tells
        except BaseException:
            child.terminate()
            raise
        return child.wait()


# --- the command ---------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    if not args.failover:
        given = [o for o in DRILL_ONLY if getattr(args, o) not in (None, [])]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise HafsError(f"{flag}: only with --failover")
    if args.lab:
        return _in_lab(args)
    cluster = load(args.inventory or DEFAULT_INVENTORY)
    user, password = credentials(cluster)
    from hafs.lab.state import LAB_ROOT

    refuse_lab_inventory(cluster.source, LAB_ROOT)
    if args.failover:
        return _drill(args, cluster, user, password)
    return _verify(args, cluster, user, password)


DESCRIPTION = """\
Check every VIP of the inventory as an SMB client: connect as check_user, list the shares and
compare them with the model, write, read back and delete a canary file in each writable share
(list each read-only one), and time each step. The holder is the node named by the IPC$ share's
comment. Exit 0 when every VIP passed, 1 otherwise, 2 for usage errors.

With --failover: a failover drill. For each node in turn: write a canary into its VIPs' shares,
wait for replication (--settle), kill the node, poll every VIP over SMB every 100 ms and record
when each answers again, from which node and with which data (RTO: kill to first answer; goal
3*advbase + advskew/256 + 1 s), write a new canary through the new holder, restore the node and
record when the VIP answers from its home again (failback) with that canary. Progress on
stderr, a report on stdout, a final verdict line. Exit 0 when every VIP came back within its
goal with its data, and failed back with it.
"""

EPILOG = """\
examples:
  hafs verify -i inventory.py
  hafs verify --lab --json                       # inside the lab named hafs
  hafs verify --lab --failover --plot drill.png  # lab nodes lose power, then power on
  hafs verify --failover --kill-command 'ssh {address} "ifconfig {interface} down"' \\
      --restore-command 'ipmitool -H {node}-ipmi chassis power cycle'
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "verify",
        help="SMB client check of every VIP; --failover: a timed failover drill",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-i",
        "--inventory",
        metavar="INVENTORY",
        help=f"pyinfra inventory (default: {DEFAULT_INVENTORY}; with --lab: the lab's)",
    )
    p.add_argument(
        "--lab",
        action="store_true",
        help="run the SMB client inside the lab's client namespace (root)",
    )
    p.add_argument(
        "--name", default=DEFAULT_LAB, help="which lab, with --lab (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="for each SMB step of a check (default: %(default)s)",
    )
    drill = p.add_argument_group("failover drill")
    drill.add_argument("--failover", action="store_true", help="run the failover drill")
    drill.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NODE",
        help="kill only this node (repeatable; default: every node, in inventory order)",
    )
    drill.add_argument(
        "--settle",
        type=_settle,
        metavar="SECONDS",
        help="wait between writing the canaries and the kill (default: 2 * replication_interval:"
        " until the next snapshot, then its send)",
    )
    drill.add_argument(
        "--wait",
        type=_seconds,
        default=120.0,
        metavar="SECONDS",
        help="for each takeover and each failback before it counts as failed "
        "(default: %(default)s)",
    )
    drill.add_argument(
        "--poll-timeout",
        type=_seconds,
        default=0.5,
        metavar="SECONDS",
        help="for each SMB step of a 100 ms poll (default: %(default)s)",
    )
    drill.add_argument("--plot", metavar="FILE", help="write a timeline picture (PNG)")
    drill.add_argument(
        "--kill-command",
        metavar="TEMPLATE",
        help="shell command that takes a node down; {node}, {address}, {interface} are filled in",
    )
    drill.add_argument(
        "--restore-command",
        metavar="TEMPLATE",
        help="shell command that brings a node back (same fields)",
    )
    p.add_argument("--killer-fds", help=argparse.SUPPRESS)  # the --lab parent's two pipes
    p.set_defaults(func=cmd_verify)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hafs", description="hafs verify alone")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except HafsError as exc:
        print(f"hafs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
