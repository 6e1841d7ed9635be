"""Fixtures for unit tests: write small inventories and load them with the real loader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from hafs.cluster import Cluster, load

# No time limit per generated example: hypothesis's default (200 ms) failed a decode test that
# took 1.7 s on a loaded machine. What these tests check is behaviour; timings live in bench/.
settings.register_profile("hafs", deadline=None)
settings.load_profile("hafs")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"

MakeCluster = Callable[..., Cluster]


def write_inventory(
    directory: Path, groups: dict[str, list[tuple[str, dict[str, Any]]]], **all_data: Any
) -> Path:
    """An inventory.py with ``groups`` and a group_data/all.py with ``all_data``."""
    directory.mkdir(parents=True, exist_ok=True)
    inventory = directory / "inventory.py"
    inventory.write_text("".join(f"{name} = {hosts!r}\n" for name, hosts in groups.items()))
    (directory / "group_data").mkdir(exist_ok=True)
    (directory / "group_data" / "all.py").write_text(
        "".join(f"{key} = {value!r}\n" for key, value in all_data.items())
    )
    return inventory


def four_nodes(**overrides: Any) -> list[tuple[str, dict[str, Any]]]:
    """Four healthy nodes n1..n4 in 10.0.0.0/24, each home of one VIP (vhid = index)."""
    hosts = []
    for i in range(1, 5):
        data: dict[str, Any] = {
            "os": "freebsd" if i < 4 else "linux",
            "interface": "em0" if i < 4 else "ens36",
            "address": f"10.0.0.{i}/24",
            "vips": [{"vhid": i, "address": f"10.0.0.{100 + i}", "shares": ["data"]}],
        }
        data.update(overrides.get(f"n{i}", {}))
        hosts.append((f"n{i}", data))
    return hosts


@pytest.fixture
def make_cluster(tmp_path: Path) -> MakeCluster:
    counter = iter(range(1000))

    def make(hosts: list[tuple[str, dict[str, Any]]] | None = None, **all_data: Any) -> Cluster:
        settings: dict[str, Any] = {"carp_pass": "secret", "smb_users": {"u": "pw"}}
        settings.update(all_data)
        path = write_inventory(
            tmp_path / f"inv{next(counter)}", {"nodes": hosts or four_nodes()}, **settings
        )
        return load(path)

    return make
