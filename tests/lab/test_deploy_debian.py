"""The Linux deploy for real: into a debootstrap'ed Debian 12 tree through pyinfra's @chroot.

The example inventory's Linux node (ha-file-server-4) is deployed into the tree with
``zfs_package="zfs-fuse"`` (Debian main; zfsutils-linux needs contrib and DKMS) and
``hafs_start_services=False`` (nothing can run in a chroot); its peers answer pyinfra's facts
through the fake connector (their public replication keys). The first run must change the
tree, the second must change nothing.

Caches under /var/cache/hafs-test keep CI inside its time: the debootstrap tree as a tarball
keyed by suite, variant, mirror and package list (built on the first run), the downloaded
.debs and pip's cache (bind-mounted into the tree). Only /proc and those two caches are
mounted, and all are unmounted in ``finally``; the tree is deleted only when nothing under it
is mounted any more. Needs root and debootstrap; without them the test skips, or fails when
CI=true (a skip there would hide that it never ran).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pyinfra.api.config import Config
from pyinfra.api.connect import connect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.operations import run_ops
from pyinfra.api.state import State
from pyinfra.connectors.chroot import ChrootConnector
from pyinfra.connectors.fake import FakeConnector

from hafs.agentconf import render
from hafs.cluster import load, read_pyinfra_inventory
from hafs.deploy import node
from hafs.service import config as service_config
from tests.lab.conftest import skip_or_fail

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "inventory.py"
NODE = "ha-file-server-4"
CACHE = Path("/var/cache/hafs-test")
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# a real Debian node boots systemd: the deploy enables units with systemctl
INCLUDE = ("systemd-sysv",)
# invoke-rc.d asks this before starting a service from a package's scripts: never in a chroot
POLICY_RC_D = "#!/bin/sh\nexit 101\n"
# pip in the tree trusts what the host trusts (a TLS-inspecting proxy's CA may be there);
# every variable naming a bundle points there (requests prefers REQUESTS_CA_BUNDLE to --cert)
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TREE_CA = Path("/etc/hafs-test/host-ca.crt")


def unusable() -> str | None:
    if sys.platform != "linux":
        return "the Debian deploy test needs Linux"
    if os.geteuid() != 0:
        return "the Debian deploy test needs root (chroot, mount)"
    for tool in ("debootstrap", "chroot", "mount", "umount", "tar"):
        if shutil.which(tool) is None:
            return f"the Debian deploy test needs {tool} (apt-get install debootstrap)"
    return None


def require_chroot() -> None:
    reason = unusable()
    if reason is None:
        return
    skip_or_fail(reason)


def base_tarball() -> tuple[Path, float]:
    """The cached debootstrap tree (built now if missing) and the seconds building took."""
    key = json.dumps([SUITE, VARIANT, MIRROR, sorted(INCLUDE)]).encode()
    tarball = CACHE / f"debian-{SUITE}-{hashlib.sha256(key).hexdigest()[:16]}.tar"
    if tarball.is_file():
        return tarball, 0.0
    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    build = Path(tempfile.mkdtemp(prefix="debootstrap-", dir=CACHE))
    try:
        subprocess.run(
            [
                "debootstrap",
                f"--variant={VARIANT}",
                f"--include={','.join(INCLUDE)}",
                SUITE,
                str(build / "root"),
                MIRROR,
            ],
            check=True,
            capture_output=True,
        )
        policy = build / "root" / "usr/sbin/policy-rc.d"
        policy.write_text(POLICY_RC_D)
        policy.chmod(0o755)
        partial = tarball.with_suffix(".partial")
        subprocess.run(
            ["tar", "-C", str(build / "root"), "--numeric-owner", "-cf", str(partial), "."],
            check=True,
        )
        partial.rename(tarball)
    finally:
        assert not mounts_under(build), f"debootstrap left mounts under {build}"
        shutil.rmtree(build)
    return tarball, time.monotonic() - start


def mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def processes_in(root: Path) -> list[int]:
    """PIDs whose root directory is the tree: anything the deploy left running in it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root") == str(root):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@contextmanager
