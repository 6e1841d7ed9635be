"""hafs.verify, hafs.drill and `hafs verify`'s CLI with a fake SMB world: no root, no network.

:class:`FakeWorld` is a cluster as SMB clients see it: who holds each VIP, each node's files.
Its sessions are the :class:`hafs.verify.SmbSession` the real adapter provides, and its
:class:`FakeKiller` moves VIPs the way CARP and the service layer do, after a delay, on
threads, so the drill runs for real against it in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hafs import verify as verify_mod
from hafs import verify_cli
from hafs.cluster import Cluster, Vip
from hafs.drill import DrillError
from hafs.drill import run as drill_run
from hafs.drill.killers import CommandKiller, CommandOutcome, PipeKiller, run_shell, serve_killer
from hafs.drill.monitor import Monitor, Sample, data_status
from hafs.drill.plot import plot_timeline
from hafs.drill.report import (
    DrillReport,
    Span,
    VipOutcome,
    drill_verdict,
    format_report,
    rto_goal,
    spans,
)
from hafs.drill.run import DrillOptions, run_drill
from hafs.errors import HafsError
from hafs.verify import (
    STATUS_OBJECT_NAME_NOT_FOUND,
    ListedShare,
    PysmbSession,
    SmbError,
    check_vip,
    credentials,
    describe,
    format_results,
    holder_from_shares,
    results_json,
    run_verify,
    verdict,
)
from tests.unit.conftest import MakeCluster, four_nodes

ACCESS_DENIED = 0xC0000022


# --- a fake SMB world --------------------------------------------------------------------------


class FakeWorld:
    """Who holds each VIP and what each node's copy of each share holds."""

    def __init__(self, cluster: Cluster, replicate: bool = True) -> None:
        self.cluster = cluster
        self.replicate = replicate  # a store reaches every carrier's replica at once
        self.lock = threading.Lock()
        self.holder: dict[int, str | None] = {v.vhid: v.home for v in cluster.vips}
        self.files: dict[tuple[str, int, str, str], bytes] = {}  # node, vhid, share, path
        self.dead: set[str] = set()  # nodes without power: no replica reaches them
        self.refuse: dict[int, str] = {}  # vhid -> why connecting fails
        self.deny: set[tuple[int, str]] = set()  # (vhid, share) the server refuses
        self.unlisted: set[tuple[int, str]] = set()
        self.listed_extra: dict[int, list[str]] = {}
        self.connects = 0
        self.reads = 0

    def connect(self, vip: Vip) -> FakeSession:
        with self.lock:
            self.connects += 1
            if vip.vhid in self.refuse:
                raise SmbError(self.refuse[vip.vhid])
            node = self.holder[vip.vhid]
        if node is None:
            raise SmbError("no answer within 0.5s")
        return FakeSession(self, vip, node)


class FakeSession:
    def __init__(self, world: FakeWorld, vip: Vip, node: str) -> None:
        self.world, self.vip, self.node = world, vip, node
        self.closed = False

    def _share(self, share: str) -> None:
        with self.world.lock:
            gone = self.world.holder[self.vip.vhid] != self.node
        if gone:  # the node died or gave the VIP away: its connections are dead
            raise SmbError("the server closed the connection")
        if (self.vip.vhid, share) in self.world.deny:
            raise SmbError("Failed to store file: STATUS_ACCESS_DENIED", ACCESS_DENIED)

    def list_shares(self) -> list[ListedShare]:
        names = [
            s.name for s in self.vip.shares if (self.vip.vhid, s.name) not in self.world.unlisted
        ]
        names += self.world.listed_extra.get(self.vip.vhid, [])
        listed = [ListedShare(n, "", False) for n in names]
        return [*listed, ListedShare("IPC$", f"IPC Service ({self.node})", True)]

    def store(self, share: str, path: str, data: bytes) -> None:
        self._share(share)
        with self.world.lock:
            targets = self.vip.carriers if self.world.replicate else [self.node]
            for node in set(targets) - self.world.dead:
                self.world.files[(node, self.vip.vhid, share, path)] = data

    def retrieve(self, share: str, path: str) -> bytes:
        self._share(share)
        with self.world.lock:
            self.world.reads += 1
            data = self.world.files.get((self.node, self.vip.vhid, share, path))
        if data is None:
            raise SmbError("Failed to retrieve: STATUS_OBJECT_NAME_NOT_FOUND", 0xC0000034)
        return data

    def delete(self, share: str, path: str) -> None:
        self._share(share)
        with self.world.lock:
            keys = [k for k in self.world.files if k[1:] == (self.vip.vhid, share, path)]
            if not keys:
                raise SmbError("Delete failed: STATUS_OBJECT_NAME_NOT_FOUND", 0xC0000034)
            for key in keys:
                del self.world.files[key]

    def list_dir(self, share: str, path: str) -> list[str]:
        self._share(share)
        with self.world.lock:
            self.world.reads += 1
        return [".", ".."]

    def close(self) -> None:
        self.closed = True


