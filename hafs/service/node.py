"""What moves with a VIP, on the node that runs this: its dataset and its smbd instance.

A VIP's service is the dataset ``<pool>/hafs/<vip>`` (``shares/<share>`` for the data,
``samba/private`` and ``samba/state`` for Samba's passdb and state, ``samba/smb.conf``) and one
smbd bound to the VIP alone, with its volatile directories in ``/var/run/hafs/smb/<vip>``.

- :meth:`NodeServices.takeover` (MASTER) runs ordered steps, each timed and logged: fence the
  other carriers' instances, roll the replica back to its newest complete snapshot (also the
  only way zfs-fuse drops pages cached before a receive), make it writable, start smbd,
  announce (tickle ACKs to the clients of the old holder, so they reconnect at once).
- :meth:`NodeServices.stepdown` (BACKUP/INIT) stops smbd and its samba-dcerpcd and leaves the
  dataset a read-only replica. Both are idempotent.
- Replication: the holder snapshots and sends incrementals to every other carrier over ssh to
  its fixed address (``hafs service receive`` there), which rolls back to the common snapshot
  first, so a returning node's writes that never reached anyone are discarded, not merged.
- Failback: a returning node pulls the delta (``sync``), then asks the holder to ``handover``:
  the holder stops serving, sends the final incremental, and the VIP moves when the returning
  node drops its "resync" demotion and preempts.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import signal
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hafs.errors import HafsError
from hafs.service import host
from hafs.service.config import ServiceConfig, VipService
from hafs.service.samba import (
    SambaDirs,
    SambaInstance,
    SambaShare,
    add_user_argv,
    delete_user_argv,
    reload_argv,
    render_smb_conf,
    start_argv,
    stop_argvs,
)
from hafs.service.zfs import Zfs, ZfsError

log = logging.getLogger("hafs.service")

RUN_DIR = Path("/var/run/hafs")  # FreeBSD has no /run; on Linux /var/run is /run
GROUP, GID = "hafs", 60000
UID_BASE, UID_SPAN = 60001, 5000
SSH_CONNECT_TIMEOUT = 2
FENCE_TIMEOUT = 1.0  # a live peer on the LAN answers well within it
SMBD_READY_TIMEOUT = 10.0
SEND_TIMEOUT = 600.0
HANDOVER_GRACE = 20.0  # a holder that quiesced for a handover serves again after this
BACKGROUND_NICE = 10  # replication's CPU priority: a takeover on the same CPUs comes first
NO_COPY = 3  # exit status of `hafs service sync`: the holder has no copy of the VIP to send


class ServiceError(HafsError):
    exit_code = 1


def uid_of(user: str) -> int:
    """The same uid for ``user`` on every node (files keep numeric ids across replication)."""
    return UID_BASE + zlib.crc32(user.encode()) % UID_SPAN


@contextlib.contextmanager
def step(vip: VipService, action: str, name: str) -> Iterator[None]:
    """Log one step of a takeover or step-down: what, how long, and whether it failed."""
    began = time.monotonic()
    try:
        yield
    except Exception as exc:
        log.error(
            "%s %s: %s: failed after %.2fs: %s",
            vip.name,
            action,
            name,
            time.monotonic() - began,
            exc,
        )
        raise
    log.info("%s %s: %s: done in %.2fs", vip.name, action, name, time.monotonic() - began)


def tickle_segment(src: IPv4Address, dst: IPv4Address, sport: int, dport: int) -> bytes:
    """A TCP ACK with sequence 0 from ``src:sport``: the client answers with an ACK, our
    kernel (which has no such connection) resets it, and the client reconnects at once."""
    header = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x10, 1234, 0, 0)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    data = pseudo + header
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:16] + struct.pack("!H", ~total & 0xFFFF) + header[18:]


class NodeServices:
    """The services of the VIPs this node carries."""

    def __init__(self, config: ServiceConfig, zfs: Zfs | None = None) -> None:
        self.config = config
        self.zfs = zfs or Zfs()
        self.acked: dict[tuple[str, str], str] = {}  # (vip, peer) -> last snapshot it took
        self.freebsd = host.FREEBSD

    # --- where things are -----------------------------------------------------------------

    def dataset(self, vip: VipService) -> str:
        return self.config.dataset(vip)

    def mountpoint(self, vip: VipService) -> Path:
        return Path(self.zfs.get(self.dataset(vip), "mountpoint"))

    def instance(self, vip: VipService) -> SambaInstance:
        root = self.mountpoint(vip)
        runtime = RUN_DIR / "smb" / vip.name
        shares = tuple(
            SambaShare(s.name, str(root / "shares" / s.name), s.writable, s.users)
            for s in vip.shares
        )
        return SambaInstance(
            name=vip.name,
            vip=vip.address,
            shares=shares,
            dirs=SambaDirs.for_vip(str(root), str(runtime)),
            config_file=str(root / "samba" / "smb.conf"),
        )

    def smbd_pids(self, vip: VipService) -> list[int]:
        """The processes of this VIP's smbd: every smbd of this node whose command line names
        its smb.conf (smbd forks one per client; a stale pid file never names a stranger)."""
        config = f"/{vip.name}/samba/smb.conf"
        return [
            pid
            for pid, argv in host.processes().items()
            if argv[0].endswith("smbd") and any(a.endswith(config) for a in argv[1:])
        ]

    def smbd_pid(self, vip: VipService) -> int | None:
        """The VIP's smbd, if one runs (its lowest pid: the parent of the client forks)."""
        pids = self.smbd_pids(vip)
        return min(pids) if pids else None

    def holds(self, vip: VipService) -> bool:
        """Is this node the VIP's CARP master, with the address in place?"""
        return host.holds(vip.address, vip.vhid)

    # --- takeover and step-down --------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, vip: VipService, abort_receive: bool = False) -> Iterator[None]:
        """One takeover/step-down/receive of a VIP at a time on this node.

        ``abort_receive`` (a takeover): a receive in progress is killed, not waited for. Its
        sender gave up the VIP, most likely by dying, and then the receive would end only
        when sshd notices the dead client (never, without ClientAliveInterval). What it
        carried is lost like any write of the last replication interval."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with open(RUN_DIR / f"{vip.name}.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if abort_receive:
                    self._abort_receives(vip)
                log.info("%s: waiting for the operation in progress", vip.name)
                fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def _receiving(self, vip: VipService) -> Iterator[None]:
        """Register this process group as a receive of the VIP, from before it waits for the
        lock until it ends (``hafs service receive`` runs in a group of its own: the one a
        takeover kills, with its ``zfs recv``)."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        path = RUN_DIR / f"{vip.name}.receiving.{os.getpgid(0)}"
        path.touch()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def _abort_receives(self, vip: VipService) -> None:
        """Kill the process group of every receive of the VIP, running or waiting."""
        for path in RUN_DIR.glob(f"{vip.name}.receiving.*"):
            pgid = path.suffix[1:]
            argv = host.processes().get(int(pgid), []) if pgid.isdigit() else []
            if "receive" not in argv or vip.name not in argv:
                path.unlink(missing_ok=True)  # stale: that process is gone (or another now)
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pgid), signal.SIGKILL)
                log.info("%s takeover: aborted a receive in progress (pid %s)", vip.name, pgid)
            path.unlink(missing_ok=True)

    def takeover(self, vip: VipService, previous_master: str | None = None) -> None:
        """Serve the VIP here. ``previous_master``: the address of the node the CARP daemon
        took the VIP over from, if it knows (the one to fence); else every other carrier."""
        with self.locked(vip, abort_receive=True):
            if self.smbd_pid(vip) is not None and self._writable(vip):
                log.info("%s takeover: already serving", vip.name)
                return
            if not self.holds(vip):  # lost it again before this hook ran: BACKUP follows
                log.info("%s takeover: the VIP is no longer here: nothing to do", vip.name)
                return
            log.info("%s takeover: begins on %s", vip.name, self.config.node)
            with ThreadPoolExecutor(max(1, len(vip.carriers))) as pool:
                # fencing starts first and never delays service: the old holder lost the VIP
                # (its smbd is bound to an address it no longer has); fencing stops its writes
                fencing = self._fence_peers(vip, previous_master, pool)
                with step(vip, "takeover", "roll back to the newest snapshot"):
                    self._rollback_or_provision(vip)
                with step(vip, "takeover", "make the dataset writable"):
                    self.zfs.set(self.dataset(vip), "readonly", "off")
                with step(vip, "takeover", "start smbd"):
                    self.start_smbd(vip)
                with step(vip, "takeover", "announce (tickle ACKs)"):
                    self._tickle(vip)
                with step(vip, "takeover", "fence the other carriers"):
                    self._fenced(vip, fencing)
            (RUN_DIR / f"{vip.name}.handover").unlink(missing_ok=True)
            log.info("%s takeover: serving on %s", vip.name, self.config.node)

    def stepdown(self, vip: VipService, action: str = "step-down") -> None:
        with self.locked(vip):
            if not self.zfs.exists(self.dataset(vip)):
                return
            with step(vip, action, "stop smbd"):
                self.stop_smbd(vip)
            with step(vip, action, "make the dataset a read-only replica"):
                self.zfs.set(self.dataset(vip), "readonly", "on")

    def _writable(self, vip: VipService) -> bool:
        """Can the dataset be written? Probed with a real write: zfs-fuse reports a
        temporary readonly=off and lets access(2) say yes on a read-only dataset."""
        try:
            probe = self.mountpoint(vip) / ".hafs-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except (OSError, ZfsError):
            return False
        return True

    def _fence_peers(
        self, vip: VipService, previous_master: str | None, pool: ThreadPoolExecutor
    ) -> dict[str, Future[Any]]:
        """Ask the old holder to stop serving the VIP (it may still be); when it is not known,
        every other carrier. Fewer requests: less CPU taken from the takeover itself."""
        peers = [p for p in vip.carriers if p != self.config.node and p in self.config.peers]
        old = [p for p in peers if str(self.config.peers[p]) == previous_master]
        return {
            p: pool.submit(self.remote, p, ["fence", vip.name], FENCE_TIMEOUT)
            for p in (old or peers)
        }

    def _fenced(self, vip: VipService, fencing: dict[str, Future[Any]]) -> None:
        """Wait for the fence requests, FENCE_TIMEOUT at most: a dead node answers nothing."""
        done, _ = wait(fencing.values(), timeout=FENCE_TIMEOUT)
        for peer, future in fencing.items():
            ok = future in done and future.result().returncode == 0
            log.info("%s takeover: fence %s: %s", vip.name, peer, "fenced" if ok else "no answer")

    def _rollback_or_provision(self, vip: VipService) -> None:
        dataset = self.dataset(vip)
        if not self.zfs.exists(dataset):
            if vip.home != self.config.node:
                # an empty share in place of data that exists elsewhere: clients would write
                # into it, and a later receive would have to put their writes aside
                raise ServiceError(
                    f"{vip.name}: no replica on {self.config.node} (none was ever received): "
                    f"not serving an empty share in its place; its home {vip.home} serves it"
                )
            log.info("%s takeover: no dataset yet on its home: creating it, empty", vip.name)
            self.zfs.create(dataset, {})
            return
        snapshots = self.zfs.snapshots(dataset)
        if snapshots:
            newest = snapshots[-1]
            self.zfs.rollback(newest.full_name, destroy_newer=True)
            log.info("%s takeover: rolled back to %s", vip.name, newest.name)

    def start_smbd(self, vip: VipService) -> None:
        """Lay out the dataset, users and smb.conf, then start smbd and wait until it listens."""
        if self.smbd_pid(vip) is not None:
            return
        instance = self.instance(vip)  # (one `zfs get mountpoint`: the rest derives from it)
        self._sync_node_users()  # first: the shares' group
        self._lay_out(vip, instance)
        self._sync_passdb(instance)
        subprocess.run(start_argv(instance, foreground=False), check=True, capture_output=True)
        deadline = time.monotonic() + SMBD_READY_TIMEOUT
        while not host.listens(vip.address):
            if time.monotonic() > deadline:
                raise ServiceError(f"{vip.name}: smbd does not listen on {vip.address}:445")
            time.sleep(0.02)

    def _lay_out(self, vip: VipService, instance: SambaInstance) -> bool:
        """Samba's dirs, the share dirs and smb.conf; True if smb.conf changed."""
        for directory in (instance.dirs.private, instance.dirs.state):
            Path(directory).mkdir(parents=True, exist_ok=True)
        for share in instance.shares:
            path = Path(share.path)
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, 0, GID)
            path.chmod(0o2770)
        runtime = RUN_DIR / "smb" / vip.name
        for sub in ("lock", "cache", "pid", "ncalrpc", "log"):
            (runtime / sub).mkdir(parents=True, exist_ok=True)
        text = render_smb_conf(instance)
        if _read(Path(instance.config_file)) == text:
            return False
        Path(instance.config_file).write_text(text)
        return True

    def refresh(self, vip: VipService) -> None:
        """Bring the served VIP in line with the configuration (a changed cluster.json): Unix
        users, shares and smb.conf (the running smbd re-reads it), passdb."""
        instance = self.instance(vip)
        self._sync_node_users()
        if self._lay_out(vip, instance):
            subprocess.run(reload_argv(instance), capture_output=True, check=False, timeout=10)
            log.info("%s: smb.conf changed: smbd reloaded it", vip.name)
        self._sync_passdb(instance)

    def stop_smbd(self, vip: VipService) -> None:
        """Ask smbd and its samba-dcerpcd to shut down; kill what is left of the instance."""
        if self.zfs.exists(self.dataset(vip)) and Path(self.instance(vip).config_file).exists():
            for argv in stop_argvs(self.instance(vip)):
                subprocess.run(argv, capture_output=True, check=False, timeout=10)
        deadline = time.monotonic() + 5
        while self.smbd_pids(vip) and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in self.smbd_pids(vip):  # did not stop: named by its own smb.conf, nothing else
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- users ---------------------------------------------------------------------------------

    def _users_digest(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.config.users.items())).encode()).hexdigest()

    def _sync_node_users(self) -> None:
        marker = RUN_DIR / "users.sha256"  # node-local: the Unix users done on this boot
        digest = self._users_digest()
        if _read(marker) != digest:
            self._ensure_group_and_users()
            marker.write_text(digest)

    def _sync_passdb(self, instance: SambaInstance) -> None:
        marker = Path(instance.config_file).parent / "hafs-users.sha256"  # moves with the passdb
        digest = self._users_digest()
        if _read(marker) != digest:
            self._ensure_passdb(instance)
            marker.write_text(digest)

    def _ensure_group_and_users(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with open(RUN_DIR / "users.lock", "w") as lock:  # hooks of several vhids run at once
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._create_group_and_users()

    def _create_group_and_users(self) -> None:
        if subprocess.run(["getent", "group", GROUP], capture_output=True, check=False).returncode:
            argv = (
                ["pw", "groupadd", GROUP, "-g", str(GID)]
                if self.freebsd
                else ["groupadd", "-g", str(GID), GROUP]
            )
            subprocess.run(argv, check=True, capture_output=True)
        for user in self.config.users:
            if subprocess.run(["id", "-u", user], capture_output=True, check=False).returncode:
                uid = str(uid_of(user))
                argv = (
                    [
                        "pw",
                        "useradd",
                        user,
                        "-u",
                        uid,
                        "-g",
                        GROUP,
                        "-d",
                        "/nonexistent",
                        "-s",
                        "/usr/sbin/nologin",
                    ]
                    if self.freebsd
                    else [
                        "useradd",
                        "-M",
                        "-N",
                        "-u",
                        uid,
                        "-g",
                        GROUP,
                        "-s",
                        "/usr/sbin/nologin",
                        user,
                    ]
                )
                subprocess.run(argv, check=True, capture_output=True)

    def _ensure_passdb(self, instance: SambaInstance) -> None:
        """Make the VIP's passdb hold exactly the configured users: add the new ones, set every
        password (a changed one takes effect) and delete users no longer configured."""
        listed = subprocess.run(
            ["pdbedit", f"--configfile={instance.config_file}", "-L"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        present = {line.split(":")[0] for line in listed.splitlines() if ":" in line}
        for user, password in self.config.users.items():
            subprocess.run(
                add_user_argv(instance, user),
                input=f"{password}\n{password}\n",
                capture_output=True,
                text=True,
                check=True,
            )
        for user in sorted(present - set(self.config.users)):
            subprocess.run(delete_user_argv(instance, user), capture_output=True, check=True)
            log.info(
                "%s: user %s is no longer configured: removed from the passdb", instance.name, user
            )

    # --- tickle ACKs -------------------------------------------------------------------------

    def connections_file(self, vip: VipService) -> Path:
        return self.mountpoint(vip) / "samba" / "state" / "hafs-connections.json"

    def record_connections(self, vip: VipService) -> None:
        """Save the VIP's SMB clients (replicated with the data, read by the next holder)."""
        clients = [list(client) for client in host.smb_clients(vip.address)]
        self.connections_file(vip).write_text(json.dumps(clients))

    def _tickle(self, vip: VipService) -> None:
        try:
            clients = json.loads(self.connections_file(vip).read_text())
        except (OSError, ValueError):
            return
        if not clients:
            return
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as sock:
            sock.bind((str(vip.address), 0))
            for client, port in clients:
                segment = tickle_segment(vip.address, IPv4Address(client), 445, int(port))
                for _ in range(2):
                    with contextlib.suppress(OSError):
                        sock.sendto(segment, (client, 0))
        log.info("%s takeover: tickled %d client connection(s)", vip.name, len(clients))

    # --- replication ---------------------------------------------------------------------------

    def ssh(self, peer: str) -> list[str]:
        return [
            "ssh",
            "-i",
            self.config.ssh_key,
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={self.config.known_hosts}",
            "-o",
            f"ConnectTimeout={SSH_CONNECT_TIMEOUT}",
            "-o",
            "LogLevel=ERROR",
            f"root@{self.config.peers[peer]}",
        ]

    def remote_argv(self, peer: str, args: Sequence[str]) -> list[str]:
        command = shlex.join([*self.config.hafs_command, "service", *args])
        return [*self.ssh(peer), command]

    def remote(
        self, peer: str, args: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                self.remote_argv(peer, args),
                capture_output=True,
                text=True,
                check=False,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(exc.cmd, 124, "", "timed out")

    def snapshot(self, vip: VipService) -> str:
        name = datetime.now(UTC).strftime("hafs-%Y%m%dT%H%M%S%fZ")
        self.zfs.snapshot(f"{self.dataset(vip)}@{name}")
        return name

    def send(self, vip: VipService, peer: str) -> str:
        """Send the newest snapshot to ``peer``: incremental from the newest common one.

        The common one is the last snapshot ``peer`` acknowledged, when this process sent it
        one (one ssh round trip); else, or if that fails, it is looked up on the peer first.
        """
        local = self.zfs.snapshots(self.dataset(vip))
        if not local:
            raise ServiceError(f"{vip.name}: nothing to send: no snapshot")
        newest, names = local[-1], [s.name for s in local]
        acked = self.acked.get((vip.name, peer))
        if acked == newest.name:
            return acked
        if acked in names:
            try:
                return self._stream(vip, peer, newest.name, acked)
            except ServiceError as exc:
                log.info(
                    "%s: incremental to %s from %s failed (%s): asking it",
                    vip.name,
                    peer,
                    acked,
                    exc,
                )
        listed = self.remote(peer, ["snapshots", vip.name], 30)
        if listed.returncode != 0:
            raise ServiceError(f"{vip.name}: {peer} unreachable: {listed.stderr.strip()}")
        theirs = set(listed.stdout.split())
        if newest.name in theirs:
            self.acked[(vip.name, peer)] = newest.name
            return newest.name
        base = next((n for n in reversed(names) if n in theirs), None)
        return self._stream(vip, peer, newest.name, base)

    def _stream(self, vip: VipService, peer: str, snapshot: str, base: str | None) -> str:
        dataset = self.dataset(vip)
        args = ["receive", vip.name] + (["--base", base] if base else [])
        send = self.zfs.send_command(f"{dataset}@{snapshot}", f"{dataset}@{base}" if base else None)
        nice = ["nice", "-n", str(BACKGROUND_NICE)]
        with subprocess.Popen(
            [*nice, *send], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as sender:
            receiver = subprocess.run(
                [*nice, *self.remote_argv(peer, args)],
                stdin=sender.stdout,
                capture_output=True,
                text=True,
                check=False,
                timeout=SEND_TIMEOUT,
            )
            assert sender.stdout is not None
            sender.stdout.close()
            sender.wait(SEND_TIMEOUT)
        if sender.returncode != 0 or receiver.returncode != 0:
            self.acked.pop((vip.name, peer), None)
            raise ServiceError(
                f"{vip.name}: send to {peer} failed: {receiver.stderr.strip() or 'zfs send'}"
            )
        self.acked[(vip.name, peer)] = snapshot
        return snapshot

    def receive(self, vip: VipService, base: str | None, stream: Any) -> None:
        """The receiving end: roll back to ``base`` (or start over), receive, stay read-only."""
        dataset = self.dataset(vip)
        with self._receiving(vip), self.locked(vip):
            if self.smbd_pid(vip) is not None:
                raise ServiceError(f"{vip.name}: serving here: refusing to receive over it")
            if base is not None:
                self.zfs.rollback(f"{dataset}@{base}", destroy_newer=True)
            elif self.zfs.exists(dataset):
                # no common snapshot: this copy diverged (or was never sent). Keep it aside
                # for the operator instead of destroying data nobody else may have.
                aside = f"{dataset}-diverged-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
                self.zfs.unmount(dataset)  # zfs-fuse refuses to rename a mounted dataset
                self.zfs.rename(dataset, aside)
                log.warning(
                    "%s: no common snapshot with the sender: kept this copy as %s", vip.name, aside
                )
            subprocess.run(
                self.zfs.recv_command(dataset), stdin=stream, check=True, capture_output=True
            )
            self.zfs.set(dataset, "readonly", "on")
            self.prune(vip)

    def prune(self, vip: VipService) -> None:
        snapshots = self.zfs.snapshots(self.dataset(vip))
        for old in snapshots[: -self.config.keep_snapshots]:
            self.zfs.destroy_snapshot(old.full_name)

    def replicate(self, vip: VipService, record_clients: bool = True) -> dict[str, dict[str, Any]]:
        """Snapshot the VIP and send it to every other carrier; per peer: outcome and lag."""
        if record_clients:
            self.record_connections(vip)
        name = self.snapshot(vip)
        taken = time.time()
        peers = [p for p in vip.carriers if p != self.config.node and p in self.config.peers]

        def send_to(peer: str) -> dict[str, Any]:
            try:
                sent = self.send(vip, peer)
            except (ServiceError, ZfsError, subprocess.SubprocessError, OSError) as exc:
                log.warning("%s replication to %s: %s", vip.name, peer, exc)
                return {"ok": False, "error": str(exc), "at": time.time()}
            return {"ok": True, "snapshot": sent, "at": time.time(), "seconds": time.time() - taken}

        with ThreadPoolExecutor(max(1, len(peers))) as pool:  # every backup at once
            report = dict(zip(peers, pool.map(send_to, peers), strict=True))
        self.prune(vip)
        log.debug("%s snapshot %s sent: %s", vip.name, name, report)
        return report

    def handover(self, vip: VipService, peer: str) -> str:
        """Quiesce the VIP here, send the final incremental to ``peer``; the VIP moves next."""
        (RUN_DIR / f"{vip.name}.handover").write_text(str(time.time()))
        self.stepdown(vip, "handover")
        if not self.zfs.exists(self.dataset(vip)):  # never had a copy: nothing to send
            return ""
        self.snapshot(vip)
        return self.send(vip, peer)

    def handover_pending(self, vip: VipService) -> bool:
        marker = RUN_DIR / f"{vip.name}.handover"
        with contextlib.suppress(OSError, ValueError):
            return time.time() - float(marker.read_text()) < HANDOVER_GRACE
        return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
