"""Failover and bow-out time of ``hafs agent`` against stock ucarp, measured in the same run.

Measured: the time from a master's death to the first ping answer for its VIP from another node,
seen by a client namespace on the same bridge that pings the VIP every 10 ms
(:mod:`bench.probe`: raw ICMP socket, replies read with their source MAC, so an answer from the
dying node never counts). Each scenario runs with hafs (one agent per node) and then with
stock ucarp (one process per vhid), advbase 1, preempt on:

- power loss, 2 nodes x 1 VIP: the master's daemon is SIGKILLed and its link cut (Port.cut);
- power loss, 4 nodes x 4 VIPs: each node is home of one VIP, backups ranked by
  ``hafs.cluster.derive_layout`` (advskew 10, 20, 30); run i kills node i mod 4;
- bow-out, 2 nodes: the master gets SIGTERM (hafs bows out; ucarp -z sends nothing).

Every kill comes right after the client sees the master's advert, so the backup's master-down
timer (``3*advbase + advskew/256`` from the last advert) runs in full: the worst case, which is
what the theory column gives (bow-out: 0, the backup takes over at once). Between runs the
cluster is restored: daemons restarted, link plugged, every VIP back home. Reported: median and
nearest-rank p90 (with 10 runs, the second worst); the goal is p90 within 50 ms of theory.

Run as root from the repository root:
``python -m bench.failover [--runs N | --quick] [--prefix P]``.
"""

from __future__ import annotations

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
IMPLS = ("hafs", "ucarp")
ISSUE_UCARP = "earlier ucarp figures (issue 4): 3.13 s with 2 nodes, 4.3-4.7 s with 4x4"


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
    """One scenario's nodes and a client on one bridge, running one implementation."""

    def __init__(self, bed: CarpBed, impl: str, scenario: Scenario) -> None:
        self.bed = bed
        self.impl = impl
        self.scenario = scenario
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
        peer = self.peers[name]
        entries = [(i + 1, vip, self.layout[i][name]) for i, vip in enumerate(self.vips)]
        if self.impl == "hafs":
            if peer.socket is not None:  # a SIGKILLed agent leaves its socket file behind
                Path(peer.socket).unlink(missing_ok=True)
            self.bed.hafs(peer, entries)
            assert peer.proc is not None
            self.procs[name] = [peer.proc]
        else:
            self.procs[name] = [start_ucarp(self.bed, peer, *entry) for entry in entries]

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
        theory = 0.0 if self.scenario.graceful else 3 * ADVBASE + skews[expected] / 256
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
        for proc in self.procs[victim]:
            proc.send_signal(signal.SIGTERM if self.scenario.graceful else signal.SIGKILL)
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
            return Sample(None, lag, None, expected, theory)
        winner = next((n for n, mac in self.macs.items() if mac == reply[3]), reply[3])
        return Sample(float(reply[2]) - death, lag, winner, expected, theory)


def measure(prefix: str, scenario: Scenario, impl: str, runs: int) -> list[Sample]:
    """``runs`` kills of ``scenario`` under ``impl``, in a lab of their own."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="hafs-bench-") as tmp, Lab(prefix) as lab:
        cluster = Cluster(CarpBed(lab, Path(tmp), subnet=SUBNET), impl, scenario)
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


def row(scenario: Scenario, impl: str, samples: list[Sample]) -> list[str]:
    theory = samples[0].theory
    times = [s.seconds for s in samples if s.seconds is not None]
    missing = len(samples) - len(times)
    cells = [scenario.title, impl, f"{len(times)}/{len(samples)}"]
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


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("CARP failover and bow-out: hafs vs ucarp", "hafs-b")
    parser.add_argument("--runs", type=int, help="kills per scenario and impl (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 runs each unless --runs")
    args = parser.parse_args(argv)
    runs = args.runs if args.runs is not None else 3 if args.quick else 10
    started = time.monotonic()
    rows, lags, loads = [], [], []
    for scenario in SCENARIOS:
        for impl in IMPLS:
            samples = measure(args.prefix, scenario, impl, runs)
            rows.append(row(scenario, impl, samples))
            lags += [s.lag for s in samples]
            loads.append(load_average())
    headers = ["scenario", "impl", "runs", "median", "p90", "max", "theory", "p90-theory"]
    print()
    print(table([*headers, "verdict vs goal"], rows))
    print()
    print(f"theory: 3*advbase + advskew/256 of the winning backup (advbase {ADVBASE}); bow-out 0")
    print(f"goal: p90 within +{GOAL * 1e3:.0f} ms of theory; {ISSUE_UCARP}")
    print(
        f"kills came {median(lags) * 1e3:.1f} ms (median, max {max(lags) * 1e3:.1f} ms) after "
        f"the master's advert; pings every {PING_INTERVAL * 1e3:.0f} ms; "
        f"total {time.monotonic() - started:.0f} s"
    )
    print(
        f"1-min load average after each case: {', '.join(f'{x:.1f}' for x in loads)} "
        f"({os.cpu_count()} cores)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
