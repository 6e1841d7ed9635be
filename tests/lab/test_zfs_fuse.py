"""hafs.service.zfs and hafs.service.samba against real daemons (root, zfs-fuse, Samba).

Each node is one zfs-fuse daemon in its own mount namespace, the recipe the lab reuses:

1. An *anchor* ``unshare --mount --propagation private -- sh -c ANCHOR`` (inside the node's
   network namespace when it serves a VIP) puts private tmpfs mounts over ``/run`` (zfs-fuse's
   socket ``/run/zfs/zfs_socket`` and lock ``/run/lock/zfs``) and ``/var/lib/zfs`` (its
   ``zpool.cache``), drops its copies of other runs' ``/run/netns`` mounts so it never pins their
   namespaces, then sleeps. Nothing it mounts is visible outside, and when the last process in
   the namespace dies the kernel removes every mount in it, stale FUSE mounts included.
2. ``nsenter --mount=/proc/<anchor>/ns/mnt -- zfs-fuse --no-daemon --no-kstat-mount`` is the
   node's daemon; the same prefix before ``zfs``/``zpool`` talks to it (``Zfs(prefix)``). smbd
   needs the node's addresses too: ``nsenter --target=<anchor> --mount --net -- smbd ...``.
3. Stop: ``zpool export`` every pool, SIGTERM the daemon (it takes about 3 s to exit), kill the
   anchor.

Every child starts under ``setpriv --pdeathsig KILL``, so even a killed pytest leaves no daemon
or namespace behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from hafs.lab.netns import Netns, inside, new_prefix
from hafs.service import divergence, mounts, replication, space
from hafs.service.config import ServiceConfig, VipService
from hafs.service.node import NodeServices
from hafs.service.samba import (
    SambaDirs,
    SambaInstance,
    SambaShare,
    add_user_argv,
    render_smb_conf,
    start_argv,
    stop_argvs,
)
from hafs.service.zfs import Snapshot, Zfs, ZfsError
from tests.lab.conftest import Pair, skip_or_fail

pytestmark = pytest.mark.lab

ANCHOR = r"""
set -e
umount -R -l /run/netns 2>/dev/null || true
mount -t tmpfs -o mode=755,size=16m "$1-run" /run
mkdir /run/lock
mount -t tmpfs -o mode=755,size=1m "$1-lib" /var/lib/zfs
cp /etc/passwd /etc/group /run/
echo "$2:x:$3:$3::/nonexistent:/usr/sbin/nologin" >> /run/passwd
echo "$2:x:$3:" >> /run/group
mount --bind /run/passwd /etc/passwd
mount --bind /run/group /etc/group
echo ready
exec sleep infinity
"""
SMB_USER, SMB_UID, SMB_PASSWORD = "hafstest", "64123", "Corr3ct-horse"
POOL_SIZE = 256 << 20
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# Every child dies with this process (PR_SET_PDEATHSIG survives exec), even if pytest is killed.
DIE_WITH_US = ["setpriv", "--pdeathsig", "KILL", "--"]


def _missing(*tools: str) -> str | None:
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if not os.path.exists("/dev/fuse"):
        absent.append("/dev/fuse")
    if not os.path.isdir("/var/lib/zfs"):
        absent.append("/var/lib/zfs (created by the zfs-fuse package)")
    return f"lab test needs {', '.join(absent)}" if absent else None


@pytest.fixture(scope="module")
def require_zfs_fuse() -> None:
    if os.geteuid() != 0:
        skip_or_fail("lab tests need root")
    skip_or_fail(_missing("zfs-fuse", "zfs", "zpool", "unshare", "nsenter", "setpriv"))


@dataclass
class Node:
    """One zfs-fuse daemon in its own mount namespace, with one pool on a sparse file."""

    label: str
    workdir: Path
    anchor: subprocess.Popen[bytes]
    daemon: subprocess.Popen[bytes] | None = None

    @property
    def prefix(self) -> list[str]:
        return ["nsenter", f"--mount=/proc/{self.anchor.pid}/ns/mnt", "--"]

    @property
    def zfs(self) -> Zfs:
        return Zfs(self.prefix)

    @property
    def pool(self) -> str:
        return self.label

    @property
    def mountpoint(self) -> str:
        return f"/run/{self.label}"

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *argv], input=stdin, capture_output=True, text=True, check=False
        )

    def sh(self, script: str) -> str:
        proc = self.run("sh", "-c", script)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
        return proc.stdout

    def fuse_mounts(self) -> list[str]:
        return [
            line for line in self.sh("cat /proc/self/mounts").splitlines() if "fuse.zfs" in line
        ]

    def start_daemon(self) -> None:
        with open(self.workdir / f"{self.label}.log", "ab") as log:
            self.daemon = subprocess.Popen(
                [*DIE_WITH_US, *self.prefix, "zfs-fuse", "--no-daemon", "--no-kstat-mount"],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while self.run("zpool", "list", "-H").returncode != 0:
            assert self.daemon.poll() is None, f"zfs-fuse exited {self.daemon.returncode}"
            assert time.monotonic() < deadline, "zfs-fuse did not answer"
            time.sleep(0.01)

    def stop(self) -> None:
        """Export the pools, then SIGTERM the daemon (call :meth:`reap` afterwards)."""
        if self.daemon is not None and self.daemon.poll() is None:
            for pool in self.run("zpool", "list", "-H", "-o", "name").stdout.split():
                self.run("zpool", "export", pool)
            self.daemon.terminate()

    def reap(self) -> None:
        """Wait for the daemon, then kill the anchor: the namespace and its mounts go with it."""
        if self.daemon is not None:
            try:
                self.daemon.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        self.anchor.kill()
        self.anchor.communicate()


def start_node(label: str, workdir: Path, netns: Netns | None = None) -> Node:
    """Anchor a private mount namespace (in ``netns`` if given), start zfs-fuse, create a pool."""
    enter_net = [] if netns is None else ["nsenter", f"--net=/run/netns/{netns.name}", "--"]
    anchor = subprocess.Popen(
        [*DIE_WITH_US, *enter_net, "unshare", "--mount", "--propagation", "private", "--",
         "sh", "-c", ANCHOR, "anchor", label, SMB_USER, SMB_UID],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert anchor.stdout is not None and anchor.stderr is not None
    if anchor.stdout.readline() != b"ready\n":
        anchor.kill()
        pytest.fail(f"namespace anchor failed: {anchor.communicate()[1].decode().strip()}")
    node = Node(label, workdir, anchor)
    try:
        node.start_daemon()
        node.zfs.zpool_create_file(
            node.pool, str(workdir / f"{label}.img"), POOL_SIZE, node.mountpoint
        )
        node.zfs.create(f"{node.pool}/hafs")  # a full receive needs the parent
    except BaseException:
        node.stop()
        node.reap()
        raise
    return node


@contextlib.contextmanager
def running_nodes(names: Sequence[str], netns: Netns | None = None) -> Iterator[list[Node]]:
    """Nodes ``<prefix>-<name>``; on exit every daemon, namespace and file of the run is gone."""
    prefix = new_prefix("hafs-z")
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    nodes: list[Node] = []
    try:
        for name in names:
            nodes.append(start_node(f"{prefix}-{name}", workdir, netns))
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        for node in nodes:
            node.reap()
        shutil.rmtree(workdir)
    leaked = [line for line in Path("/proc/self/mounts").read_text().splitlines() if prefix in line]
    assert not leaked, leaked


@pytest.fixture(scope="module")
def two(require_zfs_fuse: None) -> Iterator[tuple[Node, Node]]:
    """Holder ``a`` and backup ``b``: two daemons, one pool each, shared by this module's tests."""
    with running_nodes(["a", "b"]) as (a, b):
        yield a, b


