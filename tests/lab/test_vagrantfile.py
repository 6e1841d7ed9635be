"""The Vagrantfile is valid and takes its machines from the inventory (``vagrant validate``).

Runs Debian's ``vagrant`` with ``--ignore-provider`` (no VirtualBox needed) and with its home
and machine state in a temporary directory, so nothing is written to the repository or
``~/.vagrant.d``. Without vagrant the tests skip, or fail when CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hafs.cluster import load
from hafs.deploy.vagrant import BOXES, ZFS_FILE, inventory, machines, main
from hafs.errors import HafsError
from tests.lab.conftest import skip_or_fail

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def vagrant_validate(
    tmp_path: Path, inventory: Path, python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        reason = "vagrant not installed (apt-get install vagrant)"
        skip_or_fail(reason)
    env = {
        **os.environ,
        "HAFS_PYTHON": python,
        "HAFS_INVENTORY": str(inventory),
        "VAGRANT_CWD": str(REPO),
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot-vagrant"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
    }
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.mark.timeout(300)
def test_vagrantfile_validates_with_every_node(tmp_path: Path) -> None:
    result = vagrant_validate(tmp_path, REPO / "inventory.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Vagrantfile validated successfully" in result.stdout
    for node in load(REPO / "inventory.py").nodes:
        assert f"==> {node.name}:" in result.stdout
    assert not (REPO / ".vagrant").exists()


@pytest.mark.timeout(300)
def test_vagrantfile_refuses_an_inventory_without_addresses(tmp_path: Path) -> None:
    result = vagrant_validate(tmp_path, REPO / "examples" / "seed" / "inventory.py")
    assert result.returncode != 0
    assert "host ha-file-server-1: address: a VM needs the node's fixed address" in result.stderr
    assert "hafs: no VMs" in result.stderr


@pytest.mark.timeout(300)
def test_vagrantfile_says_in_one_line_that_its_python_lacks_hafs(tmp_path: Path) -> None:
    python = tmp_path / "python-without-hafs"
    python.write_text("#!/bin/sh\necho 'No module named hafs' >&2\nexit 1\n")
    python.chmod(0o755)
    result = vagrant_validate(tmp_path, REPO / "inventory.py", str(python))
    assert result.returncode != 0
    assert f"hafs: no VMs: {python} cannot import hafs: pip install 'hafs[deploy]'" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and ".rb:" not in result.stderr, result.stderr


def test_machines_are_the_inventory_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-i", str(REPO / "inventory.py")]) == 0
    printed = json.loads(capsys.readouterr().out)
    cluster = load(REPO / "inventory.py")
    assert printed == machines(cluster)
    assert [(m["name"], m["address"], m["netmask"]) for m in printed] == [
        (n.name, str(n.address.ip), "255.255.240.0") for n in cluster.nodes if n.address
    ]
    assert {m["box"] for m in printed} == {b.name for b in BOXES.values()}


def test_inventory_is_the_cluster_reached_through_vagrant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pyinfra's inventory function: the inventory's hosts, VM connections, lab settings."""
    from pyinfra.connectors.vagrant import VagrantInventoryConnector

    cluster = load(REPO / "inventory.py")
    running = [
        (f"@vagrant/{n.name}", {"ssh_hostname": "127.0.0.1", "ssh_port": 2200 + i}, ["@vagrant"])
        for i, n in enumerate(cluster.nodes)
    ]
    monkeypatch.setattr(VagrantInventoryConnector, "make_names_data", lambda: iter(running))
    monkeypatch.setenv("HAFS_INVENTORY", str(REPO / "inventory.py"))
    hosts, group = inventory()["hafs"]
    assert group == {}
    assert [name for name, _ in hosts] == [n.name for n in cluster.nodes]
    for index, (name, data) in enumerate(hosts):
        node = cluster.node(name)
        assert data["ssh_port"] == 2200 + index
        assert data["interface"] == ("em1" if node.os == "freebsd" else "eth1")  # VirtualBox
        assert data["gateway"] is None
        assert data["zfs_devices"] == [ZFS_FILE]
        assert data["carp_pass"] == cluster.carp_pass
        home = [vip for vip in cluster.vips if vip.home == name]
        assert [vip["address"] for vip in data["vips"]] == [str(vip.address) for vip in home]
        assert data["hafs_inventory"] == str(REPO / "inventory.py")
        assert data.get("zfs_package") == ("zfs-fuse" if node.os == "linux" else None)

    monkeypatch.setenv("HAFS_VAGRANT_PROVIDER", "libvirt")  # virtio NICs
    hosts, _ = inventory()["hafs"]
    assert {cluster.node(n).os: d["interface"] for n, d in hosts} == {
        "freebsd": "vtnet1", "linux": "eth1"
    }  # fmt: skip
    monkeypatch.setenv("HAFS_VAGRANT_PROVIDER", "parallels")
    with pytest.raises(HafsError, match=r"^HAFS_VAGRANT_PROVIDER=parallels: no NIC name known"):
        inventory()

    monkeypatch.delenv("HAFS_VAGRANT_PROVIDER")
    monkeypatch.setattr(VagrantInventoryConnector, "make_names_data", lambda: iter(running[1:]))
    with pytest.raises(HafsError, match="host ha-file-server-1: no running VM of that name"):
        inventory()
