"""Fixtures for the root-only lab tests: namespaces this run creates, removed even on failure.

Without root or a working ``ip netns`` the lab tests skip, except when CI=true: there a skip
would hide that they never ran, so they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hafs.lab.netns import Lab, LabError, Netns, Port, new_prefix

REPO = Path(__file__).resolve().parents[2]


def _lab_unusable() -> str | None:
    """Why lab tests cannot run here, or None if they can (probes with a throwaway namespace)."""
    if os.geteuid() != 0:
        return "lab tests need root"
    if shutil.which("ip") is None:
        return "lab tests need iproute2's ip command"
    try:
        Lab(new_prefix()).close()
    except LabError as exc:
        return f"network namespaces are unusable: {exc}"
    return None


def skip_or_fail(reason: str | None) -> None:
    """Skip a lab test that cannot run here (``reason``); under CI=true fail instead."""
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: lab tests must run, not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def require_lab() -> None:
    """Skip when the lab cannot run; fail instead when CI=true."""
    skip_or_fail(_lab_unusable())


@dataclass(frozen=True)
class Pair:
    """Two nodes on one bridge: ``a`` (10.77.0.1/24) and ``b`` (10.77.0.2/24), both on eth0."""

    lab: Lab
    a: Netns
    b: Netns
    port_a: Port
    port_b: Port


@pytest.fixture
def pair(require_lab: None) -> Iterator[Pair]:
    with Lab(new_prefix()) as lab:
        a = lab.add_node("a")
        b = lab.add_node("b")
        port_a = lab.connect(a, "eth0", "10.77.0.1/24")
        port_b = lab.connect(b, "eth0", "10.77.0.2/24")
        yield Pair(lab, a, b, port_a, port_b)


def vrrp3_inventory(into: Path, interval: float = 0.1) -> str:
    """The example inventory with ``protocol = "vrrp3"`` at ``interval`` s (FreeBSD nodes
    said to be 14.1)."""
    shutil.copy(REPO / "inventory.py", into / "inventory.py")
    with (into / "inventory.py").open("a") as inventory:
        inventory.write("\nfor _name, _data in freebsd:\n    _data['freebsd_version'] = '14.1'\n")
    shutil.copytree(REPO / "group_data", into / "group_data")
    with (into / "group_data" / "all.py").open("a") as settings:
        settings.write(f'protocol = "vrrp3"\nvrrp_interval = {interval:g}\n')
    return str(into / "inventory.py")