class FakeKiller:
    """Power loss and power-on in the fake world: after ``delay`` the best surviving carrier
    (or ``winner``) takes a dead node's VIPs; after a restore, the home takes its VIPs back,
    carrying the holder's data with it when ``sync``."""

    def __init__(
        self, world: FakeWorld, delay: float = 0.05, sync: bool = True, winner: str | None = None
    ) -> None:
        self.world, self.delay, self.sync, self.winner = world, delay, sync, winner
        self.calls: list[tuple[str, str]] = []
        self.timers: list[threading.Timer] = []
        self.records: dict[tuple[str, str], dict[str, Any]] = {}  # (node, VIP) -> its record

    def _later(self, action: Any) -> None:
        timer = threading.Timer(self.delay, action)
        self.timers.append(timer)
        timer.start()

    def kill(self, node: str) -> float:
        began = time.monotonic()
        self.calls.append(("kill", node))
        world = self.world
        with world.lock:
            world.dead.add(node)
            moved = [vhid for vhid, holder in world.holder.items() if holder == node]
            for vhid in moved:
                world.holder[vhid] = None

        def take_over() -> None:
            with world.lock:
                for vhid in moved:
                    vip = world.cluster.vip(vhid)
                    alive = [n for n in vip.carriers if n not in world.dead]
                    holder = world.holder[vhid] = self.winner or alive[0]
                    now = time.time()  # master now; smbd serves 20 ms later
                    self.records[(holder, vip.name)] = {
                        "node": holder, "master": now, "began": now + 0.005,
                        "served": now + 0.02, "steps": [["start smbd", 0.01], ["announce", 0.005]],
                    }  # fmt: skip

        self._later(take_over)
        return began

    def restore(self, node: str) -> float:
        began = time.monotonic()
        self.calls.append(("restore", node))
        world = self.world
        with world.lock:
            world.dead.discard(node)

        def fail_back() -> None:
            with world.lock:
                for vip in world.cluster.vips:
                    current = world.holder[vip.vhid]
                    if vip.home != node or current is None:
                        continue
                    if self.sync:
                        for key, data in list(world.files.items()):
                            if key[0] == current and key[1] == vip.vhid:
                                world.files[(node, *key[1:])] = data
                    world.holder[vip.vhid] = node

        self._later(fail_back)
        return began

    def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
        return self.records.get((node, vip))

    def join(self) -> None:
        for timer in self.timers:
            timer.join()


@pytest.fixture
def cluster(make_cluster: MakeCluster) -> Cluster:
    """n1..n4, VIP i (10.0.0.10i, share ``data``) homed on n<i>, check user ``u``."""
    return make_cluster(smb_users={"u": "pw", "alice": "pw2"}, check_user="u")


def quiet(message: str) -> None:
    """A progress sink that shows nothing."""


# --- verify: one VIP -----------------------------------------------------------------------------


def test_holder_is_read_from_the_ipc_comment() -> None:
    nodes = ["ha-file-server-1", "Node-B"]

    def ipc(comment: str) -> list[ListedShare]:
        return [ListedShare("data", "x", False), ListedShare("IPC$", comment, True)]

    assert holder_from_shares(ipc("IPC Service (ha-file-server-1)"), nodes) == "ha-file-server-1"
    assert holder_from_shares(ipc("IPC Service (node-b)"), nodes) == "Node-B"
    assert holder_from_shares(ipc("IPC Service (node-b.example.org)"), nodes) == "Node-B"
    assert holder_from_shares(ipc("IPC Service (elsewhere)"), nodes) == "elsewhere"
    assert holder_from_shares(ipc("IPC Service (Samba 4.17.12-Debian)"), nodes) == (
        "Samba 4.17.12-Debian"
    )
    assert holder_from_shares(ipc("IPC Service ()"), nodes) is None
    assert holder_from_shares(ipc("Remote IPC"), nodes) is None
    assert holder_from_shares([ListedShare("data", "", False)], nodes) is None


def test_a_healthy_vip_passes_every_step_timed(cluster: Cluster) -> None:
    world = FakeWorld(cluster)
    vip = cluster.vip(2)

    result = check_vip(world.connect, vip, ["n1", "n2"], "tok", "u")

    assert result.ok and result.problems() == []
    assert (result.holder, result.shares_found, result.missing, result.extra) == (
        "n2",
        ["data"],
        [],
        [],
    )
    assert set(result.timings) == {"connect", "list", "total"}
    [share] = result.shares
    assert (share.name, share.ok, share.error, set(share.timings)) == (
        "data",
        True,
        None,
        {"write", "read", "delete"},
    )
    assert world.files == {}  # the canary is gone again


def test_connect_failure_names_the_vip_and_every_unchecked_share(
    make_cluster: MakeCluster,
) -> None:
    hosts = four_nodes(n3={"vips": [{"vhid": 3, "address": "10.0.0.103", "shares": ["a", "b"]}]})
    cluster = make_cluster(hosts, check_user="u")
    world = FakeWorld(cluster)
    world.refuse[3] = "Connection refused"

    result = check_vip(world.connect, cluster.vip(3), [], "tok", "u")

    assert not result.ok
    assert result.problems() == [
        "vip3 10.0.0.103: cannot connect: Connection refused (shares not checked: a, b)"
    ]
    assert set(result.timings) == {"total"}


def test_share_list_drift_and_a_refused_share_are_each_one_line(
    make_cluster: MakeCluster,
) -> None:
    shares = ["data", "gone", {"name": "docs", "writable": False}, "locked"]
    hosts = four_nodes(n1={"vips": [{"vhid": 1, "address": "10.0.0.101", "shares": shares}]})
    cluster = make_cluster(hosts, check_user="u")
    world = FakeWorld(cluster)
    world.unlisted.add((1, "gone"))
    world.listed_extra[1] = ["Stray"]
    world.deny.add((1, "locked"))

    result = check_vip(world.connect, cluster.vip(1), ["n1"], "tok", "u")

    assert not result.ok
    assert (result.missing, result.extra) == (["gone"], ["Stray"])
    assert result.problems() == [
        "vip1 10.0.0.101: share gone: missing from the share list",
        "vip1 10.0.0.101: share Stray: listed but not in the model",
        "vip1 10.0.0.101: share locked: write: Failed to store file: STATUS_ACCESS_DENIED",
    ]
    by_name = {s.name: s for s in result.shares}
    assert set(by_name) == {"data", "docs", "locked"}  # a missing share is not exercised
    assert set(by_name["docs"].timings) == {"list"}  # read-only: listed, never written


def test_a_canary_that_reads_back_wrong_fails_and_is_still_deleted(cluster: Cluster) -> None:
    world = FakeWorld(cluster)

    class Corrupting(FakeSession):
        def retrieve(self, share: str, path: str) -> bytes:
            return b"not what was written"

    result = check_vip(lambda vip: Corrupting(world, vip, vip.home), cluster.vip(1), [], "t", "u")

    assert result.problems() == [
        "vip1 10.0.0.101: share data: read: read back 20 bytes that differ from the 24 written"
    ]
    assert world.files == {}


