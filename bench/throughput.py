"""Replication throughput: how fast does a big write reach every backup, beside a raw pipe?

On a service lab of its own (the example cluster: vip1's home ha-file-server-1, three
backups), with ``--interval`` seconds between replications:

1. once the first rounds are done, the newest snapshot every backup has is also received,
   untimed, into a scratch dataset on every backup;
2. 4 KB are written into vip1's share on its holder and the holder's next round sends them
   (what a send costs whatever it carries); that snapshot (``P``) goes to the scratch
   datasets too, untimed: the raw pipes' base;
3. ``--mb`` MB of incompressible data are written into the share (straight into the file
   system, not over SMB: this measures replication, not the client); the holder's next
   round snapshots it (``S``) and sends it to every backup at once; its report
   (``/run/hafs/replication.json``) says, per backup, the seconds from the snapshot to that
   backup's acknowledgement;
4. the same data as a raw ``zfs send -I P S | zfs recv`` from the holder's namespace into
   the first backup's scratch dataset: one pipe, no ssh, no hafs, timed; then the same to
   every backup at once, one pipe each (what the lab's CPUs allow when all of its nodes'
   ZFS work shares them, as hafs's sends to three backups do).

Steps 2-4 are repeated ``--runs`` times (the machine's other work makes any one noisy).
Printed per run and as medians: the raw pipe's seconds, the raw pipes' at once, hafs's
seconds per backup, the slowest backup's throughput as a share of the raw pipe's (the goal:
each backup >= 50 % of the raw pipe) and of the raw pipes' at once, and the seconds of a
round that sent 4 KB written just before (what a send costs whatever it carries); the load
average before and after.
Run as root from the repository root:
``sudo python3 bench/throughput.py [--mb 64] [--runs 3] [--interval 5] [--prefix P]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path as well as with -m

import json
import os
import statistics
import subprocess
import time
from datetime import UTC, datetime
from typing import Any

from bench.common import bench_parser, table
from bench.faults import log, service_lab
from hafs.lab.netns import LabError
from tests.lab.test_service import ServiceLab

VHID = 1
SCRATCH = "hafs-bench-raw"  # beside <pool>/hafs on the first backup: never a VIP's dataset
REPORT = "/run/hafs/replication.json"
TIMEOUT = 300.0


def report(s: ServiceLab, node: str) -> dict[str, Any]:
    text = s.lab.run(node, ["cat", REPORT], check=False)
    try:
        found: dict[str, Any] = json.loads(text)["vips"][s.cluster.vip(VHID).name]
    except (ValueError, KeyError):
        return {}
    return found


def wait_for_round(s: ServiceLab, holder: str, after: str) -> dict[str, Any]:
    """The holder's first report whose every backup acknowledged a snapshot newer than
    ``after`` (snapshot names sort by time)."""
    backups = [n for n in s.cluster.vip(VHID).carriers if n != holder]
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        peers = report(s, holder)
        if all(peers.get(b, {}).get("ok") and peers[b]["snapshot"] > after for b in backups):
            return peers
        time.sleep(0.2)
    raise SystemExit(f"no round after {after} reached every backup within {TIMEOUT:.0f}s")


def raw_pipes(
    s: ServiceLab, holder: str, to: list[str], dataset: str, base: str | None, snap: str
) -> float:
    """``zfs send [-I base] snap`` in ``holder``'s namespaces piped into ``zfs recv`` in each
    of ``to``'s, all at once (one pipe each, as hafs sends to every backup at once): seconds
    until the last receive is done."""
    pool = s.cluster.zfs_pool
    send = ["zfs", "send", *(["-I", f"@{base}"] if base else []), f"{dataset}@{snap}"]
    recv = ["zfs", "recv", "-F", f"{pool}/{SCRATCH}"]
    began = time.monotonic()
    senders = [subprocess.Popen([*s.lab.enter(holder), *send], stdout=subprocess.PIPE) for _ in to]
    receivers = [
        subprocess.Popen([*s.lab.enter(node), *recv], stdin=sender.stdout)
        for node, sender in zip(to, senders, strict=True)
    ]
    for sender in senders:
        assert sender.stdout is not None
        sender.stdout.close()
    failed = [p.wait() for p in [*senders, *receivers]]
    took = time.monotonic() - began
    if any(failed):
        raise SystemExit(f"raw pipe {holder} -> {', '.join(to)} failed")
    return took


def write_and_wait(s: ServiceLab, holder: str, path: str, count: int, unit: str) -> dict[str, Any]:
    """Write ``count`` blocks of incompressible data to ``path`` on ``holder``; return its
    next round's report, once every backup has it."""
    dd = ["dd", "if=/dev/urandom", f"of={path}", f"bs=1{unit}", f"count={count}"]
    try:
        s.lab.run(holder, dd)
    except LabError as exc:
        if "quota" not in str(exc):
            raise
        raise SystemExit(f"--mb: the share's limit in the lab is smaller: {exc}") from None
    s.lab.run(holder, ["sync"])
    written = datetime.now(UTC).strftime("hafs-%Y%m%dT%H%M%S%fZ")  # as snapshots are named
    return wait_for_round(s, holder, written)


