"""What moves with a VIP, on the node that runs this: its dataset and its smbd instance.

A VIP's service is the dataset ``<pool>/hafs/<vip>`` (``shares/<share>`` for the data,
``samba/private`` and ``samba/state`` for Samba's passdb and state, ``samba/smb.conf``) and one
smbd bound to the VIP alone, with its volatile directories in ``/var/run/hafs/smb/<vip>``.

:class:`NodeServices` is the node's view of them (where a VIP's things are, whether it is
held, served, writable; one operation of a VIP at a time) and the one handle the daemon and
the CLI use. Each operation lives in the module named for it:

- :mod:`hafs.service.takeover`: takeover (MASTER) and step-down (BACKUP/INIT), timed steps;
- :mod:`hafs.service.replication`: snapshots, sends and receives, handover on failback;
- :mod:`hafs.service.smbd`: the VIP's smbd; :mod:`hafs.service.users`: Unix users, passdb;
- :mod:`hafs.service.announce`: tickle ACKs; :mod:`hafs.service.transport`: ssh to peers;
  :mod:`hafs.service.receiver`: the receivers replication keeps running on them;
- :mod:`hafs.service.space`: the served shares' limit (room for replication on a full pool).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from hafs.carp import control
from hafs.service import (
    announce,
    divergence,
    host,
    mounts,
    replication,
    smbd,
    space,
    takeover,
)
from hafs.service.config import ServiceConfig, VipService
from hafs.service.receiver import Receivers
from hafs.service.runtime import RUN_DIR
from hafs.service.samba import SambaDirs, SambaInstance, SambaShare
from hafs.service.transport import Transport
from hafs.service.zfs import Zfs, ZfsError

log = logging.getLogger("hafs.service")


def smbd_pids(vip: VipService, processes: dict[int, list[str]]) -> list[int]:
    """Of ``processes`` (:func:`host.processes`), those of the VIP's smbd: every smbd whose
    command line names its smb.conf (smbd forks one per client; a stale pid file never names
    a stranger)."""
    config = f"/{vip.name}/samba/smb.conf"
    return [
        pid
        for pid, argv in processes.items()
        if argv[0].endswith("smbd") and any(a.endswith(config) for a in argv[1:])
    ]


@dataclass(frozen=True)
class Look:
    """What the node's kernel said at one moment, by VIP name: the VIPs whose address is
    here (CARP master: the agent is not asked) and those whose smbd runs."""

    addressed: frozenset[str]
    smbd: frozenset[str]


class NodeServices:
    """The services of the VIPs this node carries."""

    def __init__(self, config: ServiceConfig, zfs: Zfs | None = None) -> None:
        self.config = config
        self.zfs = zfs or Zfs()
        self.acked: dict[tuple[str, str], str] = {}  # (vip, peer) -> last snapshot it took
        # (vip, peer) -> a send that outlived its round (replication.replicate)
        self.in_flight: dict[tuple[str, str], replication.Sending] = {}
        self.receivers = Receivers()  # this node's sessions with its peers' receivers

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

    @property
    def transport(self) -> Transport:
        return Transport(self.config)  # the config of now: a reload replaces it

    # --- what is true now -------------------------------------------------------------------

    def smbd_pids(self, vip: VipService) -> list[int]:
        """The processes of this VIP's smbd (:func:`smbd_pids`)."""
        return smbd_pids(vip, host.processes())

    def look(self) -> Look:
        """The VIPs whose address is here, and those whose smbd runs here, from one look at
        the addresses and one at the processes for all of them (the service daemon looks
        every round; per VIP, that was one ``ip`` and one scan of ``/proc`` each)."""
        vips = self.config.vips
        here = host.holding([(v.address, v.vhid) for v in vips])
        processes = host.processes()
        return Look(
            addressed=frozenset(v.name for v in vips if (v.address, v.vhid) in here),
            smbd=frozenset(v.name for v in vips if smbd_pids(v, processes)),
        )

    def smbd_pid(self, vip: VipService) -> int | None:
        """The VIP's smbd, if one runs (its lowest pid: the parent of the client forks)."""
        pids = self.smbd_pids(vip)
        return min(pids) if pids else None

    def holds(self, vip: VipService) -> bool:
        """Is this node the VIP's CARP master, with the address in place?

        With ``hafs agent`` (Linux), the agent must say MASTER too: the address is the
        kernel's and outlives an agent that was killed or is stalled, while another node has
        taken the VIP over. Such a node must neither serve nor replicate (two holders sending
        into the same backups); an agent that does not answer says nothing."""
        if not host.holds(vip.address, vip.vhid):
            return False
        if self.config.agent_socket is None:  # FreeBSD's kernel CARP (or ucarp): the address
            return True
        try:
            status = control.request(self.config.agent_socket, {"op": "status"})
        except control.ControlError as exc:
            log.warning("%s: held, but the agent does not answer (%s): not ours", vip.name, exc)
            return False
        return any(v["vhid"] == vip.vhid and v["state"] == "MASTER" for v in status["vhids"])

    def served(self, vip: VipService) -> bool:
        """Does the dataset exist, mounted and marked served (a takeover made it writable,
        and no step-down has sealed it since)? One question to zfs, and no write: the
        service daemon asks every round, and a write probe (:meth:`writable`) is a change to
        the dataset, which an idle VIP would then snapshot and send every round."""
        try:
            mounted, served = self.zfs.values(self.dataset(vip), "mounted", divergence.SERVED)
        except ZfsError as exc:
            if exc.missing:
                return False
            raise
        return mounted == "yes" and served == "on"

    def writable(self, vip: VipService) -> bool:
        """Is the dataset mounted, and can it be written? Probed with a real write: zfs-fuse
        reports a temporary readonly=off and lets access(2) say yes on a read-only dataset
        (and the directory under an unmounted dataset is writable too)."""
        try:
            if not self.zfs.mounted(self.dataset(vip)):
                return False
            probe = self.mountpoint(vip) / ".hafs-write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:  # full is writable (served, clients get DISK_FULL): no takeover
            return exc.errno in (errno.ENOSPC, errno.EDQUOT)
        except ZfsError:
            return False
        return True

    # --- one operation of a VIP at a time ---------------------------------------------------

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
                log.info("%s: waiting for the operation in progress", vip.name)
                if not abort_receive:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                while abort_receive:  # a receive that registers meanwhile is aborted too
                    self._abort_receives(vip)
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        time.sleep(0.05)
            yield

    @contextlib.contextmanager
    def sending(self, vip: VipService, peer: str) -> Iterator[None]:
        """One send of the VIP to ``peer`` at a time on this node, from choosing its base to
        recording what the peer then has: the daemon's push and a pull that peer asked for
        (``hafs service sync|handover``, another process) each start where the other ended.
        Without it, a push from a base older than a pull's rolled the peer back past the
        snapshot that pull had just named as its base, and the pull's receive failed."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        with open(RUN_DIR / f"{vip.name}.send.{peer}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def receiving(self, vip: VipService) -> Iterator[None]:
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
        """Kill the process group of every receive of the VIP, running or waiting, all from
        one look at the processes (a queued receive must not take the lock in between). A
        peer's receive runs as ``hafs service receive`` or, through a deployed node's forced
        command, as ``hafs service ssh-command``: either is a live registration."""
        processes = host.processes()
        doomed = []
        for path in RUN_DIR.glob(f"{vip.name}.receiving.*"):
            pgid = path.suffix[1:]
            argv = processes.get(int(pgid), []) if pgid.isdigit() else []
            if "service" in argv and {"receive", "receiver", "ssh-command"} & set(argv):
                doomed.append(int(pgid))
            path.unlink(missing_ok=True)  # killed now, or stale: that process is gone
        for group in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
                log.info("%s takeover: aborted a receive in progress (pid %s)", vip.name, group)

    # --- operations (each in its own module) --------------------------------------------------

    def takeover(
        self, vip: VipService, previous_master: str | None = None, fresh: bool = False
    ) -> None:
        takeover.takeover(self, vip, previous_master, fresh)

    def remount(self, vip: VipService) -> None:
        with self.locked(vip):  # not under a receive
            mounts.remount(self, vip)

    def stepdown(self, vip: VipService, action: str = "step-down") -> None:
        takeover.stepdown(self, vip, action)

    def start_smbd(self, vip: VipService) -> None:
        smbd.start(self, vip)

    def stop_smbd(self, vip: VipService) -> None:
        smbd.stop(self, vip)

    def refresh(self, vip: VipService) -> None:
        smbd.refresh(self, vip)

    def limit(self, vip: VipService) -> int:
        return space.limit(self, vip)

    def record_connections(self, vip: VipService) -> None:
        announce.record_connections(vip.address, self.mountpoint(vip))

    def tickle(self, vip: VipService) -> None:
        announce.tickle(vip.name, vip.address, self.mountpoint(vip))

    def remote(
        self, peer: str, args: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return self.transport.remote(peer, args, timeout)

    def forget_acks(self, vip: VipService) -> None:
        """The next send of the VIP to each peer asks it which snapshots it has."""
        for key in list(self.acked):  # list(): a send that outlived its round may add one
            if key[0] == vip.name:
                self.acked.pop(key, None)

    def sending_still(self, vip: VipService) -> dict[str, replication.Sending]:
        """By peer, the sends of the VIP that outlived their round and still run."""
        for key, sending in list(self.in_flight.items()):
            if sending.result.done():
                del self.in_flight[key]
        return {peer: s for (name, peer), s in self.in_flight.items() if name == vip.name}

    def snapshot(self, vip: VipService) -> str:
        return replication.snapshot(self, vip)

    def send(self, vip: VipService, peer: str, urgent: bool = False) -> str:
        return replication.send(self, vip, peer, urgent)

    def receive(
        self,
        vip: VipService,
        base: str | None,
        stream: Any,
        keep: Sequence[str] = (),
        theirs: Sequence[str] = (),
        then_prune: bool = True,
    ) -> None:
        replication.receive(self, vip, base, stream, keep, theirs, then_prune)

    def prune_replica(self, vip: VipService, keep: Sequence[str]) -> None:
        replication.prune_replica(self, vip, keep)

    def replicate(
        self,
        vip: VipService,
        record_clients: bool = True,
        urgent: bool = False,
        to: str | None = None,
        routine: bool = False,
    ) -> dict[str, dict[str, Any]]:
        return replication.replicate(self, vip, record_clients, urgent, to, routine)

    def serve_pull(
        self, vip: VipService, peer: str, since: str | None, out: IO[bytes], handover: bool
    ) -> None:
        replication.serve_pull(self, vip, peer, since, out, handover)

    def pull(
        self, vip: VipService, holder: str, since: str | None, handover: bool = False
    ) -> replication.Pulled:
        return replication.pull(self, vip, holder, since, handover)

    def handover_pending(self, vip: VipService) -> bool:
        return replication.handover_pending(vip)
