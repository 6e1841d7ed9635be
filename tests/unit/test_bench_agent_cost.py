"""The agent-cost benchmark's exit code: decided from the figures, not from the verdict's text."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from bench.agent_cost import Cost, PairCost, pair_met, within_goal


def pair(cpu: float = 0.6, **changes: Any) -> PairCost:
    """A case of 255 hafs vhids at advbase 1, every VIP on the master; ``cpu`` per agent."""
    return replace(PairCost("hafs", 255, 1.0, False, [(cpu, cpu)], True, 0.5), **changes)


def test_the_goal_case_is_met_within_its_goal_and_missed_beyond() -> None:
    assert pair_met(pair(cpu=0.7))  # 1.4 %
    assert not pair_met(pair(cpu=0.8))  # 1.6 %


def test_vips_not_where_they_belong_fail_the_run_even_within_the_goal() -> None:
    assert not pair_met(pair(cpu=0.5, placed=False))
    assert not pair_met(pair(cpu=0.5, vhids=16, interval=0.1, placed=False))


def test_only_this_trees_hafs_counts() -> None:
    assert pair_met(pair(cpu=5.0, before=True, placed=False))  # --before's agent: shown only
    assert pair_met(pair(cpu=5.0, impl="keepalived", placed=False))
    assert pair_met(pair(cpu=5.0, vhids=16, interval=0.1))  # reported beside keepalived


def test_one_agents_goal_is_cpu_and_peak_memory() -> None:
    def cost(cpu: float, hwm: float) -> Cost:
        memory = {"VmHWM": hwm, "VmRSS": hwm, "Pss": hwm}
        return Cost("hafs", 255, 1, [cpu], memory, {}, 0.0, True, 0.5)

    assert within_goal(cost(1.5, 40.0))
    assert not within_goal(cost(2.5, 40.0))
    assert not within_goal(cost(1.5, 70.0))