def test_a_share_closed_to_the_check_user_is_only_checked_for_being_listed(
    make_cluster: MakeCluster,
) -> None:
    shares = ["data", {"name": "hr", "users": ["alice"]}]
    hosts = four_nodes(n1={"vips": [{"vhid": 1, "address": "10.0.0.101", "shares": shares}]})
    cluster = make_cluster(hosts, smb_users={"u": "pw", "alice": "pw2"}, check_user="u")
    world = FakeWorld(cluster)
    world.deny.add((1, "hr"))  # the server is right to refuse u

    result = check_vip(world.connect, cluster.vip(1), [], "t", "u")

    assert result.ok
    hr = result.shares[1]
    assert (hr.name, hr.ok, hr.skipped, hr.timings) == (
        "hr",
        True,
        "listed; u is not one of its users",
        {},
    )


def test_run_verify_checks_every_vip_at_once_in_vhid_order(cluster: Cluster) -> None:
    world = FakeWorld(cluster)
    together = threading.Barrier(len(cluster.vips), timeout=5)

    def connect(vip: Vip) -> FakeSession:
        together.wait()  # breaks (BrokenBarrierError) unless all four connect concurrently
        return world.connect(vip)

    results = run_verify(cluster, connect)

    assert [r.vhid for r in results] == [1, 2, 3, 4]
    assert [r.holder for r in results] == ["n1", "n2", "n3", "n4"]
    assert all(r.ok for r in results)


def test_credentials_name_the_key_when_unusable(make_cluster: MakeCluster) -> None:
    assert credentials(make_cluster(check_user="u")) == ("u", "pw")
    with pytest.raises(HafsError, match=r"^check_user: not set: ") as info:
        credentials(make_cluster())
    assert info.value.exit_code == 2
    with pytest.raises(HafsError, match=r"^check_user: 'nobody' is not in smb_users"):
        credentials(make_cluster(check_user="nobody"))


def test_table_json_and_verdict(cluster: Cluster) -> None:
    world = FakeWorld(cluster)
    world.refuse[4] = "Connection refused"
    results = run_verify(cluster, world.connect)

    lines = format_results(results).splitlines()

    assert lines[0].split() == [
        "VHID", "VIP", "ADDRESS", "HOLDER", "SHARES", "OK", "CONNECT", "TOTAL", "RESULT"
    ]  # fmt: skip
    assert lines[1].split()[:5] == ["1", "vip1", "10.0.0.101", "n1", "1/1"]
    assert lines[1].endswith("ok")
    assert lines[4].split()[:5] == ["4", "vip4", "10.0.0.104", "-", "0/1"]
    assert lines[4].split()[5] == "-" and lines[4].endswith("FAIL")
    assert (
        lines[5] == "vip4 10.0.0.104: cannot connect: Connection refused (shares not checked: data)"
    )
    assert len(lines) == 6
    data = json.loads(json.dumps(results_json(results, 0.25)))
    assert (data["ok"], data["seconds"], len(data["vips"])) == (False, 0.25, 4)
    assert data["vips"][0]["ok"] and data["vips"][0]["shares"][0]["name"] == "data"
    assert data["vips"][3]["problems"] == [lines[5]]
    assert verdict(results, 0.25) == "verdict: FAIL: 1 of 4 VIP(s) failed: vip4"
    assert verdict(results[:3], 0.25) == "verdict: PASS: 3 VIP(s) serve their shares (0.25s)"


# --- verify: the pysmb adapter --------------------------------------------------------------------


def test_pysmb_errors_become_one_line_with_the_nt_status() -> None:
    from smb.base import NotConnectedError, SMBTimeout
    from smb.smb_structs import OperationFailure

    class Message:
        status = ACCESS_DENIED

    class Unknown:
        status = 0xC0001234

    failure = OperationFailure("Failed to store file on data.", [Message()])
    assert (str(describe(failure, 5)), describe(failure, 5).status) == (
        "Failed to store file on data: STATUS_ACCESS_DENIED",
        ACCESS_DENIED,
    )
    assert str(describe(OperationFailure("Nope", [Unknown()]), 5)) == "Nope: NT status 0xC0001234"
    assert str(describe(OperationFailure("Nope.", []), 5)) == "Nope"
    assert str(describe(SMBTimeout(), 0.5)) == "no answer within 0.5s"
    assert str(describe(TimeoutError("timed out"), 2)) == "no answer within 2s"
    assert str(describe(ConnectionRefusedError(111, "Connection refused"), 5)) == (
        "Connection refused"
    )
    assert str(describe(NotConnectedError("x"), 5)) == "the server closed the connection"
    assert str(describe(ValueError("bad\nsecond line"), 5)) == "ValueError: bad"


def test_pysmb_session_wraps_every_call() -> None:
    from smb.smb_structs import OperationFailure

    class Message:
        status = STATUS_OBJECT_NAME_NOT_FOUND

    class Conn:
        closed = False

        def retrieveFile(self, share: str, path: str, out: io.BytesIO, timeout: float) -> None:
            assert timeout == 0.5
            if path == "/missing":
                raise OperationFailure("Failed to retrieve", [Message()])
            out.write(b"content of " + path.encode())

        def close(self) -> None:
            self.closed = True

    conn = Conn()
    session = PysmbSession(conn, 0.5)
    assert session.retrieve("data", "/f") == b"content of /f"
    with pytest.raises(SmbError) as info:
        session.retrieve("data", "/missing")
    assert info.value.status == STATUS_OBJECT_NAME_NOT_FOUND
    with pytest.raises(SmbError, match="AttributeError"):
        session.list_shares()  # the fake has no listShares
    session.close()
    assert conn.closed


