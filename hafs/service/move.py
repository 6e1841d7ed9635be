"""``hafs move VIP NODE``: a planned move of one VIP to one chosen carrier, losing nothing.

A node-wide demotion (``hafs drain``) sends all of a node's VIPs to their best backups; a
move picks one VIP and one node, so it changes that VIP's ranks instead: on every carrier,
the vhid's advskew (VRRPv3: priority, 254 - advskew) is set at run time so that NODE is the
best and the others keep their order behind it (:func:`ranks`: the layout's own values, in
the new order). Each carrier keeps its rank where its CARP daemon does:

- Linux: ``hafs agent`` (its control socket's ``move``; kept in agent.toml's
  ``state_file`` across restarts, shown by ``hafs status``);
- FreeBSD: the kernel, with ``ifconfig <if> vhid N advskew X`` (VRRPv3: ``vrrpprio P``)
  (:func:`freebsd_argv`), and :data:`FREEBSD_MOVES` for ``hafs cluster status``; a reboot
  or ``service netif restart`` brings back rc.conf's ranks (not run here: no FreeBSD);
- ucarp: no run-time priority change: a move is refused before anything changes.

The move runs on the VIP's holder, in an order that never lets a third node take the VIP:

1. the other carriers (neither the holder nor NODE) take their new ranks, which are never
   better than the holder's: a refusal (ucarp, a node that does not answer) stops the move
   here, and those that changed go back;
2. NODE takes its new rank first when that cannot make it preempt the holder yet (CARP: it
   ties the holder's 0, and a tie does not preempt); VRRPv3 breaks ties by address, so
   there NODE changes only after step 3;
3. the holder sends NODE what it has while it still serves (its service daemon starts no
   send of the VIP from now on, so the last one waits for none), then seals the VIP as a
   drain does (:func:`hafs.service.drain.seal`: record the SMB clients, step down, send
   the last writes, here to NODE only) and NODE must have them; the other carriers get
   them from NODE's first round;
4. the holder falls just behind NODE (still ahead of the others, who must not preempt it:
   each would take and announce the VIP for a moment): it re-advertises at once, NODE
   preempts, and NODE's takeover serves the sealed snapshot (nothing to pull); the holder
   then takes its rank in the new order;
5. the move waits until NODE serves. If it does not, every rank goes back, and the holder
   serves again.

Moving a VIP to its home clears the ranks: every carrier is back at its configured one. The
VIP stays on NODE (no preemption back home) until moved again, also across restarts of the
agents. A returning node's resync (:meth:`hafs.service.daemon.ServiceDaemon.resync`) follows
the moved order, so it does not take back a VIP moved away from it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hafs.carp import control
from hafs.cluster import VRRP_TOP
from hafs.errors import HafsError
from hafs.service import host, replication
from hafs.service.config import ServiceConfig, VipService
from hafs.service.drain import seal
from hafs.service.node import NodeServices
from hafs.service.runtime import RUN_DIR, ServiceError
from hafs.service.zfs import ZfsError

log = logging.getLogger("hafs.service")

FREEBSD_MOVES = RUN_DIR / "moved.json"  # FreeBSD: the kernel's moves (gone at boot, as they)
ASK_TIMEOUT = 10.0  # a peer's ssh login and Python start, under load
SETTLE = 15.0  # seconds for NODE to serve once it outranks the holder


def order(vip: VipService, to: str) -> list[str]:
    """The carriers in takeover order once ``vip`` is moved to ``to``: ``to`` first, the
    others in their configured order (moved home: the configured order)."""
    if to == vip.home:
        return list(vip.carriers)
    return [to, *(n for n in vip.carriers if n != to)]


def ranks(vip: VipService, to: str) -> dict[str, int]:
    """Each carrier's advskew once ``vip`` is moved to ``to``: the layout's advskews, handed
    out in the new order (so no new value, and no tie the layout did not have)."""
    if set(vip.advskew) != set(vip.carriers):
        raise ServiceError(
            f"{vip.name}: cluster.json has no advskew per carrier: render it again "
            "(`hafs render NODE cluster.json`, or deploy)"
        )
    if to == vip.home:
        return dict(vip.advskew)
    return dict(zip(order(vip, to), sorted(vip.advskew.values()), strict=True))


def rank_value(config: ServiceConfig, vip: VipService, node: str, to: str) -> int:
    """``node``'s rank of ``vip`` moved to ``to``, in the protocol's words: the advskew
    (CARP) or the VRRPv3 priority (254 - advskew, as the inventory renders it)."""
    skew = ranks(vip, to)[node]
    return VRRP_TOP - skew if config.protocol == "vrrp3" else skew


def freebsd_argv(config: ServiceConfig, vip: VipService, value: int) -> list[str]:
    """The run-time rank change on FreeBSD's kernel CARP (ifconfig(8), carp(4))."""
    if config.interface is None:
        raise ServiceError("cluster.json names no interface: render it again")
    setting = "vrrpprio" if config.protocol == "vrrp3" else "advskew"
    return ["ifconfig", config.interface, "vhid", str(vip.vhid), setting, str(value)]


