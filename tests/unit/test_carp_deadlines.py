"""Every vhid's deadline on one timer: what is served when, and how often the loop wakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from hafs.carp.deadlines import Deadlines

EARLY = 0.001


@dataclass
class Handle:
    at: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    """``time`` and ``call_at`` on a clock the test moves; counts handles and wake-ups."""

    now: float = 0.0
    handles: list[Handle] = field(default_factory=list)
    made: int = 0
    wakeups: int = 0

    def time(self) -> float:
        return self.now

    def call_at(self, at: float, callback: Callable[[], None]) -> Handle:
        handle = Handle(at, callback)
        self.handles.append(handle)
        self.made += 1
        return handle

    def run_until(self, end: float) -> None:
        """Let time pass until ``end``, running each handle at its time."""
        while True:
            live = [h for h in self.handles if not h.cancelled]
            if not live or min(h.at for h in live) > end:
                break
            handle = min(live, key=lambda h: h.at)
            self.handles.remove(handle)
            self.now = max(self.now, handle.at)
            self.wakeups += 1
            handle.callback()
        self.now = end


def make() -> tuple[FakeLoop, Deadlines[str], list[tuple[str, float, float]]]:
    """A loop, the deadlines on it, and what fired: (key, deadline, when)."""
    loop, fired = FakeLoop(), list[tuple[str, float, float]]()
    deadlines: Deadlines[str] = Deadlines(
        cast(asyncio.AbstractEventLoop, loop), lambda key, at: fired.append((key, at, loop.now))
    )
    return loop, deadlines, fired


def test_deadlines_that_may_go_early_share_one_wakeup_in_order() -> None:
    loop, deadlines, fired = make()
    deadlines.set("c", 1.5, EARLY)
    deadlines.set("b", 1.0 + EARLY / 2, EARLY)
    deadlines.set("a", 1.0, EARLY)
    loop.run_until(1.2)
    assert fired == [("a", 1.0, 1.0), ("b", 1.0 + EARLY / 2, 1.0)]
    assert loop.wakeups == 1
    loop.run_until(2.0)
    assert fired[2:] == [("c", 1.5, 1.5)] and loop.wakeups == 2
    assert deadlines.get("a") is None  # served: gone


def test_a_deadline_never_goes_earlier_than_it_may() -> None:
    loop, deadlines, fired = make()
    deadlines.set("a", 1.0)
    deadlines.set("b", 1.0 + EARLY / 2)  # may not go early: a master-down
    deadlines.set("c", 1.0 + 2 * EARLY, EARLY)  # too far ahead
    deadlines.set("d", 1.0 + EARLY, EARLY)
    loop.run_until(1.0)
    assert fired == [("a", 1.0, 1.0), ("d", 1.0 + EARLY, 1.0)]
    loop.run_until(2.0)
    assert fired[2:] == [
        ("b", 1.0 + EARLY / 2, 1.0 + EARLY / 2),
        ("c", 1.0 + 2 * EARLY, 1.0 + 2 * EARLY),
    ]


def test_a_handle_run_a_hair_early_serves_its_deadline() -> None:
    """asyncio may run a call_at handle before the clock reads its time."""
    loop, deadlines, fired = make()
    deadlines.set("a", 1.0)
    loop.now = 1.0 - 1e-9
    [handle] = loop.handles
    handle.callback()
    assert fired == [("a", 1.0, 1.0 - 1e-9)]


def test_a_replaced_deadline_fires_only_at_its_new_time() -> None:
    loop, deadlines, fired = make()
    deadlines.set("a", 1.0)
    deadlines.set("a", 2.0)  # later: the handle stays at 1.0, whose entry is now stale
    loop.run_until(1.5)
    assert fired == []
    loop.run_until(3.0)
    assert fired == [("a", 2.0, 2.0)]
    deadlines.set("a", 5.0)
    deadlines.set("a", 4.0)  # earlier: the handle moves
    loop.run_until(6.0)
    assert fired[1:] == [("a", 4.0, 4.0)]


def test_no_deadline_never_fires() -> None:
    loop, deadlines, fired = make()
    deadlines.set("a", 1.0)
    deadlines.set("a", None)
    deadlines.set("b", 1.0)
    deadlines.close()
    loop.run_until(10.0)
    assert fired == [] and deadlines.get("b") is None


def test_a_deadline_set_while_serving_is_served_in_turn() -> None:
    """A master's next advert is set from inside the wake-up that sent this one."""
    loop, fired = FakeLoop(), list[tuple[str, float]]()

    def fire(key: str, at: float) -> None:
        fired.append((key, at))
        deadlines.set(key, at + 1.0)

    deadlines = Deadlines(cast(asyncio.AbstractEventLoop, loop), fire)
    deadlines.set("a", 1.0, EARLY)
    deadlines.set("b", 1.3, EARLY)
    loop.run_until(3.5)
    assert fired == [("a", 1.0), ("b", 1.3), ("a", 2.0), ("b", 2.3), ("a", 3.0), ("b", 3.3)]


def test_a_backup_hearing_its_master_wakes_once_per_master_down_not_per_advert() -> None:
    loop, deadlines, fired = make()
    adverts = 20
    for second in range(adverts):  # an advert every second restarts the 2.5 s master-down
        loop.run_until(float(second))
        deadlines.set("a", second + 2.5)
    assert fired == [] and loop.made <= adverts // 2 and loop.wakeups <= adverts // 2
    loop.run_until(30.0)  # the master fell silent
    assert fired == [("a", adverts - 1 + 2.5, adverts - 1 + 2.5)]