def test_pysmb_connector_reports_a_refused_logon(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster
) -> None:
    import smb.SMBConnection

    made: list[tuple[Any, ...]] = []

    class Refusing:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append((*args, kwargs))
            self.closed = False

        def connect(self, address: str, port: int, timeout: float) -> bool:
            made.append((address, port, timeout))
            return False

        def close(self) -> None:
            made.append(("closed",))

    monkeypatch.setattr(smb.SMBConnection, "SMBConnection", Refusing)
    connect = verify_mod.PysmbConnector("u", "pw", 2.0)
    with pytest.raises(SmbError, match=r"^logon as 'u' refused: check smb_users and check_user$"):
        connect(cluster.vip(1))
    assert made == [
        ("u", "pw", "hafs-verify", "vip1", {"use_ntlm_v2": True, "is_direct_tcp": True}),
        ("10.0.0.101", 445, 2.0),
        ("closed",),
    ]


# --- drill: pieces --------------------------------------------------------------------------------


def test_rto_goal_uses_the_best_surviving_carrier(cluster: Cluster) -> None:
    vip = cluster.vip(1)  # home n1, backups by derive_layout: n2 (10), n4 (20), n3 (30)
    assert rto_goal(vip, "n1") == ("n2", 3 + 10 / 256 + 1)
    assert rto_goal(vip, "n2") == ("n1", 3 + 0 / 256 + 1)
    # VRRPv3 at 0.1 s: n2's priority 244 waits (256 - 244) * 0.1 / 256 beyond 3 intervals
    best, goal = rto_goal(vip, "n1", 0.1)
    assert best == "n2" and goal == pytest.approx(0.3 + 12 * 0.1 / 256 + 1)


def test_rto_goal_without_a_backup(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(
        n1={"vips": [{"vhid": 1, "address": "10.0.0.101", "advskew": {"n1": 0}, "advbase": 2}]}
    )
    vip = make_cluster(hosts).vip(1)
    assert rto_goal(vip, "n1") == (None, None)
    assert rto_goal(vip, "n2") == ("n1", 2 * 3 + 0 + 1)


def sample(
    start: float,
    holder: str | None = None,
    answered: bool = True,
    served: bool = True,
    canary: dict[str, str] | None = None,
) -> Sample:
    return Sample(start, start + 0.01, start + 0.005 if served else None, holder, answered,
                  canary or {}, None if answered else "no answer")  # fmt: skip


def test_spans_merge_polls_with_the_same_state() -> None:
    polls = [
        sample(10.0, "n1"),
        sample(10.1, "n1"),
        sample(10.2, answered=False, served=False),
        sample(10.3, answered=False, served=False),
        sample(10.4, answered=False),  # served, share list not yet: holder unknown
        sample(10.5, "n2"),
    ]
    assert spans(polls, origin=10.0, end=11.0) == [
        Span(0.0, 0.2, "n1", True),
        Span(0.2, 0.4, None, False, "no answer"),
        Span(0.4, 0.5, None, True, "no answer"),
        Span(0.5, 1.0, "n2", True),
    ]
    assert spans([], 0, 1) == []


def test_data_status_names_each_bad_share() -> None:
    assert data_status(sample(0)) == "no canary"
    assert data_status(sample(0, canary={"a": "intact", "b": "intact"})) == "intact"
    bad = sample(0, canary={"a": "intact", "b": "missing", "c": "differs"})
    assert data_status(bad) == "missing: b, differs: c"


def test_judge_takeover() -> None:
    fine = VipOutcome(1, "vip1", "10.0.0.101", "n1", "n1", "n2", 4.04, "n2", 3.5, "intact")
    assert fine.judge_takeover() == []
    slow = VipOutcome(1, "vip1", "10.0.0.101", "n1", "n1", "n2", 4.04, "n3", 4.5, "missing: a")
    assert slow.judge_takeover() == [
        "vip1: RTO 4.50s over the goal 4.04s (the new holder's master-down time + 1)",
        "vip1: taken over by n3, expected n2 (the best surviving carrier)",
        "vip1: canary after the takeover: missing: a",
    ]


def test_served_since_goes_back_to_the_start_of_unbroken_service(cluster: Cluster) -> None:
    monitor = Monitor(cluster.vips, FakeWorld(cluster).connect, [], "/c", "u")
    polls = [
        sample(1.0, "n1"),  # before the kill (at 1.05)
        sample(1.1, answered=False, served=False),
        sample(1.2, answered=False),  # served by the new holder, not yet named
        sample(1.3, answered=False),
        sample(1.4, "n2"),
    ]
    monitor.samples[1] = polls
    assert monitor.served_since(1, 1.05, polls[4]) == (polls[2], polls[2].served)
    assert monitor.served_since(1, 1.05, polls[0]) == (polls[0], polls[0].served)
    polls = [sample(1.1, "n1"), sample(1.2, answered=False), sample(1.3, "n2")]
    monitor.samples[1] = polls
    assert monitor.served_since(1, 1.15, polls[2]) == (polls[1], polls[1].served)
    with pytest.raises(ValueError, match="did not serve"):
        monitor.served_since(1, 0, sample(2.0, answered=False, served=False))


def test_longest_outage_during_a_failback(cluster: Cluster) -> None:
    monitor = Monitor(cluster.vips, FakeWorld(cluster).connect, [], "/c", "u")
    polls = [
        sample(1.0, "n2"),  # before the restore (at 1.05)
        sample(1.1, answered=False, served=False),
        sample(1.2, answered=False, served=False),
        sample(1.3, answered=False),  # served again: the outage was 1.1 to 1.3
        sample(1.4, answered=False, served=False),
        sample(1.5, "n1"),
    ]
    monitor.samples[1] = polls
    assert monitor.longest_outage(1, 1.05, polls[5]) == pytest.approx(0.2)
    assert monitor.longest_outage(1, 1.35, polls[5]) == pytest.approx(0.1)
    assert monitor.longest_outage(1, 0.0, polls[0]) == 0.0


def test_command_killer_fills_templates_per_node(cluster: Cluster) -> None:
    ran: list[tuple[str, float]] = []

    def runner(command: str, timeout: float) -> CommandOutcome:
        ran.append((command, timeout))
        return CommandOutcome(0, "")

    kill = {n.name: 'ssh {address} "ifconfig {interface} down"' for n in cluster.nodes}
    restore = {n.name: "vm-power {node} on" for n in cluster.nodes}
    killer = CommandKiller.from_templates(cluster, kill, restore, run=runner, kill_timeout=3)
    before = time.monotonic()
    killed = killer.kill("n4")
    assert before <= killed <= killer.restore("n4") <= time.monotonic()

    assert ran == [('ssh 10.0.0.4 "ifconfig ens36 down"', 3), ("vm-power n4 on", 300.0)]


@pytest.mark.parametrize(
    ("kill", "message"),
    [
        (None, r"^host n1: drill_kill: missing: give the command that takes the node down"),
        ("ssh {host}", r"^host n1: drill_kill: unknown field \{host\}: use \{node\}, "),
        ("ssh {0}", r"^host n1: drill_kill: unknown field \{0\}"),
        ("ssh {address", r"^host n1: drill_kill: 'ssh \{address': expected '\}'"),
    ],
)
def test_command_killer_template_errors_name_host_and_key(
    cluster: Cluster, kill: str | None, message: str
) -> None:
    nodes = [n.name for n in cluster.nodes]
    with pytest.raises(HafsError, match=message) as info:
        CommandKiller.from_templates(cluster, dict.fromkeys(nodes, kill), dict.fromkeys(nodes, "x"))
    assert info.value.exit_code == 2


def test_command_killer_refuses_missing_or_unsafe_values(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"address": None})
    cluster = make_cluster(hosts)
    nodes = [n.name for n in cluster.nodes]
    restore = dict.fromkeys(nodes, "true")
    with pytest.raises(HafsError, match=r"^host n2: drill_kill: uses \{address\} but the node"):
        CommandKiller.from_templates(cluster, dict.fromkeys(nodes, "ssh {address}"), restore)
    with pytest.raises(HafsError, match=r"^host n1: drill_restore: missing: give the command"):
        CommandKiller.from_templates(cluster, dict.fromkeys(nodes, "true"), {})


