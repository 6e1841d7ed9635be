"""Takeover (MASTER) and step-down (BACKUP/INIT): ordered steps, each timed and logged.

Takeover, in order: on a node in a minority (no quorum, :mod:`hafs.service.membership`),
nothing: it refuses. On a node that holds the "resync" demotion (it came back: boot, link,
stalled agent), first the gate of the rule "the newest copy serves": if a reachable carrier
serves the VIP or has a snapshot this node lacks, refuse (the hook fails, the node keeps its
hold and steps down when the other master's adverts win; its service daemon pulls the delta).
FreeBSD's kernel may preempt before userland has raised the hold; this gate is what stops
it there. Then fence the old holder (asked in the background; it never delays service),
roll the replica back to its newest complete snapshot (also the only way zfs-fuse drops pages
cached before a receive; never a dataset served here last, whose head is newer; not after a
handback whose home remounted its replica before the final receive), check that
it is mounted (:mod:`hafs.service.mounts`: never serve the directory underneath), make it
writable and mark it served, start smbd, announce (tickle ACKs to the old holder's clients,
so they reconnect at once), limit the shares to their part of the pool
(:mod:`hafs.service.space`: a full share never stops replication), then wait for the fence
answers. A takeover runs at a higher CPU priority (:func:`~hafs.service.runtime.urgent`,
nice -5, and smbd with it) than the node's other work; replication runs at nice 10.

Step-down: stop smbd and its samba-dcerpcd (when the address is already gone, a split
brain's loser, tickle the clients it had: the winner never knew them), seal what was served
(a snapshot, so no later rollback or receive can lose it) and leave the dataset a read-only
replica with no limit (a replica takes whatever its holder sends). Both are idempotent, and
both run under the VIP's lock (one operation of a VIP at a time on a node).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hafs.carp import control
from hafs.holds import RESYNC_HOLD
from hafs.service import (
    announce,
    demotion,
    divergence,
    host,
    membership,
    mounts,
    replication,
    space,
)
from hafs.service.config import VipService
from hafs.service.runtime import RUN_DIR, ServiceError, step, urgent

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

FENCE_TIMEOUT = 1.0  # a live peer on the LAN answers well within it
GATE_TIMEOUT = 5.0  # ssh's connect timeout and a remote python's start, with room


def takeover(
    services: NodeServices, vip: VipService, previous_master: str | None = None, fresh: bool = False
) -> None:
    """Serve the VIP here. ``previous_master``: the address of the node the CARP daemon
    took the VIP over from, if it knows (the one to fence); else every other carrier.
    ``fresh``: this node's daemon has just received the newest snapshot into the replica,
    remounted before that receive, and nothing read it since (a handback:
    :meth:`ServiceDaemon.resync`): no rollback is needed to drop cached pages, and no look at
    how it was left (an interrupted keep-aside, served here last) while the clients wait."""
    node = services.config.node
    with urgent(), services.locked(vip, abort_receive=True):
        if services.smbd_pid(vip) is not None and services.writable(vip):
            log.info("%s takeover: already serving", vip.name)
            return
        if not services.holds(vip):  # lost it again before this hook ran: BACKUP follows
            log.info("%s takeover: the VIP is no longer here: nothing to do", vip.name)
            return
        log.info("%s takeover: begins on %s", vip.name, node)
        rec = Record()
        try:
            serve(services, vip, previous_master, fresh, rec)
        except Exception as exc:  # said by the hook's caller; recorded for the drill
            rec.error = str(exc) or type(exc).__name__
            rec.write(services, vip)
            raise
        replication.clear_handover(vip)
        log.info("%s takeover: serving on %s", vip.name, node)
        rec.write(services, vip)


def serve(
    services: NodeServices, vip: VipService, previous_master: str | None, fresh: bool, rec: Record
) -> None:
    """The takeover's steps, under the VIP's lock, each timed into ``rec``."""
    times = rec.steps
    verdict = membership.read_verdict()
    if verdict is not None and not verdict["quorate"]:
        raise ServiceError(f"{vip.name}: not serving: no quorum ({verdict['reason']})")
    if resyncing(services):  # came back (boot, link, stall): the newest copy serves
        with step(vip, "takeover", "check that no reachable carrier has newer data", times):
            newer = newer_elsewhere(services, vip)
        if newer is not None:
            raise ServiceError(
                f"{vip.name}: not serving: {newer}; this node keeps its resync hold, "
                "steps down and pulls the delta first"
            )
    with ThreadPoolExecutor(max(1, len(vip.carriers))) as pool:
        # fencing starts first and never delays service: the old holder lost the VIP
        # (its smbd is bound to an address it no longer has); fencing stops its writes
        fencing = fence_peers(services, vip, previous_master, pool)
        if fresh:  # its newest snapshot, received by this node's daemon, nothing cached
            log.info("%s takeover: received into a remounted replica: no rollback", vip.name)
        else:
            with step(vip, "takeover", "roll back to the newest snapshot", times):
                rollback_or_provision(services, vip)
        with step(vip, "takeover", "check that the dataset is mounted", times):
            mounts.ensure_mounted(services, vip)
        with step(vip, "takeover", "make the dataset writable", times):
            services.zfs.set(services.dataset(vip), "readonly", "off")
            divergence.mark_served(services, vip)
        with step(vip, "takeover", "start smbd", times):
            services.start_smbd(vip)
        with step(vip, "takeover", "announce (tickle ACKs)", times):
            services.tickle(vip)
        rec.served, rec.serving = time.time(), len(times)
        rec.write(services, vip)  # the drill reads it from now on
        if fresh:  # after the clients' return: retention runs no sooner than the next round
            with step(vip, "takeover", "keep a base for every carrier", times):
                replication.keep_bases_at_takeover(services, vip)
        with step(vip, "takeover", "limit the shares to their part of the pool", times):
            services.limit(vip)
        with step(vip, "takeover", "fence the other carriers", times):
            fenced(vip, fencing)


@dataclass
class Record:
    """Where a takeover's time went, for ``hafs verify --failover`` (the drill splits its RTO
    with it) and the metrics: written to ``<vip>.takeover.json`` when the clients are served,
    at the end, and when it fails (``error``); never fails the takeover itself."""

    began: float = field(default_factory=time.time)  # wall clock, as the agent's "since"
    steps: list[tuple[str, float]] = field(default_factory=list)  # each step's seconds
    served: float | None = None  # smbd started and the clients told
    serving: int = 0  # how many of the steps came before that
    error: str | None = None

    def write(self, services: NodeServices, vip: VipService) -> None:
        """Also asks the agent when it made this node master (None under FreeBSD's kernel
        CARP, which does not say)."""
        master = None
        if services.config.agent_socket is not None:
            with contextlib.suppress(control.ControlError, KeyError, TypeError, StopIteration):
                status = control.request(services.config.agent_socket, {"op": "status"})
                master = next(v["since"] for v in status["vhids"] if v["vhid"] == vip.vhid)
        before = self.serving if self.served is not None else len(self.steps)
        done = {
            "node": services.config.node,
            "master": master,
            "began": self.began,
            "served": self.served,
            "steps": [[name, seconds] for name, seconds in self.steps[:before]],
            "after": [[name, seconds] for name, seconds in self.steps[before:]],
            "error": self.error,
        }
        path = RUN_DIR / f"{vip.name}.takeover.json"
        with contextlib.suppress(OSError):
            path.with_suffix(".tmp").write_text(json.dumps(done))
            path.with_suffix(".tmp").replace(path)


def records(vips: Sequence[VipService]) -> dict[str, dict[str, Any]]:
    """The last takeover record (:class:`Record`) of each of ``vips`` this node has."""
    found = {}
    for vip in vips:
        with contextlib.suppress(OSError, ValueError):
            found[vip.name] = json.loads((RUN_DIR / f"{vip.name}.takeover.json").read_text())
    return found


def resyncing(services: NodeServices) -> bool:
    """Does this node hold the "resync" demotion (it may have missed writes)?"""
    node_demotion = demotion.for_node(services.config.agent_socket)
    holds = node_demotion.holds() if node_demotion else None
    return bool(holds and RESYNC_HOLD in holds)


def newer_elsewhere(services: NodeServices, vip: VipService) -> str | None:
    """Why a reachable carrier's copy of the VIP is newer than this node's, or None.

    Newer: it serves the VIP now, or it has a snapshot this node lacks (snapshot names are
    unique per cluster: a UTC time to the microsecond, taken by the one holder). A carrier
    that does not answer within :data:`GATE_TIMEOUT` is not reachable: it counts for nothing.
    """
    zfs, dataset, config = services.zfs, services.dataset(vip), services.config
    ours = {s.name for s in zfs.snapshots(dataset)} if zfs.exists(dataset) else set()
    peers = [p for p in vip.carriers if p != config.node and p in config.peers]
    with ThreadPoolExecutor(max(1, 2 * len(peers))) as pool:
        asked = {
            p: (
                pool.submit(services.remote, p, ["held"], GATE_TIMEOUT),
                pool.submit(services.remote, p, ["snapshots", vip.name], GATE_TIMEOUT),
            )
            for p in peers
        }
    for peer, (held, listed) in asked.items():
        if held.result().returncode == 0 and vip.name in held.result().stdout.split():
            return f"{peer} serves it"
        theirs = listed.result().stdout.split() if listed.result().returncode == 0 else []
        if theirs and theirs[-1] not in ours:
            return f"{peer} has @{theirs[-1]}, which this node lacks"
    return None


def stepdown(services: NodeServices, vip: VipService, action: str = "step-down") -> None:
    with services.locked(vip):
        if not services.zfs.exists(services.dataset(vip)):
            return
        # the address is gone (lost to another master): its clients must find the new one
        clients = [] if host.holds(vip.address, vip.vhid) else host.smb_clients(vip.address)
        with step(vip, action, "stop smbd"):
            services.stop_smbd(vip)
        if clients:
            with step(vip, action, f"tickle its {len(clients)} client connection(s)"):
                announce.send_tickles(vip.address, clients)
        with step(vip, action, "seal: snapshot what was served"):
            divergence.seal(services, vip, action)
        with step(vip, action, "make the dataset a read-only replica, with no limit"):
            space.unlimit(services, vip)
            services.zfs.set(services.dataset(vip), "readonly", "on")


def fence_peers(
    services: NodeServices, vip: VipService, previous_master: str | None, pool: ThreadPoolExecutor
) -> dict[str, Future[Any]]:
    """Ask the old holder to stop serving the VIP (it may still be); when it is not known,
    every other carrier. Fewer requests: less CPU taken from the takeover itself."""
    config = services.config
    peers = [p for p in vip.carriers if p != config.node and p in config.peers]
    old = [p for p in peers if str(config.peers[p]) == previous_master]
    return {
        p: pool.submit(services.remote, p, ["fence", vip.name], FENCE_TIMEOUT)
        for p in (old or peers)
    }


def fenced(vip: VipService, fencing: dict[str, Future[Any]]) -> None:
    """Wait for the fence requests, FENCE_TIMEOUT at most: a dead node answers nothing."""
    done, _ = wait(fencing.values(), timeout=FENCE_TIMEOUT)
    for peer, future in fencing.items():
        ok = future in done and future.result().returncode == 0
        log.info("%s takeover: fence %s: %s", vip.name, peer, "fenced" if ok else "no answer")


def rollback_or_provision(services: NodeServices, vip: VipService) -> None:
    zfs, dataset, node = services.zfs, services.dataset(vip), services.config.node
    divergence.finish_interrupted(services, vip)  # an aborted receive may have cut one short
    if not zfs.exists(dataset):
        if vip.home != node:
            # an empty share in place of data that exists elsewhere: clients would write
            # into it, and a later receive would have to put their writes aside
            raise ServiceError(
                f"{vip.name}: no replica on {node} (none was ever received): "
                f"not serving an empty share in its place; its home {vip.home} serves it"
            )
        log.info("%s takeover: no dataset yet on its home: creating it, empty", vip.name)
        zfs.create(dataset, {"atime": "off"})  # a read is no change (divergence.seal)
        return
    if divergence.was_served(services, vip):
        # served here until now (smbd died, a restart, a crash): the head holds the newest
        # writes, which a rollback would destroy; nothing was received over them
        log.info("%s takeover: served here last: keeping the head, no rollback", vip.name)
        return
    snapshots = zfs.snapshots(dataset)
    if not snapshots:
        return
    zfs.rollback(snapshots[-1].full_name)  # the newest: destroys no snapshot
    log.info("%s takeover: rolled back to %s", vip.name, snapshots[-1].name)
    replication.keep_bases_at_takeover(services, vip)
