"""A VRRPv3 cluster from the inventory: priorities from the advskew layout, rendered for
FreeBSD 14.1+ (``carpver 3``) and the Linux agent, and refused where it cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from hafs import agentconf
from hafs.check import check
from hafs.cluster import InventoryError
from hafs.errors import HafsError
from hafs.render import carp_args, keepalived_conf
from tests.unit.conftest import MakeCluster, four_nodes

VERSIONS = {f"n{i}": {"freebsd_version": "14.1"} for i in (1, 2, 3)}


def test_priorities_follow_the_advskews_and_render_for_both_oses(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster(four_nodes(**VERSIONS), protocol="vrrp3", vrrp_interval=0.1)
    vip = cluster.vip(1)  # home n1, backups n2 (10), n4 (20), n3 (30)
    assert [vip.priority(n) for n in vip.carriers] == [254, 244, 234, 224]
    assert check(cluster) == []
    args = carp_args(cluster, cluster.node("n2"), vip, 32)
    assert args == "vhid 1 carpver 3 vrrpprio 244 vrrpinterval 10 10.0.0.101/32"
    path = tmp_path / "agent.toml"
    path.write_text(agentconf.render(cluster, cluster.node("n4")))
    path.chmod(0o600)
    config = agentconf.load(path)
    assert config.protocol == "vrrp3" and not config.passphrase
    first = config.vhids[0]
    assert (first.vhid, first.priority, first.interval) == (1, 234, 10)  # centiseconds


def test_freebsd_before_14_1_cannot_speak_vrrp3(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(**{**VERSIONS, "n2": {"freebsd_version": "13.2"}, "n3": {}})
    problems = [str(p) for p in check(make_cluster(hosts, protocol="vrrp3"))]
    assert problems == [
        "error: node n2: VRRPv3 needs FreeBSD 14.1 or later (freebsd_version: 13.2); fix: "
        "upgrade it and set freebsd_version = '14.1', or use protocol = 'carp'",
        "error: node n3: VRRPv3 needs FreeBSD 14.1 or later (freebsd_version: unknown); fix: "
        "upgrade it and set freebsd_version = '14.1', or use protocol = 'carp'",
    ]


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"protocol": "vrrp2"}, "group_data: protocol: 'vrrp2': use 'carp'"),
        ({"vrrp_interval": 0.015}, "group_data: vrrp_interval: 0.015: seconds in 0.01 steps"),
        ({"vrrp_interval": 41}, "group_data: vrrp_interval: 41: seconds in 0.01 steps"),
        ({"vrrp_interval": "1"}, "group_data: vrrp_interval: '1': seconds in 0.01 steps"),
    ],
)
def test_bad_vrrp_settings_are_one_line(
    make_cluster: MakeCluster, settings: dict[str, object], words: str
) -> None:
    with pytest.raises(InventoryError, match=f"^{words}"):
        make_cluster(four_nodes(**VERSIONS), **settings)


def test_keepalived_conf_runs_the_same_instances_and_calls_hafs_event(
    make_cluster: MakeCluster,
) -> None:
    """keepalived in place of a node's CARP daemon: its priorities and interval, the address
    as a /32 on the node's interface, every state change into `hafs event`."""
    cluster = make_cluster(four_nodes(**VERSIONS), protocol="vrrp3", vrrp_interval=0.1)
    conf = keepalived_conf(cluster, cluster.node("n2"), hafs_command="/opt/hafs")
    start = conf.index("vrrp_instance hafs_vip1 {")
    vip1 = conf[start : conf.index("\n}\n", start)]
    assert "    virtual_router_id 1\n    priority 244\n    advert_int 0.1\n" in vip1
    assert "10.0.0.101/32 dev " in vip1 and "nopreempt" not in vip1
    for keepalived_state, event in (("master", "MASTER"), ("backup", "BACKUP"),
                                    ("fault", "INIT"), ("stop", "INIT")):  # fmt: skip
        assert f'notify_{keepalived_state} "/opt/hafs event 1@' in vip1
        assert vip1.count(f' {event}"') >= 1
    assert conf.count("vrrp_instance ") == len(cluster.vips_of("n2"))
    assert "vrrp_version 3" in conf


def test_keepalived_conf_is_refused_for_a_carp_cluster(make_cluster: MakeCluster) -> None:
    with pytest.raises(
        HafsError,
        match=r'^keepalived.conf: keepalived speaks VRRP, not CARP: set protocol = "vrrp3"',
    ):
        keepalived_conf(make_cluster(four_nodes()), make_cluster(four_nodes()).node("n1"))
