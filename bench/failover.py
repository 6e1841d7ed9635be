"""Failover and bow-out time of ``hafs agent`` against stock ucarp and keepalived, measured in
the same run.

Measured: the time from a master's death to the first ping answer for its VIP from another node,
seen by a client namespace on the same bridge that pings the VIP every 10 ms
(:mod:`bench.probe`: raw ICMP socket, replies read with their source MAC, so an answer from the
dying node never counts). Each scenario runs with each implementation in turn, preempt on:

- ``hafs``: one ``hafs agent`` per node speaking CARP, advbase 1;
- ``ucarp``: stock ucarp, one process per vhid, advbase 1;
- ``keepalived``: keepalived ``vrrp_version 3``, one per node, ``advert_int`` ``--interval``;
- ``hafs-vrrp3``: one ``hafs agent`` per node with ``protocol = "vrrp3"``, the same interval.

The VRRPv3 runs rank the nodes as the CARP runs do: priority 254 - advskew (home 254, never
255, the address owner). The scenarios:

- power loss, 2 nodes x 1 VIP: the master's daemon is SIGKILLed (keepalived's VRRP child, the
  parent exits with it) and its link cut (Port.cut);
- power loss, 4 nodes x 4 VIPs: each node is home of one VIP, backups ranked by
  ``hafs.cluster.derive_layout`` (advskew 10, 20, 30); run i kills node i mod 4;
- bow-out, 2 nodes: the master gets SIGTERM (hafs bows out, keepalived sends priority 0,
  ucarp -z sends nothing).

Every kill comes right after the client sees the master's advert, so the backup's master-down
timer runs in full from the last advert: the worst case, which is what the theory column gives
(:func:`theory`: CARP ``3*advbase + advskew/256``; VRRPv3's Master_Down_Interval ``3*interval
+ Skew_Time``, Skew_Time = ``(256-priority)*interval/256``; bow-out: CARP 0, VRRPv3 Skew_Time).
Between runs the cluster is restored: daemons restarted, link plugged, every VIP back home.
Reported: median and nearest-rank p90 (with 10 runs, the second worst); the goal, per
implementation, is every run taken over by the expected backup and p90 within 50 ms of theory;
and hafs-vrrp3's p90 no later than keepalived's in the same scenario, to the probe's
resolution (one ping interval). Exits 1 when hafs or hafs-vrrp3 misses either (ucarp and
keepalived are shown, not judged).

Run as root from the repository root:
``python -m bench.failover [--runs N | --quick] [--impl NAME ...] [--interval S] [--prefix P]``.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    bench_parser,
    held_vips,
    load_average,
    mac_of,
    median,
    probe_argv,
    start_ucarp,
    table,
)
from hafs.carp.vrrp import MAX_INTERVAL, PRIORITY_OWNER
from hafs.cluster import derive_layout
from hafs.drill.report import p90
from hafs.lab.netns import Lab
from tests.lab.carp_bed import CarpBed, wait_for

SUBNET = "10.79.0"
ADVBASE = 1  # the agent's and ucarp's default
STEP = 10
GOAL = 0.050  # seconds over theory allowed at p90
PING_INTERVAL = 0.01
REPLY_TIMEOUT = 10.0
HOME_TIMEOUT = 20.0
CARP_IMPLS = ("hafs", "ucarp")
VRRP_IMPLS = ("keepalived", "hafs-vrrp3")
IMPLS = (*CARP_IMPLS, *VRRP_IMPLS)
HAFS_IMPLS = ("hafs", "hafs-vrrp3")  # judged by the exit code; the others are shown
EARLIER = (
    "earlier ucarp figures (issue 4): 3.13 s with 2 nodes, 4.3-4.7 s with 4x4; earlier "
    "keepalived figures at interval 0.1 (issue 16): 309 / 328 ms (median / p90) hard kill, "
    "66 / 75 ms SIGTERM"
)


def vrrp_priority(advskew: int) -> int:
    """The VRRPv3 priority that ranks a node as ``advskew`` does in CARP (lower skew, higher
    priority): the home's 0 gives 254, below the address owner's 255."""
    return PRIORITY_OWNER - 1 - advskew


def theory(vrrp: bool, interval: float, advskew: int, graceful: bool) -> float:
    """Seconds from the master's last advert until the backup with ``advskew`` takes over.

    CARP: ``3*advbase + advskew/256`` after silence, at once after a bow-out. VRRPv3 (RFC 5798
    section 6.1): Master_Down_Interval ``3*interval + Skew_Time`` after silence, Skew_Time
    ``(256 - priority) * interval / 256`` alone after a priority-0 advert.
    """
    if not vrrp:
        return 0.0 if graceful else 3 * interval + advskew / 256
    skew_time = (256 - vrrp_priority(advskew)) * interval / 256
    return skew_time if graceful else 3 * interval + skew_time


@dataclass(frozen=True)
class Scenario:
    title: str
    nodes: int
    vips: int  # VIP i is homed on node i
    graceful: bool  # SIGTERM, instead of SIGKILL and a cut link


SCENARIOS = (
    Scenario("power loss 2x1", 2, 1, graceful=False),
    Scenario("power loss 4x4", 4, 4, graceful=False),
    Scenario("bow-out 2x1", 2, 1, graceful=True),
)


@dataclass(frozen=True)
class Sample:
    seconds: float | None  # death -> first reply from another node; None: none in time
    lag: float  # death - the victim's last advert as the client saw it
    winner: str | None
    expected: str
    theory: float


class BenchError(Exception):
    pass


class Cluster:
    """One scenario's nodes and a client on one bridge, running one implementation that
    advertises every ``interval`` seconds (CARP: advbase 1)."""

    def __init__(self, bed: CarpBed, impl: str, scenario: Scenario, interval: float) -> None:
        self.bed = bed
        self.impl = impl
        self.scenario = scenario
        self.interval = interval
        self.names = [chr(ord("a") + i) for i in range(scenario.nodes)]
        self.vips = [f"{SUBNET}.{100 + i}" for i in range(scenario.vips)]
        self.layout = derive_layout(self.names, self.names[: scenario.vips], STEP)
        self.peers = {name: bed.node(name) for name in self.names}
        self.client = bed.node("client")
        self.macs = {name: mac_of(peer.node) for name, peer in self.peers.items()}
        self.procs: dict[str, list[subprocess.Popen[bytes]]] = {}
        for name in self.names:
            self.start(name)
        self.wait_home()

    def start(self, name: str) -> None:
        """Start ``name``'s daemons: every VIP, ranked by the layout."""
        peer = self.peers[name]
        skews = [(i + 1, vip, self.layout[i][name]) for i, vip in enumerate(self.vips)]
        priorities = [(vhid, vip, vrrp_priority(skew)) for vhid, vip, skew in skews]
        if self.impl == "ucarp":
            self.procs[name] = [start_ucarp(self.bed, peer, *entry) for entry in skews]
            return
        if self.impl == "hafs":
            self.bed.hafs(peer, skews)
        elif self.impl == "hafs-vrrp3":
            self.bed.hafs_vrrp(peer, priorities, self.interval)
        else:
            self.bed.keepalived(peer, priorities, self.interval)
        assert peer.proc is not None
        self.procs[name] = [peer.proc]

    def stop(self, name: str) -> None:
        """SIGTERM ``name``'s daemons (a bow-out), or SIGKILL them (a power loss; keepalived:
        its VRRP child, the parent exits with it) and wait for them to exit."""
        if self.scenario.graceful:
            for proc in self.procs[name]:
                proc.send_signal(signal.SIGTERM)
        elif self.impl == "keepalived":
            os.kill(self.bed.keepalived_vrrp_pid(self.peers[name]), signal.SIGKILL)
        else:
            for proc in self.procs[name]:
                proc.send_signal(signal.SIGKILL)

    def wait_home(self) -> None:
        home = {vip: [name] for vip, name in zip(self.vips, self.names, strict=False)}

        def placed() -> bool:
            held = {name: held_vips(peer.node) for name, peer in self.peers.items()}
            return {vip: [n for n in self.names if vip in held[n]] for vip in self.vips} == home

        wait_for(placed, HOME_TIMEOUT, "every VIP back on its home node")

    def run(self, victim: str) -> Sample:
        """Kill ``victim`` right after its advert, time its VIP's takeover, restore the cluster."""
        vip = self.vips[self.names.index(victim)]
        skews = {n: s for n, s in self.layout[self.names.index(victim)].items() if n != victim}
        expected = min(skews, key=skews.__getitem__)
        vrrp = self.impl in VRRP_IMPLS
        expected_theory = theory(vrrp, self.interval, skews[expected], self.scenario.graceful)
        peer = self.peers[victim]
        argv = probe_argv(
            *("ping", "--vip", vip, "--watch", peer.address, "--ignore-mac", self.macs[victim]),
            *("--interval", str(PING_INTERVAL), "--timeout", str(REPLY_TIMEOUT)),
        )
        probe = self.bed.lab.popen(self.client.node, argv, stdout=subprocess.PIPE)
        assert probe.stdout is not None
        advert = probe.stdout.readline().decode().split()
        if advert[:1] != ["advert"]:
            probe.wait(REPLY_TIMEOUT)
            raise BenchError(f"probe before the kill: {' '.join(advert) or 'no output'}")
        death = time.monotonic()
        self.stop(victim)
        if not self.scenario.graceful:
            peer.port.cut()
        reply = probe.stdout.readline().decode().split()
        probe.wait(REPLY_TIMEOUT)
        for proc in self.procs[victim]:
            proc.wait(REPLY_TIMEOUT)
        self.start(victim)
        if not self.scenario.graceful:
            peer.port.plug()
        self.wait_home()
        lag = death - float(advert[1])
        if reply[:1] != ["reply"]:
            return Sample(None, lag, None, expected, expected_theory)
        winner = next((n for n, mac in self.macs.items() if mac == reply[3]), reply[3])
        return Sample(float(reply[2]) - death, lag, winner, expected, expected_theory)


