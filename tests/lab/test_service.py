"""The service moves with the VIP, in the 4-node lab on zfs-fuse and Debian's samba.

The example cluster with a 3 s replication interval. SMB clients run in the lab's client
namespace (tests/lab/smb_probe.py); times compare CLOCK_MONOTONIC, shared by all namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hafs.cluster import Cluster, load
from hafs.lab.cluster import ClusterLab
from hafs.lab.netns import LabError, new_prefix
from hafs.lab.state import Proc, start_time
from hafs.lab.supervise import HAFS
from tests.lab.carp_bed import wait_for
from tests.lab.conftest import skip_or_fail

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 5
USER, PASSWORD = "alice", "alice-lab-pw"
T = TypeVar("T")


class ServiceLab:
    """A running lab plus the SMB client helpers the tests use."""

    def __init__(self, lab: ClusterLab, cluster: Cluster) -> None:
        self.lab = lab
        self.cluster = cluster

    def probe(
        self, verb: str, vhid: int, path: str, *rest: str, login: tuple[str, str] = (USER, PASSWORD)
    ) -> list[str]:
        vip = self.cluster.vip(vhid)
        return [
            *self.lab.enter("client"), sys.executable, "-m", "tests.lab.smb_probe", verb,
            str(vip.address), vip.shares[0].name, path, *login, *rest,
        ]  # fmt: skip

    def login(self, vhid: int, user: str, password: str) -> int:
        argv = self.probe("login", vhid, "-", login=(user, password))
        return subprocess.run(argv, capture_output=True, cwd=REPO, check=False).returncode

    def put(self, vhid: int, path: str, data: str) -> None:
        result = subprocess.run(
            self.probe("put", vhid, path),
            input=data.encode(),
            capture_output=True,
            cwd=REPO,
            check=False,
        )
        assert result.returncode == 0, f"put {path} to VIP{vhid}: {result.stderr.decode()[-600:]}"

    def get(self, vhid: int, path: str) -> str:
        result = subprocess.run(
            self.probe("get", vhid, path), capture_output=True, text=True, check=True, cwd=REPO
        )
        return result.stdout

    def wait_served(self, vhid: int, path: str, timeout: float) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.probe("wait", vhid, path, str(timeout)),
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )

    def kill_and_time(self, node: str, vhid: int, path: str, content: str) -> tuple[float, float]:
        """Power off ``node``, the VIP's holder; return when (monotonic) and the RTO: the time
        until the VIP's best backup serves ``path`` with ``content``. The goal, 3*advbase +
        advskew/256 + 1 s (the probe adds up to 0.6 s: its 0.5 s connect timeout and 0.1 s
        between tries), is printed beside it by the caller (a timing claim, not asserted on
        a loaded machine: bench/failover.py compares it); a takeover must come within
        :data:`STALLED_TAKEOVER_BOUND`, which tells a working takeover from a hung one."""
        backup = self.cluster.vip(vhid).backups[0]
        waiting = self.wait_served(vhid, path, STALLED_TAKEOVER_BOUND)
        killed_at = time.monotonic()
        self.lab.kill(node)
        out, _ = waiting.communicate(timeout=STALLED_TAKEOVER_BOUND + 10)
        assert out, (
            f"VIP{vhid} not served within {STALLED_TAKEOVER_BOUND:.0f}s: {self.diagnose(vhid)}"
        )
        served_at, served = out.rstrip("\n").split(" ", 1)
        assert served == content
        assert self.holders(vhid) == [backup]
        return killed_at, float(served_at) - killed_at

    def diagnose(self, vhid: int) -> str:
        """Where the VIP is and the tail of every node's agent log, for a failure message."""
        lines = [f"holders {self.holders(vhid)}"]
        name = self.cluster.vip(vhid).name
        for node in self.lab.state["nodes"]:
            for log in ("agent.log", "service.log"):
                path = self.lab.dir / node / log
                text = path.read_text().splitlines() if path.exists() else []
                mine = [line for line in text if f"vhid {vhid}" in line or name in line]
                lines += [f"--- {node} {log}", *mine[-12:]]
            with contextlib.suppress(LabError):
                lines += [f"--- {node} snapshots", *self.snapshots(node, vhid)[-4:]]
        return "\n".join(lines)

    def snapshots(self, node: str, vhid: int) -> list[str]:
        """The names of ``node``'s snapshots of the VIP, oldest first."""
        dataset = f"{self.cluster.zfs_pool}/hafs/{self.cluster.vip(vhid).name}"
        # a time limit: a node whose pool hangs (a fault test) must not hang the diagnosis
        argv = ["timeout", "10", "zfs", "list", "-H", "-t", "snapshot", "-o", "name"]
        argv += ["-s", "createtxg", "-d", "1", dataset]
        return [n.split("@")[1] for n in self.lab.run(node, argv).split()]

    def idle_snapshots(self, vhids: list[int], rounds: int = 2) -> dict[int, list[str]]:
        """The holders' snapshots of the VIPs, once ``rounds`` replication intervals passed
        with no new one: nothing written, no snapshot (a client that was connected at a
        round and is gone at the next changes the dataset's list of connections once)."""

        def look() -> dict[int, list[str]]:
            return {vhid: self.snapshots(self.holders(vhid)[0], vhid) for vhid in vhids}

        found, since = look(), time.monotonic()
        deadline = since + (rounds + 4) * INTERVAL
        while time.monotonic() - since < rounds * INTERVAL:
            assert time.monotonic() < deadline, f"idle, still snapshotted: {found}"
            time.sleep(1)
            now = look()
            if now != found:
                found, since = now, time.monotonic()
        return found

    def wait_replicated(self, vhid: int, peer: str, since: float, timeout: float = 60) -> None:
        """Until the VIP's holder reports ``peer`` has every write made up to a moment after
        ``since`` (wall clock): what was written before ``since`` is then safe there."""
        name = self.cluster.vip(vhid).name

        def done() -> bool:
            (holder,) = self.holders(vhid)
            out = self.lab.run(holder, ["cat", "/run/hafs/replication.json"], check=False)
            try:
                item = json.loads(out)["vips"][name][peer]
            except (ValueError, KeyError):
                return False
            return bool(item["ok"]) and item["as_of"] > since

        try:
            wait_for(done, timeout, f"{name} replicated to {peer}", step=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose(vhid)}") from None

    def holders(self, vhid: int) -> list[str]:
        return self.lab.vip_holders()[str(self.cluster.vip(vhid).address)]

    def smbd_nodes(self, vhid: int) -> list[str]:
        """Nodes running an smbd for the VIP (its smb.conf on the command line)."""
        name = self.cluster.vip(vhid).name
        found = []
        for node, state in self.lab.state["nodes"].items():
            for pid in pids_of_netns(state["ns"]):
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmdline[0].endswith(b"smbd") and any(
                    f"/{name}/samba/smb.conf".encode() in a for a in cmdline
                ):
                    found.append(node)
                    break
        return found


