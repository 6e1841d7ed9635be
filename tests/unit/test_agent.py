"""The agent's logic that needs no root: packet checks, demotion, control protocol, CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hafs.agentconf import AgentConfig, VhidEntry
from hafs.carp import control, linux, vrrp, wire
from hafs.carp.agent import Agent, Demotion, Interface, held_back
from hafs.carp.commands import demote_request, format_status, ucarp_config
from hafs.carp.control import answer
from hafs.carp.machine import LinkUp, VhidConfig, VhidMachine
from hafs.carp.metrics import AgentCollector
from hafs.carp.vrrp import VrrpAdvert
from hafs.carp.wire import Advert, encode, encode_ipv4, internet_checksum, make_key
from hafs.cli import main
from hafs.errors import HafsError
from hafs.service import daemon

VIP = IPv4Address("10.0.0.100")
PEER = IPv4Address("10.0.0.2")
OWN = IPv4Address("10.0.0.1")


def running_interface(sock: object) -> Interface:
    """eth0, up, without I/O: ``sock`` stands in for its CARP socket; no GARP sender."""
    iface = Interface("eth0", OWN, {OWN}, sock, None)  # type: ignore[arg-type]
    iface.running = True
    return iface


def packet_path(config: AgentConfig) -> Iterator[Agent]:
    """An agent whose vhid is BACKUP, fed packets by hand: no sockets, no I/O in BACKUP."""
    agent = Agent(config)
    loop = asyncio.new_event_loop()
    agent._loop = loop
    agent.interfaces["eth0"] = running_interface(SimpleNamespace(recv=lambda: None))
    agent.hooks.submit = lambda vhid, commands: None  # type: ignore[method-assign]
    agent._handle(agent.vhids[("eth0", 1)], LinkUp())
    yield agent
    loop.close()


CONFIG = AgentConfig(
    node="n1",
    interface="eth0",
    srcip=OWN,
    passphrase="testok",
    vhids=(VhidEntry(1, (VIP,), advskew=10),),
    event_command=(),
)


@pytest.fixture
def agent() -> Iterator[Agent]:
    yield from packet_path(CONFIG)


def advert(
    skew: int = 0, source: IPv4Address = PEER, passphrase: str = "testok", vhid: int = 1
) -> bytes:
    return encode_ipv4(source, encode(vhid, skew, 1, 5, make_key(passphrase), [VIP]))


def test_valid_advert_reaches_the_machine(agent: Agent) -> None:
    agent.receive("eth0", advert())
    vhid = agent.status()["vhids"][0]
    assert vhid["state"] == "BACKUP" and vhid["adverts_received"] == 1
    assert vhid["master"] == {"source": str(PEER), "advskew": 0, "advbase": 1}


def vrrp_advert(priority: int = 200, source: IPv4Address = PEER, vhid: int = 1) -> bytes:
    return encode_ipv4(source, vrrp.encode(vhid, priority, 10, [VIP], source))


@pytest.mark.parametrize(
    ("speaker", "packet", "where", "reason"),
    [
        ("agent", advert()[:30], "agent", "too short"),
        ("agent", advert(vhid=7), "agent", "unknown vhid"),
        ("agent", advert(passphrase="nope"), "vhid", "bad digest"),
        ("agent", advert(source=OWN), "vhid", "sent by us"),
        ("agent", b"\x45" + bytes(60), "agent", "not carp"),
        ("agent", vrrp_advert(), "agent", "too short"),  # 12 bytes: FreeBSD checks length first
        ("vrrp_agent", advert(), "agent", "bad version"),  # a CARP advert on a VRRP link
        ("vrrp_agent", vrrp_advert(vhid=7), "agent", "unknown vhid"),
        ("vrrp_agent", vrrp_advert(source=OWN), "vhid", "sent by us"),
        ("vrrp_agent", vrrp_advert()[:27], "agent", "too short"),
    ],
)
def test_bad_packets_are_counted_by_reason(
    request: pytest.FixtureRequest, speaker: str, packet: bytes, where: str, reason: str
) -> None:
    agent: Agent = request.getfixturevalue(speaker)
    agent.receive("eth0", packet)
    status = agent.status()
    drops = status["drops"] if where == "agent" else status["vhids"][0]["drops"]
    assert drops == {reason: 1}
    assert status["vhids"][0]["adverts_received"] == 0


# one agent for every input, on purpose: no sequence of garbage may change its state
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=120))
def test_arbitrary_bytes_never_raise(agent: Agent, data: bytes) -> None:
    agent.receive("eth0", data)
    assert agent.status()["vhids"][0]["state"] == "BACKUP"


def test_demotion_parts_add_up() -> None:
    d = Demotion()
    d.adjust(+50)
    d.hold("resync", 240, "link eth0 lost")
    raised = d.since["resync"]
    d.links_down.add("eth0")
    assert d.total == 50 + 240 + 240
    assert d.causes == {"resync": "link eth0 lost"}
    d.hold("resync", 240)  # held again by a request: the cause and the time stand
    assert d.causes == {"resync": "link eth0 lost"} and d.since == {"resync": raised}
    d.adjust(-100)
    assert d.operator == 0
    d.hold("resync", 0)
    d.set(7)
    assert d.as_dict() == {
        "total": 247,
        "operator": 7,
        "holds": {},
        "causes": {},
        "since": {},
        "links_down": ["eth0"],
        "send_failing": [],
    }


def test_demotion_reaches_the_machines(agent: Agent) -> None:
    agent.change_demotion(lambda d: d.hold("resync", 240))
    vhid = agent.status()["vhids"][0]
    assert vhid["advertised_skew"] == 240 and agent.demotion.total == 240


class FakeAgent:
    def __init__(self) -> None:
        self.demotion = Demotion()

    def status(self) -> dict[str, Any]:
        return {"node": "x"}

    def change_demotion(self, change: Any) -> None:
        change(self.demotion)


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ({"op": "status"}, {"ok": True, "node": "x"}),
        ({"op": "demote", "adjust": 240}, {"total": 240}),
        ({"op": "demote", "set": 5}, {"total": 5}),
        ({"op": "demote", "hold": "resync", "value": 30}, {"total": 30, "holds": {"resync": 30}}),
        ({"op": "demote"}, {"total": 0}),
    ],
)
def test_control_answers(request_: dict[str, Any], expected: dict[str, Any]) -> None:
    reply = answer(FakeAgent(), request_)  # type: ignore[arg-type]
    assert reply["ok"] is True
    found = reply.get("demotion", reply)
    assert {k: found[k] for k in expected} == expected


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ([], "request must be a JSON object"),
        ({"op": "reboot"}, "unknown op 'reboot'"),
        ({"op": "demote", "adjust": "lots"}, "adjust: must be an integer"),
        ({"op": "demote", "adjust": True}, "adjust: must be an integer"),
        ({"op": "demote", "hold": "x"}, "hold: needs a name and an integer value"),
        ({"op": "demote", "hold": "x", "value": 1, "cause": 7}, "cause: must be a short string"),
    ],
)
def test_control_refuses_bad_requests(request_: Any, error: str) -> None:
    reply = answer(FakeAgent(), request_)  # type: ignore[arg-type]
    assert reply["ok"] is False and error in reply["error"]


def demote_args(**kwargs: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"hold": None, "release": None, "set": None, "change": None}
    return argparse.Namespace(**{**base, **kwargs})


def test_demote_requests() -> None:
    assert demote_request(demote_args(change="+240")) == {"op": "demote", "adjust": 240}
    assert demote_request(demote_args(change="-10")) == {"op": "demote", "adjust": -10}
    assert demote_request(demote_args(set=0)) == {"op": "demote", "set": 0}
    assert demote_request(demote_args(hold=["sync", "240"])) == {
        "op": "demote",
        "hold": "sync",
        "value": 240,
    }
    assert demote_request(demote_args(release="sync")) == {
        "op": "demote",
        "hold": "sync",
        "value": 0,
    }
    assert demote_request(demote_args()) == {"op": "demote"}
    with pytest.raises(HafsError, match=r"write \+N to add or -N to subtract"):
        demote_request(demote_args(change="240"))


def ucarp_args(**kwargs: Any) -> argparse.Namespace:
    base: dict[str, Any] = {
        "interface": "eth0",
        "srcip": "10.0.0.1",
        "vhid": 4,
        "passphrase": None,
        "passfile": None,
        "addr": "10.0.0.214",
        "advbase": 1,
        "advskew": 3,
        "preempt": True,
        "socket": None,
    }
    return argparse.Namespace(**{**base, **kwargs})


def test_ucarp_flags_become_one_vhid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = ucarp_config(ucarp_args(passphrase="testok"))
    assert "--pass is visible to every local user" in capsys.readouterr().err
    assert (config.interface, config.srcip, config.passphrase, config.preempt) == (
        "eth0",
        IPv4Address("10.0.0.1"),
        "testok",
        True,
    )
    assert config.vhids == (VhidEntry(4, (IPv4Address("10.0.0.214"),), 1, 3),)
    assert config.control_socket == "/run/hafs/ucarp-4.sock" and config.event_command == ()

    passfile = tmp_path / "pass"
    passfile.write_text("s3cret\nignored\n")
    passfile.chmod(0o600)
    assert ucarp_config(ucarp_args(passfile=str(passfile))).passphrase == "s3cret"
    assert capsys.readouterr().err == ""
    passfile.chmod(0o644)
    with pytest.raises(HafsError, match="readable by group or others"):
        ucarp_config(ucarp_args(passfile=str(passfile)))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, "--pass or --passfile: give exactly one"),
        ({"passphrase": "x", "vhid": 0}, "--vhid: must be 1..255, got 0"),
        ({"passphrase": "x", "advskew": 255}, "--advskew: must be 0..254, got 255"),
        ({"passphrase": "x", "advbase": 0}, "--advbase: must be 1..254, got 0"),
        ({"passphrase": "x", "addr": "10.0.0"}, "--addr: '10.0.0' is not an IPv4 address"),
        ({"passphrase": "x", "srcip": "me"}, "--srcip: 'me' is not an IPv4 address"),
    ],
)
def test_ucarp_bad_flags_are_one_line(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(HafsError, match=error):
        ucarp_config(ucarp_args(**kwargs))


def test_ucarp_cli_exit_code_and_warning() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hafs",
            "ucarp",
            "-i",
            "lo",
            "-s",
            "127.0.0.1",
            "-v",
            "300",
            "-p",
            "testok",
            "-a",
            "127.0.0.9",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "hafs: error: --vhid: must be 1..255, got 300" in result.stderr


def test_status_table_and_split_brain_warning(agent: Agent) -> None:
    agent.receive("eth0", advert())
    status = agent.status()
    status["vhids"][0]["split_brain"] = ["10.0.0.9"]
    text = format_status(status)
    lines = text.splitlines()
    assert lines[0].startswith("node n1 (pid ")
    assert lines[1].split() == [
        "VHID",
        "IF",
        "STATE",
        "SINCE",
        "REASON",
        "MASTER",
        "SKEW",
        "SENT",
        "RECV",
        "DROPS",
    ]
    assert "BACKUP" in lines[2] and "10.0.0.2/0" in lines[2]
    assert "WARNING: vhid 1: split brain: 10.0.0.9 also claims to be master" in text


def test_hafs_status_adds_the_service_daemons_report(
    agent: Agent,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(control, "request", lambda path, message: {"ok": True, **agent.status()})
    monkeypatch.setattr(daemon, "STATUS_FILE", tmp_path / "replication.json")
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node n1 (pid ") and "replication" not in out  # no service daemon
    daemon.STATUS_FILE.write_text(json.dumps({"node": "n1", "vips": {}}))
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("node n1 (pid ")
    assert out.endswith("replication from n1:\n  (this node holds no VIP)\n")
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["node"] == "n1" and "ok" not in status
    assert status["replication"] == {"node": "n1", "vips": {}}


def test_split_brain_is_reported_only_when_it_persists(
    agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [100.0]
    agent.loop.time = lambda: clock[0]  # type: ignore[method-assign]
    vhid = agent.vhids[("eth0", 1)]
    window = vhid.machine.config.master_down  # 3 + 10/256 s
    worse = Advert(1, 50, 1, 0, bytes(20))
    agent._foreign_master(vhid, "10.0.0.9", worse)  # one stale advert during an election
    clock[0] += 1
    assert agent.split_brain(vhid) == [] and "split brain" not in caplog.text
    clock[0] += window + 1  # silence: the episode is over
    for _ in range(5):  # a master that keeps advertising beside us
        agent._foreign_master(vhid, "10.0.0.9", worse)
        clock[0] += 1
    assert agent.split_brain(vhid) == ["10.0.0.9"]
    assert caplog.text.count("split brain: 10.0.0.9") == 1  # warned once per episode
    assert "(advskew 50, advbase 1)" in caplog.text
    clock[0] += window + 1
    assert agent.split_brain(vhid) == []


@pytest.fixture
def vrrp_agent() -> Iterator[Agent]:
    """The same packet path, speaking VRRPv3 at priority 100."""
    vhids = (VhidEntry(1, (VIP,), priority=100, interval=10),)
    yield from packet_path(replace(CONFIG, passphrase="", vhids=vhids, protocol="vrrp3"))


def test_vrrp_advert_reaches_the_machine(vrrp_agent: Agent) -> None:
    vrrp_agent.receive("eth0", vrrp_advert())
    vhid = vrrp_agent.status()["vhids"][0]
    assert (vhid["state"], vhid["adverts_received"]) == ("BACKUP", 1)
    assert vhid["master"] == {"source": str(PEER), "priority": 200, "interval": 0.1}
    assert (vhid["priority"], vhid["interval"], vhid["advertised_priority"]) == (100, 0.1, 100)
    assert vrrp_agent.tick == 0.1 / 4


def test_vrrp_status_table_shows_priorities(vrrp_agent: Agent) -> None:
    vrrp_agent.change_demotion(lambda d: d.hold("resync", 240))
    vrrp_agent.receive("eth0", vrrp_advert())
    lines = format_status(vrrp_agent.status()).splitlines()
    assert lines[1].split()[6] == "PRIO"
    assert "10.0.0.2/200" in lines[2] and "100->1" in lines[2]


def test_a_held_back_peer_is_carps_skew_240_or_vrrps_priority_1() -> None:
    assert held_back(VrrpAdvert(1, 1, 100, (VIP,)))
    assert not held_back(VrrpAdvert(1, 2, 100, (VIP,)))
    assert held_back(Advert(1, 240, 1, 0, bytes(20)))
    assert not held_back(Advert(1, 239, 1, 0, bytes(20)))


def test_vrrp_metrics_report_the_priority(vrrp_agent: Agent) -> None:
    vrrp_agent.change_demotion(lambda d: d.adjust(30))
    families = {f.name: f for f in AgentCollector.families(vrrp_agent.status())}
    [sample] = families["hafs_vrrp_priority"].samples
    assert (sample.labels, sample.value) == ({"vhid": "1", "interface": "eth0"}, 70)
    assert families["hafs_carp_advskew"].samples == []


# A packet byte for byte the last one its vhid accepted is not decoded and checked again.


def counting_decoder(agent: Agent) -> list[bytes]:
    """Record every packet the agent decodes."""
    decoded: list[bytes] = []
    decode = agent._decode

    def counted(packet: bytes) -> Any:
        decoded.append(packet)
        return decode(packet)

    agent._decode = counted
    return decoded


def test_a_repeated_vrrp_advert_is_heard_without_a_second_decode(vrrp_agent: Agent) -> None:
    decoded = counting_decoder(vrrp_agent)
    for _ in range(3):
        vrrp_agent.receive("eth0", vrrp_advert(priority=200))
    vhid = vrrp_agent.status()["vhids"][0]
    assert vhid["adverts_received"] == 3 and len(decoded) == 1
    vrrp_agent.receive("eth0", vrrp_advert(priority=150))  # the master was demoted: new bytes
    vhid = vrrp_agent.status()["vhids"][0]
    assert vhid["master"]["priority"] == 150 and len(decoded) == 2
    vrrp_agent.receive("eth0", vrrp_advert(priority=150, source=IPv4Address("10.0.0.3")))
    assert vrrp_agent.status()["vhids"][0]["master"]["source"] == "10.0.0.3"
    assert len(decoded) == 3  # another source: other bytes, decoded


def test_a_changed_carp_advert_is_checked_again(agent: Agent) -> None:
    good = advert()
    agent.receive("eth0", good)
    carp = bytearray(good[20:])
    carp[-1] ^= 1  # the digest's last byte, and the checksum made right again
    carp[6:8] = bytes(2)
    carp[6:8] = internet_checksum(bytes(carp)).to_bytes(2, "big")
    agent.receive("eth0", good[:20] + bytes(carp))
    agent.receive("eth0", good)  # a replay: accepted, as by FreeBSD (no replay check)
    vhid = agent.status()["vhids"][0]
    assert vhid["drops"] == {"bad digest": 1} and vhid["adverts_received"] == 2


def test_an_accepted_packet_is_checked_again_under_a_new_config(agent: Agent) -> None:
    decoded = counting_decoder(agent)
    agent.receive("eth0", advert())
    vhid = agent.vhids[("eth0", 1)]
    config = vhid.machine.config
    assert isinstance(config, VhidConfig)
    vhid.machine = VhidMachine(replace(config, passphrase="changed"), lambda: 1)
    agent.receive("eth0", advert())
    assert len(decoded) == 2 and vhid.drops == {"bad digest": 1}


# Unicast peers: a vhid with peers sends to each of them and hears them only.

OTHER = IPv4Address("10.0.0.3")
STRANGER = IPv4Address("10.0.0.9")
PEERS = (PEER, OTHER)


@pytest.fixture(params=["carp", "vrrp3"])
def unicast_agent(request: pytest.FixtureRequest) -> Iterator[Agent]:
    """The packet path with vhid 1's peers 10.0.0.2 and 10.0.0.3, in either protocol."""
    if request.param == "carp":
        vhids = (VhidEntry(1, (VIP,), advskew=10, peers=PEERS),)
        yield from packet_path(replace(CONFIG, vhids=vhids))
    else:
        vhids = (VhidEntry(1, (VIP,), priority=100, interval=10, peers=PEERS),)
        config = replace(CONFIG, passphrase="", vhids=vhids, protocol="vrrp3")
        yield from packet_path(config)


