"""The service layer's idle cost: the CPU of every process of an idle lab, per VIP.

The lab is the example cluster's four nodes (three FreeBSD-role, one Linux; ``hafs agent``
on each) with ``--vips`` VIPs spread over them in turn (vip1 on ha-file-server-1, vip5 on it
too, ...), every node backing up every VIP, replicating every ``--interval`` seconds. Once it
has settled (every VIP served on its home, and every holder has reported a successful send
to every peer, then one more interval), nothing is written for ``--seconds`` and the CPU
used meanwhile is summed.

Counting every process, short-lived ones included (an sshd session, the peer's ``hafs
service`` Python, a ``zfs`` command that lives for a fraction of a second): the bench moves
itself into a cgroup (v2) of its own before it builds the lab, so every process of the lab
is created in it (a cgroup is inherited at fork, and kept by a daemon that detaches: smbd),
and the cgroup's ``cpu.stat`` counts the CPU of every process that ever ran in it, gone or
not. The bench's own CPU in the window (it sleeps) is taken off.

Where it goes: the processes alive at both ends of the window, each with its own CPU and the
CPU of the children it reaped meanwhile (``/proc/<pid>/stat`` utime, stime, cutime, cstime),
grouped by role: the agents, the service daemons (their children: zfs, ssh, ss, ip), sshd
(its children: the sessions of the peers, with the ``hafs service`` they run), zfs-fuse,
smbd. What no process alive at both ends reaped (a session still running at the end, an
orphan) is "the rest".

Goal (issue 14): at most 1 % of one core per VIP, idle. Judged twice: for the whole lab, and
for the service layer alone (the whole lab less the CARP agents, which the issue counted
apart).

Run as root from the repository root: ``sudo python3 bench/idle_cost.py [--vips 4]
[--seconds 60] [--interval 10] [--prefix P]`` (default prefix: hafs-i and 4 random hex
digits).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path as well as with -m

import json
import os
import resource
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise

from bench.common import bench_parser, table
from hafs.cluster import Cluster, load
from hafs.errors import HafsError
from hafs.lab.cluster import ClusterLab
from tests.lab.carp_bed import wait_for

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.0  # % of one core per VIP
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SETTLE_TIMEOUT = 180.0
NODES = [  # the example cluster's nodes (inventory.py): name, os, interface, address
    (f"ha-file-server-{i}", "freebsd" if i < 4 else "linux", "em0" if i < 4 else "ens36")
    for i in range(1, 5)
]
ROLES = ("agent", "service daemon", "sshd", "zfs-fuse", "smbd")


class BenchError(HafsError):
    """The lab could not be measured."""

    exit_code = 1


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# --- the lab ---------------------------------------------------------------------------------


def write_inventory(directory: Path, vips: int, interval: float) -> Path:
    """The example cluster with ``vips`` VIPs, vip<i> homed on node (i - 1) % 4 + 1."""
    hosts = []
    for index, (name, os_name, interface) in enumerate(NODES, start=1):
        homed = [
            {"vhid": i, "name": f"vip{i}", "address": f"172.21.0.{210 + i}", "shares": [f"s{i}"]}
            for i in range(index, vips + 1, len(NODES))
        ]
        data = {
            "os": os_name,
            "interface": interface,
            "address": f"172.21.0.{200 + index}/20",
            "gateway": "172.21.0.1",
            "vips": homed,
        }
        hosts.append((name, data))
    inventory = directory / "inventory.py"
    inventory.write_text(f"nodes = {hosts!r}\n")
    (directory / "group_data").mkdir()
    settings = (REPO / "group_data" / "all.py").read_text()
    (directory / "group_data" / "all.py").write_text(
        f"{settings}\nreplication_interval = {interval:g}\n"
    )
    return inventory


@contextmanager
def idle_lab(prefix: str, vips: int, interval: float) -> Iterator[tuple[ClusterLab, Cluster]]:
    """The lab, up and settled; always torn down (Ctrl-C and SIGTERM included)."""
    with tempfile.TemporaryDirectory(prefix="hafs-idle-") as tmp:
        inventory = write_inventory(Path(tmp), vips, interval)
        cluster = load(inventory)
        lab = ClusterLab(prefix)
        log(f"lab {lab.name}: up ({vips} VIPs, replication every {interval:g}s)")
        try:
            lab.up(str(inventory), None)
            took = wait_for(lambda: replicated(lab, cluster), SETTLE_TIMEOUT, "first sends")
            log(f"lab {lab.name}: every VIP sent to every peer after {took:.0f}s")
            time.sleep(interval)  # and one more round: the window sees the steady state
            yield lab, cluster
        finally:
            log(f"lab {lab.name}: down")
            lab.down()


def replicated(lab: ClusterLab, cluster: Cluster) -> bool:
    """Has every VIP's holder reported a successful send to every peer?"""
    holders = lab.vip_holders()
    for vip in cluster.vips:
        if holders[str(vip.address)] != [vip.home]:
            return False
        out = lab.run(vip.home, ["cat", "/run/hafs/replication.json"], check=False)
        try:
            sent = json.loads(out)["vips"][vip.name]
        except (ValueError, KeyError):
            return False
        if any(not sent.get(peer, {}).get("ok") for peer in vip.backups):
            return False
    return True


