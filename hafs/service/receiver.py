"""A long-lived receiver per VIP and peer: replication's sends without a login or a Python
start each.

A send used to be one ``ssh peer 'hafs service receive ...'``: over the shared connection
no key exchange, but sshd's session, the forced command's Python and its imports (0.5 s on a
busy lab node, more than the zfs work of a quiet round) and its exit, for every send. Now
the holder keeps one ``hafs service receiver VIP`` running on each peer it replicates to
(:class:`Session`) and sends through it, one request at a time:

1. the peer says hello (a JSON line) once, when it started;
2. the holder writes a request (a JSON line: base, keep, theirs, as ``receive``'s options)
   and then the zfs stream, ``zfs send`` writing straight into the ssh pipe;
3. the peer reads the line byte by byte (no read-ahead into the stream), runs
   :func:`hafs.service.replication.receive` with ``zfs recv`` reading the same descriptor,
   answers one JSON line, and then prunes its old snapshots (the holder need not wait for
   that: 3 zfs commands, 0.05-0.1 s). ``zfs recv`` reads a stream up to its end record and no
   further: libzfs reads records by their lengths (a ``-I`` package ends with its own end
   record), and zfs-fuse's recv, given a stream followed by more bytes, exits at its end
   and leaves them (checked by hand); every round in the lab sends through one session.
   The holder writes the next request only after the answer.

A receive that failed leaves the rest of its stream in the pipe: the peer answers and exits,
and the holder starts a new session for its next send. A peer that cannot run a receiver
(an older hafs, whose forced command refuses the operation) says no hello: its sends go
the old way (:func:`one_shot`) for :data:`MAX_AGE` seconds, then it is asked again. A
session unused for :data:`IDLE_CLOSE` seconds is closed: an idle VIP holds no process on
its peers; one older than :data:`MAX_AGE` too, so that a peer's new config or hafs takes
over within minutes of a deploy. The peer's log lines come back over ssh's stderr as with
one receive per login: warnings (a copy kept aside) are logged here too.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import select
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from hafs.errors import HafsError
from hafs.service.config import VipService
from hafs.service.runtime import ServiceError

if TYPE_CHECKING:
    from hafs.service.node import NodeServices

log = logging.getLogger("hafs.service")

SEND_TIMEOUT = 600.0
HELLO_TIMEOUT = 10.0  # a peer's Python starting on a busy node: seconds, not minutes
ANSWER_TIMEOUT = 60.0  # after zfs send ended: the peer's recv is a pipe's worth behind
IDLE_CLOSE = 60.0  # the shared ssh connection's ControlPersist: both go together
MAX_AGE = 600.0  # then a new one: the peer's config and code, as deployed since, take over
LINE_LIMIT = 1 << 20
SSH_FAILED = 255  # ssh's own exit status: no connection (a refusing forced command exits 2)
PROTOCOL = 1


@dataclass(frozen=True)
class Request:
    """What ``hafs service receive`` takes as options: the incremental's base (None: a full
    stream), the snapshots retention keeps there, the sender's snapshots after the base."""

    base: str | None
    keep: Sequence[str] = ()
    theirs: Sequence[str] = ()

    def line(self) -> bytes:
        fields = {"base": self.base, "keep": list(self.keep), "theirs": list(self.theirs)}
        return json.dumps(fields).encode() + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> Request:
        """The request a line says; :class:`ServiceError` naming what is wrong."""
        try:
            fields = json.loads(line)
        except ValueError:
            raise ServiceError("receiver: a request that is not JSON") from None
        if not isinstance(fields, dict) or set(fields) != {"base", "keep", "theirs"}:
            raise ServiceError("receiver: a request needs exactly base, keep and theirs")
        base, keep, theirs = fields["base"], fields["keep"], fields["theirs"]
        names = [*keep, *theirs] if isinstance(keep, list) and isinstance(theirs, list) else [0]
        if not (base is None or isinstance(base, str)) or not all(
            isinstance(n, str) for n in names
        ):
            raise ServiceError("receiver: base must be a name or null, keep and theirs lists")
        return cls(base, tuple(keep), tuple(theirs))


