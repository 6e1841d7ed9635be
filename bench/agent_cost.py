"""CPU and memory of one ``hafs agent`` with 1, 16 and 255 vhids, against 255 stock ucarps.

Measured: one node alone on a bridge, so every vhid is master (advbase 1, advskew 0, one VIP
each from 10.78.1.1 up), sending one advert per vhid per second. hafs runs one agent for all
vhids, with ``event_command = []`` (no hook processes); ucarp runs one process per vhid, whose
up script runs once, before the window. Once every VIP is installed and after a warm-up:

- CPU: the utime+stime (+ reaped children's) delta of ``/proc/<pid>/stat`` over the window,
  as % of one core;
- memory: VmHWM (peak) and VmRSS of ``/proc/<pid>/status``, and Pss of
  ``/proc/<pid>/smaps_rollup`` (shared pages divided among the processes sharing them: the fair
  sum for 255 ucarps). For ucarp every figure is the sum over its processes;
- advert timing, after the CPU window (a capture on the bridge costs the sender CPU: about
  +0.4% of a core at 255 vhids): a monitor namespace joins the bridge and captures every advert
  for ``--timing`` s with kernel timestamps (:mod:`bench.probe` ``adverts``); each interval is
  compared with ``advbase + advskew/256`` (1 s).

The machine's 1-minute load average at the end of each case is printed: other work on the
machine delays the agent's wake-ups (advert timing) more than it changes its CPU time.

Goal (issue 4): 255 vhids under 2% of one core and under 60 MB for hafs.

``--pairs``: a master and its backup instead (issue 16), two nodes on one bridge, the first
master of every vhid (advskew 0; VRRPv3 priority 200), the second backup of all (advskew 100;
priority 100), started once the first holds every VIP; the CPU of both over the window, each
daemon's (keepalived: its parent and its VRRP child) and their sum. The cases: 255 vhids at
CARP advbase 1 (hafs) beside keepalived's 255 VRRPv3 instances at ``advert_int 1``, and 16
vhids at VRRPv3 interval 0.1 s (hafs ``protocol = "vrrp3"``) beside keepalived's 16.
``--before DIR`` also runs the hafs cases with the agent of DIR (a checkout of an earlier
commit: ``git archive REV | tar -x -C DIR``), each right before the same case of this tree.

Goal (issue 16): the pair of 255 vhids at advbase 1 at most 1.5 % of one core.
Exits 1 when this tree's hafs misses its goal, or a VIP of it is not where it belongs at the
end (whatever the ``--before`` tree's does).

Run as root from the repository root:
``python -m bench.agent_cost [--window S] [--quick] [--prefix P] [--pairs [--before DIR]]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    bench_parser,
    held_vips,
    load_average,
    median,
    probe_argv,
    start_ucarp,
    table,
)
from hafs.lab.netns import Lab
from tests.lab.carp_bed import CarpBed, Peer, wait_for

SUBNET = "10.78.0"
CPU_GOAL = 2.0  # % of one core
PAIR_GOAL = 1.5  # % of one core: a master and a backup of 255 vhids at advbase 1 (issue 16)
PAIR_CASES = (  # implementation, vhids, seconds between adverts
    ("hafs", 255, 1.0),
    ("keepalived", 255, 1.0),
    ("hafs-vrrp3", 16, 0.1),
    ("keepalived", 16, 0.1),
)
PRIORITIES = (200, 100)  # VRRPv3: the master's, the backup's
ADVSKEWS = (0, 100)  # CARP: the master's, the backup's
MEMORY_GOAL = 60.0  # MB (VmHWM)
MASTER_TIMEOUT = 60.0  # seconds for every vhid to become master and install its VIP
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MB = 1024.0  # /proc reports kB


def vip(index: int) -> str:
    return f"10.78.{1 + index // 250}.{1 + index % 250}"


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid`` (fields 14-17 of /proc/<pid>/stat)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3, the state
    return sum(int(f) for f in fields[11:15]) / CLOCK_TICKS


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS from /proc/<pid>/status, Pss from /proc/<pid>/smaps_rollup (kB)."""
    found = {}
    for name in (f"/proc/{pid}/status", f"/proc/{pid}/smaps_rollup"):
        for line in Path(name).read_text().splitlines():
            key, _, value = line.partition(":")
            if key in {"VmHWM", "VmRSS", "Pss"}:
                found[key] = int(value.split()[0])
    return found


