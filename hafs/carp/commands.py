"""`hafs agent`, `hafs ucarp` and `hafs demote`, and the agent's view that `hafs status` prints
(:mod:`hafs.status` adds the service daemon's report to it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from datetime import datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hafs import agentconf, systemd
from hafs.agentconf import AgentConfig, VhidEntry
from hafs.carp import control
from hafs.carp.wire import ucarp_refusal
from hafs.errors import HafsError
from hafs.secretfile import check_private
from hafs.table import table

SOCKET_HELP = "the agent's control socket (default: %(default)s)"


def setup_logging(level: str) -> None:
    # under systemd the journal stamps each line; elsewhere, add the time
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format=stamp + "%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


async def _run_agent(agent: Any) -> None:
    try:  # the agent's tick feeds the watchdog (WATCHDOG=1)
        await agent.run(ready=lambda: systemd.notify("READY=1"))
    finally:
        systemd.notify("STOPPING=1")


def start(config: AgentConfig, log_level: str, **options: Any) -> int:
    from hafs.carp.agent import Agent

    setup_logging(log_level)
    if os.geteuid() != 0:
        raise HafsError("the agent needs root (raw sockets, addresses): run it as root")
    agent = Agent(config, **options)
    if config.metrics:
        from hafs.carp.metrics import serve_metrics

        serve_metrics(agent, config.metrics)
    try:
        asyncio.run(_run_agent(agent))
    except OSError as exc:
        raise HafsError(f"agent: {exc}") from exc
    return 0


RELOAD_WAIT = 30.0  # seconds a reload may take beyond the hooks' timeout


def reload_agent(config: AgentConfig, as_json: bool = False) -> int:
    """``hafs agent --reload`` (systemd's ExecReload): SIGHUP the running agent, wait until
    its new image answers, and report each vhid's state before and after; 0 if every vhid
    kept its state, 1 if one changed or the agent did not come back."""
    path = config.control_socket
    before = control.request(path, {"op": "status"})
    if not before.get("reloadable"):
        raise control.ControlError(
            f"the running agent (pid {before['pid']}) predates reloads (SIGHUP would kill it): "
            "restart it once instead, one node at a time (systemctl restart hafs-agent)"
        )
    began = time.monotonic()
    os.kill(before["pid"], signal.SIGHUP)
    deadline = began + config.hook_timeout + RELOAD_WAIT
    while True:
        time.sleep(0.1)
        with contextlib.suppress(control.ControlError):  # between the two images
            after = control.request(path, {"op": "status"})
            if after["started"] != before["started"]:
                break
        if time.monotonic() > deadline:
            raise control.ControlError(
                f"the agent (pid {before['pid']}) did not come back from its reload within "
                f"{deadline - began:.0f}s: see its log"
            )
    took = time.monotonic() - began
    states = {v["vhid"]: v["state"] for v in after["vhids"]}
    rows = [
        {"vhid": v["vhid"], "interface": v["interface"], "before": v["state"],
         "after": states.get(v["vhid"])}
        for v in before["vhids"]
    ]  # fmt: skip
    kept = all(r["before"] == r["after"] for r in rows)
    if as_json:
        print(json.dumps({"pid": after["pid"], "seconds": round(took, 3), "vhids": rows}))
    else:
        print(f"agent {config.node} (pid {after['pid']}) reloaded in {took:.2f}s")
        for r in rows:
            verdict = "kept" if r["before"] == r["after"] else f"now {r['after']}"
            print(f"vhid {r['vhid']}@{r['interface']}: {r['before']} {verdict}")
    return 0 if kept else 1


def cmd_agent(args: argparse.Namespace) -> int:
    config = agentconf.load(args.config)
    if args.reload and args.cleanup:
        raise HafsError("--reload, --cleanup: give one of them")
    if args.reload:
        return reload_agent(config, args.json)
    if args.cleanup:
        from hafs.carp.agent import cleanup

        setup_logging(args.log_level)
        return cleanup(config)
    return start(config, args.log_level)


# --- hafs ucarp --------------------------------------------------------------------------------


def _ucarp_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "ucarp",
        help="run one vhid with stock ucarp's command line",
        description="A drop-in for ucarp 1.5: same flags, same up/down script calls "
        "(<ifname> <vip> [xparam], UCARP_VHID set), FreeBSD-exact CARP, hooks that never block "
        "the protocol. Prefer --passfile: a --pass is visible to every local user in ps.",
    )
    p.add_argument("-i", "--interface", required=True, help="network interface")
    p.add_argument("-s", "--srcip", required=True, help="this node's own (real) address")
    p.add_argument("-v", "--vhid", type=int, default=1, help="virtual host id 1..255 (1)")
    p.add_argument("-p", "--pass", dest="passphrase", help="password (visible in ps!)")
    p.add_argument("-o", "--passfile", help="read the password from this file (mode 0600)")
    p.add_argument("-a", "--addr", required=True, help="virtual address")
    p.add_argument("-b", "--advbase", type=int, default=1, help="advertisement interval (1 s)")
    p.add_argument("-k", "--advskew", type=int, default=0, help="advertisement skew 0..254 (0)")
    p.add_argument("-P", "--preempt", action="store_true", help="become master asap")
    p.add_argument("-n", "--neutral", action="store_true", help="no down script at start")
    p.add_argument("-u", "--upscript", help="run when becoming master")
    p.add_argument("-d", "--downscript", help="run when leaving master")
    p.add_argument("-z", "--shutdown", action="store_true", help="run the down script at exit")
    p.add_argument("-B", "--daemonize", action="store_true", help="go to the background")
    p.add_argument("-x", "--xparam", help="extra parameter passed to the scripts")
    p.add_argument("-S", "--ignoreifstate", action="store_true", help="ignore link state")
    p.add_argument("--socket", help="control socket (default: /run/hafs/ucarp-<vhid>.sock)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.set_defaults(func=cmd_ucarp)


def _address(value: str, flag: str) -> IPv4Address:
    try:
        return IPv4Address(value)
    except ValueError:
        raise HafsError(f"{flag}: {value!r} is not an IPv4 address") from None


def ucarp_config(args: argparse.Namespace) -> AgentConfig:
    """The agent configuration equivalent to one ucarp command line."""
    if (args.passphrase is None) == (args.passfile is None):
        raise HafsError("--pass or --passfile: give exactly one (prefer --passfile)")
    if args.passfile is not None:
        path = Path(args.passfile)
        check_private(path, "--passfile")
        try:
            passphrase = path.read_text(encoding="utf-8").split("\n")[0]
        except (OSError, UnicodeDecodeError) as exc:
            raise HafsError(f"--passfile: {path}: cannot read: {exc}") from exc
    else:
        passphrase = args.passphrase
        print(
            "hafs ucarp: warning: --pass is visible to every local user in the process list; "
            "use --passfile FILE (mode 0600) or `hafs agent` with a 0600 config",
            file=sys.stderr,
        )
    if not 1 <= args.vhid <= 255:
        raise HafsError(f"--vhid: must be 1..255, got {args.vhid}")
    if not 1 <= args.advbase <= 254:
        raise HafsError(f"--advbase: must be 1..254, got {args.advbase}")
    if not 0 <= args.advskew <= 254:
        raise HafsError(f"--advskew: must be 0..254, got {args.advskew}")
    addr = _address(args.addr, "--addr")
    refusal = ucarp_refusal(passphrase, [addr])
    if refusal:
        print(
            f"hafs ucarp: warning: stock ucarp peers will not interoperate: {refusal}",
            file=sys.stderr,
        )
    return AgentConfig(
        node=socket.gethostname(),
        interface=args.interface,
        srcip=_address(args.srcip, "--srcip"),
        passphrase=passphrase,
        vhids=(VhidEntry(args.vhid, (addr,), args.advbase, args.advskew),),
        preempt=args.preempt,
        event_command=(),
        control_socket=args.socket or f"/run/hafs/ucarp-{args.vhid}.sock",
    )


def _daemonize() -> None:
    """Detach like ucarp -B: fork twice, new session, stdio to /dev/null (logs to syslog)."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if os.path.exists("/dev/log"):
        from logging.handlers import SysLogHandler

        logging.getLogger().addHandler(SysLogHandler("/dev/log"))


def cmd_ucarp(args: argparse.Namespace) -> int:
    from hafs.carp.agent import UcarpScripts

    config = ucarp_config(args)
    scripts = UcarpScripts(
        up=args.upscript,
        down=args.downscript,
        xparam=args.xparam,
        neutral=args.neutral,
        shutdown=args.shutdown,
    )
    if args.daemonize:
        _daemonize()
    return start(
        config,
        args.log_level,
        scripts=scripts,
        manage_addresses=False,  # as with ucarp, the up/down scripts add and remove the VIP
        ignore_link_state=args.ignoreifstate,
    )


# --- the agent's view (hafs status) / hafs demote -------------------------------------------------


def _ago(since: float | None) -> str:
    if since is None:
        return "-"
    stamp = datetime.fromtimestamp(since).strftime("%H:%M:%S")
    return f"{stamp} ({time.time() - since:.0f}s ago)"


def format_demotion(demotion: dict[str, Any]) -> str:
    """``demotion 240 (holds resync=240: link em0 lost, since 12:00:01 (30s ago); links down
    em0)``."""
    causes, since = demotion["causes"], demotion.get("since", {})
    holds = [
        f"{name}={value}"
        + (f": {causes[name]}" if name in causes else "")
        + (f", since {_ago(since[name])}" if name in since else "")
        for name, value in sorted(demotion["holds"].items())
    ]
    parts = [
        f"operator {demotion['operator']}" if demotion["operator"] else "",
        f"holds {'; '.join(holds)}" if holds else "",
        f"links down {' '.join(demotion['links_down'])}" if demotion["links_down"] else "",
        f"send failing {' '.join(demotion['send_failing'])}" if demotion["send_failing"] else "",
    ]
    detail = ", ".join(p for p in parts if p)
    return f"demotion {demotion['total']}" + (f" ({detail})" if detail else "")


def format_status(status: dict[str, Any]) -> str:
    lines = [f"node {status['node']} (pid {status['pid']}): {format_demotion(status['demotion'])}"]
    vrrp = any("priority" in v for v in status["vhids"])
    rank = "PRIO" if vrrp else "SKEW"
    header = ("VHID", "IF", "STATE", "SINCE", "REASON", "MASTER", rank, "SENT", "RECV", "DROPS")
    key = "priority" if vrrp else "advskew"
    rows = []
    for v in status["vhids"]:
        master = v["master"]
        drops = ",".join(f"{k}={n}" for k, n in sorted(v["drops"].items())) or "0"
        configured, advertised = v[key], v[f"advertised_{'priority' if vrrp else 'skew'}"]
        rows.append(
            (
                str(v["vhid"]),
                v["interface"],
                v["state"],
                _ago(v["since"]),
                v["reason"] or "-",
                f"{master['source']}/{master[key]}" if master else "-",
                f"{configured}" + (f"->{advertised}" if advertised != configured else ""),
                str(v["adverts_sent"]),
                str(v["adverts_received"]),
                drops,
            )
        )
    lines.append(table(header, rows))
    for v in status["vhids"]:
        if v.get("moved"):
            moved = v["moved"]
            lines.append(
                f"vhid {v['vhid']}: moved to {moved['to']} ({key} {moved['value']}, "
                f"configured {moved['configured']}): {moved['cause']}"
            )
        for source in v["split_brain"]:
            lines.append(
                f"WARNING: vhid {v['vhid']}: split brain: {source} also claims to be "
                "master and does not step down"
            )
    if status["drops"]:
        drops = ", ".join(f"{k}: {n}" for k, n in sorted(status["drops"].items()))
        lines.append(f"dropped before any vhid: {drops}")
    return "\n".join(lines)


def demote_request(args: argparse.Namespace) -> dict[str, Any]:
    if args.hold is not None:
        return {"op": "demote", "hold": args.hold[0], "value": _integer(args.hold[1], "--hold")}
    if args.release is not None:
        return {"op": "demote", "hold": args.release, "value": 0}
    if args.set is not None:
        return {"op": "demote", "set": args.set}
    if args.change is not None:
        if args.change[:1] not in ("+", "-"):
            raise HafsError(f"CHANGE: {args.change!r}: write +N to add or -N to subtract")
        return {"op": "demote", "adjust": _integer(args.change, "CHANGE")}
    return {"op": "demote"}


def _integer(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise HafsError(f"{what}: {value!r} is not an integer") from None


def cmd_demote(args: argparse.Namespace) -> int:
    reply = control.request(args.socket, demote_request(args))
    demotion = reply["demotion"]
    print(json.dumps(demotion) if args.json else format_demotion(demotion))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the CARP agent (every vhid of this node in one process)",
        description="Run the Linux CARP agent: FreeBSD-compatible CARP for every vhid of "
        "the config, VIPs managed with netlink, hooks run asynchronously, control socket for "
        "hafs status/demote. SIGTERM as master bows out so backups take over at once; "
        "SIGHUP (--reload) re-executes it in place, keeping its VIPs: nothing moves.",
    )
    p.add_argument("--config", default="/etc/hafs/agent.toml", help="config file, mode 0600")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    p.add_argument(
        "--cleanup",
        action="store_true",
        help="remove this config's VIPs and virtual-MAC interfaces, then exit "
        "(systemd's ExecStopPost, after a crash)",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help="make the running agent re-execute itself (new code and config) keeping its "
        "VIPs and states, and wait for it; exit 1 if a vhid changed state (systemd's "
        "ExecReload)",
    )
    p.add_argument("--json", action="store_true", help="with --reload: print JSON")
    p.set_defaults(func=cmd_agent)

    _ucarp_parser(sub)

    p = sub.add_parser(
        "demote",
        help="show or change the node's CARP demotion",
        description="The demotion is added to every vhid's advertised skew (capped at 240): "
        "raise it to drain the node, lower it to let it take VIPs back. +N adds, -N "
        "subtracts; --hold NAME N keeps a named demotion (used by hooks while re-syncing) "
        "until --release NAME.",
    )
    p.add_argument("change", nargs="?", metavar="CHANGE", help="+N or -N")
    p.add_argument("--set", type=int, metavar="N", help="set the operator demotion to N")
    p.add_argument("--hold", nargs=2, metavar=("NAME", "N"), help="hold a named demotion")
    p.add_argument("--release", metavar="NAME", help="release a named demotion")
    p.add_argument("--show", action="store_true", help="only show (the default)")
    p.add_argument("--socket", default=agentconf.DEFAULT_CONTROL_SOCKET, help=SOCKET_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_demote)
