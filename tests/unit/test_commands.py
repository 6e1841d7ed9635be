"""`hafs check` and `hafs render` as a user runs them: output, JSON and exit codes."""

from __future__ import annotations

import json

import pytest

from hafs.cli import main
from tests.unit.conftest import REPO

SEED = str(REPO / "examples" / "seed" / "inventory.py")
EXAMPLE = str(REPO / "inventory.py")


def test_check_seed_exits_1_with_one_line_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-i", SEED]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 9 and all(
        line.startswith("error: ") for line in out.splitlines()
    )
    assert "9 error(s), 0 warning(s)" in err


def test_check_example_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-i", EXAMPLE]) == 0
    assert capsys.readouterr().out == ""


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-i", SEED, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report["problems"]) == 9
    assert set(report["problems"][0]) == {"level", "subject", "message", "fix"}


def test_check_unreadable_inventory_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-i", "/nonexistent/inventory.py"]) == 2
    assert capsys.readouterr().err.startswith("hafs: error: inventory '/nonexistent/inventory.py'")


def test_render_prints_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-i", SEED, "ha-file-server-1", "loader.conf"]) == 0
    assert capsys.readouterr().out == 'carp_load="YES"\nvfs.maxbcachebuf=1048576\n'


def test_render_devd_calls_hafs_event(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-i", EXAMPLE, "ha-file-server-2", "devd.conf"]) == 0
    out = capsys.readouterr().out
    assert 'match "system" "CARP";' in out
    assert 'action "/usr/local/bin/hafs event $subsystem $type";' in out
    # losing carrier raises the resync hold: the node cannot preempt with stale data on link up
    link = out[out.index('"IFNET"') :]
    assert 'match "type" "LINK_DOWN";' in link and 'match "subsystem" "em0";' in link
    assert 'action "/usr/local/bin/hafs service hold resync 240";' in link


def test_render_sysctl_sets_preempt_for_failback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-i", EXAMPLE, "ha-file-server-1", "sysctl.conf"]) == 0
    assert capsys.readouterr().out == "net.inet.carp.preempt=1\n"
    assert main(["render", "-i", SEED, "ha-file-server-1", "sysctl.conf"]) == 0
    assert capsys.readouterr().out == ""


def test_render_wrong_os_or_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-i", EXAMPLE, "ha-file-server-4", "rc.conf"]) == 2
    assert (
        "rc.conf is for freebsd nodes; node ha-file-server-4 runs linux" in capsys.readouterr().err
    )
    assert main(["render", "-i", EXAMPLE, "nope", "rc.conf"]) == 2
    assert "unknown node 'nope'" in capsys.readouterr().err


def test_render_unknown_file_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["render", "-i", EXAMPLE, "ha-file-server-1", "fstab"])
    assert info.value.code == 2
