"""`hafs cluster status`: every node's report judged as a whole; exit 1 names what to look at."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

import pytest

from hafs import cluster_status
from hafs.service.config import ServiceConfig, VipService
from hafs.service.node import NodeServices

VIPS = tuple(
    VipService(i, f"vip{i}", IPv4Address(f"10.0.0.10{i}"), f"n{i}", (f"n{i}", f"n{i % 3 + 1}"), ())
    for i in (1, 2, 3)
)
CONFIG = ServiceConfig(
    node="n1", pool="tank", replication_interval=10, vips=VIPS, users={},
    peers={"n2": IPv4Address("10.0.0.2"), "n3": IPv4Address("10.0.0.3")},
)  # fmt: skip
NOW = 1_000_000.0


def report(node: str, held: list[str], **changes: Any) -> dict[str, Any]:
    """A healthy node's report: it holds ``held``, each sent to its backup 2 s ago."""
    vips = {
        name: {VIPS[int(name[3:]) - 1].carriers[1]: {"ok": True, "as_of": NOW - 2}} for name in held
    }
    service = {"node": node, "at": NOW - 1, "vips": vips, "diverged": []}
    found = {"node": node, "held": held, "serving": held, "agent": True, "holds": {},
             "causes": {}, "service": service, "at": NOW}  # fmt: skip
    found.update(changes)
    return found


def test_a_healthy_cluster_has_no_problem_and_shows_every_holder() -> None:
    reports = {f"n{i}": report(f"n{i}", [f"vip{i}"]) for i in (1, 2, 3)}
    assert cluster_status.problems(CONFIG, reports) == []
    text = cluster_status.format_status(CONFIG, reports)
    assert text.splitlines()[1].split() == ["vip1", "10.0.0.101", "n1", "-", "n1", "n2", "2s"]
    assert text.endswith("\nhealthy")


def test_a_moved_vip_is_shown_with_the_way_home_and_is_no_problem() -> None:
    reports = {f"n{i}": report(f"n{i}", [f"vip{i}"]) for i in (1, 2, 3)}
    reports["n1"]["held"], reports["n2"]["held"] = [], ["vip1", "vip2"]
    reports["n2"]["service"]["vips"]["vip1"] = {"n1": {"ok": True, "as_of": NOW - 2}}
    for node in ("n1", "n2"):
        reports[node]["moved"] = {"vip1": "n2"}
    assert cluster_status.problems(CONFIG, reports) == []
    lines = cluster_status.format_status(CONFIG, reports).splitlines()
    assert lines[1].split() == ["vip1", "10.0.0.101", "n1", "n2", "n2", "n1", "2s"]
    assert (
        "vip1: moved to n2 (`hafs move`): it stays there; `hafs move vip1 n1` on its "
        "holder brings it home" in lines
    )


def test_carriers_that_disagree_on_a_move_are_a_problem() -> None:
    reports = {f"n{i}": report(f"n{i}", [f"vip{i}"]) for i in (1, 2, 3)}
    reports["n2"]["moved"] = {"vip1": "n2"}  # n1 still at its configured rank
    assert cluster_status.problems(CONFIG, reports) == [
        "vip1: its carriers disagree where it is moved to (n1, n2): `hafs move vip1 NODE` again"
    ]


def test_every_problem_is_named_on_a_line_of_its_own() -> None:
    behind = report("n1", ["vip1", "vip3"])
    behind["service"]["vips"]["vip1"]["n2"] = {"ok": False, "error": "n2 unreachable"}
    behind["service"]["vips"]["vip3"] = {"n3": {"ok": True, "as_of": NOW - 45}}
    behind["service"]["diverged"] = [{"name": "vip1.diverged-x", "vip": "vip1"}]
    reports = {
        "n1": behind,
        "n2": report("n2", ["vip3"], holds={"resync": 240}, causes={"resync": "booted"}),
        "n3": {"error": "ssh: connect to host 10.0.0.3 port 22: timed out"},
    }
    assert cluster_status.problems(CONFIG, reports) == [
        "vip2: held by no node that answered",
        "vip3: split brain: held by n1, n2",
        "n1: kept-aside copy vip1.diverged-x of vip1",
        "vip1: replication n1 -> n2 failing: n2 unreachable",
        "vip3: n3 is 45s behind n1",
        "n2: demoted by the 'resync' hold (+240): booted",
        "n3: no answer: ssh: connect to host 10.0.0.3 port 22: timed out",
    ]
    stale = report("n2", ["vip2"], agent=False, service=None)
    assert cluster_status.problems(CONFIG, {"n2": stale})[-2:] == [
        "n2: its hafs agent does not answer",
        "n2: no replication report: is `hafs service run` running?",
    ]


class Peers:
    """Peers behind ssh: n2 answers its report, n3 is down."""

    def remote(
        self, peer: str, args: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        assert list(args) == ["report"]
        if peer == "n3":
            return subprocess.CompletedProcess([], 255, "", "ssh: connect timed out\n")
        return subprocess.CompletedProcess([], 0, json.dumps(report("n2", ["vip2"])), "")


def test_gather_asks_every_peer_and_a_silent_one_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = NodeServices(CONFIG)
    monkeypatch.setattr(services, "remote", Peers().remote)
    monkeypatch.setattr(cluster_status, "node_report", lambda s: report("n1", ["vip1"]))
    reports = cluster_status.gather(services)
    assert reports["n1"]["held"] == ["vip1"] and reports["n2"]["held"] == ["vip2"]
    assert reports["n3"] == {"error": "ssh: connect timed out"}
