"""The drill itself: :func:`run_drill` checks the cluster with :func:`hafs.verify.run_verify`,
then :class:`Drill` runs one round per node (canaries, kill, takeover, restore, failback) while
a :class:`~hafs.drill.monitor.Monitor` watches every VIP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hafs.cluster import Cluster, Share, Vip
from hafs.drill import DrillError, Progress
from hafs.drill.killers import Killer
from hafs.drill.monitor import POLL_INTERVAL, Monitor, data_status, served_time
from hafs.drill.report import DrillReport, Event, Round, VipOutcome, rto_goal, secs, spans
from hafs.errors import HafsError
from hafs.verify import (
    STATUS_OBJECT_NAME_NOT_FOUND,
    Connector,
    SmbError,
    VipResult,
    accessible,
    run_verify,
)

DRILL_CANARY_PREFIX = ".hafs-drill-"


@dataclass
class DrillOptions:
    settle: float  # seconds between writing the canaries and the kill
    timeout: float = 120.0  # seconds to wait for a takeover, and for a failback
    nodes: Sequence[str] = ()  # nodes to kill, in order; empty: every node of the model


RECORD_TRIES = 10  # 0.2 s apart: the new holder writes its record as its clients are served
WATCH_INTERVAL = 1.0  # how often the drill reads the expected holder's record while it waits


class Drill:
    """Runs the rounds; see the theory of operation in :mod:`hafs.drill`."""

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
            vrrp = self.cluster.vrrp_interval if self.cluster.protocol == "vrrp3" else None
            expected, goal = rto_goal(vip, node, vrrp)
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
        failed: list[str] = []  # what the expected holder's record says, if its takeover failed
        stop = threading.Event()
        watching = threading.Thread(
            target=self._watch_takeover, args=(vip, outcome, killed, stop, failed), daemon=True
        )
        watching.start()
        try:
            answer = self.monitor.wait_for(
                vip.vhid, killed, lambda s: s.answered and s.holder != node, deadline
            )
        finally:
            stop.set()
            watching.join()
        if answer is None:
            last = self.monitor.latest(vip.vhid)
            why = f"; last poll: {last.error}" if last is not None and last.error else ""
            why += f"; {failed[0]}" if failed else ""
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
            f"(goal {secs(outcome.goal)}), canary {outcome.data}"
        )
        if answer.holder is not None:
            self._split(vip, outcome, answer.holder, killed, served)
        outcome.problems += outcome.judge_takeover()
        error = self._write_canaries(vip, f"round {number} during the outage")
        if error is not None:
            outcome.problems.append(f"{vip.name}: on {answer.holder}: {error}")

    def _watch_takeover(
        self,
        vip: Vip,
        outcome: VipOutcome,
        killed: float,
        stop: threading.Event,
        failed: list[str],
    ) -> None:
        """While the drill waits for an SMB answer: if the expected holder's takeover failed
        (its record says why), say so at once rather than at the end of the wait."""
        holder, wall = outcome.expected_holder, time.time() - time.monotonic()
        while holder is not None and not stop.wait(WATCH_INTERVAL):
            record = self.killer.takeover_record(holder, vip.name)
            if record is None:
                return  # this killer cannot read records
            error, began = record.get("error"), record.get("began")
            if error and isinstance(began, (int, float)) and began >= killed + wall:
                failed.append(f"the takeover on {holder} failed: {error}")
                self.progress(f"{vip.name}: {failed[0]}")
                return

    def _split(
        self, vip: Vip, outcome: VipOutcome, holder: str, killed: float, served: float
    ) -> None:
        """Split the RTO with the new holder's record of its takeover, if the killer can
        read it: it is written as the clients are served, so the first answer may come
        before it; a few tries then."""
        wall = time.time() - time.monotonic()  # the record's clock is the wall clock
        for _ in range(RECORD_TRIES):
            record = self.killer.takeover_record(holder, vip.name)
            if record is None:
                return
            outcome.split(record, killed + wall, served + wall)
            if outcome.after_move is not None:
                self.progress(
                    f"{vip.name}: CARP detection {secs(outcome.detect)}, takeover "
                    f"{secs(outcome.hook)} (slowest step: {outcome.slowest or '-'}), then SMB "
                    f"{secs(outcome.smb)}"
                )
                return
            time.sleep(0.2)

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