def snapshots(lab: ClusterLab, cluster: Cluster) -> set[str]:
    """The snapshots the VIPs' holders have of them (listed before and after the window:
    the new names are what the idle rounds took)."""
    names: set[str] = set()
    for vip in cluster.vips:
        dataset = f"{cluster.zfs_pool}/hafs/{vip.name}"
        argv = ["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-d", "1", dataset]
        names.update(lab.run(vip.home, argv).split())
    return names


# --- counting CPU ----------------------------------------------------------------------------


class Cgroup:
    """A cgroup (v2) of its own for this process and everything it starts from now on."""

    def __init__(self, name: str) -> None:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        roots = [line.split()[1] for line in mounts if line.split()[2] == "cgroup2"]
        if not roots:
            raise BenchError("no cgroup2 file system mounted: cannot count the lab's processes")
        self.root = Path(roots[0])
        own = Path("/proc/self/cgroup").read_text().splitlines()
        self.home = self.root / next(line[3:] for line in own if line.startswith("0::")).lstrip("/")
        self.path = self.root / name
        self.path.mkdir()
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def seconds(self) -> float:
        """CPU time of every process that ever ran in it."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
        raise BenchError(f"{self.path}/cpu.stat: no usage_usec")

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        """Move this process back to where it was; remove the cgroup once it is empty."""
        (self.home / "cgroup.procs").write_text(str(os.getpid()))
        deadline = time.monotonic() + 10
        while self.path.exists():
            try:
                self.path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    log(f"{self.path}: not removed: processes {self.pids()} are still in it")
                    return
                time.sleep(0.1)


@dataclass(frozen=True)
class Process:
    role: str
    own: float  # utime + stime, seconds
    reaped: float  # cutime + cstime: the children it reaped


def role(argv: list[str]) -> str:
    words = set(pairwise(argv))
    if argv[:1] == ["sh"]:
        return "other"  # the lab's supervisors, whose argv names what they supervise
    if ("hafs", "agent") in words:
        return "agent"
    if ("service", "run") in words:
        return "service daemon"
    name = Path(argv[0].split()[0]).name if argv else ""  # sshd retitles itself "sshd: ..."
    if name.startswith("sshd"):
        return "sshd"  # the listener, and sessions alive at both ends
    if name == "zfs-fuse":
        return name
    if name in ("smbd", "samba-dcerpcd") or name.startswith("rpcd_"):
        return "smbd"
    return "other"


def processes(pids: list[int]) -> dict[tuple[int, int], Process]:
    """(pid, start time) -> its role and CPU, of the processes of ``pids`` still there."""
    found = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3, the state
        ticks = [int(f) for f in fields[11:15]]
        found[(pid, int(fields[19]))] = Process(
            role([a for a in argv if a]),
            (ticks[0] + ticks[1]) / CLOCK_TICKS,
            (ticks[2] + ticks[3]) / CLOCK_TICKS,
        )
    return found


def own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Window:
    seconds: float
    total: float  # CPU seconds, the bench's own taken off
    roles: dict[str, tuple[float, float]]  # role -> CPU seconds, own and reaped children, of
    # the processes alive throughout
    load: tuple[float, float]  # 1-minute load average at the start and the end


def measure(cgroup: Cgroup, seconds: float) -> Window:
    """Sum the CPU of the lab over ``seconds`` in which nothing is done to it."""
    load_start = os.getloadavg()[0]
    began, total_began, own_began = time.monotonic(), cgroup.seconds(), own_seconds()
    before = processes(cgroup.pids())
    time.sleep(seconds)
    after = processes(cgroup.pids())
    total = cgroup.seconds() - total_began - (own_seconds() - own_began)
    elapsed = time.monotonic() - began
    roles = dict.fromkeys(ROLES, (0.0, 0.0))
    for key, end in after.items():
        if key in before and key[0] != os.getpid():
            own, reaped = roles.get(end.role, (0.0, 0.0))
            start = before[key]
            roles[end.role] = (own + end.own - start.own, reaped + end.reaped - start.reaped)
    return Window(elapsed, total, roles, (load_start, os.getloadavg()[0]))


# --- the report ------------------------------------------------------------------------------


def percent(cpu: float, window: Window, share: int = 1) -> str:
    return f"{100 * cpu / window.seconds / share:.2f}"


def report(window: Window, vips: int, interval: float, taken: int) -> str:
    rows = [
        [name, percent(own, window), percent(reaped, window), percent(own + reaped, window, vips)]
        for name, (own, reaped) in window.roles.items()
    ]
    rest = window.total - sum(own + reaped for own, reaped in window.roles.values())
    rows.append(["the rest", percent(rest, window), "", percent(rest, window, vips)])
    rows.append(
        ["whole lab", percent(window.total, window), "", percent(window.total, window, vips)]
    )
    whole = 100 * window.total / window.seconds / vips
    service = whole - 100 * sum(window.roles["agent"]) / window.seconds / vips

    def verdict(per_vip: float) -> str:
        return f"{per_vip:.2f} % ({'ok' if per_vip <= GOAL else 'miss'})"

    return "\n".join([
        table(["processes", "own, % of a core", "children reaped, %", "both per VIP, %"], rows),
        "",
        f"{vips} VIPs on 4 nodes, replication every {interval:g}s, {window.seconds:.0f}s idle, "
        f"% of one core per VIP (goal <= {GOAL:g} %): whole lab {verdict(whole)}, service layer "
        f"(all but the agents) {verdict(service)}; snapshots taken meanwhile: {taken}; load "
        f"average {window.load[0]:.2f} at the start, {window.load[1]:.2f} at the end "
        f"({os.cpu_count()} cores)",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("CPU of every process of an idle service lab, per VIP (root)", "hafs-i")
    parser.add_argument("--vips", type=int, default=4, help="VIPs over the 4 nodes (default 4)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the idle window (default 60)")
    parser.add_argument(
        "--interval", type=float, default=10.0, help="seconds between replications (default 10)"
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "idle_cost: error: needs root (network namespaces): run it with sudo", file=sys.stderr
        )
        return 2
    if not 1 <= args.vips <= 40:
        parser.error(f"--vips {args.vips}: give 1 to 40")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # torn down as on Ctrl-C
    cgroup = Cgroup(args.prefix)  # named as the lab
    try:
        with idle_lab(args.prefix, args.vips, args.interval) as (lab, cluster):
            before = snapshots(lab, cluster)
            log(f"measuring {args.seconds:g}s of idle")
            window = measure(cgroup, args.seconds)
            taken = len(snapshots(lab, cluster) - before)
    except HafsError as exc:
        print(f"idle_cost: error: {exc}", file=sys.stderr)
        return 1
    finally:
        cgroup.remove()
    print(report(window, args.vips, args.interval, taken))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
