"""Every vhid's deadline on one asyncio timer: the agent's clock for its machines.

A machine has one deadline (``SetTimer``): a master's next advert, a backup's master-down.
With one ``call_at`` handle per vhid, 255 masters cost 255 handles made, cancelled and heaped
every advbase (each heap step a Python comparison), and 255 backups one handle made and one
cancelled per advert heard; and every handle that fires on its own is a wake-up of the loop,
which costs more than the advert it sends. Here the deadlines live in a plain heap of
``(at, seq, key, early)`` tuples (compared in C), behind the single asyncio handle of the
earliest one:

- ``set(key, at, early)`` records the deadline and pushes it; the handle moves only when
  ``at`` is earlier than where it stands. A deadline replaced by a later one stays in the
  heap, stale, until the handle reaches it: a backup, whose master-down moves on with every
  advert, so wakes about once per master-down interval instead of once per advert.
- when the handle fires, every deadline that has come is served in one wake-up, in deadline
  order (``fire(key, at)``), and with them those that may be served ``early``: up to that
  long before their time (the agent lets a master's advert go with others a little early;
  a backup's master-down, which decides elections, never). The stale ones are dropped.
  ``fire`` is told the deadline: the agent passes ``max(now, at)`` to the machine, which so
  never sees a deadline as not yet passed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    """One deadline per key, served by ``fire(key, at)`` from one asyncio timer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fire: Callable[[K, float], None]) -> None:
        self._loop = loop
        self._fire = fire
        self._at: dict[K, float] = {}  # the current deadline of each key
        self._heap: list[tuple[float, int, K, float]] = []  # current and stale deadlines
        self._seq = itertools.count()  # ties never compare keys
        self._reach = 0.0  # the largest ``early`` given: how far ahead to look when serving
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0  # when the handle fires (meaningless without one)

    def get(self, key: K) -> float | None:
        return self._at.get(key)

    def set(self, key: K, at: float | None, early: float = 0.0) -> None:
        """Replace ``key``'s deadline with ``at`` (None: no deadline); it may be served up to
        ``early`` seconds before ``at`` when another deadline wakes the loop then."""
        if at is None:
            self._at.pop(key, None)
            return
        self._at[key] = at
        heapq.heappush(self._heap, (at, next(self._seq), key, early))
        self._reach = max(self._reach, early)
        if self._handle is None or at < self._armed:
            self._arm(at)

    def close(self) -> None:
        """Forget every deadline; the handle no longer fires."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at.clear()
        self._heap.clear()

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(at, self._run)
        self._armed = at

    def _run(self) -> None:
        """Serve every deadline that has come, and those that may go early, in order."""
        self._handle = None
        # asyncio may run the handle a hair before its time: that deadline has come all the same
        now = max(self._loop.time(), self._armed)
        heap, current = self._heap, self._at
        due, later = [], []
        while heap and heap[0][0] <= now + self._reach:
            entry = heapq.heappop(heap)
            at, _, key, early = entry
            if current.get(key) != at:
                continue  # stale
            if at - early <= now:
                del current[key]
                due.append((key, at))
            else:
                later.append(entry)  # not yet, and not allowed early so far
        for entry in later:
            heapq.heappush(heap, entry)
        self._arm_next()
        for key, at in due:
            self._fire(key, at)  # may set new deadlines: ``set`` arms for an earlier one

    def _arm_next(self) -> None:
        """Arm for the earliest current deadline, dropping the stale ones before it."""
        heap, current = self._heap, self._at
        while heap and current.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        if heap and (self._handle is None or heap[0][0] < self._armed):
            self._arm(heap[0][0])
