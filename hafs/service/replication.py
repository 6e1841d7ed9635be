"""Replication: the holder snapshots a VIP and sends incrementals to every other carrier.

- :func:`replicate` (the service daemon, every ``replication_interval``): record the SMB
  clients, snapshot, send to every peer at once, prune. A VIP with nothing written since
  its newest snapshot gets no new one, and its peers that have that one get nothing: idle,
  replication costs a few local ``zfs`` commands a round, no ssh. The daemon's round
  (``routine``) sends only while this node holds the VIP, and waits for its sends one
  interval at most: a send still running then (a backup whose pool hangs takes the stream
  and never answers; a first send of a big dataset) goes on alone, and its peer is skipped
  until it ends (:class:`Sending`), so the other backups and VIPs stay as current as before.
- :func:`send`: incremental from the newest snapshot the peer has (remembered per peer, else
  asked), streamed over ssh into the receiver this node keeps running there
  (:mod:`hafs.service.receiver`), at nice 10.
- :func:`receive` (the receiving end): roll back to the common snapshot, receive, stay a
  read-only replica.
- Failback: a returning node pulls (:func:`pull`) the delta from the holder (``sync``), then
  its VIP (``handover``): the holder (:func:`serve_pull`) snapshots, or stops serving and
  seals, and writes the incremental back over that node's own ssh, received in its daemon;
  the VIP moves when the returning node drops its "resync" demotion and preempts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from hafs.service import divergence, space
from hafs.service.config import VipService
from hafs.service.receiver import SEND_TIMEOUT, Request, one_shot, read_line
from hafs.service.runtime import RUN_DIR, ServiceError
from hafs.service.zfs import ZfsError

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

HANDOVER_GRACE = 20.0  # a holder that quiesced for a handover serves again after this
BACKGROUND_NICE = 10  # replication's CPU priority: a takeover on the same CPUs comes first
BASE = "hafs:base:"  # + peer: a dataset property, the newest snapshot that peer has


def snapshot(services: NodeServices, vip: VipService) -> str:
    """Snapshot the VIP now; return the name of its newest snapshot, which then holds every
    write made until now.

    A new snapshot that holds nothing the one before it lacks is dropped again: an idle VIP
    keeps its newest snapshot, and a peer that has it needs no send (no ssh login, no Python
    on the peer, no receive). Whether anything was written is judged between two snapshots
    (:meth:`Zfs.unchanged`), never on the live dataset: a snapshot is the sync point that
    holds every write a client was told is done, also those still in memory, whereas the
    ``written`` of a live OpenZFS filesystem counts only what was synced (zfs-fuse has no
    ``written`` at all). When the comparison fails, the new snapshot stays.
    """
    zfs, dataset = services.zfs, services.dataset(vip)
    name = datetime.now(UTC).strftime("hafs-%Y%m%dT%H%M%S%fZ")
    zfs.snapshot(f"{dataset}@{name}")
    names = [s.name for s in zfs.snapshots(dataset)]
    at = names.index(name)
    if at == 0:
        return name
    try:
        same = zfs.unchanged(f"{dataset}@{names[at - 1]}", f"{dataset}@{name}")
    except ZfsError as exc:
        log.warning("%s: @%s kept: not compared with @%s (%s)", vip.name, name, names[at - 1], exc)
        return name
    if not same:
        return name
    zfs.destroy_snapshot(f"{dataset}@{name}")
    return names[at - 1]


def send(services: NodeServices, vip: VipService, peer: str, urgent: bool = False) -> str:
    """Send the newest snapshot to ``peer``: incremental from the newest common one.

    The common one is the last snapshot ``peer`` acknowledged, when this process sent it
    one (one ssh round trip; a pull that peer made since, served by another process, moved
    it on: the dataset's record says so); else, or if that fails, it is looked up on the
    peer first. One send to a peer at a time (:meth:`NodeServices.sending`). ``urgent``: the
    clients wait for it (a drain, a move): at the usual CPU priority on both ends, and over
    a login of its own, not the shared connection replication made at a low one.
    """
    with services.sending(vip, peer):
        return _send(services, vip, peer, urgent)


def _send(services: NodeServices, vip: VipService, peer: str, urgent: bool) -> str:
    names = [s.name for s in services.zfs.snapshots(services.dataset(vip))]
    if not names:
        raise ServiceError(f"{vip.name}: nothing to send: no snapshot")
    known = bases(services, vip)
    acked = services.acked.get((vip.name, peer))
    if acked is not None:
        acked = known.get(peer, acked)
    if acked == names[-1]:
        services.acked[(vip.name, peer)] = acked
        return acked
    if acked in names:
        try:
            return _stream(services, vip, peer, names, known, acked, urgent)
        except ServiceError as exc:
            log.info(
                "%s: incremental to %s from %s failed (%s): asking it", vip.name, peer, acked, exc
            )
    theirs = _peer_snapshots(services, vip, peer)
    if names[-1] in theirs:
        _acked(services, vip, peer, names[-1])
        return names[-1]
    return _stream(services, vip, peer, names, known, _newest_of(names, theirs), urgent)


def _peer_snapshots(services: NodeServices, vip: VipService, peer: str) -> set[str]:
    listed = services.remote(peer, ["snapshots", vip.name], 30)
    if listed.returncode != 0:
        raise ServiceError(f"{vip.name}: {peer} unreachable: {listed.stderr.strip()}")
    return set(listed.stdout.split())


def _newest_of(names: Sequence[str], theirs: set[str]) -> str | None:
    """The newest of ``names`` (oldest first) the peer has too: the incremental's base."""
    return next((n for n in reversed(names) if n in theirs), None)


def _for_receiver(
    names: Sequence[str], known: dict[str, str], base: str | None
) -> tuple[list[str], list[str]]:
    """What a receiver of ``base``..``names[-1]`` (our snapshots, oldest first) is told: the
    snapshots it keeps (this node's peers' bases, ``known``) and ours after the base (it may
    have some from a send that raced this one: they are not its own, not a divergence)."""
    ours = list(names[names.index(base) + 1 :]) if base in names else []
    return sorted(known.values()), ours


def _stream(
    services: NodeServices,
    vip: VipService,
    peer: str,
    names: Sequence[str],
    known: dict[str, str],
    base: str | None,
    urgent: bool,
) -> str:
    """Send ``base``..``names[-1]`` (our snapshots, oldest first) through the peer's
    receiver (:mod:`hafs.service.receiver`); ``known``: every peer's base, as recorded."""
    dataset, snapshot = services.dataset(vip), names[-1]
    keep, ours = _for_receiver(names, known, base)
    send = services.zfs.send_command(f"{dataset}@{snapshot}", f"{dataset}@{base}" if base else None)
    request = Request(base, keep, ours)
    try:
        if urgent:  # the clients wait: a login of its own, not the shared connection at nice 10
            one_shot(services, vip, peer, request, send, nice=[], urgent=True)
        else:
            nice = ["nice", "-n", str(BACKGROUND_NICE)]
            services.receivers.send(services, vip, peer, request, send, nice)
    except (ServiceError, OSError, subprocess.SubprocessError):
        services.acked.pop((vip.name, peer), None)
        raise
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
    then_prune: bool = True,
) -> None:
    """The receiving end: become the sender's copy, keeping aside whatever existed here only
    (:mod:`hafs.service.divergence`), receive, stay a read-only replica. ``then_prune``: off
    for a handover's receive (the clients wait; this node prunes as the holder soon) and for
    a receiver's (it prunes once it has answered: :func:`prune_replica`)."""
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
        if then_prune:
            prune(services, vip, keep)


