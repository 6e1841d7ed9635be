"""`hafs agent`: every vhid of a node in one asyncio process, around the sans-IO machines.

The protocol decides in :mod:`hafs.carp.machine`; this module only does what the machines
say, in the order they say it, and feeds them what happens:

- packets: one raw socket per interface (:class:`hafs.carp.linux.CarpSocket`) on the event
  loop; each packet is checked (``wire.decode_ipv4``, vhid, source, digest) and dropped with a
  counted reason, or handed to its vhid's machine. A bad packet is never an exception; a
  VRRPv3 packet byte for byte the last one its vhid accepted is not decoded again.
- unicast (a vhid with ``peers`` in agent.toml): its adverts go to each peer's address instead
  of 224.0.0.18, one packet per peer (VRRPv3: each with its own checksum, which covers the
  destination), and it hears adverts from its peers only; a vhid without peers takes only
  adverts sent to the group. The machine never knows: the destination is chosen here, where
  packets are sent (:meth:`Agent._send`), and a multicast vhid's send and receive are as
  before.
- time: the loop's monotonic clock; ``SetTimer`` sets the vhid's deadline in
  :class:`hafs.carp.deadlines.Deadlines`, one ``call_at`` handle for every vhid. A master's
  advert may go up to 10 % of advbase early with others due then (one wake-up for them all);
  a backup's master-down never goes early.
- links: a netlink monitor turns carrier changes into LinkUp/LinkDown, and a down interface
  adds 240 to the host-wide demotion, as FreeBSD does.
- addresses: VIP add/remove (pyroute2) runs on one worker thread, in order, off the loop
  (pyroute2's synchronous API refuses to run inside an event loop).
- hooks: ``Transition`` actions queue hook commands (:mod:`hafs.carp.hooks`); they never block
  the loop.
- control: a unix socket answers ``hafs status`` and ``hafs demote``, and takes the moves.
- moves (``hafs move``): one vhid's advskew (VRRPv3: priority) replaced at run time, as
  FreeBSD's ``ifconfig <if> vhid N advskew X``, so that the node the VIP was moved to is its
  best carrier; kept in ``state_file`` (agent.toml) across restarts (:meth:`Agent.move`).
- SIGTERM/SIGINT: each master bows out (advbase 255, advskew 255; VRRPv3: priority 0) so
  backups take over at once, VIPs are removed, hooks run, then the agent exits 0.
- SIGHUP (``hafs agent --reload``, systemd's ExecReload): the agent re-executes itself, same
  pid, new code and agent.toml, and moves nothing; see "Reload" below.
- ``protocol = "vrrp3"`` (agent.toml): the same shell around VRRPv3 machines; only the
  decoder (:mod:`hafs.carp.vrrp`), the machines' config and the authentication (none) change:
  the raw socket, group, TTL and virtual MAC are CARP's.
- a tick every advbase/4 (VRRPv3: interval/4) (:meth:`Agent._tick`) notices stalls and lost
  peers even when nothing else happens, and feeds systemd's watchdog (``WATCHDOG=1``) when
  it asks for it.
- :func:`cleanup` (``hafs agent --cleanup``, systemd's ExecStopPost) stands in for a dead
  agent: no VIP of it stays up, and its services step down.

The resync hold
---------------

A node that may have missed what its peers did must not take a VIP back with stale data. The
agent then holds it demoted (the named hold ``resync``, 240) until ``hafs service run`` has
pulled the newer data from the current holders and had the VIPs it will preempt handed over,
and releases the hold through the control socket. The agent raises it:

- at start;
- when an interface loses carrier, and again when carrier returns (the link-down demotion
  ends with the outage, and a service daemon that found no peer during the outage may have
  released the hold meanwhile);
- after the agent itself did not run for longer than the shortest master-down interval of
  its vhids (SIGSTOP, a frozen VM, a long pause): every event reaches a machine through
  :meth:`Agent._handle`, which first checks the loop's clock for such a gap, raises the hold
  and reads the adverts queued meanwhile, before an expired timer or a queued packet can make
  a stale master advertise its old skew (which would make the peer that took over step down);
- when no peer was heard for longer than the longest master-down interval, after one was
  (isolated, or every peer died: the service daemon then finds nobody to sync from and
  releases the hold at once). A peer is heard by its adverts, except those of a master worse
  than ours: such a peer steps down on our adverts and then, as a backup, falls silent by
  design (with two nodes, one holding both VIPs, that is the normal state). If a demoted peer
  (skew 240: it holds itself back, e.g. it resumed after a stall) advertises while nothing but
  the silence holds this node, the agent releases the hold itself: that peer is the one that
  missed changes, and with both at 240 (FreeBSD steps both masters down on equal adverts)
  the stale one could win the next election.

Only with ``resync_holds`` or ``start_demoted`` (agent.toml): a service daemon runs beside the
agent to release the hold; without one, the causes are only logged.

Reload
------

A deploy that changed hafs or agent.toml reloads the agent instead of restarting it: a
restart bows out, so every VIP here would fail over and back. On SIGHUP the agent waits until
no hook runs, writes a hand-off (each vhid's state, since when and why, its addresses, and the
demotion with its holds: :class:`Handoff`) into the environment and re-executes itself: same
pid (systemd keeps it as the main process, the lab's supervisor as its child), VIPs and smbd
left as they are, no hook run. The new image resumes each vhid (``machine.Resume``): a master
advertises at once, a backup waits a master-down interval; holds stay as they were, and no
resync hold is raised at start (the node missed nothing).

The new image needs seconds before it can advertise (importing pyroute2 alone took 1 s on an
idle lab host, 20 s once on a loaded one), longer than a backup's master-down (3 s at advbase
1, 0.3 s at a VRRPv3 interval of 0.1 s). So before the exec the agent forks a stand-in
(:func:`_stand_in`) that sends the masters' next adverts on their schedule, built before the
fork, for at most :data:`STAND_IN_SECONDS`; the new image stops it once it has sent its own
first adverts. The stand-in is the agent's child, so the new image (same pid) reaps it.

A hand-off is used only if it is fresh (the stand-in still runs, or the old image's last
adverts are less than a master-down interval old) and, per vhid, matches: same vhid, interface
and addresses, a master's VIPs still on the interface and a backup's not. Otherwise that vhid
starts as at boot (its VIPs removed, INIT, hooks), and a master no longer configured has its
addresses removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, NoReturn

from pyroute2.netlink.exceptions import NetlinkError

from hafs import systemd
from hafs.agentconf import AGENT_SOCKET_ENV, PREVIOUS_MASTER_ENV, AgentConfig, VhidEntry
from hafs.carp import linux, vrrp
from hafs.carp.control import RELOAD_SECONDS, reload_marker
from hafs.carp.deadlines import Deadlines
from hafs.carp.hooks import Command, HookRunner, Result
from hafs.carp.machine import (
    Action,
    Address,
    AddVips,
    AdvertReceived,
    Announce,
    Config,
    DemotionChanged,
    Event,
    LinkDown,
    LinkUp,
    RemoveVips,
    Reranked,
    Resume,
    SendAdvert,
    SetTimer,
    Shutdown,
    State,
    Timeout,
    Transition,
    VhidConfig,
    VhidMachine,
    VrrpConfig,
    reranked,
)
from hafs.carp.vrrp import VrrpAdvert
from hafs.carp.wire import (
    CARP_GROUP_V4,
    MAX_SKEW,
    Advert,
    Drop,
    Rejected,
    decode_ipv4,
    encode_ipv4,
    ipv4_header,
    vhid_of,
)
from hafs.errors import HafsError
from hafs.holds import HOLD_DEMOTION, RESYNC_HOLD

log = logging.getLogger("hafs.agent")

LINK_DOWN_DEMOTION = 240  # FreeBSD's net.inet.carp.ifdown_demotion_factor
SEND_ERROR_DEMOTION = 240  # FreeBSD's net.inet.carp.senderr_demotion_factor
SEND_ERRORS_TO_DEMOTE = 3  # CARP_SENDAD_MAX_ERRORS
SENDS_TO_UNDEMOTE = 3  # CARP_SENDAD_MIN_SUCCESS
SHUTDOWN_HOOK_WAIT = 10.0  # seconds the agent waits for hooks when it stops
TICKS_PER_ADVBASE = 4
HANDOFF_ENV = "HAFS_AGENT_HANDOFF"  # the hand-off from the previous image, on a reload
STAND_IN_SECONDS = RELOAD_SECONDS  # the longest re-exec the stand-in advertises through
# of advbase (VRRPv3: interval): how early a master's advert may go with others due then. A
# vhid's schedule stays on its own times, so one served with the same others every round keeps
# an exact interval; 10 % gathers the vhids that became master within 0.1 s of each other (an
# agent starting, a node failing) into one wake-up per advbase instead of 8-16.
ADVERT_EARLY = 0.1
_TIMEOUT = Timeout()


@dataclass(frozen=True)
class UcarpScripts:
    """ucarp's up/down scripts: ``script <ifname> <vip> [xparam]`` with UCARP_VHID set."""

    up: str | None = None
    down: str | None = None
    xparam: str | None = None
    neutral: bool = False  # no down script when first becoming backup
    shutdown: bool = False  # run the down script at exit