def measure(prefix: str, scenario: Scenario, impl: str, interval: float, runs: int) -> list[Sample]:
    """``runs`` kills of ``scenario`` under ``impl``, in a lab of their own."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="hafs-bench-") as tmp, Lab(prefix) as lab:
        bed = CarpBed(lab, Path(tmp), subnet=SUBNET)
        cluster = Cluster(bed, impl, scenario, interval)
        for run in range(runs):
            victim = cluster.names[run % scenario.vips]
            sample = cluster.run(victim)
            took = "timeout" if sample.seconds is None else f"{sample.seconds:.3f} s"
            print(
                f"  {scenario.title} {impl} run {run + 1}/{runs}: kill {victim}, {took}, "
                f"won by {sample.winner} (expected {sample.expected}), "
                f"kill {sample.lag * 1e3:.1f} ms after its advert",
                flush=True,
            )
            samples.append(sample)
    return samples


def met(samples: list[Sample]) -> bool:
    """The goal: every run taken over by the expected backup, p90 within ``GOAL`` of theory."""
    times = [s.seconds for s in samples if s.seconds is not None]
    if len(times) < len(samples) or any(s.winner != s.expected for s in samples):
        return False
    return p90(times) - samples[0].theory <= GOAL


def slower_than_keepalived(ours: list[Sample], keepalived: list[Sample]) -> float | None:
    """How much later hafs-vrrp3's p90 came than keepalived's in one scenario, beyond the
    probe's resolution (a ping every ``PING_INTERVAL``); None when it came no later."""
    theirs = [s.seconds for s in keepalived if s.seconds is not None]
    times = [s.seconds for s in ours if s.seconds is not None]
    if not theirs:
        return None  # keepalived never took over: nothing to be slower than
    if len(times) < len(ours):
        return math.inf
    late = p90(times) - p90(theirs)
    return late if late > PING_INTERVAL else None