def read_line(fd: int) -> bytes | None:
    """One line from ``fd``, byte by byte, so that nothing after it is taken from the pipe
    (a zfs stream follows, for ``zfs recv`` to read from the same descriptor). None: the
    pipe ended first, or the line is longer than :data:`LINE_LIMIT`."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte or len(line) >= LINE_LIMIT:
            return None
        line += byte
    return bytes(line)


def _say(out: IO[bytes], **fields: Any) -> None:
    out.write(json.dumps(fields).encode() + b"\n")
    out.flush()


def serve(services: NodeServices, vip: VipService, fd: int, out: IO[bytes]) -> int:
    """The peer's end (``hafs service receiver VIP``): receive streams of ``vip`` from
    ``fd`` until it ends, answering each on ``out``. Returns the exit status: 0 when the
    holder closed the session, 1 after a failed receive (the rest of its stream is unread:
    the session cannot go on)."""
    _say(out, ok=True, receiver=PROTOCOL)
    while (line := read_line(fd)) is not None:
        try:
            request = Request.parse(line)
            services.receive(vip, request.base, fd, request.keep, request.theirs, then_prune=False)
        except (HafsError, OSError, subprocess.SubprocessError) as exc:
            _say(out, ok=False, error=str(exc))
            return 1
        _say(out, ok=True)
        try:  # the stream is in: a failed prune is tried again after the next one
            services.prune_replica(vip, request.keep)
        except (HafsError, OSError, subprocess.SubprocessError) as exc:
            log.warning("%s: old snapshots not pruned: %s", vip.name, exc)
    return 0


class Session:
    """The holder's end: one ``hafs service receiver`` on a peer over ssh (``argv``)."""

    def __init__(self, name: str, argv: Sequence[str]) -> None:
        self.name = name  # "<vip>: <peer>", for the log
        self.argv = list(argv)  # a reload that changes the peer's address or key: a new one
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.said: collections.deque[str] = collections.deque(maxlen=3)
        self.started = self.used = time.monotonic()
        self.busy = False  # a send runs through it (one may outlive the daemon's round)
        self.relay = threading.Thread(target=self._relay, name=f"said {name}", daemon=True)
        self.relay.start()

    def _relay(self) -> None:
        """The peer's log lines (its stderr): warnings logged here, the last kept for errors."""
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.said.append(line)
            if " WARNING " in line or " ERROR " in line:
                log.warning("%s says: %s", self.name, line)

    def _answer(self, timeout: float) -> dict[str, Any] | None:
        """The peer's next JSON line, or None if it ended or said nothing in time."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return None
        line = read_line(fd)
        with contextlib.suppress(ValueError):
            answer = json.loads(line) if line is not None else None
            return answer if isinstance(answer, dict) else None
        return None

    def hello(self) -> bool:
        """Did the peer start a receiver? (No: an older hafs refused, or it is unreachable.)"""
        answer = self._answer(HELLO_TIMEOUT)
        return answer is not None and answer.get("receiver") == PROTOCOL

    def send(self, request: Request, send_argv: Sequence[str]) -> None:
        """Write ``request`` and the output of ``send_argv`` (``zfs send ...``); return when
        the peer received it, else raise :class:`ServiceError` (then the session is over)."""
        self.busy = True
        try:
            self._send(request, send_argv)
        finally:
            self.busy = False

    def _send(self, request: Request, send_argv: Sequence[str]) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(request.line())
            self.process.stdin.flush()
            sender = subprocess.run(
                send_argv,
                stdout=self.process.stdin,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
                timeout=SEND_TIMEOUT,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise self._failed(f"the stream did not go through: {exc}") from None
        self.used = time.monotonic()
        if sender.returncode != 0:  # a stream cut short: closing ends the peer's zfs recv
            raise self._failed(f"zfs send: {sender.stderr.strip() or sender.returncode}")
        answer = self._answer(ANSWER_TIMEOUT)
        if answer is None:
            raise self._failed("no answer")
        if not answer.get("ok"):
            raise self._failed(str(answer.get("error", "?")))

    def _failed(self, why: str) -> ServiceError:
        self.close()
        last = f" ({self.said[-1].strip()})" if self.said and why == "no answer" else ""
        return ServiceError(f"{self.name}: {why}{last}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """End the session: the peer reads the end of its input and exits."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.relay.join(5)  # its last words are in said


