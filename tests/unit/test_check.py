"""Every rule of `hafs check`: a clean cluster passes, each flaw is reported by name."""

from __future__ import annotations

from typing import Any

import pytest

from hafs.check import Problem, check
from tests.unit.conftest import MakeCluster, four_nodes


def lines(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


def only(problems: list[Problem], level: str, *words: str) -> Problem:
    hits = [p for p in problems if p.level == level and all(w in str(p) for w in words)]
    assert len(hits) == 1, lines(problems)
    return hits[0]


def test_example_layout_is_clean(make_cluster: MakeCluster) -> None:
    assert check(make_cluster()) == []


def test_duplicate_vhid(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"vips": [{"vhid": 1, "address": "10.0.0.102"}]})
    problem = only(check(make_cluster(hosts)), "error", "vhid 1", "used by 2 VIPs")
    assert "n1" in problem.message and "n2" in problem.message


def test_duplicate_vip_address(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"vips": [{"vhid": 2, "address": "10.0.0.101"}]})
    only(check(make_cluster(hosts)), "error", "address 10.0.0.101", "vhid 1 and vhid 2")


def test_duplicate_node_address(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"address": "10.0.0.1/24"})
    only(check(make_cluster(hosts)), "error", "address 10.0.0.1:", "node n1 and node n2")


def test_duplicate_vip_name(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"vips": [{"vhid": 2, "address": "10.0.0.102", "name": "vip1"}]})
    only(check(make_cluster(hosts)), "error", "VIP name 'vip1'")


@pytest.mark.parametrize("vhid", [0, 256])
def test_vhid_out_of_range(make_cluster: MakeCluster, vhid: int) -> None:
    hosts = four_nodes(n1={"vips": [{"vhid": vhid, "address": "10.0.0.101"}]})
    only(check(make_cluster(hosts)), "error", f"vhid {vhid} is outside 1..255")


def test_advbase_out_of_range(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n1={"vips": [{"vhid": 1, "address": "10.0.0.101", "advbase": 255}]})
    only(check(make_cluster(hosts)), "error", "advbase 255 is outside 1..254")


def _explicit(skews: dict[str, int]) -> dict[str, Any]:
    return {"vips": [{"vhid": 1, "address": "10.0.0.101", "advskew": skews}]}


def test_advskew_out_of_range(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n1=_explicit({"n1": 0, "n2": 255}))
    only(check(make_cluster(hosts)), "error", "node n2 has advskew 255, outside 0..254")


def test_advskew_above_240_is_a_warning(make_cluster: MakeCluster) -> None:
    problems = check(make_cluster(four_nodes(n1=_explicit({"n1": 0, "n2": 250}))))
    only(problems, "warning", "node n2 has advskew 250", "advertised as 240")
    assert all(p.level == "warning" for p in problems), lines(problems)


def test_equal_advskew_between_backups(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n1=_explicit({"n1": 0, "n2": 5, "n3": 5, "n4": 7}))
    problem = only(check(make_cluster(hosts)), "error", "vhid 1 (10.0.0.101)", "advskew 5")
    assert "n2 and n3" in problem.message and "no tie-break" in problem.message


def test_home_tied_with_backup(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n1=_explicit({"n1": 0, "n2": 0}))
    only(check(make_cluster(hosts)), "error", "n1 and n2 both have advskew 0")


@pytest.mark.parametrize(
    ("passphrase", "words"),
    [("", "is empty"), ("a" * 20, "is 20 bytes"), ("é" * 10, "is 20 bytes")],
)
def test_pass_size_warnings(make_cluster: MakeCluster, passphrase: str, words: str) -> None:
    problems = check(make_cluster(carp_pass=passphrase))
    only(problems, "warning", "carp_pass", words)
    assert [p.level for p in problems] == ["warning"]


def test_pass_of_19_bytes_is_fine(make_cluster: MakeCluster) -> None:
    assert check(make_cluster(carp_pass="a" * 19)) == []


def test_vip_outside_node_subnet(make_cluster: MakeCluster) -> None:
    n3 = {"address": "10.0.1.3/24", "vips": [{"vhid": 3, "address": "10.0.1.103"}]}
    hosts = four_nodes(n3=n3)
    problems = check(make_cluster(hosts))
    only(problems, "error", "vhid 1 (10.0.0.101)", "outside node n3's subnet 10.0.1.0/24")
    only(problems, "error", "vhid 3 (10.0.1.103)", "outside node n1's subnet 10.0.0.0/24")


def test_node_without_fixed_address(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"address": None, "vips": [{"vhid": 2, "address": "10.0.0.102/24"}]})
    problem = only(check(make_cluster(hosts)), "error", "node n2", "no fixed (non-CARP) address")
    assert "re-sync" in problem.message


def test_node_address_equal_to_a_vip(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n4={"address": "10.0.0.104/24"})
    only(check(make_cluster(hosts)), "error", "node n4", "also vhid 4's VIP")


def test_freebsd_without_preempt_while_failback(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"carp_preempt": False})
    problem = only(check(make_cluster(hosts)), "error", "node n2", "preempt is off")
    assert "net.inet.carp.preempt=1" in problem.message


def test_linux_without_preempt_while_failback(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n4={"carp_preempt": False})
    only(check(make_cluster(hosts)), "error", "node n4", "preempt in agent.toml")


def test_no_preempt_is_fine_without_failback(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n2={"carp_preempt": False})
    assert check(make_cluster(hosts, failback=False)) == []


def test_vip_without_backup(make_cluster: MakeCluster) -> None:
    only(check(make_cluster(four_nodes(n1=_explicit({"n1": 0})))), "warning", "no backup node")


def test_unknown_users(make_cluster: MakeCluster) -> None:
    share = {"name": "s", "users": ["bob"]}
    hosts = four_nodes(n1={"vips": [{"vhid": 1, "address": "10.0.0.101", "shares": [share]}]})
    problems = check(make_cluster(hosts, check_user="carol"))
    only(problems, "error", "check_user", "'carol' is not in smb_users")
    only(problems, "error", "share 's'", "user 'bob'")


def test_errors_come_before_warnings(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(n1=_explicit({"n1": 0, "n2": 250, "n3": 250}))
    levels = [p.level for p in check(make_cluster(hosts, carp_pass=""))]
    assert levels == sorted(levels, key=lambda level: level != "error")
    assert "error" in levels and "warning" in levels
