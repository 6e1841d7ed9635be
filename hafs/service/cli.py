"""`hafs event` (the CARP hook of both OSes) and `hafs service ...` (node-side operations)."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import logging
import os
import re
import shlex
import sys
import time
from typing import IO, Any

from hafs.agentconf import PREVIOUS_MASTER_ENV
from hafs.errors import HafsError
from hafs.holds import HOLD_DEMOTION
from hafs.service import config as service_config
from hafs.service import demotion, divergence, receiver, space
from hafs.service.node import NodeServices
from hafs.service.replication import BACKGROUND_NICE
from hafs.service.runtime import ServiceError
from hafs.table import table

EVENT_RE = re.compile(r"(?P<vhid>[0-9]{1,3})@(?P<ifname>[0-9A-Za-z._:-]+)")


def _services(args: argparse.Namespace) -> NodeServices:
    logging.basicConfig(  # stamped always: hooks' output lands in files beside the daemon's
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return NodeServices(service_config.load(args.config))


def cmd_event(args: argparse.Namespace) -> int:
    match = EVENT_RE.fullmatch(args.subsystem)
    if match is None:
        raise HafsError(f"SUBSYSTEM {args.subsystem!r}: write <vhid>@<ifname>, e.g. 1@em0")
    services = _services(args)
    vip = services.config.vip(int(match["vhid"]))
    if args.state == "MASTER":
        services.takeover(vip, os.environ.get(PREVIOUS_MASTER_ENV))
    else:
        services.stepdown(vip)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from hafs.service.daemon import ServiceDaemon

    services = _services(args)
    # systemd's watchdog kills a daemon that no longer runs with SIGABRT: the journal then
    # shows where each of its threads was
    faulthandler.enable()
    ServiceDaemon(services, service_config.path_of(args.config)).run()
    return 0


def cmd_fence(args: argparse.Namespace) -> int:
    services = _services(args)
    vip = services.config.vip_named(args.vip)
    if services.holds(vip):
        # the VIP is here: this node is the master (a transient one asked) or split from the
        # asker; its own CARP daemon steps it down if it loses, never a peer's request
        print(f"{vip.name}: held here: not fenced")
        return 0
    services.stepdown(vip, "fence")
    return 0


def cmd_held(args: argparse.Namespace) -> int:
    """Print the VIPs held here, one name per line (a returning peer's resync asks)."""
    services = _services(args)
    for vip in services.config.vips:
        if services.holds(vip):
            print(vip.name)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Print what this node says of itself, as JSON (``hafs cluster status`` asks)."""
    from hafs.cluster_status import node_report

    print(json.dumps(node_report(_services(args))))
    return 0


def progress(message: str) -> None:
    print(f"hafs: {message}", file=sys.stderr, flush=True)


def cmd_drain(args: argparse.Namespace) -> int:
    from hafs.service.drain import drain

    moved = drain(_services(args), progress)
    progress(
        f"drained: {', '.join(moved) or 'no VIP was served here'}; this node keeps out of the "
        "way (hold 'drain') until `hafs undrain`"
    )
    return 0


def cmd_undrain(args: argparse.Namespace) -> int:
    from hafs.service.drain import undrain

    undrain(_services(args))
    progress("undrained: resyncing; the VIPs this node is home of come home after that")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    from hafs.service.move import home_hint, move

    services = _services(args)
    took = move(services, args.vip, args.node, progress)
    vip = services.config.vip_named(args.vip)
    where = (
        "home" if args.node == vip.home else f"on {args.node} until moved again; {home_hint(vip)}"
    )
    progress(f"{vip.name}: moved to {args.node}, not served for {took:.1f}s; it stays {where}")
    return 0


def cmd_prefer(args: argparse.Namespace) -> int:
    """Asked by the node that runs `hafs move`: this node's rank of VIP, NODE first."""
    from hafs.service.move import prefer

    services = _services(args)
    prefer(services, services.config.vip_named(args.vip), args.node)
    return 0


def _hold_value(text: str) -> int:
    if not text.isdigit() or int(text) > HOLD_DEMOTION:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 (release) to {HOLD_DEMOTION}")
    return int(text)


def cmd_hold(args: argparse.Namespace) -> int:
    services = _services(args)
    node_demotion = demotion.for_node(services.config.agent_socket)
    if node_demotion is None:
        raise HafsError("this node's CARP daemon takes no demotion holds (ucarp?)")
    node_demotion.hold(args.name, args.value)
    return 0


def _background() -> None:
    """Replication gives way to takeovers: the operations peers start here for it (and what
    they spawn: zfs recv) run at a lower CPU priority."""
    os.nice(BACKGROUND_NICE)


def cmd_snapshots(args: argparse.Namespace) -> int:
    _background()
    services = _services(args)
    dataset = services.dataset(services.config.vip_named(args.vip))
    if services.zfs.exists(dataset):
        for snap in services.zfs.snapshots(dataset):
            print(snap.name)
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    with contextlib.suppress(OSError):  # a process group of its own, which a takeover may kill
        os.setpgid(0, 0)  # (fails, harmlessly, when it leads its session: pgid == pid already)
    if not args.urgent:
        _background()
    services = _services(args)
    keep = [name for name in (args.keep or "").split(",") if name]
    theirs = [name for name in (args.theirs or "").split(",") if name]
    vip = services.config.vip_named(args.vip)
    services.receive(vip, args.base, sys.stdin.buffer, keep, theirs)
    return 0


def cmd_receiver(args: argparse.Namespace) -> int:
    """The long-lived receiver a holder keeps here (:mod:`hafs.service.receiver`)."""
    with contextlib.suppress(OSError):  # a group of its own, killed with a receive in it
        os.setpgid(0, 0)
    _background()
    services = _services(args)
    vip = services.config.vip_named(args.vip)
    return receiver.serve(services, vip, sys.stdin.fileno(), sys.stdout.buffer)


def _stream_out() -> IO[bytes]:
    """stdout, for a peer's pull: a zfs stream, never for a terminal."""
    if sys.stdout.isatty():
        raise HafsError("writes a zfs stream for the peer that asked over ssh: not to a terminal")
    return sys.stdout.buffer


def cmd_sync(args: argparse.Namespace) -> int:
    """Asked by a returning peer over ssh: stdout is its stream (a header, then zfs's)."""
    _background()
    services = _services(args)
    vip = services.config.vip_named(args.vip)
    if not services.holds(vip):
        raise HafsError(f"{vip.name}: not held by {services.config.node}: nothing to send")
    services.serve_pull(vip, args.to, args.since, _stream_out(), handover=False)
    return 0


def cmd_handover(args: argparse.Namespace) -> int:
    """As ``sync``, after this node stopped serving the VIP (the clients wait: not niced)."""
    services = _services(args)
    vip = services.config.vip_named(args.vip)
    services.serve_pull(vip, args.to, args.since, _stream_out(), handover=True)
    return 0


def cmd_diverged(args: argparse.Namespace) -> int:
    """Kept-aside copies: list them, show one, or discard one (the operator's call)."""
    services = _services(args)
    if args.action == "list":
        found = divergence.copies(services)
        if args.json:
            print(json.dumps([c.as_dict() for c in found], indent=2))
        elif not found:
            print(f"no kept-aside copies on {services.config.node}")
        else:
            print(table(["COPY", "VIP", "KEPT", "USED", "MOUNTED AT"], [
                [c.name, c.vip, c.kept, _size(c.used), c.mountpoint] for c in found
            ]))  # fmt: skip
        return 0
    if args.name is None:
        raise HafsError(f"hafs service diverged {args.action}: name the copy (see `list`)")
    if args.action == "show":
        copy = divergence.find(services, args.name)
        if args.json:
            print(json.dumps(copy.as_dict(), indent=2))
        else:
            print(f"{copy.name}: kept-aside copy of {copy.vip}, kept {copy.kept}")
            print(f"  dataset    {copy.dataset} ({_size(copy.used)} of its own)")
            print(f"  files      {copy.mountpoint}/shares (read-only: copy out what you need)")
            print(f"  snapshots  {', '.join(copy.snapshots) or '(none)'}")
            kind = "the whole dataset (no snapshot in common)" if copy.whole else "a clone"
            print(f"  kept as    {kind}")
            print(f"  discard    hafs service diverged discard {copy.name}")
        return 0
    copy = divergence.discard(services, args.name)
    print(f"discarded {copy.dataset}")
    return 0


def _size(used: int) -> str:
    return f"{used / 2**20:.1f} MiB"


PEER_OPERATIONS = (
    "fence", "snapshots", "receive", "receiver", "sync", "handover", "held", "report", "prefer",
)  # fmt: skip


def cmd_ssh_command(args: argparse.Namespace) -> int:
    """The forced command of a peer's replication key: run only what peers may ask for.

    sshd puts the requested command in $SSH_ORIGINAL_COMMAND (``<hafs> service <op> ...``);
    anything but ``service`` + one of :data:`PEER_OPERATIONS` is refused, so a stolen key
    can replicate, fence and re-rank a VIP (``prefer``: among its carriers, as ``hafs move``
    does), never run a shell.
    """
    from hafs.cli import main

    original = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        requested = shlex.split(original)
    except ValueError as exc:  # unbalanced quotes: nothing a peer of ours sends
        raise HafsError(
            f"peer {args.peer}: refused: {original!r}: {exc}: send one shell-quoted command"
        ) from None
    try:
        at = requested.index("service")
    except ValueError:
        at = -1
    operation = requested[at + 1 : at + 2]
    if at < 0 or not operation or operation[0] not in PEER_OPERATIONS:
        print(
            f"hafs: peer {args.peer}: refused: {shlex.join(requested) or '(nothing)'}",
            file=sys.stderr,
        )
        return 2
    return main(["service", *requested[at + 1 :]])


def cmd_status(args: argparse.Namespace) -> int:
    from hafs.service.daemon import STATUS_FILE

    try:
        report: dict[str, Any] = json.loads(STATUS_FILE.read_text())
    except (OSError, ValueError):
        raise ServiceError(  # exit 1: the daemon is missing, as `hafs status` without an agent
            f"no replication report at {STATUS_FILE}: is `hafs service run` running?"
        ) from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_replication(report))
    return 0


