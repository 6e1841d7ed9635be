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

Run as root from the repository root:
``python -m bench.agent_cost [--window S] [--quick] [--prefix P]``.
"""

from __future__ import annotations

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
    good = cpu < CPU_GOAL and hwm < MEMORY_GOAL
    verdict = "ok" if good else "miss"
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


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("CPU and memory of CARP: hafs agent vs ucarp", "hafs-b")
    parser.add_argument("--window", type=float, help="seconds measured (default 60, --quick 10)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    parser.add_argument("--runs", type=int, default=1, help="windows per case (CPU: median)")
    parser.add_argument("--timing", type=float, help="seconds of advert capture (default 20)")
    parser.add_argument("--quick", action="store_true", help="10 s windows (5 s timing)")
    parser.add_argument("--vhids", default="1,16,255", help="hafs cases; ucarp runs the largest")
    args = parser.parse_args(argv)
    window = args.window if args.window is not None else 10.0 if args.quick else 60.0
    timing = args.timing if args.timing is not None else 5.0 if args.quick else 20.0
    counts = [int(c) for c in args.vhids.split(",")]
    cases = [("hafs", count) for count in counts] + [("ucarp", max(counts))]
    started = time.monotonic()
    rows = []
    for impl, count in cases:
        cost = measure(args.prefix, impl, count, args.runs, window, args.warmup, timing)
        windows = ", ".join(f"{c:.2f}" for c in cost.cpu)
        print(f"  {impl} {count} vhids: CPU {windows} %, adverts {cost.adverts}", flush=True)
        rows.append(row(cost))
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