def prune_replica(services: NodeServices, vip: VipService, keep: Sequence[str]) -> None:
    """A replica's retention after a receive that did not prune (``receive``'s
    ``then_prune``), under the VIP's lock as the receive was."""
    with services.locked(vip):
        prune(services, vip, keep)


def prune(services: NodeServices, vip: VipService, keep: Sequence[str] = ()) -> None:
    """Keep the newest ``keep_snapshots``, the newest one each carrier is known to have
    (on the holder: the base of its next incremental, however long it has been away), the
    one a send that outlived its round carries, and ``keep`` (on a receiver: the holder's
    list of those). A snapshot a kept-aside copy was cloned from stays too (zfs refuses to
    destroy it: that copy's common history)."""
    snapshots = services.zfs.snapshots(services.dataset(vip))
    sending = [s.snapshot for s in services.sending_still(vip).values()]
    kept = {*keep, *bases(services, vip).values(), *sending}
    for old in snapshots[: -services.config.keep_snapshots]:
        if old.name in kept:
            continue
        try:
            services.zfs.destroy_snapshot(old.full_name)
        except ZfsError as exc:
            if "dependent clones" not in exc.message:
                raise


@dataclass(frozen=True)
class Sending:
    """A send that outlived the round that started it: its peer is skipped until it ends."""

    snapshot: str  # what it sends: retention keeps it meanwhile
    began: float  # wall clock
    result: Future[dict[str, Any]]

    def still(self) -> dict[str, Any]:
        """The report of its peer while it runs."""
        began = datetime.fromtimestamp(self.began).strftime("%H:%M:%S")
        error = f"still sending @{self.snapshot} (since {began})"
        return {"ok": False, "error": error, "at": time.time()}


