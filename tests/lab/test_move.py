"""`hafs move`: one VIP to chosen carriers and home again, in the 4-VIP example lab (CARP, and
VRRPv3), with an SMB client writing every 0.5 s: no acknowledged write lost, the client's
outage printed (goal 3 s) and bounded; no node but the chosen one becomes master; the VIP
stays where it was moved, and the status commands say so."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hafs.cluster import load
from hafs.lab.cluster import ClusterLab
from hafs.lab.netns import new_prefix
from tests.lab.carp_bed import wait_for
from tests.lab.faults_common import Writes, served, writer
from tests.lab.test_service import REPO, ServiceLab, example_inventory

PERIOD = 0.5  # the client writes every 0.5 s
GOAL = 3.0  # the client's outage of a move, seconds (printed beside the measurement)
BOUND = 15.0  # asserted: generous for a 2-core lab that others load (12 s seen at load 10);
# a move whose NODE does not serve within 15 s (the move's own limit) fails anyway
STAY = 4.0  # seconds (four adverts) a moved VIP must stay where it was moved


@pytest.fixture(params=["carp", "vrrp3"])
def move_lab(
    request: pytest.FixtureRequest, require_lab: None, tmp_path: Path
) -> Iterator[ServiceLab]:
    """The example lab, in CARP and in VRRPv3 (where NODE is ranked only after the seal:
    VRRPv3 breaks a tie by the address, so NODE could preempt a holder still serving)."""
    inventory = example_inventory(tmp_path)
    if request.param == "vrrp3":
        with open(inventory, "a") as text:
            text.write("\nfor _name, _data in freebsd:\n    _data['freebsd_version'] = '14.1'\n")
        with (tmp_path / "group_data" / "all.py").open("a") as text:
            text.write('protocol = "vrrp3"\n')
    lab = ClusterLab(new_prefix("hafs-mv")[:10])  # three hex digits: a name has 10 at most
    try:
        lab.up(inventory, None)
        yield ServiceLab(lab, load(inventory))
    finally:
        lab.down()


def hafs(s: ServiceLab, node: str, *argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*s.lab.enter(node), sys.executable, "-m", "hafs", *argv],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    if ok:
        assert proc.returncode == 0, f"hafs {' '.join(argv)} on {node}: {proc.stderr}"
    return proc


def outage(writes: Writes, began: float, ended: float) -> float:
    """The longest the client waited for an acknowledgement between ``began`` and ``ended``
    (monotonic): the gap around the move, from the last write acknowledged before it (and
    to ``ended``, if it waits still)."""
    times = sorted(writes.acked.values())
    before = [t for t in times if t < began]
    inside = [t for t in times if began <= t <= ended]
    assert before, f"no writes acknowledged before the move: {times[-10:]}"
    return max(b - a for a, b in itertools.pairwise([before[-1], *inside, ended]))


def masters(s: ServiceLab) -> dict[str, int]:
    """How often each node's agent made vhid 1 MASTER so far (its log)."""
    found = {}
    for node in s.lab.state["nodes"]:
        text = (s.lab.dir / node / "agent.log").read_text()
        found[node] = sum("vhid 1@" in line and "-> MASTER" in line for line in text.splitlines())
    return found


def move(s: ServiceLab, writes: Writes, holder: str, to: str) -> float:
    """``hafs move vip1 TO`` on the holder; the client's outage, after checking that no node
    but ``to`` became master meanwhile (a transient master announces the VIP: clients follow
    it) and that the VIP stays on ``to`` for :data:`STAY` seconds while the client writes on."""
    began, before = time.monotonic(), masters(s)
    said = hafs(s, holder, "move", "vip1", to).stderr
    assert f"vip1: moved to {to}" in said, said
    assert s.holders(1) == [to]
    time.sleep(STAY)  # the old holder, home or not, must not preempt it back
    assert s.holders(1) == [to], s.diagnose(1)
    took = outage(writes, began, time.monotonic())
    print(f"move vip1 {holder} -> {to}: client outage {took:.2f}s (goal {GOAL:.0f}s)")
    for line in said.splitlines():
        print(f"  {line}")
    became = {n: c - before[n] for n, c in masters(s).items() if c > before[n]}
    assert became == {to: 1}, f"masters of vip1 during the move: {became}"
    assert took <= BOUND, f"the client waited {took:.1f}s: {s.diagnose(1)}"
    return took


def test_move_to_a_chosen_node_and_home_loses_nothing(move_lab: ServiceLab) -> None:
    s = move_lab
    vip = s.cluster.vip(1)
    home, to, last = vip.home, "ha-file-server-2", vip.carriers[-1]  # last: its worst backup
    assert to in vip.backups and last not in (home, to)
    with writer(s, 1, "w", PERIOD) as writes:
        wait_for(lambda: len(writes.acked) >= 4, 30, "the client's first writes", step=0.2)
        away = move(s, writes, home, to)

        status = hafs(s, to, "status").stdout
        assert f"vhid 1: moved to {to}" in status and f"hafs move vip1 {home}" in status, status
        report = hafs(s, home, "cluster", "status", "--json", ok=False)
        assert report.returncode in (0, 1), report.stderr
        nodes = json.loads(report.stdout)["nodes"]
        assert {n: r["moved"] for n, r in nodes.items()} == {n: {"vip1": to} for n in nodes}
        text = hafs(s, home, "cluster", "status", ok=False).stdout
        assert f"vip1: moved to {to}" in text and f"`hafs move vip1 {home}`" in text, text

        again = move(s, writes, to, last)  # from a moved holder to a chosen, not the best, one
        back = move(s, writes, last, home)
        time.sleep(2 * PERIOD)
    status = hafs(s, home, "status").stdout
    assert "moved to" not in status, status
    names = served(s, 1)
    lost = sorted(n for n in writes.acked if f"w.{n}" not in names)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{len(writes.acked)} writes acknowledged, {len(lost)} lost; load average {load}")
    assert not lost, f"acknowledged, not served: {lost}"
    print(f"client outages: {away:.2f}s, {again:.2f}s, {back:.2f}s")
