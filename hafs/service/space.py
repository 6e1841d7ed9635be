"""Room to work on a full pool: the shares never take the space that replication needs.

Measured on zfs-fuse (pool version 23), which keeps no slop space of its own (OpenZFS keeps
3.2% for this): once clients have written the pool's last byte, ``zfs snapshot``, ``zfs set``
and ``zfs rollback`` fail "out of space", so the writes acknowledged before that never reach
a backup, and the node can neither step down cleanly nor take over. A ``quota`` on the
parent ``<pool>/hafs`` would not do: at it, a client can delete nothing (``rm`` fails with
EDQUOT) and a kept-aside clone gets no mountpoint directory. What works is a ``refquota``
(live data only, snapshots not counted) on the dataset being served:

- clients get DISK_FULL at the limit, and can still delete (the snapshots keep those blocks
  until retention drops them, so the space comes back within ``keep_snapshots`` intervals);
- the pool keeps :func:`Space.headroom` free for snapshots, sends, receives and rollbacks,
  and :func:`Space.diverged_budget` for kept-aside copies
  (:func:`hafs.service.divergence.check_budget` refuses a new one beyond it);
- the limit is the served VIP's part of the rest: every carrier must hold a replica of every
  VIP it carries, so no VIP may grow past what a node has for each of them;
- a replica carries no limit (a receive beyond a refquota fails "out of space": the holder
  decides what the data is, never the backup): the takeover sets it, the step-down clears it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hafs.service.config import VipService
from hafs.service.zfs import Zfs

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

HEADROOM = 0.05  # of the pool: never written by clients
HEADROOM_MIN = 16 << 20  # bytes: a few snapshots' and a rollback's metadata on a small pool
DIVERGED_BUDGET = 0.20  # of the pool: for kept-aside copies


@dataclass(frozen=True)
class Space:
    """A pool's space: ``size`` (used + available of its root dataset) and ``free``."""

    size: int
    free: int

    @property
    def headroom(self) -> int:
        return max(HEADROOM_MIN, int(self.size * HEADROOM))

    @property
    def diverged_budget(self) -> int:
        return int(self.size * DIVERGED_BUDGET)

    def share_limit(self, vips: int) -> int:
        """What one of ``vips`` VIPs may hold: the pool, less headroom and the budget."""
        return max(0, self.size - self.headroom - self.diverged_budget) // max(1, vips)

    def as_dict(self) -> dict[str, int]:
        return {
            "size": self.size,
            "free": self.free,
            "headroom": self.headroom,
            "diverged_budget": self.diverged_budget,
        }

    @property
    def low(self) -> bool:
        """Less free than half the headroom: something outside the limits fills the pool."""
        return self.free < self.headroom // 2


def mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


def of_pool(zfs: Zfs, pool: str) -> Space:
    used, available = (int(value) for value in zfs.values(pool, "used", "available"))
    return Space(size=used + available, free=available)


def limit(services: NodeServices, vip: VipService) -> int:
    """Set the served dataset's ``refquota`` to its part of the pool (never below what it
    already holds: zfs refuses that; its clients then get DISK_FULL until they delete).
    Returns the limit set."""
    zfs, dataset = services.zfs, services.dataset(vip)
    share = of_pool(zfs, services.config.pool).share_limit(len(services.config.vips))
    value = max(share, int(zfs.get(dataset, "referenced")))
    zfs.set(dataset, "refquota", str(value))
    return value


def unlimit(services: NodeServices, vip: VipService) -> None:
    """A replica takes whatever its holder sends: no limit of its own."""
    services.zfs.set(services.dataset(vip), "refquota", "none")