def advert_to(agent: Agent, source: IPv4Address, dst: IPv4Address | None) -> bytes:
    """A master's advert from ``source`` to ``dst`` (None: the group), in the agent's protocol."""
    if agent.config.protocol == "vrrp3":
        message = vrrp.encode(1, 200, 10, [VIP], source, dst=dst or wire.CARP_GROUP_V4)
        return encode_ipv4(source, message, dst=dst)
    return encode_ipv4(source, encode(1, 0, 1, 5, make_key("testok"), [VIP]), dst=dst)


def test_a_unicast_vhid_hears_its_peers_only(unicast_agent: Agent) -> None:
    for source, dst in ((STRANGER, OWN), (STRANGER, None), (PEER, OWN), (OTHER, None)):
        unicast_agent.receive("eth0", advert_to(unicast_agent, source, dst))
    vhid = unicast_agent.status()["vhids"][0]
    assert vhid["peers"] == [str(PEER), str(OTHER)]
    assert vhid["drops"] == {"not a peer": 2}
    assert vhid["adverts_received"] == 2 and vhid["master"]["source"] == str(OTHER)


def test_a_multicast_vhid_takes_adverts_to_the_group_only(agent: Agent) -> None:
    agent.receive("eth0", advert_to(agent, PEER, OWN))  # unicast to us, from no peer of ours
    vhid = agent.status()["vhids"][0]
    assert vhid["drops"] == {"not to the group": 1} and vhid["adverts_received"] == 0
    agent.receive("eth0", advert_to(agent, PEER, None))
    assert agent.status()["vhids"][0]["adverts_received"] == 1