def replicate(
    services: NodeServices,
    vip: VipService,
    record_clients: bool = True,
    urgent: bool = False,
    to: str | None = None,
    routine: bool = False,
) -> dict[str, dict[str, Any]]:
    """Snapshot the VIP and send it to every other carrier that lacks it (``to``: to that
    one only; ``urgent``: see :func:`send`); per peer: outcome and lag. Nothing written since
    the newest snapshot: no new one (:func:`snapshot`), and a peer that acknowledged it gets
    nothing, not even an ssh login; with no send, nothing new to prune either. ``as_of``:
    the peer has every write made before then (this node's clock), whether its snapshot was
    taken in this round or is an older one that nothing was written after.

    ``routine`` (the daemon's round, not a final incremental or a drain's): nothing is sent
    unless this node still holds the VIP once the snapshot is taken (a pool that hung
    meanwhile held the round there while another node took the VIP over: this node's
    snapshot is then a branch the backups must not follow), and a send still running after
    one replication interval goes on alone (:class:`Sending`), its peer skipped until it
    ends."""
    if record_clients:
        services.record_connections(vip)
    taken = time.time()  # every write made before this is in the snapshot that follows
    name = snapshot(services, vip)
    config = services.config
    peers = [p for p in vip.carriers if p != config.node and p in config.peers and to in (None, p)]
    busy = services.sending_still(vip) if routine else {}
    behind = [p for p in peers if p not in busy and services.acked.get((vip.name, p)) != name]
    if behind and routine and not services.holds(vip):  # asked only when there is a send
        log.warning("%s: no longer held here once snapshotted: nothing sent", vip.name)
        return {}

    def send_to(peer: str) -> dict[str, Any]:
        try:
            sent = send(services, vip, peer, urgent)
        except (ServiceError, ZfsError, subprocess.SubprocessError, OSError) as exc:
            log.warning("%s replication to %s: %s", vip.name, peer, exc)
            return {"ok": False, "error": str(exc), "at": time.time()}
        done = time.time()
        return {"ok": True, "snapshot": sent, "as_of": taken, "at": done, "seconds": done - taken}

    current = {"ok": True, "snapshot": name, "as_of": taken, "at": taken, "seconds": 0.0}
    report = {peer: current for peer in peers}
    report.update({peer: sending.still() for peer, sending in busy.items() if peer in report})
    if behind:
        sends = {peer: _in_thread(f"send {vip.name} to {peer}", send_to, peer) for peer in behind}
        wait(sends.values(), timeout=config.replication_interval if routine else None)
        for peer, result in sends.items():
            if result.done():
                report[peer] = result.result()
            else:
                log.warning("%s: the send to %s goes on after the round", vip.name, peer)
                sending = Sending(name, taken, result)
                services.in_flight[(vip.name, peer)] = sending
                report[peer] = sending.still()
        prune(services, vip)
    log.debug("%s snapshot %s sent: %s", vip.name, name, report)
    return report


