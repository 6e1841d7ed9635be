"""Replication: the holder snapshots a VIP and sends incrementals to every other carrier.

- :func:`replicate` (the service daemon, every ``replication_interval``): record the SMB
  clients, snapshot, send to every peer at once, prune.
- :func:`send`: incremental from the newest snapshot the peer has (remembered per peer, else
  asked), streamed over ssh into ``hafs service receive`` there, at nice 10.
- :func:`receive` (the receiving end): roll back to the common snapshot, receive, stay a
  read-only replica.
- Failback: a returning node pulls the delta (``sync``), then asks the holder to
  :func:`handover`: it stops serving, sends the final incremental, and the VIP moves when the
  returning node drops its "resync" demotion and preempts.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hafs.service import divergence, space
from hafs.service.config import VipService
from hafs.service.runtime import RUN_DIR, ServiceError
from hafs.service.zfs import ZfsError

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

SEND_TIMEOUT = 600.0
HANDOVER_GRACE = 20.0  # a holder that quiesced for a handover serves again after this
BACKGROUND_NICE = 10  # replication's CPU priority: a takeover on the same CPUs comes first
NO_COPY = 3  # exit status of `hafs service sync`: the holder has no copy of the VIP to send
BASE = "hafs:base:"  # + peer: a dataset property, the newest snapshot that peer has


def snapshot(services: NodeServices, vip: VipService) -> str:
    name = datetime.now(UTC).strftime("hafs-%Y%m%dT%H%M%S%fZ")
    services.zfs.snapshot(f"{services.dataset(vip)}@{name}")
    return name


def send(services: NodeServices, vip: VipService, peer: str) -> str:
    """Send the newest snapshot to ``peer``: incremental from the newest common one.

    The common one is the last snapshot ``peer`` acknowledged, when this process sent it
    one (one ssh round trip); else, or if that fails, it is looked up on the peer first.
    """
    local = services.zfs.snapshots(services.dataset(vip))
    if not local:
        raise ServiceError(f"{vip.name}: nothing to send: no snapshot")
    newest, names = local[-1], [s.name for s in local]
    acked = services.acked.get((vip.name, peer))
    if acked == newest.name:
        return acked
    if acked in names:
        try:
            return _stream(services, vip, peer, newest.name, acked)
        except ServiceError as exc:
            log.info(
                "%s: incremental to %s from %s failed (%s): asking it", vip.name, peer, acked, exc
            )
    listed = services.remote(peer, ["snapshots", vip.name], 30)
    if listed.returncode != 0:
        raise ServiceError(f"{vip.name}: {peer} unreachable: {listed.stderr.strip()}")
    theirs = set(listed.stdout.split())
    if newest.name in theirs:
        _acked(services, vip, peer, newest.name)
        return newest.name
    base = next((n for n in reversed(names) if n in theirs), None)
    return _stream(services, vip, peer, newest.name, base)


def _stream(
    services: NodeServices, vip: VipService, peer: str, snapshot: str, base: str | None
) -> str:
    dataset = services.dataset(vip)
    keep = sorted(bases(services, vip).values())  # the receiver keeps them too
    args = ["receive", vip.name] + (["--base", base] if base else [])
    args += ["--keep", ",".join(keep)] if keep else []
    if base:  # ours after the base: the receiver may have some from a send that raced this one
        names = [s.name for s in services.zfs.snapshots(dataset)]
        ours = names[names.index(base) + 1 : names.index(snapshot) + 1] if base in names else []
        args += ["--theirs", ",".join(ours)] if ours else []
    send = services.zfs.send_command(f"{dataset}@{snapshot}", f"{dataset}@{base}" if base else None)
    nice = ["nice", "-n", str(BACKGROUND_NICE)]
    with subprocess.Popen([*nice, *send], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as sender:
        receiver = subprocess.run(
            [*nice, *services.transport.remote_argv(peer, args)],
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
        services.acked.pop((vip.name, peer), None)
        raise ServiceError(
            f"{vip.name}: send to {peer} failed: {receiver.stderr.strip() or 'zfs send'}"
        )
    for line in receiver.stderr.splitlines():  # the receiver's news (DIVERGED: a copy kept
        if " WARNING " in line or " ERROR " in line:  # aside) goes back over ssh: said here too
            log.warning("%s: %s says: %s", vip.name, peer, line)
    _acked(services, vip, peer, snapshot)
    return snapshot


def _acked(services: NodeServices, vip: VipService, peer: str, snapshot: str) -> None:
    """``peer`` has ``snapshot``: the next incremental starts there, and retention keeps it
    (recorded on the dataset, so a restarted daemon knows it too)."""
    if services.acked.get((vip.name, peer)) != snapshot:
        services.zfs.set(services.dataset(vip), BASE + peer, snapshot)
    services.acked[(vip.name, peer)] = snapshot


def keep_bases_at_takeover(services: NodeServices, vip: VipService) -> None:
    """A replica becomes the holder: every other carrier it knows no base for (the old holder
    above all, which may be dead and come back hours later) is taken to have the newest
    snapshot received here, so retention keeps it until a send says better. Keeping one
    too many costs a snapshot; pruning the one a peer has costs a full-size receive."""
    dataset = services.dataset(vip)
    here = [s.name for s in services.zfs.snapshots(dataset)]
    if not here:
        return
    known = bases(services, vip)
    for peer in vip.carriers:
        if peer != services.config.node and known.get(peer) not in here:
            services.zfs.set(dataset, BASE + peer, here[-1])


def bases(services: NodeServices, vip: VipService) -> dict[str, str]:
    """Per carrier, the newest snapshot it is known to have: its next incremental's base."""
    found = services.zfs.user_properties(services.dataset(vip))
    return {
        peer: found[BASE + peer]
        for peer in vip.carriers
        if peer != services.config.node and BASE + peer in found
    }