def test_command_killer_outcomes() -> None:
    outcomes = iter(
        [
            CommandOutcome(None, ""),  # kill hung with the link it cut: the node is down
            CommandOutcome(255, "ssh: connect to host 10.0.0.1 port 22: No route to host\n"),
            CommandOutcome(None, "waiting"),
            CommandOutcome(3, ""),
        ]
    )
    killer = CommandKiller({"n1": ("k", "r")}, run=lambda command, timeout: next(outcomes))
    killer.kill("n1")
    with pytest.raises(DrillError, match=r"^drill_kill of n1: 'k' exited 255: ssh: connect to"):
        killer.kill("n1")
    with pytest.raises(DrillError, match=r"^drill_restore of n1: 'r' did not finish within 300s"):
        killer.restore("n1")
    with pytest.raises(DrillError, match=r"^drill_restore of n1: 'r' exited 3: no output$"):
        killer.restore("n1")
    with pytest.raises(DrillError, match="no drill commands for node 'n9'"):
        killer.kill("n9")


def test_run_shell_returns_output_and_kills_its_group_at_the_timeout(tmp_path: Path) -> None:
    assert run_shell("echo out; echo err >&2; exit 4", 5) == CommandOutcome(4, "out\nerr\n")
    marker = tmp_path / "late"
    began = time.monotonic()
    outcome = run_shell(f"echo started; (sleep 2; touch {marker}) & wait", 0.3)
    assert outcome == CommandOutcome(None, "started\n")
    assert time.monotonic() - began < 1.8  # not waited for: the group was killed at 0.3 s
    time.sleep(2.2)
    assert not marker.exists()  # the background child died with the group


@contextlib.contextmanager
def pipe_pair(killer: Any) -> Iterator[PipeKiller]:
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    requests_in, replies_out = os.fdopen(request_read), os.fdopen(reply_write, "w")
    server = threading.Thread(target=serve_killer, args=(killer, requests_in, replies_out))
    server.start()
    requests_out, replies_in = os.fdopen(request_write, "w"), os.fdopen(reply_read)
    try:
        yield PipeKiller(requests_out, replies_in)
    finally:
        requests_out.close()
        server.join(5)
        replies_in.close()
        requests_in.close()
        replies_out.close()


def test_pipe_killer_forwards_requests_and_errors() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        def kill(self, node: str) -> float:
            self.calls.append(("kill", node))
            return 12.5

        def restore(self, node: str) -> float:
            if node == "bad":
                raise DrillError("bad: power-on failed")
            self.calls.append(("restore", node))
            return 20.25

        def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
            return {"node": node, "vip": vip} if node == "n2" else None

    recorder = Recorder()
    with pipe_pair(recorder) as killer:
        assert killer.kill("n1") == 12.5  # when, as the other side saw it
        assert killer.restore("n1") == 20.25
        assert killer.takeover_record("n2", "vip1") == {"node": "n2", "vip": "vip1"}
        assert killer.takeover_record("n3", "vip1") is None
        with pytest.raises(DrillError, match=r"^bad: power-on failed$"):
            killer.restore("bad")
        with pytest.raises(DrillError, match=r"^unknown request 'reboot'$"):
            killer._ask("reboot", "n1")
    assert recorder.calls == [("kill", "n1"), ("restore", "n1")]


def test_pipe_killer_without_a_server() -> None:
    request_read, request_write = os.pipe()
    reply_read, reply_write = os.pipe()
    os.close(reply_write)  # the server side is gone
    with (
        os.fdopen(request_write, "w") as requests,
        os.fdopen(reply_read) as replies,
        pytest.raises(DrillError, match="the process doing kills and restores went away"),
    ):
        PipeKiller(requests, replies).kill("n1")
    os.close(request_read)