def _in_thread(
    name: str, func: Callable[[str], dict[str, Any]], arg: str
) -> Future[dict[str, Any]]:
    """``func(arg)`` on a thread of its own (a daemon thread: a send stuck on a hung peer
    never holds up the daemon's exit; its ssh ends with the daemon)."""
    result: Future[dict[str, Any]] = Future()

    def run() -> None:
        try:
            result.set_result(func(arg))
        except BaseException as exc:  # handed to whoever reads the result
            result.set_exception(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    return result


def serve_pull(
    services: NodeServices,
    vip: VipService,
    peer: str,
    since: str | None,
    out: IO[bytes],
    handover: bool = False,
) -> None:
    """The holder's side of a :func:`pull` by a returning ``peer``: snapshot the VIP (a
    ``handover``: quiesce it, which seals its last writes as the newest snapshot) and write
    it to ``out``, that peer's ssh: first a JSON line (snapshot, base, keep, theirs; no
    snapshot: this node has no copy), then the zfs stream. ``since``: the newest snapshot
    ``peer`` says it has; the base is settled before a handover's step-down, so the
    clients wait for the stream alone. Never beside a push of this node's daemon to that
    peer (:meth:`NodeServices.sending`)."""
    with services.sending(vip, peer):
        _serve_pull(services, vip, peer, since, out, handover)


def _serve_pull(
    services: NodeServices,
    vip: VipService,
    peer: str,
    since: str | None,
    out: IO[bytes],
    handover: bool,
) -> None:
    dataset = services.dataset(vip)
    base = None
    if services.zfs.exists(dataset):
        names = [s.name for s in services.zfs.snapshots(dataset)]
        base = since if since in names else _newest_of(names, _peer_snapshots(services, vip, peer))
    if handover:
        mark_handover(vip)
        services.stepdown(vip, "handover")
    elif services.zfs.exists(dataset):
        snapshot(services, vip)
    header: dict[str, Any] = {"snapshot": None, "base": None, "keep": [], "theirs": []}
    if services.zfs.exists(dataset):  # else it never had a copy: nothing to send
        names = [s.name for s in services.zfs.snapshots(dataset)]
        keep, ours = _for_receiver(names, bases(services, vip), base)
        header = {"snapshot": names[-1], "base": base, "keep": keep, "theirs": ours}
    out.write(json.dumps(header).encode() + b"\n")
    out.flush()
    if header["snapshot"] is None:
        return
    if header["snapshot"] != base:
        stream = services.zfs.send_command(
            f"{dataset}@{header['snapshot']}", f"{dataset}@{base}" if base else None
        )
        sent = subprocess.run(stream, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
        if sent.returncode != 0:
            raise ServiceError(f"{vip.name}: zfs send to {peer} failed: {sent.stderr.strip()}")
    _acked(services, vip, peer, header["snapshot"])  # retention keeps it: the next base


HEADER_FIELDS = {"snapshot", "base", "keep", "theirs"}


def _read_header(stream: IO[bytes]) -> dict[str, Any] | None:
    """The pull's JSON line (what follows it is the zfs stream, for ``zfs recv`` to read
    from the same descriptor). None: the holder said nothing (it refused: its stderr says
    why)."""
    line = read_line(stream.fileno())
    try:
        header = json.loads(line) if line is not None else None
    except ValueError:
        return None
    return header if isinstance(header, dict) and set(header) == HEADER_FIELDS else None


@dataclass(frozen=True)
class Pulled:
    snapshot: str | None  # the holder's newest; None: it has no copy (this node's stands)
    received: bool  # False: no copy there, or nothing this node lacks
    said: list[str]  # the holder's log lines (a handover's timed steps)


def pull(
    services: NodeServices, vip: VipService, holder: str, since: str | None, handover: bool
) -> Pulled:
    """A returning node brings its replica up to date from ``holder`` (``sync``), then
    takes the VIP back (``handover``: the holder stops serving and sends its last writes):
    the holder runs :func:`serve_pull` and writes the stream back over this node's own
    ssh, received here, in this process. No second login and no Python to start on this
    node, while the clients wait. Raises :class:`ServiceError` if it did not arrive whole."""
    operation = "handover" if handover else "sync"
    args = [operation, vip.name, "--to", services.config.node]
    args += ["--since", since] if since else []
    failure, header = None, None
    with tempfile.TemporaryFile() as said:
        pulling = subprocess.Popen(
            services.transport.remote_argv(holder, args), stdout=subprocess.PIPE, stderr=said
        )
        assert pulling.stdout is not None
        try:
            header = _read_header(pulling.stdout)
            if header is None:
                failure = "it sent nothing"
            elif header["snapshot"] not in (None, header["base"]):
                receive(
                    services, vip, header["base"], pulling.stdout,
                    header["keep"], header["theirs"], then_prune=not handover,
                )  # fmt: skip
            pulling.wait(SEND_TIMEOUT)
        except (ServiceError, ZfsError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
        finally:
            pulling.stdout.close()
            if pulling.poll() is None:
                pulling.kill()
                pulling.wait()
        said.seek(0)
        lines = said.read().decode(errors="replace").splitlines()
    if failure is None and pulling.returncode != 0:
        failure = f"exit status {pulling.returncode}"
    if failure is not None or header is None:
        why = lines[-1].strip() if lines else ""
        raise ServiceError(
            f"{vip.name}: {operation} from {holder} failed: {failure}: {why}".rstrip(": ")
        )
    newest = header["snapshot"]
    return Pulled(newest, newest not in (None, header["base"]), lines)


def _handover_marker(vip: VipService) -> Path:
    return RUN_DIR / f"{vip.name}.handover"


def mark_handover(vip: VipService) -> None:
    """This node stops serving the VIP for another to take it (a handback, a drain): its
    service daemon leaves the VIP alone for :data:`HANDOVER_GRACE`, not taking it over again."""
    _handover_marker(vip).write_text(str(time.time()))


def clear_handover(vip: VipService) -> None:
    """The VIP is served here again: the marker no longer holds."""
    _handover_marker(vip).unlink(missing_ok=True)


def handover_pending(vip: VipService) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return time.time() - float(_handover_marker(vip).read_text()) < HANDOVER_GRACE
    return False
