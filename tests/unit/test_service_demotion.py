"""FreeBSD's demotion: named holds over the kernel's one additive counter."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from hafs.service import demotion, host
from hafs.service.demotion import DemotionError, SysctlDemotion


@pytest.fixture
def sysctl(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The sysctl writes, with the kernel's counter they add up to (never below 0 here)."""
    writes: list[str] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert argv[0] == "sysctl"
        writes.append(argv[1])
        failing = argv[1].endswith("=99")
        return subprocess.CompletedProcess(argv, 1 if failing else 0, "", "sysctl: denied")

    monkeypatch.setattr(subprocess, "run", run)  # (the demotion module's sysctl call)
    return writes


def test_each_change_adds_the_difference(tmp_path: Path, sysctl: list[str]) -> None:
    holds = SysctlDemotion(tmp_path / "run" / "demotion.json")
    assert holds.holds() == {}  # after boot: nothing recorded
    holds.hold("resync", 240)
    holds.hold("smb-vip1", 240)
    holds.hold("resync", 0)
    holds.hold("resync", 0)  # released already: no write
    holds.hold("smb-vip1", 100)
    assert sysctl == [
        "net.inet.carp.demotion=240",
        "net.inet.carp.demotion=240",
        "net.inet.carp.demotion=-240",
        "net.inet.carp.demotion=-140",
    ]
    assert holds.holds() == {"smb-vip1": 100}
    assert SysctlDemotion(tmp_path / "run" / "demotion.json").holds() == {"smb-vip1": 100}


def test_a_failed_write_changes_nothing_recorded(tmp_path: Path, sysctl: list[str]) -> None:
    holds = SysctlDemotion(tmp_path / "demotion.json")
    with pytest.raises(DemotionError, match=r"net.inet.carp.demotion=99: sysctl: denied"):
        holds.hold("resync", 99)
    assert holds.holds() == {}


def test_a_node_gets_the_demotion_of_its_carp_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(demotion.for_node("/run/hafs/agent.sock"), demotion.AgentDemotion)
    monkeypatch.setattr(host, "FREEBSD", True)
    assert isinstance(demotion.for_node(None), SysctlDemotion)
    monkeypatch.setattr(host, "FREEBSD", False)
    assert demotion.for_node(None) is None  # Linux without the agent (stock ucarp): none
