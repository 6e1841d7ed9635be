"""The CARP (and VRRPv3) state machine for one vhid: (now, event) in, a list of actions out.

Rule 1: everything that decides a vhid's state lives in this file, as much as possible in the
tables below (``_TRANSITIONS`` and ``_IN_STATE``); the code around them only classifies inputs
and spells out what entering or leaving a state means.

Rule 2: no I/O and no clock. Time is the ``now`` argument (monotonic seconds, plain floats in
the tests); packets come in already checked and go out as bytes inside actions. The agent
applies the actions in order and may not reorder them.

Rule 3: the semantics are FreeBSD's ``ip_carp.c`` (carp_input_c, carp_master_down,
carp_setrun, carp_sc_state) as pinned down by CARP-SPEC.md section 4; transition reasons are
its log words, so an operator who knows CARP can read the agent's log.

Rule 4: the protocol is the config. ``VhidConfig`` (CARP) and ``VrrpConfig`` (VRRPv3, RFC
5798) answer the same few questions: how an advert ranks, our own rank, how long a backup
waits after an advert, what to send. The states, tables and timers are one for both, because
the two protocols differ only in those answers (see "VRRPv3" below).

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
* BACKUP hears a slower master, T(received) > T(ours, S), while preempt is on: MASTER
  after its skew time, S/256 s ("preempting a slower master"), unless a better advert comes
  first; at once with S = 0. Here hafs diverges from FreeBSD, which preempts at once: when
  a master demotes itself (a dead pool, a drain), every backup that outranks it would take
  the addresses at the same moment, and all but the best give them back within
  milliseconds, each having announced them (measured: clients' ARP entries on a loser, 7-12
  s outages). Waiting its skew time, the best backup (lowest skew) goes first and the next
  hears its advert in time. A slower master's later adverts do not postpone the preemption;
  a backup demoted meanwhile below that master waits its master-down instead.
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
learn it (on FreeBSD the CARP address exists before carp_send_arp runs). The first advert
:data:`ANNOUNCE_AGAIN` seconds or more after that carries an Announce again, as keepalived's
``garp_master_delay`` does: when several backups take over at the same moment (a bow-out,
which every backup takes over at once; two whose skew times end together) all but the best
step down again within milliseconds, but each sent its gratuitous ARP; a Linux client keeps
the first one it heard and ignores the next ones for a second (its neighbour ``locktime``),
so the winner's own ARP may be ignored and the client sends to a node without the VIP until
its entry times out (measured: 7-12 s outages). FreeBSD announces once.
Leaving MASTER emits RemoveVips after the Transition. ``LinkDown`` sends any state to INIT
("hardware interface down") with no timer; ``Shutdown`` does the same ("shutdown"), but a master
first sends one bow-out advert so the backups take over at once, and the machine then ignores
every later event.

A reload hands a vhid over from one agent process to the next (the agent re-executes itself,
same pid, VIPs left in place). Before, ``next_adverts`` gives the adverts a master would send
next, for the stand-in that sends them while the new image starts; after, the new machine
gets ``Resume(state, since, reason)`` while INIT and is that state again at once, with no
Transition (its hooks ran when it was first entered, and smbd serves on): a master
advertises now and keeps its rhythm, a backup starts its master-down timer now. Resume in any
other state is ignored; the agent decides whether a hand-off is fresh enough to resume.

Demotion is host-wide and belongs to the agent, as in FreeBSD: it adds 240 while any CARP
interface is down (and while adverts fail to send), lets hooks and operators raise or lower
it, and tells every machine the new total with ``DemotionChanged``. A master advertises at once
with its new skew (FreeBSD's carp_send_ad_all); a backup's master-down timer does not change.
A backup with preempt on whose lowered demotion now beats the master it last heard preempts at
once ("preempting a slower master"), where FreeBSD waits for that master's next advert (up to
advbase later): the same outcome, sooner. A returning node releases its resync hold right after
the holder handed its VIP over, so this second is the client's outage.

``Reranked`` replaces the vhid's configured advskew (VRRPv3: priority) at run time, as
FreeBSD's ``ifconfig <if> vhid N advskew X`` does: a planned move (``hafs move``) makes one
node the best of one vhid. It acts as a demotion change does: a master re-advertises at
once, a backup that now outranks its master preempts at once.

Counter: until a valid advert has been heard, every advert carries a fresh ``random64()``;
after that the machine adopts the last received counter and adds one per advert it sends.

Timer: there is one per machine. Each ``SetTimer(at)`` replaces the previous deadline (None
means none); the agent sends ``Timeout()`` once ``now >= at``. A Timeout before the current
deadline, or with none set, is stale (e.g. it raced with an advert that restarted the timer)
and is ignored. A master schedules its next advert from the previous deadline, not from
``now``, so a late wake-up does not make the advert rhythm drift.

VRRPv3
======

With a ``VrrpConfig`` the same machine speaks RFC 5798 section 6.4, as keepalived and FreeBSD
14.1+'s ``carpver 3`` do. What changes is only what the config answers:

* Rank: a higher priority is better, equal priorities are broken by the higher source
  address (our own is ``primary``), so two masters never both step down. The priority on
  the wire is the configured one minus the demotion, at least 1 (0 is the bow-out); so the
  resync hold and the link-down demotion keep a VRRP node from preempting as they do a CARP
  one. An address owner (255) becomes MASTER at link-up ("address owner"), unless demoted.
* A master advertises every ``interval`` centiseconds, without skew.
* A backup's timer is Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time, with
  Skew_Time = (256 - priority) * Master_Adver_Interval / 256, where Master_Adver_Interval is
  the interval of the last advert heard (our own before any): a backup learns its master's
  rhythm. Skew_Time uses the priority we advertise, so a demoted backup waits longer.
* A master that shuts down sends priority 0. A backup that hears it waits Skew_Time only
  (``HEARD_RESIGNED``): the best backup's timer runs out first, its advert silences the
  others, so only one takes the addresses. A master that hears it re-advertises at once.
* There is no counter and no "master will time out" (``doomed``) case.

Here hafs diverges from RFC 5798 as it does from FreeBSD for CARP: a backup with preempt on
that hears a lower-priority master takes over after its Skew_Time ("preempting a slower
master"); the RFC discards the advert and lets the master-down timer run out. The outcome is
the same (the old master steps down on our advert, section 6.4.3), 3 intervals sooner, and
the backups go in the same order.
The master's answer to a worse master (``REASSERT``) holds for VRRPv3 too; keepalived and
FreeBSD ignore the extra advert.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from hafs.carp import vrrp
from hafs.carp.vrrp import PRIORITY_BOWOUT, PRIORITY_OWNER, VrrpAdvert
from hafs.carp.wire import (
    BOWOUT_ADVBASE,
    BOWOUT_ADVSKEW,
    COUNTER_MAX,
    MAX_SKEW,
    Advert,
    Hmac,
    check_range,
    make_key,
)

Address = IPv4Address | IPv6Address


class State(enum.Enum):
    """A vhid's state; the values are the words devd and ifconfig print."""

    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"

    __hash__ = object.__hash__  # a member is its only instance: hashed in C, per advert


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
    hmac: Hmac = field(init=False, repr=False, compare=False)

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
        object.__setattr__(self, "hmac", Hmac(key, self.vhid, addresses))

    @property
    def master_down(self) -> float:
        """Seconds a backup waits for the master: 3*advbase + advskew/256 (raw advskew)."""
        return 3 * self.advbase + self.advskew / 256

    # The protocol, as the machine asks it (VrrpConfig answers the same questions).

    @property
    def base_interval(self) -> float:
        """advbase: what a foreign master is answered at most once per."""
        return float(self.advbase)

    def advertised(self, demotion: int) -> int:
        """S = min(advskew + demotion, 240): the skew this vhid puts on the wire."""
        return min(self.advskew + demotion, MAX_SKEW)

    def advert_interval(self, demotion: int) -> float:
        """Seconds between a master's adverts: advbase + S/256."""
        return self.advbase + self.advertised(demotion) / 256

    def own_rank(self, demotion: int) -> tuple[int, ...]:
        return timing(self.advbase, self.advertised(demotion))

    def rank(self, advert: Advert | VrrpAdvert, source: Address) -> tuple[int, ...]:
        """The advert's place in the election; smaller is better, equal steps both down."""
        advert = _carp(advert)
        return timing(advert.advbase, advert.advskew)

    def doomed(self, advert: Advert | VrrpAdvert, demotion: int) -> bool:
        """A master slower than our master-down: it will time out (a bow-out is)."""
        advert = _carp(advert)
        ours = timing(3 * self.advbase, self.advertised(demotion))
        return ours < timing(advert.advbase, advert.advskew)

    def resigned(self, advert: Advert | VrrpAdvert) -> bool:
        """CARP's bow-out is ranked like any slow advert (``doomed``)."""
        return False

    def owner(self, demotion: int) -> bool:
        """CARP has no address owner."""
        return False

    def master_down_after(self, advert: Advert | VrrpAdvert | None, demotion: int) -> float:
        """FreeBSD's master-down does not depend on the master heard, nor on demotion."""
        return self.master_down

    def skew_time(self, demotion: int) -> float:
        """S/256 seconds: how long a backup waits before it preempts a slower master (the
        part of its advert interval its skew adds)."""
        return self.advertised(demotion) / 256

    def packet(self, demotion: int, bowout: bool, counter: Callable[[], int]) -> bytes:
        """The CARP header to send: our skew, or the bow-out advbase 255 / advskew 255."""
        if bowout:
            return self.hmac.header(BOWOUT_ADVSKEW, BOWOUT_ADVBASE, counter())
        return self.hmac.header(self.advertised(demotion), self.advbase, counter())


