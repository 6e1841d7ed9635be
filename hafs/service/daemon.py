"""`hafs service run`: the node's service daemon, beside the CARP daemon.

Every ``replication_interval`` it first checks the pool (:mod:`hafs.service.health`: one that
does not answer stops every smbd here and demotes the node), then tends each VIP this node
holds: keeps its smbd alive (restart; if that fails, demote the node so a backup takes over),
records the SMB clients, snapshots and sends to the other carriers, and publishes the lag per
peer in ``/var/run/hafs/replication.json`` (shown by ``hafs status``).

Started while the node is held demoted ("resync": ``start_demoted`` in agent.toml on Linux,
``rc.d/hafs_demote`` at boot on FreeBSD), it asks every peer which VIPs it holds, brings every
replica up to date from those holders and asks them to hand over the VIPs this node will
preempt, then releases the demotion. On SIGTERM it quiesces the VIPs
it holds and sends the final incremental to every carrier before the CARP daemon bows out,
so a graceful stop loses nothing. On SIGHUP (a reload: a deploy that changed hafs) it ends
its round and re-executes itself, same pid, quiescing nothing: the new image finds the VIPs
served, their smbd running and its state in /run/hafs, and carries on.

A daemon that stopped running (SIGSTOP, a frozen process) replicates nothing while its VIPs
are still served: every write since is in one place only. Under systemd a thread of its own
feeds the watchdog (hooks/hafs-service.service: ``WatchdogSec``), so such a daemon is killed
and started again, which finds its VIPs served (each smbd runs in a scope of its own) and
carries on. Elsewhere (FreeBSD's daemon(8), the lab) it is only reported: ``hafs cluster
status`` says its report is stale (exit 1), ``hafs status`` shows the lag growing.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hafs import systemd
from hafs.errors import HafsError
from hafs.holds import HOLD_DEMOTION, POOL_HOLD, QUORUM_HOLD, RESYNC_HOLD, smbd_hold
from hafs.service import config as service_config
from hafs.service import demotion, divergence, health, metrics, move, space, takeover
from hafs.service.config import VipService
from hafs.service.membership import PORT, Membership
from hafs.service.node import Look, NodeServices
from hafs.service.quorum import Verdict
from hafs.service.replication import Pulled
from hafs.service.runtime import RUN_DIR, ServiceError
from hafs.service.zfs import ZfsError

log = logging.getLogger("hafs.service")

STATUS_FILE = RUN_DIR / "replication.json"
HELD_TIMEOUT = 10.0  # ssh's connect timeout and a remote python's start, with room
TAKE_BACK_WAIT = 2.0  # seconds for the agent to preempt once the resync hold is released
# a round running this long since it began or since the pool's last probe: probe it (again)
# beside the round, which may be waiting on a hung pool (its zfs commands: up to 120 s). A
# round takes a second or two, up to an interval with a send: a probe then finds the pool
# answering, and costs one `zpool list`
POOL_WATCH_AFTER = 5.0
POOL_WATCH_STEP = 1.0  # seconds between two looks at the round


class ServiceDaemon:
    def __init__(self, services: NodeServices, config_path: Path | None = None) -> None:
        self.services = services
        self.config = services.config
        self.config_path = config_path  # re-read when it changes (None: never)
        self.config_bytes = self._read_config()
        self.demotion = demotion.for_node(self.config.agent_socket)
        self.stopping = threading.Event()
        self.reloading = False
        self.report: dict[str, Any] = {}
        self.membership: Membership | None = None
        self.lost_quorum = False
        self.pool_ok = True
        self.pool_low = False
        self.probing = threading.Lock()  # one probe at a time: the round's or the watch's
        self.probed = 0.0  # monotonic: when the last probe began
        self.round_began: float | None = None  # monotonic, while a round runs
        self.limited: set[str] = set()  # VIPs whose limit this daemon set (hafs.service.space)

    # --- demotion (the agent's holds on Linux, the kernel's counter on FreeBSD) ---------------

    def hold(self, name: str, value: int, cause: str = "") -> None:
        if self.demotion is None:
            return
        try:
            self.demotion.hold(name, value, cause)
        except HafsError as exc:
            log.error("demotion hold %s=%d: %s", name, value, exc)

    # --- cluster.json changes -------------------------------------------------------------------

    def _read_config(self) -> bytes | None:
        try:
            return self.config_path.read_bytes() if self.config_path else None
        except OSError:
            return None

    def reload(self) -> None:
        """Re-read cluster.json when a deploy rewrote it: new users and passwords then reach
        the VIPs served here within a round, with no restart (which would quiesce them)."""
        data = self._read_config()
        if self.config_path is None or data is None or data == self.config_bytes:
            return
        self.config_bytes = data
        try:
            config = service_config.load(self.config_path)
        except HafsError as exc:
            log.error("%s: %s: keeping the configuration in use", self.config_path, exc)
            return
        if config.node != self.config.node:
            log.error(
                "%s: now for node %s: keeping the configuration in use",
                self.config_path,
                config.node,
            )
            return
        self.services.config = self.config = config
        self.limited.clear()  # a VIP more or fewer: each one's part of the pool changes
        log.info("%s changed: reloaded", self.config_path)

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested())
        log.info(
            "service daemon on %s: %d VIP(s), every %.0fs",
            self.config.node,
            len(self.config.vips),
            self.config.replication_interval,
        )
        self.start_membership()
        threading.Thread(target=self.watch_pool, name="hafs-pool-watch", daemon=True).start()
        every = systemd.watchdog_every()
        if every is not None:  # hooks/hafs-service.service: WatchdogSec
            threading.Thread(
                target=systemd.feed_watchdog, args=(every,), name="hafs-watchdog", daemon=True
            ).start()
        while not self.stopping.is_set():
            began = self.round_began = time.monotonic()
            self.reload()
            if self.pool_healthy() and self.quorate() and self.resync_pending():
                self.resync()
            seen = self.services.look()
            for vip in self.config.vips:
                if not self.pool_ok:  # the watch found it hung meanwhile
                    break
                try:
                    self.tend(vip, seen)
                except (ServiceError, ZfsError, OSError, subprocess.SubprocessError) as exc:
                    log.error("%s: %s", vip.name, exc)
                except Exception:  # a bug: logged in full, and the other VIPs are still tended
                    log.exception("%s: unexpected error", vip.name)
            self.publish()
            self.services.receivers.close_idle()
            self.round_began = None
            self.stopping.wait(
                max(0.5, self.config.replication_interval - (time.monotonic() - began))
            )
        if self.reloading:
            self.reexec()
        self.shutdown()

    def reload_requested(self) -> None:
        self.reloading = True
        self.stopping.set()

    def reexec(self) -> None:
        """Replace this process with a fresh image of itself (new code, same pid): nothing
        is quiesced or stepped down. Raises ServiceError if the exec fails (the supervisor
        then starts the daemon again, which quiesces nothing either)."""
        argv = [sys.executable, *sys.orig_argv[1:]]
        self.services.receivers.close_all()  # the new image starts its own; none left unreaped
        log.info("reloading: re-executing %s", " ".join(argv))
        for handler in logging.getLogger().handlers:
            handler.flush()
        try:
            os.execv(sys.executable, argv)
        except OSError as exc:
            raise ServiceError(f"reload: cannot re-execute {sys.executable}: {exc}") from exc

    # --- the pool's health (hafs.service.health) -------------------------------------------------

    def watch_pool(self) -> None:
        """Beside the rounds: probe the pool while a round runs long. A pool that hangs in
        the middle of a round (a dying disk; zfs-fuse stopped) holds the round in a ``zfs``
        command for up to two minutes, and the next round's probe would come after it: the
        VIP would stay here, unserved, all that time."""
        while not self.stopping.wait(POOL_WATCH_STEP):
            if self.round_overdue(time.monotonic()):
                self.pool_healthy()

    def round_overdue(self, now: float) -> bool:
        """A round has run :data:`POOL_WATCH_AFTER` s since it began or the last probe."""
        began = self.round_began
        return began is not None and now - max(began, self.probed) >= POOL_WATCH_AFTER

    def pool_healthy(self) -> bool:
        """Check the pool; on a change, raise or release the hold (see the module)."""
        with self.probing:
            self.probed = time.monotonic()
            return self._pool_healthy()

    def _pool_healthy(self) -> bool:
        problem = health.pool_problem(self.services.zfs, self.config.pool)
        if problem is not None:
            if self.pool_ok:
                log.error("%s: this node serves nothing until it answers again", problem)
                self.hold(POOL_HOLD, HOLD_DEMOTION, problem)
            for vip in self.config.vips:  # every round: an smbd a takeover started meanwhile
                if self.services.smbd_pid(vip) is not None:
                    log.warning("%s: stopping its smbd: %s", vip.name, problem)
                    self.services.stop_smbd(vip)
        elif not self.pool_ok:
            log.info("pool %s answers again: resync, then serve", self.config.pool)
            self.hold(RESYNC_HOLD, HOLD_DEMOTION, "pool answers again")  # missed every send
            self.hold(POOL_HOLD, 0)
        self.pool_ok = problem is None
        return self.pool_ok

    # --- quorum ----------------------------------------------------------------------------------

    def start_membership(self) -> None:
        """Heartbeats with the peers on a thread of their own (a long send never delays them)."""
        try:
            self.membership = Membership(self.config, self.quorum_changed)
        except OSError as exc:
            log.error("quorum: no heartbeats (udp port %d: %s): serving without quorum", PORT, exc)
            return
        threading.Thread(
            target=self.membership.run, args=(self.stopping,), name="hafs-membership", daemon=True
        ).start()

    def quorate(self) -> bool:
        verdict = self.membership.verdict if self.membership else None
        return verdict is None or verdict.quorate

    def quorum_changed(self, verdict: Verdict) -> None:
        """Lost: hold the node out of the way and stop serving every VIP at once (not at the
        next round). Regained: this node may have missed writes: resync before preempting."""
        if not verdict.quorate:
            self.hold(QUORUM_HOLD, HOLD_DEMOTION, f"no quorum: {verdict.reason}")
            threading.Thread(target=self.stay_released, name="hafs-quorum-lost").start()
        elif self.lost_quorum:
            self.hold(RESYNC_HOLD, HOLD_DEMOTION, "back in the majority")
            self.hold(QUORUM_HOLD, 0)
        self.lost_quorum = not verdict.quorate

    def stay_released(self) -> None:
        """While in a minority, every second: a takeover that began just before the quorum
        was lost (a MASTER hook of the isolated node) must not leave an smbd behind."""
        while not self.stopping.is_set():
            self.release_all()
            if self.quorate():
                return
            self.stopping.wait(1.0)

    def release_all(self) -> None:
        for vip in self.config.vips:
            if self.services.smbd_pid(vip) is not None:
                log.warning("%s: no quorum: this node stops serving it", vip.name)
                try:
                    self.services.stepdown(vip, "quorum lost")
                except (ServiceError, ZfsError, OSError, subprocess.SubprocessError) as exc:
                    log.error("%s: step-down without quorum failed: %s", vip.name, exc)

    # --- one VIP, every round ---------------------------------------------------------------------

    def tend(self, vip: VipService, seen: Look) -> None:
        """``seen``: the look at the node this round (:meth:`NodeServices.look`). A VIP whose
        address it did not see here is not held; one whose address it saw is asked afresh
        (the agent too) before it is served or sent: the look is seconds old by then."""
        services = self.services
        running = vip.name in seen.smbd
        if not self.quorate():  # a minority serves nothing and takes nothing over
            if running:
                services.stepdown(vip, "quorum lost")
            return
        if vip.name not in seen.addressed or not services.holds(vip):
            self.limited.discard(vip.name)  # its step-down lifts the limit
            # another holder may send to the peers meanwhile: what they had is to be asked
            services.forget_acks(vip)
            if running:
                # served, not held: the BACKUP event's step-down failed, or ran before a
                # MASTER event that then found the VIP gone (hooks run detached under ucarp)
                log.warning("%s: smbd runs but the VIP is not here: stepping down", vip.name)
                services.stepdown(vip)
            return
        if services.handover_pending(vip):
            return
        if not services.served(vip):
            # held, not served: the MASTER event's takeover failed, or came before this daemon
            # ran, or a restart of this daemon quiesced it. Take it over now; if that event's
            # takeover is running, this one waits for its lock and then finds the VIP served.
            services.takeover(vip)
            return
        if services.smbd_pid(vip) is None:
            log.warning("%s: smbd is not running: restarting it", vip.name)
            try:
                with services.locked(vip):
                    services.start_smbd(vip)
                self.hold(smbd_hold(vip.name), 0)
            except (ServiceError, OSError) as exc:
                log.error("%s: smbd does not start (%s): demoting this node", vip.name, exc)
                self.hold(smbd_hold(vip.name), HOLD_DEMOTION, f"smbd does not start: {exc}")
                return
        if vip.name not in self.limited:  # served from before this daemon ran, or a reload
            log.info("%s: its shares may hold %s", vip.name, space.mib(services.limit(vip)))
            self.limited.add(vip.name)
        services.refresh(vip)
        # sent only if still held once snapshotted, and a send still running after an
        # interval goes on alone: a hung backup holds up neither the others nor other VIPs
        self.report[vip.name] = services.replicate(vip, routine=True)

    def publish(self) -> None:
        """The round's report: lag per VIP and peer, and the kept-aside copies (so `hafs
        status` shows them without asking zfs), and the same as metrics
        (:mod:`hafs.service.metrics`)."""
        try:
            diverged = [c.as_dict() for c in divergence.copies(self.services)]
        except (ZfsError, ValueError) as exc:
            log.error("kept-aside copies not listed: %s", exc)
            diverged = []
        pool = self.pool_space() if self.pool_ok else None
        holds = self.demotion.holds() if self.demotion else None
        report = {
            "node": self.config.node,
            "at": time.time(),
            "vips": self.report,
            "diverged": diverged,
            "space": None if pool is None else pool.as_dict(),
        }
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        for path, text in (
            (STATUS_FILE, json.dumps(report)),
            (
                metrics.METRICS_FILE,
                metrics.render(
                    self.config.vips,
                    self.report,
                    diverged,
                    pool,
                    holds,
                    takeover.records(self.config.vips),
                ),
            ),
        ):
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)

    def pool_space(self) -> space.Space | None:
        """The pool's space; said once, loudly, when it runs low (what fills it is not the
        shares, which their limit stops: snapshots of deleted data, or something else)."""
        try:
            pool = space.of_pool(self.services.zfs, self.config.pool)
        except (ZfsError, ValueError) as exc:
            log.error("pool %s: space not read: %s", self.config.pool, exc)
            return None
        if pool.low and not self.pool_low:
            log.error(
                "pool %s: only %s free of %s (headroom %s): snapshots and receives may fail; "
                "free space on the pool (old snapshots, kept-aside copies, other datasets)",
                self.config.pool, space.mib(pool.free), space.mib(pool.size),
                space.mib(pool.headroom),
            )  # fmt: skip
        self.pool_low = pool.low
        return pool

    # --- coming back: resync, then handover --------------------------------------------------

    def resync_pending(self) -> bool:
        holds = self.demotion.holds() if self.demotion else None
        return bool(holds and RESYNC_HOLD in holds)

    def holders(self) -> dict[str, list[str]]:
        """VIP name -> the peers that hold it now (``hafs service held``, all peers at once).
        The same question on every OS: FreeBSD's kernel CARP does not tell who is master.
        A peer that does not answer is down (or cut off): it holds nothing to sync from."""
        with ThreadPoolExecutor(max(1, len(self.config.peers))) as pool:
            asked = {
                peer: pool.submit(self.services.remote, peer, ["held"], HELD_TIMEOUT)
                for peer in self.config.peers
            }
        held: dict[str, list[str]] = {}
        for peer, future in asked.items():
            answer = future.result()
            if answer.returncode != 0:
                log.info("resync: %s does not answer (%s)", peer, answer.stderr.strip())
                continue
            for name in answer.stdout.split():
                held.setdefault(name, []).append(peer)
        return held

    def resync(self) -> None:
        """Bring every replica up to date, take back what we will preempt, then undemote."""
        held = self.holders()
        moves = move.moved(self.services)  # a VIP moved away from this node stays away
        orders = {v.name: move.order(v, moves.get(v.name, v.home)) for v in self.config.vips}
        sources: list[tuple[VipService, str]] = []
        for vip in self.config.vips:
            serving = [p for p in orders[vip.name] if p in held.get(vip.name, ())]
            if not serving:
                continue  # nobody serves it: no newer data anywhere to pull
            if len(serving) > 1:  # split brain, about to resolve: the better one stays
                log.warning("%s: held by %s: syncing from %s", vip.name, serving, serving[0])
            sources.append((vip, serving[0]))
        with ThreadPoolExecutor(max(1, len(sources))) as pool:  # every replica at once, while
            synced = list(pool.map(self.sync, sources))  # the holders serve
        if None in synced:
            return  # still demoted; the next round tries again
        ok = True
        handovers = [  # this node comes first: it will preempt
            (vip, holder)
            for vip, holder in sources
            if orders[vip.name].index(self.config.node) < orders[vip.name].index(holder)
        ]
        fresh = {}
        for vip, holder in handovers:  # then the short handovers, right before undemoting
            remounted = self.remount(vip)
            moved = self.pull(vip, holder, handover=True)
            if moved is None:  # the holder may have stopped serving already: not a round
                moved = self.pull(vip, holder, handover=True)  # later, again at once
            ok = ok and moved is not None
            fresh[vip.name] = remounted and moved is not None and moved.received
        if ok:
            log.info("resync complete: releasing the %s demotion", RESYNC_HOLD)
            self.hold(RESYNC_HOLD, 0)
            for vip, holder in handovers:
                self.take_back(vip, holder, fresh[vip.name])

    def sync(self, source: tuple[VipService, str]) -> Pulled | None:
        return self.pull(*source, handover=False)

    def pull(self, vip: VipService, holder: str, handover: bool) -> Pulled | None:
        """Pull the VIP's newest snapshot from ``holder`` (a ``handover``: its last writes,
        once it stopped serving), logged; None if that failed."""
        zfs, dataset = self.services.zfs, self.services.dataset(vip)
        mine = zfs.snapshots(dataset) if zfs.exists(dataset) else []
        what = "handover" if handover else "resync"
        try:
            pulled = self.services.pull(vip, holder, mine[-1].name if mine else None, handover)
        except (ServiceError, ZfsError, OSError, subprocess.SubprocessError) as exc:
            log.error("%s %s from %s: %s", vip.name, what, holder, exc)
            return None
        for line in pulled.said if handover else ():
            log.info("%s handover on %s: %s", vip.name, holder, line)  # its timed steps
        outcome = "done" if pulled.snapshot else "it has no copy: this node's own is the newest"
        log.info("%s %s from %s: %s", vip.name, what, holder, outcome)
        return pulled

    def remount(self, vip: VipService) -> bool:
        """Drop the pages this node cached of the VIP while it served it, before the final
        receive (zfs-fuse keeps them across a receive): nothing reads the replica until the
        takeover, which then needs no rollback. False if it did not remount."""
        try:
            self.services.remount(vip)
        except (ZfsError, OSError, subprocess.SubprocessError) as exc:
            log.warning("%s: not remounted before the handover (%s): rolled back", vip.name, exc)
            return False
        return True

    def take_back(self, vip: VipService, holder: str, fresh: bool = False) -> None:
        """Serve a VIP ``holder`` handed over to this node as soon as the preempt gives it
        the address: its clients wait from the handover on, and a MASTER hook needs a Python
        of its own to start first (1.5 s measured on a loaded node). That hook, once it
        runs, waits for the VIP's lock and finds it served. Only ``holder`` is fenced: an ssh
        to every carrier takes CPU from the takeover itself."""
        deadline = time.monotonic() + TAKE_BACK_WAIT
        while not self.services.holds(vip):
            if time.monotonic() > deadline:
                log.info("%s: not preempted yet: the MASTER hook takes it over", vip.name)
                return
            time.sleep(0.02)
        try:
            self.services.takeover(vip, str(self.config.peers[holder]), fresh)
        except (ServiceError, ZfsError, OSError, subprocess.SubprocessError) as exc:
            log.error("%s: takeover after the handover: %s", vip.name, exc)

    # --- graceful stop ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        for vip in self.config.vips:
            if not self.services.holds(vip):
                continue
            log.info("%s: stopping: quiesce and send the final incremental", vip.name)
            try:
                self.services.stepdown(vip, "shutdown")
                self.services.replicate(vip, record_clients=False)
            except (ServiceError, ZfsError, OSError) as exc:
                log.error("%s: final sync failed: %s", vip.name, exc)