@dataclass
class Demotion:
    """The host-wide demotion: operator's value + named holds + down links + send errors."""

    operator: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    causes: dict[str, str] = field(default_factory=dict)  # why a hold is up, when said
    since: dict[str, float] = field(default_factory=dict)  # when each hold went up (wall clock)
    links_down: set[str] = field(default_factory=set)
    send_failing: set[str] = field(default_factory=set)

    @property
    def total(self) -> int:
        links = LINK_DOWN_DEMOTION * len(self.links_down)
        sends = SEND_ERROR_DEMOTION * len(self.send_failing)
        return max(0, self.operator + sum(self.holds.values()) + links + sends)

    def adjust(self, delta: int) -> None:
        self.operator = max(0, self.operator + delta)

    def set(self, value: int) -> None:
        self.operator = max(0, value)

    def hold(self, name: str, value: int, cause: str = "") -> None:
        """A named demotion (e.g. a hook re-syncing data); 0 releases it."""
        if value > 0:
            self.since.setdefault(name, time.time())
            self.holds[name] = value
            if cause:
                self.causes[name] = cause
        else:
            self.holds.pop(name, None)
            self.causes.pop(name, None)
            self.since.pop(name, None)

    def restore(self, saved: dict[str, Any]) -> None:
        """Take the operator's value and the holds of :meth:`as_dict` (a reload); links and
        send errors are found again."""
        self.operator = int(saved["operator"])
        self.holds = {str(k): int(v) for k, v in saved["holds"].items()}
        self.causes = {str(k): str(v) for k, v in saved["causes"].items()}
        self.since = {str(k): float(v) for k, v in saved["since"].items()}

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "operator": self.operator,
            "holds": dict(self.holds),
            "causes": dict(self.causes),
            "since": dict(self.since),
            "links_down": sorted(self.links_down),
            "send_failing": sorted(self.send_failing),
        }


@dataclass
class Liveness:
    """Did this node miss what its peers did? Pure: the loop's clock comes in as ``now``.

    ``ran(now)`` is called before any event reaches a machine and by the tick: a gap since
    the previous call longer than ``stall_after`` means the agent did not run meanwhile.
    ``heard(now)`` records a valid advert from another node; ``silent(now)`` reports, once
    per silence, that none was heard for longer than ``silence_after`` after one was.
    """

    stall_after: float
    silence_after: float
    last_ran: float | None = None
    last_heard: float | None = None
    silence_told: bool = False

    def ran(self, now: float) -> float | None:
        """The seconds since the previous call when they are a stall, else None."""
        last, self.last_ran = self.last_ran, now
        if last is None or now - last <= self.stall_after:
            return None
        return now - last

    def heard(self, now: float) -> None:
        self.last_heard = now
        self.silence_told = False

    def silent(self, now: float) -> float | None:
        """The seconds without a peer's advert, the first time they exceed the limit."""
        if self.last_heard is None or self.silence_told:
            return None
        if now - self.last_heard <= self.silence_after:
            return None
        self.silence_told = True
        return now - self.last_heard


@dataclass
class Vhid:
    """One vhid at run time: its machine and what the shell keeps beside it."""

    entry: VhidEntry
    ifname: str
    machine: VhidMachine
    vip_ifname: str  # where the VIPs go: the interface, or its macvlan in vmac mode
    drops: Counter[str] = field(default_factory=Counter)
    # another master that does not step down: source -> (first, last) heard, monotonic
    foreign_masters: dict[str, tuple[float, float]] = field(default_factory=dict)
    started: bool = False  # has been BACKUP or MASTER once (for ucarp's --neutral)
    # VRRPv3: the last packet accepted for this vhid, the config it was checked against, and
    # what it said (Agent._accept)
    accepted: tuple[bytes, Config, Address, Advert | VrrpAdvert] | None = None
    peers: frozenset[IPv4Address] = frozenset()  # unicast: its adverts go to these, not the group
    # unicast: the last advert sent, and its IPv4 packet to each peer (a VRRPv3 master repeats
    # its message: the per-peer checksums are computed once)
    unicast_sent: tuple[bytes, list[tuple[bytes, str]]] | None = None

    @property
    def name(self) -> str:
        return f"{self.entry.vhid}@{self.ifname}"

    @property
    def key(self) -> tuple[str, int]:
        """Its key in ``Agent.vhids``."""
        return self.ifname, self.entry.vhid