@dataclass(frozen=True)
class VrrpConfig:
    """One VRRPv3 virtual router (RFC 5798) as configured; invalid values raise ValueError.

    ``primary`` is this node's source address on the link: it goes into the checksum and
    breaks a tie between equal priorities (the higher address wins, section 6.4.3).
    ``interval`` is the Advertisement_Interval in centiseconds. Preempt defaults on, as in the
    RFC and keepalived.
    """

    vhid: int
    primary: IPv4Address
    priority: int = 100
    interval: int = 100
    addresses: tuple[IPv4Address, ...] = ()
    preempt: bool = True
    # the message for each priority sent: nothing else in it changes while the config stands
    _packets: dict[int, bytes] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        check_range("vhid", self.vhid, 1, 255)
        check_range("priority", self.priority, 1, 255)
        check_range("interval", self.interval, 1, vrrp.MAX_INTERVAL)
        if not isinstance(self.primary, IPv4Address):
            raise TypeError(f"primary: {self.primary!r} is not an IPv4Address")
        addresses = tuple(self.addresses)
        for addr in addresses:
            if not isinstance(addr, IPv4Address):
                raise TypeError(f"addresses: {addr!r} is not an IPv4Address")
            if addresses.count(addr) > 1:
                raise ValueError(f"addresses: {addr} is listed twice")
        object.__setattr__(self, "addresses", addresses)

    @property
    def master_down(self) -> float:
        """Master_Down_Interval before any master was heard: 3 * interval + Skew_Time."""
        return self.master_down_after(None, 0)

    @property
    def base_interval(self) -> float:
        return self.interval / 100

    def advertised(self, demotion: int) -> int:
        """The priority on the wire: demotion subtracts, down to 1 (0 is the bow-out)."""
        return max(self.priority - demotion, 1)

    def advert_interval(self, demotion: int) -> float:
        return self.interval / 100

    def own_rank(self, demotion: int) -> tuple[int, ...]:
        return -self.advertised(demotion), -int(self.primary)

    def rank(self, advert: Advert | VrrpAdvert, source: Address) -> tuple[int, ...]:
        """Higher priority is better, then the higher source address (section 6.4.3)."""
        return -_vrrp(advert).priority, -int(source)

    def doomed(self, advert: Advert | VrrpAdvert, demotion: int) -> bool:
        """VRRP has no slower-than-master-down case: a master that stops says so (priority 0)."""
        return False

    def resigned(self, advert: Advert | VrrpAdvert) -> bool:
        return _vrrp(advert).priority == PRIORITY_BOWOUT

    def owner(self, demotion: int) -> bool:
        """The address owner (255, not demoted) is master at once (section 6.4.1)."""
        return self.advertised(demotion) == PRIORITY_OWNER

    def master_down_after(self, advert: Advert | VrrpAdvert | None, demotion: int) -> float:
        """Seconds a backup waits after ``advert`` (section 6.4.2): it learns the master's
        interval as Master_Adver_Interval, and waits 3 of them plus Skew_Time; after a
        bow-out (priority 0) only Skew_Time, so the best backup speaks first. Skew_Time uses
        the priority we advertise: a demoted backup waits longer, as it should."""
        heard = None if advert is None else _vrrp(advert)
        interval = self.interval if heard is None else heard.interval
        skew = (256 - self.advertised(demotion)) * interval / 256
        if heard is not None and heard.priority == PRIORITY_BOWOUT:
            return skew / 100
        return (3 * interval + skew) / 100

    def skew_time(self, demotion: int) -> float:
        """Skew_Time at our own interval, in seconds: how long a backup waits before it
        preempts a slower master."""
        return (256 - self.advertised(demotion)) * self.interval / 256 / 100

    def packet(self, demotion: int, bowout: bool, counter: Callable[[], int]) -> bytes:
        """The VRRP message to send (VRRP has no counter): our priority, or 0 to bow out."""
        priority = PRIORITY_BOWOUT if bowout else self.advertised(demotion)
        packet = self._packets.get(priority)
        if packet is None:
            packet = vrrp.encode(self.vhid, priority, self.interval, self.addresses, self.primary)
            self._packets[priority] = packet
        return packet