def measure(s: ServiceLab, mb: int, runs: int) -> list[list[str]]:
    """``runs`` rounds of: 4 KB written and sent, ``mb`` MB written and sent, then the raw
    pipes of the same data; a row each, then one of the medians."""
    vip = s.cluster.vip(VHID)
    holder, first = vip.carriers[0], vip.carriers[1]
    dataset = f"{s.cluster.zfs_pool}/hafs/{vip.name}"
    backups = [n for n in vip.carriers if n != holder]
    settled = wait_for_round(s, holder, "")
    base = min(peer["snapshot"] for peer in settled.values())
    log(f"settled: every backup has {base}; the raw pipes' base goes to each")
    raw_pipes(s, holder, backups, dataset, None, base)
    mountpoint = s.lab.run(holder, ["zfs", "get", "-H", "-o", "value", "mountpoint", dataset])
    share = f"{mountpoint.strip()}/shares/{vip.shares[0].name}"
    figures: list[tuple[float, float, list[float], list[float]]] = []
    for run in range(1, runs + 1):
        s.lab.run(holder, ["rm", "-f", f"{share}/throughput.bin"])  # the share holds one
        log(f"run {run}: 4 KB into {share} on {holder}: what a send costs whatever it carries")
        small = write_and_wait(s, holder, f"{share}/small{run}.bin", 4, "K")
        previous = max(peer["snapshot"] for peer in small.values())
        raw_pipes(s, holder, backups, dataset, base, previous)  # untimed: the raw pipes' base
        base = previous
        log(f"run {run}: {mb} MB")
        peers = write_and_wait(s, holder, f"{share}/throughput.bin", mb, "M")
        snap = max(peer["snapshot"] for peer in peers.values())
        log(f"run {run}: every backup has it; raw pipes of the same data, to {first}, to all")
        raw = raw_pipes(s, holder, [first], dataset, base, snap)
        s.lab.run(first, ["zfs", "rollback", "-r", f"{s.cluster.zfs_pool}/{SCRATCH}@{base}"])
        fanned = raw_pipes(s, holder, backups, dataset, base, snap)
        for node in backups:
            s.lab.run(node, ["zfs", "rollback", "-r", f"{s.cluster.zfs_pool}/{SCRATCH}@{base}"])
        took = [float(peers[b]["seconds"]) for b in backups]
        figures.append((raw, fanned, took, [float(small[b]["seconds"]) for b in backups]))

    def row(
        label: str, raw: float, fanned: float, took: list[float], idle: list[float]
    ) -> list[str]:
        return [
            label, f"{raw:.2f}", f"{fanned:.2f}", " ".join(f"{t:.2f}" for t in took),
            f"{100 * raw / max(took):.0f} %", f"{100 * fanned / max(took):.0f} %",
            " ".join(f"{t:.2f}" for t in idle),
        ]  # fmt: skip

    rows = [row(str(i), *f) for i, f in enumerate(figures, 1)]
    middle = [statistics.median(column) for column in zip(*[f[:2] for f in figures], strict=True)]
    took_median = [statistics.median(f[2][i] for f in figures) for i in range(len(backups))]
    idle_median = [statistics.median(f[3][i] for f in figures) for i in range(len(backups))]
    rows.append(row("median", middle[0], middle[1], took_median, idle_median))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.split("\n", 1)[0], "hafs-f")
    parser.add_argument(
        "--mb", type=int, default=64, help="MB written (default 64; a lab share holds < 90)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="replication interval")
    parser.add_argument("--runs", type=int, default=3, help="rounds of measures (default 3)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs: {args.runs}: at least 1")
    if os.geteuid() != 0:
        parser.error("run as root (it builds a lab of network namespaces)")
    before = os.getloadavg()
    with service_lab(args.interval, args.prefix) as s:
        rows = measure(s, args.mb, args.runs)
        backups = list(s.cluster.vip(VHID).carriers[1:])
    after = os.getloadavg()
    header = [
        "run", "raw pipe, s", "raw to all at once, s", f"hafs to {', '.join(backups)}, s",
        "slowest of raw", "slowest of raw at once", "a send of 4 KB, s",
    ]  # fmt: skip
    print(table(header, rows))
    print(f"\n{args.mb} MB, replication every {args.interval:g}s; load average (1 min) "
          f"{before[0]:.1f} before, {after[0]:.1f} after, on {os.cpu_count()} cores")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
