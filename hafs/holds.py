"""The named demotion holds: what each one means, who raises it and who releases it.

A hold is a named amount added to every vhid's advertised skew of a node: the node keeps out
of the way without forgetting why. On Linux the CARP agent keeps the holds (``hafs demote
--hold``, its control socket); on FreeBSD the kernel has one counter and
:mod:`hafs.service.demotion` keeps the names. The CARP agent (hafs/carp) and the service
daemon (hafs/service) both speak these names, so they live here, above both layers, and
this module imports nothing: the service daemon runs on FreeBSD too, where the agent's
netlink code (pyroute2) has no business.

- ``resync``: the node may have missed writes (back from boot, a lost link, a stalled agent,
  silent peers, a sick pool or a minority). The agent raises it on Linux; on FreeBSD
  ``rc.d/hafs_demote`` at boot and devd at link loss (``hafs service hold resync 240``). The
  service daemon releases it once its replicas are in sync and the holders handed over.
- ``quorum``: the node hears fewer than a majority; the service daemon raises and releases it.
- ``pool-unhealthy``: the pool does not answer or cannot write (:mod:`hafs.service.health`).
- ``smb-<vip>``: the VIP's smbd does not start; released when it starts again.
- ``drain``: an operator took the node out of service (``hafs drain``, after its VIPs were
  handed over); ``hafs undrain`` releases it, behind a ``resync`` hold.

Every hold hafs raises is :data:`HOLD_DEMOTION`: added to any advskew, CARP advertises its
cap (240): a held node cannot preempt.
"""

RESYNC_HOLD = "resync"
QUORUM_HOLD = "quorum"
POOL_HOLD = "pool-unhealthy"
DRAIN_HOLD = "drain"
HOLD_DEMOTION = 240  # CARP advertises advskew + demotion capped at 240


def smbd_hold(vip_name: str) -> str:
    """The hold of a VIP whose smbd does not start."""
    return f"smb-{vip_name}"