@dataclass(frozen=True)
class Cost:
    impl: str
    vhids: int
    procs: int
    cpu: list[float]  # % of one core, one figure per window
    memory_mb: dict[str, float]
    adverts: dict[str, Any]  # bench.probe adverts' JSON; empty without a timing window
    timing: float  # seconds of advert capture
    all_master: bool  # every VIP still installed at the end
    load: float  # 1-minute load average of the machine after the windows


def start(bed: CarpBed, peer: Peer, impl: str, vips: list[str]) -> list[int]:
    """Start ``impl`` with one vhid per VIP (all advskew 0) on ``peer``; return the pids."""
    if impl == "hafs":
        bed.hafs(peer, [(i + 1, address, 0) for i, address in enumerate(vips)])
        assert peer.proc is not None
        return [peer.proc.pid]
    return [start_ucarp(bed, peer, i + 1, address, 0).pid for i, address in enumerate(vips)]


def measure(
    prefix: str, impl: str, vhids: int, runs: int, window: float, warmup: float, timing: float
) -> Cost:
    vips = [vip(i) for i in range(vhids)]
    with tempfile.TemporaryDirectory(prefix="hafs-bench-") as tmp, Lab(prefix) as lab:
        bed = CarpBed(lab, Path(tmp), subnet=SUBNET)
        node = bed.node("n1")
        pids = start(bed, node, impl, vips)
        wait_for(lambda: held_vips(node.node) == set(vips), MASTER_TIMEOUT, "all vhids master")
        time.sleep(warmup)
        cpu = []
        for _ in range(runs):
            start_cpu, start_at = sum(map(cpu_seconds, pids)), time.monotonic()
            time.sleep(window)
            used, elapsed = sum(map(cpu_seconds, pids)) - start_cpu, time.monotonic() - start_at
            cpu.append(100 * used / elapsed)
        load = load_average()
        totals: dict[str, float] = {}
        for pid in pids:
            for key, kb in memory_kb(pid).items():
                totals[key] = totals.get(key, 0.0) + kb / MB
        adverts: dict[str, Any] = {}
        if timing > 0:
            argv = probe_argv("adverts", "--seconds", str(timing))
            capture = lab.popen(bed.node("mon").node, argv, stdout=subprocess.PIPE)
            out, _ = capture.communicate(timeout=timing + 30)
            adverts = json.loads(out.decode().splitlines()[-1])
        all_master = held_vips(node.node) == set(vips)
    return Cost(impl, vhids, len(pids), cpu, totals, adverts, timing, all_master, load)


@dataclass(frozen=True)
class PairCost:
    impl: str
    vhids: int
    interval: float
    before: bool  # the agent of --before's tree
    cpu: list[tuple[float, float]]  # % of one core (master, backup), one pair per window
    placed: bool  # every VIP on the master and none on the backup at the end
    load: float


def start_pair_node(
    bed: CarpBed, peer: Peer, impl: str, vips: list[str], interval: float, rank: int
) -> list[int]:
    """Start ``impl`` on ``peer`` as the master (rank 0) or the backup (rank 1) of every VIP;
    return the pids whose CPU counts (keepalived: the parent and its VRRP child)."""
    entries = [(i + 1, address) for i, address in enumerate(vips)]
    if impl == "hafs":
        bed.hafs(peer, [(vhid, address, ADVSKEWS[rank]) for vhid, address in entries])
    elif impl == "hafs-vrrp3":
        bed.hafs_vrrp(peer, [(v, address, PRIORITIES[rank]) for v, address in entries], interval)
    else:
        bed.keepalived(peer, [(v, address, PRIORITIES[rank]) for v, address in entries], interval)
    assert peer.proc is not None
    if impl != "keepalived":
        return [peer.proc.pid]

    def vrrp_child() -> bool:
        with contextlib.suppress(OSError, ValueError):
            return bed.keepalived_vrrp_pid(peer) > 0
        return False

    wait_for(vrrp_child, 10, "keepalived's VRRP child")
    return [peer.proc.pid, bed.keepalived_vrrp_pid(peer)]