def home_hint(vip: VipService) -> str:
    return f"`hafs move {vip.name} {vip.home}` brings it home"


def moved(services: NodeServices) -> dict[str, str]:
    """VIP name -> the node it is moved to, as this node's CARP daemon has it (a VIP at its
    configured ranks is absent). An agent that does not answer: none."""
    config = services.config
    if config.agent_socket is None:
        try:
            found = json.loads(FREEBSD_MOVES.read_text()) if host.FREEBSD else {}
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
    try:
        status = control.request(config.agent_socket, {"op": "status"})
    except control.ControlError:
        return {}
    names = {v.vhid: v.name for v in config.vips}
    return {
        names[v["vhid"]]: v["moved"]["to"]
        for v in status["vhids"]
        if v.get("moved") and v["vhid"] in names
    }


def prefer(services: NodeServices, vip: VipService, to: str, handing: bool = False) -> None:
    """Give this node its rank of ``vip`` moved to ``to`` (its home: the configured rank).

    ``handing``: the holder's rank while it hands the VIP to ``to``: just behind ``to``,
    ahead of every other carrier, so that only ``to`` preempts it. At its final rank every
    backup that outranks it would preempt it, the best first (each waits its skew time),
    and ``to`` need not be the best."""
    config = services.config
    if to not in vip.carriers:
        raise HafsError(
            f"{to} does not carry {vip.name}: its carriers are {', '.join(vip.carriers)}"
        )
    value = rank_value(config, vip, config.node, to)
    if handing:
        skew = ranks(vip, to)[to] + 1
        value = VRRP_TOP - skew if config.protocol == "vrrp3" else skew
    if config.agent_socket is not None:
        request: dict[str, Any] = {"op": "move", "vhid": vip.vhid}
        if to != vip.home or handing:
            what = f"being moved to {to}" if handing else "moved by `hafs move`"
            cause = f"{what}; {home_hint(vip)}"
            request.update({"to": to, "value": value, "cause": cause})
        control.request(config.agent_socket, request)
    elif host.FREEBSD:
        argv = freebsd_argv(config, vip, value)
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServiceError(f"{' '.join(argv)}: {done.stderr.strip()}")
        moves = {k: v for k, v in moved(services).items() if k != vip.name}
        if to != vip.home:
            moves[vip.name] = to
        FREEBSD_MOVES.parent.mkdir(parents=True, exist_ok=True)
        tmp = FREEBSD_MOVES.with_suffix(".tmp")
        tmp.write_text(json.dumps(moves))
        tmp.replace(FREEBSD_MOVES)
    else:
        _no_rank(config, vip)
    log.info(
        "%s: rank %d here (%s)", vip.name, value, f"moved to {to}" if to != vip.home else "home"
    )


def _no_rank(config: ServiceConfig, vip: VipService) -> None:
    raise ServiceError(
        f"{config.node}: its CARP daemon (ucarp) cannot change a vhid's priority at run "
        f"time, so {vip.name} cannot be moved to one chosen node (`hafs drain` moves all)"
    )


def check(services: NodeServices, name: str, to: str) -> VipService:
    """The VIP to move, after the usage checks (one line each, exit 2): a VIP this node
    carries, a known node that carries it too, not its holder, and this node the holder."""
    config = services.config
    vip = next((v for v in config.vips if v.name == name), None)
    if vip is None:
        carried = ", ".join(v.name for v in config.vips) or "none"
        raise HafsError(f"VIP {name!r}: not carried by {config.node} (it carries: {carried})")
    nodes = [config.node, *config.peers]
    if to not in nodes:
        raise HafsError(f"NODE {to!r}: not in the cluster: use one of {', '.join(sorted(nodes))}")
    if to not in vip.carriers:
        raise HafsError(
            f"NODE {to!r} does not carry {vip.name}: move it to one of {', '.join(vip.carriers)}"
        )
    if services.holds(vip):
        if to == config.node:
            raise HafsError(f"{vip.name}: already on {to}: nothing to move")
        return vip
    holders = [
        peer
        for peer in vip.carriers
        if peer in config.peers
        and vip.name in services.remote(peer, ["held"], ASK_TIMEOUT).stdout.split()
    ]
    if to in holders:
        raise HafsError(f"{vip.name}: already on {to}: nothing to move")
    if not holders:
        raise ServiceError(f"{vip.name}: held by no node that answers: nothing to move")
    raise HafsError(f"{vip.name}: held by {holders[0]}: run `hafs move {name} {to}` there")