def row(scenario: Scenario, impl: str, interval: float, samples: list[Sample]) -> list[str]:
    theory = samples[0].theory
    times = [s.seconds for s in samples if s.seconds is not None]
    missing = len(samples) - len(times)
    cells = [scenario.title, impl, f"{interval:g} s", f"{len(times)}/{len(samples)}"]
    if not times:
        return [*cells, "-", "-", "-", f"{theory:.3f} s", "-", "FAIL (no takeover)"]
    over = p90(times) - theory
    wrong = sum(s.winner != s.expected for s in samples if s.seconds is not None)
    verdict = "ok" if over <= GOAL else "miss"
    verdict += f" ({'<=' if over <= GOAL else '>'} +{GOAL * 1e3:.0f} ms)"
    if missing:
        verdict = f"FAIL ({missing} without takeover)"
    elif wrong:
        verdict += f", {wrong} wrong winner(s)"
    return [
        *cells,
        f"{median(times):.3f} s",
        f"{p90(times):.3f} s",
        f"{max(times):.3f} s",
        f"{theory:.3f} s",
        f"{over * 1e3:+.0f} ms",
        verdict,
    ]


def vrrp_interval(text: str) -> float:
    """``text`` as a VRRPv3 advert interval: seconds in 0.01 steps, 0.01..40.95."""
    seconds = float(text)
    centis = round(seconds * 100)
    if not (1 <= centis <= MAX_INTERVAL and abs(centis - seconds * 100) < 1e-6):
        raise ValueError(text)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        "Failover and bow-out: hafs (CARP, VRRPv3) vs ucarp, keepalived", "hafs-b"
    )
    parser.add_argument("--runs", type=int, help="kills per scenario and impl (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 runs each unless --runs")
    parser.add_argument(
        "--impl",
        action="append",
        choices=IMPLS,
        help="run this implementation (repeatable; default: all)",
    )
    parser.add_argument(
        "--interval",
        type=vrrp_interval,
        default=1.0,
        help="advert interval of the VRRPv3 implementations, seconds in 0.01 steps (default 1; "
        "CARP's advbase stays 1)",
    )
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else 3 if args.quick else 10
    impls = [impl for impl in IMPLS if impl in (args.impl or IMPLS)]
    started = time.monotonic()
    rows, lags, loads = [], [], [load_average()]
    misses: dict[str, list[str]] = {impl: [] for impl in impls}
    behind: list[str] = []  # scenarios in which hafs-vrrp3 came later than keepalived
    for scenario in SCENARIOS:
        measured = {}
        for impl in impls:
            interval = args.interval if impl in VRRP_IMPLS else ADVBASE
            samples = measured[impl] = measure(args.prefix, scenario, impl, interval, runs)
            rows.append(row(scenario, impl, interval, samples))
            if not met(samples):
                misses[impl].append(scenario.title)
            lags += [s.lag for s in samples]
            loads.append(load_average())
        if {"hafs-vrrp3", "keepalived"} <= measured.keys():
            late = slower_than_keepalived(measured["hafs-vrrp3"], measured["keepalived"])
            if late is not None:
                behind.append(f"{scenario.title} (p90 +{late * 1e3:.0f} ms)")
    headers = ["scenario", "impl", "interval", "runs", "median", "p90", "max", "theory"]
    print()
    print(table([*headers, "p90-theory", "verdict vs goal"], rows))
    print()
    print(
        "theory: CARP 3*advbase + advskew/256 of the winning backup, bow-out 0; VRRPv3 "
        "3*interval + (256-priority)*interval/256, bow-out (256-priority)*interval/256, "
        "priority 254-advskew"
    )
    for impl, missed in misses.items():
        verdict = f"missed in {', '.join(missed)}" if missed else "met in every scenario"
        print(
            f"goal {impl}: every run won by the expected backup, p90 within +{GOAL * 1e3:.0f} ms "
            f"of theory: {verdict}"
        )
    if {"hafs-vrrp3", "keepalived"} <= set(impls):
        verdict = f"later in {', '.join(behind)}" if behind else "met in every scenario"
        print(
            f"goal hafs-vrrp3: p90 no later than keepalived's (+{PING_INTERVAL * 1e3:.0f} ms, "
            f"the probe's resolution): {verdict}"
        )
    print(EARLIER)
    print(
        f"kills came {median(lags) * 1e3:.1f} ms (median, max {max(lags) * 1e3:.1f} ms) after "
        f"the master's advert; pings every {PING_INTERVAL * 1e3:.0f} ms; "
        f"total {time.monotonic() - started:.0f} s"
    )
    print(
        f"1-min load average before, then after each case: "
        f"{', '.join(f'{x:.1f}' for x in loads)} ({os.cpu_count()} cores)"
    )
    ours = [missed for impl, missed in misses.items() if impl in HAFS_IMPLS]
    return 1 if behind or any(ours) else 0


if __name__ == "__main__":
    raise SystemExit(main())