class Receivers:
    """The holder's sessions, one per (VIP, peer); used under :meth:`NodeServices.sending`."""

    def __init__(self) -> None:
        self.sessions: dict[tuple[str, str], Session] = {}
        self.refused: dict[str, float] = {}  # peer -> when it last refused to run a receiver
        self.lock = threading.Lock()  # the dict itself: sends to several peers run at once

    def send(
        self,
        services: NodeServices,
        vip: VipService,
        peer: str,
        request: Request,
        send_argv: Sequence[str],
        nice: Sequence[str],
    ) -> None:
        """Send through the (VIP, peer) session, started if there is none; a peer that
        cannot run one gets this send the old way (:func:`one_shot`)."""
        session = self._session(services, vip, peer, nice)
        if session is None:
            one_shot(services, vip, peer, request, send_argv, nice)
            return
        try:
            session.send(request, [*nice, *send_argv])
        except ServiceError:  # the session is over (closed): the next send starts one
            with self.lock:
                self.sessions.pop((vip.name, peer), None)
            raise

    def _session(
        self, services: NodeServices, vip: VipService, peer: str, nice: Sequence[str]
    ) -> Session | None:
        key = (vip.name, peer)
        if time.monotonic() - self.refused.get(peer, -MAX_AGE) < MAX_AGE:
            return None  # an older hafs there: not asked again until it may have been updated
        argv = [*nice, *services.transport.remote_argv(peer, ["receiver", vip.name], shared=True)]
        with self.lock:
            session = self.sessions.get(key)
        if session is not None and session.alive() and session.argv == argv:
            return session
        if session is not None:  # ended, or the peer's address or key changed (a reload)
            with self.lock:
                self.sessions.pop(key, None)
            session.close()
        session = Session(f"{vip.name}: {peer}", argv)
        if not session.hello():
            session.close()
            why = session.said[-1] if session.said else "no answer"
            if session.process.returncode == SSH_FAILED:
                raise ServiceError(f"{vip.name}: {peer} unreachable: {why}")
            log.info("%s: %s runs no receiver (%s): one login per send", vip.name, peer, why)
            self.refused[peer] = time.monotonic()
            return None
        with self.lock:
            self.sessions[key] = session
        return session

    def close_idle(self, now: float | None = None) -> None:
        """Close every session unused for :data:`IDLE_CLOSE` s, older than :data:`MAX_AGE`
        s, or ended (the daemon, every round), unless a send runs through it."""
        now = time.monotonic() if now is None else now
        self._close_where(
            lambda s: (
                not s.busy
                and (now - s.used > IDLE_CLOSE or now - s.started > MAX_AGE or not s.alive())
            )
        )

    def close_all(self) -> None:
        """Close every session, a send's too (the daemon re-executes itself)."""
        self._close_where(lambda s: True)

    def _close_where(self, closing: Callable[[Session], bool]) -> None:
        with self.lock:
            keys = [k for k, s in self.sessions.items() if closing(s)]
            closed = [self.sessions.pop(k) for k in keys]
        for session in closed:  # outside the lock: a close waits for the peer's exit
            session.close()


def one_shot(
    services: NodeServices,
    vip: VipService,
    peer: str,
    request: Request,
    send_argv: Sequence[str],
    nice: Sequence[str],
    urgent: bool = False,
) -> None:
    """One send as one ``ssh peer 'hafs service receive ...'`` (a peer without a receiver);
    ``urgent`` (the clients wait: drain, move): over a login of its own, received there at
    the usual CPU priority, not through the shared connection replication runs at nice 10."""
    args = ["receive", vip.name] + (["--base", request.base] if request.base else [])
    args += ["--keep", ",".join(request.keep)] if request.keep else []
    args += ["--theirs", ",".join(request.theirs)] if request.theirs else []
    args += ["--urgent"] if urgent else []
    with subprocess.Popen(
        [*nice, *send_argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as sender:
        receiver = subprocess.run(
            [*nice, *services.transport.remote_argv(peer, args, shared=not urgent)],
            stdin=sender.stdout,
            capture_output=True,
            text=True,
            check=False,
            timeout=SEND_TIMEOUT,
        )
        assert sender.stdout is not None
        sender.stdout.close()
        sender.wait(SEND_TIMEOUT)
    for line in receiver.stderr.splitlines():  # the receiver's news (DIVERGED: a copy kept
        if " WARNING " in line or " ERROR " in line:  # aside) goes back over ssh: said here too
            log.warning("%s: %s says: %s", vip.name, peer, line)
    if sender.returncode != 0 or receiver.returncode != 0:
        raise ServiceError(
            f"{vip.name}: send to {peer} failed: {receiver.stderr.strip() or 'zfs send'}"
        )
