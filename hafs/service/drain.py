"""Maintenance: ``hafs drain`` hands every VIP this node serves to its backups without losing
an acknowledged write, and keeps the node out of the way; ``hafs undrain`` brings it back.

Drain, per VIP this node holds: record its SMB clients (the new holder tickles them), mark
the handover (this node's service daemon then leaves the VIP alone), step down (stop smbd,
seal the last writes as the newest snapshot) and send that snapshot to every backup. Only
when every backup that is alive (a quorum member) has it, the node raises its ``drain``
hold: its adverts fall behind every backup's, the best one preempts, and its takeover serves
the sealed snapshot (nothing to pull: it has the newest copy). A backup that missed it
could take over with older data: then nothing is drained, and every VIP stepped down is
served here again.

Undrain raises the ``resync`` hold before it drops ``drain``: the node comes back as from a
reboot, pulls what changed meanwhile, and the VIPs it is home of come home by the handback
(:meth:`hafs.service.daemon.ServiceDaemon.resync`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hafs.holds import DRAIN_HOLD, HOLD_DEMOTION, RESYNC_HOLD
from hafs.service import demotion, membership, replication
from hafs.service.config import VipService
from hafs.service.node import NodeServices
from hafs.service.runtime import ServiceError

log = logging.getLogger("hafs.service")


def _demotion(services: NodeServices) -> demotion.Demotion:
    node_demotion = demotion.for_node(services.config.agent_socket)
    if node_demotion is None:
        raise ServiceError("this node's CARP daemon takes no demotion holds (ucarp?)")
    return node_demotion


def seal(
    services: NodeServices, vip: VipService, action: str, to: str | None = None
) -> dict[str, dict[str, Any]]:
    """Stop serving ``vip`` here without losing a write (drain, move): record its SMB
    clients (the new holder tickles them), mark the handover (this node's service daemon
    then leaves the VIP alone), step down (stop smbd, seal the last writes as the newest
    snapshot) and send that snapshot to every other carrier (``to``: to that one), urgently
    (the clients wait): the send report, per peer."""
    services.record_connections(vip)
    replication.mark_handover(vip)
    services.stepdown(vip, action)
    return services.replicate(vip, record_clients=False, urgent=True, to=to)


def drain(services: NodeServices, progress: Callable[[str], None]) -> list[str]:
    """Hand every VIP held here to its backups, then hold the node back; the VIPs moved."""
    node_demotion = _demotion(services)
    verdict = membership.read_verdict()
    alive = set(verdict["members"]) if verdict and "members" in verdict else None
    moved = []
    for vip in services.config.vips:
        if not services.holds(vip):
            continue
        began = time.monotonic()
        moved.append(vip)
        report = seal(services, vip, "drain")
        missed = [
            f"{peer} ({item.get('error', '?')})"
            for peer, item in sorted(report.items())
            if not item["ok"] and (alive is None or peer in alive)
        ]
        if missed:
            for back in moved:  # a backup without the last writes must not take over
                services.takeover(back)
            raise ServiceError(
                f"{vip.name}: not drained: {', '.join(missed)} lacks its last writes; "
                f"{', '.join(v.name for v in moved)} served here again"
            )
        progress(
            f"{vip.name}: stopped serving, its last writes on every backup "
            f"({time.monotonic() - began:.1f}s)"
        )
    node_demotion.hold(DRAIN_HOLD, HOLD_DEMOTION, "drained: `hafs undrain` brings it back")
    if DRAIN_HOLD not in (node_demotion.holds() or {}):
        for back in moved:
            services.takeover(back)
        raise ServiceError("not drained: the CARP daemon did not take the drain hold")
    return [v.name for v in moved]


def undrain(services: NodeServices) -> None:
    """Back as from a reboot: resync first, then the VIPs this node is home of come home."""
    node_demotion = _demotion(services)
    node_demotion.hold(RESYNC_HOLD, HOLD_DEMOTION, "undrained: pulls what changed first")
    node_demotion.hold(DRAIN_HOLD, 0)
    holds = node_demotion.holds()
    if holds is None or DRAIN_HOLD in holds:
        raise ServiceError("still drained: the CARP daemon did not drop the drain hold")