Config = VhidConfig | VrrpConfig


def reranked(config: Config, value: int) -> Config:
    """``config`` with the advskew (CARP) or priority (VRRPv3) ``value``; ValueError when
    it is out of ifconfig's range."""
    if isinstance(config, VrrpConfig):
        return dataclasses.replace(config, priority=value)
    return dataclasses.replace(config, advskew=value)


def _carp(advert: Advert | VrrpAdvert) -> Advert:
    if not isinstance(advert, Advert):
        raise TypeError(f"a CARP machine was given {advert!r}")
    return advert


def _vrrp(advert: Advert | VrrpAdvert) -> VrrpAdvert:
    if not isinstance(advert, VrrpAdvert):
        raise TypeError(f"a VRRPv3 machine was given {advert!r}")
    return advert


# Events: what the agent tells the machine.


@dataclass(frozen=True)
class LinkUp:
    """The interface is up and has carrier."""


@dataclass(frozen=True)
class LinkDown:
    """The interface went down or lost carrier."""


@dataclass(frozen=True)
class AdvertReceived:
    """A valid advert for this vhid (TTL, checksum, vhid, source and digest already checked),
    of the machine's protocol."""

    advert: Advert | VrrpAdvert
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
class Reranked:
    """The vhid's advskew (VRRPv3: priority) is now ``config``'s: the same vhid and
    addresses, another rank (:func:`reranked`)."""

    config: VhidConfig | VrrpConfig


