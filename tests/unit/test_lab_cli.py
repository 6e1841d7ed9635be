"""`hafs lab status` as text (nodes, VIPs, kept-aside copies of diverged data); a node's keys."""

from __future__ import annotations

import argparse
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hafs.lab import boot
from hafs.lab.cli import format_status
from hafs.lab.cluster import ClusterLab
from hafs.lab.netns import LabError
from hafs.lab.supervise import HAFS_FOR_PEERS
from tests.unit.conftest import MakeCluster


def node(name: str, vips: list[str], diverged: list[str]) -> dict[str, Any]:
    return {
        "name": name, "os": "freebsd", "carp": "hafs", "interface": "em0",
        "address": "172.21.0.201", "link": "up", "daemons": {"anchor": True, "agent": True},
        "vips": vips, "diverged": diverged,
    }  # fmt: skip


def test_kept_aside_copies_are_named_with_their_node() -> None:
    status = {
        "name": "hafs", "inventory": "inventory.py", "client": {"address": "172.21.15.254"},
        "nodes": [node("n1", ["vip1"], []), node("n2", [], ["vip1-diverged-20261205T1815Z"])],
        "vips": [{"vhid": 1, "vip": "172.21.0.211", "name": "vip1", "home": "n1",
                  "holders": ["n1"]}],
    }  # fmt: skip

    text = format_status(status)

    assert text.splitlines()[-1] == (
        "KEPT ASIDE on n2: vip1-diverged-20261205T1815Z (diverged data found only there; "
        "`hafs service diverged show vip1-diverged-20261205T1815Z` on that node)"
    )
    assert "KEPT ASIDE on n1" not in text


def test_a_nodes_peer_keys_are_restricted_like_a_deployed_nodes(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster()
    lab = ClusterLab("t", root=tmp_path)
    lab.dir.mkdir(mode=0o700)
    n1 = cluster.node("n1")
    assert n1.address is not None
    lab._write_etc(cluster, n1, n1.address, "hafs")

    etc = lab.dir / "n1" / "etc-upper" / "hafs"
    lines = (etc / "authorized_keys").read_text().splitlines()
    public = (lab.dir / "replication_key.pub").read_text().strip()
    hafs = shlex.join(HAFS_FOR_PEERS)  # this checkout, also for sshd (no environment)
    assert lines == [
        f'restrict,command="{hafs} service ssh-command --peer n{i}",from="10.0.0.{i}" {public}'
        for i in (2, 3, 4)
    ]
    for secret in ("replication_key", "ssh_host_ed25519_key", "cluster.json"):
        assert stat.S_IMODE((etc / secret).stat().st_mode) == 0o600, secret


def test_lab_up_names_each_missing_program_and_its_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without sshd the lab came up "up" and replication failed silently: now `lab up`
    stops first, in one line, before it creates anything."""
    absent = {"ucarp"}
    monkeypatch.setattr(
        shutil, "which", lambda name, path=None: None if name in absent else f"/x/{name}"
    )
    boot.check_programs(None)  # ucarp only for --foreign ucarp
    absent.add("sshd")
    with pytest.raises(LabError, match=r"^the lab needs sshd, ucarp, not installed here: "
                       r"apt-get install openssh-server ucarp$"):  # fmt: skip
        boot.check_programs("ucarp")
    lab = ClusterLab(f"t{tmp_path.name[-6:]}")
    with pytest.raises(LabError, match="the lab needs sshd"):
        lab.up("no-such-inventory.py", "ucarp")
    assert not lab.exists


def test_lab_exec_finds_this_hafs_in_a_node_from_a_venv(monkeypatch: pytest.MonkeyPatch) -> None:
    """sudo's PATH lacks a venv's bin: `hafs lab exec NODE -- hafs status` failed with
    "nsenter: failed to execute hafs"; the node's PATH now starts with this hafs's bin."""
    from hafs.lab import cli

    class Lab:
        def enter(self, node: str) -> list[str]:
            return ["nsenter", f"--{node}"]

    ran: list[tuple[list[str], dict[str, str]]] = []

    def run(argv: list[str], check: bool, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        ran.append((argv, env))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(cli, "_lab", lambda args: Lab())
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin")
    args = argparse.Namespace(node="n1", cmd=["--", "hafs", "status"])
    assert cli.cmd_exec(args) == 0
    [(argv, env)] = ran
    assert argv == ["nsenter", "--n1", "hafs", "status"]
    assert env["PATH"] == f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin"
