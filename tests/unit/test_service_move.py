"""`hafs move VIP NODE`: the new ranks, the order of the steps, the way back on a failure,
and bad input refused in one line (exit 2)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from hafs.carp import control
from hafs.errors import HafsError
from hafs.service import host, move, replication
from hafs.service.config import ServiceConfig, VipService
from hafs.service.node import NodeServices
from hafs.service.runtime import ServiceError

VIP = VipService(
    1, "vip1", IPv4Address("10.0.0.101"), "n1", ("n1", "n2", "n4", "n3"), (),
    advskew={"n1": 0, "n2": 10, "n3": 30, "n4": 20},
)  # fmt: skip
VIP2 = VipService(2, "vip2", IPv4Address("10.0.0.102"), "n2", ("n2", "n1"), (), {"n1": 10, "n2": 0})
CONFIG = ServiceConfig(
    node="n1", pool="tank", replication_interval=10, vips=(VIP, VIP2), users={},
    peers={f"n{i}": IPv4Address(f"10.0.0.{i}") for i in (2, 3, 4, 5)}, interface="em0",
)  # fmt: skip


def test_the_chosen_node_comes_first_and_the_others_keep_their_order() -> None:
    assert move.order(VIP, "n3") == ["n3", "n1", "n2", "n4"]
    assert move.ranks(VIP, "n3") == {"n3": 0, "n1": 10, "n2": 20, "n4": 30}
    assert move.ranks(VIP, "n2") == {"n2": 0, "n1": 10, "n4": 20, "n3": 30}
    assert move.ranks(VIP, "n1") == VIP.advskew  # home: the configured ranks
    vrrp = replace(CONFIG, protocol="vrrp3")
    assert [move.rank_value(vrrp, VIP, n, "n3") for n in ("n3", "n1")] == [254, 244]
    with pytest.raises(ServiceError, match=r"cluster\.json has no advskew per carrier: render"):
        move.ranks(replace(VIP, advskew={}), "n3")


def test_freebsd_changes_the_rank_with_ifconfig() -> None:
    assert move.freebsd_argv(CONFIG, VIP, 10) == ["ifconfig", "em0", "vhid", "1", "advskew", "10"]
    vrrp = replace(CONFIG, protocol="vrrp3")
    assert move.freebsd_argv(vrrp, VIP, 244) == ["ifconfig", "em0", "vhid", "1", "vrrpprio", "244"]


def test_ucarp_cannot_rank_one_vhid_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "FREEBSD", False)
    with pytest.raises(ServiceError) as caught:
        move.prefer(NodeServices(CONFIG), VIP, "n2")  # no agent socket, not FreeBSD: ucarp
    assert str(caught.value) == (
        "n1: its CARP daemon (ucarp) cannot change a vhid's priority at run time, so vip1 "
        "cannot be moved to one chosen node (`hafs drain` moves all)"
    )


def test_the_agent_is_told_the_rank_and_how_to_come_home(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[dict[str, Any]] = []

    def request(socket: str, message: dict[str, Any]) -> dict[str, Any]:
        asked.append(message)
        return {"ok": True}

    monkeypatch.setattr(control, "request", request)
    services = NodeServices(replace(CONFIG, agent_socket="/run/hafs/agent.sock"))
    move.prefer(services, VIP, "n3", handing=True)  # the holder: only n3 (0) may preempt it
    move.prefer(services, VIP, "n3")
    move.prefer(services, VIP, "n1")
    assert asked == [
        {"op": "move", "vhid": 1, "to": "n3", "value": 1,
         "cause": "being moved to n3; `hafs move vip1 n1` brings it home"},
        {"op": "move", "vhid": 1, "to": "n3", "value": 10,
         "cause": "moved by `hafs move`; `hafs move vip1 n1` brings it home"},
        {"op": "move", "vhid": 1},
    ]  # fmt: skip
    services.config = replace(services.config, protocol="vrrp3")
    move.prefer(services, VIP, "n3", handing=True)
    assert asked[-1]["value"] == 253  # behind n3's 254, ahead of every other (244 and lower)


AGENT = replace(CONFIG, agent_socket="/run/hafs/agent.sock")  # this node runs `hafs agent`


class Moving(NodeServices):
    """n1 holds vip1 until its own rank changes; what happens, in order (peers as 'n2: ...')."""

    def __init__(self, config: ServiceConfig = AGENT, refuse: str = "", lacks: bool = False):
        super().__init__(config)
        self.refuse, self.lacks, self.done, self.held = refuse, lacks, list[str](), True

    def holds(self, vip: VipService) -> bool:
        return self.held and vip.name == "vip1"  # vip2 is held by n2

    def remote(
        self, peer: str, args: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        if args[0] == "prefer":
            self.done.append(f"{peer}: rank {args[1]} for {args[2]}")
            if peer == self.refuse:
                return subprocess.CompletedProcess(args, 1, "", "hafs: error: n3: ucarp: no\n")
            return subprocess.CompletedProcess(args, 0, "", "")
        if args[0] == "report":
            return subprocess.CompletedProcess(args, 0, json.dumps({"serving": ["vip1"]}), "")
        held = "vip2" if peer == "n2" else ""
        return subprocess.CompletedProcess(args, 0, held, "")

    def record_connections(self, vip: VipService) -> None:
        self.done.append("record")

    def stepdown(self, vip: VipService, action: str = "step-down") -> None:
        self.done.append(action)

    def replicate(
        self,
        vip: VipService,
        record_clients: bool = True,
        urgent: bool = False,
        to: str | None = None,
        routine: bool = False,
    ) -> dict[str, dict[str, Any]]:
        self.done.append(f"send to {to}" + (" (urgent)" if urgent else ""))
        return {"n2": {"ok": not self.lacks, "error": "n2 full"}}

    def takeover(
        self, vip: VipService, previous_master: str | None = None, fresh: bool = False
    ) -> None:
        self.done.append("serve again")


@pytest.fixture
def local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """This node's own rank is recorded; nothing moved before; no demotion here."""
    monkeypatch.setattr(replication, "RUN_DIR", tmp_path)
    monkeypatch.setattr(move, "moved", lambda services: {})
    monkeypatch.setattr(move, "_demoted", lambda services: False)

    def prefer(services: Moving, vip: VipService, to: str, handing: bool = False) -> None:
        services.done.append(f"here: {'hand' if handing else 'rank'} {vip.name} for {to}")
        services.held = to == "n1"

    monkeypatch.setattr(move, "prefer", prefer)