def pipe(send: list[str], recv: list[str], cut_after: int | None = None) -> tuple[int, str]:
    """Pump ``send``'s stdout into ``recv``'s stdin through this process, as replication will.

    ``cut_after`` bytes: then kill the sender and close the stream, like a holder dying mid-send.
    Returns the receiver's exit status and stderr.
    """
    with (
        subprocess.Popen(send, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as sender,
        subprocess.Popen(recv, stdin=subprocess.PIPE, stderr=subprocess.PIPE) as receiver,
    ):
        assert sender.stdout and receiver.stdin and receiver.stderr
        sent = 0
        try:
            while chunk := sender.stdout.read(1 << 16):
                if cut_after is not None and sent + len(chunk) > cut_after:
                    receiver.stdin.write(chunk[: cut_after - sent])
                    sender.kill()
                    break
                receiver.stdin.write(chunk)
                sent += len(chunk)
        except BrokenPipeError:
            sender.kill()  # the receiver gave up early; its status and stderr say why
        finally:
            with contextlib.suppress(BrokenPipeError):
                receiver.stdin.close()
        return receiver.wait(), receiver.stderr.read().decode()


def names(snapshots: Sequence[Snapshot]) -> list[str]:
    return [s.name for s in snapshots]


def test_full_then_incremental_replication_between_two_daemons(two: tuple[Node, Node]) -> None:
    a, b = two
    src, dst = f"{a.pool}/hafs/rep", f"{b.pool}/hafs/rep"
    a.zfs.create(src, {"atime": "off"})
    a.sh(f"echo one > {a.mountpoint}/hafs/rep/f")
    a.zfs.snapshot(f"{src}@r1")

    assert pipe(a.zfs.send_command(f"{src}@r1"), b.zfs.recv_command(dst)) == (0, "")
    b.zfs.set(dst, "readonly", "on")
    assert b.sh(f"cat {b.mountpoint}/hafs/rep/f") == "one\n"

    a.sh(f"echo two > {a.mountpoint}/hafs/rep/g")
    a.zfs.snapshot(f"{src}@r2")
    incremental = a.zfs.send_command(f"{src}@r2", incremental_from=f"{src}@r1")
    assert pipe(incremental, b.zfs.recv_command(dst)) == (0, "")

    assert b.sh(f"cat {b.mountpoint}/hafs/rep/g") == "two\n"
    replica = b.zfs.snapshots(dst)
    assert names(replica) == ["r1", "r2"] == names(a.zfs.snapshots(src))
    assert replica[1].full_name == f"{dst}@r2"
    denied = b.run("sh", "-c", f"echo x > {b.mountpoint}/hafs/rep/g")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr


def test_plain_incremental_is_refused_after_a_read_on_a_writable_replica(
    two: tuple[Node, Node],
) -> None:
    a, b = two
    src, dst = f"{a.pool}/hafs/atime", f"{b.pool}/hafs/atime"
    a.zfs.create(src)
    a.sh(f"echo one > {a.mountpoint}/hafs/atime/f")
    a.zfs.snapshot(f"{src}@r1")
    assert pipe(a.zfs.send_command(f"{src}@r1"), b.zfs.recv_command(dst)) == (0, "")
    b.sh(f"cat {b.mountpoint}/hafs/atime/f")  # atime: the replica is now "modified"
    a.zfs.snapshot(f"{src}@r2")

    status, err = pipe(a.zfs.send_command(f"{src}@r2", "@r1"), b.zfs.recv_command(dst, force=False))
    assert status != 0 and "has been modified" in err
    assert pipe(a.zfs.send_command(f"{src}@r2", "@r1"), b.zfs.recv_command(dst)) == (0, "")
    assert names(b.zfs.snapshots(dst)) == ["r1", "r2"]


def test_rollback_after_a_receive_serves_the_received_data(two: tuple[Node, Node]) -> None:
    """zfs-fuse keeps cached pages across a receive (``f`` read before still shows ``one``);
    the rollback that takeover does anyway remounts and serves what was received."""
    a, b = two
    src, dst = f"{a.pool}/hafs/cache", f"{b.pool}/hafs/cache"
    a.zfs.create(src)
    a.sh(f"echo one > {a.mountpoint}/hafs/cache/f")
    a.zfs.snapshot(f"{src}@r1")
    assert pipe(a.zfs.send_command(f"{src}@r1"), b.zfs.recv_command(dst)) == (0, "")
    b.zfs.set(dst, "readonly", "on")
    assert b.sh(f"cat {b.mountpoint}/hafs/cache/f") == "one\n"
    a.sh(f"echo two > {a.mountpoint}/hafs/cache/f")
    a.zfs.snapshot(f"{src}@r2")
    assert pipe(a.zfs.send_command(f"{src}@r2", "@r1"), b.zfs.recv_command(dst)) == (0, "")

    b.zfs.rollback(b.zfs.snapshots(dst)[-1].full_name)
    b.zfs.set(dst, "readonly", "off")

    assert b.sh(f"cat {b.mountpoint}/hafs/cache/f") == "two\n"


def test_a_replica_remounted_before_a_receive_needs_no_rollback(two: tuple[Node, Node]) -> None:
    """The handback's shortcut: the returning home remounts its replica (dropping the pages
    cached while it served) before the final receive; nothing reads it in between, so the
    takeover serves what was received with no rollback. Without the remount: stale pages."""
    a, b = two
    src, dst = f"{a.pool}/hafs/remount", f"{b.pool}/hafs/remount"
    here, there = f"{a.mountpoint}/hafs/remount", f"{b.mountpoint}/hafs/remount"
    a.zfs.create(src)
    a.sh(f"echo one > {here}/f; echo one > {here}/g")
    a.zfs.snapshot(f"{src}@r1")
    assert pipe(a.zfs.send_command(f"{src}@r1"), b.zfs.recv_command(dst)) == (0, "")
    b.zfs.set(dst, "readonly", "on")
    assert b.sh(f"cat {there}/f {there}/g") == "one\none\n"  # served here: pages cached
    vip = VipService(6, "remount", IPv4Address("10.0.0.6"), "b", ("b",), ())
    mounts.remount(services_on(b, vip), vip)
    a.sh(f"echo two > {here}/f; echo two > {here}/g")
    a.zfs.snapshot(f"{src}@r2")
    assert pipe(a.zfs.send_command(f"{src}@r2", "@r1"), b.zfs.recv_command(dst)) == (0, "")
    assert b.sh(f"cat {there}/f") == "two\n"
    b.sh(f"cat {there}/g")  # read now, then changed by the next receive with no remount
    a.sh(f"echo six > {here}/g")  # the same size: the kernel sees no change
    a.zfs.snapshot(f"{src}@r3")
    assert pipe(a.zfs.send_command(f"{src}@r3", "@r2"), b.zfs.recv_command(dst)) == (0, "")
    assert b.sh(f"cat {there}/g") == "two\n"  # stale: what the remount is for


def test_a_cut_stream_leaves_the_replica_at_its_last_complete_snapshot(
    two: tuple[Node, Node],
) -> None:
    a, b = two
    src, dst = f"{a.pool}/hafs/cut", f"{b.pool}/hafs/cut"
    a.zfs.create(src)
    a.zfs.snapshot(f"{src}@r1")
    assert pipe(a.zfs.send_command(f"{src}@r1"), b.zfs.recv_command(dst)) == (0, "")
    a.sh(f"dd if=/dev/urandom of={a.mountpoint}/hafs/cut/big bs=1M count=8 status=none")
    a.zfs.snapshot(f"{src}@r2")

    status, err = pipe(a.zfs.send_command(f"{src}@r2", "@r1"), b.zfs.recv_command(dst), 1 << 20)

    assert status != 0 and "invalid backup stream" in err
    assert names(b.zfs.snapshots(dst)) == ["r1"]
    assert not b.zfs.exists(f"{dst}@r2")
    assert b.zfs.list_datasets(f"{b.pool}/hafs/cut") == [dst]
    assert pipe(a.zfs.send_command(f"{src}@r2", "@r1"), b.zfs.recv_command(dst)) == (0, "")
    assert names(b.zfs.snapshots(dst)) == ["r1", "r2"]


def test_takeover_rolls_back_then_makes_the_replica_writable(two: tuple[Node, Node]) -> None:
    _, b = two
    ds = f"{b.pool}/hafs/take"
    path = f"{b.mountpoint}/hafs/take"
    b.zfs.create(ds)
    b.sh(f"echo kept > {path}/f")
    b.zfs.snapshot(f"{ds}@r1")
    b.sh(f"echo newer > {path}/f")
    b.zfs.snapshot(f"{ds}@r2")
    b.sh(f"echo unsnapshotted > {path}/f && touch {path}/stray")
    b.zfs.set(ds, "readonly", "on")

    newest = b.zfs.snapshots(ds)[-1]
    b.zfs.rollback(newest.full_name)
    b.zfs.set(ds, "readonly", "off")

    assert b.sh(f"cat {path}/f; ls {path}") == "newer\nf\n"
    b.sh(f"echo served > {path}/f")
    with pytest.raises(ZfsError, match="more recent snapshots exist"):
        b.zfs.rollback(f"{ds}@r1")  # hafs never destroys snapshots to roll back past them
    assert names(b.zfs.snapshots(ds)) == ["r1", "r2"]


def test_properties_listing_and_pruning(two: tuple[Node, Node]) -> None:
    a, _ = two
    root = f"{a.pool}/hafs/props"
    a.zfs.create(f"{root}/child", {"atime": "off", "compression": "on"})
    assert a.zfs.list_datasets(root) == [root, f"{root}/child"]
    assert a.zfs.exists(f"{root}/child") and not a.zfs.exists(f"{root}/nope")
    assert a.zfs.get(f"{root}/child", "atime") == "off"
    assert a.zfs.get(f"{root}/child", "compression") == "on"
    assert a.zfs.get(root, "used").isdigit()  # -p: bytes, not "1.5M"
    a.zfs.snapshot(f"{root}@p1")
    a.zfs.snapshot(f"{root}/child@p1")
    a.zfs.snapshot(f"{root}@p2")
    assert names(a.zfs.snapshots(root)) == ["p1", "p2"]  # not the child's

    a.zfs.destroy_snapshot(f"{root}@p1")

    assert names(a.zfs.snapshots(root)) == ["p2"]
    assert a.zfs.exists(f"{root}/child@p1")


def test_errors_name_the_command_and_the_reason_in_one_line(two: tuple[Node, Node]) -> None:
    a, _ = two
    missing = f"{a.pool}/hafs/missing"
    with pytest.raises(ZfsError) as info:
        a.zfs.snapshot(f"{missing}@x")
    message = str(info.value)
    assert message.startswith(
        f"nsenter --mount=/proc/{a.anchor.pid}/ns/mnt -- zfs snapshot {missing}@x: "
    )
    assert "dataset does not exist" in message and "\n" not in message
    assert info.value.exit_code == 1
    for refused in (missing, f"{missing}@", "@x", f"{missing}@a@b"):
        with pytest.raises(ZfsError, match="not a snapshot name"):
            a.zfs.destroy_snapshot(refused)
    with pytest.raises(ZfsError, match="cannot run"):
        Zfs(["/nonexistent/hafs-prefix"]).exists(missing)


def test_export_unmounts_and_import_brings_the_data_back(two: tuple[Node, Node]) -> None:
    _, b = two
    b.zfs.create(f"{b.pool}/hafs/moved")
    b.sh(f"echo data > {b.mountpoint}/hafs/moved/f")
    b.zfs.zpool_export(b.pool)
    assert b.fuse_mounts() == []
    assert not b.zfs.exists(b.pool)
    b.zfs.zpool_import(b.pool, str(b.workdir))
    assert b.sh(f"cat {b.mountpoint}/hafs/moved/f") == "data\n"
    with pytest.raises(ZfsError, match="File exists"):
        b.zfs.zpool_create_file("other", str(b.workdir / f"{b.label}.img"), POOL_SIZE, "/run/x")


# --- one smbd per VIP, serving a share on the VIP's dataset --------------------------------------

VIP = IPv4Address("10.77.0.100")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _wait_listening(client: Netns, address: IPv4Address, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with inside(client), socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex((str(address), port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {address}:{port}"
        time.sleep(0.01)


def _stop_instance(node: Node, instance: SambaInstance, smbd: subprocess.Popen[bytes]) -> None:
    """Stop smbd and its samba-dcerpcd through smbcontrol, as step-down will; wait for both."""
    pidfile = f"{instance.dirs.pid}/samba-dcerpcd.pid"
    dcerpcd = node.run("cat", pidfile).stdout.strip()
    for argv in stop_argvs(instance):
        node.run(*argv)
    try:
        smbd.wait(STOP_TIMEOUT)
    finally:
        if smbd.poll() is None:
            smbd.kill()
            smbd.wait()
    deadline = time.monotonic() + STOP_TIMEOUT
    while dcerpcd and _alive(int(dcerpcd)):
        assert time.monotonic() < deadline, "samba-dcerpcd outlived its shutdown"
        time.sleep(0.01)


def _lists_shares(smb: Any, user: str, password: str, client: Netns) -> bool:
    """Does the VIP's smbd list its shares to ``user`` with ``password``?"""
    from smb import base as smb_base

    conn = smb.SMBConnection(user, password, "client", "VIP1", is_direct_tcp=True)
    try:
        with inside(client):
            if not conn.connect(str(VIP), 445, timeout=5):
                return False
            conn.listShares(timeout=10)
    except (smb_base.NotConnectedError, smb_base.NotReadyError, smb_base.OperationFailure):
        return False
    finally:
        conn.close()
    return True


def test_rendered_instance_serves_a_dataset_share_to_pysmb(
    require_zfs_fuse: None, pair: Pair
) -> None:
    smb = pytest.importorskip("smb.SMBConnection")
    skip_or_fail(_missing("smbd", "smbcontrol", "smbpasswd"))
    pair.a.add_address("eth0", f"{VIP}/32")
    with running_nodes(["s"], pair.a) as (node,):
        dataset = f"{node.mountpoint}/hafs/vip1"
        node.zfs.create(f"{node.pool}/hafs/vip1")
        data = f"{dataset}/shares/data"
        instance = SambaInstance(
            name="VIP1",
            vip=VIP,
            shares=(SambaShare("data", data, valid_users=(SMB_USER,)),),
            dirs=SambaDirs.for_vip(dataset, "/run/hafs-vip1"),
            config_file="/run/hafs-vip1/smb.conf",
        )
        dirs = instance.dirs
        node.sh(
            f"mkdir -p {data} {dirs.private} {dirs.state} {dirs.lock} {dirs.cache} {dirs.pid} "
            f"{dirs.ncalrpc} {os.path.dirname(dirs.log_file)} && chown {SMB_USER} {data}"
        )
        written = node.run(
            "sh", "-c", f"cat > {instance.config_file}", stdin=render_smb_conf(instance)
        )
        assert written.returncode == 0, written.stderr
        added = node.run(*add_user_argv(instance, SMB_USER), stdin=f"{SMB_PASSWORD}\n" * 2)
        assert added.returncode == 0, added.stderr
        in_node = ["nsenter", f"--target={node.anchor.pid}", "--mount", "--net", "--"]
        # A plain child: smbd --foreground calls setsid() itself (fails if already a leader).
        smbd = subprocess.Popen([*DIE_WITH_US, *in_node, *start_argv(instance, foreground=True)])
        try:
            _wait_listening(pair.b, VIP, 445)
            with inside(pair.b), socket.socket() as other:
                assert other.connect_ex(("10.77.0.1", 445)) != 0  # only the VIP is bound
            conn = smb.SMBConnection(SMB_USER, SMB_PASSWORD, "client", "VIP1", is_direct_tcp=True)
            with inside(pair.b):
                assert conn.connect(str(VIP), 445, timeout=5)
            try:
                assert {s.name for s in conn.listShares(timeout=10)} == {"data", "IPC$"}
                conn.storeFile("data", "/hello.txt", io.BytesIO(b"hello hafs"), timeout=10)
                assert node.sh(f"cat {data}/hello.txt") == "hello hafs"
                back = io.BytesIO()
                conn.retrieveFile("data", "/hello.txt", back, timeout=10)
                assert back.getvalue() == b"hello hafs"
                conn.deleteFiles("data", "/hello.txt", timeout=10)
                assert node.sh(f"ls -A {data}") == ""
            finally:
                conn.close()
            for user, password in ((SMB_USER, "wrong"), ("nobody", "x")):  # no guest mapping
                assert not _lists_shares(smb, user, password, pair.b), (user, password)
            anonymous = subprocess.run(  # smbclient's null session, as the issue tried it
                ["ip", "netns", "exec", pair.b.name, "smbclient", "-N", "-L", f"//{VIP}"],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert anonymous.returncode != 0 and "data" not in anonymous.stdout, anonymous.stdout
            assert node.run("test", "-s", f"{dirs.pid}/samba-dcerpcd.pid").returncode == 0
        finally:
            _stop_instance(node, instance, smbd)
        assert smbd.returncode in (0, -signal.SIGTERM)  # smbd ends itself with SIGTERM
        assert node.sh(f"ls {dirs.private}").split() == ["passdb.tdb", "secrets.tdb"]


def services_on(node: Node, vip: VipService) -> NodeServices:
    """Node ``node``'s view of the one ``vip``, run from here (zfs through its prefix)."""
    config = ServiceConfig(
        node="b", pool=node.pool, replication_interval=10, peers={}, vips=(vip,), users={},
    )  # fmt: skip
    return NodeServices(config, zfs=node.zfs)


def test_a_diverged_replica_is_kept_aside_and_the_incremental_still_applies(
    two: tuple[Node, Node],
) -> None:
    """Both sides wrote after their common snapshot (b served through a partition, with a
    last unsnapshotted write): b follows a, and b's own writes survive as a kept copy that
    costs no copy of the shared data, until an operator discards it."""
    a, b = two
    vip = VipService(9, "div", IPv4Address("10.0.0.9"), "a", ("a", "b"), ())
    services = services_on(b, vip)
    src, dst = f"{a.pool}/hafs/div", f"{b.pool}/hafs/div"
    here, there = f"{a.mountpoint}/hafs/div", f"{b.mountpoint}/hafs/div"
    a.zfs.create(src)
    a.sh(f"echo common > {here}/common")
    a.zfs.snapshot(f"{src}@c1")
    assert pipe(a.zfs.send_command(f"{src}@c1"), b.zfs.recv_command(dst)) == (0, "")
    b.zfs.set(dst, "readonly", "off")  # b takes over (a cut off) and serves
    divergence.mark_served(services, vip)
    b.sh(f"echo b-snapshotted > {there}/b1")
    b.zfs.snapshot(f"{dst}@b1")
    b.sh(f"echo b-last-write > {there}/b2")  # acknowledged, never snapshotted
    a.sh(f"echo a-wrote > {here}/a1")  # meanwhile a served its clients too
    a.zfs.snapshot(f"{src}@a1")

    sealed = divergence.seal(services, vip, "step-down")  # b steps down
    assert sealed is not None and not divergence.was_served(services, vip)
    aside = divergence.keep_aside(services, vip, "c1")
    assert aside is not None and aside.startswith(f"{dst}-diverged-")
    assert divergence.keep_aside(services, vip, "c1") is None  # nothing newer is left
    b.zfs.rollback(f"{dst}@c1")
    assert pipe(a.zfs.send_command(f"{src}@a1", "@c1"), b.zfs.recv_command(dst)) == (0, "")

    assert b.sh(f"ls {there}").split() == ["a1", "common"]  # b follows a ...
    kept = f"{b.mountpoint}/hafs/{aside.rsplit('/', 1)[1]}"
    assert b.sh(f"cat {kept}/b1 {kept}/b2 {kept}/common") == "b-snapshotted\nb-last-write\ncommon\n"
    [copy] = divergence.copies(services)  # ... and b's own writes are kept, listed, read-only
    assert (copy.vip, copy.dataset, copy.snapshots) == ("div", aside, ["b1", sealed])
    assert b.run("touch", f"{kept}/x").returncode != 0
    # the common snapshot stays while the copy needs it; pruning skips it quietly
    replication.prune(NodeServices(replace(services.config, keep_snapshots=1), zfs=b.zfs), vip)
    assert names(b.zfs.snapshots(dst)) == ["c1", "a1"]
    divergence.discard(services, copy.name)
    assert divergence.copies(services) == [] and b.zfs.list_datasets(f"{b.pool}/hafs/div") == [dst]


def test_nothing_is_kept_aside_when_nothing_diverged(two: tuple[Node, Node]) -> None:
    """A holder that stepped down (or crashed) with no write since its last snapshot, and a
    replica whose own snapshots hold no change: no seal, no kept copy, the incremental goes on."""
    _, b = two
    vip = VipService(8, "same", IPv4Address("10.0.0.8"), "b", ("b",), ())
    services = services_on(b, vip)
    ds, path = f"{b.pool}/hafs/same", f"{b.mountpoint}/hafs/same"
    b.zfs.create(ds, {"atime": "off"})
    b.sh(f"echo data > {path}/f")
    b.zfs.snapshot(f"{ds}@c1")
    b.sh(f"cat {path}/f")  # a read is no change
    divergence.mark_served(services, vip)
    assert divergence.seal(services, vip, "step-down") == "c1"
    assert names(b.zfs.snapshots(ds)) == ["c1"]
    b.zfs.snapshot(f"{ds}@same")  # made here, never sent, but no change
    assert b.zfs.unchanged(f"{ds}@c1", f"{ds}@same")
    assert divergence.keep_aside(services, vip, "c1") is None
    assert names(b.zfs.snapshots(ds)) == ["c1"] and divergence.copies(services) == []
    b.sh(f"touch {path}/f")
    b.zfs.snapshot(f"{ds}@touched")
    assert not b.zfs.unchanged(f"{ds}@c1", f"{ds}@touched")


def _in_node(node: Node, vip: VipService, call: str) -> str:
    """Run ``call`` (an expression over ``services`` and ``vip``) inside the node's mount
    namespace, as its service daemon would; returns what it prints."""
    script = (
        "import ipaddress, sys\n"
        "from hafs.service import divergence, mounts\n"
        "from hafs.service.config import ServiceConfig, ShareConfig, VipService\n"
        "from hafs.service.node import NodeServices\n"
        f"vip = {vip!r}\n"
        f"config = ServiceConfig(node='b', pool={node.pool!r}, replication_interval=10,"
        " peers={}, vips=(vip,), users={}, agent_socket=None)\n"
        "services = NodeServices(config)\n"
        f"print({call})\n"
    ).replace("IPv4Address(", "ipaddress.IPv4Address(")
    proc = node.run(sys.executable, "-c", script)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_a_killed_full_receive_leaves_the_replica_unmounted_and_it_is_mounted_before_serving(
    two: tuple[Node, Node],
) -> None:
    """The CI failure of 2026-12-04: a takeover that aborts a receive (or a holder dying
    mid-send) kills ``zfs recv`` after its stream arrived; the replica exists, unmounted,
    and an smbd started on its mountpoint served the parent's bare directory (canary
    missing; the next import refused the mount: "directory is not empty")."""
    a, b = two
    vip = VipService(7, "killed", IPv4Address("10.0.0.7"), "a", ("a", "b"), ())
    src, dst = f"{a.pool}/hafs/killed", f"{b.pool}/hafs/killed"
    there = f"{b.mountpoint}/hafs/killed"
    a.zfs.create(src, {"atime": "off"})
    here = f"{a.mountpoint}/hafs/killed"
    a.sh(f"echo data > {here}/f && head -c 2000000 /dev/urandom > {here}/g")  # a long stream
    a.zfs.snapshot(f"{src}@c1")
    stream = subprocess.run(a.zfs.send_command(f"{src}@c1"), capture_output=True, check=True).stdout
    with subprocess.Popen(["setsid", *b.zfs.recv_command(dst)], stdin=subprocess.PIPE) as recv:
        assert recv.stdin is not None
        recv.stdin.write(stream[: len(stream) // 2])  # returns once the daemon reads it
        recv.stdin.flush()
        os.killpg(recv.pid, signal.SIGKILL)  # the takeover's abort
        recv.stdin.write(stream[len(stream) // 2 :])  # the daemon holds the stream: it finishes
        recv.stdin.close()
    deadline = time.monotonic() + READY_TIMEOUT
    while not b.zfs.exists(dst) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b.zfs.exists(dst) and not b.zfs.mounted(dst)  # received, never mounted
    b.sh(f"mkdir -p {there}/shares && echo acked > {there}/shares/written-meanwhile")

    assert _in_node(b, vip, "mounts.ensure_mounted(services, vip)") == "True"

    assert b.zfs.mounted(dst) and b.sh(f"cat {there}/f") == "data\n"  # the replica's data
    [stray] = [n for n in b.sh(f"ls {b.mountpoint}/hafs").split() if n.startswith("killed-stray-")]
    assert b.sh(f"cat {b.mountpoint}/hafs/{stray}/shares/written-meanwhile") == "acked\n"
    assert _in_node(b, vip, "mounts.ensure_mounted(services, vip)") == "False"  # idempotent
    b.sh(f"rm -r {b.mountpoint}/hafs/{stray}")


@pytest.mark.parametrize("cut_after", ["unmount", "rename", "clone"])
def test_a_keep_aside_cut_short_is_finished_before_the_next_receive(
    two: tuple[Node, Node], cut_after: str
) -> None:
    """A takeover kills the receive that was keeping a diverged replica aside: whatever step
    it reached, the next receive (or takeover) finds the VIP's dataset at the common
    snapshot and the copy kept, read-only, with the writes it alone had."""
    _, b = two
    vip = VipService(6, f"ka{cut_after}", IPv4Address("10.0.0.6"), "a", ("a", "b"), ())
    ds, path = f"{b.pool}/hafs/{vip.name}", f"{b.mountpoint}/hafs/{vip.name}"
    b.zfs.create(ds, {"atime": "off"})
    b.sh(f"echo common > {path}/common")
    b.zfs.snapshot(f"{ds}@c1")
    b.sh(f"echo mine > {path}/mine")
    b.zfs.snapshot(f"{ds}@b1")
    aside = f"{ds}{divergence.MARK}20261204T000000000000Z"
    b.zfs.set(ds, divergence.PENDING, "c1")  # keep_aside's steps, cut short
    b.zfs.unmount(ds)
    if cut_after in ("rename", "clone"):
        b.zfs.rename(ds, aside)
    if cut_after == "clone":
        b.zfs.clone(f"{aside}@c1", ds)

    _in_node(b, vip, "divergence.finish_interrupted(services, vip)")

    if cut_after == "unmount":  # nothing moved: the next keep_aside starts over
        assert b.zfs.having(f"{b.pool}/hafs", divergence.PENDING) == {}
        assert names(b.zfs.snapshots(ds)) == ["c1", "b1"]
        b.zfs.mount(ds)
    else:
        assert b.zfs.having(f"{b.pool}/hafs", divergence.PENDING) == {}
        assert names(b.zfs.snapshots(ds)) == ["c1"] and b.zfs.get(ds, "origin") == "-"
        assert _in_node(b, vip, "mounts.ensure_mounted(services, vip)") in ("True", "False")
        assert b.sh(f"ls {path}").split() == ["common"]
        kept = f"{b.mountpoint}/hafs/{aside.rsplit('/', 1)[1]}"
        assert b.sh(f"cat {kept}/mine") == "mine\n"
        assert b.run("touch", f"{kept}/x").returncode != 0  # read-only
    b.sh(f"zfs unmount -a; zfs destroy -R {ds}; zfs mount -a")  # the kept copy (a clone) too


def test_a_failed_receive_is_one_line_naming_the_dataset(two: tuple[Node, Node]) -> None:
    """What the sender logs when a receive fails: zfs's reason in one line, no traceback."""
    _, b = two
    vip = VipService(5, "garbled", IPv4Address("10.0.0.5"), "a", ("a", "b"), ())
    proc = b.run(
        sys.executable,
        "-c",
        "import ipaddress\n"
        "from hafs.service.config import ServiceConfig, VipService\n"
        "from hafs.service.node import NodeServices\n"
        "from hafs.service.runtime import ServiceError\n"
        f"vip = {vip!r}\n".replace("IPv4Address(", "ipaddress.IPv4Address(")
        + f"config = ServiceConfig(node='b', pool={b.pool!r}, replication_interval=10,"
        " peers={}, vips=(vip,), users={}, agent_socket=None)\n"
        "try:\n"
        "    with open('/etc/hostname', 'rb') as garbage:\n"
        "        NodeServices(config).receive(vip, None, garbage)\n"
        "except ServiceError as exc:\n"
        "    print(exc)\n",
    )
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout.strip()
    assert "\n" not in message and "Traceback" not in proc.stderr
    assert message.startswith(f"garbled: zfs recv into {b.pool}/hafs/garbled failed: cannot")


def test_a_snapshot_from_a_racing_send_is_no_divergence(two: tuple[Node, Node]) -> None:
    """The holder's daemon sends @x while a resync's send, which chose its base @c1 just
    before, is on its way: the receiver has @x after the base, but @x is the sender's too
    (``theirs``): it goes, nothing is kept aside, the late stream applies."""
    a, b = two
    vip = VipService(4, "race", IPv4Address("10.0.0.4"), "a", ("a", "b"), ())
    services = services_on(b, vip)
    src, dst, here = f"{a.pool}/hafs/race", f"{b.pool}/hafs/race", f"{a.mountpoint}/hafs/race"
    a.zfs.create(src, {"atime": "off"})
    for name in ("c1", "x", "y"):
        a.sh(f"echo {name} > {here}/{name}")
        a.zfs.snapshot(f"{src}@{name}")
    assert pipe(a.zfs.send_command(f"{src}@c1"), b.zfs.recv_command(dst)) == (0, "")
    assert pipe(a.zfs.send_command(f"{src}@x", "@c1"), b.zfs.recv_command(dst)) == (0, "")

    assert divergence.keep_aside(services, vip, "c1", theirs=["x", "y"]) is None
    assert pipe(a.zfs.send_command(f"{src}@y", "@c1"), b.zfs.recv_command(dst)) == (0, "")

    assert names(b.zfs.snapshots(dst)) == ["c1", "x", "y"]  # @x again, from the stream
    assert divergence.copies(services) == []
    assert b.sh(f"ls {b.mountpoint}/hafs/race").split() == ["c1", "x", "y"]


def test_a_replica_left_unmounted_is_kept_aside_all_the_same(two: tuple[Node, Node]) -> None:
    _, b = two
    vip = VipService(3, "unmounted", IPv4Address("10.0.0.3"), "a", ("a", "b"), ())
    services = services_on(b, vip)
    ds, path = f"{b.pool}/hafs/unmounted", f"{b.mountpoint}/hafs/unmounted"
    b.zfs.create(ds, {"atime": "off"})
    b.zfs.snapshot(f"{ds}@c1")
    b.sh(f"echo mine > {path}/mine")
    b.zfs.snapshot(f"{ds}@b1")
    b.zfs.unmount(ds)  # a killed receive left it so

    aside = divergence.keep_aside(services, vip, "c1")

    assert aside is not None and names(b.zfs.snapshots(ds)) == ["c1"]
    assert b.sh(f"cat {b.mountpoint}/hafs/{aside.rsplit('/', 1)[1]}/mine") == "mine\n"
    b.sh(f"zfs unmount -a; zfs destroy -R {ds}; zfs mount -a")


def test_an_incremental_carries_the_snapshots_in_between(two: tuple[Node, Node]) -> None:
    """A returning home pulls from the node that served meanwhile in one incremental: it gets
    every snapshot that node took (``-I``), so when it sends to the other replicas, which
    have some of those from that node, they are the sender's too, not a divergence."""
    a, b = two
    src, dst, here = (
        f"{a.pool}/hafs/between",
        f"{b.pool}/hafs/between",
        f"{a.mountpoint}/hafs/between",
    )
    a.zfs.create(src, {"atime": "off"})
    for name in ("c1", "i1", "i2", "n"):
        a.sh(f"echo {name} > {here}/{name}")
        a.zfs.snapshot(f"{src}@{name}")
    assert pipe(a.zfs.send_command(f"{src}@c1"), b.zfs.recv_command(dst)) == (0, "")

    assert pipe(a.zfs.send_command(f"{src}@n", "@c1"), b.zfs.recv_command(dst)) == (0, "")

    assert names(b.zfs.snapshots(dst)) == ["c1", "i1", "i2", "n"]


def test_a_full_share_still_snapshots_and_sends_everything_it_acknowledged(
    two: tuple[Node, Node],
) -> None:
    """A served VIP's shares stop at their part of the pool (hafs.service.space): the client
    gets "disk full" while the pool keeps room, so the snapshot, the send and a rollback of
    what it was told is written all still work (zfs-fuse keeps no slop: on a pool full to
    the last byte, ``zfs snapshot`` fails "out of space"). It can delete and write again."""
    a, b = two
    vip = VipService(7, "full", IPv4Address("10.0.0.7"), "a", ("a", "b"), ())
    others = tuple(replace(vip, vhid=vip.vhid + i, name=f"other{i}") for i in (1, 2, 3))
    config = ServiceConfig(
        node="a", pool=a.pool, replication_interval=10, peers={}, vips=(vip, *others), users={},
    )  # fmt: skip
    services = NodeServices(config, zfs=a.zfs)
    src, dst, here = f"{a.pool}/hafs/full", f"{b.pool}/hafs/full", f"{a.mountpoint}/hafs/full"
    a.zfs.create(src)
    try:
        pool = space.of_pool(a.zfs, a.pool)
        assert services.limit(vip) == pool.share_limit(4)
        written = int(a.sh(f"cd {here}; i=0; while head -c 1048576 /dev/urandom > f$i; do "
                           "i=$((i+1)); done 2>/dev/null; echo $i"))  # fmt: skip
        acked = [f"f{n}" for n in range(written)]  # f<written> is the one that hit the limit
        assert written >= pool.share_limit(4) // (1 << 20) - 2, written
        sums = a.sh(f"cd {here}; sha256sum {' '.join(acked)}")
        assert space.of_pool(a.zfs, a.pool).free >= pool.headroom  # the room is still there

        a.zfs.snapshot(f"{src}@s1")
        assert pipe(a.zfs.send_command(f"{src}@s1"), b.zfs.recv_command(dst)) == (0, "")
        assert b.sh(f"cd {b.mountpoint}/hafs/full; sha256sum {' '.join(acked)}") == sums
        a.zfs.rollback(f"{src}@s1")  # the takeover's first step works on a full share too

        a.sh(f"rm {here}/f0 {here}/f1 && head -c 1048576 /dev/urandom > {here}/again")
        a.zfs.snapshot(f"{src}@s2")
        assert pipe(a.zfs.send_command(f"{src}@s2", "@s1"), b.zfs.recv_command(dst)) == (0, "")
        assert "again" in b.sh(f"ls {b.mountpoint}/hafs/full").split()
    finally:
        a.zfs.destroy_recursive(src)
        if b.zfs.exists(dst):
            b.zfs.destroy_recursive(dst)
