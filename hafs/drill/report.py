"""What the drill found: each VIP's outcome per round, judged against its RTO goal, the
timeline (spans of who answered, kill and restore events), the text report and the verdict.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hafs.cluster import Vip
from hafs.drill.monitor import Sample
from hafs.table import table


def rto_goal(
    vip: Vip, down: str, vrrp_interval: float | None = None
) -> tuple[str | None, float | None]:
    """The carrier expected to take ``vip`` over when ``down`` dies, and the RTO goal: its
    master-down time plus 1 s, ``3*advbase + advskew/256`` with that carrier's advskew, or
    for VRRPv3 (``vrrp_interval``) ``3*interval + (256 - priority)*interval/256``."""
    survivors = [n for n in vip.carriers if n != down]
    if not survivors:
        return None, None
    best = survivors[0]
    if vrrp_interval is not None:
        skew = (256 - vip.priority(best)) * vrrp_interval / 256
        return best, 3 * vrrp_interval + skew + 1
    return best, 3 * vip.advbase + vip.advskew[best] / 256 + 1


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
    # the RTO split, from the new holder's record of its takeover (a lab node's), seconds:
    detect: float | None = None  # kill -> its agent made it master (CARP's detection)
    hook: float | None = None  # master -> smbd started and the clients told (the takeover)
    smb: float | None = None  # -> the first SMB answer (ARP, smbd's first accept, the client)
    slowest: str | None = None  # the takeover's slowest step before smbd served
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def after_move(self) -> float | None:
        """From the VIP's move (its new master) to the first SMB answer: what hafs adds."""
        return None if self.hook is None or self.smb is None else self.hook + self.smb

    def split(self, record: Mapping[str, Any], killed: float, answered: float) -> None:
        """Split the RTO with the new holder's ``record`` of its takeover; ``killed`` and
        ``answered``: the kill and the first SMB answer, wall clock. An older record (not of
        this takeover) is ignored. A FreeBSD node's record has no master time: its takeover
        began is the closest."""
        try:
            began, served = float(record["began"]), float(record["served"])
            moved = float(record["master"]) if record.get("master") is not None else began
            steps = [(str(name), float(took)) for name, took in record["steps"]]
        except (KeyError, TypeError, ValueError):
            return
        if began < killed:
            return
        self.detect = round(moved - killed, 3) if record.get("master") is not None else None
        self.hook = round(served - moved, 3)
        self.smb = round(max(0.0, answered - served), 3)  # a poll may see smbd before the tickle
        if steps:
            name, took = max(steps, key=lambda step: step[1])
            self.slowest = f"{name} {took:.2f}s"

    def judge_takeover(self) -> list[str]:
        """The takeover's problems: over the RTO goal, an unexpected new holder, bad data."""
        problems = []
        if self.rto is not None and self.goal is not None and self.rto > self.goal:
            problems.append(
                f"{self.name}: RTO {self.rto:.2f}s over the goal {self.goal:.2f}s "
                "(the new holder's master-down time + 1)"
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


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def format_report(report: DrillReport) -> str:
    rows = []
    for r in report.rounds:
        if not r.vips:
            rows.append([r.node, "-", "-", "-", "-", "-", "-", "-", "ok" if r.ok else "FAIL"])
        for v in r.vips:
            failback = "off" if v.failback_to is None else secs(v.failback)
            rows.append(
                [
                    r.node,
                    v.name,
                    v.new_holder or "-",
                    secs(v.rto),
                    secs(v.goal),
                    secs(v.detect),
                    secs(v.hook),
                    secs(v.smb),
                    v.data,
                    failback,
                    secs(v.failback_outage),
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
        "DETECT",
        "TAKEOVER",
        "SMB",
        "DATA",
        "FAILBACK",
        "OUTAGE",
        "DATA AFTER",
        "RESULT",
    ]
    return "\n".join([table(headers, rows), *summary(report), *report.all_problems()])


def p90(values: Sequence[float]) -> float:
    """Nearest-rank 90th percentile: of 10 values, the second worst (the benches' too)."""
    return sorted(values)[math.ceil(0.9 * len(values)) - 1]


def summary(report: DrillReport) -> list[str]:
    """The figures a service layer is judged by, over every VIP of every round: SMB back
    after the VIP moved (the takeover and the client's reconnect, CARP's detection not
    counted), and the longest outage of a failback; with the machine's load."""
    outcomes = [v for r in report.rounds for v in r.vips]
    lines = []
    for what, values in (
        ("SMB answers after the VIP moved", [v.after_move for v in outcomes]),
        ("failback outage", [v.failback_outage for v in outcomes]),
    ):
        known = [value for value in values if value is not None]
        if known:
            lines.append(
                f"{what}: median {statistics.median(known):.2f}s, p90 {p90(known):.2f}s, "
                f"worst {max(known):.2f}s ({len(known)} VIPs)"
            )
    if lines:
        lines.append(
            "load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        )
    return lines


def verdict_word(report: DrillReport) -> str:
    return "PASS" if report.ok else "FAIL"


def drill_verdict(report: DrillReport) -> str:
    outcomes = [v for r in report.rounds for v in r.vips]
    timed = [v for v in outcomes if v.rto is not None]
    worst = max(timed, key=lambda v: v.rto or 0.0, default=None)
    worst_text = (
        f", worst RTO {worst.rto:.2f}s ({worst.name}, goal {secs(worst.goal)})"
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
