"""The CARP state machine for one vhid: (now, event) in, a list of actions out.

Rule 1: everything that decides a vhid's state lives in this file, as much as possible in the
tables below (``_TRANSITIONS`` and ``_IN_STATE``); the code around them only classifies inputs
and spells out what entering or leaving a state means.

Rule 2: no I/O and no clock. Time is the ``now`` argument (monotonic seconds, plain floats in
the tests); packets come in already checked and go out as bytes inside actions. The agent
applies the actions in order and may not reorder them.

Rule 3: the semantics are FreeBSD's ``ip_carp.c`` (carp_input_c, carp_master_down,
carp_setrun, carp_sc_state) as pinned down by CARP-SPEC.md section 4; transition reasons are
its log words, so an operator who knows CARP can read the agent's log.

Theory of operation
===================

A vhid is INIT, BACKUP or MASTER. It is created INIT with no timer. ``LinkUp`` (interface up
with carrier) moves it to BACKUP, provided it has addresses, and arms the master-down timer:
``3*advbase + advskew/256`` seconds, with the *configured* advskew. Every valid advert a backup
hears restarts that timer; when it runs out the backup becomes MASTER ("master timed out").

A master advertises every ``advbase + S/256`` seconds, where S = min(advskew + demotion, 240) is
the skew it puts on the wire. Adverts are ranked by T(advbase, skew) = (advbase,
skew*1_000_000//256), compared as tuples; smaller is better. The rules, per received advert:

* MASTER hears T(received) <= T(ours, S): BACKUP at once ("more frequent advertisement
  received"). Equal timing makes both masters step down; there is no address tie break.
* MASTER hears a worse advert: another node believes it is master (the other side of a
  healed partition, an agent resumed after a stall). It is counted in
  ``foreign_masters_seen`` (the agent reports a split brain that persists) and answered at
  once with our advert and an Announce, at most once per advbase per source, so that the
  other master steps down now rather than at our next advert, and clients that learned its
  MAC come back now rather than after an ARP timeout. Here hafs diverges from FreeBSD:
  ``carp_input_c`` (case MASTER) only acts on a better or equal advert and ignores a worse
  one; our answer is an extra advert of the same kind and a gratuitous ARP, both harmless
  to FreeBSD and ucarp peers.
* BACKUP hears a slower master, T(received) > T(ours, S), while preempt is on: MASTER now
  ("preempting a slower master").
* BACKUP hears a master slower than its own master-down, T(3*advbase, S) < T(received):
  MASTER now ("master will time out"). A bow-out advert (advbase 255, advskew 255), sent by
  a master that shuts down gracefully, always lands here.
* BACKUP that follows a master it does not outrank hears a *second* master, slower than
  itself: nothing (no preempt, no timer restart). Here hafs diverges from FreeBSD, which
  preempts: the second master is the other side of a healed partition or isolation, or an
  agent resumed after a stall, at its demoted skew; the master we follow answers it and it
  steps down. Preempting it would make every backup take the VIP for a moment, each
  announcing it (measured: clients' ARP entries moved to such transient masters, 4-9 s
  outages). If the master we follow is in fact gone, our master-down timer still runs out.
* Otherwise a backup restarts its master-down timer.

Becoming MASTER emits Transition, SendAdvert, AddVips, Announce, SetTimer(next advert): the
addresses are installed before the gratuitous ARP, so the VIP answers as soon as peers
learn it (on FreeBSD the CARP address exists before carp_send_arp runs).
Leaving MASTER emits RemoveVips after the Transition. ``LinkDown`` sends any state to INIT
("hardware interface down") with no timer; ``Shutdown`` does the same ("shutdown"), but a master
first sends one bow-out advert so the backups take over at once, and the machine then ignores
every later event.

Demotion is host-wide and belongs to the agent, as in FreeBSD: it adds 240 while any CARP
interface is down (and while adverts fail to send), lets hooks and operators raise or lower
it, and tells every machine the new total with ``DemotionChanged``. A master advertises at once
with its new skew (FreeBSD's carp_send_ad_all); a backup's master-down timer does not change.
A backup with preempt on whose lowered demotion now beats the master it last heard preempts at
once ("preempting a slower master"), where FreeBSD waits for that master's next advert (up to
advbase later): the same outcome, sooner. A returning node releases its resync hold right after
the holder handed its VIP over, so this second is the client's outage.

Counter: until a valid advert has been heard, every advert carries a fresh ``random64()``;
after that the machine adopts the last received counter and adds one per advert it sends.

Timer: there is one per machine. Each ``SetTimer(at)`` replaces the previous deadline (None
means none); the agent sends ``Timeout()`` once ``now >= at``. A Timeout before the current
deadline, or with none set, is stale (e.g. it raced with an advert that restarted the timer)
and is ignored. A master schedules its next advert from the previous deadline, not from
``now``, so a late wake-up does not make the advert rhythm drift.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from hafs.carp.wire import (
    BOWOUT_ADVBASE,
    BOWOUT_ADVSKEW,
    COUNTER_MAX,
    MAX_SKEW,
    Advert,
    check_range,
    encode,
    make_key,
)

Address = IPv4Address | IPv6Address


class State(enum.Enum):
    """A vhid's state; the values are the words devd and ifconfig print."""

    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"


