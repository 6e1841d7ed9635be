"""The agent's resync hold (start, lost link, stall, silent peers), watchdog and cleanup.

The agent runs on a fake clock: its loop's ``time`` is a list cell the test moves, packets are
queued on a fake socket, and what it sends is recorded instead of sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from hafs.agentconf import AgentConfig, VhidEntry
from hafs.carp import linux
from hafs.carp.agent import Agent, Vhid, cleanup
from hafs.carp.commands import format_status
from hafs.carp.wire import encode, encode_ipv4, make_key
from hafs.errors import HafsError

VIP = IPv4Address("10.0.0.100")
PEER = IPv4Address("10.0.0.2")
OWN = IPv4Address("10.0.0.1")
MASTER_DOWN = 3 + 10 / 256  # our advskew is 10


def advert(skew: int) -> bytes:
    """A valid advert of the peer for vhid 1."""
    return encode_ipv4(PEER, encode(1, skew, 1, 5, make_key("testok"), [VIP]))


@dataclass
class Bed:
    agent: Agent
    clock: list[float]
    queued: list[bytes]  # packets waiting on the socket
    sent: list[int]  # the advskew of every advert sent

    @property
    def vhid(self) -> Vhid:
        return self.agent.vhids[("eth0", 1)]

    @property
    def state(self) -> str:
        return self.vhid.machine.state.value

    def at(self, now: float) -> None:
        """Jump to ``now``: the agent did not run meanwhile (a stall, if long enough)."""
        self.clock[0] = now

    def run_until(self, now: float) -> None:
        """Time passes with the agent running: its tick every advbase/4."""
        while self.clock[0] + self.agent.tick <= now:
            self.clock[0] += self.agent.tick
            self.agent._tick()
        self.clock[0] = now

    def release(self) -> None:
        self.agent.change_demotion(lambda d: d.hold("resync", 0))

    def cause(self) -> str | None:
        return self.agent.demotion.causes.get("resync")

    def fire_timer(self) -> None:
        """The vhid's timer callback, as the loop runs it once its deadline has passed."""
        at = self.vhid.machine.deadline
        assert at is not None and self.clock[0] >= at
        self.agent._timer(self.vhid, at)

    def become_master(self) -> None:
        self.at(self.vhid.machine.deadline or 0)
        self.fire_timer()
        assert self.state == "MASTER"


def make_bed(
    start_demoted: bool = True, resync_holds: bool = False, state_file: str | None = None
) -> Bed:
    config = AgentConfig(
        node="n1", interface="eth0", srcip=OWN, passphrase="testok",
        vhids=(VhidEntry(1, (VIP,), advskew=10),), event_command=(),
        start_demoted=start_demoted, resync_holds=resync_holds, state_file=state_file,
    )  # fmt: skip
    clock, queued, sent = [100.0], list[bytes](), list[int]()
    agent = Agent(config)
    loop = asyncio.new_event_loop()
    loop.time = lambda: clock[0]  # type: ignore[method-assign]
    agent._loop = loop

    def recv() -> bytes | None:
        return queued.pop(0) if queued else None

    agent.interfaces["eth0"] = SimpleNamespace(  # type: ignore[assignment]
        own={OWN}, running=None, srcip=OWN, sock=SimpleNamespace(recv=recv)
    )
    agent.hooks.submit = lambda vhid, commands: None  # type: ignore[method-assign]
    agent._send = lambda vhid, packet: sent.append(packet[2])  # type: ignore[method-assign]
    agent._netlink_call = lambda func, *args: None  # type: ignore[method-assign]
    agent._set_link("eth0", True)  # what _open does with the state it finds
    return Bed(agent, clock, queued, sent)


@pytest.fixture
def bed() -> Iterator[Bed]:
    bed = make_bed()
    yield bed
    bed.agent.loop.close()


def test_the_hold_is_raised_at_start_only_with_start_demoted() -> None:
    held, bare = make_bed(), make_bed(start_demoted=False)
    assert held.agent.demotion.holds == {"resync": 240}
    assert held.cause() == "agent started"
    assert held.vhid.machine.advertised == 240
    assert bare.agent.demotion.holds == {}
    for b in (held, bare):
        b.agent.loop.close()


# A lost link.


def test_a_lost_link_holds_the_node_after_carrier_returns(bed: Bed) -> None:
    bed.release()
    bed.agent._set_link("eth0", False)
    assert bed.state == "INIT"
    assert (bed.agent.demotion.holds, bed.cause()) == ({"resync": 240}, "link eth0 lost")
    assert bed.agent.demotion.total == 480  # the hold and the link-down demotion
    bed.run_until(105.0)
    bed.agent._set_link("eth0", True)
    assert bed.state == "BACKUP"
    assert bed.agent.demotion.total == 240  # the link-down demotion is gone, the hold is not
    assert bed.cause() == "link eth0 back after a loss"
    bed.agent.receive("eth0", advert(50))  # a slower master: without the hold we would preempt
    assert bed.state == "BACKUP"
    bed.release()  # the service daemon has re-synced
    bed.agent.receive("eth0", advert(50))
    assert bed.state == "MASTER" and bed.vhid.machine.reason == "preempting a slower master"


