"""The holder's health gate, every round of the service daemon (TrueNAS's "disabled reasons").

A node whose pool does not answer (its ZFS daemon died: zfs-fuse) or is not ONLINE/DEGRADED
(FAULTED, SUSPENDED, UNAVAIL: writes fail) cannot serve: the daemon stops every smbd of the
node at once (they serve nothing but errors) and raises the demotion hold "pool-unhealthy"
(:mod:`hafs.holds`), so a backup with the newest replica takes its VIPs over. When the pool
answers again, the hold goes and the "resync" hold comes (its replicas missed every send
meanwhile): the usual resync and handback follow, with no hand.
"""

from __future__ import annotations

from hafs.service.zfs import Zfs, ZfsError

SERVING = ("ONLINE", "DEGRADED")  # a degraded pool still reads and writes
PROBE_TIMEOUT = 10.0  # seconds: a pool that takes longer to answer is not answering


def pool_problem(zfs: Zfs, pool: str) -> str | None:
    """Why ``pool`` cannot serve, or None when it can."""
    try:
        health = zfs.pool_health(pool, PROBE_TIMEOUT)
    except ZfsError as exc:
        return f"pool {pool} does not answer: {exc.message}"
    if health not in SERVING:
        return f"pool {pool} is {health}"
    return None
