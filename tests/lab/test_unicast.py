"""Unicast peers on a bridge that drops multicast (``mcast_flood off`` on every port, as in a
cloud network): a multicast pair cannot elect (both masters), a unicast pair can; hafs with
hafs (CARP) and hafs with keepalived (VRRPv3 ``unicast_peer``), both ways: election and
takeover on silence; a unicast master reloads without losing its VIP.

Each test builds its own namespaces (prefix ``hu`` + 3 hex digits) and stops every process it
started, by pid. CARP at advbase 1: a backup at advskew 100 declares its master dead after
3.4 s; VRRPv3 at 0.2 s: 0.72 s at priority 100.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hafs.lab.netns import new_prefix
from tests.lab.carp_bed import CarpBed, Peer, running_bed, sample, wait_for
from tests.lab.conftest import skip_or_fail
from tests.lab.test_reload import reload_keeps_the_vip

VIP = "10.77.0.100"
CARP_MASTER_DOWN = 3 + 100 / 256
INTERVAL = 0.2
VRRP_MASTER_DOWN = 3 * INTERVAL + (256 - 100) * INTERVAL / 256
SLACK = 3.0  # scheduling on a loaded 2-core machine


@pytest.fixture
def bed(require_lab: None, tmp_path: Path) -> Iterator[CarpBed]:
    with running_bed(tmp_path, new_prefix("hu")[:5]) as bed:
        yield bed


def pair_without_multicast(bed: CarpBed) -> tuple[Peer, Peer]:
    """Nodes a and b on a bridge that floods no multicast to any port (broadcast, hence ARP,
    and unicast still pass)."""
    a, b = bed.node("a"), bed.node("b")
    for peer in (a, b):
        bed.lab.switch.bridge("link", "set", "dev", peer.port.peer, "mcast_flood", "off")
    return a, b


def one_master(bed: CarpBed, master: str, seconds: float = 2.0) -> None:
    """``master`` alone holds the VIP, and keeps it for ``seconds``."""
    wait_for(lambda: bed.holders(VIP) == [master], 10, f"{master} alone to hold the VIP")
    holders = [h[VIP] for h in sample(bed, [VIP], seconds, step=0.05)]
    assert all(h == [master] for h in holders), holders


def test_hafs_pair_elects_by_unicast_where_multicast_is_dropped(bed: CarpBed) -> None:
    a, b = pair_without_multicast(bed)
    bed.hafs(a, [(1, VIP, 0)])
    bed.hafs(b, [(1, VIP, 100)])  # multicast: neither hears the other
    wait_for(lambda: bed.holders(VIP) == ["a", "b"], 10, "both to claim the VIP (no multicast)")
    assert a.status()["vhids"][0]["adverts_received"] == 0
    for peer in (a, b):
        peer.stop()

    bed.hafs(a, [(1, VIP, 0)], peers=[b])
    bed.hafs(b, [(1, VIP, 100)], peers=[a])
    one_master(bed, "a")
    vhid = b.status()["vhids"][0]
    assert vhid["state"] == "BACKUP" and vhid["master"]["source"] == a.address, b.output()

    a.port.cut()  # silence: b takes over, and advertises to a peer that does not answer
    wait_for(lambda: bed.holders(VIP) == ["b"], CARP_MASTER_DOWN + SLACK, "b to take over")
    wait_for(lambda: "FAILED" in b.node.ip("neigh", "show", a.address), 10, "ARP to give up on a")
    sent = b.status()["vhids"][0]["adverts_sent"]  # as many errors would demote b (FreeBSD's 3)
    wait_for(lambda: b.status()["vhids"][0]["adverts_sent"] >= sent + 3, 10, "3 more adverts")
    assert b.status()["demotion"]["send_failing"] == [], "a dead peer is no send error of b's"

    a.port.plug()  # a (advskew 0) comes back and preempts
    one_master(bed, "a")
    assert b.vhid_state(1) == "BACKUP"


@pytest.fixture
def keepalived_bed(bed: CarpBed) -> CarpBed:
    if shutil.which("keepalived") is None:  # under CI=true a failure: .ci/run installs it
        skip_or_fail("keepalived is not installed (apt-get install keepalived)")
    return bed


def test_keepalived_master_hafs_backup_by_unicast(keepalived_bed: CarpBed) -> None:
    bed = keepalived_bed
    a, b = pair_without_multicast(bed)
    bed.keepalived(a, [(1, VIP, 200)], INTERVAL, peers=[b])
    bed.hafs_vrrp(b, [(1, VIP, 100)], INTERVAL, peers=[a])
    one_master(bed, "a")
    vhid = b.status()["vhids"][0]
    assert vhid["state"] == "BACKUP", b.output()
    assert vhid["master"] == {"source": a.address, "priority": 200, "interval": INTERVAL}

    a.stop(signal.SIGKILL)  # silence (its VIP stays configured there, as after a power loss)
    wait_for(lambda: b.vhid_state(1) == "MASTER", VRRP_MASTER_DOWN + SLACK, "hafs to take over")
    assert b.holds(VIP)


def test_hafs_master_keepalived_backup_by_unicast(keepalived_bed: CarpBed) -> None:
    bed = keepalived_bed
    a, b = pair_without_multicast(bed)
    bed.hafs_vrrp(a, [(1, VIP, 200)], INTERVAL, peers=[b])
    bed.keepalived(b, [(1, VIP, 100)], INTERVAL, peers=[a])
    one_master(bed, "a")  # keepalived accepts hafs's unicast adverts (checksum per peer)
    assert "BACKUP" in b.output(), b.output()

    a.stop(signal.SIGKILL)
    wait_for(lambda: b.holds(VIP), VRRP_MASTER_DOWN + SLACK, "keepalived to take over from hafs")


def test_a_unicast_master_reloads_without_losing_its_vip(bed: CarpBed) -> None:
    """At 0.1 s the re-exec outlasts the backup's master-down: only the stand-in's adverts,
    sent to the peer as the agent's own are, keep it from taking over."""
    a, b = pair_without_multicast(bed)
    bed.hafs_vrrp(a, [(1, VIP, 200)], 0.1, peers=[b])
    bed.hafs_vrrp(b, [(1, VIP, 100)], 0.1, peers=[a])
    wait_for(lambda: bed.holders(VIP) == ["a"] and b.vhid_state(1) == "BACKUP", 8, "election")
    reload_keeps_the_vip(bed, a, b, 0.3 + (256 - 100) * 0.1 / 256)