INIT, BACKUP, MASTER = State.INIT, State.BACKUP, State.MASTER


@dataclass(frozen=True)
class VhidConfig:
    """One vhid as configured; the ranges are ifconfig's. Invalid values raise ValueError."""

    vhid: int
    advbase: int = 1
    advskew: int = 0
    addresses: tuple[Address, ...] = ()
    passphrase: str = field(default="", repr=False)
    preempt: bool = False
    key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_range("vhid", self.vhid, 1, 255)
        check_range("advbase", self.advbase, 1, 255)
        check_range("advskew", self.advskew, 0, 254)
        addresses = tuple(self.addresses)
        for addr in addresses:
            if not isinstance(addr, IPv4Address | IPv6Address):
                raise TypeError(f"addresses: {addr!r} is not an IPv4Address or IPv6Address")
            if addresses.count(addr) > 1:
                raise ValueError(f"addresses: {addr} is listed twice")
        object.__setattr__(self, "addresses", addresses)
        try:
            key = make_key(self.passphrase)
        except UnicodeEncodeError as exc:
            raise ValueError(f"passphrase: cannot be encoded as UTF-8 ({exc.reason})") from None
        object.__setattr__(self, "key", key)

    @property
    def master_down(self) -> float:
        """Seconds a backup waits for the master: 3*advbase + advskew/256 (raw advskew)."""
        return 3 * self.advbase + self.advskew / 256


# Events: what the agent tells the machine.


@dataclass(frozen=True)
class LinkUp:
    """The interface is up and has carrier."""


@dataclass(frozen=True)
class LinkDown:
    """The interface went down or lost carrier."""


@dataclass(frozen=True)
class AdvertReceived:
    """A valid advert for this vhid (TTL, checksum, vhid, source and digest already checked)."""

    advert: Advert
    source: Address


@dataclass(frozen=True)
class Timeout:
    """The deadline of the last SetTimer has passed."""


@dataclass(frozen=True)
class DemotionChanged:
    """The host-wide demotion total is now ``demotion``."""

    demotion: int

    def __post_init__(self) -> None:
        if self.demotion < 0:
            raise ValueError(f"demotion: must be >= 0, got {self.demotion}")


@dataclass(frozen=True)
class Shutdown:
    """Graceful stop: a master bows out; afterwards the machine ignores every event."""


Event = LinkUp | LinkDown | AdvertReceived | Timeout | DemotionChanged | Shutdown


# Actions: what the agent must do, in the order given.


@dataclass(frozen=True)
class SendAdvert:
    """Send ``packet`` (a 36-byte CARP header) to the CARP group."""

    packet: bytes
    advskew: int
    advbase: int
    counter: int