def test_serve_killer_answers_a_bad_request() -> None:
    class Never:
        def kill(self, node: str) -> float:
            raise AssertionError("not reached")

        restore = kill

        def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
            raise AssertionError("not reached")

    replies = io.StringIO()
    serve_killer(Never(), io.StringIO('{"op": "kill"}\nnot json\n'), replies)
    answers = [json.loads(line) for line in replies.getvalue().splitlines()]
    assert [a["ok"] for a in answers] == [False, False]
    assert answers[0]["error"].startswith('bad request \'{"op": "kill"}\': ')
    assert answers[1]["error"].startswith("bad request 'not json': ")


# --- drill: whole runs against the fake world -----------------------------------------------------


HUNG = 2.0  # the drill's timeout in these runs: slower would be a hang, not a loaded machine
# (bounds of 1.0 and 0.5 s failed once with helpers' labs beside the unit tests)


def drill(
    cluster: Cluster, world: FakeWorld, killer: FakeKiller, **options: Any
) -> tuple[Any, list[str]]:
    said: list[str] = []
    settings: dict[str, Any] = {"settle": 0.0, "timeout": HUNG, **options}
    try:
        report = run_drill(
            cluster,
            check=world.connect,
            poll=world.connect,
            killer=killer,
            options=DrillOptions(**settings),
            progress=said.append,
            token="tok",
            interval=0.01,
        )
    finally:
        killer.join()
    return report, said


def test_drill_over_four_nodes_reports_every_takeover_and_failback(
    cluster: Cluster, tmp_path: Path
) -> None:
    world = FakeWorld(cluster)
    killer = FakeKiller(world)

    report, said = drill(cluster, world, killer)

    assert report.ok, report.all_problems()
    assert killer.calls == [(op, f"n{i}") for i in range(1, 5) for op in ("kill", "restore")]
    assert [r.node for r in report.rounds] == ["n1", "n2", "n3", "n4"]
    for number, round_ in enumerate(report.rounds, start=1):
        [outcome] = round_.vips
        vip = cluster.vip(number)
        assert (outcome.name, outcome.holder_before) == (vip.name, vip.home)
        assert outcome.new_holder == outcome.expected_holder == vip.backups[0]
        assert outcome.rto is not None and 0.04 < outcome.rto < HUNG
        assert outcome.goal == 3 + vip.advskew[vip.backups[0]] / 256 + 1
        assert (outcome.data, outcome.failback_to, outcome.failback_data) == (
            "intact",
            vip.home,
            "intact",
        )
        assert outcome.failback is not None and 0.04 < outcome.failback < HUNG
        assert outcome.failback_outage is not None and 0 <= outcome.failback_outage < HUNG
        assert round_.killed_at is not None and round_.restored_at is not None
        assert round_.killed_at < round_.restored_at
    assert [(e.kind, e.node) for e in report.events] == killer.calls
    assert world.files == {}  # the canaries are removed at the end
    assert world.connects < world.reads / 3  # healthy polls reuse their sessions
    assert said[0] == "verify before the drill"
    assert "round 1/4: n1 holds vip1" in said and "kill n1" in said and "restore n4" in said
    assert any(line.startswith("vip1: answers from n2 after ") for line in said)
    assert any(line.startswith("vip4: back on n4 after ") for line in said)

    # every VIP's timeline starts at home, has an outage, a span on the backup, and ends home
    for vip in cluster.vips:
        timeline = report.timeline[vip.name]
        holders = [s.holder for s in timeline if s.served]
        assert holders[0] == holders[-1] == vip.home
        assert vip.backups[0] in holders
        assert any(not s.served for s in timeline)

    # the RTO split from the new holder's record: the fake's CARP takes the delay (50 ms)
    for round_ in report.rounds:
        [outcome] = round_.vips
        assert outcome.detect is not None and 0.04 < outcome.detect < HUNG
        assert outcome.hook == pytest.approx(0.02, abs=0.001)
        assert outcome.smb is not None and 0 <= outcome.smb < HUNG
        assert outcome.after_move == outcome.hook + outcome.smb
        assert outcome.slowest == "start smbd 0.01s"
    assert any(line.startswith("vip1: CARP detection ") for line in said)

    lines = format_report(report).splitlines()
    assert lines[0].split() == [
        "KILLED", "VIP", "NEW", "HOLDER", "RTO", "GOAL", "DETECT", "TAKEOVER", "SMB", "DATA",
        "FAILBACK", "OUTAGE", "DATA", "AFTER", "RESULT",
    ]  # fmt: skip
    assert lines[1].split()[:3] == ["n1", "vip1", "n2"] and lines[1].endswith("ok")
    assert re.fullmatch(
        r"SMB answers after the VIP moved: median [\d.]+s, p90 [\d.]+s, worst [\d.]+s \(4 VIPs\)",
        lines[5],
    )
    assert lines[6].startswith("failback outage: median ")
    assert lines[7].startswith("load average (1, 5, 15 min): ")
    assert len(lines) == 8
    assert drill_verdict(report).startswith(
        "verdict: PASS: 4 node(s) killed, 4 VIP takeover(s) within goal with data intact, "
        "worst RTO "
    )
    data = json.loads(json.dumps(report.as_json()))
    assert data["ok"] is True
    assert [r["vips"][0]["rto"] for r in data["rounds"]] == [r.vips[0].rto for r in report.rounds]
    assert data["timeline"]["vip1"][0][2:] == ["n1", True, None]


def test_drill_with_fewer_nodes_and_a_wrong_name(cluster: Cluster) -> None:
    world = FakeWorld(cluster)
    report, _ = drill(cluster, world, FakeKiller(world), nodes=["n3"])
    assert [r.node for r in report.rounds] == ["n3"] and report.ok
    with pytest.raises(HafsError, match=r"^--node n9: not a node of the inventory"):
        drill(cluster, world, FakeKiller(world), nodes=["n9"])


