"""Watching every VIP over SMB: the :class:`Monitor` and the :class:`Sample` of each poll.

Every poll is kept, so the drill's measurements, the report and the timeline picture all come
from the same observations.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hafs.cluster import Vip
from hafs.verify import (
    STATUS_OBJECT_NAME_NOT_FOUND,
    Connector,
    SmbError,
    SmbSession,
    accessible,
    holder_from_shares,
)

POLL_INTERVAL = 0.1
MAX_IN_FLIGHT = 10  # polls of one VIP at once (each ends within a few connector timeouts)


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