def measure_pair(
    prefix: str,
    case: tuple[str, int, float],
    before: Path | None,
    runs: int,
    window: float,
    warmup: float,
) -> PairCost:
    impl, vhids, interval = case
    vips = [vip(i) for i in range(vhids)]
    with tempfile.TemporaryDirectory(prefix="hafs-bench-") as tmp, Lab(prefix) as lab:
        bed = CarpBed(lab, Path(tmp), subnet=SUBNET, hafs_tree=before)
        master, backup = bed.node("n1"), bed.node("n2")
        pids = [start_pair_node(bed, master, impl, vips, interval, 0)]
        wait_for(lambda: held_vips(master.node) == set(vips), MASTER_TIMEOUT, "all vhids master")
        pids.append(start_pair_node(bed, backup, impl, vips, interval, 1))
        time.sleep(warmup)
        cpu = []
        for _ in range(runs):
            start_at = time.monotonic()
            start_cpu = [sum(map(cpu_seconds, node)) for node in pids]
            time.sleep(window)
            used = [
                sum(map(cpu_seconds, node)) - s for node, s in zip(pids, start_cpu, strict=True)
            ]
            elapsed = time.monotonic() - start_at
            cpu.append((100 * used[0] / elapsed, 100 * used[1] / elapsed))
        load = load_average()
        placed = held_vips(master.node) == set(vips) and not held_vips(backup.node)
        bed.stop_all()
    return PairCost(impl, vhids, interval, before is not None, cpu, placed, load)


def pair_goal_case(cost: PairCost) -> bool:
    """The case issue 16's goal is about: hafs, 255 vhids, CARP advbase 1."""
    return cost.impl == "hafs" and cost.vhids == 255 and cost.interval == 1.0


def pair_met(cost: PairCost) -> bool:
    """This case's part of the exit code: the hafs of this tree kept every VIP on the master,
    and is within the goal in the goal's case (another tree's agent, or keepalived: True)."""
    if cost.impl != "hafs" or cost.before:
        return True
    pair = median([m + b for m, b in cost.cpu])
    return cost.placed and (not pair_goal_case(cost) or pair <= PAIR_GOAL)


def pair_row(cost: PairCost) -> list[str]:
    master = median([m for m, _ in cost.cpu])
    backup = median([b for _, b in cost.cpu])
    pair = median([m + b for m, b in cost.cpu])
    verdict = "-"
    if pair_goal_case(cost):
        verdict = "ok" if pair <= PAIR_GOAL else "miss"
    if not cost.placed:
        verdict += ", VIPs misplaced"
    protocol = "CARP advbase" if cost.impl == "hafs" else "VRRPv3 interval"
    return [
        f"{cost.impl}{' (before)' if cost.before else ''}",
        f"{protocol} {cost.interval:g} s",
        str(cost.vhids),
        f"{master:.2f} %",
        f"{backup:.2f} %",
        f"{pair:.2f} %",
        f"{cost.load:.1f}",
        verdict,
    ]


def run_pairs(args: argparse.Namespace, window: float) -> bool:
    """The master+backup cases, hafs of --before's tree first, and their table; whether this
    tree met the goal."""
    trees = [args.before, None] if args.before else [None]
    rows, met = [], True
    for case in PAIR_CASES:
        for tree in trees if case[0] != "keepalived" else [None]:
            cost = measure_pair(args.prefix, case, tree, args.runs, window, args.warmup)
            windows = ", ".join(f"{m:.2f} + {b:.2f}" for m, b in cost.cpu)
            label = pair_row(cost)[0]
            print(
                f"  {label} {case[1]} vhids at {case[2]:g} s: CPU {windows} % (load "
                f"{cost.load:.1f})",
                flush=True,
            )
            rows.append(pair_row(cost))
            met = met and pair_met(cost)
    headers = ["impl", "timing", "vhids", "CPU master", "CPU backup", "CPU pair (1 core)"]
    print()
    print(table([*headers, "load", "verdict vs goal"], rows))
    print()
    print(
        f"goal (issue 16): the pair of 255 vhids at CARP advbase 1 <= {PAIR_GOAL:g} % of one core; "
        f"{args.runs} CPU window(s) of {window:.0f} s after {args.warmup:.0f} s warm-up per case; "
        f"before: {args.before or '-'}; load: 1-min load average ({os.cpu_count()} cores)"
    )
    return met


