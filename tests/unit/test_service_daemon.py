"""The service daemon's decisions, with a fake node: smbd health and demotion, lag report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from hafs import systemd
from hafs.service import config as service_config
from hafs.service import move
from hafs.service.cli import format_replication
from hafs.service.config import ServiceConfig, ShareConfig, VipService
from hafs.service.daemon import ServiceDaemon
from hafs.service.node import Look
from hafs.service.receiver import Receivers
from hafs.service.replication import Pulled
from hafs.service.runtime import ServiceError
from hafs.service.zfs import Snapshot, ZfsError

VIP = VipService(
    1, "vip1", IPv4Address("10.0.0.100"), "n1", ("n1", "n2"), (ShareConfig("s", True, ()),)
)
CONFIG = ServiceConfig(
    node="n1", pool="tank", replication_interval=10, peers={"n2": IPv4Address("10.0.0.2")},
    vips=(VIP,), users={}, agent_socket=None,
)  # fmt: skip


class FakeZfs:
    health: str | None = "ONLINE"  # None: the pool does not answer (its daemon died)

    def __init__(self) -> None:
        self.space = {"used": str(900 << 20), "available": str(124 << 20)}  # a 1 GiB pool

    def values(self, name: str, *props: str) -> list[str]:
        return [self.space[prop] for prop in props]

    def exists(self, name: str) -> bool:
        return True

    def pool_health(self, pool: str, timeout: float) -> str:
        if self.health is None:
            raise ZfsError(["zpool", "list", "-H", "-o", "health", pool], "connection refused")
        return self.health

    def snapshots(self, dataset: str) -> list[Snapshot]:
        return [Snapshot(dataset, "s1"), Snapshot(dataset, "s2")]  # s2: just synced


class FakeServices:
    """A node holding VIP1 whose smbd died; ``start_ok`` says whether it starts again."""

    def __init__(self, start_ok: bool, served: bool = True, held: bool = True) -> None:
        self.config = CONFIG
        self.zfs = FakeZfs()
        self.start_ok = start_ok
        self.is_served = served
        self.held = held
        self.smbd: int | None = None
        self.calls: list[str] = []
        self.receivers = Receivers()  # no peer: never used

    def holds(self, vip: VipService) -> bool:
        return self.held

    def handover_pending(self, vip: VipService) -> bool:
        return False

    def forget_acks(self, vip: VipService) -> None:
        self.calls.append("forget_acks")

    def dataset(self, vip: VipService) -> str:
        return "tank/hafs/vip1"

    def served(self, vip: VipService) -> bool:
        return self.is_served

    def smbd_pid(self, vip: VipService) -> int | None:
        return self.smbd

    def look(self) -> Look:
        return Look(
            frozenset({"vip1"} if self.held else ()), frozenset({"vip1"} if self.smbd else ())
        )

    @contextlib.contextmanager
    def locked(self, vip: VipService) -> Iterator[None]:
        yield

    def start_smbd(self, vip: VipService) -> None:
        self.calls.append("start_smbd")
        if not self.start_ok:
            raise ServiceError("smbd does not listen")

    def takeover(
        self, vip: VipService, previous_master: str | None = None, fresh: bool = False
    ) -> None:
        fenced = f", fence {previous_master}" if previous_master else ""
        self.calls.append(("takeover, no rollback" if fresh else "takeover") + fenced)

    def remount(self, vip: VipService) -> None:
        self.calls.append("remount")

    def stepdown(self, vip: VipService, action: str = "step-down") -> None:
        self.calls.append("stepdown")

    def stop_smbd(self, vip: VipService) -> None:
        self.calls.append("stop_smbd")
        self.smbd = None

    def refresh(self, vip: VipService) -> None:
        self.calls.append(f"refresh {sorted(self.config.users.items())}")

    def limit(self, vip: VipService) -> int:
        self.calls.append("limit")
        return 1 << 30

    def replicate(self, vip: VipService, routine: bool = False) -> dict[str, Any]:
        self.calls.append("replicate" if routine else "replicate, not routine")
        return {}


def daemon(
    services: FakeServices, config_path: Path | None = None
) -> tuple[ServiceDaemon, list[tuple[str, int]]]:
    d = ServiceDaemon(services, config_path)  # type: ignore[arg-type]
    holds: list[tuple[str, int]] = []
    d.hold = lambda name, value, cause="": holds.append((name, value))  # type: ignore[method-assign]
    return d, holds


def test_dead_smbd_is_restarted_then_replication_goes_on() -> None:
    services = FakeServices(start_ok=True)
    d, holds = daemon(services)
    d.tend(VIP, services.look())
    assert services.calls == ["start_smbd", "limit", "refresh []", "replicate"]
    assert holds == [("smb-vip1", 0)]  # any earlier health demotion is released


def test_smbd_that_does_not_start_demotes_the_node() -> None:
    services = FakeServices(start_ok=False)
    d, holds = daemon(services)
    d.tend(VIP, services.look())
    assert services.calls == ["start_smbd"]  # and no replication of a VIP it cannot serve
    assert holds == [("smb-vip1", 240)]


def test_held_but_not_served_is_taken_over_at_once() -> None:
    services = FakeServices(start_ok=True, served=False)
    d, _ = daemon(services)
    d.tend(
        VIP, services.look()
    )  # (a MASTER event's takeover running now holds the lock: this one waits)
    assert services.calls == ["takeover"]  # and no replication of a VIP it does not serve


def test_served_but_not_held_is_stepped_down() -> None:
    services = FakeServices(start_ok=True, held=False)
    d, _ = daemon(services)
    d.tend(
        VIP, services.look()
    )  # a backup with no smbd for the VIP: nothing to do but forget its acks
    assert services.calls == ["forget_acks"]  # another holder sends to the peers meanwhile
    services.smbd = 4242  # a BACKUP event's step-down failed, or came before the MASTER's
    d.tend(VIP, services.look())
    assert services.calls == ["forget_acks", "forget_acks", "stepdown"]


def test_a_served_vip_is_limited_once_and_again_after_it_came_back() -> None:
    services = FakeServices(start_ok=True)
    services.smbd = 1
    d, _ = daemon(services)
    d.tend(VIP, services.look())
    d.tend(VIP, services.look())  # limited already: no zfs call every round
    assert services.calls == ["limit", "refresh []", "replicate", "refresh []", "replicate"]
    services.held = False  # lost it (its step-down lifts the limit), then took it over again
    services.smbd = None
    d.tend(VIP, services.look())
    services.held, services.smbd, services.calls = True, 1, []
    d.tend(VIP, services.look())
    assert services.calls == ["limit", "refresh []", "replicate"]


def test_a_pool_running_low_is_said_once_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    services = FakeServices(start_ok=True)
    d, _ = daemon(services)
    caplog.set_level(logging.ERROR, "hafs.service")
    pool = d.pool_space()
    assert pool is not None and not pool.low  # 124 MiB free, headroom 51 MiB (5% of 1 GiB)
    services.zfs.space = {"used": str(1000 << 20), "available": str(24 << 20)}
    pool = d.pool_space()
    assert pool is not None and pool.low
    assert d.pool_space() is not None
    assert caplog.text.count("only 24 MiB free of 1024 MiB (headroom 51 MiB)") == 1
    report = {"node": "n1", "vips": {}, "diverged": [], "space": pool.as_dict()}
    assert format_replication(report).splitlines()[-1] == (
        "  pool: 24 MiB free of 1024 MiB (headroom 51 MiB, LOW); kept-aside copies 0 MiB of 205 MiB"
    )


def test_replication_report_shows_lag_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    now = 1_000_000.0
    monkeypatch.setattr(time, "time", lambda: now)
    report = {
        "node": "n1",
        "vips": {
            "vip1": {
                "n2": {"ok": True, "snapshot": "hafs-20261124T000000000000Z", "at": now - 4.2},
                "n3": {"ok": False, "error": "n3 unreachable: timed out", "at": now - 1},
            }
        },
    }
    assert format_replication(report).splitlines() == [
        "replication from n1:",
        "  vip1 -> n2: 4.2s ago, hafs-20261124T000000000000Z",
        "  vip1 -> n3: FAILING: n3 unreachable: timed out",
    ]
    assert format_replication({"node": "n4", "vips": {}}).endswith("(this node holds no VIP)")


def test_a_rewritten_cluster_json_is_reloaded_and_its_users_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cluster.json"
    cluster = {
        "node": "n1", "pool": "tank", "replication_interval": 10, "agent_socket": None,
        "peers": {"n2": "10.0.0.2"}, "users": {"alice": "old"},
        "vips": [{"vhid": 1, "name": "vip1", "address": "10.0.0.100", "home": "n1",
                  "carriers": ["n1", "n2"],
                  "shares": [{"name": "s", "writable": True, "users": []}]}],
    }  # fmt: skip
    path.write_text(json.dumps(cluster))
    path.chmod(0o600)
    services = FakeServices(start_ok=True)
    services.config = service_config.load(path)
    services.smbd = 1
    d, _ = daemon(services, path)
    d.reload()  # unchanged: nothing
    assert d.config is services.config
    cluster["users"] = {"alice": "new"}
    path.write_text(json.dumps(cluster))
    d.reload()
    d.tend(d.config.vip(1), services.look())
    assert services.calls == ["limit", "refresh [('alice', 'new')]", "replicate"]
    caplog.set_level(logging.ERROR, "hafs.service")
    path.write_text("{broken")
    d.reload()  # a broken file: one line, and the daemon keeps what it has
    assert d.config.users == {"alice": "new"}
    assert "keeping the configuration in use" in caplog.text


@pytest.mark.parametrize(
    ("synced", "released"),
    [("s3", True), (None, True), (ServiceError("vip1: sync from n2 failed: boom"), False)],
)
def test_resync_pulls_from_the_holder_then_takes_its_vip_back(
    synced: str | ServiceError | None, released: bool
) -> None:
    """The home (n1) returns while n2 holds VIP1; a holder that never got a copy (it took the
    VIP over before any replication) has nothing to send: the home's own copy stands."""
    services = FakeServices(start_ok=True)
    asked: list[list[str]] = []

    def remote(peer: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        asked.append([peer, *args])
        return subprocess.CompletedProcess(args, 0, "vip1\n", "")

    def pull(vip: VipService, holder: str, since: str | None, handover: bool) -> Pulled:
        asked.append([holder, "handover" if handover else "sync", vip.name, "--since", str(since)])
        if isinstance(synced, ServiceError) and not handover:
            raise synced
        return Pulled(synced if isinstance(synced, str) else None, synced is not None, [])

    services.remote = remote  # type: ignore[attr-defined]
    services.pull = pull  # type: ignore[attr-defined]
    d, holds = daemon(services)
    d.resync()
    expected = [["n2", "held"], ["n2", "sync", "vip1", "--since", "s2"]]
    if released:
        expected.append(["n2", "handover", "vip1", "--since", "s2"])
    assert asked == expected
    assert holds == ([("resync", 0)] if released else [])  # else: still demoted, tried again
    # the address comes with the preempt: served from here at once, not by the MASTER hook;
    # with no rollback only if it received the holder's last writes into its remounted replica
    fresh = "takeover, no rollback" if synced == "s3" else "takeover"
    assert services.calls == (["remount", f"{fresh}, fence 10.0.0.2"] if released else [])


def test_a_handover_that_failed_is_tried_again_at_once() -> None:
    """The holder has stopped serving by then: its clients wait for the next try. (A push
    of its own round, from an older base, can roll this node back past the handover's
    base: fault suite, cut, 5.3 s until the next round's try.)"""
    services = FakeServices(start_ok=True)
    tries: list[bool] = []

    def pull(vip: VipService, holder: str, since: str | None, handover: bool) -> Pulled:
        tries.append(handover)
        if tries == [False, True]:
            raise ServiceError("vip1: handover from n2 failed: no snapshot @s2 here")
        return Pulled("s3", True, [])

    services.remote = lambda *_: subprocess.CompletedProcess([], 0, "vip1\n", "")  # type: ignore[attr-defined]
    services.pull = pull  # type: ignore[attr-defined]
    d, holds = daemon(services)
    d.resync()
    assert tries == [False, True, True]
    assert holds == [("resync", 0)]
    assert services.calls == ["remount", "takeover, no rollback, fence 10.0.0.2"]


THREE = ServiceConfig(
    node="n2", pool="tank", replication_interval=10,
    peers={"n1": IPv4Address("10.0.0.1"), "n3": IPv4Address("10.0.0.3")},
    vips=(
        VipService(1, "vip1", IPv4Address("10.0.0.101"), "n1", ("n1", "n2", "n3"), ()),
        VipService(2, "vip2", IPv4Address("10.0.0.102"), "n2", ("n2", "n3", "n1"), ()),
        VipService(3, "vip3", IPv4Address("10.0.0.103"), "n3", ("n3", "n1", "n2"), ()),
    ),
    users={}, agent_socket=None,
)  # fmt: skip


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        # n1 is down; n3 holds its own vip3 and n2's vip2: sync both, take back vip2 only
        (
            {"n1": (255, "", "ssh: connect timed out"), "n3": (0, "vip3\nvip2\n", "")},
            ["sync vip2 n3", "sync vip3 n3", "handover vip2 n3"],
        ),
        # vip1 held by n3 (n1 down): n2 comes before n3 for vip1, so it takes vip1 too
        (
            {"n1": (255, "", "no route"), "n3": (0, "vip1\nvip2\nvip3\n", "")},
            [
                "sync vip1 n3",
                "sync vip2 n3",
                "sync vip3 n3",
                "handover vip1 n3",
                "handover vip2 n3",
            ],
        ),
        # both claim vip3 for a moment: the one first in its takeover order is the source
        (
            {"n1": (0, "vip1\nvip3\n", ""), "n3": (0, "vip3\nvip2\n", "")},
            ["sync vip1 n1", "sync vip2 n3", "sync vip3 n3", "handover vip2 n3"],
        ),
        # nobody holds anything (n2 is the first back): nothing to pull, demotion released
        ({"n1": (255, "", "down"), "n3": (255, "", "down")}, []),
    ],
)
def test_resync_finds_the_holders_by_asking_every_peer(
    answers: dict[str, tuple[int, str, str]], expected: list[str]
) -> None:
    services = FakeServices(start_ok=True)
    services.config = THREE
    asked: list[str] = []

    def remote(peer: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        if args[0] == "held":
            return subprocess.CompletedProcess(args, *answers[peer])
        raise AssertionError(args)

    def pull(vip: VipService, holder: str, since: str | None, handover: bool) -> Pulled:
        asked.append(f"{'handover' if handover else 'sync'} {vip.name} {holder}")
        return Pulled("s3", True, [])

    services.remote = remote  # type: ignore[attr-defined]
    services.pull = pull  # type: ignore[attr-defined]
    d, holds = daemon(services)
    d.resync()
    syncs = [a for a in asked if a.startswith("sync")]  # all at once: in any order
    handovers = [a for a in asked if a.startswith("handover")]
    assert asked == [*syncs, *handovers]  # every replica up to date before the first handover
    assert sorted(syncs) + handovers == expected
    assert holds == [("resync", 0)]


def test_a_node_without_quorum_serves_nothing_and_takes_nothing_over() -> None:
    from hafs.service.quorum import Verdict

    lost = Verdict(False, ("n1",), ("n1", "n2"), "isolated")
    services = FakeServices(start_ok=True, served=False)  # held, not served: would take over
    d, holds = daemon(services)
    d.quorum_changed(lost)
    for thread in threading.enumerate():  # its step-down of what was served (nothing here)
        if thread.name == "hafs-quorum-lost":
            thread.join()
    d.membership = type("M", (), {"verdict": lost})()
    d.tend(VIP, services.look())
    assert services.calls == [] and holds == [("quorum", 240)]
    services.smbd = 4242  # served when quorum went: stepped down at once
    d.release_all()
    assert services.calls == ["stepdown"]
    back = Verdict(True, ("n1", "n2"), ("n1", "n2"), "majority")
    d.quorum_changed(back)  # it may have missed writes: resync before it preempts
    assert holds[1:] == [("resync", 240), ("quorum", 0)]


def test_a_pool_that_stops_answering_stops_every_smbd_and_demotes_until_it_answers() -> None:
    services = FakeServices(start_ok=True)
    services.smbd = 4242
    d, holds = daemon(services)
    assert d.pool_healthy() and holds == [] and services.calls == []
    services.zfs.health = None  # zfs-fuse killed
    assert not d.pool_healthy()
    assert services.calls == ["stop_smbd"] and holds == [("pool-unhealthy", 240)]
    services.smbd = 4343  # a takeover that raced it: stopped at the next round, no new hold
    assert not d.pool_healthy()
    assert services.calls == ["stop_smbd", "stop_smbd"] and len(holds) == 1
    services.zfs.health = "ONLINE"  # back: its replicas missed every send: resync first
    assert d.pool_healthy()
    assert holds[1:] == [("resync", 240), ("pool-unhealthy", 0)]


def test_a_pool_that_hangs_in_the_middle_of_a_round_is_probed_beside_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A round stuck in a zfs command of a hung pool (up to two minutes) does not delay the
    probe: the watch probes once the round has run long, demotes and stops the smbds; between
    rounds it probes nothing (the round's own probe is enough)."""
    monkeypatch.setattr("hafs.service.daemon.POOL_WATCH_AFTER", 0.2)
    monkeypatch.setattr("hafs.service.daemon.POOL_WATCH_STEP", 0.01)
    services = FakeServices(start_ok=True)
    services.smbd = 4242
    probes: list[str] = []
    answer = services.zfs.pool_health

    def probe(pool: str, timeout: float) -> str:
        probes.append(pool)
        return answer(pool, timeout)

    services.zfs.pool_health = probe  # type: ignore[method-assign]
    d, holds = daemon(services)
    watch = threading.Thread(target=d.watch_pool)
    watch.start()
    try:
        time.sleep(0.5)
        assert probes == []  # no round runs
        d.round_began = time.monotonic()  # a round begins: its own probe comes first
        assert d.pool_healthy() and probes == ["tank"]
        services.zfs.health = None  # and then the pool hangs, the round waits in a command
        deadline = time.monotonic() + 5
        while not holds and time.monotonic() < deadline:
            time.sleep(0.01)
        assert holds == [("pool-unhealthy", 240)] and services.calls == ["stop_smbd"]
        assert len(probes) == 2
    finally:
        d.stopping.set()
        watch.join()


@pytest.mark.parametrize(("health", "ok"), [("DEGRADED", True), ("SUSPENDED", False)])
def test_a_degraded_pool_serves_and_a_suspended_one_does_not(health: str, ok: bool) -> None:
    services = FakeServices(start_ok=True)
    services.zfs.health = health
    d, holds = daemon(services)
    assert d.pool_healthy() is ok
    assert holds == ([] if ok else [("pool-unhealthy", 240)])


def test_a_vip_not_preempted_after_the_handover_is_left_to_the_master_hook(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("hafs.service.daemon.TAKE_BACK_WAIT", 0.05)
    services = FakeServices(start_ok=True, held=False)  # another master won meanwhile
    d, _ = daemon(services)
    caplog.set_level(logging.INFO, "hafs.service")
    d.take_back(VIP, "n2")
    assert services.calls == []
    assert "vip1: not preempted yet: the MASTER hook takes it over" in caplog.text


def test_a_returning_home_does_not_take_back_a_vip_moved_away_from_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`hafs move vip1 n2`: the home (n1) comes back, syncs its replica, and leaves vip1 on n2
    (its agent ranks n2 first): no handover, no takeover."""
    services = FakeServices(start_ok=True)
    asked: list[str] = []

    def remote(peer: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args, 0, "vip1\n", "")

    def pull(vip: VipService, holder: str, since: str | None, handover: bool) -> Pulled:
        asked.append(f"{'handover' if handover else 'sync'} {vip.name} {holder}")
        return Pulled("s3", True, [])

    services.remote = remote  # type: ignore[attr-defined]
    services.pull = pull  # type: ignore[attr-defined]
    monkeypatch.setattr(move, "moved", lambda services: {"vip1": "n2"})
    d, holds = daemon(services)
    d.resync()
    assert asked == ["sync vip1 n2"]
    assert holds == [("resync", 0)]
    assert services.calls == []


def test_a_reload_re_executes_without_quiescing(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP: the round ends and the daemon execs itself; no step-down, no final send (a
    stop's shutdown would quiesce every VIP held here)."""
    services = FakeServices(start_ok=True)
    d, _ = daemon(services)
    monkeypatch.setattr(d, "start_membership", lambda: None)
    execs: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        execs.append(argv)
        raise OSError("no such file")

    monkeypatch.setattr(os, "execv", execv)
    handlers: dict[int, Any] = {}
    monkeypatch.setattr(signal, "signal", handlers.__setitem__)  # this process keeps its own
    d.reload_requested()  # what SIGHUP does: the loop below ends at once
    with pytest.raises(ServiceError, match=r"^reload: cannot re-execute .*: no such file$"):
        d.run()
    assert execs == [[sys.executable, *sys.orig_argv[1:]]]
    assert "stepdown" not in services.calls
    d.reloading = False
    handlers[signal.SIGHUP]()
    assert d.reloading  # the handler run() installed


@pytest.mark.parametrize(("usec", "fed"), [("30000000", [15.0]), (None, [])])
def test_under_systemds_watchdog_a_thread_feeds_it(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, fed: list[float]
) -> None:
    """hooks/hafs-service.service's WatchdogSec: a daemon that stopped running (SIGSTOP, a
    frozen process) replicates nothing; fed while it runs, systemd restarts it otherwise."""
    services = FakeServices(start_ok=True)
    d, _ = daemon(services)
    monkeypatch.setattr(d, "start_membership", lambda: None)
    monkeypatch.setattr(d, "shutdown", lambda: None)
    monkeypatch.setattr(signal, "signal", lambda *_: None)  # this process keeps its own
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    if usec is None:
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    else:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    feeding: list[float] = []
    monkeypatch.setattr(systemd, "feed_watchdog", feeding.append)
    d.stopping.set()  # no round: only what run() starts
    d.run()
    for thread in threading.enumerate():
        if thread.name == "hafs-watchdog":
            thread.join(5)  # the stand-in feeds once and returns
    assert feeding == fed