def test_unreplicated_data_fails_the_drill(cluster: Cluster) -> None:
    world = FakeWorld(cluster, replicate=False)

    report, _ = drill(cluster, world, FakeKiller(world), nodes=["n1"])

    assert not report.ok
    [outcome] = report.rounds[0].vips
    assert outcome.rto is not None and outcome.data == "missing: data"
    assert outcome.problems == ["vip1: canary after the takeover: missing: data"]
    assert outcome.failback_data == "intact"  # the failback sync carried the outage's canary
    assert drill_verdict(report).startswith(
        "verdict: FAIL: 1 problem(s), worst RTO "
    ) and drill_verdict(report).endswith("; first: vip1: canary after the takeover: missing: data")


def test_a_failback_that_loses_the_outage_writes_fails(cluster: Cluster) -> None:
    world = FakeWorld(cluster)

    report, _ = drill(cluster, world, FakeKiller(world, sync=False), nodes=["n2"])

    [outcome] = report.rounds[0].vips
    assert outcome.data == "intact" and outcome.failback_data == "differs: data"
    assert outcome.problems == [
        "vip2: canary written during the outage, after the failback: differs: data"
    ]


def test_a_failed_takeover_is_said_at_once_not_at_the_end_of_the_wait(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Failing(FakeKiller):
        """n2's takeover of vip1 fails right after the kill; nobody else takes over."""

        def takeover_record(self, node: str, vip: str) -> dict[str, Any] | None:
            error: dict[str, Any] = {
                "began": time.time(),
                "served": None,
                "steps": [],
                "error": "no replica",
            }
            return error if (node, vip) == ("n2", "vip1") else None

    monkeypatch.setattr(drill_run, "WATCH_INTERVAL", 0.02)
    world = FakeWorld(cluster)
    killer = Failing(world, delay=10)  # longer than the drill waits
    said: list[str] = []
    report = run_drill(
        cluster, world.connect, world.connect, killer,
        DrillOptions(settle=0, timeout=HUNG, nodes=["n1"]), said.append, "tok", interval=0.01,
    )  # fmt: skip
    for timer in killer.timers:
        timer.cancel()
    failed = "vip1: the takeover on n2 failed: no replica"
    kill = said.index("kill n1")
    assert failed in said[kill:]  # said while the drill waited: before the wait's end
    assert said.index(failed) < next(i for i, line in enumerate(said) if "no SMB answer" in line)
    [outcome] = report.rounds[0].vips
    assert outcome.problems[0].endswith("; the takeover on n2 failed: no replica")


def test_the_drill_polls_only_what_the_check_user_may_use(make_cluster: MakeCluster) -> None:
    shares = ["data", {"name": "docs", "writable": False}, {"name": "hr", "users": ["alice"]}]
    hosts = four_nodes(n1={"vips": [{"vhid": 1, "address": "10.0.0.101", "shares": shares}]})
    cluster = make_cluster(hosts, smb_users={"u": "pw", "alice": "pw2"}, check_user="u")
    world = FakeWorld(cluster)
    world.deny.add((1, "hr"))  # touching hr would fail every poll

    report, _ = drill(cluster, world, FakeKiller(world), nodes=["n1"])

    assert report.ok, report.all_problems()
    assert report.rounds[0].vips[0].data == "intact"  # data's canary; docs only listed


def test_a_takeover_by_the_wrong_node_is_reported(cluster: Cluster) -> None:
    world = FakeWorld(cluster)

    report, _ = drill(cluster, world, FakeKiller(world, winner="n3"), nodes=["n1"])

    [outcome] = report.rounds[0].vips
    assert outcome.new_holder == "n3"
    assert outcome.problems == ["vip1: taken over by n3, expected n2 (the best surviving carrier)"]


def test_a_vip_that_never_comes_back_times_out(cluster: Cluster) -> None:
    world = FakeWorld(cluster)
    killer = FakeKiller(world, delay=10)  # longer than the drill waits

    said: list[str] = []
    report = run_drill(
        cluster, world.connect, world.connect, killer,
        DrillOptions(settle=0, timeout=0.3, nodes=["n1"]), said.append, "tok", interval=0.01,
    )  # fmt: skip
    for timer in killer.timers:
        timer.cancel()

    [outcome] = report.rounds[0].vips
    assert outcome.rto is None
    assert outcome.problems == [
        "vip1: no SMB answer from another node within 0.3s of killing n1; "
        "last poll: no answer within 0.5s",
        "vip1: not back on n1 within 0.3s of the restore",
    ]
    assert not report.ok
    assert format_report(report).splitlines()[1].split()[:4] == ["n1", "vip1", "-", "-"]


def test_a_kill_that_fails_stops_the_drill(cluster: Cluster) -> None:
    world = FakeWorld(cluster)
    killer = FakeKiller(world)

    def broken(node: str) -> float:
        raise DrillError("drill_kill of n1: 'k' exited 255: No route to host")

    killer.kill = broken  # type: ignore[method-assign]
    report, _ = drill(cluster, world, killer)

    assert len(report.rounds) == 1
    assert report.rounds[0].problems == [
        "n1: kill failed: drill_kill of n1: 'k' exited 255: No route to host"
    ]
    assert report.events == [] and not report.ok


def test_an_unhealthy_cluster_gets_no_drill(cluster: Cluster) -> None:
    world = FakeWorld(cluster)
    world.refuse[2] = "Connection refused"
    killer = FakeKiller(world)
    with pytest.raises(DrillError, match=r"^the cluster does not pass hafs verify, no drill: vip2"):
        drill(cluster, world, killer)
    assert killer.calls == []


def test_plot_draws_the_timeline(cluster: Cluster, tmp_path: Path) -> None:
    if os.environ.get("CI") != "true":
        pytest.importorskip("matplotlib")
    world = FakeWorld(cluster)
    report, _ = drill(cluster, world, FakeKiller(world), nodes=["n1", "n2"])
    picture = tmp_path / "drill.png"

    plot_timeline(report, str(picture))

    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.stat().st_size > 10_000


def test_plot_without_matplotlib_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, cluster: Cluster
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(HafsError, match=r"^--plot needs matplotlib: "):
        plot_timeline(DrillReport(began=0.0), "unused.png")


# --- the CLI --------------------------------------------------------------------------------------


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = verify_cli.main(list(argv))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_help_describes_both_modes() -> None:
    code, out, _ = run("verify", "--help")
    assert code == 0
    for words in ("--failover", "--lab", "--plot FILE", "--settle SECONDS", "{interface}"):
        assert words in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--plot", "x.png"], "hafs: error: --plot: only with --failover\n"),
        (["--node", "n1"], "hafs: error: --node: only with --failover\n"),
        (["--kill-command", "x"], "hafs: error: --kill-command: only with --failover\n"),
    ],
)
def test_drill_options_need_failover(argv: list[str], message: str) -> None:
    assert run("verify", *argv) == (2, "", message)