def move(services: NodeServices, name: str, to: str, progress: Callable[[str], None]) -> float:
    """Move VIP ``name`` from this node (its holder) to ``to`` (see the module); the seconds
    it was not served (from its step-down here until ``to`` served it)."""
    vip = check(services, name, to)
    config = services.config
    if config.agent_socket is None and not host.FREEBSD:
        _no_rank(config, vip)  # before anything changes
    before = moved(services).get(vip.name, vip.home)  # the order in force: undone to this
    mine = ranks(vip, before)[config.node]
    early = config.protocol == "carp" and mine <= ranks(vip, to)[to] and not _demoted(services)
    first = [n for n in vip.carriers if n not in (config.node, to)] + ([to] if early else [])
    done: list[str] = []
    with ThreadPoolExecutor(max(1, len(first))) as pool:  # all at once: ssh, a Python each
        asked = {node: pool.submit(_prefer_on, services, node, vip, to) for node in first}
    failed = {}
    for node, future in asked.items():
        if future.exception() is None:
            done.append(node)
        else:
            failed[node] = str(future.exception())
    if failed:
        _undo(services, vip, before, done)
        names = sorted(failed)
        more = f"; {', '.join(names[1:])} refused too" if names[1:] else ""
        raise ServiceError(f"{vip.name}: not moved: {failed[names[0]]}{more}")
    progress(f"{vip.name}: ranks set on {', '.join(first) or 'no other carrier'}")
    replication.mark_handover(vip)  # this node's service daemon starts no send of it now
    services.replicate(vip, record_clients=False, urgent=True, to=to)  # while it serves: the
    began = time.monotonic()  # last one, once it stopped, is small and waits for no other
    try:
        report = seal(services, vip, "move", to)
    except (ServiceError, ZfsError, OSError, subprocess.SubprocessError) as exc:
        _undo(services, vip, before, done)
        services.takeover(vip)
        raise ServiceError(f"{vip.name}: not moved: {exc}: served here again") from None
    if not report.get(to, {}).get("ok"):
        _undo(services, vip, before, done)
        services.takeover(vip)
        why = report.get(to, {}).get("error", "not sent")
        raise ServiceError(
            f"{vip.name}: not moved: {to} lacks its last writes ({why}): served here again"
        )
    progress(
        f"{vip.name}: stopped serving, its last writes on {to} ({time.monotonic() - began:.1f}s)"
    )
    try:
        if not early:
            _prefer_on(services, to, vip, to)
            done.append(to)
        done.append(config.node)
        prefer(services, vip, to, handing=True)  # only ``to`` outranks this node
        progress(f"{vip.name}: {to} outranks this node now ({time.monotonic() - began:.1f}s)")
        _wait_served(services, vip, to, began, progress)
    except HafsError as exc:
        _undo(services, vip, before, done)
        if services.holds(vip):
            services.takeover(vip)
        raise ServiceError(f"{vip.name}: not moved: {exc}; ranks back as they were") from None
    took = time.monotonic() - began
    replication.clear_handover(vip)
    try:
        prefer(services, vip, to)  # a backup now: its rank in the new order
    except HafsError as exc:  # still behind ``to``: the VIP stays there
        progress(f"{vip.name}: this node stays just behind {to}, ahead of the others: {exc}")
    return took


def _demoted(services: NodeServices) -> bool:
    """Does this node advertise worse than its configured ranks (a demotion), or not know?"""
    if services.config.agent_socket is None:
        return True
    try:
        status = control.request(services.config.agent_socket, {"op": "status"})
    except control.ControlError:
        return True
    return bool(status["demotion"]["total"])


def _prefer_on(services: NodeServices, node: str, vip: VipService, to: str) -> None:
    """:func:`prefer` on ``node``: here, or over ssh (``hafs service prefer``)."""
    if node == services.config.node:
        prefer(services, vip, to)
        return
    answer = services.remote(node, ["prefer", vip.name, to], ASK_TIMEOUT)
    if answer.returncode != 0:
        said = answer.stderr.strip().splitlines()[-1:] or [f"exit status {answer.returncode}"]
        why = said[0].removeprefix("hafs: ").removeprefix("error: ")
        raise ServiceError(why if why.startswith(f"{node}: ") else f"{node}: {why}")


def _undo(services: NodeServices, vip: VipService, before: str, nodes: list[str]) -> None:
    for node in reversed(nodes):
        try:
            _prefer_on(services, node, vip, before)
        except HafsError as exc:
            log.error("%s: rank on %s not set back: %s", vip.name, node, exc)


def _wait_served(
    services: NodeServices,
    vip: VipService,
    to: str,
    began: float,
    progress: Callable[[str], None],
) -> None:
    """Until ``to`` serves ``vip`` (its takeover ran), within :data:`SETTLE` seconds."""
    deadline = time.monotonic() + SETTLE
    while services.holds(vip):
        if time.monotonic() > deadline:
            raise ServiceError(f"{to} did not take {vip.name} over within {SETTLE:.0f}s")
        time.sleep(0.05)
    progress(f"{vip.name}: on {to} now ({time.monotonic() - began:.1f}s), waiting for its smbd")
    while True:
        answer = services.remote(to, ["report"], ASK_TIMEOUT)
        try:
            report = json.loads(answer.stdout) if answer.returncode == 0 else {}
        except ValueError:
            report = {}
        if vip.name in report.get("serving", ()):
            return
        if time.monotonic() > deadline:
            raise ServiceError(f"{to} does not serve {vip.name} after {SETTLE:.0f}s")
        time.sleep(0.2)
