"""Faults judged by the client: an SMB writer records every write the server acknowledged,
the fault is injected, then the share is listed. Lost = acknowledged, not served and not
kept aside on some node (``hafs service diverged``). The short versions of the scenarios of
``bench/faults.py``, on the 4-node service lab (5 s replication interval).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

from tests.lab.carp_bed import wait_for
from tests.lab.test_service import REPO, ServiceLab, service_lab

__all__ = ["service_lab"]  # the fixture, for pytest


@contextmanager
def writer(s: ServiceLab, vhid: int, prefix: str, seconds: float) -> Iterator[dict[int, float]]:
    """Write ``prefix.<n>`` every 0.2 s for ``seconds``; yields {n: monotonic ack time},
    filled once the block ends (the writer has then finished)."""
    acked: dict[int, float] = {}
    proc = subprocess.Popen(
        s.probe("writer", vhid, prefix, str(seconds)), stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        yield acked
        out, _ = proc.communicate(timeout=seconds + 60)
        acked.update({int(n): float(t) for n, t in (line.split() for line in out.splitlines())})
    finally:
        proc.kill()
        proc.wait()


def served(s: ServiceLab, vhid: int) -> set[str]:
    argv = s.probe("list", vhid, "/")
    return set(
        subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    )


def kept_aside(s: ServiceLab, vhid: int) -> set[str]:
    """File names in every kept-aside copy of the VIP, on every running node."""
    name, share = s.cluster.vip(vhid).name, s.cluster.vip(vhid).shares[0].name
    names: set[str] = set()
    for node in s.lab.state["nodes"]:
        listed = s.lab.run(
            node,
            [sys.executable, "-m", "hafs", "service", "diverged", "list", "--json"],
            check=False,
        )
        for copy in json.loads(listed or "[]"):
            if copy["vip"] == name:
                ls = s.lab.run(node, ["ls", f"{copy['mountpoint']}/shares/{share}"], check=False)
                names |= set(ls.split())
    return names


def judge(s: ServiceLab, vhid: int, prefix: str, acked: dict[int, float]) -> tuple[int, int]:
    """Print the row; return (lost, kept aside)."""
    wanted = {f"{prefix}.{n}" for n in acked}
    now_served = served(s, vhid) & wanted
    kept = (kept_aside(s, vhid) & wanted) - now_served
    lost = wanted - now_served - kept
    times = sorted(acked.values())
    outage = max((b - a for a, b in pairwise(times)), default=0.0)
    print(
        f"\n{prefix}: acknowledged {len(wanted)}, served {len(now_served)}, kept aside "
        f"{len(kept)}, lost {len(lost)}; longest gap between acknowledged writes {outage:.1f}s"
    )
    return len(lost), len(kept)


def smbd_doubles(s: ServiceLab, vhid: int, stop: threading.Event, found: list[list[str]]) -> None:
    while not stop.is_set():
        nodes = s.smbd_nodes(vhid)
        if len(nodes) > 1:
            found.append(nodes)
        time.sleep(0.1)


def test_a_cable_cut_then_replugged_loses_no_acknowledged_write(service_lab: ServiceLab) -> None:
    """The home node's cable is cut for 10 s while a client writes, then plugged back: the
    backup serves meanwhile, the home takes its VIP back only after pulling the delta."""
    s = service_lab
    home, backup = "ha-file-server-1", s.cluster.vip(1).backups[0]
    s.wait_replicated(1, backup, time.time())
    with writer(s, 1, "cut", 50) as acked:
        time.sleep(6)
        s.lab.partition(home)
        wait_for(lambda: s.holders(1) == [backup], 15, "VIP1 on its backup during the cut")
        time.sleep(8)
        s.lab.heal(home)
        healed = time.monotonic()
        # the home is back on the wire with its old copy: it must not preempt before its resync
        wait_for(lambda: s.holders(1) == [home], 60, "VIP1 back home after its resync", step=0.2)
        back = time.monotonic()
    log = (s.lab.dir / home / "service.log").read_text()
    released = log.rfind("resync complete")
    assert 0 <= released < log.rfind("vip1 takeover: serving on"), log[-3000:]
    print(f"\nVIP1 home again {back - healed:.1f}s after the cable was plugged back")
    lost, _ = judge(s, 1, "cut", acked)
    assert lost == 0, s.diagnose(1)