def debian_tree() -> Iterator[Path]:
    """A fresh copy of the cached tree with /proc and the caches mounted; all removed after."""
    tarball, _ = base_tarball()
    root = Path(tempfile.mkdtemp(prefix="hafs-debian-", dir="/var/tmp")).resolve()
    mounted: list[Path] = []
    try:
        subprocess.run(
            ["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tarball)], check=True
        )
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        if HOST_CA.is_file():  # apt's ca-certificates rewrites the tree's own bundle
            (root / TREE_CA.relative_to("/")).parent.mkdir(parents=True)
            shutil.copy(HOST_CA, root / TREE_CA.relative_to("/"))
        binds = [
            (["-t", "proc", "proc"], root / "proc"),
            (["--bind", str(CACHE / "apt-archives")], root / "var/cache/apt/archives"),
            (["--bind", str(CACHE / "pip")], root / "root/.cache/pip"),
        ]
        for args, target in binds:
            if args[0] == "--bind":
                Path(args[1]).mkdir(parents=True, exist_ok=True)
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", *args, str(target)], check=True)
            mounted.append(target)
        yield root
    finally:
        left = processes_in(root)
        for pid in left:
            os.kill(pid, signal.SIGTERM)
        for target in reversed(mounted):
            if subprocess.run(["umount", str(target)], check=False).returncode:
                subprocess.run(["umount", "--lazy", str(target)], check=False)
        still = mounts_under(root)
        if not still:
            shutil.rmtree(root)
        assert not still, f"still mounted, {root} kept: {still}"
        assert not left, f"processes left running in the tree (stopped): {left}"


def deploy(root: Path) -> tuple[list[str], float]:
    """One real run on the tree: the names of the operations that changed it, the seconds."""
    inventory = read_pyinfra_inventory(INVENTORY)  # pyinfra's loader, no monkey-patching
    for host in inventory:
        if host.name == NODE:
            host.connector_cls = ChrootConnector
            host.data.chroot_directory = str(root)
            host.data.zfs_package = "zfs-fuse"
            host.data.hafs_start_services = False
        else:
            host.connector_cls = FakeConnector
            host.data.fake_delay = 0
            host.data.fake_delay_jitter = 0
            host.data.fake_responses = {
                "replication_key.pub": f"ssh-ed25519 AAAAC3Nz{host.name[-1]} x@{host.name}"
            }
    state = State(inventory, Config())  # type: ignore[no-untyped-call]
    state.cwd = str(REPO)
    start = time.monotonic()
    connect_all(state)
    target = state.inventory.get_host(NODE)
    add_deploy(state, node, host=[target])
    run_ops(state)
    elapsed = time.monotonic() - start
    assert not state.failed_hosts, "the deploy failed: see the log above"
    changed = []
    for op_hash in state.get_op_order():  # type: ignore[no-untyped-call]
        meta = state.get_op_data_for_host(target, op_hash).operation_meta
        assert meta.did_succeed()
        if meta.did_change():
            changed.append(", ".join(state.get_op_meta(op_hash).names))
    return changed, elapsed


def chroot(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True, check=False)


def settings(unit: Path) -> list[str]:
    """A unit file's setting lines (no comments, no blank lines)."""
    lines = [line.strip() for line in unit.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def check_unit_layout(root: Path) -> None:
    """A deploy reloads the agent (ExecReload re-executes it in place); /run/hafs is
    tmpfiles.d's, owned by no unit, so no unit's stop wipes it (and systemd-tmpfiles creates
    it 0700 from the file as installed)."""
    agent = settings(root / "etc/systemd/system/hafs-agent.service")
    reload = "ExecReload=/opt/hafs/bin/hafs agent --config /etc/hafs/agent.toml --reload"
    assert reload in agent
    service = settings(root / "etc/systemd/system/hafs-service.service")
    assert "ExecReload=/bin/kill -HUP $MAINPID" in service
    for watched in (agent, service):  # a stopped daemon is restarted (hafs.systemd feeds it)
        assert [line for line in watched if line.startswith("WatchdogSec=")], watched
        assert [line for line in watched if line.startswith("TimeoutAbortSec=")], watched
    for unit in ("hafs-agent.service", "hafs-service.service"):
        lines = settings(root / "etc/systemd/system" / unit)
        assert not [line for line in lines if line.startswith("RuntimeDirectory")], unit
    tmpfiles = root / "etc/tmpfiles.d/hafs.conf"
    assert "d /run/hafs 0700 root root -" in settings(tmpfiles)
    created = chroot(root, "systemd-tmpfiles", "--create", "/etc/tmpfiles.d/hafs.conf")
    assert created.returncode == 0, created.stderr
    assert (root / "run/hafs").stat().st_mode & 0o777 == 0o700
    help_text = chroot(root, "/opt/hafs/bin/hafs", "agent", "--help").stdout
    assert "--reload" in help_text  # the ExecReload command exists in the deployed hafs


@pytest.mark.timeout(1800)
def test_debian_node_deploys_then_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    require_chroot()
    if HOST_CA.is_file():  # the chroot's commands inherit the environment
        for variable in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
            monkeypatch.setenv(variable, str(TREE_CA))
    _, debootstrap_seconds = base_tarball()
    cluster = load(INVENTORY)
    with debian_tree() as root:
        first, first_seconds = deploy(root)
        second, second_seconds = deploy(root)
        print(
            f"\nhafs Debian deploy: debootstrap {debootstrap_seconds:.0f}s (0 = cached), "
            f"first run {first_seconds:.0f}s ({len(first)} changed), "
            f"second run {second_seconds:.0f}s ({len(second)} changed); changed first: "
            + "; ".join(first)
        )
        assert second == []
        changed = {name.rsplit(" | ", 1)[-1] for name in first}  # without the deploy names
        assert {"packages", "/etc/hafs/agent.toml", "hafs installed"} <= changed, first

        config = root / "etc/hafs/agent.toml"
        assert config.stat().st_mode & 0o777 == 0o600
        assert config.read_text() == render(cluster, cluster.node(NODE))
        wants = root / "etc/systemd/system/multi-user.target.wants/hafs-agent.service"
        assert os.readlink(wants) == "/etc/systemd/system/hafs-agent.service"
        check_unit_layout(root)
        assert chroot(root, "systemctl", "is-enabled", "smbd.service").stdout.strip() != "enabled"

        version = chroot(root, "/usr/local/bin/hafs", "--version")
        assert version.returncode == 0, version.stderr
        assert version.stdout.startswith("hafs ")

        cluster_json = root / "etc/hafs/cluster.json"
        assert cluster_json.stat().st_mode & 0o777 == 0o600
        assert cluster_json.read_text() == service_config.render(cluster, cluster.node(NODE))
        assert (root / "etc/hafs/replication_key").stat().st_mode & 0o777 == 0o600
        keys = (root / "root/.ssh/authorized_keys").read_text().splitlines()
        assert [k.rsplit("@", 1)[1] for k in keys] == [n.name for n in cluster.nodes[:3]]
        assert all(k.startswith("restrict,command=") for k in keys)