def test_bad_numbers_are_usage_errors() -> None:
    code, _, err = run("verify", "--failover", "--settle", "-1")
    assert code == 2 and "--settle: '-1': must be 0 seconds or more" in err
    code, _, err = run("verify", "--timeout", "0")
    assert code == 2 and "--timeout: '0': must be more than 0 seconds" in err
    code, _, err = run("verify", "--failover", "--wait", "nan")
    assert code == 2 and "'nan' is not a number of seconds" in err


def test_missing_check_user_is_a_usage_error_before_any_connection(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster()
    code, out, err = run("verify", "-i", str(cluster.source))
    assert (code, out) == (2, "")
    assert err.startswith("hafs: error: check_user: not set: ")


def test_drill_without_kill_commands_is_a_usage_error(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(check_user="u")
    code, out, err = run("verify", "-i", str(cluster.source), "--failover")
    assert (code, out) == (2, "")
    assert err.startswith("hafs: error: host n1: drill_kill: missing: ")


def test_a_bad_killer_fds_is_a_usage_error(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(check_user="u")
    for value in ("x", "1", "998,999"):
        argv = ["verify", "-i", str(cluster.source), "--failover", "--killer-fds", value]
        code, _, err = run(*argv)
        assert code == 2
        assert err.startswith(f"hafs: error: --killer-fds {value}: not two open pipes: ")


def test_lab_needs_root_and_an_existing_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert run("verify", "--lab") == (
        2,
        "",
        "hafs: error: --lab needs root (it runs the client in the lab's client namespace)\n",
    )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    code, _, err = run("verify", "--lab", "--name", "nolab-here")
    assert code == 2
    assert err == "hafs: error: no lab named 'nolab-here': hafs lab up --name nolab-here\n"
    code, _, err = run("verify", "--lab", "--failover", "--kill-command", "x")
    assert code == 2 and "--kill-command/--restore-command: not with --lab" in err


def test_a_lab_inventory_is_refused_outside_the_lab(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.py"
    inventory.write_text("")
    lab = tmp_path / "labs" / "demo"
    lab.mkdir(parents=True)
    state = {"inventory": str(inventory), "client": {"ns": "demo-client-not-here"}}
    (lab / "state.json").write_text(json.dumps(state))
    (tmp_path / "labs" / "broken").mkdir()
    (tmp_path / "labs" / "broken" / "state.json").write_text("{not json")

    with pytest.raises(HafsError, match=r"the inventory of lab 'demo', .* --lab --name demo$"):
        verify_cli.refuse_lab_inventory(inventory, tmp_path / "labs")
    verify_cli.refuse_lab_inventory(tmp_path / "other.py", tmp_path / "labs")
    verify_cli.refuse_lab_inventory(inventory, tmp_path / "no-labs")


def test_a_lab_inventory_is_used_inside_one_of_its_labs_beside_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hafs verify --lab --name second` runs in the client namespace of lab "second"; lab
    "demo" of the same inventory runs too: that is not a reason to refuse."""
    inventory = tmp_path / "inventory.py"
    inventory.write_text("")
    for name in ("demo", "second"):
        (tmp_path / "labs" / name).mkdir(parents=True)
        state = {"inventory": str(inventory), "client": {"ns": f"{name}-client"}}
        (tmp_path / "labs" / name / "state.json").write_text(json.dumps(state))
    inside = {"/proc/self/ns/net", os.path.join(verify_cli.NETNS_DIR, "second-client")}
    monkeypatch.setattr(verify_cli, "_netns_inode", lambda path: 1 if path in inside else path)
    verify_cli.refuse_lab_inventory(inventory, tmp_path / "labs")
    inside.discard(os.path.join(verify_cli.NETNS_DIR, "second-client"))
    with pytest.raises(HafsError, match=r"--lab --name demo$"):
        verify_cli.refuse_lab_inventory(inventory, tmp_path / "labs")


def test_the_lab_child_gets_the_same_command_without_lab() -> None:
    parser_args = verify_cli_args(
        "verify", "--lab", "--json", "--failover", "--node", "n2", "--settle", "0",
        "--plot", "out.png", "--wait", "30",
    )  # fmt: skip
    assert verify_cli._child_argv(parser_args, "/labs/inv.py") == [
        "verify", "-i", "/labs/inv.py", "--timeout", "5.0", "--json", "--failover",
        "--wait", "30.0", "--poll-timeout", "0.5", "--node", "n2", "--settle", "0.0",
        "--plot", os.path.abspath("out.png"),
    ]  # fmt: skip
    assert verify_cli._child_argv(verify_cli_args("verify", "--lab"), "/i.py") == [
        "verify", "-i", "/i.py", "--timeout", "5.0"
    ]  # fmt: skip


def verify_cli_args(*argv: str) -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    verify_cli.register(parser.add_subparsers())
    return parser.parse_args(list(argv))
