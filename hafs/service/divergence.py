"""Divergence keeps both sides: nothing that exists on one node only is destroyed.

Two copies of a VIP diverge when both were written after their newest common snapshot: a
node that served through a partition or a stalled agent, a holder preempted before its last
writes were sent, a holder that crashed with writes of its last interval. Replication then
brings the receiver to the sender's copy, and what the receiver alone had is **kept aside**,
never rolled back or ``recv -F``-ed away:

- :func:`seal`: a dataset leaves service (step-down, or a receive finds it was served and
  never stepped down: a crash) only after a snapshot of what it was last served with, so
  those writes are a snapshot like any other and cannot be lost to a rollback (a seal with
  no change since the newest snapshot is dropped: nothing diverged). The user
  property ``hafs:served`` marks a dataset that is (or was, until a crash) being served.
- :func:`keep_aside`: before a receive rolls the replica back to the common snapshot, the
  snapshots newer than it (made here, never sent), if they hold a change, are kept: the
  dataset is renamed to ``<vip>-diverged-<UTC time>``, the common snapshot is cloned back in
  its place and promoted (:func:`finish_interrupted` completes one that was cut short). No
  data is copied: the kept copy shares every block with the
  replica up to the common snapshot (ZFS clones; zfs-fuse's pool version 23 has them too).
- With no common snapshot at all, the whole dataset is renamed aside and a full stream
  received (:func:`keep_whole`).
- Kept copies have a space budget (:attr:`hafs.service.space.Space.diverged_budget`): while
  the copies on a node use all of it, :func:`check_budget` refuses to keep another, so the
  receive that needed it fails (loudly, one line: replication shows FAILING) and the node
  keeps its own copy as it is until an operator looks. They never fill the pool.

Kept copies stay mounted read-only beside the VIP's dataset, are listed by ``hafs status``
and ``hafs service diverged list``, and are removed only by an operator
(``hafs service diverged discard NAME``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from hafs.service import space
from hafs.service.config import VipService
from hafs.service.runtime import ServiceError
from hafs.service.zfs import ZfsError

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

SERVED = "hafs:served"  # "on" from takeover until the step-down's sealing snapshot
MARK = "-diverged-"
PENDING = "hafs:keeping-aside"  # on a dataset being kept aside: the snapshot to clone back


def mark_served(services: NodeServices, vip: VipService) -> None:
    services.zfs.set(services.dataset(vip), SERVED, "on")


def was_served(services: NodeServices, vip: VipService) -> bool:
    return services.zfs.get(services.dataset(vip), SERVED) == "on"


def seal(services: NodeServices, vip: VipService, why: str) -> str | None:
    """Snapshot a dataset that was served (its last writes become a snapshot), then clear
    the mark. Returns the snapshot taken, or None if the dataset was not being served."""
    zfs, dataset = services.zfs, services.dataset(vip)
    if not zfs.exists(dataset) or not was_served(services, vip):
        return None
    name = services.snapshot(vip)  # the newest one: a new one only if anything was written
    zfs.set(dataset, SERVED, "off")
    log.info("%s: sealed what was served here as @%s (%s)", vip.name, name, why)
    return name


def _aside_name(dataset: str) -> str:
    return f"{dataset}{MARK}{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"


def keep_aside(
    services: NodeServices, vip: VipService, base: str, theirs: Collection[str] = ()
) -> str | None:
    """Keep the snapshots newer than ``base`` as a diverged copy; leave the VIP's dataset at
    ``base``, ready for the incremental. Returns the copy's name, if any. ``theirs``: the
    sender's snapshots newer than ``base`` (names are unique in the cluster): one of those
    here came from the sender (a send that raced this one) and is no divergence."""
    zfs, dataset = services.zfs, services.dataset(vip)
    names = [s.name for s in zfs.snapshots(dataset)]
    if base not in names:
        raise ServiceError(f"{vip.name}: no snapshot @{base} here to receive onto")
    newer = names[names.index(base) + 1 :]
    unique = [n for n in newer if n not in theirs]
    chain = [base, *newer]
    if not unique or all(
        n in theirs or zfs.unchanged(f"{dataset}@{a}", f"{dataset}@{n}") for a, n in pairwise(chain)
    ):
        for name in reversed(newer):  # the sender's, or the same as the one before: not unique
            zfs.destroy_snapshot(f"{dataset}@{name}")
        return None
    check_budget(services, vip)
    aside = _aside_name(dataset)
    zfs.set(dataset, PENDING, base)  # from here on, an interruption is finished by the next
    _unmount(services, dataset)  # receive or takeover (zfs-fuse renames no mounted dataset)
    zfs.rename(dataset, aside)
    _clone_back(services, vip, aside, base)
    log.warning(
        "%s: DIVERGED: %d snapshot(s) after @%s exist on this node only (newest @%s): "
        "kept as %s; this node now follows the sender. `hafs service diverged show %s`",
        vip.name, len(unique), base, unique[-1], aside, aside.rsplit("/", 1)[1],
    )  # fmt: skip
    return aside


def _clone_back(services: NodeServices, vip: VipService, aside: str, base: str) -> None:
    """The VIP's dataset again, at ``base``: a clone of the copy, then promoted (the replica
    owns the common history again; the copy becomes its clone). Each step is skipped if done."""
    zfs, dataset = services.zfs, services.dataset(vip)
    if not zfs.exists(dataset):
        zfs.clone(f"{aside}@{base}", dataset)
    if zfs.get(dataset, "origin") == f"{aside}@{base}":
        zfs.promote(dataset)
    zfs.inherit(aside, PENDING)
    _keep_mounted(services, aside)


def finish_interrupted(services: NodeServices, vip: VipService) -> None:
    """Finish a keep-aside that was cut short (a takeover kills the receive it runs in; a
    crash) before the VIP's dataset is received into or served: else the dataset could be
    missing (renamed aside, not yet cloned back) or left unmounted."""
    zfs, dataset = services.zfs, services.dataset(vip)
    root = dataset.rsplit("/", 1)[0]
    for name, base in zfs.having(root, PENDING).items():
        if name == dataset:  # cut before the rename: nothing moved
            zfs.inherit(dataset, PENDING)
        elif name.startswith(f"{dataset}{MARK}"):
            _clone_back(services, vip, name, base)
            log.warning("%s: finished keeping %s aside (it was interrupted)", vip.name, name)


def keep_whole(services: NodeServices, vip: VipService) -> str:
    """No snapshot in common with the sender: keep the whole dataset aside."""
    check_budget(services, vip)
    zfs, dataset = services.zfs, services.dataset(vip)
    aside = _aside_name(dataset)
    _unmount(services, dataset)
    zfs.rename(dataset, aside)
    _keep_mounted(services, aside)
    log.warning(
        "%s: DIVERGED: no snapshot in common with the sender: this node's copy kept as %s",
        vip.name,
        aside,
    )
    return aside


def check_budget(services: NodeServices, vip: VipService) -> None:
    """Refuse a new kept-aside copy while the copies here use their whole budget."""
    budget = space.of_pool(services.zfs, services.config.pool).diverged_budget
    used = sum(copy.used for copy in copies(services))
    if used >= budget:
        raise ServiceError(
            f"{vip.name}: DIVERGED, and not kept aside: the kept-aside copies on "
            f"{services.config.node} use {space.mib(used)} of their {space.mib(budget)} "
            "budget; this node's copy stays as it is and receives nothing until an "
            "operator copies out and discards some (`hafs service diverged list`)"
        )


def _unmount(services: NodeServices, dataset: str) -> None:
    """Unmount, if mounted (a killed receive may have left it unmounted already)."""
    if services.zfs.mounted(dataset):
        services.zfs.unmount(dataset)


def _keep_mounted(services: NodeServices, aside: str) -> None:
    """Read-only and mounted, so an operator can copy files out of it."""
    services.zfs.set(aside, "readonly", "on")
    services.zfs.set(aside, SERVED, "off")
    try:
        services.zfs.mount(aside)
    except ZfsError as exc:  # kept all the same; `zfs mount` it by hand
        log.warning("%s: kept, but not mounted: %s", aside, exc)


@dataclass(frozen=True)
class DivergedCopy:
    """One kept-aside copy: its dataset, the VIP, when it was kept, what it holds."""

    name: str
    vip: str
    dataset: str
    kept: str
    mountpoint: str
    used: int
    snapshots: list[str]
    whole: bool  # no snapshot in common with the sender: the whole dataset (else a clone)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def copies(services: NodeServices) -> list[DivergedCopy]:
    """Every kept-aside copy on this node's pool, oldest first."""
    zfs, root = services.zfs, f"{services.config.pool}/hafs"
    try:
        datasets = zfs.list_datasets(root)
    except ZfsError as exc:
        if exc.missing:
            return []
        raise
    found = []
    for dataset in datasets:
        name = dataset.rsplit("/", 1)[1]
        if MARK not in name:
            continue
        vip, _, kept = name.partition(MARK)
        found.append(
            DivergedCopy(
                name=name,
                vip=vip,
                dataset=dataset,
                kept=kept,
                mountpoint=zfs.get(dataset, "mountpoint"),
                used=int(zfs.get(dataset, "used")),
                snapshots=[s.name for s in zfs.snapshots(dataset)],
                whole=zfs.get(dataset, "origin") == "-",
            )
        )
    return sorted(found, key=lambda c: c.kept)


def find(services: NodeServices, name: str) -> DivergedCopy:
    for copy in copies(services):
        if name in (copy.name, copy.dataset):
            return copy
    raise ServiceError(
        f"no kept-aside copy {name!r} on {services.config.node}: "
        "`hafs service diverged list` shows them"
    )


def discard(services: NodeServices, name: str) -> DivergedCopy:
    """Destroy a kept-aside copy (the operator's decision, never hafs's own)."""
    copy = find(services, name)
    services.zfs.destroy_recursive(copy.dataset)
    log.warning("%s: kept-aside copy %s discarded by the operator", copy.vip, copy.name)
    return copy
