"""`hafs drain`: a VIP moves only once every live backup has its last writes."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from hafs.service import demotion, drain, membership, replication
from hafs.service.config import ServiceConfig, VipService
from hafs.service.node import NodeServices
from hafs.service.runtime import ServiceError

VIPS = tuple(
    VipService(i, f"vip{i}", IPv4Address(f"10.0.0.10{i}"), "n1", ("n1", "n2", "n3"), ())
    for i in (1, 2)
)
CONFIG = ServiceConfig(
    node="n1", pool="tank", replication_interval=10, vips=VIPS, users={},
    peers={"n2": IPv4Address("10.0.0.2"), "n3": IPv4Address("10.0.0.3")},
)  # fmt: skip


class Holds:
    def __init__(self) -> None:
        self.held: dict[str, int] = {}

    def holds(self) -> dict[str, int]:
        return dict(self.held)

    def hold(self, name: str, value: int, cause: str = "") -> None:
        if value:
            self.held[name] = value
        else:
            self.held.pop(name, None)


class Draining(NodeServices):
    """Holds both VIPs; n3's receive of vip2 fails (``failing``); what it does, in order."""

    def __init__(self, failing: bool) -> None:
        super().__init__(CONFIG)
        self.failing, self.done = failing, list[str]()

    def holds(self, vip: VipService) -> bool:
        return True

    def record_connections(self, vip: VipService) -> None:
        self.done.append(f"record {vip.name}")

    def stepdown(self, vip: VipService, action: str = "step-down") -> None:
        self.done.append(f"{action} {vip.name}")

    def replicate(
        self,
        vip: VipService,
        record_clients: bool = True,
        urgent: bool = False,
        to: str | None = None,
        routine: bool = False,
    ) -> dict[str, dict[str, Any]]:
        assert urgent and not record_clients  # the clients wait; recorded before the step-down
        self.done.append(f"send {vip.name}" + (f" to {to}" if to else ""))
        bad = self.failing and vip.name == "vip2"
        return {
            "n2": {"ok": True},
            "n3": {"ok": False, "error": "n3 unreachable"} if bad else {"ok": True},
        }

    def takeover(
        self, vip: VipService, previous_master: str | None = None, fresh: bool = False
    ) -> None:
        self.done.append(f"serve {vip.name} again")


@pytest.fixture
def holds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Holds:
    found = Holds()
    monkeypatch.setattr(replication, "RUN_DIR", tmp_path)
    monkeypatch.setattr(demotion, "for_node", lambda socket: found)
    return found


def test_every_vip_is_sealed_and_sent_before_the_node_holds_back(
    holds: Holds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(membership, "read_verdict", lambda now=None: None)
    services = Draining(failing=False)
    assert drain.drain(services, lambda message: None) == ["vip1", "vip2"]
    assert services.done == [
        "record vip1", "drain vip1", "send vip1", "record vip2", "drain vip2", "send vip2"
    ]  # fmt: skip
    assert holds.held == {"drain": 240}
    drain.undrain(services)
    assert holds.held == {"resync": 240}  # back as from a reboot: resync, then the handback


def test_a_live_backup_without_the_last_writes_stops_the_drain(
    holds: Holds, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = {"members": ["n1", "n2", "n3"]}
    monkeypatch.setattr(membership, "read_verdict", lambda now=None: verdict)
    services = Draining(failing=True)
    with pytest.raises(ServiceError, match=r"^vip2: not drained: n3 \(n3 unreachable\) lacks"):
        drain.drain(services, lambda message: None)
    assert services.done[-2:] == ["serve vip1 again", "serve vip2 again"]
    assert holds.held == {}  # nobody is told to take over


def test_a_dead_backup_does_not_stop_the_drain(
    holds: Holds, monkeypatch: pytest.MonkeyPatch
) -> None:
    verdict = {"members": ["n1", "n2"]}  # n3 is not heard: it takes nothing over
    monkeypatch.setattr(membership, "read_verdict", lambda now=None: verdict)
    assert drain.drain(Draining(failing=True), lambda message: None) == ["vip1", "vip2"]
    assert holds.held == {"drain": 240}
