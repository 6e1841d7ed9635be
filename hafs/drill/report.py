"""What the drill found: each VIP's outcome per round, judged against its RTO goal, the
timeline (spans of who answered, kill and restore events), the text report and the verdict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hafs.cluster import Vip
from hafs.drill.monitor import Sample
from hafs.table import table


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