def receivers(s: ServiceLab, node: str, vip: str) -> list[int]:
    """The ``hafs service receiver`` processes of ``vip`` on ``node``: each a holder's
    session, run by the forced command (its request in ``$SSH_ORIGINAL_COMMAND``)."""
    found = []
    for pid in pids_of_netns(s.lab.node_state(node)["ns"]):
        if "ssh-command" not in _argv(pid):  # not a shell sshd may have run it in
            continue
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if (
                f"SSH_ORIGINAL_COMMAND={shlex.join(HAFS)} service receiver {vip}".encode()
                in environ
            ):
                found.append(pid)
    return found


def pids_of_netns(ns: str) -> list[int]:
    from hafs.lab.supervise import pids_in_netns

    return pids_in_netns(ns)


def example_inventory(tmp_path: Path) -> str:
    """The example inventory, copied into ``tmp_path`` with a replication interval of
    :data:`INTERVAL`; skips (fails under CI) when the service lab cannot run here."""
    for tool in ("zfs-fuse", "smbd", "sshd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            reason = f"the service lab needs {tool}"
            skip_or_fail(reason)
    shutil.copy(REPO / "inventory.py", tmp_path / "inventory.py")
    (tmp_path / "group_data").mkdir()
    text = (REPO / "group_data" / "all.py").read_text()
    text = text.replace("replication_interval = 10", f"replication_interval = {INTERVAL}")
    (tmp_path / "group_data" / "all.py").write_text(text)
    return str(tmp_path / "inventory.py")


@pytest.fixture
def service_lab(require_lab: None, tmp_path: Path) -> Iterator[ServiceLab]:
    inventory = example_inventory(tmp_path)
    lab = ClusterLab(new_prefix("hafs-s"))
    try:
        lab.up(inventory, None)
        yield ServiceLab(lab, load(inventory))
    finally:
        lab.down()


def master_down(cluster: Cluster, vhid: int, node: str) -> float:
    vip = cluster.vip(vhid)
    return 3 * vip.advbase + vip.advskew[node] / 256


def test_failover_and_failback_lose_nothing(service_lab: ServiceLab) -> None:
    s = service_lab
    home, backup = "ha-file-server-1", s.cluster.vip(1).backups[0]
    budget = master_down(s.cluster, 1, backup) + 1
    # an idle SMB client: without tickle ACKs it would learn of the failover only when it
    # next sends (then after TCP retransmission timeouts); with them, at the takeover
    idle = subprocess.Popen(
        s.probe("idle", 1, "-", str(budget + 30)), stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert idle.stdout is not None and idle.stdout.readline() == "connected\n"
    s.put(1, "f0.txt", "an earlier write")
    s.wait_replicated(1, backup, time.time())
    (receiver,) = receivers(s, backup, "vip1")  # the home keeps one running there
    s.put(1, "f1.txt", "written on the home node")
    # a snapshot taken after the acknowledged write (and with the idle client's connection)
    s.wait_replicated(1, backup, time.time())
    assert receivers(s, backup, "vip1") == [receiver], "a send did not go through the receiver"

    # sample which nodes run an smbd for VIP1, all along
    doubles: list[list[str]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            nodes = s.smbd_nodes(1)
            if len(nodes) > 1:
                doubles.append(nodes)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        killed_at, rto = s.kill_and_time(home, 1, "f1.txt", "written on the home node")
        print(
            f"\nRTO VIP1 after power loss: {rto:.2f}s (goal {budget:.2f}s + 0.6 s probe; "
            f"load {os.getloadavg()[0]:.1f})"
        )
        told, _ = idle.communicate(timeout=budget + 40)
        assert told.endswith(" reset\n"), f"the idle client was not reset: {told!r}"
        print(f"idle SMB client reset {float(told.split()[0]) - killed_at:.2f}s after the kill")

        s.put(1, "f2.txt", "written on the backup")
        s.lab.start(home)
        # demoted until synced: the home does not take the VIP back at once
        time.sleep(1)
        status = s.lab.run(home, [sys.executable, "-m", "hafs", "demote", "--json"])
        assert '"resync": 240' in status, status
        assert s.holders(1) == [backup]
        took = wait_for(lambda: s.holders(1) == [home], 60, "VIP1 back on its home", step=0.2)
        print(f"failback completed {took + 1:.1f}s after the home node was started")
        assert s.get(1, "f1.txt") == "written on the home node"
        assert s.get(1, "f2.txt") == "written on the backup"
    finally:
        stop.set()
        watcher.join()
        idle.kill()
        idle.wait()
    assert doubles == [], f"two smbd instances served VIP1 at once: {doubles[:3]}"


# A takeover that does not wait for a stalled receive serves within seconds; one that waited
# would serve only when the stalled receive ends, 600 s later. A bound that tells the two
# behaviours apart on a loaded machine, not a timing claim: the RTO is printed, not asserted
# (timing claims belong in the benchmarks).
STALLED_TAKEOVER_BOUND = 60.0
RECEIVE_NICE = 10  # replication gives way to takeovers


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (0: state, 1: ppid, 3: session,
    16: nice); None if the process is gone. One pid namespace for the lab and the tests."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _processes() -> list[tuple[int, list[str], list[str]]]:
    """Every process of the machine: pid, stat fields, argv."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                found.append((int(entry), stat, _argv(int(entry))))
    return found


def _poll(find: Callable[[], T | None], timeout: float, what: str, s: ServiceLab) -> T:
    """Poll ``find`` until it returns a value; fail naming ``what``, with the VIP's state."""
    found: list[T] = []

    def done() -> bool:
        value = find()
        if value is not None:
            found.append(value)
        return value is not None

    try:
        wait_for(done, timeout, what, step=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{s.diagnose(1)}") from None
    return found[0]


def test_a_takeover_does_not_wait_for_a_receive_from_the_dead_holder(
    service_lab: ServiceLab,
) -> None:
    s = service_lab
    vip = s.cluster.vip(1)
    home, backup = "ha-file-server-1", vip.backups[0]
    dataset = f"{s.cluster.zfs_pool}/hafs/vip1"
    # niced relative to this process: the lab's daemons (sshd too) and the receive below
    # inherit its priority (10 when the tests run at the default 0)
    nice = str(min(19, os.getpriority(os.PRIO_PROCESS, 0) + RECEIVE_NICE))
    s.put(1, "r.txt", "replicated")
    s.wait_replicated(1, backup, time.time())
    listed = ["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-d", "1"]
    listed.append(dataset)
    base = s.lab.run(backup, listed).split()[-1].split("@")[1]
    # a receive on the backup whose stream never comes: its sender died (and sshd has no
    # ClientAliveInterval to notice); the holder's next receives queue behind it
    stalled = subprocess.Popen(
        [*s.lab.enter(backup), "sh", "-c",
         f"sleep 600 | {sys.executable} -m hafs service receive vip1 --base {base}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=REPO,
    )  # fmt: skip
    try:
        # Its `hafs service receive` (found by its session: never one of the holder's receives,
        # which come and go every interval) registered, holds the VIP's lock and waits in its
        # `zfs recv` (started under the lock, after the rollback) for a stream that never comes.
        def stalled_in_zfs_recv() -> tuple[int, int] | None:
            procs = _processes()
            receivers = [
                p for p, st, argv in procs if st[3] == str(stalled.pid) and "receive" in argv
            ]
            if not receivers:
                return None
            zfs = [p for p, st, argv in procs if st[1] == str(receivers[0]) and "recv" in argv]
            registered = s.lab.run(backup, ["ls", "/run/hafs"]).split()
            if not zfs or f"vip1.receiving.{receivers[0]}" not in registered:
                return None
            return receivers[0], zfs[0]

        receiver, zfs_recv = _poll(
            stalled_in_zfs_recv, 60, "the stalled receive to hold the lock, in zfs recv", s
        )
        receiver_proc = Proc(receiver, start_time(receiver) or 0)

        # a write, which the holder's next round sends over ssh (an idle VIP sends nothing):
        # that receive registers and waits behind the stalled one, for as long as the stalled
        # one holds the lock. It runs through the peer key's forced command, as on a deployed
        # node: `hafs service ssh-command` (the receive's words are in its $SSH_ORIGINAL_COMMAND)
        s.put(1, "queued.txt", "in the lag: lost with the holder")

        def queued() -> int | None:
            for entry in s.lab.run(backup, ["ls", "/run/hafs"]).split():
                name, _, pid = entry.rpartition(".")
                mine = name == "vip1.receiving" and pid.isdigit() and int(pid) != receiver
                if mine and "ssh-command" in _argv(int(pid)):
                    return int(pid)
            return None

        holders_receive = _poll(queued, 60, "the holder's receive queued behind it", s)
        # every receive runs niced, and so does its zfs recv
        niceness = {}
        for pid in (receiver, zfs_recv, holders_receive):
            stat = _stat(pid)
            niceness[pid] = stat[16] if stat else "gone"
        assert set(niceness.values()) == {nice}, niceness

        logs = [s.lab.dir / backup / name for name in ("agent.log", "service.log")]
        offsets = [path.stat().st_size if path.exists() else 0 for path in logs]
        killed_at = time.monotonic()
        # power loss, the cable first: the client started next cannot reach the dying holder
        s.lab.partition(home)
        waiting = s.wait_served(1, "r.txt", STALLED_TAKEOVER_BOUND)
        s.lab.kill(home)
        out, _ = waiting.communicate(timeout=STALLED_TAKEOVER_BOUND + 30)
        assert out, (
            f"VIP1 not served within {STALLED_TAKEOVER_BOUND:.0f}s of the kill (the takeover "
            f"waited for the stalled receive?): {s.diagnose(1)}"
        )
        served_at, served = out.rstrip("\n").split(" ", 1)
        rto = float(served_at) - killed_at
        print(f"\nRTO VIP1 with a stalled receive on the backup: {rto:.2f}s")
        assert served == "replicated"
        assert rto <= STALLED_TAKEOVER_BOUND, f"VIP1 served after {rto:.2f}s"
        # the backup holds and serves VIP1 (and the replicated data), well before the stalled
        # receive would have ended
        wait_for(
            lambda: s.holders(1) == [backup] and s.lab.serving(backup, str(vip.address)),
            max(0.0, killed_at + STALLED_TAKEOVER_BOUND - time.monotonic()),
            "VIP1 held and served by the backup alone",
            step=0.2,
        )
        assert s.get(1, "r.txt") == "replicated"
        assert s.holders(1) == [backup]
        # killed by a takeover, not ended: its stream's writer (sleep 600) still runs
        assert not receiver_proc.alive, "the stalled receive still runs"
        assert stalled.poll() is None, "the stalled receive's stream ended: it was not killed"

        # the MASTER event's takeover logs it (in agent.log, once the hook ends), or the
        # service daemon's if its round came first; only what was logged since the kill counts
        def since_kill() -> str:
            text = ""
            for path, offset in zip(logs, offsets, strict=True):
                with path.open("rb") as f:
                    f.seek(offset)
                    text += f.read().decode(errors="replace")
            return text

        aborted = f"vip1 takeover: aborted a receive in progress (pid {receiver})"
        try:
            wait_for(lambda: aborted in since_kill(), STALLED_TAKEOVER_BOUND, repr(aborted), 0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{since_kill()[-3000:]}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stalled.pid, signal.SIGKILL)
        stalled.wait(timeout=30)


def test_graceful_stop_loses_nothing(service_lab: ServiceLab) -> None:
    s = service_lab
    home, backup = "ha-file-server-2", s.cluster.vip(2).backups[0]
    s.put(2, "before-stop.txt", "a moment before the stop")
    s.lab.stop(home)  # no wait for a replication interval: the stop sends the final delta
    wait_for(lambda: s.holders(2) == [backup], 5, "VIP2 on its backup")
    assert s.get(2, "before-stop.txt") == "a moment before the stop"


def test_event_is_idempotent_and_smbd_is_kept_alive(service_lab: ServiceLab) -> None:
    s = service_lab
    home = "ha-file-server-4"
    log = subprocess.run(
        [*s.lab.enter(home), sys.executable, "-m", "hafs", "event", "4@ens36", "MASTER"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "vip4 takeover: already serving" in log and "roll back" not in log
    # smbd dies on the holder: the service daemon starts it again within an interval or two
    pids = s.lab.run(home, ["sh", "-c", "cat /run/hafs/smb/vip4/pid/smbd.pid"]).split()
    s.lab.run(home, ["kill", "-9", pids[0]])
    wait_for(
        lambda: s.lab.serving(home, str(s.cluster.vip(4).address)),
        3 * INTERVAL,
        "smbd of vip4 restarted",
    )
    s.put(4, "after-restart.txt", "served again")
    assert s.get(4, "after-restart.txt") == "served again"


def test_a_changed_cluster_json_reaches_the_served_vip_within_a_round(
    service_lab: ServiceLab,
) -> None:
    s = service_lab
    home, check_user = "ha-file-server-4", s.cluster.check_user
    assert check_user is not None and check_user != USER
    assert s.login(4, USER, PASSWORD) == 0
    assert s.login(4, check_user, s.cluster.smb_users[check_user]) == 0
    # the operator changes alice's password, drops the check user and adds a share; a deploy
    # writes the node's cluster.json again, and the running service daemon picks it up
    rewrite = (
        "import json; p = '/etc/hafs/cluster.json'; c = json.load(open(p)); "
        f"c['users'] = {{{USER!r}: 'a-new-password'}}; "
        "[v['shares'].append({'name': 'extra', 'writable': True, 'users': []}) "
        " for v in c['vips'] if v['name'] == 'vip4']; "
        "open(p, 'w').write(json.dumps(c))"
    )
    s.lab.run(home, [sys.executable, "-c", rewrite])
    wait_for(lambda: s.login(4, USER, "a-new-password") == 0, 3 * INTERVAL, "the new password")
    assert s.login(4, USER, PASSWORD) == 3
    assert s.login(4, check_user, s.cluster.smb_users[check_user]) == 3
    vip = s.cluster.vip(4)
    put = [
        *s.lab.enter("client"), sys.executable, "-m", "tests.lab.smb_probe", "put",
        str(vip.address), "extra", "new-share.txt", USER, "a-new-password",
    ]  # fmt: skip
    stored = subprocess.run(
        put, input=b"in the new share", capture_output=True, cwd=REPO, check=False
    )
    assert stored.returncode == 0, stored.stderr.decode()[-600:]
    assert s.holders(4) == [home]  # no takeover, no restart was needed


def test_hard_kill_loses_at_most_one_interval(service_lab: ServiceLab) -> None:
    s = service_lab
    home, backup = "ha-file-server-3", s.cluster.vip(3).backups[0]
    s.wait_replicated(3, backup, time.time())  # replication running: the steady state
    writer = subprocess.Popen(
        s.probe("writer", 3, "seq", str(6 * INTERVAL)), stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    time.sleep(3 * INTERVAL)
    killed_at = time.monotonic()
    s.lab.kill(home)
    out, _ = writer.communicate(timeout=12 * INTERVAL)
    acked = {int(n): float(t) for n, _began, t in (line.split() for line in out.splitlines())}
    before = [n for n, t in acked.items() if t < killed_at]
    lost = [n for n in before if not _exists(s, 3, f"seq.{n}")]
    survived_before = [n for n in before if n not in lost]
    # what was acknowledged but lost is a suffix of the writes before the kill
    assert not lost or min(lost) > max(survived_before, default=-1)
    assert survived_before, f"every write before the kill was lost: {s.diagnose(3)}"
    rpo = killed_at - acked[max(survived_before)]
    print(
        f"\nRPO after power loss: {rpo:.2f}s ({len(lost)} acknowledged writes lost), "
        f"replication interval {INTERVAL}s"
    )
    # a write is safe once the snapshot after it reached a backup: one interval plus one send
    assert rpo <= 2 * INTERVAL + 1, f"lost {rpo:.2f}s of writes with a {INTERVAL}s interval"


def _exists(s: ServiceLab, vhid: int, path: str) -> bool:
    try:
        s.get(vhid, path)
    except subprocess.CalledProcessError:
        return False
    return True


def test_two_nodes_killed_one_after_the_other(service_lab: ServiceLab) -> None:
    s = service_lab
    first, second = "ha-file-server-1", s.cluster.vip(1).backups[0]
    for vhid in (1, 2, 3, 4):
        s.put(vhid, f"data-{vhid}.txt", f"vip {vhid}")
    written = time.time()
    for vhid in (1, 2, 3, 4):
        for peer in s.cluster.vip(vhid).backups:
            s.wait_replicated(vhid, peer, written)
    idle = s.idle_snapshots([1, 2, 3, 4])  # then idle: no new snapshot is taken, and
    for vhid, names in idle.items():  # every backup has the newest (the writes' or later)
        for peer in s.cluster.vip(vhid).backups:
            assert s.snapshots(peer, vhid)[-1] == names[-1], f"{peer}: {s.diagnose(vhid)}"
    s.lab.kill(first)
    wait_for(lambda: s.holders(1) == [second], 6, "VIP1 on its backup")
    taken_over = time.time()
    for peer in s.cluster.vip(1).backups:  # the new holder replicates VIP1 onward
        if peer not in (first, second):
            s.wait_replicated(1, peer, taken_over)
    s.lab.kill(second)
    alive = {n.name for n in s.cluster.nodes} - {first, second}

    def on_survivors() -> bool:
        return all(len(h) == 1 and h[0] in alive for h in s.lab.vip_holders().values())

    wait_for(on_survivors, 8, "every VIP on a surviving node")
    for vhid in (1, 2, 3, 4):
        assert s.get(vhid, f"data-{vhid}.txt") == f"vip {vhid}"


def test_cluster_status_from_a_node_names_every_holder_and_a_dead_node(
    service_lab: ServiceLab,
) -> None:
    """`hafs cluster status --json`, run on one node, asks every peer over the replication
    key: it names each VIP's holder; once a node lost power it says so and exits 1."""
    s = service_lab

    def status(node: str) -> tuple[int, dict[str, Any]]:
        argv = [sys.executable, "-m", "hafs", "cluster", "status", "--json"]
        proc = subprocess.run(
            [*s.lab.enter(node), *argv], capture_output=True, text=True, check=False, cwd=REPO
        )
        assert proc.returncode in (0, 1), proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    code, found = status("ha-file-server-4")
    held = {
        vip.name: [n for n, r in sorted(found["nodes"].items()) if vip.name in r.get("held", ())]
        for vip in s.cluster.vips
    }
    assert held == {vip.name: [vip.home] for vip in s.cluster.vips}, found
    assert code == (1 if found["problems"] else 0)
    print(f"problems of the healthy lab: {found['problems'] or 'none'}")

    s.lab.kill("ha-file-server-1")
    code, found = status("ha-file-server-4")
    assert code == 1 and "error" in found["nodes"]["ha-file-server-1"], found
    assert any(p.startswith("ha-file-server-1: no answer: ") for p in found["problems"])


def test_drain_and_undrain_lose_nothing(service_lab: ServiceLab) -> None:
    """`hafs drain` on a VIP's home: the best backup serves it with every acknowledged write;
    `hafs undrain`: the home resyncs, then takes it back with what was written meanwhile."""
    s = service_lab
    home, backup = "ha-file-server-1", s.cluster.vip(1).backups[0]

    def hafs(node: str, *argv: str) -> str:
        proc = subprocess.run(
            [*s.lab.enter(node), sys.executable, "-m", "hafs", *argv],
            capture_output=True, text=True, check=False, cwd=REPO,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stderr

    s.put(1, "before.txt", "acknowledged just before the drain")  # not replicated yet
    said = hafs(home, "drain")
    assert "drained: vip1;" in said, said
    took = wait_for(lambda: s.holders(1) == [backup], 30, "VIP1 on its backup", step=0.1)
    print(f"drain: VIP1 on {backup} {took:.1f}s after `hafs drain` returned")
    assert s.get(1, "before.txt") == "acknowledged just before the drain"
    s.put(1, "during.txt", "written while the home was drained")
    time.sleep(3)
    assert s.holders(1) == [backup]  # drained: the home does not take it back

    hafs(home, "undrain")
    took = wait_for(lambda: s.holders(1) == [home], 90, "VIP1 back on its home", step=0.2)
    print(f"undrain: VIP1 home again {took:.1f}s after `hafs undrain`")
    assert s.get(1, "before.txt") == "acknowledged just before the drain"
    assert s.get(1, "during.txt") == "written while the home was drained"
