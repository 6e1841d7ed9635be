"""The failover benchmark's pure helpers: VRRPv3 priorities from the CARP layout, theory,
and the goals its exit code judges."""

from __future__ import annotations

import math

import pytest

from bench.failover import (
    Sample,
    met,
    slower_than_keepalived,
    theory,
    vrrp_interval,
    vrrp_priority,
)
from hafs.cluster import derive_layout


def test_priorities_rank_like_the_layouts_advskews() -> None:
    names = ["a", "b", "c", "d"]
    for skews in derive_layout(names, names, 10):
        priorities = {name: vrrp_priority(skew) for name, skew in skews.items()}
        assert sorted(priorities, key=priorities.__getitem__, reverse=True) == sorted(
            skews, key=skews.__getitem__
        )
        assert len(set(priorities.values())) == len(names)  # no ties
        assert max(priorities.values()) == 254  # the home, below the address owner's 255


def test_carp_theory() -> None:
    assert theory(False, 1, 10, graceful=False) == 3 + 10 / 256
    assert theory(False, 1, 10, graceful=True) == 0


def test_vrrp_theory_is_master_down_interval_or_skew_time() -> None:
    # priority 244: Skew_Time = (256 - 244) * interval / 256
    assert theory(True, 1.0, 10, graceful=False) == pytest.approx(3.046875)
    assert theory(True, 1.0, 10, graceful=True) == pytest.approx(0.046875)
    assert theory(True, 0.1, 20, graceful=False) == pytest.approx(0.3 + 22 * 0.1 / 256)


def test_interval_takes_centisecond_steps() -> None:
    assert vrrp_interval("0.1") == 0.1
    assert vrrp_interval("40.95") == 40.95
    for bad in ("0", "0.005", "41", "-1"):
        with pytest.raises(ValueError):
            vrrp_interval(bad)


def samples(*seconds: float | None, winner: str = "b", theory_s: float = 0.305) -> list[Sample]:
    return [Sample(s, 0.001, None if s is None else winner, "b", theory_s) for s in seconds]


def test_the_goal_is_every_run_won_by_the_expected_backup_within_50_ms_of_theory() -> None:
    assert met(samples(0.31, 0.32, 0.35))
    assert not met(samples(0.31, 0.32, 0.36))  # p90 (nearest rank of 3: the worst) +55 ms
    assert not met(samples(0.31, 0.32, None))  # one run without a takeover
    assert not met(samples(0.31, 0.32, 0.33, winner="c"))  # a wrong backup took the VIP


def test_hafs_vrrp3_is_judged_against_keepalived_to_the_probes_resolution() -> None:
    keepalived = samples(0.312, 0.315, 0.319)
    assert slower_than_keepalived(samples(0.311, 0.318, 0.328), keepalived) is None  # +9 ms
    late = slower_than_keepalived(samples(0.311, 0.318, 0.331), keepalived)
    assert late == pytest.approx(0.012)
    assert slower_than_keepalived(samples(0.311, None, 0.312), keepalived) == math.inf
    assert slower_than_keepalived(samples(0.5, 0.5, 0.5), samples(None, None, None)) is None
