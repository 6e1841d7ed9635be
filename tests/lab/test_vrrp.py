"""`hafs agent` speaking VRRPv3 beside keepalived (``vrrp_version 3``) on a bridge, both ways:
election, takeover on silence, preempt back, the priority-0 bow-out, a wrong VRID ignored.

Each test builds its own namespaces (conftest's rules) and stops every process it started, by
pid. Both sides advertise every 0.2 s: a backup at priority 100 declares the master dead after
3 * 0.2 + (256 - 100) * 0.2 / 256 = 0.72 s, and after a bow-out waits its skew, 0.12 s.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.carp_bed import CarpBed, Peer, running_bed, sample, wait_for
from tests.lab.conftest import skip_or_fail

VIP = "10.77.0.100"
INTERVAL = 0.2
MASTER_DOWN = 3 * INTERVAL + (256 - 100) * INTERVAL / 256  # the priority-100 backup's
BOW_OUT = 0.5  # well under MASTER_DOWN: only a priority-0 advert explains a takeover this fast
SLACK = 1.0  # scheduling on a loaded 2-core machine


@pytest.fixture
def bed(require_lab: None, tmp_path: Path) -> Iterator[CarpBed]:
    if shutil.which("keepalived") is None:  # under CI=true a failure: .ci/run installs it
        skip_or_fail("keepalived is not installed (apt-get install keepalived)")
    with running_bed(tmp_path) as bed:
        yield bed


def bow_out(master: Peer, backup: Peer) -> float:
    """SIGTERM the master; the seconds until the backup holds the VIP."""
    assert master.proc is not None
    start = time.monotonic()
    master.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: backup.holds(VIP), MASTER_DOWN + SLACK, f"{backup.name} after a bow-out")
    return time.monotonic() - start


def test_keepalived_master_hafs_backup(bed: CarpBed) -> None:
    a, b = bed.node("a"), bed.node("b")
    bed.keepalived(a, [(1, VIP, 200)], INTERVAL)
    bed.hafs_vrrp(b, [(1, VIP, 100)], INTERVAL)
    wait_for(lambda: bed.holders(VIP) == ["a"], 5, "keepalived to become master")
    wait_for(lambda: b.status()["vhids"][0]["master"] is not None, 2, "hafs to hear keepalived")
    vhid = b.status()["vhids"][0]
    assert vhid["state"] == "BACKUP", b.output()
    assert vhid["master"] == {"source": a.address, "priority": 200, "interval": INTERVAL}

    a.port.cut()  # silence: keepalived's link is gone
    wait_for(lambda: bed.holders(VIP) == ["b"], MASTER_DOWN + SLACK, "hafs to take over")

    a.port.plug()  # keepalived (200) comes back and preempts; hafs steps down
    wait_for(lambda: bed.holders(VIP) == ["a"], 5, "keepalived to preempt back")
    assert b.vhid_state(1) == "BACKUP"

    took = bow_out(a, b)  # keepalived stops: priority 0, hafs waits its skew only
    assert took < BOW_OUT, f"{took:.3f}s: a bow-out, not a master-down ({MASTER_DOWN:.2f}s)"
    assert b.vhid_state(1) == "MASTER"


def test_hafs_master_keepalived_backup(bed: CarpBed) -> None:
    a, b = bed.node("a"), bed.node("b")
    bed.hafs_vrrp(a, [(1, VIP, 200)], INTERVAL)
    bed.keepalived(b, [(1, VIP, 100)], INTERVAL)
    wait_for(lambda: bed.holders(VIP) == ["a"], 5, "hafs to become master")
    holders = [h[VIP] for h in sample(bed, [VIP], 2, step=0.05)]
    assert all(h == ["a"] for h in holders), f"keepalived must accept hafs's adverts: {holders}"
    assert "BACKUP" in b.output(), b.output()

    took = bow_out(a, b)  # hafs stops: priority 0, keepalived waits its skew only
    assert took < BOW_OUT, f"{took:.3f}s: a bow-out, not a master-down ({MASTER_DOWN:.2f}s)"
    wait_for(lambda: a.proc is not None and a.proc.poll() is not None, 10, "hafs to exit")

    bed.hafs_vrrp(a, [(1, VIP, 200)], INTERVAL)  # back: it preempts keepalived at once
    wait_for(lambda: bed.holders(VIP) == ["a"], 1 + SLACK, "hafs to preempt back")

    a.stop(signal.SIGKILL)  # silence (its VIP stays configured there, as after a power loss)
    wait_for(lambda: b.holds(VIP), MASTER_DOWN + SLACK, "keepalived to take over from hafs")


def test_a_wrong_vrid_is_ignored_by_both(bed: CarpBed) -> None:
    a, b = bed.node("a"), bed.node("b")
    bed.keepalived(a, [(2, VIP, 200)], INTERVAL)
    bed.hafs_vrrp(b, [(1, VIP, 100)], INTERVAL)
    wait_for(lambda: b.status()["drops"].get("unknown vhid", 0) >= 5, 5, "vrid 2 dropped")
    wait_for(lambda: bed.holders(VIP) == ["a", "b"], 5, "both to claim the VIP")
    vhid = b.status()["vhids"][0]
    assert (vhid["state"], vhid["adverts_received"], vhid["master"]) == ("MASTER", 0, None)