@dataclass(frozen=True)
class Shutdown:
    """Graceful stop: a master bows out; afterwards the machine ignores every event."""


@dataclass(frozen=True)
class Resume:
    """A reload: the previous agent process held this vhid in ``state`` (MASTER or BACKUP)
    since ``since`` (monotonic, the same clock across the re-exec) for ``reason``, and left
    its VIPs as they were. Only an INIT machine resumes."""

    state: State
    since: float
    reason: str

    def __post_init__(self) -> None:
        if self.state is INIT:
            raise ValueError("state: only MASTER or BACKUP can be resumed")


Event = (
    LinkUp | LinkDown | AdvertReceived | Timeout | DemotionChanged | Reranked | Shutdown | Resume
)


# Actions: what the agent must do, in the order given.


@dataclass(frozen=True)
class SendAdvert:
    """Send ``packet`` (a CARP header, or a VRRP message) to the group."""

    packet: bytes


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

    __hash__ = object.__hash__  # the tables are looked up per advert: C's, not Enum's Python

    LINK_UP = enum.auto()  # link up and the vhid has addresses
    LINK_UP_OWNER = enum.auto()  # the same, and we own the addresses (VRRP priority 255)
    LINK_DOWN = enum.auto()
    TIMER = enum.auto()  # the current deadline has passed
    DEMOTION = enum.auto()  # our rank changed: the demotion total, or Reranked
    SHUTDOWN = enum.auto()
    HEARD_BETTER = enum.auto()  # T(received) <= T(ours, S)
    HEARD_WORSE = enum.auto()  # slower than us, preempt off, within our master-down
    HEARD_PREEMPTABLE = enum.auto()  # slower than us, preempt on: preempt now
    HEARD_PREEMPTABLE_SOON = enum.auto()  # the same, heard as a backup: after our skew time
    PREEMPT_DUE = enum.auto()  # the skew time since a slower master was heard has passed
    PREEMPT_VOID = enum.auto()  # the same, but we no longer outrank it (demoted meanwhile)
    HEARD_DOOMED = enum.auto()  # slower than T(3*advbase, S), preempt off: it will time out
    HEARD_BYSTANDER = enum.auto()  # slower than us, from a second master while we follow a better
    HEARD_RESIGNED = enum.auto()  # a VRRP master bows out (priority 0)
    RESUME = enum.auto()  # a reload hands over MASTER or BACKUP (from INIT only)


