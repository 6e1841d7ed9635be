"""`hafs verify --failover`: a failover drill, timed from a client's point of view.

Theory of operation
-------------------
The drill starts from a passing :func:`hafs.verify.run_verify` (it knows who holds what from
the ``IPC$`` comment) and a :class:`Monitor` that polls every VIP every ``interval`` (100 ms;
polls overlap, each with a short timeout). A poll reads the canary of every share that has one
(lists the root of the others) over a session it reuses or makes: then it has *served*; a new
session then lists the shares, which names the holder: then it has *answered*. Every poll is
kept as a :class:`Sample`, so the report and the timeline picture are built from the same
observations.

Then, for each node in turn (a *round*):

1. note the VIPs it holds now; write a fresh canary into every writable share of them and wait
   ``settle`` seconds (by default two replication intervals: one until the next snapshot, one
   for its send) so the backups have it;
2. **kill** it (:class:`Killer`): the first poll begun after the kill that answers from
   another node names the new holder; RTO is the time from the kill until the first poll of
   the unbroken run of served polls leading to it served (on a fresh smbd the first share
   list waits about a second for samba-dcerpcd; clients reading files do not). The canary as
   read in that poll is the data check (intact, missing, differs). The goal is
   ``3*advbase + advskew/256 + 1 s``, ``advskew`` of the best surviving carrier, which is also
   the node expected to take over;
3. write a new canary through the new holder (data written during the outage must survive the
   failback);
4. **restore** it: failback time is from the restore to the first poll that answers from the
   VIP's home again; the canary then must be the one written during the outage. Nothing is
   expected when the node does not preempt (``failback = False``) or is not the VIP's home.

The drill passes when every VIP of every round came back within its goal, on the expected
node, with its data intact, and failed back with its data. The kill/restore methods are
:class:`Killer` implementations: :class:`LabKiller` (power loss and power-on of a lab node),
:class:`CommandKiller` (shell command templates for a real cluster) and :class:`PipeKiller`, which
asks another process to do it: ``hafs verify --failover --lab`` runs the drill inside the lab's
client namespace (all SMB traffic stays there) and serves the lab's kills from outside with
:func:`serve_killer`.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import signal
import string
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol

from hafs.cluster import Cluster, Share, Vip
from hafs.errors import HafsError
from hafs.table import table
from hafs.verify import (
    STATUS_OBJECT_NAME_NOT_FOUND,
    Connector,
    SmbError,
    SmbSession,
    VipResult,
    accessible,
    holder_from_shares,
    run_verify,
)

if TYPE_CHECKING:
    from hafs.lab.cluster import ClusterLab

Progress = Callable[[str], None]
POLL_INTERVAL = 0.1
MAX_IN_FLIGHT = 10  # polls of one VIP at once (each ends within a few connector timeouts)
UNNAMED = "#bbbbbb"  # timeline color: served, but the holder was not named yet
DRILL_CANARY_PREFIX = ".hafs-drill-"
TEMPLATE_FIELDS = ("node", "address", "interface")


class DrillError(HafsError):
    """The drill could not go on (a kill or restore failed, the cluster was unhealthy)."""

    exit_code = 1


# --- killing and restoring nodes -----------------------------------------------------------------


class Killer(Protocol):
    """Takes a node down abruptly and brings it back; both block until done and return when
    (``time.monotonic()``, one clock for every namespace of a machine) the node went down or
    began to come back."""

    def kill(self, node: str) -> float: ...

    def restore(self, node: str) -> float: ...


class LabKiller:
    """A lab node: power loss (cable cut, every process killed) and power-on."""

    def __init__(self, lab: ClusterLab, progress: Progress) -> None:
        self.lab = lab
        self.progress = progress

    def kill(self, node: str) -> float:
        began = time.monotonic()
        self.lab.kill(node)  # its cable is cut first
        return began

    def restore(self, node: str) -> float:
        began = time.monotonic()
        self.lab.start(node, self.progress)
        return began


@dataclass(frozen=True)
class CommandOutcome:
    returncode: int | None  # None: still running at the timeout, so it was killed
    output: str


Runner = Callable[[str, float], CommandOutcome]


def run_shell(command: str, timeout: float) -> CommandOutcome:
    """``sh -c command`` in a session of its own; at the timeout its process group is killed."""
    proc = subprocess.Popen(
        ["sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this call created, nothing else
        output, _ = proc.communicate()
        return CommandOutcome(None, output)
    return CommandOutcome(proc.returncode, output)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


class CommandKiller:
    """Shell commands per node, e.g. ``ssh {address} "ifconfig {interface} down"``.

    A kill command may hang when it takes down the very link it talks over: after
    ``kill_timeout`` it is killed and the node counts as down. A restore command must finish
    with status 0 within ``restore_timeout``.
    """

    def __init__(
        self,
        commands: Mapping[str, tuple[str, str]],
        run: Runner = run_shell,
        kill_timeout: float = 10.0,
        restore_timeout: float = 300.0,
    ) -> None:
        self.commands = dict(commands)
        self.run = run
        self.kill_timeout = kill_timeout
        self.restore_timeout = restore_timeout

    @classmethod
    def from_templates(
        cls,
        cluster: Cluster,
        kill: Mapping[str, str | None],
        restore: Mapping[str, str | None],
        **options: Any,
    ) -> CommandKiller:
        """Fill ``{node}``, ``{address}`` and ``{interface}`` into each node's templates;
        :class:`HafsError` (exit 2) naming the key and node when one is missing or bad."""
        commands = {}
        for node in cluster.nodes:
            values = {
                "node": node.name,
                "address": None if node.address is None else str(node.address.ip),
                "interface": node.interface,
            }
            pair = []
            for key, templates in (("drill_kill", kill), ("drill_restore", restore)):
                template = templates.get(node.name)
                if not template:
                    raise HafsError(
                        f"host {node.name}: {key}: missing: give the command that "
                        f"{'takes the node down' if key == 'drill_kill' else 'brings it back'}, "
                        'e.g. ssh {address} "ifconfig {interface} down"'
                    )
                pair.append(_fill(template, values, f"host {node.name}: {key}"))
            commands[node.name] = (pair[0], pair[1])
        return cls(commands, **options)

    def _command(self, node: str, which: int) -> str:
        if node not in self.commands:
            raise DrillError(f"no drill commands for node {node!r}")
        return self.commands[node][which]

    def kill(self, node: str) -> float:
        command = self._command(node, 0)
        began = time.monotonic()
        outcome = self.run(command, self.kill_timeout)
        if outcome.returncode not in (0, None):
            raise DrillError(
                f"drill_kill of {node}: {command!r} exited {outcome.returncode}: "
                f"{_last_line(outcome.output)}"
            )
        return began

    def restore(self, node: str) -> float:
        command = self._command(node, 1)
        began = time.monotonic()
        outcome = self.run(command, self.restore_timeout)
        if outcome.returncode is None:
            raise DrillError(
                f"drill_restore of {node}: {command!r} did not finish within "
                f"{self.restore_timeout:g}s"
            )
        if outcome.returncode != 0:
            raise DrillError(
                f"drill_restore of {node}: {command!r} exited {outcome.returncode}: "
                f"{_last_line(outcome.output)}"
            )
        return began


def _fill(template: str, values: Mapping[str, str | None], where: str) -> str:
    fields = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise HafsError(f"{where}: {template!r}: {exc}: use {fields}") from None
    for name in sorted(used):
        if name not in values:
            raise HafsError(f"{where}: unknown field {{{name}}}: use {fields}")
        value = values[name]
        if value is None:
            raise HafsError(f"{where}: uses {{{name}}} but the node has no {name}")
    return template.format_map(values)


class PipeKiller:
    """Asks a :func:`serve_killer` on the other end of two pipes to kill and restore."""

    def __init__(self, requests: IO[str], replies: IO[str]) -> None:
        self.requests = requests
        self.replies = replies

    def _ask(self, op: str, node: str) -> float:
        self.requests.write(json.dumps({"op": op, "node": node}) + "\n")
        self.requests.flush()
        line = self.replies.readline()
        if not line:
            raise DrillError(f"{op} {node}: the process doing kills and restores went away")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise DrillError(str(reply.get("error", f"{op} {node} failed")))
        return float(reply["at"])

    def kill(self, node: str) -> float:
        return self._ask("kill", node)

    def restore(self, node: str) -> float:
        return self._ask("restore", node)


def serve_killer(killer: Killer, requests: IO[str], replies: IO[str]) -> None:
    """Answer a :class:`PipeKiller`'s requests until it closes its end."""
    for line in requests:
        reply: dict[str, Any]
        try:
            request = json.loads(line)
            op, node = request["op"], request["node"]
            if op == "kill":
                reply = {"ok": True, "at": killer.kill(node)}
            elif op == "restore":
                reply = {"ok": True, "at": killer.restore(node)}
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except HafsError as exc:
            reply = {"ok": False, "error": str(exc)}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"ok": False, "error": f"bad request {line.strip()!r}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