def test_a_hold_released_while_the_link_is_down_comes_back_with_carrier(bed: Bed) -> None:
    bed.release()
    bed.agent._set_link("eth0", False)
    bed.release()  # the service daemon found no peer to sync from during the outage
    bed.agent._set_link("eth0", True)
    assert bed.agent.demotion.holds == {"resync": 240}


# A stall of the agent itself.


def test_a_stalled_master_raises_the_hold_before_it_advertises(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    bed.release()
    bed.become_master()
    assert bed.sent == [10]
    bed.at(113.0)  # SIGSTOP for ten seconds: the peer took over and advertised meanwhile
    bed.queued.append(advert(50))  # slower than our 10, but better than our 240 now
    bed.fire_timer()  # our advert timer expired during the stall
    assert bed.sent == [10, 240]  # never our old skew: the peer would step down
    assert bed.state == "BACKUP"  # the queued advert was read before the expired timer acted
    assert bed.cause() == "agent stalled 10.0s"
    assert "resync hold raised: agent stalled 10.0s" in caplog.text


@pytest.mark.parametrize(
    ("start_demoted", "resync_holds"), [(True, False), (False, True), (False, False)]
)
def test_a_stalled_backup_reads_queued_adverts_before_its_expired_timer(
    start_demoted: bool, resync_holds: bool
) -> None:
    bed = make_bed(start_demoted, resync_holds)
    bed.release()
    bed.at(113.0)  # the master-down deadline (103.04) passed while the agent was stopped
    bed.queued.append(advert(0))  # but the master went on advertising
    bed.fire_timer()
    assert bed.state == "BACKUP" and bed.sent == []
    assert bed.vhid.machine.deadline == 113.0 + MASTER_DOWN
    held = start_demoted or resync_holds  # a first boot: not held at start, held after a stall
    assert bed.agent.demotion.holds == ({"resync": 240} if held else {})
    bed.agent.loop.close()


def test_the_tick_notices_a_stall_when_nothing_else_happens(bed: Bed) -> None:
    bed.release()
    bed.at(100.0 + MASTER_DOWN)  # a gap of exactly master-down is no stall
    bed.agent._tick()
    assert bed.agent.demotion.holds == {}
    bed.at(110.0)
    bed.agent._tick()
    assert bed.cause() == "agent stalled 7.0s"


def test_a_control_request_queued_during_a_stall_does_not_undo_the_hold(bed: Bed) -> None:
    bed.release()
    bed.become_master()
    bed.agent.change_demotion(lambda d: d.hold("resync", 240))
    bed.at(120.0)
    bed.release()  # sent before the stall, read after it
    assert bed.agent.demotion.holds == {"resync": 240}
    assert bed.sent[-1] == 240 and 10 not in bed.sent[1:]


# Silent peers.


def test_a_node_that_stops_hearing_its_peers_holds_once_per_silence(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    bed.release()
    bed.run_until(110.0)  # nothing heard yet, ever: no silence
    assert bed.agent.demotion.holds == {}
    bed.agent.receive("eth0", advert(0))
    bed.run_until(110.0 + MASTER_DOWN)  # within master-down of the last advert
    assert bed.agent.demotion.holds == {}
    bed.run_until(115.0)
    assert (bed.cause() or "").startswith("no peer heard for 3.")  # first tick past it
    assert caplog.text.count("resync hold raised: no peer heard") == 1
    bed.release()  # nobody answered the service daemon
    bed.run_until(120.0)
    assert bed.agent.demotion.holds == {}  # the same silence does not hold again
    bed.agent.receive("eth0", advert(0))  # a peer again, then silence again
    bed.run_until(125.0)
    assert (bed.cause() or "").startswith("no peer heard for 3.")


@pytest.mark.parametrize(("skew", "released"), [(240, True), (0, False)])
def test_after_a_silence_the_hold_yields_to_a_demoted_peer(
    bed: Bed, skew: int, released: bool
) -> None:
    """Two nodes: the survivor of a peer's stall holds for the silence; the peer resumes
    demoted (skew 240). Both at 240 would step both masters down: the survivor yields."""
    bed.release()
    bed.agent.receive("eth0", advert(0))  # the peer, master
    bed.run_until(100.0 + MASTER_DOWN)
    bed.fire_timer()  # it fell silent: we took over
    assert bed.state == "MASTER"
    bed.run_until(104.0)
    assert (bed.cause() or "").startswith("no peer heard for")
    sent = len(bed.sent)
    bed.agent.receive("eth0", advert(skew))
    assert (bed.agent.demotion.holds == {}) is released
    if released:  # it advertised its own skew again before it judged the peer's advert
        assert bed.sent[sent:] == [10, 10] and bed.state == "MASTER"
        bed.run_until(120.0)  # the peer, stepped down, is silent: that is no new silence
        assert bed.agent.demotion.holds == {}
    else:  # a fresh peer: we may have missed its changes
        assert bed.state == "BACKUP"


def test_a_worse_master_is_no_peer_heard(bed: Bed) -> None:
    """A master worse than us steps down on our adverts and falls silent as a backup: its
    adverts do not keep the silence from counting."""
    bed.release()
    bed.agent.receive("eth0", advert(0))
    bed.run_until(100.0 + MASTER_DOWN)
    bed.fire_timer()
    for second in range(104, 110):
        bed.run_until(second)
        bed.agent.receive("eth0", advert(50))  # answered each time, never counted
    assert (bed.cause() or "").startswith("no peer heard for")


def test_a_hold_for_another_cause_does_not_yield_after_a_silence(bed: Bed) -> None:
    bed.release()
    bed.agent.receive("eth0", advert(0))
    bed.agent._set_link("eth0", False)
    bed.run_until(100.5)
    bed.agent._set_link("eth0", True)  # held: link eth0 back after a loss
    bed.run_until(110.0)  # then silence: already held
    assert (bed.cause() or "").startswith("no peer heard for")
    bed.agent.receive("eth0", advert(240))
    assert bed.agent.demotion.holds == {"resync": 240}


# The watchdog, status and cleanup.


def test_the_tick_feeds_the_watchdog_every_half_period(
    bed: Bed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(path)
        systemd.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        bed.agent._watchdog = 1.0  # WATCHDOG_USEC=2000000
        for now in (100.0, 100.25, 100.5, 100.75, 101.0, 101.25):
            bed.at(now)
            bed.agent._tick()
        assert systemd.recv(100) == b"WATCHDOG=1"
        assert systemd.recv(100) == b"WATCHDOG=1"
        with pytest.raises(BlockingIOError):
            systemd.recv(100)


def test_status_shows_each_hold_with_its_cause_and_since_when(bed: Bed) -> None:
    bed.agent._set_link("eth0", False)
    bed.agent.change_demotion(lambda d: d.hold("pool-unhealthy", 240, "pool tank is SUSPENDED"))
    first = format_status(bed.agent.status()).splitlines()[0]
    assert re.search(
        r"demotion 720 \(holds pool-unhealthy=240: pool tank is SUSPENDED, since "
        r"\d\d:\d\d:\d\d \(0s ago\); resync=240: link eth0 lost, since \d\d:\d\d:\d\d "
        r"\(0s ago\), links down eth0\)$",
        first,
    ), first


def cleanup_config(tmp_path: Path, hook: str, link_mode: str = "garp") -> AgentConfig:
    return AgentConfig(
        node="n1", interface="eth0", srcip=OWN, passphrase="p",
        vhids=(VhidEntry(1, (VIP,)), VhidEntry(2, (IPv4Address("10.0.0.101"),), advskew=5)),
        event_command=("sh", "-c", hook), control_socket="/run/x.sock",
        link_mode=link_mode,  # type: ignore[arg-type]
    )  # fmt: skip


def test_cleanup_removes_the_vips_and_steps_every_vhid_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    removed: list[tuple[str, IPv4Address]] = []
    deleted: list[int] = []

    def remove_vip(ifname: str, address: IPv4Address) -> bool:
        removed.append((ifname, address))
        return True

    def delete_vmac(vhid: int) -> bool:
        deleted.append(vhid)
        return True

    monkeypatch.setattr(linux, "remove_vip", remove_vip)
    monkeypatch.setattr(linux, "delete_vmac", delete_vmac)
    events = tmp_path / "events"
    hook = f'echo "$0 $1 $HAFS_AGENT_SOCKET" >> {events}'
    assert cleanup(cleanup_config(tmp_path, hook, "vmac")) == 0
    assert removed == [("eth0", VIP), ("eth0", IPv4Address("10.0.0.101"))]
    assert deleted == [1, 2]
    assert sorted(events.read_text().splitlines()) == [
        "1@eth0 BACKUP /run/x.sock",
        "2@eth0 BACKUP /run/x.sock",
    ]
    assert "cleanup: removed 10.0.0.100 from eth0" in caplog.text


def test_cleanup_of_nothing_succeeds_and_failures_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(ifname: str, address: IPv4Address) -> bool:
        raise HafsError(f"interface {ifname!r}: not found in this network namespace")

    monkeypatch.setattr(linux, "remove_vip", gone)
    assert cleanup(cleanup_config(tmp_path, "exit 0")) == 0  # no interface: nothing there
    assert cleanup(cleanup_config(tmp_path, "exit 3")) == 1  # a hook failed

    def refused(ifname: str, address: IPv4Address) -> bool:
        raise NetlinkError(1, "Operation not permitted")

    monkeypatch.setattr(linux, "remove_vip", refused)
    assert cleanup(cleanup_config(tmp_path, "exit 0")) == 1