class _Effect(enum.Enum):
    """What an input does when it does not change the state."""

    ADVERTISE = enum.auto()  # send an advert, next one an interval after the last deadline
    READVERTISE = enum.auto()  # send an advert now, next one an interval from now
    WAIT = enum.auto()  # restart the master-down timer
    PREEMPT_SOON = enum.auto()  # preempt once our skew time has passed, unless a better comes
    REASSERT = enum.auto()  # a worse master while we are master: count it, answer it


_TRANSITIONS: dict[tuple[State, _Input], tuple[State, str]] = {
    (INIT, _Input.LINK_UP): (BACKUP, "initialization complete"),
    (INIT, _Input.LINK_UP_OWNER): (MASTER, "address owner"),
    (BACKUP, _Input.LINK_DOWN): (INIT, "hardware interface down"),
    (BACKUP, _Input.TIMER): (MASTER, "master timed out"),
    (BACKUP, _Input.HEARD_PREEMPTABLE): (MASTER, "preempting a slower master"),
    (BACKUP, _Input.PREEMPT_DUE): (MASTER, "preempting a slower master"),
    (BACKUP, _Input.HEARD_DOOMED): (MASTER, "master will time out"),
    (BACKUP, _Input.SHUTDOWN): (INIT, "shutdown"),
    (MASTER, _Input.LINK_DOWN): (INIT, "hardware interface down"),
    (MASTER, _Input.HEARD_BETTER): (BACKUP, "more frequent advertisement received"),
    (MASTER, _Input.SHUTDOWN): (INIT, "shutdown"),
}

_IN_STATE: dict[tuple[State, _Input], _Effect] = {
    (BACKUP, _Input.HEARD_BETTER): _Effect.WAIT,
    (BACKUP, _Input.HEARD_WORSE): _Effect.WAIT,
    (BACKUP, _Input.HEARD_RESIGNED): _Effect.WAIT,  # for Skew_Time only
    (BACKUP, _Input.HEARD_PREEMPTABLE_SOON): _Effect.PREEMPT_SOON,
    (BACKUP, _Input.PREEMPT_VOID): _Effect.WAIT,
    (MASTER, _Input.TIMER): _Effect.ADVERTISE,
    (MASTER, _Input.DEMOTION): _Effect.READVERTISE,
    (MASTER, _Input.HEARD_WORSE): _Effect.REASSERT,
    (MASTER, _Input.HEARD_PREEMPTABLE): _Effect.REASSERT,
    (MASTER, _Input.HEARD_DOOMED): _Effect.REASSERT,
    (MASTER, _Input.HEARD_RESIGNED): _Effect.READVERTISE,
}
# Every (state, input) pair in neither table is ignored: it produces no actions.


def timing(advbase: int, skew: int) -> tuple[int, int]:
    """FreeBSD's advert ranking: (advbase, skew in microseconds); smaller is better."""
    return advbase, skew * 1_000_000 // 256


ANNOUNCE_AGAIN = 2.0  # seconds after becoming master; beyond Linux's neighbour locktime (1 s)


