"""A replication round of the holder: what was written is sent, an idle VIP costs no ssh.

The pool is a fake whose snapshots remember what the dataset held when they were taken (a
write is a new generation), and the peers are fakes behind ``ssh``: each login is recorded,
and a receive reads the stream (a real ``zfs send`` stand-in, ``echo``, piped over).
"""

from __future__ import annotations

import collections
import dataclasses
import subprocess
import threading
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hafs.service import node, replication, transport
from hafs.service.config import ServiceConfig, VipService
from hafs.service.node import NodeServices
from hafs.service.zfs import Snapshot, Zfs

VIP = VipService(1, "vip1", IPv4Address("10.0.0.100"), "n1", ("n1", "n2", "n3"), ())
CONFIG = ServiceConfig(
    node="n1", pool="tank", replication_interval=10, vips=(VIP,), users={},
    peers={"n2": IPv4Address("10.0.0.2"), "n3": IPv4Address("10.0.0.3")},
)  # fmt: skip


class Pool(Zfs):
    """vip1's dataset: ``written`` is what it holds now; each snapshot keeps what it held."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.taken: dict[str, int] = {}  # snapshot -> what the dataset held, oldest first
        self.props: dict[str, str] = {}
        self.reads: collections.Counter[str] = collections.Counter()  # zfs list and zfs get

    def snapshot(self, snapshot: str) -> None:
        self.taken[snapshot.split("@")[1]] = self.written

    def exists(self, name: str) -> bool:
        return True

    def snapshots(self, dataset: str) -> list[Snapshot]:
        self.reads["snapshots"] += 1
        return [Snapshot(dataset, name) for name in self.taken]

    def unchanged(self, older: str, newer: str) -> bool:
        return self.taken[older.split("@")[1]] == self.taken[newer.split("@")[1]]

    def destroy_snapshot(self, snapshot: str) -> None:
        del self.taken[snapshot.split("@")[1]]

    def set(self, name: str, prop: str, value: str) -> None:
        self.props[prop] = value

    def user_properties(self, name: str) -> dict[str, str]:
        self.reads["properties"] += 1
        return self.props

    def send_command(
        self, snapshot: str, incremental_from: str | None = None, *, intermediates: bool = True
    ) -> list[str]:
        return ["echo", "a stream"]


class Peers:
    """The peers' ends of ssh: every login is recorded; a peer in ``down`` does not answer.
    They run an older hafs, without a receiver (tests/unit/test_receiver.py has its own):
    each send is a login of its own, as it was."""

    def __init__(self) -> None:
        self.logins: list[tuple[str, str]] = []  # (peer, operation)
        self.has: dict[str, list[str]] = {"n2": [], "n3": []}  # what each peer received
        self.down: set[str] = set()
        # a peer whose pool hangs: it takes the stream, then answers once the file exists
        self.hung: dict[str, Path] = {}
        self.bases: list[tuple[str, str | None]] = []  # (peer, base) of every stream sent

    def remote_argv(self, peer: str, args: Sequence[str], shared: bool = False) -> list[str]:
        assert shared  # a send: over the peer's shared connection
        if args[0] == "receiver":
            status = 255 if peer in self.down else 2  # unreachable, or refused there
            return ["sh", "-c", f"echo 'no receiver' >&2; exit {status}"]
        self.logins.append((peer, args[0]))
        self.bases.append((peer, args[args.index("--base") + 1] if "--base" in args else None))
        if peer in self.down:
            return ["sh", "-c", "cat >/dev/null; echo 'ssh: connect timed out' >&2; exit 255"]
        if peer in self.hung:
            answered = self.hung[peer]
            return ["sh", "-c", f"cat >/dev/null; until [ -e {answered} ]; do sleep 0.02; done"]
        return ["sh", "-c", "cat >/dev/null"]

    def remote(
        self, peer: str, args: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        self.logins.append((peer, args[0]))
        if peer in self.down:
            return subprocess.CompletedProcess([], 255, "", "ssh: connect timed out")
        return subprocess.CompletedProcess([], 0, "\n".join(self.has[peer]), "")


@pytest.fixture
def holder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[NodeServices, Pool, Peers]:
    peers = Peers()
    monkeypatch.setattr(NodeServices, "transport", peers)
    monkeypatch.setattr(node, "RUN_DIR", tmp_path)  # the send locks
    pool = Pool()
    return NodeServices(CONFIG, zfs=pool), pool, peers


def round_(services: NodeServices, peers: Peers) -> dict[str, str]:
    """One round; per peer, the snapshot it has, or its error. Records what peers received.
    A peer that has it has every write made before the round, idle round or not."""
    began = time.time()
    report = replication.replicate(services, VIP, record_clients=False)
    assert all(item["as_of"] >= began for item in report.values() if item["ok"])
    for peer, item in report.items():
        if item["ok"] and item["snapshot"] not in peers.has[peer]:
            peers.has[peer].append(item["snapshot"])
    return {peer: item["snapshot"] if item["ok"] else "failed" for peer, item in report.items()}


def test_a_write_is_snapshotted_and_sent_and_an_idle_round_takes_and_sends_nothing(
    holder: tuple[NodeServices, Pool, Peers],
) -> None:
    services, pool, peers = holder
    pool.written = 1
    first = round_(services, peers)
    (s1,) = pool.taken
    assert first == {"n2": s1, "n3": s1}
    assert sorted(peers.logins) == [  # asked what they have (nothing yet), then received
        ("n2", "receive"), ("n2", "snapshots"), ("n3", "receive"), ("n3", "snapshots")
    ]  # fmt: skip

    peers.logins.clear()
    assert round_(services, peers) == {"n2": s1, "n3": s1}  # nothing written: up to date
    assert list(pool.taken) == [s1]  # no new snapshot
    assert peers.logins == []  # no ssh at all

    pool.written = 2  # a client writes
    assert round_(services, peers) == {"n2": (s2 := list(pool.taken)[-1]), "n3": s2}
    assert list(pool.taken) == [s1, s2]
    assert sorted(peers.logins) == [("n2", "receive"), ("n3", "receive")]  # from s1, known


def test_a_send_lists_the_snapshots_and_reads_the_bases_once(
    holder: tuple[NodeServices, Pool, Peers],
) -> None:
    """Each zfs command costs the sending node's pool 10-30 ms; a send to a peer whose base
    is known needs the snapshots and the recorded bases once each."""
    services, pool, peers = holder
    pool.written = 1
    round_(services, peers)
    pool.written = 2
    replication.snapshot(services, VIP)
    pool.reads.clear()
    replication.send(services, VIP, "n2")
    assert pool.reads == {"snapshots": 1, "properties": 1}
    (first, _second) = pool.taken
    assert peers.bases[-1] == ("n2", first)


def test_a_peer_behind_gets_its_send_in_a_round_with_nothing_written(
    holder: tuple[NodeServices, Pool, Peers],
) -> None:
    services, pool, peers = holder
    pool.written = 1
    round_(services, peers)
    peers.down.add("n3")  # n3 misses the next write
    pool.written = 2
    behind = round_(services, peers)
    (s1, s2) = pool.taken
    assert behind == {"n2": s2, "n3": "failed"}

    peers.down.clear()
    peers.logins.clear()
    assert round_(services, peers) == {"n2": s2, "n3": s2}  # idle, but n3 lacked s2
    assert list(pool.taken) == [s1, s2]  # no new snapshot
    assert sorted(peers.logins) == [("n3", "receive"), ("n3", "snapshots")]  # n2: nothing


def test_a_send_that_outlives_its_round_goes_on_and_its_peer_waits_until_it_ends(
    holder: tuple[NodeServices, Pool, Peers], tmp_path: Path
) -> None:
    """A backup whose pool hangs takes the stream and never answers: the round waits for it
    no longer than it is told, and says so; the rounds that follow send to the others and
    skip it (no second send beside the first), and retention keeps the snapshot its send
    carries. Once that send ends, the peer is sent to again, from there."""
    services, pool, peers = holder
    # the round waits 2 s at most for its sends (one "interval")
    services.config = dataclasses.replace(CONFIG, keep_snapshots=1, replication_interval=2)
    services.holds = lambda vip: True  # type: ignore[method-assign]
    pool.written = 1
    round_(services, peers)
    answered = tmp_path / "n3-answers"
    peers.hung["n3"] = answered
    pool.written = 2
    began = time.monotonic()
    first = replication.replicate(services, VIP, record_clients=False, routine=True)
    took = time.monotonic() - began
    s1, s2 = pool.taken
    assert 2 <= took < 10 and first["n2"]["snapshot"] == s2, (took, first)
    assert not first["n3"]["ok"] and first["n3"]["error"].startswith(f"still sending @{s2} ")

    pool.written = 3
    peers.logins.clear()
    second = replication.replicate(services, VIP, record_clients=False, routine=True)
    s3 = list(pool.taken)[-1]
    assert second["n2"]["snapshot"] == s3 and second["n3"] == first["n3"] | {
        "at": second["n3"]["at"]
    }
    assert peers.logins == [("n2", "receive")]  # n3: not while its send runs
    assert list(pool.taken) == [s1, s2, s3]  # s1: n3's base; s2: its send's; s3: the newest

    answered.touch()
    deadline = time.monotonic() + 10
    while services.sending_still(VIP) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not services.sending_still(VIP)
    pool.written = 4
    third = replication.replicate(services, VIP, record_clients=False)  # waits for all
    s4 = list(pool.taken)[-1]
    assert third["n2"]["snapshot"] == third["n3"]["snapshot"] == s4
    assert peers.bases[-2:] in ([("n2", s3), ("n3", s2)], [("n3", s2), ("n2", s3)])


def test_a_round_that_finds_the_vip_gone_once_snapshotted_sends_nothing(
    holder: tuple[NodeServices, Pool, Peers],
) -> None:
    """The snapshot waited on a pool that hung while another node took the VIP over: that
    snapshot is a branch the backups must not follow (they would keep the new holder's
    writes aside and serve this node's older ones after a second failure)."""
    services, pool, peers = holder
    asked: list[bool] = []

    def holds(vip: VipService) -> bool:
        asked.append(held)
        return held

    services.holds = holds  # type: ignore[method-assign]
    held, pool.written = True, 1
    assert replication.replicate(services, VIP, record_clients=False, routine=True)["n2"]["ok"]
    assert asked == [True]
    idle = replication.replicate(services, VIP, record_clients=False, routine=True)
    assert idle["n2"]["ok"] and asked == [True]  # nothing to send: not asked (an ip, a socket)
    peers.logins.clear()
    held, pool.written = False, 2
    assert replication.replicate(services, VIP, record_clients=False, routine=True) == {}
    assert peers.logins == [] and asked == [True, False]


def test_a_push_starts_where_a_pull_served_by_another_process_ended(
    holder: tuple[NodeServices, Pool, Peers], tmp_path: Path
) -> None:
    """n2 came back and pulled (``hafs service sync``, a process of its own on this node):
    the daemon's own record of what n2 has is older than n2's copy now. Its next push
    starts from the pull's snapshot: from its stale record, n2's receive would roll its
    copy back past that one, which the handover that follows names as its base."""
    services, pool, peers = holder
    pool.written = 1
    round_(services, peers)
    (s1,) = pool.taken
    pool.written = 2
    pulled = NodeServices(CONFIG, zfs=pool)  # the other process: the same pool and locks
    with (tmp_path / "out").open("w+b") as out:
        replication.serve_pull(pulled, VIP, "n2", s1, out)
    s2 = list(pool.taken)[-1]
    peers.has["n2"].append(s2)
    peers.bases.clear()

    pool.written = 3
    assert round_(services, peers) == {"n2": (s3 := list(pool.taken)[-1]), "n3": s3}
    assert sorted(peers.bases) == [("n2", s2), ("n3", s1)]


def test_a_push_waits_for_a_pull_of_the_same_peer_in_progress(
    holder: tuple[NodeServices, Pool, Peers],
) -> None:
    """A pull being served holds n2's send lock (another process: another open file) from
    naming its base to recording what it sent: the daemon's push to n2 waits for it, while
    its push to n3 goes on."""
    services, pool, peers = holder
    pool.written = 1
    pulling = NodeServices(CONFIG, zfs=pool)
    with pulling.sending(VIP, "n2"):
        pushing = threading.Thread(target=round_, args=(services, peers))
        pushing.start()
        pushing.join(1.0)
        assert pushing.is_alive()  # waiting for the lock
        assert [peer for peer, _ in peers.bases] == ["n3"]
    pushing.join(10)
    assert not pushing.is_alive()
    assert sorted(peer for peer, _ in peers.bases) == ["n2", "n3"]


def test_sends_share_one_connection_per_peer_and_questions_log_in_afresh(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A send goes over the node's one connection to that peer (no key exchange per round);
    a question (fence, held) logs in afresh, so its connect timeout holds for a peer that
    just died. The connections' sockets are root's only."""
    monkeypatch.setattr(transport, "SHARED_DIR", tmp_path / "ssh")
    ssh = transport.Transport(CONFIG)
    send = ssh.remote_argv("n2", ["receive", "vip1"], shared=True)
    ask = ssh.remote_argv("n2", ["held"])
    assert {"ControlMaster=auto", f"ControlPath={tmp_path}/ssh/%C"} <= set(send)
    assert not [option for option in ask if option.startswith("Control")]
    assert (tmp_path / "ssh").stat().st_mode & 0o777 == 0o700
    assert send[-1] == ask[-1].replace("held", "receive vip1")  # the same request otherwise