@dataclass(frozen=True)
class AddVips:
    """Install the virtual addresses on the interface."""

    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class RemoveVips:
    """Remove the virtual addresses from the interface."""

    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class Announce:
    """Gratuitous ARP for each IPv4 address, unsolicited neighbour advert for each IPv6 one."""

    addresses: tuple[Address, ...]


@dataclass(frozen=True)
class Transition:
    """The state changed: log it, notify like devd, run the hooks (without blocking).

    ``previous_master``: on becoming master, the source of the master this node backed up
    (timed out or preempted), if it heard one: the node whose service to fence."""

    old: State
    new: State
    reason: str
    previous_master: Address | None = None


@dataclass(frozen=True)
class SetTimer:
    """Replace the machine's deadline (None: no timer)."""

    at: float | None


Action = SendAdvert | AddVips | RemoveVips | Announce | Transition | SetTimer


class _Input(enum.Enum):
    """An event as the tables see it, after classification against the current config."""

    LINK_UP = enum.auto()  # link up and the vhid has addresses
    LINK_DOWN = enum.auto()
    TIMER = enum.auto()  # the current deadline has passed
    DEMOTION = enum.auto()  # the demotion total changed
    SHUTDOWN = enum.auto()
    HEARD_BETTER = enum.auto()  # T(received) <= T(ours, S)
    HEARD_WORSE = enum.auto()  # slower than us, preempt off, within our master-down
    HEARD_PREEMPTABLE = enum.auto()  # slower than us, preempt on
    HEARD_DOOMED = enum.auto()  # slower than T(3*advbase, S), preempt off: it will time out
    HEARD_BYSTANDER = enum.auto()  # slower than us, from a second master while we follow a better


class _Effect(enum.Enum):
    """What an input does when it does not change the state."""

    ADVERTISE = enum.auto()  # send an advert, next one an interval after the last deadline
    READVERTISE = enum.auto()  # send an advert now, next one an interval from now
    WAIT = enum.auto()  # restart the master-down timer
    REASSERT = enum.auto()  # a worse master while we are master: count it, answer it


_TRANSITIONS: dict[tuple[State, _Input], tuple[State, str]] = {
    (INIT, _Input.LINK_UP): (BACKUP, "initialization complete"),
    (BACKUP, _Input.LINK_DOWN): (INIT, "hardware interface down"),
    (BACKUP, _Input.TIMER): (MASTER, "master timed out"),
    (BACKUP, _Input.HEARD_PREEMPTABLE): (MASTER, "preempting a slower master"),
    (BACKUP, _Input.HEARD_DOOMED): (MASTER, "master will time out"),
    (BACKUP, _Input.SHUTDOWN): (INIT, "shutdown"),
    (MASTER, _Input.LINK_DOWN): (INIT, "hardware interface down"),
    (MASTER, _Input.HEARD_BETTER): (BACKUP, "more frequent advertisement received"),
    (MASTER, _Input.SHUTDOWN): (INIT, "shutdown"),
}

_IN_STATE: dict[tuple[State, _Input], _Effect] = {
    (BACKUP, _Input.HEARD_BETTER): _Effect.WAIT,
    (BACKUP, _Input.HEARD_WORSE): _Effect.WAIT,
    (MASTER, _Input.TIMER): _Effect.ADVERTISE,
    (MASTER, _Input.DEMOTION): _Effect.READVERTISE,
    (MASTER, _Input.HEARD_WORSE): _Effect.REASSERT,
    (MASTER, _Input.HEARD_PREEMPTABLE): _Effect.REASSERT,
    (MASTER, _Input.HEARD_DOOMED): _Effect.REASSERT,
}
# Every (state, input) pair in neither table is ignored: it produces no actions.


def timing(advbase: int, skew: int) -> tuple[int, int]:
    """FreeBSD's advert ranking: (advbase, skew in microseconds); smaller is better."""
    return advbase, skew * 1_000_000 // 256