class VhidMachine:
    """One vhid's CARP or VRRPv3 state machine, as ``config`` says. Feed it
    ``handle(now, event)``; apply what it returns."""

    def __init__(self, config: Config, random64: Callable[[], int]) -> None:
        self._config = config
        self._random64 = random64
        self._state = INIT
        self._since: float | None = None
        self._reason: str | None = None
        self._deadline: float | None = None
        self._stopped = False
        self._demotion = 0
        self._last_counter: int | None = None
        # the master we back up: its source, its advert and that advert's rank
        self._master: tuple[Address, Advert | VrrpAdvert, tuple[int, ...]] | None = None
        self._adverts_sent = 0
        self._adverts_received = 0
        self._foreign_masters_seen = 0
        self._answered: dict[Address, float] = {}  # foreign master -> when we last answered it
        self._announce_again: float | None = None  # a new master's second Announce, not before
        self._preempt_at: float | None = None  # a backup's preemption of a slower master, due

    # Read-only status.

    @property
    def config(self) -> Config:
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
    def master_advert(self) -> Advert | VrrpAdvert | None:
        """The last advert of the master we back up."""
        return self._master[1] if self._master else None

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
    def advertised(self) -> int:
        """What this vhid puts on the wire: CARP's skew S, or VRRP's (demoted) priority."""
        return self._config.advertised(self._demotion)

    @property
    def advert_interval(self) -> float:
        """Seconds between a master's adverts."""
        return self._config.advert_interval(self._demotion)

    # The machine.

    def handle(self, now: float, event: Event) -> list[Action]:
        """Process one event at time ``now``; return the actions to apply, in order."""
        if self._stopped:
            return []
        advert = source = heard = None
        if isinstance(event, AdvertReceived):  # ranked once, for the tables and to remember
            advert, source = event.advert, event.source
            heard = (source, advert, self._config.rank(advert, source))
        kind = self._classify(now, event, heard)
        if isinstance(event, Shutdown):
            self._stopped = True
        if kind is None:
            return []
        if isinstance(event, Resume):
            return self._resume(now, event)
        was = self._state
        if heard and was is BACKUP and kind is not _Input.HEARD_BYSTANDER:
            self._master = heard  # before a change: a preempted master is "previous"
        target = _TRANSITIONS.get((was, kind))
        if target is not None:
            actions = self._change(now, kind, *target, advert)
        else:
            actions = self._stay(now, _IN_STATE.get((was, kind)), source, advert)
        if heard and was is not BACKUP and self._state is BACKUP:  # stepped down to its sender
            self._master = heard
        return actions

    def _classify(
        self,
        now: float,
        event: Event,
        heard: tuple[Address, Advert | VrrpAdvert, tuple[int, ...]] | None,
    ) -> _Input | None:
        """Turn an event into a table input (None: nothing to do), updating counters;
        ``heard``: an advert's source, the advert and its rank."""
        match event:  # the events of every advert first
            case AdvertReceived(advert=advert):
                self._adverts_received += 1
                if isinstance(advert, Advert):  # only CARP counts adverts
                    self._last_counter = advert.counter
                assert heard is not None
                return self._rank(*heard)
            case Timeout():
                if self._deadline is None or now < self._deadline:
                    return None
                if self._preempt_at is None:
                    return _Input.TIMER
                return _Input.PREEMPT_DUE if self._outranks_master() else _Input.PREEMPT_VOID
            case LinkUp():
                if not self._config.addresses:
                    return None
                owner = self._config.owner(self._demotion)
                return _Input.LINK_UP_OWNER if owner else _Input.LINK_UP
            case LinkDown():
                return _Input.LINK_DOWN
            case DemotionChanged(demotion=demotion):
                changed = demotion != self._demotion
                self._demotion = demotion
                return self._rank_changed(changed)
            case Reranked(config=config):
                if (config.vhid, config.addresses) != (self._config.vhid, self._config.addresses):
                    raise ValueError(f"{config!r}: not vhid {self._config.vhid}'s config")
                changed = config != self._config
                self._config = config
                return self._rank_changed(changed)
            case Shutdown():
                return _Input.SHUTDOWN
            case Resume():
                return _Input.RESUME if self._state is INIT else None

    def _rank_changed(self, changed: bool) -> _Input | None:
        """Our rank changed (demotion, or the configured skew): a backup that now outranks
        its master preempts as if its next advert had come; a master re-advertises."""
        if changed and self._state is BACKUP and self._outranks_master():
            return _Input.HEARD_PREEMPTABLE
        return _Input.DEMOTION if changed else None

    def _rank(self, source: Address, advert: Advert | VrrpAdvert, rank: tuple[int, ...]) -> _Input:
        config = self._config
        if config.resigned(advert):
            return _Input.HEARD_RESIGNED
        if rank <= config.own_rank(self._demotion):
            return _Input.HEARD_BETTER
        if self._state is BACKUP and self._follows_another(source):
            return _Input.HEARD_BYSTANDER
        if config.preempt:
            soon = self._state is BACKUP and not config.doomed(advert, self._demotion)
            if soon and config.skew_time(self._demotion) > 0:
                return _Input.HEARD_PREEMPTABLE_SOON
            return _Input.HEARD_PREEMPTABLE
        if config.doomed(advert, self._demotion):
            return _Input.HEARD_DOOMED
        return _Input.HEARD_WORSE

    def _follows_another(self, source: Address) -> bool:
        """Does this backup follow a master other than ``source`` that it does not outrank
        (heard within its master-down time: the timer says so)?"""
        if self._master is None or self._master[0] == source:
            return False
        return self._master[2] <= self._config.own_rank(self._demotion)

    def _outranks_master(self) -> bool:
        """Would the master this backup last heard be preempted, at our rank of now?"""
        if not self._config.preempt or self._master is None:
            return False
        return self._master[2] > self._config.own_rank(self._demotion)

    def _change(
        self,
        now: float,
        kind: _Input,
        new: State,
        reason: str,
        heard: Advert | VrrpAdvert | None,
    ) -> list[Action]:
        addresses = self._config.addresses
        previous = self._master[0] if self._master and new is MASTER else None
        actions: list[Action] = [Transition(self._state, new, reason, previous)]
        if self._state is MASTER:
            if kind is _Input.SHUTDOWN:
                actions.append(self._advert(bowout=True))
            actions.append(RemoveVips(addresses))
        self._state, self._since, self._reason = new, now, reason
        self._master = None
        self._announce_again = self._preempt_at = None
        if new is MASTER:
            actions.append(self._advert())
            actions += [AddVips(addresses), Announce(addresses)]
            actions.append(self._set_timer(now + self.advert_interval))
            self._announce_again = now + ANNOUNCE_AGAIN
        elif new is BACKUP:
            actions.append(self._set_timer(now + self._master_down(heard)))
        else:
            actions.append(self._set_timer(None))
        return actions

    def _resume(self, now: float, event: Resume) -> list[Action]:
        """Be ``event.state`` again without a Transition: the VIPs and the hooks' work are
        as the previous process left them."""
        self._state, self._since, self._reason = event.state, event.since, event.reason
        if event.state is MASTER:
            return [self._advert(), self._set_timer(now + self.advert_interval)]
        return [self._set_timer(now + self._master_down(None))]

    def next_adverts(self, count: int) -> list[bytes]:
        """The ``count`` adverts this master would send next (none unless MASTER), for the
        stand-in that sends them while the agent re-executes itself; counted as sent."""
        if self._state is not MASTER or self._stopped:
            return []
        return [self._advert().packet for _ in range(count)]

    def _stay(
        self,
        now: float,
        effect: _Effect | None,
        source: Address | None,
        heard: Advert | VrrpAdvert | None,
    ) -> list[Action]:
        match effect:
            case _Effect.ADVERTISE:
                last = now if self._deadline is None else self._deadline
                due = last + self.advert_interval
                nxt = due if due > now else now + self.advert_interval
                if self._announce_again is not None and now >= self._announce_again:
                    self._announce_again = None
                    return [self._advert(), Announce(self._config.addresses), self._set_timer(nxt)]
                return [self._advert(), self._set_timer(nxt)]
            case _Effect.READVERTISE:
                return [self._advert(), self._set_timer(now + self.advert_interval)]
            case _Effect.WAIT:
                self._preempt_at = None
                return [self._set_timer(now + self._master_down(heard))]
            case _Effect.PREEMPT_SOON:  # the first of the slower master's adverts counts
                if self._preempt_at is None:
                    self._preempt_at = now + self._config.skew_time(self._demotion)
                    return [self._set_timer(self._preempt_at)]
            case _Effect.REASSERT:
                self._foreign_masters_seen += 1
                if source is not None and self._may_answer(now, source):
                    return [self._advert(), Announce(self._config.addresses)]
        return []

    def _master_down(self, heard: Advert | VrrpAdvert | None) -> float:
        return self._config.master_down_after(heard, self._demotion)

    def _may_answer(self, now: float, source: Address) -> bool:
        """Answer a foreign master at most once per advbase (and remember only recent ones)."""
        window = self._config.base_interval
        self._answered = {s: t for s, t in self._answered.items() if now - t < window}
        if source in self._answered:
            return False
        self._answered[source] = now
        return True

    def _advert(self, bowout: bool = False) -> SendAdvert:
        packet = self._config.packet(self._demotion, bowout, self._counter)
        self._adverts_sent += 1
        return SendAdvert(packet)

    def _counter(self) -> int:
        """CARP's counter for the next advert: random until one was heard, then the last
        heard one plus one per advert sent."""
        if self._last_counter is None:
            return self._random64() & COUNTER_MAX
        self._last_counter = (self._last_counter + 1) & COUNTER_MAX
        return self._last_counter

    def _set_timer(self, at: float | None) -> SetTimer:
        self._deadline = at
        return SetTimer(at)
