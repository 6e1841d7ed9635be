"""A VIP is served from its mounted dataset, never from the directory underneath.

A dataset can be left unmounted while the pool runs: measured on zfs-fuse, a ``zfs recv``
process killed after the stream arrived (a takeover aborting a full receive, a holder dying
mid-send) leaves the received dataset in place but not mounted; an interrupted keep-aside
(:mod:`hafs.service.divergence`) unmounts it on purpose. Its mountpoint is then a plain
directory of the parent dataset: an smbd started there would serve an empty share and put
every acknowledged write where no snapshot, no replication and no later mount sees it (and a
non-empty directory then refuses the mount, at the next import too).

:func:`ensure_mounted` runs before smbd starts (the takeover's step, smbd's restart): if the
dataset is not mounted, whatever is in the directory underneath is kept beside it as
``<mountpoint>-stray-<UTC time>`` (said loudly: clients were told those writes were done),
and the dataset is mounted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hafs.service.config import VipService
from hafs.service.runtime import ServiceError

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

STRAY = "-stray-"


def ensure_mounted(services: NodeServices, vip: VipService) -> bool:
    """Mount the VIP's dataset if it is not; True if it had to. Refuses to go on (so nothing
    is served) when it cannot be mounted."""
    zfs, dataset = services.zfs, services.dataset(vip)
    if zfs.mounted(dataset):
        return False
    directory = services.mountpoint(vip)
    if services.smbd_pid(vip) is not None:  # it served the bare directory: stop that first
        log.error("%s: smbd served %s, but the dataset was not mounted", vip.name, directory)
        services.stop_smbd(vip)
    stray = keep_stray(vip, directory)
    zfs.mount(dataset)
    if not zfs.mounted(dataset):
        raise ServiceError(f"{vip.name}: {dataset} does not mount at {directory}: not serving")
    log.warning(
        "%s: %s was not mounted: mounted it%s",
        vip.name,
        dataset,
        f" (what lay in the directory underneath is kept as {stray})" if stray else "",
    )
    return True


def keep_stray(vip: VipService, directory: Path) -> Path | None:
    """Move a non-empty directory under an unmounted dataset aside; its new path, if any."""
    try:
        found = sorted(p.name for p in directory.iterdir())
    except FileNotFoundError:
        return None
    if not found:
        return None
    stray = directory.with_name(f"{directory.name}{STRAY}{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
    directory.rename(stray)
    log.error(
        "%s: STRAY FILES: %d entr(ies) were written under %s while its dataset was not "
        "mounted (%s): kept as %s; copy out what clients need, then remove it",
        vip.name, len(found), directory, ", ".join(found[:5]), stray,
    )  # fmt: skip
    return stray


def remount(services: NodeServices, vip: VipService) -> None:
    """Unmount and mount the VIP's dataset: zfs-fuse keeps the kernel's cached pages of a
    mounted dataset across a receive (a file read before it shows its old content after),
    and a remount drops them (:mod:`hafs.service.zfs`)."""
    zfs, dataset = services.zfs, services.dataset(vip)
    if zfs.mounted(dataset):
        zfs.unmount(dataset)
    zfs.mount(dataset)
