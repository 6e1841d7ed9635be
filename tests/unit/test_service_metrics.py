"""The service daemon's metrics file: valid Prometheus text, one series per VIP and peer."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hafs.service.config import VipService
from hafs.service.metrics import render
from hafs.service.space import Space

VIPS = [
    VipService(n, f"vip{n}", IPv4Address(f"10.0.0.{n}"), "n1", ("n1", "n2"), ()) for n in (1, 2)
]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_kept_aside_copies_and_replication_per_vip_and_peer() -> None:
    report = {
        "vip1": {
            "n2": {"ok": True, "snapshot": "hafs-1", "at": 1700000000.5, "seconds": 0.4},
            "n3": {"ok": False, "error": "n3 unreachable", "at": 1700000001.0},
        }
    }
    diverged = [
        {"vip": "vip2", "used": 4096, "name": "vip2-diverged-a"},
        {"vip": "vip2", "used": 1024, "name": "vip2-diverged-b"},
    ]

    got = samples(render(VIPS, report, diverged))

    assert got[("hafs_service_diverged_copies", (("vip", "vip1"),))] == 0
    assert got[("hafs_service_diverged_copies", (("vip", "vip2"),))] == 2
    assert got[("hafs_service_diverged_bytes", (("vip", "vip2"),))] == 5120
    assert got[("hafs_service_replication_ok", (("peer", "n2"), ("vip", "vip1")))] == 1
    assert got[("hafs_service_replication_ok", (("peer", "n3"), ("vip", "vip1")))] == 0
    when = "hafs_service_replication_last_success_timestamp_seconds"
    stamp = (when, (("peer", "n2"), ("vip", "vip1")))
    assert got[stamp] == 1700000000.5
    assert len(got) == 7  # no success time for the failing peer


def test_an_idle_node_still_says_zero_copies() -> None:
    got = samples(render(VIPS, {}, []))
    assert {k: v for k, v in got.items() if k[0] == "hafs_service_diverged_copies"} == {
        ("hafs_service_diverged_copies", (("vip", "vip1"),)): 0,
        ("hafs_service_diverged_copies", (("vip", "vip2"),)): 0,
    }


def test_the_pools_space_when_it_was_read() -> None:
    pool = Space(size=1000 << 20, free=30 << 20)
    got = samples(render(VIPS, {}, [], pool))
    assert got[("hafs_service_pool_size_bytes", ())] == 1000 << 20
    assert got[("hafs_service_pool_free_bytes", ())] == 30 << 20
    assert got[("hafs_service_pool_headroom_bytes", ())] == 50 << 20
    assert got[("hafs_service_diverged_budget_bytes", ())] == 200 << 20
    assert ("hafs_service_pool_free_bytes", ()) not in samples(render(VIPS, {}, []))


def test_holds_lag_and_the_last_takeover_with_its_steps() -> None:
    report = {"vip1": {"n2": {"ok": True, "at": 1700000000.5, "as_of": 1700000000.0}}}
    takeovers: dict[str, dict[str, Any]] = {
        "vip1": {"master": 100.0, "began": 100.1, "served": 100.6,
                 "steps": [["roll back to the newest snapshot", 0.25], ["start smbd", 0.2]]},
        "vip2": {"master": None, "began": 200.0, "served": 200.3, "steps": []},  # FreeBSD's
        "vip3": {"began": "garbled"},
    }  # fmt: skip
    got = samples(render(VIPS, report, [], holds={"resync": 240}, takeovers=takeovers))
    as_of = ("hafs_service_replication_as_of_timestamp_seconds", (("peer", "n2"), ("vip", "vip1")))
    assert got[as_of] == 1700000000.0
    assert got[("hafs_service_demotion_hold", (("name", "resync"),))] == 240
    assert got[("hafs_service_takeover_seconds", (("vip", "vip1"),))] == pytest.approx(0.6)
    assert got[("hafs_service_takeover_seconds", (("vip", "vip2"),))] == pytest.approx(0.3)
    step = ("hafs_service_takeover_step_seconds", (("step", "start smbd"), ("vip", "vip1")))
    assert got[step] == 0.2
    assert not [k for k in got if ("vip", "vip3") in k[1]]
    assert ("hafs_service_demotion_hold", ()) not in samples(render(VIPS, {}, []))