def receive(
    services: NodeServices,
    vip: VipService,
    base: str | None,
    stream: Any,
    keep: Sequence[str] = (),
    theirs: Sequence[str] = (),
) -> None:
    """The receiving end: become the sender's copy, keeping aside whatever existed here only
    (:mod:`hafs.service.divergence`), receive, stay a read-only replica."""
    zfs, dataset = services.zfs, services.dataset(vip)
    with services.receiving(vip), services.locked(vip):
        if services.smbd_pid(vip) is not None:
            raise ServiceError(f"{vip.name}: serving here: refusing to receive over it")
        divergence.finish_interrupted(services, vip)
        if zfs.exists(dataset):
            if divergence.seal(services, vip, "served here until a crash, never stepped down"):
                space.unlimit(services, vip)  # its limit as served: the sender's data decides
            if base is None:  # no common snapshot: this copy diverged (or was never sent)
                divergence.keep_whole(services, vip)
            else:  # then @base is the newest snapshot: recv -F rolls back to it (stray atimes)
                divergence.keep_aside(services, vip, base, theirs)
        received = subprocess.run(
            zfs.recv_command(dataset), stdin=stream, capture_output=True, text=True, check=False
        )
        if received.returncode != 0:  # one line for the sender's log, never a traceback
            why = " ".join(received.stderr.split()) or f"exit status {received.returncode}"
            raise ServiceError(f"{vip.name}: zfs recv into {dataset} failed: {why}")
        zfs.set(dataset, "readonly", "on")
        prune(services, vip, keep)


def prune(services: NodeServices, vip: VipService, keep: Sequence[str] = ()) -> None:
    """Keep the newest ``keep_snapshots``, the newest one each carrier is known to have
    (on the holder: the base of its next incremental, however long it has been away) and
    ``keep`` (on a receiver: the holder's list of those). A snapshot a kept-aside copy was
    cloned from stays too (zfs refuses to destroy it: that copy's common history)."""
    snapshots = services.zfs.snapshots(services.dataset(vip))
    kept = {*keep, *bases(services, vip).values()}
    for old in snapshots[: -services.config.keep_snapshots]:
        if old.name in kept:
            continue
        try:
            services.zfs.destroy_snapshot(old.full_name)
        except ZfsError as exc:
            if "dependent clones" not in exc.message:
                raise


def replicate(
    services: NodeServices, vip: VipService, record_clients: bool = True
) -> dict[str, dict[str, Any]]:
    """Snapshot the VIP and send it to every other carrier; per peer: outcome and lag."""
    if record_clients:
        services.record_connections(vip)
    name = snapshot(services, vip)
    taken = time.time()
    config = services.config
    peers = [p for p in vip.carriers if p != config.node and p in config.peers]

    def send_to(peer: str) -> dict[str, Any]:
        try:
            sent = send(services, vip, peer)
        except (ServiceError, ZfsError, subprocess.SubprocessError, OSError) as exc:
            log.warning("%s replication to %s: %s", vip.name, peer, exc)
            return {"ok": False, "error": str(exc), "at": time.time()}
        return {"ok": True, "snapshot": sent, "at": time.time(), "seconds": time.time() - taken}

    with ThreadPoolExecutor(max(1, len(peers))) as pool:  # every backup at once
        report = dict(zip(peers, pool.map(send_to, peers), strict=True))
    prune(services, vip)
    log.debug("%s snapshot %s sent: %s", vip.name, name, report)
    return report


def handover(services: NodeServices, vip: VipService, peer: str, since: str | None = None) -> str:
    """Quiesce the VIP here, send the final incremental to ``peer``; the VIP moves next.
    ``since``: the newest snapshot ``peer`` says it has (it just synced), so the send need
    not ask it first: the clients wait for this one."""
    (RUN_DIR / f"{vip.name}.handover").write_text(str(time.time()))
    services.stepdown(vip, "handover")  # seals: its last writes are the newest snapshot
    if not services.zfs.exists(services.dataset(vip)):  # never had a copy: nothing to send
        return ""
    if since is not None:
        services.acked[(vip.name, peer)] = since  # not one of ours: send() asks after all
    return send(services, vip, peer)


def handover_pending(vip: VipService) -> bool:
    marker = RUN_DIR / f"{vip.name}.handover"
    with contextlib.suppress(OSError, ValueError):
        return time.time() - float(marker.read_text()) < HANDOVER_GRACE
    return False