class Interface:
    """One interface: its sockets (plus the send socket of each vmac: ``Agent.vmac_socks``),
    its addresses, its link state and how its sends go. :meth:`open` opens one."""

    def __init__(
        self,
        name: str,
        srcip: IPv4Address,
        own: set[IPv4Address],
        sock: linux.CarpSocket,
        garp: linux.GarpSender,
    ) -> None:
        self.name = name
        self.srcip = srcip  # adverts go from here
        self.own = own  # an advert from one of these is our own
        self.sock = sock
        self.garp = garp
        self.running: bool | None = None  # unknown until the first link state
        self.send_errors = 0
        self.sends_ok = 0
        self._headers: dict[int, bytes] = {}  # payload length -> IPv4 header to the group

    @classmethod
    def open(cls, ifname: str, srcip: IPv4Address | None) -> Interface:
        """Open ``ifname``'s sockets; adverts go from ``srcip``, else its first address."""
        addresses = [a.interface.ip for a in linux.ipv4_addresses(ifname)]
        if srcip is None:
            if not addresses:
                raise OSError(f"interface {ifname} has no IPv4 address to send adverts from")
            srcip = addresses[0]
        sock = linux.CarpSocket(ifname)
        try:
            garp = linux.GarpSender(ifname)
        except BaseException:
            sock.close()
            raise
        return cls(ifname, srcip, {srcip, *addresses}, sock, garp)

    def to_group(self, packet: bytes) -> bytes:
        """``packet`` in an IPv4 packet from this interface to the group (``encode_ipv4``,
        its header looked up by length: a vhid's adverts all have the same)."""
        header = self._headers.get(len(packet))
        if header is None:
            header = self._headers[len(packet)] = ipv4_header(self.srcip, len(packet))
        return header + packet

    def close(self) -> None:
        self.sock.close()
        self.garp.close()


