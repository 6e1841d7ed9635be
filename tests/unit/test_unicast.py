"""Unicast peers (FreeBSD 14's ``peer``, keepalived's ``unicast_peer``): from the inventory's
``unicast = True`` to each OS's configuration, refused where FreeBSD cannot run it, and the
agent's ``peers`` with their one-line errors."""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hafs import agentconf
from hafs.agentconf import AgentConfigError
from hafs.check import check
from hafs.cluster import InventoryError
from hafs.errors import HafsError
from hafs.render import keepalived_conf, rc_conf
from tests.unit.conftest import MakeCluster, four_nodes
from tests.unit.test_agentconf import GOOD

V14 = {f"n{i}": {"freebsd_version": "14.0"} for i in (1, 2, 3)}
# every VIP carried by two nodes, as FreeBSD's one peer needs: home 0, the next node 100
PAIRS = {
    f"n{i}": {
        **V14.get(f"n{i}", {}),
        "vips": [
            {
                "vhid": i,
                "address": f"10.0.0.{100 + i}",
                "shares": ["data"],
                "advskew": {f"n{i}": 0, f"n{i % 4 + 1}": 100},
            }
        ],
    }
    for i in range(1, 5)
}


def load_agent(tmp_path: Path, text: str) -> agentconf.AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    return agentconf.load(path)


def test_each_carrier_gets_the_other_carriers_as_peers(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = make_cluster(four_nodes(**V14), unicast=True)
    vip = cluster.vip(1)  # home n1, backups n2, n4, n3
    assert [str(a) for a in cluster.peers(vip, cluster.node("n4"))] == [
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]
    config = load_agent(tmp_path, agentconf.render(cluster, cluster.node("n4")))
    assert config.vhids[0].peers == tuple(IPv4Address(f"10.0.0.{i}") for i in (1, 2, 3))
    multicast = make_cluster(four_nodes(**V14))
    text = agentconf.render(multicast, multicast.node("n4"))
    assert "peers =" not in text
    assert all(e.peers == () for e in load_agent(tmp_path, text).vhids)


def test_freebsd_gets_peer_in_rc_conf_and_keepalived_unicast_peer(
    make_cluster: MakeCluster,
) -> None:
    cluster = make_cluster(four_nodes(**PAIRS), unicast=True)
    assert check(cluster) == []
    lines = rc_conf(cluster, cluster.node("n2")).splitlines()
    assert 'ifconfig_em0_alias0="vhid 1 advskew 100 pass secret peer 10.0.0.1 10.0.0.101/32"' in (
        lines
    )
    assert 'ifconfig_em0_alias1="vhid 2 pass secret peer 10.0.0.3 10.0.0.102/32"' in lines
    v3 = make_cluster(four_nodes(**{n: {**d, "freebsd_version": "14.1"} for n, d in PAIRS.items()}),
                      unicast=True, protocol="vrrp3")  # fmt: skip
    assert "vhid 1 carpver 3 vrrpprio 154 vrrpinterval 100 peer 10.0.0.1 10.0.0.101/32" in (
        rc_conf(v3, v3.node("n2"))
    )
    conf = keepalived_conf(v3, v3.node("n2"))
    start = conf.index("vrrp_instance hafs_vip1 {")
    vip1 = conf[start : conf.index("\n}\n", start)]
    assert (
        "    unicast_src_ip 10.0.0.2\n    check_unicast_src\n"
        "    unicast_peer {\n        10.0.0.1\n    }\n"
    ) in vip1
    assert "unicast" not in keepalived_conf(
        make_cluster(four_nodes(**PAIRS), protocol="vrrp3"), v3.node("n2")
    )


def test_freebsd_refuses_more_than_one_peer_and_before_14_0(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(**{**V14, "n2": {"freebsd_version": "13.2"}, "n3": {}})
    problems = [str(p) for p in check(make_cluster(hosts, unicast=True))]
    assert problems[:2] == [
        "error: node n2: unicast needs FreeBSD 14.0 or later (its carp's 'peer'; "
        "freebsd_version: 13.2); fix: upgrade it and set freebsd_version = '14.0', or set "
        "unicast = False",
        "error: node n3: unicast needs FreeBSD 14.0 or later (its carp's 'peer'; "
        "freebsd_version: unknown); fix: upgrade it and set freebsd_version = '14.0', or set "
        "unicast = False",
    ]
    assert problems[2] == (
        "error: vhid 1 (10.0.0.101): unicast with 4 carriers, but FreeBSD's carp sends to one "
        "peer only (on n1, n2, n3); fix: limit the VIP's carriers to two with an explicit "
        "advskew map, or set unicast = False (multicast)"
    )
    assert len(problems) == 2 + 4
    cluster = make_cluster(four_nodes(**V14), unicast=True)
    with pytest.raises(HafsError, match=r"^rc.conf: vhid 1: unicast to 3 peers, but FreeBSD"):
        rc_conf(cluster, cluster.node("n1"))


def test_linux_only_carriers_may_have_many_peers(make_cluster: MakeCluster) -> None:
    linux = {f"n{i}": {"os": "linux", "interface": "eth0"} for i in range(1, 5)}
    assert check(make_cluster(four_nodes(**linux), unicast=True)) == []


def test_unicast_must_be_a_bool(make_cluster: MakeCluster) -> None:
    with pytest.raises(InventoryError, match=r"^group_data: unicast: must be True or False"):
        make_cluster(four_nodes(**V14), unicast="yes")


AGENT = GOOD + 'peers = ["10.0.0.1", "10.0.0.2"]\n'


@pytest.mark.parametrize(
    ("peers", "words"),
    [
        ('["10.0.0.1", "10.0.0.1"]', "peers: 10.0.0.1 is listed twice: list it once"),
        ('["10.0.0.4"]', "peers: 10.0.0.4 is this node's srcip: list the other nodes only"),
        ('["10.0.0.x"]', "peers: '10.0.0.x' is not an IPv4 address"),
        ('["fe80::1"]', "peers: 'fe80::1': only IPv4 is supported"),
        ('["224.0.0.18"]', "peers: 224.0.0.18 is not a unicast address"),
        ("[]", "peers: must be a non-empty list"),
        ('"10.0.0.1"', "peers: must be a non-empty list"),
    ],
)
def test_bad_peers_are_one_line(tmp_path: Path, peers: str, words: str) -> None:
    text = AGENT.replace('["10.0.0.1", "10.0.0.2"]', peers)
    with pytest.raises(AgentConfigError) as info:
        load_agent(tmp_path, text)
    message = str(info.value)
    assert "(vhid 1): " + words in message and "\n" not in message


def test_peers_are_read_in_order(tmp_path: Path) -> None:
    config = load_agent(tmp_path, AGENT)
    assert config.vhids[0].peers == (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))
