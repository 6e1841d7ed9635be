"""Faults judged by the client: an SMB writer records every write the server acknowledged,
the fault is injected, then the share is listed. Lost = acknowledged, not served and not
kept aside on some node (``hafs service diverged``). The short versions of the scenarios of
``bench/faults.py``, on the 4-node service lab (5 s replication interval).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise

from tests.lab.carp_bed import wait_for
from tests.lab.faults_common import kept_aside, runs_zfs, served
from tests.lab.test_service import REPO, ServiceLab, service_lab

__all__ = ["service_lab"]  # the fixture, for pytest
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}")


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
        acked.update(
            {int(n): float(t) for n, _began, t in (line.split() for line in out.splitlines())}
        )
    finally:
        proc.kill()
        proc.wait()


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


def stamps(lines: list[str], text: str) -> list[str]:
    """The timestamps (sortable as text) of the log lines that contain ``text``."""
    return sorted(m[0] for line in lines if text in line and (m := STAMP.search(line)))


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
        # resyncs of 4 VIPs, then the handover: seconds here, a minute and more on a loaded CI
        wait_for(lambda: s.holders(1) == [home], 150, "VIP1 back home after its resync", step=0.2)
        back = time.monotonic()

    # the takeover may be the MASTER hook's (agent.log) or the daemon's (service.log), and
    # it may still run when the address is home: by time, once it is done
    def lines() -> list[str]:
        logs = ("agent.log", "service.log")
        return [line for log in logs for line in (s.lab.dir / home / log).read_text().splitlines()]

    def served_after_resync() -> bool:
        released = stamps(lines(), "resync complete")
        served_again = stamps(lines(), "vip1 takeover: serving on")
        return bool(released and served_again and released[-1] < served_again[-1])

    try:
        wait_for(served_after_resync, 30, "the home's takeover after its resync", step=0.2)
    except AssertionError as exc:
        raise AssertionError("\n".join([str(exc), *lines()[-40:]])) from None
    print(f"\nVIP1 home again {back - healed:.1f}s after the cable was plugged back")
    lost, kept = judge(s, 1, "cut", acked)
    assert lost == 0, s.diagnose(1)
    if kept:  # the writes the home alone had when its cable went: listed where they are
        assert any(n["diverged"] for n in s.lab.status()["nodes"]), s.lab.status()


def test_a_stalled_agent_resumes_without_losing_a_write(service_lab: ServiceLab) -> None:
    """The home's agent is stopped (SIGSTOP) past the master-down time: the backup takes the
    VIP over while the home still has the address; on SIGCONT the home must not win it back
    with its old copy: it raises its resync hold, steps down, resyncs, then takes it back."""
    s = service_lab
    home, backup = "ha-file-server-2", s.cluster.vip(2).backups[0]
    s.wait_replicated(2, backup, time.time())
    agent = s.lab.agent(home)  # the agent itself, not its supervisor
    assert agent is not None
    with writer(s, 2, "stall", 55) as acked:
        time.sleep(5)
        agent.signal(signal.SIGSTOP)
        try:
            wait_for(lambda: backup in s.holders(2), 15, "VIP2 taken over by its backup")
            time.sleep(8)
        finally:
            agent.signal(signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: s.holders(2) == [backup], 10, "the resumed home to step down")
        wait_for(lambda: s.holders(2) == [home], 150, "VIP2 home again after its resync", step=0.2)
    after = sorted(t for t in acked.values() if t > resumed)
    outage = max((b - a for a, b in pairwise([resumed, *after])), default=0.0)
    print(f"\nlongest client outage after the resume: {outage:.1f}s")
    lost, _ = judge(s, 2, "stall", acked)
    assert lost == 0, s.diagnose(2)


def test_an_isolated_node_stops_serving_and_the_majority_serves_every_vip(
    service_lab: ServiceLab,
) -> None:
    """The node keeps its carrier but hears nobody (its bridge port stops forwarding): it
    becomes CARP master of everything, yet within 10 s serves nothing (no quorum, and the
    gateway does not answer it); the other three serve every VIP; after the rejoin it
    resyncs, then takes its own VIP back."""
    s = service_lab
    node, backup = "ha-file-server-3", s.cluster.vip(3).backups[0]
    vhids = [v.vhid for v in s.cluster.vips]
    s.wait_replicated(3, backup, time.time())
    with writer(s, 3, "iso", 60) as acked:
        time.sleep(5)
        s.lab.isolate(node)
        try:
            took = wait_for(
                lambda: all(node not in s.smbd_nodes(v) for v in vhids),
                10,
                "isolated: serves nothing",
            )
            print(f"\nthe isolated node served nothing {took:.1f}s after the isolation")
            wait_for(
                lambda: all([n for n in s.smbd_nodes(v) if n != node] for v in vhids),
                15,
                "the majority serves every VIP",
                step=0.2,
            )
            time.sleep(5)
            assert all(node not in s.smbd_nodes(v) for v in vhids)
        finally:
            s.lab.rejoin(node)
        wait_for(lambda: s.smbd_nodes(3) == [node], 90, "VIP3 home after its resync", step=0.2)
    lost, _ = judge(s, 3, "iso", acked)
    assert lost == 0, s.diagnose(3)


SERVICE_RESTART = 15.0  # the bound: the daemon runs again (systemd RestartSec=1)


def test_a_killed_service_daemon_runs_again_and_replication_goes_on(
    service_lab: ServiceLab,
) -> None:
    """SIGKILL of `hafs service run` on vip1's holder: its supervisor (systemd's
    Restart=always; the lab's sh loop) runs it again, and within two replication intervals
    of the restart it reports the backup has every write made before the kill."""
    s = service_lab
    holder, backup = "ha-file-server-1", s.cluster.vip(1).backups[0]
    s.wait_replicated(1, backup, time.time())
    daemon = s.lab.service(holder)
    assert daemon is not None
    daemon.signal(signal.SIGKILL)
    killed, killed_wall = time.monotonic(), time.time()
    took = wait_for(
        lambda: s.lab.service(holder) not in (None, daemon), SERVICE_RESTART, "the daemon again"
    )
    print(f"\nhafs service run again {took:.1f}s after SIGKILL")
    s.wait_replicated(1, backup, killed_wall, timeout=2 * s.cluster.replication_interval + 5)
    print(f"{backup} up to date as of the kill {time.monotonic() - killed:.1f}s later")
    assert s.smbd_nodes(1) == [holder]  # served all along


POOL_TAKEOVER = 30.0  # the bound: another node serves the VIP, with its data
# a hung pool: the round's 5 s before the probe beside it, the probe's 10 s, then the takeover
POOL_HANG_TAKEOVER = 45.0


def test_a_holder_whose_zfs_daemon_dies_hands_its_vip_to_a_backup(
    service_lab: ServiceLab,
) -> None:
    """zfs-fuse SIGKILLed on vip1's holder: its pool stops answering, its service daemon
    stops its smbd and raises the pool-unhealthy hold, and the best backup serves vip1 with
    the data it had received."""
    s = service_lab
    holder, backup = "ha-file-server-1", s.cluster.vip(1).backups[0]
    s.put(1, "before.txt", "written before the pool died")
    s.wait_replicated(1, backup, time.time())
    zfs = s.lab.procs(holder)["zfs-fuse"]
    zfs.signal(signal.SIGKILL)
    took = wait_for(
        lambda: s.smbd_nodes(1) == [backup] and s.holders(1) == [backup],
        POOL_TAKEOVER,
        "vip1 served by its backup",
        step=0.2,
    )
    assert s.get(1, "before.txt") == "written before the pool died"
    print(f"\nvip1 served by {backup} {took:.1f}s after zfs-fuse died on {holder}")
    status = s.lab.run(holder, [sys.executable, "-m", "hafs", "demote", "--json"])
    assert '"pool-unhealthy": 240' in status, status


def test_a_holder_whose_pool_hangs_in_the_middle_of_a_round_hands_its_vip_to_a_backup(
    service_lab: ServiceLab,
) -> None:
    """zfs-fuse stopped (SIGSTOP: a hung pool) on vip1's holder while its service daemon's
    round waits on a zfs command, which would wait two minutes: the probe beside the round
    finds the pool hung, and the best backup serves vip1 with the data it had received."""
    s = service_lab
    holder, backup = "ha-file-server-1", s.cluster.vip(1).backups[0]
    s.put(1, "before.txt", "written before the pool hung")
    s.wait_replicated(1, backup, time.time())
    zfs, daemon = s.lab.procs(holder)["zfs-fuse"], s.lab.service(holder)
    assert daemon is not None
    wait_for(lambda: runs_zfs(daemon.pid), 30, "a round's zfs command", step=0.005)
    zfs.signal(signal.SIGSTOP)
    try:  # the holder's smbd, stopped, waits in the hung file system until it answers
        took = wait_for(
            lambda: backup in s.smbd_nodes(1) and s.holders(1) == [backup],
            POOL_HANG_TAKEOVER,
            "vip1 served by its backup",
            step=0.2,
        )
        assert s.get(1, "before.txt") == "written before the pool hung"
        print(f"\nvip1 served by {backup} {took:.1f}s after {holder}'s pool hung mid-round")
    finally:
        zfs.signal(signal.SIGCONT)


def test_a_backup_whose_pool_hangs_holds_up_neither_the_other_backups_nor_the_holder(
    service_lab: ServiceLab,
) -> None:
    """zfs-fuse stopped (SIGSTOP: a hung pool) on vip1's first backup, whose sshd and
    receiver still take a stream but never answer it: the holder's rounds wait for that
    backup one interval at most, so every write still reaches the other backups within about
    two (that wait, then the next round), round after round, and the holder's report says
    the hung one is still being sent to."""
    s = service_lab
    holder = "ha-file-server-1"
    hung, other = s.cluster.vip(1).backups[:2]
    interval = s.cluster.replication_interval
    s.put(1, "before.txt", "written before the backup's pool hung")
    s.wait_replicated(1, hung, time.time())
    zfs = s.lab.procs(hung)["zfs-fuse"]
    zfs.signal(signal.SIGSTOP)
    try:
        for n in range(3):
            s.put(1, f"during-{n}.txt", "written while a backup's pool hangs")
            written = time.monotonic()
            s.wait_replicated(1, other, time.time(), timeout=3 * interval + 5)
            print(f"\nwrite {n} on {other} {time.monotonic() - written:.1f}s later")
        report = json.loads(s.lab.run(holder, ["cat", "/run/hafs/replication.json"]))
        item = report["vips"]["vip1"][hung]
        assert not item["ok"] and "still sending" in item["error"], item
    finally:
        zfs.signal(signal.SIGCONT)
    assert s.holders(1) == [holder] and s.smbd_nodes(1) == [holder]


DISK_FULL = "NT status 0xC000007F"  # what Samba answers for ENOSPC and EDQUOT


def test_a_full_share_reaches_the_backup_and_works_again_once_files_are_deleted(
    service_lab: ServiceLab,
) -> None:
    """vip1's share filled over SMB until the server says disk full: every file it
    acknowledged before is on a backup within two replication intervals (the share's limit
    keeps the pool room for snapshots and sends), the holder serves on (no takeover, no
    hold), and once the client deletes files it writes again and replication goes on."""
    s = service_lab
    holder, backup = "ha-file-server-1", s.cluster.vip(1).backups[0]
    interval = s.cluster.replication_interval
    fill = subprocess.run(
        s.probe("fill", 1, "fill"), capture_output=True, text=True, cwd=REPO, check=False
    )
    filled, filled_wall = time.monotonic(), time.time()
    assert fill.returncode == 0 and DISK_FULL in fill.stderr, fill.stderr
    acked = dict(line.split() for line in fill.stdout.splitlines())
    print(f"\n{len(acked)} MiB acknowledged, then: {fill.stderr.strip()}")
    s.wait_replicated(1, backup, filled_wall, timeout=2 * interval + 10)
    print(f"on {backup} {time.monotonic() - filled:.1f}s after the last acknowledged write")
    dataset = f"{s.cluster.zfs_pool}/hafs/vip1"
    root = s.lab.run(backup, ["zfs", "get", "-H", "-o", "value", "mountpoint", dataset]).strip()
    share = f"{root}/shares/{s.cluster.vip(1).shares[0].name}"
    sums = s.lab.run(backup, ["sh", "-c", f"cd {share} && sha256sum fill.*"])
    there = {name.removeprefix("fill."): digest for digest, name in
             (line.split() for line in sums.splitlines())}  # fmt: skip
    assert {n: there.get(n) for n in acked} == acked  # (and the refused one, in part)
    assert s.smbd_nodes(1) == [holder] and s.holders(1) == [holder]
    demotion = json.loads(s.lab.run(holder, [sys.executable, "-m", "hafs", "demote", "--json"]))
    assert demotion["holds"] == {}, demotion  # no takeover loop, no "pool-full" demotion

    subprocess.run(s.probe("remove", 1, "fill"), check=True, cwd=REPO, capture_output=True)
    s.put(1, "after-full.txt", "written once files were deleted")
    s.wait_replicated(1, backup, time.time())
    listed = s.lab.run(backup, ["ls", share]).split()
    assert "after-full.txt" in listed and not [n for n in listed if n.startswith("fill.")]
