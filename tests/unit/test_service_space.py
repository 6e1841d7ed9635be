"""The room kept on a full pool: the served shares' limit, the kept-aside copies' budget."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from hafs.service import divergence, space
from hafs.service.config import ServiceConfig, ShareConfig, VipService
from hafs.service.node import NodeServices
from hafs.service.runtime import ServiceError

MIB = 1 << 20
VIPS = tuple(
    VipService(i, f"vip{i}", IPv4Address(f"10.0.0.{100 + i}"), "n1", ("n1", "n2"),
               (ShareConfig("s", True, ()),))
    for i in range(1, 5)
)  # fmt: skip
CONFIG = ServiceConfig(
    node="n1", pool="tank", replication_interval=10, peers={"n2": IPv4Address("10.0.0.2")},
    vips=VIPS, users={},
)  # fmt: skip


class PoolZfs:
    """A 1000 MiB pool: what ``zfs get`` answers, and what ``zfs set`` was asked."""

    def __init__(self, referenced: int = 10 * MIB, diverged: dict[str, int] | None = None):
        self.props = {"used": str(600 * MIB), "available": str(400 * MIB)}
        self.referenced = referenced
        self.diverged = diverged or {}
        self.sets: list[tuple[str, str, str]] = []

    def get(self, name: str, prop: str) -> str:
        if prop == "referenced":
            return str(self.referenced)
        if prop == "used" and name in self.diverged:
            return str(self.diverged[name])
        if prop == "origin":
            return "-"
        return self.props.get(prop, "/mnt")

    def values(self, name: str, *props: str) -> list[str]:
        return [self.get(name, prop) for prop in props]

    def set(self, name: str, prop: str, value: str) -> None:
        self.sets.append((name, prop, value))

    def list_datasets(self, root: str) -> list[str]:
        return [root, f"{root}/vip1", *self.diverged]

    def snapshots(self, dataset: str) -> list[object]:
        return []


def test_headroom_and_budget_come_off_before_the_vips_share_the_rest() -> None:
    pool = space.Space(size=1000 * MIB, free=400 * MIB)
    assert pool.headroom == 50 * MIB  # 5%
    assert pool.diverged_budget == 200 * MIB  # 20%
    assert pool.share_limit(4) == 750 * MIB // 4
    assert space.Space(size=100 * MIB, free=0).headroom == 16 * MIB  # the floor on a small pool
    assert not pool.low and space.Space(1000 * MIB, 24 * MIB).low  # below half the headroom


@pytest.mark.parametrize(
    ("referenced", "limit"),
    [(10 * MIB, 750 * MIB // 4), (300 * MIB, 300 * MIB)],  # zfs refuses a limit below the data
)
def test_a_served_vip_gets_its_part_of_the_pool_and_a_replica_none(
    referenced: int, limit: int
) -> None:
    zfs = PoolZfs(referenced)
    services = NodeServices(CONFIG, zfs)  # type: ignore[arg-type]
    assert services.limit(VIPS[0]) == limit
    space.unlimit(services, VIPS[0])
    assert zfs.sets == [
        ("tank/hafs/vip1", "refquota", str(limit)),
        ("tank/hafs/vip1", "refquota", "none"),  # the holder's data decides, never the backup
    ]
    one_vip = NodeServices(replace(CONFIG, vips=VIPS[:1]), PoolZfs())  # type: ignore[arg-type]
    assert one_vip.limit(VIPS[0]) == 750 * MIB  # one VIP: all but headroom and budget


def test_no_copy_is_kept_aside_beyond_the_budget() -> None:
    below = PoolZfs(diverged={"tank/hafs/vip2-diverged-20261205T000000Z": 199 * MIB})
    divergence.check_budget(NodeServices(CONFIG, below), VIPS[0])  # type: ignore[arg-type]
    full = PoolZfs(diverged={"tank/hafs/vip2-diverged-20261205T000000Z": 200 * MIB})
    with pytest.raises(ServiceError) as refused:
        divergence.check_budget(NodeServices(CONFIG, full), VIPS[0])  # type: ignore[arg-type]
    assert str(refused.value) == (
        "vip1: DIVERGED, and not kept aside: the kept-aside copies on n1 use 200 MiB of their "
        "200 MiB budget; this node's copy stays as it is and receives nothing until an "
        "operator copies out and discards some (`hafs service diverged list`)"
    )