class VhidMachine:
    """One vhid's CARP state machine. Feed it ``handle(now, event)``; apply what it returns."""

    def __init__(self, config: VhidConfig, random64: Callable[[], int]) -> None:
        self._config = config
        self._random64 = random64
        self._state = INIT
        self._since: float | None = None
        self._reason: str | None = None
        self._deadline: float | None = None
        self._stopped = False
        self._demotion = 0
        self._last_counter: int | None = None
        self._master: tuple[Address, int, int] | None = None
        self._adverts_sent = 0
        self._adverts_received = 0
        self._foreign_masters_seen = 0
        self._answered: dict[Address, float] = {}  # foreign master -> when we last answered it

    # Read-only status.

    @property
    def config(self) -> VhidConfig:
        return self._config

    @property
    def state(self) -> State:
        return self._state

    @property
    def since(self) -> float | None:
        """``now`` of the last transition (None before the first)."""
        return self._since

    @property
    def reason(self) -> str | None:
        """Why the last transition happened, in FreeBSD's words."""
        return self._reason

    @property
    def deadline(self) -> float | None:
        """The deadline of the last SetTimer."""
        return self._deadline

    @property
    def master_source(self) -> Address | None:
        """Source address of the master we back up (None unless BACKUP and one was heard)."""
        return self._master[0] if self._master else None

    @property
    def master_advskew(self) -> int | None:
        return self._master[1] if self._master else None

    @property
    def master_advbase(self) -> int | None:
        return self._master[2] if self._master else None

    @property
    def adverts_sent(self) -> int:
        return self._adverts_sent

    @property
    def adverts_received(self) -> int:
        return self._adverts_received

    @property
    def foreign_masters_seen(self) -> int:
        """Worse adverts heard while MASTER: another node also claims to be master."""
        return self._foreign_masters_seen

    @property
    def demotion(self) -> int:
        return self._demotion

    @property
    def advertised_skew(self) -> int:
        """S = min(advskew + demotion, 240): the skew this vhid puts on the wire."""
        return min(self._config.advskew + self._demotion, MAX_SKEW)

    @property
    def advert_interval(self) -> float:
        """Seconds between a master's adverts: advbase + S/256."""
        return self._config.advbase + self.advertised_skew / 256

    # The machine.

    def handle(self, now: float, event: Event) -> list[Action]:
        """Process one event at time ``now``; return the actions to apply, in order."""
        if self._stopped:
            return []
        kind = self._classify(now, event)
        if isinstance(event, Shutdown):
            self._stopped = True
        if kind is None:
            return []
        heard = None
        if isinstance(event, AdvertReceived):
            heard = (event.source, event.advert.advskew, event.advert.advbase)
        was = self._state
        if heard and was is BACKUP and kind is not _Input.HEARD_BYSTANDER:
            self._master = heard  # before a change: a preempted master is "previous"
        target = _TRANSITIONS.get((was, kind))
        if target is not None:
            actions = self._change(now, kind, *target)
        else:
            source = event.source if isinstance(event, AdvertReceived) else None
            actions = self._stay(now, _IN_STATE.get((was, kind)), source)
        if heard and was is not BACKUP and self._state is BACKUP:  # stepped down to its sender
            self._master = heard
        return actions

    def _classify(self, now: float, event: Event) -> _Input | None:
        """Turn an event into a table input (None: nothing to do), updating counters."""
        match event:
            case LinkUp():
                return _Input.LINK_UP if self._config.addresses else None
            case LinkDown():
                return _Input.LINK_DOWN
            case Timeout():
                passed = self._deadline is not None and now >= self._deadline
                return _Input.TIMER if passed else None
            case DemotionChanged(demotion=demotion):
                changed = demotion != self._demotion
                self._demotion = demotion
                if changed and self._state is BACKUP and self._outranks_master():
                    return _Input.HEARD_PREEMPTABLE  # as if its next advert had come
                return _Input.DEMOTION if changed else None
            case Shutdown():
                return _Input.SHUTDOWN
            case AdvertReceived(advert=advert):
                self._adverts_received += 1
                self._last_counter = advert.counter
                return self._rank(advert, event.source)

    def _rank(self, advert: Advert, source: Address) -> _Input:
        theirs = timing(advert.advbase, advert.advskew)
        if theirs <= timing(self._config.advbase, self.advertised_skew):
            return _Input.HEARD_BETTER
        if self._state is BACKUP and self._follows_another(source):
            return _Input.HEARD_BYSTANDER
        if self._config.preempt:
            return _Input.HEARD_PREEMPTABLE
        if timing(3 * self._config.advbase, self.advertised_skew) < theirs:
            return _Input.HEARD_DOOMED
        return _Input.HEARD_WORSE

    def _follows_another(self, source: Address) -> bool:
        """Does this backup follow a master other than ``source`` that it does not outrank
        (heard within its master-down time: the timer says so)?"""
        if self._master is None or self._master[0] == source:
            return False
        _, advskew, advbase = self._master
        return timing(advbase, advskew) <= timing(self._config.advbase, self.advertised_skew)

    def _outranks_master(self) -> bool:
        """Would the master this backup last heard be preempted, at our skew of now?"""
        if not self._config.preempt or self._master is None:
            return False
        _, advskew, advbase = self._master
        return timing(advbase, advskew) > timing(self._config.advbase, self.advertised_skew)

    def _change(self, now: float, kind: _Input, new: State, reason: str) -> list[Action]:
        addresses = self._config.addresses
        previous = self._master[0] if self._master and new is MASTER else None
        actions: list[Action] = [Transition(self._state, new, reason, previous)]
        if self._state is MASTER:
            if kind is _Input.SHUTDOWN:
                actions.append(self._advert(BOWOUT_ADVSKEW, BOWOUT_ADVBASE))
            actions.append(RemoveVips(addresses))
        self._state, self._since, self._reason = new, now, reason
        self._master = None
        if new is MASTER:
            actions.append(self._advert(self.advertised_skew, self._config.advbase))
            actions += [AddVips(addresses), Announce(addresses)]
            actions.append(self._set_timer(now + self.advert_interval))
        elif new is BACKUP:
            actions.append(self._set_timer(now + self._config.master_down))
        else:
            actions.append(self._set_timer(None))
        return actions

    def _stay(self, now: float, effect: _Effect | None, source: Address | None) -> list[Action]:
        match effect:
            case _Effect.ADVERTISE:
                last = now if self._deadline is None else self._deadline
                due = last + self.advert_interval
                nxt = due if due > now else now + self.advert_interval
                advert = self._advert(self.advertised_skew, self._config.advbase)
                return [advert, self._set_timer(nxt)]
            case _Effect.READVERTISE:
                advert = self._advert(self.advertised_skew, self._config.advbase)
                return [advert, self._set_timer(now + self.advert_interval)]
            case _Effect.WAIT:
                return [self._set_timer(now + self._config.master_down)]
            case _Effect.REASSERT:
                self._foreign_masters_seen += 1
                if source is not None and self._may_answer(now, source):
                    advert = self._advert(self.advertised_skew, self._config.advbase)
                    return [advert, Announce(self._config.addresses)]
        return []

    def _may_answer(self, now: float, source: Address) -> bool:
        """Answer a foreign master at most once per advbase (and remember only recent ones)."""
        advbase = self._config.advbase
        self._answered = {s: t for s, t in self._answered.items() if now - t < advbase}
        if source in self._answered:
            return False
        self._answered[source] = now
        return True

    def _advert(self, advskew: int, advbase: int) -> SendAdvert:
        if self._last_counter is None:
            counter = self._random64() & COUNTER_MAX
        else:
            counter = self._last_counter = (self._last_counter + 1) & COUNTER_MAX
        config = self._config
        packet = encode(config.vhid, advskew, advbase, counter, config.key, config.addresses)
        self._adverts_sent += 1
        return SendAdvert(packet, advskew, advbase, counter)

    def _set_timer(self, at: float | None) -> SetTimer:
        self._deadline = at
        return SetTimer(at)
