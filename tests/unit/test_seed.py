"""The seed deployment round trip: examples/seed/inventory.py renders the seed's files."""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import pytest

from hafs import agentconf
from hafs.check import check
from hafs.cluster import Cluster, load
from hafs.render import render
from tests.unit.conftest import DATA, REPO

SEED = DATA / "seed"
FREEBSD = ["ha-file-server-1", "ha-file-server-2", "ha-file-server-3"]


@pytest.fixture(scope="module")
def seed() -> Cluster:
    return load(REPO / "examples" / "seed" / "inventory.py")


def assignments(text: str) -> dict[str, str]:
    """key=value lines of an rc.conf-style file, comments aside, quotes stripped."""
    result = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert key not in result, f"{key} set twice"
            result[key] = value.strip('"')
    return result


def test_seed_copy_matches_shared() -> None:
    shared = REPO.parent / "shared" / "seed"
    if not shared.is_dir():
        pytest.skip("no ../shared/seed beside this checkout")
    for path in SEED.rglob("*"):
        if path.is_file():
            assert path.read_bytes() == (shared / path.relative_to(SEED)).read_bytes(), path


@pytest.mark.parametrize("node", FREEBSD)
def test_rc_conf_reproduces_the_seed(seed: Cluster, node: str) -> None:
    expected = assignments((SEED / node / "rc.conf").read_text())
    assert assignments(render(seed, node, "rc.conf")) == expected


@pytest.mark.parametrize("node", FREEBSD)
def test_loader_conf_reproduces_the_seed(seed: Cluster, node: str) -> None:
    expected = assignments((SEED / node / "loader.conf").read_text())
    assert assignments(render(seed, node, "loader.conf")) == expected


def ucarp_commands() -> list[dict[str, str]]:
    """The flags of each ucarp line of the seed's start-ucarp.sh, $INTERFACE expanded."""
    text = (SEED / "ha-file-server-4" / "start-ucarp.sh").read_text()
    commands = []
    for line in text.splitlines():
        if line.startswith("ucarp "):
            words = shlex.split(line.replace("$INTERFACE", "ens36"))[1:]
            flags: dict[str, str] = {}
            while words:
                flag = words.pop(0)
                takes_value = words and not words[0].startswith("-")
                flags[flag] = words.pop(0) if takes_value else ""
            commands.append(flags)
    return commands


def test_agent_toml_covers_start_ucarp(seed: Cluster) -> None:
    text = render(seed, "ha-file-server-4", "agent.toml")
    config = agentconf.parse(tomllib.loads(text), Path("agent.toml"))
    commands = ucarp_commands()
    assert len(commands) == 4
    for flags in commands:
        assert config.interface == flags["--interface"]
        assert str(config.srcip) == flags["-s"]
        assert config.passphrase == flags["--pass"]
        assert config.preempt is ("--preempt" in flags)
    by_vhid = {e.vhid: e for e in config.vhids}
    assert sorted(by_vhid) == sorted(int(f["--vhid"]) for f in commands)
    for flags in commands:
        entry = by_vhid[int(flags["--vhid"])]
        assert entry.advskew == int(flags["--advskew"])
        assert [str(a) for a in entry.addresses] == [flags["--addr"]]
        assert entry.advbase == 1


def test_check_reports_the_seed_flaws(seed: Cluster) -> None:
    errors = [str(p) for p in check(seed) if p.level == "error"]
    ties = [e for e in errors if "no tie-break" in e]
    assert len(ties) == 2
    assert "vhid 2" in ties[0] and "ha-file-server-1 and ha-file-server-3" in ties[0]
    assert "vhid 3" in ties[1] and "ha-file-server-2 and ha-file-server-4" in ties[1]
    preempt = [e for e in errors if "net.inet.carp.preempt=1" in e]
    assert sorted(e.split(":")[1].strip() for e in preempt) == [f"node {n}" for n in FREEBSD]


def test_example_inventory_is_clean() -> None:
    cluster = load(REPO / "inventory.py")
    assert [str(p) for p in check(cluster)] == []
    assert [n.os for n in cluster.nodes] == ["freebsd"] * 3 + ["linux"]
