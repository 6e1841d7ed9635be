"""The fault suite: does a fault lose a write the server acknowledged? Judged by the client.

Each scenario runs on a service lab of its own (the example cluster, ``--interval`` seconds
between replications, a per-run name prefix; torn down always, Ctrl-C included):

1. an SMB client in the lab's client namespace writes ``<scenario>.<n>`` to vip1's share every
   0.2 s (``tests/lab/smb_probe.py writer``) and records when each write was acknowledged;
2. the fault is injected on vip1's home (or holder), then repaired;
3. the cluster settles: every VIP on exactly one node that serves it, no node's agent holding
   the resync demotion, for 3 s in a row, and the client's writes acknowledged again (or the
   settle time-out passes);
4. the writer stops, the share is listed over SMB, and every node lists its kept-aside copies
   (``hafs service diverged list --json``, then the copy's share directory).

Reported per scenario: writes acknowledged, served afterwards, kept aside (recoverable),
lost (acknowledged, not served and not kept aside); seconds in which some VIP had two holders
(``vip_holders()`` sampled every 0.1 s); the longest client outage (the longest gap between
acknowledged writes, from the writer's start to its stop) and the longest from the repair on
(cable plugged back, port forwarding again, agent resumed, nodes started: the resume itself,
then the handback of the VIP to its returning home), with a goal for some scenarios
(:data:`REPAIR_GOALS`: 3 s for the handback after a cut, an isolation or a drain, and for
both moves of ``move``, 5 s after a stall);
the kept-aside copies made on every node (``whole``: a receive found no snapshot in common
with the sender, so retention lost the base; the suite fails on any); for the scenarios with
a power loss
the RPO (seconds between the kill and the last write acknowledged before it that survived).
A power loss (or the holder's ZFS daemon killed: its dirty data dies with it) may lose the
writes acknowledged after the newest snapshot its backup had received (replication is
asynchronous): lost writes count as a failure only if they were
acknowledged before both that snapshot and one replication interval before the kill, or began
(the client's connect) after the kill; each one counted is printed with its times. The
suite exits 1 if a scenario lost a write that counts, missed its goal for the outage after the
repair, or could not be judged.

Run as root from the repository root:
``sudo python3 bench/faults.py [--scenario NAME ...] [--interval 5] [--json FILE] [--prefix P]
[--keep-logs DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path as well as with -m

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise

from bench.common import bench_parser, table
from hafs.cluster import load
from hafs.errors import HafsError
from hafs.holds import RESYNC_HOLD
from hafs.lab.cluster import ClusterLab
from hafs.lab.state import Proc
from hafs.lab.supervise import HAFS
from hafs.service.config import KEEP_SNAPSHOTS
from tests.lab.carp_bed import wait_for
from tests.lab.faults_common import Writes, copies, kept_aside, runs_zfs, served, writer
from tests.lab.test_service import REPO, ServiceLab

VHID = 1  # the VIP written to; its home is ha-file-server-1
LEAD = 6.0  # seconds of writes before the fault
FAULT = 25.0  # how long a cut, an isolation, a stall or a power loss lasts
FLAPS, FLAP = 5, 1.0  # link flaps: this many, cut this long, then plugged as long
SETTLE_TIMEOUT = 240.0
SETTLE_STABLE = 3.0
SAMPLE = 0.1  # seconds between two vip_holders() samples
RESTART_TIMEOUT = 30.0  # the lab's supervisors restart a killed agent (2 s), service (1 s)
AWAY_LONG = 600.0
LONG = ("away-10min",)  # run only when named


class BenchError(HafsError):
    """A scenario could not be run or judged."""

    exit_code = 1


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def clock(monotonic: float) -> str:
    """The wall clock time (to the ms, as the nodes' logs say it) of a monotonic time."""
    wall = time.time() - (time.monotonic() - monotonic)
    return time.strftime("%H:%M:%S", time.localtime(wall)) + f",{int(wall % 1 * 1000):03d}"


# --- the lab, the writer, the watcher ---------------------------------------------------------


@contextmanager
def service_lab(
    interval: float, prefix: str, keep_logs: Path | None = None
) -> Iterator[ServiceLab]:
    """The example cluster with ``interval`` s between replications, as a lab of its own
    named ``prefix``; ``keep_logs``: where its nodes' logs are copied before it goes down."""
    with tempfile.TemporaryDirectory(prefix="hafs-faults-") as tmp:
        shutil.copy(REPO / "inventory.py", Path(tmp) / "inventory.py")
        (Path(tmp) / "group_data").mkdir()
        text, found = re.subn(
            r"(?m)^replication_interval = \S+",
            f"replication_interval = {interval:g}",
            (REPO / "group_data" / "all.py").read_text(),
        )
        if found != 1:
            raise BenchError("group_data/all.py: no 'replication_interval = N' line to set")
        (Path(tmp) / "group_data" / "all.py").write_text(text)
        inventory = str(Path(tmp) / "inventory.py")
        lab = ClusterLab(prefix)
        log(f"lab {lab.name}: up")
        try:
            lab.up(inventory, None, lambda message: log(f"lab {lab.name}: {message}"))
            yield ServiceLab(lab, load(inventory))
        finally:
            if keep_logs is not None:
                log(f"lab {lab.name}: its logs kept in {keep(lab, keep_logs)}")
            log(f"lab {lab.name}: down")
            lab.down()


def keep(lab: ClusterLab, into: Path) -> Path:
    """Copy the lab's state.json and its nodes' logs (only those: agent.toml holds the CARP
    passphrase, the lab directory the replication key) to a new ``into/<time>``, 0700."""
    kept = into / time.strftime("%Y%m%dT%H%M%S")
    kept.mkdir(mode=0o700, parents=True)
    for path in [lab.dir / "state.json", *lab.dir.glob("*/*.log")]:
        if path.is_file():
            (kept / path.relative_to(lab.dir)).parent.mkdir(mode=0o700, exist_ok=True)
            shutil.copy(path, kept / path.relative_to(lab.dir))
    return kept


@contextmanager
def two_holders(s: ServiceLab) -> Iterator[list[float]]:
    """Sample ``vip_holders()`` every 0.1 s; yields [seconds in which a VIP had two holders]."""
    seconds = [0.0]
    stop = threading.Event()

    def watch() -> None:
        last = time.monotonic()
        while not stop.wait(SAMPLE):
            doubled = any(len(h) > 1 for h in s.lab.vip_holders().values())
            now = time.monotonic()
            seconds[0] += (now - last) if doubled else 0.0
            last = now

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield seconds
    finally:
        stop.set()
        watcher.join()


# --- the scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kill:
    """A power loss at ``at``; writes acknowledged after ``replicated`` may die with it, if
    they began before ``at`` (a write that began later can only be acknowledged by a node
    that is up)."""

    at: float
    replicated: float


@dataclass(frozen=True)
class Fault:
    """What a scenario did: its power losses, and when the fault was repaired (cable plugged
    back, port forwarding again, agent resumed), if the scenario has such a moment."""

    kills: list[Kill]
    repaired: float | None = None


# the longest client outage after the repair, seconds: the clients' wait at the handback (the
# returning home takes its VIP back after its resync), and after a stall at the resume as well
REPAIR_GOALS = {"cut": 3.0, "isolate": 3.0, "drain": 3.0, "move": 3.0, "stall": 5.0}


def home(s: ServiceLab) -> str:
    return s.cluster.vip(VHID).home


def holder(s: ServiceLab) -> str:
    holders = s.holders(VHID)
    if len(holders) != 1:
        raise BenchError(f"vip{VHID} is held by {holders or 'nobody'}: want one holder")
    return holders[0]


def up(s: ServiceLab, node: str) -> bool:
    anchor = s.lab.procs(node).get("anchor")
    return anchor is not None and anchor.alive


def power_off(s: ServiceLab, node: str) -> Kill:
    """``hafs lab kill`` the node, after reading which snapshot its VIP's backup has."""
    return lose(s, node, "power off", lambda: s.lab.kill(node))


def lose(s: ServiceLab, node: str, what: str, kill: Callable[[], None]) -> Kill:
    """Run ``kill``, which loses what the node's pool had not replicated (power off, its
    ZFS daemon killed), after reading which snapshot its VIP's backup has."""
    vip = s.cluster.vip(VHID)
    backup = next(n for n in vip.carriers if n != node and up(s, n))
    report = s.lab.run(node, ["cat", "/run/hafs/replication.json"], check=False)
    began, began_wall = time.monotonic(), time.time()
    kill()
    # the node answers until kill() has cut its cable (0.03-0.5 s under load): a write that
    # began meanwhile is in its lag like the ones just before
    at = time.monotonic()
    replicated = began - s.cluster.replication_interval
    try:
        as_of = json.loads(report)["vips"][vip.name][backup]["as_of"]
    except (ValueError, KeyError):
        log(f"{what} {node}: no replication report for {vip.name} -> {backup}")
    else:
        replicated = min(replicated, began - (began_wall - as_of))
    lag = at - replicated
    late = (
        " (REPLICATION BEHIND: over two intervals)"
        if lag > 2 * s.cluster.replication_interval
        else ""
    )
    log(f"{what} {node}: the last {lag:.1f}s of writes may be lost (replication lag){late}")
    return Kill(at, replicated)


def cut(s: ServiceLab) -> Fault:
    """the home's cable cut 25 s, then plugged back (lab partition/heal)"""
    s.lab.partition(home(s))
    time.sleep(FAULT)
    s.lab.heal(home(s))
    return Fault([], time.monotonic())


def isolate(s: ServiceLab) -> Fault:
    """the home's switch port stops forwarding 25 s, carrier stays up (lab isolate/rejoin)"""
    s.lab.isolate(home(s))
    time.sleep(FAULT)
    s.lab.rejoin(home(s))
    return Fault([], time.monotonic())


def drain(s: ServiceLab) -> Fault:
    """planned maintenance: the home drained (hafs drain) 25 s, then undrained"""
    s.lab.run(home(s), [sys.executable, "-m", "hafs", "drain"])
    time.sleep(FAULT)
    s.lab.run(home(s), [sys.executable, "-m", "hafs", "undrain"])
    return Fault([], time.monotonic())


def move(s: ServiceLab) -> Fault:
    """planned: vip1 moved to its best backup (hafs move), 25 s, then moved home; both
    moves are judged (the outage goal counts from the first)"""
    node, backup = home(s), s.cluster.vip(VHID).backups[0]
    name = s.cluster.vip(VHID).name
    began = time.monotonic()
    s.lab.run(node, [sys.executable, "-m", "hafs", "move", name, backup])
    time.sleep(FAULT)
    s.lab.run(backup, [sys.executable, "-m", "hafs", "move", name, node])
    return Fault([], began)


def flaps(s: ServiceLab) -> Fault:
    """five 1 s cuts of the home's cable, 1 s apart"""
    for _ in range(FLAPS):
        s.lab.partition(home(s))
        time.sleep(FLAP)
        s.lab.heal(home(s))
        time.sleep(FLAP)
    return Fault([], time.monotonic())


def stall(s: ServiceLab) -> Fault:
    """the home's hafs agent SIGSTOPped 25 s, then SIGCONT"""
    agent = s.lab.agent(home(s))
    if agent is None:
        raise BenchError(f"{home(s)}: no hafs agent runs")
    agent.signal(signal.SIGSTOP)
    try:
        time.sleep(FAULT)
    finally:
        agent.signal(signal.SIGCONT)
    return Fault([], time.monotonic())


def agent_kill(s: ServiceLab) -> Fault:
    """the holder's hafs agent SIGKILLed; the lab restarts it as systemd would"""
    return _kill_supervised(s, "hafs agent", s.lab.agent)


def service_kill(s: ServiceLab) -> Fault:
    """the holder's hafs service daemon SIGKILLed; its supervisor runs it again (Restart=always);
    2 intervals later the holder loses power (the RPO: replication went on), back 25 s later"""
    _kill_supervised(s, "hafs service run", s.lab.service)
    time.sleep(2 * s.cluster.replication_interval)
    node = holder(s)
    kill = power_off(s, node)
    time.sleep(FAULT)
    s.lab.start(node)
    return Fault([kill], time.monotonic())


def _kill_supervised(s: ServiceLab, what: str, find: Callable[[str], Proc | None]) -> Fault:
    """SIGKILL the holder's ``what`` (``find`` names its process) and wait for its
    supervisor to run a new one."""
    node = holder(s)
    proc = find(node)
    if proc is None:
        raise BenchError(f"{node}: no {what} runs")
    proc.signal(signal.SIGKILL)
    took = wait_for(lambda: find(node) not in (None, proc), RESTART_TIMEOUT, f"{what} again")
    log(f"{node}: {what} running again {took:.1f}s after the kill")
    return Fault([], time.monotonic())


def zfs_kill(s: ServiceLab) -> Fault:
    """the holder's ZFS daemon (zfs-fuse) SIGKILLed; 25 s later the node is rebooted"""
    node = holder(s)
    zfs = s.lab.procs(node).get("zfs-fuse")
    if zfs is None:
        raise BenchError(f"{node}: no zfs-fuse runs")

    def kill() -> None:  # its dirty data (the open transaction groups) dies with it
        zfs.signal(signal.SIGKILL)
        wait_for(lambda: not zfs.alive, RESTART_TIMEOUT, "zfs-fuse gone", step=0.01)

    kill_at = lose(s, node, "zfs-fuse killed on", kill)
    time.sleep(FAULT)
    s.lab.stop(node)
    s.lab.start(node)
    return Fault([kill_at], time.monotonic())


def zfs_stall(s: ServiceLab) -> Fault:
    """the holder's ZFS daemon (zfs-fuse) SIGSTOPped 25 s while its service daemon's round
    waits on a zfs command (a hung pool: a dying disk), then SIGCONT"""
    node = holder(s)
    zfs, daemon = s.lab.procs(node).get("zfs-fuse"), s.lab.service(node)
    if zfs is None or daemon is None:
        raise BenchError(f"{node}: no zfs-fuse or no hafs service runs")
    wait_for(lambda: runs_zfs(daemon.pid), FAULT, "a round's zfs command", step=0.005)
    kill_at = lose(s, node, "zfs-fuse stopped on", lambda: zfs.signal(signal.SIGSTOP))
    try:
        time.sleep(FAULT)
    finally:
        zfs.signal(signal.SIGCONT)
    return Fault([kill_at], time.monotonic())


def full(s: ServiceLab) -> Fault:
    """vip1's share filled to disk full; once a backup has it all, its holder loses power;
    the filler's files deleted on the new holder, the old one started again"""
    fill = subprocess.run(
        s.probe("fill", VHID, "filler"), capture_output=True, text=True, cwd=REPO, check=False
    )
    filled, filled_wall = time.monotonic(), time.time()
    log(f"filled: {len(fill.stdout.splitlines())} MiB acknowledged, then {fill.stderr.strip()}")
    backup = s.cluster.vip(VHID).backups[0]
    s.wait_replicated(VHID, backup, filled_wall, timeout=FAULT * 4)
    log(f"{backup} has all of it {time.monotonic() - filled:.1f}s after the share was full")
    node = holder(s)
    kill = power_off(s, node)
    wait_for(lambda: s.holders(VHID) not in ([], [node]), FAULT, "a takeover", step=0.2)
    wait_for(
        lambda: subprocess.run(s.probe("remove", VHID, "filler"), cwd=REPO, check=False,
                               capture_output=True).returncode == 0,
        FAULT, "the filler's files deleted on the new holder", step=1.0,
    )  # fmt: skip
    log(f"the filler's files deleted on {holder(s)}")
    s.lab.start(node)
    return Fault([kill], time.monotonic())


def power(s: ServiceLab) -> Fault:
    """the holder loses power (lab kill) for 25 s, then is started again"""
    node = holder(s)
    kill = power_off(s, node)
    time.sleep(FAULT)
    s.lab.start(node)
    return Fault([kill], time.monotonic())


def two_nodes(s: ServiceLab) -> Fault:
    """the holder loses power, then the node that took over too; both started 25 s later"""
    first = holder(s)
    kills = [power_off(s, first)]
    wait_for(lambda: s.holders(VHID) not in ([], [first]), FAULT, "a takeover", step=0.2)
    time.sleep(2 * s.cluster.replication_interval)  # writes land on the new holder
    second = holder(s)
    kills.append(power_off(s, second))
    time.sleep(FAULT)
    for node in (first, second):
        s.lab.start(node)
    return Fault(kills, time.monotonic())


def away(s: ServiceLab) -> Fault:
    """the home loses power for longer than snapshot retention, then is started again"""
    retention = KEEP_SNAPSHOTS * s.cluster.replication_interval
    return _away(s, retention + 2 * s.cluster.replication_interval)


def away_long(s: ServiceLab) -> Fault:
    """the home loses power for 10 minutes (5x the default retention), then is started"""
    return _away(s, AWAY_LONG)


def _away(s: ServiceLab, seconds: float) -> Fault:
    node = home(s)
    kill = power_off(s, node)
    log(f"{node}: away {seconds:.0f}s")
    time.sleep(seconds)
    s.lab.start(node)
    return Fault([kill], time.monotonic())


SCENARIOS: dict[str, Callable[[ServiceLab], Fault]] = {
    "cut": cut,
    "isolate": isolate,
    "drain": drain,
    "move": move,
    "flaps": flaps,
    "stall": stall,
    "agent-kill": agent_kill,
    "service-kill": service_kill,
    "zfs-kill": zfs_kill,
    "zfs-stall": zfs_stall,
    "full": full,
    "power": power,
    "two-nodes": two_nodes,
    "away": away,
    "away-10min": away_long,
}


# --- settling and judging ----------------------------------------------------------------------


def calm(s: ServiceLab) -> bool:
    """Every VIP on one node that serves it, and no node's agent holds the resync demotion."""
    holders = s.lab.vip_holders()
    if any(len(h) != 1 for h in holders.values()):
        return False
    if not all(s.lab.serving(h[0], vip) for vip, h in holders.items()):
        return False
    for node in s.lab.state["nodes"]:
        out = s.lab.run(node, [*HAFS, "demote", "--json"], check=False)
        if not out or RESYNC_HOLD in json.loads(out)["holds"]:
            return False
    return True


def settle(s: ServiceLab, writes: Writes) -> float | None:
    """Seconds until the cluster became calm (for 3 s in a row, with a write acknowledged
    meanwhile); None if it did not."""
    began = time.monotonic()
    since: float | None = None
    while time.monotonic() - began < SETTLE_TIMEOUT:
        if not calm(s):
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= SETTLE_STABLE and writes.last > since:
            return since - began
        time.sleep(0.5)
    return None


@dataclass
class Row:
    scenario: str
    acknowledged: int = 0
    served: int = 0
    kept_aside: int = 0
    lost: int = 0
    lost_counted: int = 0  # lost, and not excused by a power loss's replication lag
    two_holders: float = 0.0
    outage: float = 0.0
    after_repair: float | None = None  # the longest outage from the repair on
    goal: float | None = None  # REPAIR_GOALS
    rpo: float | None = None
    copies: int = 0  # kept-aside copies made, on every node
    whole: int = 0  # of them, whole datasets: a receive found no common snapshot (retention)
    settled: float | None = None
    load: float = 0.0
    error: str = ""

    @property
    def slow(self) -> bool:
        """Over the goal for the outage after the repair."""
        after, goal = self.after_repair, self.goal
        return after is not None and goal is not None and after > goal

    @property
    def failed(self) -> bool:
        return bool(self.error) or self.lost_counted > 0 or self.slow or self.whole > 0

    def cells(self) -> list[str]:
        if self.error:
            return [self.scenario, *["-"] * 11, f"ERROR: {self.error}"]
        verdict = f"LOST {self.lost_counted}" if self.lost_counted else "ok"
        if self.lost > self.lost_counted:
            verdict += f" ({self.lost - self.lost_counted} within replication lag)"
        if self.whole:
            verdict += f"; {self.whole} WHOLE COPIES: the common snapshot was lost"
        if self.slow:
            verdict += f"; SLOW: {self.after_repair:.1f}s after the repair (goal {self.goal:g}s)"
        after = "-" if self.after_repair is None else f"{self.after_repair:.1f}"
        return [
            self.scenario,
            str(self.acknowledged),
            str(self.served),
            str(self.kept_aside),
            str(self.lost),
            f"{self.two_holders:.1f}",
            f"{self.outage:.1f}",
            after + ("" if self.goal is None else f" (<= {self.goal:g})"),
            "-" if self.rpo is None else f"{self.rpo:.1f}",
            f"{self.copies} ({self.whole} whole)" if self.whole else str(self.copies),
            "timeout" if self.settled is None else f"{self.settled:.0f}",
            f"{self.load:.1f}",
            verdict,
        ]


HEADERS = [
    "scenario", "acked", "served", "kept aside", "lost", "2 holders s", "outage s",
    "after repair s", "RPO s", "copies", "settled s", "load", "verdict",
]  # fmt: skip


def judge(
    s: ServiceLab,
    name: str,
    writes: Writes,
    doubled: float,
    fault: Fault,
    settled: float | None,
) -> Row:
    acked = {f"{name}.{n}": at for n, at in writes.acked.items()}
    now_served = served(s, VHID) & acked.keys()  # retried while the VIP settles
    kept = (kept_aside(s, VHID) & acked.keys()) - now_served
    made = [copy for found in copies(s).values() for copy in found]
    began = {f"{name}.{n}": at for n, at in writes.began.items()}
    lost = {f: at for f, at in acked.items() if f not in now_served and f not in kept}
    kills = fault.kills
    counted = [
        f
        for f, at in lost.items()
        if not any(k.replicated < at and began[f] <= k.at for k in kills)
    ]
    for f in counted:
        since = ", ".join(
            f"began {began[f] - k.at:+.3f}s, acknowledged {lost[f] - k.at:+.3f}s from a kill"
            for k in kills
        )
        log(f"{name}: LOST {f}: {since or 'no kill'}")
    times = [writes.started, *sorted(acked.values()), writes.stopped]
    a, b = max(pairwise(times), key=lambda gap: gap[1] - gap[0])
    log(f"{name}: the longest outage, {b - a:.1f}s: from {clock(a)} to {clock(b)}")
    after = None
    if fault.repaired is not None:
        later = [fault.repaired, *(t for t in times if t > fault.repaired)]
        after = max((b - a for a, b in pairwise(later)), default=0.0)
    rpos = []
    for kill in kills:
        survived = [at for f, at in acked.items() if at <= kill.at and f not in lost]
        rpos.append(kill.at - max(survived, default=writes.started))
    return Row(
        name,
        acknowledged=len(acked),
        served=len(now_served),
        kept_aside=len(kept),
        lost=len(lost),
        lost_counted=len(counted),
        two_holders=doubled,
        outage=b - a,
        after_repair=after,
        goal=REPAIR_GOALS.get(name),
        rpo=max(rpos, default=None),
        copies=len(made),
        whole=sum(1 for copy in made if copy["whole"]),
        settled=settled,
        load=os.getloadavg()[0],
    )


def run(name: str, interval: float, prefix: str, keep_logs: Path | None = None) -> Row:
    """One scenario on a lab of its own: write, break, repair, settle, judge."""
    with service_lab(interval, prefix, keep_logs / name if keep_logs else None) as s:
        s.wait_replicated(VHID, s.cluster.vip(VHID).backups[0], time.time())
        with two_holders(s) as doubled:
            with writer(s, VHID, name) as writes:
                time.sleep(LEAD)
                log(f"{name}: {SCENARIOS[name].__doc__}")
                fault = SCENARIOS[name](s)
                log(f"{name}: repaired; waiting for the cluster to settle")
                settled = settle(s, writes)
                log(f"{name}: " + ("not settled" if settled is None else f"settled {settled:.0f}s"))
            log(f"{name}: {len(writes.acked)} writes acknowledged; listing the share")
            return judge(s, name, writes, doubled[0], fault, settled)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(
        "Faults judged by an SMB client: acknowledged writes served, kept aside or lost after "
        "each fault. Each scenario runs on a service lab of its own (root).",
        "hafs-f",
        epilog="scenarios:\n" + "\n".join(f"  {n:<13} {f.__doc__}" for n, f in SCENARIOS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help="run this scenario (repeatable; default: all but the long ones, "
        f"{', '.join(LONG)}, in the order below)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="seconds between replications (default 5)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    parser.add_argument(
        "--keep-logs",
        metavar="DIR",
        type=Path,
        help="copy every node's logs to DIR/<scenario>/<time> before its lab goes down",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("faults: error: needs root (network namespaces): run it with sudo", file=sys.stderr)
        return 2
    if args.interval <= 0:
        parser.error(f"--interval {args.interval:g}: give a positive number of seconds")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # torn down as on Ctrl-C
    rows = []
    for name in args.scenario or [n for n in SCENARIOS if n not in LONG]:
        try:
            rows.append(run(name, args.interval, args.prefix, args.keep_logs))
        except (HafsError, AssertionError, subprocess.SubprocessError) as exc:
            log(f"{name}: {exc}")
            rows.append(Row(name, error=str(exc).splitlines()[0], load=os.getloadavg()[0]))
        print(table(HEADERS, [rows[-1].cells()]), flush=True)
    print()
    print(table(HEADERS, [row.cells() for row in rows]))
    loads = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nreplication every {args.interval:g}s, snapshots kept {KEEP_SNAPSHOTS}; load average "
        f"(1, 5, 15 min) {loads} on {os.cpu_count()} cores; load column: 1-min after each"
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