def test_a_move_seals_before_the_holder_falls_behind(local: None) -> None:
    services = Moving()
    move.move(services, "vip1", "n2", lambda message: None)
    first = services.done[:3]  # at once, in any order: the others, and n2 (a CARP tie)
    assert sorted(first) == ["n2: rank vip1 for n2", "n3: rank vip1 for n2", "n4: rank vip1 for n2"]
    assert services.done[3:] == [
        "send to n2 (urgent)", "record", "move", "send to n2 (urgent)", "here: hand vip1 for n2",
        "here: rank vip1 for n2",
    ]  # fmt: skip


def test_under_vrrp_the_chosen_node_is_ranked_after_the_seal(local: None) -> None:
    services = Moving(replace(AGENT, protocol="vrrp3"))  # a tie is broken by the address
    move.move(services, "vip1", "n2", lambda message: None)
    assert services.done[2:] == [
        "send to n2 (urgent)", "record", "move", "send to n2 (urgent)", "n2: rank vip1 for n2",
        "here: hand vip1 for n2", "here: rank vip1 for n2",
    ]  # fmt: skip


def test_a_carrier_that_refuses_stops_the_move_before_anything_is_sealed(local: None) -> None:
    services = Moving(refuse="n3")
    with pytest.raises(ServiceError, match=r"^vip1: not moved: n3: ucarp: no$"):
        move.move(services, "vip1", "n2", lambda message: None)
    assert "record" not in services.done
    assert sorted(services.done[3:]) == ["n2: rank vip1 for n1", "n4: rank vip1 for n1"]


def test_a_holder_running_ucarp_refuses_before_anything_changes(
    local: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(host, "FREEBSD", False)
    services = Moving(CONFIG)  # no agent socket, not FreeBSD: ucarp
    with pytest.raises(ServiceError, match=r"^n1: its CARP daemon \(ucarp\) cannot change"):
        move.move(services, "vip1", "n2", lambda message: None)
    assert services.done == []


def test_a_chosen_node_without_the_last_writes_gets_nothing_and_it_is_served_here_again(
    local: None,
) -> None:
    services = Moving(lacks=True)
    with pytest.raises(ServiceError, match=r"^vip1: not moved: n2 lacks its last writes \(n2 f"):
        move.move(services, "vip1", "n2", lambda message: None)
    assert services.done[-1] == "serve again"
    assert "here: rank vip1 for n2" not in services.done
    assert sorted(services.done[7:10]) == [f"{n}: rank vip1 for n1" for n in ("n2", "n3", "n4")]


@pytest.mark.parametrize(
    ("vip", "node", "error"),
    [
        ("vip9", "n2", "VIP 'vip9': not carried by n1 (it carries: vip1, vip2)"),
        ("vip1", "nas", "NODE 'nas': not in the cluster: use one of n1, n2, n3, n4, n5"),
        ("vip1", "n5", "NODE 'n5' does not carry vip1: move it to one of n1, n2, n4, n3"),
        ("vip1", "n1", "vip1: already on n1: nothing to move"),
        ("vip2", "n2", "vip2: already on n2: nothing to move"),
        ("vip2", "n1", "vip2: held by n2: run `hafs move vip2 n1` there"),
    ],
)
def test_bad_input_is_one_line_and_a_usage_error(vip: str, node: str, error: str) -> None:
    with pytest.raises(HafsError) as caught:
        move.check(Moving(), vip, node)
    assert str(caught.value) == error
    assert caught.value.exit_code == 2