class Agent:
    """The node's CARP agent. ``await run()`` until SIGTERM/SIGINT or :meth:`stop`."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        scripts: UcarpScripts | None = None,
        manage_addresses: bool = True,
        ignore_link_state: bool = False,
        random64: Callable[[], int] = lambda: random.getrandbits(64),
    ) -> None:
        self.config = config
        self.scripts = scripts
        self.manage_addresses = manage_addresses
        self.ignore_link_state = ignore_link_state
        self.demotion = Demotion()
        self._reloading = False
        self.drops: Counter[str] = Counter()  # packets no vhid could be charged with
        self.hooks = HookRunner(config.hook_timeout)
        self.vhids: dict[tuple[str, int], Vhid] = {}
        self.moves = self._load_moves()
        for entry in config.vhids:
            ifname = config.interface_of(entry)
            vhid_config = self._rank(entry, self.moves)
            vmac = config.link_mode_of(entry) == "vmac"
            self.vhids[(ifname, entry.vhid)] = Vhid(
                entry=entry,
                ifname=ifname,
                machine=VhidMachine(vhid_config, random64),
                vip_ifname=linux.vmac_ifname(entry.vhid) if vmac else ifname,
                peers=frozenset(entry.peers),
            )
        masters_down = [v.machine.config.master_down for v in self.vhids.values()]
        self.liveness = Liveness(stall_after=min(masters_down), silence_after=max(masters_down))
        self._handoff = take_handoff()
        self._handoff_fresh = self._handoff is not None and self._handoff.fresh(min(masters_down))
        if self._handoff_fresh:
            assert self._handoff is not None
            self.demotion.restore(self._handoff.demotion)  # the holds go on, no resync hold
        elif config.start_demoted:
            self._hold_resync("agent started")
        intervals = [v.machine.config.base_interval for v in self.vhids.values()]
        self.tick = min(intervals) / TICKS_PER_ADVBASE
        self._decode = vrrp.decode_ipv4 if config.protocol == "vrrp3" else decode_ipv4
        # VRRPv3 masters repeat their bytes until their priority changes; a CARP advert never
        # does (its counter, and so its digest, change every time): no repeat to look for
        self._repeats = config.protocol == "vrrp3"
        self._ticker: asyncio.TimerHandle | None = None
        self._deadlines: Deadlines[tuple[str, int]] | None = None
        self._watchdog: float | None = None  # seconds between WATCHDOG=1, if systemd asks
        self._watchdog_sent = -math.inf
        self._silence_hold = False  # the resync hold is up for the silence of the peers only
        self.interfaces: dict[str, Interface] = {}
        self.vmac_socks: dict[int, linux.CarpSocket] = {}
        self._netlink = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hafs-netlink")
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: linux.LinkMonitor | None = None
        self.started_at = time.time()

    # --- life cycle ---------------------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "the agent is not running"
        return self._loop

    @property
    def deadlines(self) -> Deadlines[tuple[str, int]]:
        """Every machine's deadline, on the loop (made with the first one)."""
        if self._deadlines is None:
            self._deadlines = Deadlines(self.loop, self._deadline_passed)
        return self._deadlines

    async def run(self, ready: Callable[[], None] | None = None) -> None:
        """Open everything, serve until stopped, then bow out and clean up."""
        from hafs.carp import control

        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        server = None
        self._watchdog = systemd.watchdog_every()
        try:
            await self._open()
            self._tick()
            server = await control.serve(self, self.config.control_socket)
            reload_marker(self.config.control_socket).unlink(missing_ok=True)  # served again
            if ready is not None:
                ready()
            log.info(
                "agent %s: %d vhid(s) on %s",
                self.config.node,
                len(self.vhids),
                ", ".join(sorted(self.interfaces)),
            )
            await self._stopping.wait()
            while self._reloading:
                await self._reexec()  # returns only when it did not re-execute
                if self._reloading:  # the exec failed: serve on
                    self._reloading = False
                    self._stopping.clear()
                    await self._stopping.wait()
            await self._shutdown()
        finally:
            if server is not None:
                server.close()
                with contextlib.suppress(OSError):
                    os.unlink(self.config.control_socket)
            self._close()

    def stop(self) -> None:
        """Ask the agent to stop gracefully (what SIGTERM does)."""
        self._reloading = False
        if self._stopping is not None:
            self._stopping.set()

    def reload(self) -> None:
        """Ask the agent to re-execute itself, moving nothing (what SIGHUP does)."""
        if self._stopping is not None and not self._stopping.is_set():
            self._reloading = True
            self._stopping.set()

    async def _open(self) -> None:
        names = sorted({v.ifname for v in self.vhids.values()})
        resumed = await self._resumable()
        for ifname in names:
            self.interfaces[ifname] = await self._in_thread(
                Interface.open, ifname, self.config.srcip
            )
            self.loop.add_reader(self.interfaces[ifname].sock.fileno(), self._readable, ifname)
        for vhid in self.vhids.values():
            if vhid.vip_ifname != vhid.ifname:
                await self._in_thread(linux.create_vmac, vhid.ifname, vhid.entry.vhid)
                sock = await self._in_thread(linux.CarpSocket, vhid.vip_ifname, join=False)
                self.vmac_socks[vhid.entry.vhid] = sock
            if self.manage_addresses and vhid.name not in resumed:  # a VIP left by a killed
                for address in vhid.entry.addresses:  # agent must not answer now
                    await self._in_thread(linux.remove_vip, vhid.vip_ifname, address)
        self._resume(resumed)
        self._monitor = linux.LinkMonitor()
        self.loop.add_reader(self._monitor.fileno(), self._links_changed)
        for ifname in names:
            state = await self._in_thread(linux.link_state, ifname)
            self._set_link(ifname, state.running or self.ignore_link_state)

    async def _shutdown(self) -> None:
        log.info("agent %s: stopping", self.config.node)
        for vhid in self.vhids.values():
            self._handle(vhid, Shutdown())
        if self.scripts is not None and self.scripts.shutdown and self.scripts.down:
            for vhid in self.vhids.values():
                self.hooks.submit(vhid.entry.vhid, self._script(vhid, self.scripts.down))
        await self.loop.run_in_executor(self._netlink, lambda: None)  # VIP removal done
        await self.hooks.drain(SHUTDOWN_HOOK_WAIT)

    def _close(self) -> None:
        if self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)
        if self._ticker is not None:
            self._ticker.cancel()
        if self._deadlines is not None:
            self._deadlines.close()
        for vhid in self.vhids.values():
            if vhid.vip_ifname != vhid.ifname:  # on the netlink thread: pyroute2 refuses the loop
                self._netlink.submit(linux.delete_vmac, vhid.entry.vhid)
        for iface in self.interfaces.values():
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(iface.sock.fileno())
            iface.close()
        for sock in self.vmac_socks.values():
            sock.close()
        if self._monitor is not None:
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_reader(self._monitor.fileno())
            self._monitor.close()
        self._netlink.shutdown(wait=True)

    async def _in_thread(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await self.loop.run_in_executor(self._netlink, lambda: func(*args, **kwargs))

    # --- reload: re-execute, moving nothing ------------------------------------------------

    async def _reexec(self) -> None:
        """Wait until no hook runs (the protocol goes on meanwhile), fork the stand-in, then
        replace this process with a fresh image of itself, handing every vhid over (see
        "Reload" above). Returns only if the exec failed; the agent then serves on."""
        log.info("agent %s: reloading: waiting for the hooks", self.config.node)
        while self._reloading:
            await self.hooks.drain(self.config.hook_timeout + SHUTDOWN_HOOK_WAIT)
            await self.loop.run_in_executor(self._netlink, lambda: None)  # VIP changes done
            if not self.hooks.busy:
                break
        if not self._reloading:  # stopped meanwhile
            return
        handoff = self._handoff_now()
        try:
            stand_in = self._fork_stand_in()
        except OSError as exc:
            log.error("agent %s: reload failed, serving on: no stand-in: %s", self.config.node, exc)
            return
        handoff = Handoff(handoff.written, stand_in, handoff.demotion, handoff.vhids)
        if self._watchdog is not None:  # the new image feeds it once it runs
            systemd.notify(f"WATCHDOG_USEC={int(STAND_IN_SECONDS * 1e6)}")
        argv = [sys.executable, *sys.orig_argv[1:]]
        log.info("agent %s: re-executing %s", self.config.node, " ".join(argv))
        for handler in logging.getLogger().handlers:
            handler.flush()
        marker = reload_marker(self.config.control_socket)
        try:
            marker.write_text(f"{os.getpid()}\n")  # clients wait for the new image
            os.execve(sys.executable, argv, {**os.environ, HANDOFF_ENV: handoff.dumps()})
        except OSError as exc:
            log.error("agent %s: reload failed, serving on: %s", self.config.node, exc)
            marker.unlink(missing_ok=True)
            _stop_stand_in(stand_in)
            if self._watchdog is not None:
                systemd.notify(f"WATCHDOG_USEC={os.environ.get('WATCHDOG_USEC', '')}")

    def _handoff_now(self) -> Handoff:
        vhids = {
            vhid.name: {
                "state": vhid.machine.state.value,
                "since": vhid.machine.since,
                "reason": vhid.machine.reason,
                "vip_ifname": vhid.vip_ifname,
                "addresses": [str(a) for a in vhid.entry.addresses],
            }
            for vhid in self.vhids.values()
            if vhid.machine.state is not State.INIT
        }
        return Handoff(time.monotonic(), None, self.demotion.as_dict(), vhids)

    def _fork_stand_in(self) -> int | None:
        """Fork the process that advertises for the masters while the new image starts; its
        pid (None when no vhid is master here)."""
        plan = []
        for vhid in self.vhids.values():
            m = vhid.machine
            interval = m.advert_interval
            packets = m.next_adverts(math.ceil(STAND_IN_SECONDS / interval) + 1)
            if not packets or m.deadline is None:
                continue
            iface = self.interfaces[vhid.ifname]
            sock = self.vmac_socks.get(vhid.entry.vhid, iface.sock)
            if not vhid.peers:
                ipv4 = [encode_ipv4(iface.srcip, packet) for packet in packets]
                plan.append((sock, linux.GROUP, ipv4, m.deadline, interval))
                continue
            to_peers = [self._unicast(vhid, iface.srcip, packet) for packet in packets]
            for i, (_, peer) in enumerate(to_peers[0]):
                ipv4 = [each[i][0] for each in to_peers]
                plan.append((sock, peer, ipv4, m.deadline, interval))
        if not plan:
            return None
        pid = os.fork()
        if pid == 0:
            _stand_in(plan, time.monotonic() + STAND_IN_SECONDS)
        return pid

    async def _resumable(self) -> dict[str, Resume]:
        """The vhids the hand-off of the previous image lets this one resume (none without a
        hand-off, or with a stale one); the masters that may not resume lose their handed
        addresses (they start as at boot, or are no longer configured)."""
        handoff = self._handoff
        if handoff is None:
            return {}
        fresh = self._handoff_fresh
        if not fresh:
            log.warning("reload: the hand-off is stale: starting as at boot")
            _stop_stand_in(handoff.stand_in)
        resumed: dict[str, Resume] = {}
        for name, item in handoff.vhids.items():
            vhid = next((v for v in self.vhids.values() if v.name == name), None)
            state = State(item["state"])
            ok = (
                fresh
                and vhid is not None
                and vhid.vip_ifname == item["vip_ifname"]
                and item["addresses"] == [str(a) for a in vhid.entry.addresses]
            )
            if ok:
                try:
                    present = await self._in_thread(_present, item["vip_ifname"], item["addresses"])
                except (HafsError, NetlinkError, OSError):
                    present = None
                ok = present == (state is State.MASTER)
            if ok:
                resumed[name] = Resume(state, float(item["since"]), str(item["reason"]))
                continue
            log.warning(
                "reload: vhid %s (%s) cannot resume: starting it as at boot", name, state.value
            )
            if state is State.MASTER and self.manage_addresses:
                for address in item["addresses"]:
                    with contextlib.suppress(HafsError, NetlinkError, OSError):
                        await self._in_thread(
                            linux.remove_vip, item["vip_ifname"], IPv4Address(address)
                        )
        return resumed

    def _resume(self, resumed: dict[str, Resume]) -> None:
        """Resume the handed-over vhids (masters advertise now), then stop the stand-in."""
        handoff = self._handoff
        if handoff is None:
            return
        self._handoff = None
        for vhid in self.vhids.values():
            event = resumed.get(vhid.name)
            if event is None:
                continue
            self._handle(vhid, DemotionChanged(self.demotion.total))
            self._handle(vhid, event)
            vhid.started = True
            log.info(
                "vhid %s: resumed %s after a reload, %.2fs after the hand-off",
                vhid.name,
                event.state.value,
                time.monotonic() - handoff.written,
            )
        _stop_stand_in(handoff.stand_in)
        if self._watchdog is not None:
            systemd.notify(f"WATCHDOG_USEC={os.environ.get('WATCHDOG_USEC', '')}")

    # --- events in -----------------------------------------------------------------------

    def _readable(self, ifname: str) -> None:
        iface = self.interfaces[ifname]
        while (packet := iface.sock.recv()) is not None:
            self.receive(ifname, packet)

    def receive(self, ifname: str, packet: bytes) -> None:
        """Check one IPv4 packet from ``ifname``; drop it with a reason or feed its vhid."""
        accepted = self._accept(ifname, packet)
        if accepted is None:
            return
        vhid, source, advert = accepted
        now = self.loop.time()
        if self._silence_hold and held_back(advert):  # before its advert is judged
            self._silence_hold = False
            if RESYNC_HOLD in self.demotion.holds:
                log.warning("resync hold released: %s is back, demoted itself", source)
                self.demotion.hold(RESYNC_HOLD, 0)
                self._demotion_changed()
        seen = vhid.machine.foreign_masters_seen
        self._handle(vhid, AdvertReceived(advert, source))
        if vhid.machine.foreign_masters_seen != seen:
            self._foreign_master(vhid, str(source), advert)
        else:  # a master to follow or yield to; a worse one is about to fall silent
            self.liveness.heard(now)
            self._silence_hold = False

    def _accept(
        self, ifname: str, packet: bytes
    ) -> tuple[Vhid, Address, Advert | VrrpAdvert] | None:
        """The vhid, source and advert of a packet its machine is to hear, or None: dropped,
        counted by reason.

        VRRPv3: a packet byte for byte the one its vhid accepted last, under the same
        configuration, is accepted again as it was, without a second decode (nothing else
        decides it): a master sends the same bytes until its priority changes.
        """
        if self._repeats:
            vhid = self.vhids.get((ifname, vhid_of(packet)))
            if vhid is not None and vhid.accepted is not None:
                last, config, source, advert = vhid.accepted
                if last == packet and config is vhid.machine.config:
                    return vhid, source, advert
        decoded = self._decode(packet)
        if isinstance(decoded, Rejected):
            self.drops[decoded.reason.value] += 1
            return None
        source, dst, advert = decoded
        vhid = self.vhids.get((ifname, advert.vhid))
        if vhid is None:
            self.drops[Drop.VHID.value] += 1
            return None
        if source in self.interfaces[ifname].own:
            vhid.drops[Drop.OURS.value] += 1
            return None
        if (vhid.peers or dst is not CARP_GROUP_V4) and source not in vhid.peers:
            vhid.drops[(Drop.PEER if vhid.peers else Drop.DESTINATION).value] += 1
            return None
        if not authentic(vhid.machine.config, advert):
            vhid.drops[Drop.DIGEST.value] += 1
            return None
        if self._repeats:
            vhid.accepted = (packet, vhid.machine.config, source, advert)
        return vhid, source, advert

    def _foreign_master(self, vhid: Vhid, source: str, advert: Advert | VrrpAdvert) -> None:
        """A worse master keeps advertising while we are master: warn once it persists.

        During an election a node may hear one stale advert of a master that is about to
        step down; only a master still advertising after a master-down interval (it does not
        hear us: a partition, a wrong pass on its side) is a split brain.
        """
        now = self.loop.time()
        window = vhid.machine.config.master_down
        first, last = vhid.foreign_masters.get(source, (now, now))
        if now - last > window:
            first = now  # a new episode
        vhid.foreign_masters[source] = (first, now)
        if now - first >= window and last - first < window:
            log.warning(
                "vhid %s: split brain: %s also claims to be master (%s) and has not "
                "stepped down for %.1fs",
                vhid.name,
                source,
                ", ".join(f"{k} {v}" for k, v in _heard(advert).items()),
                now - first,
            )

    def split_brain(self, vhid: Vhid) -> list[str]:
        """Sources of masters that have advertised beside us for over a master-down interval."""
        now, window = self.loop.time(), vhid.machine.config.master_down
        return sorted(
            source
            for source, (first, last) in vhid.foreign_masters.items()
            if now - last <= window and last - first >= window
        )

    def _links_changed(self) -> None:
        assert self._monitor is not None
        try:
            states = self._monitor.read()
        except OSError:  # ENOBUFS: events were lost, ask for the current state
            for ifname in self.interfaces:
                self.loop.run_in_executor(self._netlink, self._resync_link, ifname)
            return
        for state in states:
            if state.ifname in self.interfaces:
                running = (state.running and not state.deleted) or self.ignore_link_state
                self._set_link(state.ifname, running)

    def _resync_link(self, ifname: str) -> None:
        state = linux.link_state(ifname)
        self.loop.call_soon_threadsafe(
            self._set_link, ifname, state.running or self.ignore_link_state
        )

    def _set_link(self, ifname: str, running: bool) -> None:
        iface = self.interfaces[ifname]
        if running == iface.running:
            return
        was, iface.running = iface.running, running
        log.info("interface %s: link %s", ifname, "up" if running else "down")
        if running:
            self.demotion.links_down.discard(ifname)
        else:
            self.demotion.links_down.add(ifname)
        if was is not None:  # a change, not the state found at start
            self._hold_resync(f"link {ifname} {'back after a loss' if running else 'lost'}")
        for vhid in self.vhids.values():
            if vhid.ifname == ifname:
                self._handle(vhid, LinkUp() if running else LinkDown())
        self._demotion_changed()

    def _deadline_passed(self, key: tuple[str, int], at: float) -> None:
        vhid = self.vhids.get(key)
        if vhid is not None:
            self._timer(vhid, at)

    def _timer(self, vhid: Vhid, at: float) -> None:
        # a master's advert may be served a little early (_set_deadline), and asyncio may run a
        # call_at handle a hair early: the deadline has come all the same
        self._handle(vhid, _TIMEOUT, now=max(self.loop.time(), at))

    def _tick(self) -> None:
        """Every advbase/4: notice a stall, or that no peer is heard any more, even when
        nothing else happens; and tell systemd's watchdog that the loop runs."""
        now = self.loop.time()
        self._check_stall()
        silent = self.liveness.silent(now)
        if silent is not None:
            held = RESYNC_HOLD in self.demotion.holds
            self._hold_resync(f"no peer heard for {silent:.1f}s")
            self._silence_hold = not held and RESYNC_HOLD in self.demotion.holds
            self._demotion_changed()
        if self._watchdog is not None and now - self._watchdog_sent >= self._watchdog:
            systemd.notify("WATCHDOG=1")
            self._watchdog_sent = now
        self._ticker = self.loop.call_later(self.tick, self._tick)

    def _check_stall(self) -> None:
        """After a stall, before anything else: raise the resync hold (a master re-advertises
        with it at once), then read the adverts queued meanwhile, so that they restart the
        backups' master-down timers before those timers' expired callbacks run."""
        gap = self.liveness.ran(self.loop.time())
        if gap is None:
            return
        self._hold_resync(f"agent stalled {gap:.1f}s")
        self._demotion_changed()
        for ifname in self.interfaces:
            self._readable(ifname)

    def _hold_resync(self, cause: str) -> None:
        """This node may have missed changes: hold it demoted until `hafs service run` has
        re-synced it (only when one runs: ``resync_holds`` or ``start_demoted``). The caller
        then tells the machines (:meth:`_demotion_changed`)."""
        if not (self.config.resync_holds or self.config.start_demoted):
            log.info("%s (no resync hold: resync_holds is off)", cause)
            return
        log.warning("resync hold raised: %s", cause)
        self.demotion.hold(RESYNC_HOLD, HOLD_DEMOTION, cause)
        self._silence_hold = False  # another cause: it stays until the service daemon is done

    # --- demotion ----------------------------------------------------------------------------

    def change_demotion(self, change: Callable[[Demotion], None]) -> None:
        """Apply ``change`` to the demotion and tell every machine the new total."""
        change(self.demotion)
        self._demotion_changed()

    def _demotion_changed(self) -> None:
        self._check_stall()  # first, so the total sent includes a hold raised for a stall
        total = self.demotion.total
        for vhid in self.vhids.values():
            if vhid.machine.demotion != total:
                self._handle(vhid, DemotionChanged(total))

    # --- moves (`hafs move`) ---------------------------------------------------------------

    def _load_moves(self) -> dict[int, dict[str, Any]]:
        """The moves kept in ``state_file``: vhid -> {to, value, cause}. A move that does not
        fit this config (no such vhid, a value out of range) is dropped, and logged."""
        path = self.config.state_file
        try:
            data = json.loads(Path(path).read_text()) if path else {}
            moves = {int(k): dict(v) for k, v in data.get("moved", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("%s: not read (%s): every vhid at its configured rank", path, exc)
            return {}
        for entry in self.config.vhids:
            if entry.vhid in moves:
                try:
                    self._rank(entry, moves)
                except (ValueError, TypeError, KeyError) as exc:
                    log.error("%s: vhid %d: move dropped: %s", path, entry.vhid, exc)
                    del moves[entry.vhid]
        known = {e.vhid for e in self.config.vhids}
        return {vhid: move for vhid, move in moves.items() if vhid in known}

    def _rank(self, entry: VhidEntry, moves: dict[int, dict[str, Any]]) -> VhidConfig | VrrpConfig:
        """The machine's config of ``entry``: as configured, or at the rank it was moved to."""
        configured = machine_config(self.config, entry)
        move = moves.get(entry.vhid)
        return configured if move is None else reranked(configured, move["value"])

    def move(self, vhid: int, move: dict[str, Any] | None) -> None:
        """Move ``vhid`` (``{"to": node, "value": advskew or priority, "cause": text}``) or
        bring it back to its configured rank (None): kept in ``state_file`` first, then the
        machines told (a master re-advertises, a backup that now outranks its master
        preempts). ValueError: no such vhid, or a value out of range; OSError: not kept."""
        found = [v for v in self.vhids.values() if v.entry.vhid == vhid]
        if not found:
            raise ValueError(f"vhid {vhid}: not configured here")
        moves = {k: v for k, v in self.moves.items() if k != vhid}
        if move is not None:
            moves[vhid] = move
        configs = [(v, self._rank(v.entry, moves)) for v in found]
        if self.config.state_file is not None:
            path = Path(self.config.state_file)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"moved": {str(k): v for k, v in moves.items()}}))
            tmp.replace(path)
        self.moves = moves
        log.info("vhid %d: %s", vhid, move["cause"] if move else "back at its configured rank")
        for v, config in configs:
            self._handle(v, Reranked(config))

    # --- actions out -------------------------------------------------------------------------

    def _handle(self, vhid: Vhid, event: Event, now: float | None = None) -> None:
        self._check_stall()  # every entry point (timer, packet, link, control) comes here
        actions = vhid.machine.handle(self.loop.time() if now is None else now, event)
        for action in actions:
            self._apply(vhid, action)

    def _apply(self, vhid: Vhid, action: Action) -> None:
        match action:  # the two actions of every advert first
            case SendAdvert(packet=packet):
                self._send(vhid, packet)
            case SetTimer(at=at):
                self._set_deadline(vhid, at)
            case AddVips(addresses=addresses):
                if vhid.vip_ifname != vhid.ifname:
                    self._netlink_call(linux.set_link_up, vhid.vip_ifname, True)
                if self.manage_addresses:
                    for address in addresses:
                        self._netlink_call(linux.add_vip, vhid.vip_ifname, address, vhid.entry.vhid)
            case RemoveVips(addresses=addresses):
                if self.manage_addresses:
                    for address in addresses:
                        self._netlink_call(linux.remove_vip, vhid.vip_ifname, address)
                if vhid.vip_ifname != vhid.ifname:
                    self._netlink_call(linux.set_link_up, vhid.vip_ifname, False)
            case Announce(addresses=addresses):
                self._netlink_call(self._announce, vhid, addresses)
            case Transition():
                self._transition(vhid, action)

    def _set_deadline(self, vhid: Vhid, at: float | None) -> None:
        """A master's next advert may go a little early, with others due then (one wake-up for
        them all); a backup's master-down decides elections, to 1/256 of an interval: never."""
        machine = vhid.machine
        master = machine.state is State.MASTER
        early = machine.config.base_interval * ADVERT_EARLY if master else 0.0
        self.deadlines.set(vhid.key, at, early)

    def _netlink_call(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func`` on the netlink thread, after everything queued before; log failures."""
        future = self.loop.run_in_executor(self._netlink, func, *args)

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is not None:
                log.error("%s%r failed: %s", getattr(func, "__name__", func), args, f.exception())

        future.add_done_callback(done)

    def _announce(self, vhid: Vhid, addresses: tuple[Any, ...]) -> None:
        iface = self.interfaces[vhid.ifname]
        for address in addresses:
            if isinstance(address, IPv4Address) and vhid.vip_ifname == vhid.ifname:
                iface.garp.send(address)
        # in vmac mode the macvlan's own ARP replies announce the virtual MAC on first use;
        # a GARP from the real MAC would teach peers the wrong one

    def _send(self, vhid: Vhid, packet: bytes) -> None:
        iface = self.interfaces[vhid.ifname]
        sock = self.vmac_socks.get(vhid.entry.vhid, iface.sock)
        try:
            if vhid.peers:  # a dead peer (its neighbour entry FAILED) is no send error
                for ipv4, peer in self._unicast(vhid, iface.srcip, packet):
                    sock.send(ipv4, peer)
            else:
                sock.send(iface.to_group(packet))
        except OSError as exc:
            iface.sends_ok = 0
            iface.send_errors += 1
            log.warning("vhid %s: advert not sent: %s", vhid.name, exc)
            if iface.send_errors == SEND_ERRORS_TO_DEMOTE:
                self.demotion.send_failing.add(iface.name)
                self.loop.call_soon(self._demotion_changed)
            return
        iface.send_errors = 0
        iface.sends_ok += 1
        if iface.sends_ok == SENDS_TO_UNDEMOTE and iface.name in self.demotion.send_failing:
            self.demotion.send_failing.discard(iface.name)
            self.loop.call_soon(self._demotion_changed)

    def _unicast(self, vhid: Vhid, src: IPv4Address, packet: bytes) -> list[tuple[bytes, str]]:
        """The IPv4 packets of one advert of a unicast vhid, one per peer, with the peer's
        address; a VRRPv3 message is re-checksummed for each peer (it covers the destination)."""
        last = vhid.unicast_sent
        if last is not None and last[0] == packet:
            return last[1]
        vrrp3 = isinstance(vhid.machine.config, VrrpConfig)
        packets = [
            (
                encode_ipv4(src, vrrp.readdress(packet, src, peer) if vrrp3 else packet, dst=peer),
                str(peer),
            )
            for peer in vhid.entry.peers
        ]
        vhid.unicast_sent = (packet, packets)
        return packets

    def _transition(self, vhid: Vhid, action: Transition) -> None:
        previous = action.previous_master
        log.info(
            "vhid %s: %s -> %s (%s%s)",
            vhid.name,
            action.old.value,
            action.new.value,
            action.reason,
            f"; master was {previous}" if previous else "",
        )
        commands = (
            [event_command(self.config, vhid.name, action.new, previous)]
            if self.config.event_command
            else []
        )
        if self.scripts is not None:
            first_backup = action.new is State.BACKUP and not vhid.started
            if action.new is State.MASTER and self.scripts.up:
                commands += self._script(vhid, self.scripts.up)
            elif self.scripts.down and (
                action.old is State.MASTER or (first_backup and not self.scripts.neutral)
            ):
                commands += self._script(vhid, self.scripts.down)
        if action.new is not State.INIT:
            vhid.started = True
        self.hooks.submit(vhid.entry.vhid, commands)

    def _script(self, vhid: Vhid, script: str) -> list[Command]:
        env = {"UCARP_VHID": str(vhid.entry.vhid)}
        extra = (self.scripts.xparam,) if self.scripts and self.scripts.xparam else ()
        return [
            Command((script, vhid.ifname, str(address), *extra), env)
            for address in vhid.entry.addresses
        ]

    # --- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything ``hafs status`` shows, as plain JSON-able data."""
        now, wall = self.loop.time(), time.time()
        vhids = []
        for vhid in sorted(self.vhids.values(), key=lambda v: v.entry.vhid):
            m = vhid.machine
            item: dict[str, Any] = {
                "vhid": vhid.entry.vhid,
                "interface": vhid.ifname,
                "addresses": [str(a) for a in vhid.entry.addresses],
                "peers": [str(a) for a in vhid.entry.peers],  # none: multicast
                "state": m.state.value,
                "since": None if m.since is None else wall - (now - m.since),
                "reason": m.reason,
                **_timings(m.config, m.advertised),
                "master": None,
                "adverts_sent": m.adverts_sent,
                "adverts_received": m.adverts_received,
                "drops": dict(vhid.drops),
                "split_brain": [],
            }
            if m.master_source is not None and m.master_advert is not None:
                item["master"] = {
                    "source": str(m.master_source),
                    **_heard(m.master_advert),
                }
            item["split_brain"] = self.split_brain(vhid)
            move = self.moves.get(vhid.entry.vhid)
            item["moved"] = None if move is None else {**move, "configured": _configured(vhid)}
            vhids.append(item)
        return {
            "node": self.config.node,
            "pid": os.getpid(),
            "started": self.started_at,
            "reloadable": True,  # SIGHUP re-executes in place (an older agent would die of it)
            "demotion": self.demotion.as_dict(),
            "drops": dict(self.drops),
            "hooks_running": self.hooks.running,
            "interfaces": {
                name: {"running": i.running, "srcip": str(i.srcip)}
                for name, i in sorted(self.interfaces.items())
            },
            "vhids": vhids,
        }


@dataclass(frozen=True)
class Handoff:
    """What one agent image hands the next on a reload (in :data:`HANDOFF_ENV`, as JSON):
    when (monotonic, one clock across the exec), the stand-in's pid, the demotion
    (:meth:`Demotion.as_dict`) and, per vhid name, its state, since, reason, VIP interface
    and addresses."""

    written: float
    stand_in: int | None
    demotion: dict[str, Any]
    vhids: dict[str, dict[str, Any]]

    def dumps(self) -> str:
        return json.dumps(
            {
                "written": self.written,
                "stand_in": self.stand_in,
                "demotion": self.demotion,
                "vhids": self.vhids,
            }
        )

    @classmethod
    def loads(cls, text: str) -> Handoff:
        """Parse :meth:`dumps`; ValueError (or KeyError, TypeError) when it is not one."""
        data = json.loads(text)
        stand_in = data["stand_in"]
        if stand_in is not None and not isinstance(stand_in, int):
            raise TypeError(f"stand_in: {stand_in!r}")
        Demotion().restore(data["demotion"])  # checks it
        vhids = data["vhids"]
        for item in vhids.values():
            if State(item["state"]) is State.INIT:
                raise ValueError("state: INIT is never handed over")
            float(item["since"])
            if not isinstance(item["vip_ifname"], str) or not isinstance(item["addresses"], list):
                raise TypeError(f"vhid entry {item!r}")
        return cls(float(data["written"]), stand_in, data["demotion"], vhids)

    def fresh(self, master_down: float) -> bool:
        """Has nobody taken over meanwhile: the stand-in still advertises, or the last
        adverts of the previous image are less than ``master_down`` seconds old?"""
        if self.stand_in is not None:
            try:
                pid, _ = os.waitpid(self.stand_in, os.WNOHANG)
            except ChildProcessError:
                pid = self.stand_in  # not ours, or reaped already
            if pid == 0:
                return True
        return time.monotonic() - self.written < master_down


def take_handoff() -> Handoff | None:
    """The hand-off of the previous image (None if this start is not a reload), removed
    from the environment so that hooks and a later exec do not see it."""
    text = os.environ.pop(HANDOFF_ENV, None)
    if text is None:
        return None
    try:
        return Handoff.loads(text)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("reload: the hand-off is unreadable (%s): starting as at boot", exc)
        return None


def _present(ifname: str, addresses: list[str]) -> bool | None:
    """True if every address is on ``ifname``, False if none is, None otherwise."""
    here = {str(a.interface.ip) for a in linux.ipv4_addresses(ifname)}
    found = [a in here for a in addresses]
    return True if all(found) else False if not any(found) else None


def _stand_in(
    plan: list[tuple[linux.CarpSocket, str, list[bytes], float, float]], until: float
) -> NoReturn:
    """The forked stand-in: send each master's prepared adverts (socket, destination, packets,
    first due, interval; a unicast vhid has one entry per peer) on its schedule until
    ``until`` or SIGTERM; nothing else (no logging, no loop: the parent had threads), every
    other descriptor closed (a listening port would keep the new image from binding it)."""
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        keep = {sock.fileno() for sock, *_ in plan}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in keep:
                with contextlib.suppress(OSError):
                    os.close(fd)
        queue = [(due, i, 0) for i, (_, _, _, due, _) in enumerate(plan)]
        heapq.heapify(queue)
        while queue:
            due, i, n = heapq.heappop(queue)
            if due > until:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            sock, dst, packets, _, interval = plan[i]
            with contextlib.suppress(OSError):
                sock.send(packets[n], dst)
            if n + 1 < len(packets):
                heapq.heappush(queue, (due + interval, i, n + 1))
    finally:
        os._exit(0)


def _stop_stand_in(pid: int | None) -> None:
    """End the stand-in (by its pid: it is this process's child) and reap it."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def machine_config(config: AgentConfig, entry: VhidEntry) -> VhidConfig | VrrpConfig:
    """The machine's configuration of ``entry``, in the agent's protocol."""
    common: dict[str, Any] = {
        "vhid": entry.vhid,
        "addresses": entry.addresses,
        "preempt": config.preempt,
    }
    if config.protocol == "vrrp3":
        if config.srcip is None:
            raise HafsError("srcip: VRRPv3 needs it (it is in every checksum): set srcip")
        return VrrpConfig(
            primary=config.srcip, priority=entry.priority, interval=entry.interval, **common
        )
    return VhidConfig(
        advbase=entry.advbase, advskew=entry.advskew, passphrase=config.passphrase, **common
    )


def authentic(config: VhidConfig | VrrpConfig, advert: Advert | VrrpAdvert) -> bool:
    """CARP's digest matches; VRRPv3 has no authentication (RFC 5798 section 9), but an
    advert of the other protocol never reaches a machine."""
    if isinstance(config, VhidConfig):
        return isinstance(advert, Advert) and config.hmac.verify(advert)
    return isinstance(advert, VrrpAdvert)


def held_back(advert: Advert | VrrpAdvert) -> bool:
    """Does the sender hold itself back (a resync hold: CARP skew 240, VRRPv3 priority 1)?"""
    if isinstance(advert, VrrpAdvert):
        return advert.priority == 1
    return advert.advskew >= MAX_SKEW


def _timings(config: VhidConfig | VrrpConfig, advertised: int) -> dict[str, Any]:
    """A vhid's timing settings in status, in its protocol's words."""
    if isinstance(config, VrrpConfig):
        return {
            "priority": config.priority,
            "interval": config.interval / 100,
            "advertised_priority": advertised,
        }
    return {"advbase": config.advbase, "advskew": config.advskew, "advertised_skew": advertised}


def _configured(vhid: Vhid) -> int:
    """The vhid's rank as agent.toml says: its advskew (CARP) or priority (VRRPv3)."""
    config = vhid.machine.config
    return vhid.entry.priority if isinstance(config, VrrpConfig) else vhid.entry.advskew


def _heard(advert: Advert | VrrpAdvert) -> dict[str, Any]:
    """What status shows of the master's advert, in its protocol's words."""
    if isinstance(advert, VrrpAdvert):
        return {"priority": advert.priority, "interval": advert.interval / 100}
    return {"advskew": advert.advskew, "advbase": advert.advbase}


def event_command(
    config: AgentConfig, name: str, state: State, previous: Address | None = None
) -> Command:
    """``event_command <vhid>@<ifname> <STATE>``, told the control socket and, on MASTER, the
    master it replaced (`hafs event` fences that node; others need no fencing)."""
    env = {AGENT_SOCKET_ENV: config.control_socket}
    if previous is not None:
        env[PREVIOUS_MASTER_ENV] = str(previous)
    return Command((*config.event_command, name, state.value), env)


def cleanup(config: AgentConfig) -> int:
    """Stand in for a dead agent (systemd's ExecStopPost, the lab's supervisor): remove every
    VIP of ``config`` and each virtual-MAC interface, then run the event command with BACKUP
    for every vhid, so that the service layer stops serving them. Finding nothing to remove is
    no error. Returns 0, or 1 if a step failed (each failure is logged)."""
    failed = False
    for entry in config.vhids:
        ifname = config.interface_of(entry)
        try:
            for address in entry.addresses:
                if linux.remove_vip(ifname, address):
                    log.info("cleanup: removed %s from %s", address, ifname)
            if config.link_mode_of(entry) == "vmac" and linux.delete_vmac(entry.vhid):
                log.info("cleanup: deleted %s", linux.vmac_ifname(entry.vhid))
        except HafsError as exc:  # the interface is gone, and its addresses with it
            log.info("cleanup: vhid %d: %s", entry.vhid, exc)
        except (NetlinkError, OSError) as exc:
            log.error("cleanup: vhid %d: %s", entry.vhid, exc)
            failed = True
    if config.event_command:
        results = asyncio.run(_step_down(config))
        failed = failed or len(results) < len(config.vhids)
        failed = failed or any(r.returncode != 0 for r in results)
    return 1 if failed else 0


async def _step_down(config: AgentConfig) -> list[Result]:
    runner = HookRunner(config.hook_timeout)
    for entry in config.vhids:
        name = f"{entry.vhid}@{config.interface_of(entry)}"
        runner.submit(entry.vhid, [event_command(config, name, State.BACKUP)])
    await runner.drain(config.hook_timeout + SHUTDOWN_HOOK_WAIT)
    await runner.close()
    return runner.results