def format_replication(report: dict[str, Any]) -> str:
    lines = [f"replication from {report['node']}:"]
    now = time.time()
    for vip, peers in sorted(report["vips"].items()):
        for peer, item in sorted(peers.items()):
            if item["ok"]:
                lag = f"{now - item['at']:.1f}s ago, {item['snapshot']}"
            else:
                lag = f"FAILING: {item['error']}"
            lines.append(f"  {vip} -> {peer}: {lag}")
    if len(lines) == 1:
        lines.append("  (this node holds no VIP)")
    diverged = report.get("diverged", [])
    if report.get("space"):
        pool = space.Space(report["space"]["size"], report["space"]["free"])
        lines.append(
            f"  pool: {space.mib(pool.free)} free of {space.mib(pool.size)} (headroom "
            f"{space.mib(pool.headroom)}{', LOW' if pool.low else ''}); kept-aside copies "
            f"{space.mib(sum(c['used'] for c in diverged))} of {space.mib(pool.diverged_budget)}"
        )
    for copy in diverged:
        lines.append(
            f"  KEPT ASIDE: {copy['name']} ({copy['vip']}, kept {copy['kept']}): "
            "diverged data found only here; `hafs service diverged show` it"
        )
    return "\n".join(lines)


def register(sub: Any) -> None:
    config_help = f"cluster config (default: $HAFS_CLUSTER_CONFIG or {service_config.DEFAULT_PATH})"
    p = sub.add_parser(
        "event",
        help="react to a CARP state change (devd on FreeBSD, hafs agent on Linux)",
        description="Move the VIP's service with the VIP: MASTER takes over (fence, roll "
        "back, writable, smbd, announce), BACKUP and INIT step down (stop smbd, read-only "
        "replica). The same words as FreeBSD's devd: hafs event 1@em0 MASTER.",
    )
    p.add_argument("subsystem", metavar="VHID@IFNAME")
    p.add_argument("state", choices=["MASTER", "BACKUP", "INIT"])
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_event)

    for name, help_text, func in (
        (
            "drain",
            "hand every VIP served here to its backups (no write lost), then keep this node "
            "out of the way until `hafs undrain`",
            cmd_drain,
        ),
        (
            "undrain",
            "bring a drained node back: it resyncs, then the VIPs it is home of come home",
            cmd_undrain,
        ),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help=config_help)
        p.set_defaults(func=func)

    p = sub.add_parser(
        "move",
        help="move one VIP to the carrier NODE, losing no write; it stays there until moved "
        "again (to its home: back at the configured ranks)",
        description="Run it on the node that holds VIP. A planned, lossless move: every "
        "carrier of VIP re-ranks it so that NODE is its best carrier (the others keep their "
        "order behind it; the hafs agent keeps this across restarts, FreeBSD runs `ifconfig "
        "<if> vhid N advskew X`); this node records VIP's SMB clients, stops serving it, "
        "sends its last writes to NODE (the others get them from NODE), then falls behind NODE, "
        "which takes the VIP over and serves those writes. Prints how long VIP was not "
        "served. The VIP stays on NODE (no preemption back home) until moved again; `hafs "
        "move VIP HOME` brings it home the same way. `hafs status` and `hafs cluster status` "
        "show a moved VIP. If NODE does not take over, every rank goes back and this node "
        "serves VIP again. Refused when a carrier runs ucarp (no run-time priority change).",
    )
    p.add_argument("vip", metavar="VIP", help="the VIP's name, e.g. vip1")
    p.add_argument("node", metavar="NODE", help="the carrier to move it to, e.g. ha-file-server-2")
    p.add_argument("--config", help=config_help)
    p.set_defaults(func=cmd_move)

    service = sub.add_parser(
        "service",
        help="node-side service operations: the replication daemon and what peers call",
        description="The per-node service daemon and the operations peers run over ssh.",
    )
    ssub = service.add_subparsers(dest="service_command", metavar="COMMAND")
    ssub.required = True

    def parser(name: str, help_text: str, func: Any, vip: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = ssub.add_parser(name, help=help_text, description=help_text)
        if vip:
            p.add_argument("vip", metavar="VIP", help="the VIP's name, e.g. vip1")
        p.add_argument("--config", help=config_help)
        p.set_defaults(func=func)
        return p

    parser("run", "the service daemon: replication, smbd health, resync", cmd_run, vip=False)
    p = parser("status", "replication lag per VIP and peer", cmd_status, vip=False)
    p.add_argument("--json", action="store_true", help="print JSON")
    parser("fence", "stop serving VIP here (its dataset becomes a read-only replica)", cmd_fence)
    parser("snapshots", "list this node's snapshots of VIP, oldest first", cmd_snapshots)
    p = parser("receive", "receive a zfs stream of VIP on stdin (replication)", cmd_receive)
    p.add_argument("--base", help="the common snapshot the stream is incremental from")
    p.add_argument(
        "--keep", metavar="SNAP,...", help="snapshots retention keeps (the sender's peers' bases)"
    )
    p.add_argument(
        "--theirs",
        metavar="SNAP,...",
        help="the sender's snapshots between the base and the sent one",
    )
    p.add_argument(
        "--urgent",
        action="store_true",
        help="the clients wait for it (drain, move): at the usual CPU priority",
    )
    parser(
        "receiver",
        "receive zfs streams of VIP from the holder one after another (replication)",
        cmd_receiver,
    )
    for name, help_text, func in (
        ("sync", "snapshot VIP now and write it to stdout for the peer that asked", cmd_sync),
        ("handover", "stop serving VIP, write its last writes to stdout as sync", cmd_handover),
    ):
        p = parser(name, help_text, func)
        p.add_argument("--to", required=True, metavar="NODE", help="the peer that asked")
        p.add_argument("--since", metavar="SNAP", help="the newest snapshot the peer has")
    parser("held", "list the VIPs this node holds now, one name per line", cmd_held, vip=False)
    p = parser("prefer", "rank VIP here so that NODE is its best carrier (`hafs move`)", cmd_prefer)
    p.add_argument(
        "node", metavar="NODE", help="the node VIP is moved to (its home: as configured)"
    )
    parser("report", "this node's held VIPs, holds and replication, as JSON", cmd_report, vip=False)
    p = parser(
        "hold",
        "set a demotion hold of this node's CARP daemon (FreeBSD: net.inet.carp.demotion)",
        cmd_hold,
        vip=False,
    )
    p.add_argument("name", help="the hold's name, e.g. resync or maintenance")
    p.add_argument("value", type=_hold_value, help="advskew added while held (0 releases; 240 max)")
    p = parser(
        "diverged",
        "kept-aside copies of diverged data: list, show one, or discard one",
        cmd_diverged,
        vip=False,
    )
    p.add_argument("action", choices=["list", "show", "discard"])
    p.add_argument("name", nargs="?", help="the copy, as `list` names it (show, discard)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = parser(
        "ssh-command",
        "forced command of peers' replication keys: runs $SSH_ORIGINAL_COMMAND if allowed",
        cmd_ssh_command,
        vip=False,
    )
    p.add_argument("--peer", required=True, metavar="NODE", help="the peer the key belongs to")