# --- watching every VIP --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One poll of one VIP: when it ran, when its shares served, who answered, the canaries.

    ``served`` is when every share had answered (canary read, or root listed): what a client
    needs. ``answered`` also needs the share list, which names the holder; on a fresh smbd the
    first listing waits for samba-dcerpcd to start (about a second), so a poll can be served
    but not answered."""

    start: float
    end: float
    served: float | None
    holder: str | None
    answered: bool
    canary: Mapping[str, str]  # share -> intact | missing | differs
    error: str | None = None


def served_time(sample: Sample) -> float:
    if sample.served is None:
        raise ValueError(f"the poll begun at {sample.start} did not serve")
    return sample.served


def data_status(sample: Sample) -> str:
    """``intact`` when every canary read back as written; else which ones are not."""
    if not sample.canary:
        return "no canary"
    bad = [
        f"{state}: {share}" for share, state in sorted(sample.canary.items()) if state != "intact"
    ]
    return ", ".join(bad) or "intact"


@dataclass
class _Pooled:
    """An SMB session a poll may reuse, and the holder its share list named."""

    session: SmbSession
    holder: str | None = None
    listed: bool = False


class Monitor:
    """Polls every VIP every ``interval``; every :class:`Sample` kept, waiters woken on each.

    Polls overlap: a poll that hangs on a VIP nobody answers (until the connector's timeout)
    does not delay the next one, so the first answer is seen within one interval. At most
    ``MAX_IN_FLIGHT`` polls per VIP run at once; samples are kept in the order they began.
    Healthy polls reuse idle sessions: ten new SMB sessions a second per VIP (each a forked
    smbd and an RPC share listing) would load the servers being measured.
    """

    def __init__(
        self,
        vips: Sequence[Vip],
        connect: Connector,
        nodes: Sequence[str],
        canary_path: str,
        user: str | None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.vips = list(vips)
        self.connect = connect
        self.user = user
        self.nodes = list(nodes)
        self.canary_path = canary_path
        self.interval = interval
        self.samples: dict[int, list[Sample]] = {v.vhid: [] for v in self.vips}
        self._expected: dict[int, dict[str, bytes]] = {v.vhid: {} for v in self.vips}
        self._in_flight: dict[int, dict[int, float]] = {v.vhid: {} for v in self.vips}
        # the drill's writes and the polls' reads of a canary never overlap (a reader's open
        # handle makes a write fail with STATUS_SHARING_VIOLATION)
        self._canary_locks = {v.vhid: threading.Lock() for v in self.vips}
        self._idle: dict[int, list[_Pooled]] = {v.vhid: [] for v in self.vips}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._tickets = itertools.count()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Monitor:
        for vip in self.vips:
            self._start(f"poll-{vip.name}", self._loop, vip)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        while True:  # the schedulers stop, then the polls they started end
            with self._changed:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                break
            for thread in alive:
                thread.join()
        for idle in self._idle.values():
            for pooled in idle:
                pooled.session.close()
            idle.clear()

    def _start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._changed:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def expect(self, vhid: int, contents: Mapping[str, bytes]) -> None:
        """From now on, polls of ``vhid`` read these canaries (share -> content)."""
        with self._changed:
            self._expected[vhid] = dict(contents)

    def canary_lock(self, vhid: int) -> threading.Lock:
        """Held while writing ``vhid``'s canaries: no poll reads them meanwhile."""
        return self._canary_locks[vhid]

    def latest(self, vhid: int) -> Sample | None:
        with self._changed:
            samples = self.samples[vhid]
            return samples[-1] if samples else None

    def wait_for(
        self, vhid: int, since: float, predicate: Callable[[Sample], bool], deadline: float
    ) -> Sample | None:
        """The earliest-begun sample of ``vhid`` begun at or after ``since`` that satisfies
        ``predicate`` (once no poll begun before it is still running), waiting until the
        monotonic ``deadline``; None if there is none by then."""
        with self._changed:
            while True:
                samples = self.samples[vhid]
                first = bisect.bisect_left(samples, since, key=lambda s: s.start)
                match = next((s for s in samples[first:] if predicate(s)), None)
                remaining = deadline - time.monotonic()
                if match is not None:
                    earlier = [t for t in self._in_flight[vhid].values() if t < match.start]
                    if not earlier or remaining <= 0:
                        return match
                if remaining <= 0:
                    return None
                self._changed.wait(remaining)

    def _loop(self, vip: Vip) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            with self._changed:
                busy = len(self._in_flight[vip.vhid]) >= MAX_IN_FLIGHT
            if not busy:
                ticket, began = next(self._tickets), time.monotonic()
                with self._changed:
                    self._in_flight[vip.vhid][ticket] = began
                self._start(f"poll-{vip.name}-{ticket}", self._poll_once, vip, ticket, began)
            due += self.interval
            delay = due - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                due = time.monotonic()  # fell behind: go on from now

    def _poll_once(self, vip: Vip, ticket: int, began: float) -> None:
        sample = self.poll(vip, began)
        with self._changed:
            del self._in_flight[vip.vhid][ticket]
            bisect.insort(self.samples[vip.vhid], sample, key=lambda s: s.start)
            self._changed.notify_all()

    def poll(self, vip: Vip, began: float) -> Sample:
        """Serve every share the check user may use (read its canary, else list its root) over
        an idle session of an earlier poll, or a new one; a new session then lists the shares,
        which names its holder (the holder of a TCP connection cannot change). A session that
        fails is closed, so after a takeover every poll connects anew. ``began``: when due."""
        with self._changed:
            expected = dict(self._expected[vip.vhid])
            idle = self._idle[vip.vhid]
            pooled = idle.pop() if idle else None
        served: float | None = None
        canary: dict[str, str] = {}
        try:
            if pooled is None:
                pooled = _Pooled(self.connect(vip))
            session = pooled.session
            for share in vip.shares:
                if share.name in expected:
                    with self._canary_locks[vip.vhid]:
                        canary[share.name] = self._read_canary(
                            session, share.name, expected[share.name]
                        )
                elif accessible(share, self.user):
                    session.list_dir(share.name, "/")
            served = time.monotonic()
            if not pooled.listed:
                pooled.holder = self._list(session, vip)
                pooled.listed = True
        except SmbError as exc:
            if pooled is not None:
                pooled.session.close()
            return Sample(began, time.monotonic(), served, None, False, canary, str(exc))
        with self._changed:
            self._idle[vip.vhid].append(pooled)
        return Sample(began, time.monotonic(), served, pooled.holder, True, canary)

    def _list(self, session: SmbSession, vip: Vip) -> str | None:
        """The holder named by the share list, once every share of the model is listed."""
        listed = session.list_shares()
        names = {s.name.lower() for s in listed if not s.special}
        absent = [s.name for s in vip.shares if s.name.lower() not in names]
        if absent:
            raise SmbError(f"share {absent[0]} not listed")
        return holder_from_shares(listed, self.nodes)

    def _read_canary(self, session: SmbSession, share: str, data: bytes) -> str:
        try:
            back = session.retrieve(share, self.canary_path)
        except SmbError as exc:
            if exc.status == STATUS_OBJECT_NAME_NOT_FOUND:
                return "missing"
            raise SmbError(f"share {share}: read canary: {exc}") from exc
        return "intact" if back == data else "differs"

    def longest_outage(self, vhid: int, since: float, answer: Sample) -> float:
        """The longest stretch, between ``since`` and ``answer``, from a poll that did not
        serve to the next poll that did (0.0 if every poll served)."""
        longest, down_since = 0.0, None
        with self._changed:
            samples = self.samples[vhid]
            for sample in samples[: samples.index(answer) + 1]:
                if sample.start < since:
                    continue
                if sample.served is None:
                    down_since = sample.start if down_since is None else down_since
                elif down_since is not None:
                    longest, down_since = max(longest, sample.start - down_since), None
        return longest

    def served_since(self, vhid: int, since: float, answer: Sample) -> tuple[Sample, float]:
        """The first sample of the unbroken run of served samples (begun at or after
        ``since``) that ends with ``answer``, and when it served: when service really came
        back, even if the share list, which names the holder, came later. The kill's outage
        is the gap that starts the run."""
        first, at = answer, served_time(answer)
        with self._changed:
            samples = self.samples[vhid]
            for sample in reversed(samples[: samples.index(answer)]):
                if sample.start < since or sample.served is None:
                    break
                first, at = sample, sample.served
        return first, at


# --- the report ----------------------------------------------------------------------------------


def rto_goal(vip: Vip, down: str) -> tuple[str | None, float | None]:
    """The carrier expected to take ``vip`` over when ``down`` dies, and the RTO goal
    ``3*advbase + advskew/256 + 1`` seconds with that carrier's advskew."""
    survivors = [n for n in vip.carriers if n != down]
    if not survivors:
        return None, None
    return survivors[0], 3 * vip.advbase + vip.advskew[survivors[0]] / 256 + 1


@dataclass
class VipOutcome:
    vhid: int
    name: str
    address: str
    home: str
    holder_before: str
    expected_holder: str | None
    goal: float | None
    new_holder: str | None = None
    rto: float | None = None  # kill -> first answer from another node, seconds
    data: str = "not checked"  # the canary at that first answer
    failback_to: str | None = None  # the node expected to take it back (its home), if any
    failback: float | None = None  # restore -> first answer from failback_to, seconds
    failback_data: str | None = None
    failback_outage: float | None = None  # longest time nothing served during the failback
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def judge_takeover(self) -> list[str]:
        """The takeover's problems: over the RTO goal, an unexpected new holder, bad data."""
        problems = []
        if self.rto is not None and self.goal is not None and self.rto > self.goal:
            problems.append(
                f"{self.name}: RTO {self.rto:.2f}s over the goal {self.goal:.2f}s "
                "(3*advbase + advskew/256 + 1)"
            )
        if self.new_holder != self.expected_holder:
            problems.append(
                f"{self.name}: taken over by {self.new_holder or 'an unnamed host'}, expected "
                f"{self.expected_holder} (the best surviving carrier)"
            )
        if self.data not in ("intact", "no canary"):
            problems.append(f"{self.name}: canary after the takeover: {self.data}")
        return problems


@dataclass
class Round:
    node: str
    killed_at: float | None = None  # seconds since the drill began
    restored_at: float | None = None
    vips: list[VipOutcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the round's own (kill/restore)

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for v in self.vips)


@dataclass(frozen=True)
class Span:
    start: float  # seconds since the drill began
    end: float
    holder: str | None  # who answered; None: not known
    served: bool  # the shares answered (False: the VIP did not serve at all)
    error: str | None = None  # why the span's first poll did not answer, if it did not


@dataclass(frozen=True)
class Event:
    at: float  # seconds since the drill began
    kind: str  # kill | restore
    node: str


@dataclass
class DrillReport:
    began: float  # wall clock (epoch seconds) at the start
    rounds: list[Round] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    timeline: dict[str, list[Span]] = field(default_factory=dict)  # VIP name -> spans
    duration: float = 0.0
    problems: list[str] = field(default_factory=list)  # the drill's own (cleanup)

    @property
    def ok(self) -> bool:
        return bool(self.rounds) and all(r.ok for r in self.rounds)

    def all_problems(self) -> list[str]:
        lines = [p for r in self.rounds for p in r.problems]
        lines += [p for r in self.rounds for v in r.vips for p in v.problems]
        return lines + self.problems

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["timeline"] = {
            name: [[s.start, s.end, s.holder, s.served, s.error] for s in spans]
            for name, spans in self.timeline.items()
        }
        for round_data, round_ in zip(data["rounds"], self.rounds, strict=True):
            round_data["ok"] = round_.ok
        return data


def spans(samples: Sequence[Sample], origin: float, end: float) -> list[Span]:
    """Each sample's state (holder if it answered, whether it served) holds from its start to
    the next sample's start; equal neighbours merge. Relative to ``origin``; the last span ends
    at ``end``."""
    result: list[Span] = []
    for i, sample in enumerate(samples):
        holder = sample.holder if sample.answered else None
        served = sample.served is not None
        stop = samples[i + 1].start if i + 1 < len(samples) else max(end, sample.end)
        start, stop = round(sample.start - origin, 3), round(stop - origin, 3)
        if result and (result[-1].holder, result[-1].served) == (holder, served):
            result[-1] = Span(result[-1].start, stop, holder, served, result[-1].error)
        else:
            result.append(Span(start, stop, holder, served, sample.error))
    return result


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def format_report(report: DrillReport) -> str:
    rows = []
    for r in report.rounds:
        if not r.vips:
            rows.append([r.node, "-", "-", "-", "-", "-", "-", "-", "ok" if r.ok else "FAIL"])
        for v in r.vips:
            failback = "off" if v.failback_to is None else _secs(v.failback)
            rows.append(
                [
                    r.node,
                    v.name,
                    v.new_holder or "-",
                    _secs(v.rto),
                    _secs(v.goal),
                    v.data,
                    failback,
                    v.failback_data or "-",
                    "ok" if v.ok and r.ok else "FAIL",
                ]
            )
    headers = [
        "KILLED",
        "VIP",
        "NEW HOLDER",
        "RTO",
        "GOAL",
        "DATA",
        "FAILBACK",
        "DATA AFTER",
        "RESULT",
    ]
    return "\n".join([table(headers, rows), *report.all_problems()])


def verdict_word(report: DrillReport) -> str:
    return "PASS" if report.ok else "FAIL"


def drill_verdict(report: DrillReport) -> str:
    outcomes = [v for r in report.rounds for v in r.vips]
    timed = [v for v in outcomes if v.rto is not None]
    worst = max(timed, key=lambda v: v.rto or 0.0, default=None)
    worst_text = (
        f", worst RTO {worst.rto:.2f}s ({worst.name}, goal {_secs(worst.goal)})"
        if worst is not None and worst.rto is not None
        else ""
    )
    if report.ok:
        return (
            f"verdict: PASS: {len(report.rounds)} node(s) killed, {len(outcomes)} VIP "
            f"takeover(s) within goal with data intact{worst_text}"
        )
    problems = report.all_problems()
    first = problems[0] if problems else "no node was killed"
    return f"verdict: FAIL: {len(problems)} problem(s){worst_text}; first: {first}"


def plot_timeline(report: DrillReport, path: str) -> None:
    """A PNG: one row per VIP, spans colored by the node that answered, gray where the shares
    served but the share list (which names the node) did not come yet, gaps where nothing
    answered, dashed lines at kills (red) and restores (green)."""
    try:
        import matplotlib
    except ImportError:
        raise HafsError(
            "--plot needs matplotlib: python3 -m pip install matplotlib (or drop --plot)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = list(report.timeline)
    holders = sorted({s.holder for spans_ in report.timeline.values() for s in spans_ if s.holder})
    palette = plt.get_cmap("tab10")
    colors = {node: palette(i % 10) for i, node in enumerate(holders)}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 0.6 * max(1, len(names))))
    for row, name in enumerate(names):
        for span in report.timeline[name]:
            if span.served or span.holder is not None:
                ax.broken_barh(
                    [(span.start, span.end - span.start)],
                    (row - 0.35, 0.7),
                    facecolors=colors.get(span.holder or "", UNNAMED),
                )
    for event in report.events:  # labelled in a band above the first VIP
        color = "tab:red" if event.kind == "kill" else "tab:green"
        ax.axvline(event.at, color=color, linestyle="--", linewidth=1)
        label_y = -0.95 if event.kind == "kill" else -0.6
        right = event.at > 0.85 * report.duration  # keep the label inside the axes
        ax.text(
            event.at,
            label_y,
            f"{event.kind} {event.node} " if right else f" {event.kind} {event.node}",
            fontsize=7,
            color=color,
            ha="right" if right else "left",
        )
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.4, -1.2)  # top to bottom, with the band for the labels
    ax.set_xlim(0, max(report.duration, 1e-3))
    ax.set_xlabel("seconds since the drill began (blank: no SMB answer)")
    ax.set_title(f"hafs failover drill: who answers each VIP over SMB ({verdict_word(report)})")
    ax.legend(
        handles=[
            *(Patch(color=colors[n], label=n) for n in holders),
            Patch(color=UNNAMED, label="served, node\nnot named yet"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the drill -----------------------------------------------------------------------------------


@dataclass
class DrillOptions:
    settle: float  # seconds between writing the canaries and the kill
    timeout: float = 120.0  # seconds to wait for a takeover, and for a failback
    nodes: Sequence[str] = ()  # nodes to kill, in order; empty: every node of the model


class Drill:
    """Runs the rounds; see the module's theory of operation."""

    def __init__(
        self,
        cluster: Cluster,
        check: Connector,
        monitor: Monitor,
        killer: Killer,
        options: DrillOptions,
        token: str,
        progress: Progress,
    ) -> None:
        self.cluster = cluster
        self.check = check
        self.monitor = monitor
        self.killer = killer
        self.options = options
        self.token = token
        self.progress = progress
        self.origin = time.monotonic()
        self.report = DrillReport(began=time.time())

    def _at(self, moment: float) -> float:
        return round(moment - self.origin, 3)

    def _write_canaries(self, vip: Vip, label: str) -> str | None:
        """Write a canary into every writable share of ``vip``; the error, or None."""
        contents = {
            s.name: f"hafs drill {self.token} {label} {vip.name}/{s.name}\n".encode()
            for s in self.canary_shares(vip)
        }
        if not contents:
            return None
        try:
            session = self.check(vip)
            try:
                with self.monitor.canary_lock(vip.vhid):
                    for share, data in contents.items():
                        session.store(share, self.monitor.canary_path, data)
                    self.monitor.expect(vip.vhid, contents)
            finally:
                session.close()
        except SmbError as exc:
            return f"writing the canary ({label}): {exc}"
        return None

    def run_round(self, number: int, node: str, holders: Mapping[int, str | None]) -> Round:
        round_ = Round(node)
        self.report.rounds.append(round_)
        held = [v for v in self.cluster.vips if holders.get(v.vhid) == node]
        total = len(self.options.nodes)
        names = ", ".join(v.name for v in held) or "no VIP"
        self.progress(f"round {number}/{total}: {node} holds {names}")
        for vip in held:
            expected, goal = rto_goal(vip, node)
            outcome = VipOutcome(
                vip.vhid, vip.name, str(vip.address), vip.home, node, expected, goal
            )
            error = self._write_canaries(vip, f"round {number} before the kill")
            if error is not None:
                outcome.problems.append(f"{vip.name}: {error}")
            round_.vips.append(outcome)
        if any(not v.ok for v in round_.vips):
            round_.problems.append(f"{node}: not killed: a canary could not be written")
            return round_
        if held and self.options.settle > 0:
            self.progress(f"waiting {self.options.settle:g}s for replication")
            time.sleep(self.options.settle)

        self.progress(f"kill {node}")
        try:
            killed = self.killer.kill(node)
        except HafsError as exc:
            round_.problems.append(f"{node}: kill failed: {exc}")
            return round_
        round_.killed_at = self._at(killed)
        self.report.events.append(Event(round_.killed_at, "kill", node))
        deadline = killed + self.options.timeout
        for vip, outcome in zip(held, round_.vips, strict=True):
            self._takeover(vip, outcome, node, killed, deadline, number)

        self.progress(f"restore {node}")
        try:
            restored = self.killer.restore(node)
        except HafsError as exc:
            round_.problems.append(f"{node}: restore failed: {exc}")
            return round_
        round_.restored_at = self._at(restored)
        self.report.events.append(Event(round_.restored_at, "restore", node))
        deadline = time.monotonic() + self.options.timeout
        for vip, outcome in zip(held, round_.vips, strict=True):
            if self.cluster.node(node).preempt and vip.home == node:
                self._failback(vip, outcome, restored, deadline)
        return round_

    def _takeover(
        self, vip: Vip, outcome: VipOutcome, node: str, killed: float, deadline: float, number: int
    ) -> None:
        answer = self.monitor.wait_for(
            vip.vhid, killed, lambda s: s.answered and s.holder != node, deadline
        )
        if answer is None:
            last = self.monitor.latest(vip.vhid)
            why = f"; last poll: {last.error}" if last is not None and last.error else ""
            outcome.problems.append(
                f"{vip.name}: no SMB answer from another node within "
                f"{self.options.timeout:g}s of killing {node}{why}"
            )
            self.progress(outcome.problems[-1])
            return
        first, served = self.monitor.served_since(vip.vhid, killed, answer)
        outcome.rto = round(served - killed, 3)
        outcome.new_holder = answer.holder
        outcome.data = data_status(first)
        self.progress(
            f"{vip.name}: answers from {answer.holder or '?'} after {outcome.rto:.2f}s "
            f"(goal {_secs(outcome.goal)}), canary {outcome.data}"
        )
        outcome.problems += outcome.judge_takeover()
        error = self._write_canaries(vip, f"round {number} during the outage")
        if error is not None:
            outcome.problems.append(f"{vip.name}: on {answer.holder}: {error}")

    def _failback(self, vip: Vip, outcome: VipOutcome, restored: float, deadline: float) -> None:
        outcome.failback_to = vip.home
        sample = self.monitor.wait_for(
            vip.vhid, restored, lambda s: s.answered and s.holder == vip.home, deadline
        )
        if sample is None:
            outcome.problems.append(
                f"{vip.name}: not back on {vip.home} within {self.options.timeout:g}s "
                "of the restore"
            )
            self.progress(outcome.problems[-1])
            return
        outcome.failback = round(served_time(sample) - restored, 3)
        outcome.failback_data = data_status(sample)
        outcome.failback_outage = round(self.monitor.longest_outage(vip.vhid, restored, sample), 3)
        self.progress(
            f"{vip.name}: back on {vip.home} after {outcome.failback:.2f}s (longest outage "
            f"{outcome.failback_outage:.2f}s), canary {outcome.failback_data}"
        )
        if outcome.failback_data not in ("intact", "no canary"):
            outcome.problems.append(
                f"{vip.name}: canary written during the outage, after the failback: "
                f"{outcome.failback_data}"
            )

    def current_holders(self, initial: Mapping[int, str | None]) -> dict[int, str | None]:
        """Each VIP's holder per its latest answered poll (else the initial verify's)."""
        holders = dict(initial)
        for vip in self.cluster.vips:
            latest = self.monitor.latest(vip.vhid)
            if latest is not None and latest.answered:
                holders[vip.vhid] = latest.holder
        return holders

    def canary_shares(self, vip: Vip) -> list[Share]:
        """The shares that get a canary: writable, and open to the check user."""
        return [s for s in vip.shares if s.writable and accessible(s, self.cluster.check_user)]

    def cleanup(self) -> None:
        """Delete the canaries (best effort: a failure is reported, not fatal)."""
        for vip in self.cluster.vips:
            shares = [s.name for s in self.canary_shares(vip)]
            if not shares:
                continue
            try:
                session = self.check(vip)
                try:
                    with self.monitor.canary_lock(vip.vhid):
                        self.monitor.expect(vip.vhid, {})  # polls stop reading it
                        for share in shares:
                            try:
                                session.delete(share, self.monitor.canary_path)
                            except SmbError as exc:
                                if exc.status != STATUS_OBJECT_NAME_NOT_FOUND:
                                    raise
                finally:
                    session.close()
            except SmbError as exc:
                self.report.problems.append(f"{vip.name}: removing the drill canary: {exc}")


def run_drill(
    cluster: Cluster,
    check: Connector,
    poll: Connector,
    killer: Killer,
    options: DrillOptions,
    progress: Progress,
    token: str,
    interval: float = POLL_INTERVAL,
) -> DrillReport:
    """Verify, then kill and restore each node in turn while polling every VIP.

    :class:`DrillError` if the cluster does not pass :func:`run_verify` first.
    """
    known = [n.name for n in cluster.nodes]
    unknown = [n for n in options.nodes if n not in known]
    if unknown:
        raise HafsError(f"--node {unknown[0]}: not a node of the inventory: use {known}")
    nodes = list(options.nodes) or known
    options = DrillOptions(options.settle, options.timeout, nodes)
    progress("verify before the drill")
    before: list[VipResult] = run_verify(cluster, check, token)
    failed = [p for r in before for p in r.problems()]
    if failed:
        raise DrillError(f"the cluster does not pass hafs verify, no drill: {failed[0]}")
    initial = {r.vhid: r.holder for r in before}
    vips = sorted(cluster.vips, key=lambda v: v.vhid)
    canary = f"/{DRILL_CANARY_PREFIX}{token}"
    with Monitor(vips, poll, known, canary, cluster.check_user, interval) as monitor:
        drill = Drill(cluster, check, monitor, killer, options, token, progress)
        try:
            for number, node in enumerate(nodes, start=1):
                drill.run_round(number, node, drill.current_holders(initial))
                if drill.report.rounds[-1].problems:
                    break  # a node that could not be killed or restored: stop here
        finally:
            drill.cleanup()
    report = drill.report
    report.duration = round(time.monotonic() - drill.origin, 3)
    end = time.monotonic()
    report.timeline = {
        vip.name: spans(monitor.samples[vip.vhid], drill.origin, end) for vip in vips
    }
    return report