def sends(agent: Agent) -> list[tuple[bytes, str]]:
    """Record what the agent sends: (packet, destination)."""
    sent: list[tuple[bytes, str]] = []

    def send(packet: bytes, dst: str = linux.GROUP) -> None:
        sent.append((packet, dst))

    agent.interfaces["eth0"] = running_interface(SimpleNamespace(send=send))
    return sent


def test_a_unicast_advert_goes_to_each_peer(unicast_agent: Agent) -> None:
    vhid = unicast_agent.vhids[("eth0", 1)]
    sent = sends(unicast_agent)
    packet = vhid.machine.config.packet(0, False, lambda: 5)
    unicast_agent._send(vhid, packet)
    decode = vrrp.decode_ipv4 if unicast_agent.config.protocol == "vrrp3" else wire.decode_ipv4
    assert [dst for _, dst in sent] == [str(PEER), str(OTHER)]
    for (ipv4, _), peer in zip(sent, PEERS, strict=True):
        decoded = decode(ipv4)  # a VRRPv3 checksum made for this peer checks only there
        assert not isinstance(decoded, wire.Rejected) and decoded[:2] == (OWN, peer)
        assert ipv4[8] == 255  # TTL 255, as FreeBSD and keepalived send in unicast mode too


def test_a_multicast_advert_goes_to_the_group(agent: Agent) -> None:
    vhid = agent.vhids[("eth0", 1)]
    sent = sends(agent)
    agent._send(vhid, vhid.machine.config.packet(0, False, lambda: 5))
    [(ipv4, dst)] = sent
    assert dst == linux.GROUP and ipv4[16:20] == wire.CARP_GROUP_V4.packed