def within_goal(cost: Cost) -> bool:
    """Issue 4's goal: CPU and peak memory (ucarp's figures are shown beside, not judged)."""
    return median(cost.cpu) < CPU_GOAL and cost.memory_mb["VmHWM"] < MEMORY_GOAL


def row(cost: Cost) -> list[str]:
    cpu = median(cost.cpu)
    hwm = cost.memory_mb["VmHWM"]
    adverts = cost.adverts
    rate, jitter = "-", "-"
    if adverts.get("intervals"):
        rate = f"{adverts['adverts'] / cost.timing:.1f}"
        jitter = (
            f"{adverts['dev_p50_ms']:.1f}/{adverts['dev_p99_ms']:.1f}/{adverts['dev_max_ms']:.1f}"
        )
    verdict = "ok" if within_goal(cost) else "miss"
    if not cost.all_master:
        verdict += ", a vhid lost its VIP"
    return [
        cost.impl,
        str(cost.vhids),
        str(cost.procs),
        f"{cpu:.2f} %",
        f"{hwm:.1f} MB",
        f"{cost.memory_mb['VmRSS']:.1f} MB",
        f"{cost.memory_mb['Pss']:.1f} MB",
        rate,
        jitter,
        f"{cost.load:.1f}",
        verdict,
    ]


def tree(text: str) -> Path:
    """A directory holding a ``hafs`` package (an earlier commit's checkout)."""
    path = Path(text).resolve()
    if not (path / "hafs" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text}: no hafs/__init__.py there; give a checkout")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("CPU and memory of CARP: hafs agent vs ucarp", "hafs-b")
    parser.add_argument("--window", type=float, help="seconds measured (default 60, --quick 10)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--runs", type=int, default=1, help="windows per case (CPU: median)")
    parser.add_argument("--timing", type=float, help="seconds of advert capture (default 20)")
    parser.add_argument("--quick", action="store_true", help="10 s windows (5 s timing)")
    parser.add_argument("--vhids", default="1,16,255", help="hafs cases; ucarp runs the largest")
    parser.add_argument(
        "--pairs", action="store_true", help="a master and a backup, hafs beside keepalived"
    )
    parser.add_argument(
        "--before", type=tree, help="with --pairs: also run the agent of this tree (a checkout)"
    )
    args = parser.parse_args(argv)
    window = args.window if args.window is not None else 10.0 if args.quick else 60.0
    if args.before and not args.pairs:
        parser.error("--before: only with --pairs")
    if args.pairs:
        return 0 if run_pairs(args, window) else 1
    timing = args.timing if args.timing is not None else 5.0 if args.quick else 20.0
    counts = [int(c) for c in args.vhids.split(",")]
    cases = [("hafs", count) for count in counts] + [("ucarp", max(counts))]
    started = time.monotonic()
    rows, met = [], True
    for impl, count in cases:
        cost = measure(args.prefix, impl, count, args.runs, window, args.warmup, timing)
        windows = ", ".join(f"{c:.2f}" for c in cost.cpu)
        print(f"  {impl} {count} vhids: CPU {windows} %, adverts {cost.adverts}", flush=True)
        rows.append(row(cost))
        met = met and (impl != "hafs" or (within_goal(cost) and cost.all_master))
    headers = ["impl", "vhids", "procs", "CPU (1 core)", "VmHWM", "VmRSS", "Pss", "adverts/s"]
    print()
    print(table([*headers, "interval dev p50/p99/max ms", "load", "verdict vs goal"], rows))
    print()
    print(
        f"goal: < {CPU_GOAL:.0f}% of one core and VmHWM < {MEMORY_GOAL:.0f} MB; "
        f"{args.runs} CPU window(s) of {window:.0f} s after {args.warmup:.0f} s warm-up per case, "
        f"then {timing:.0f} s of advert capture; ucarp figures are sums over its processes; "
        f"load: 1-min load average ({os.cpu_count()} cores); "
        f"total {time.monotonic() - started:.0f} s"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
