"""Loading inventories into the cluster model, and the derived advskew layout."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from hafs.cluster import InventoryError, derive_layout, load
from tests.unit.conftest import MakeCluster, four_nodes, write_inventory


def test_loads_nodes_vips_and_settings(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(zfs_pool="data", replication_interval=5, check_user="u")
    assert [n.name for n in cluster.nodes] == ["n1", "n2", "n3", "n4"]
    n1 = cluster.node("n1")
    assert (n1.os, n1.interface, n1.address) == ("freebsd", "em0", IPv4Interface("10.0.0.1/24"))
    vip = cluster.vip(1)
    assert (vip.name, vip.home, vip.address) == ("vip1", "n1", IPv4Address("10.0.0.101"))
    assert [s.name for s in vip.shares] == ["data"] and vip.shares[0].users == ("u",)
    assert (cluster.zfs_pool, cluster.replication_interval, cluster.check_user) == (
        "data",
        5.0,
        "u",
    )
    assert cluster.carp_pass == "secret"


def test_group_data_per_group_is_applied(tmp_path: Path) -> None:
    hosts = four_nodes()
    for _, data in hosts:
        del data["interface"]
    path = write_inventory(tmp_path, {"freebsd": hosts[:3], "linux": hosts[3:]}, carp_pass="p")
    (tmp_path / "group_data" / "freebsd.py").write_text("interface = 'em0'\n")
    (tmp_path / "group_data" / "linux.py").write_text("interface = 'ens36'\n")
    cluster = load(path)
    assert [n.interface for n in cluster.nodes] == ["em0", "em0", "em0", "ens36"]


def test_derived_layout_is_used_when_advskew_absent(make_cluster: MakeCluster) -> None:
    cluster = make_cluster()
    assert dict(cluster.vip(1).advskew) == {"n1": 0, "n2": 10, "n4": 20, "n3": 30}
    assert cluster.vip(1).backups == ["n2", "n4", "n3"]
    assert not cluster.vip(1).explicit


def test_explicit_advskew_names_the_carriers(make_cluster: MakeCluster) -> None:
    hosts = four_nodes(
        n1={"vips": [{"vhid": 1, "address": "10.0.0.101", "advskew": {"n1": 0, "n3": 7}}]}
    )
    cluster = make_cluster(hosts)
    assert cluster.vip(1).carriers == ["n1", "n3"]
    assert [v.vhid for v in cluster.vips_of("n2")] == [2, 3, 4]


def _survivor(layout: dict[str, int], dead: set[str]) -> str | None:
    alive = [n for n in layout if n not in dead]
    return min(alive, key=lambda n: layout[n]) if alive else None


@pytest.mark.parametrize("count", range(2, 9))
def test_layout_has_no_ties_and_spreads_double_failures(count: int) -> None:
    nodes = [f"n{i}" for i in range(count)]
    layout = derive_layout(nodes, nodes)
    for home, skews in zip(nodes, layout, strict=True):
        assert skews[home] == 0
        assert sorted(skews) == sorted(nodes)
        assert len(set(skews.values())) == count  # no ties
    if count < 4:
        return
    for dead in itertools.combinations(nodes, 2):
        takers = [_survivor(layout[nodes.index(d)], set(dead)) for d in dead]
        assert takers[0] != takers[1], (dead, takers)


def test_layout_spreads_several_vips_of_one_home() -> None:
    nodes = ["a", "b", "c", "d"]
    layout = derive_layout(nodes, ["a", "a", "a"])
    first_backups = [min((n for n in s if n != "a"), key=lambda n: s[n]) for s in layout]
    assert len(set(first_backups)) == 3


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"os": "windows"}, "host n1: os: must be 'freebsd' or 'linux', got 'windows'"),
        ({"interface": ""}, "host n1: interface: missing"),
        ({"address": "10.0.0.300/24"}, "host n1: address: '10.0.0.300/24' is not an IPv4 address"),
        ({"address": "fe80::1/64"}, "only IPv4"),
        ({"gateway": "router"}, "host n1: gateway: 'router' is not an IPv4 address"),
        ({"link_mode": "arp"}, "host n1: link_mode: must be 'garp' or 'vmac'"),
        ({"carp_preempt": "yes"}, "host n1: carp_preempt: must be True or False"),
        ({"vips": {"vhid": 1}}, "host n1: vips: must be a list"),
        ({"vips": [{"vhid": 1}]}, "needs both 'vhid' and 'address'"),
        ({"vips": [{"vhid": "1", "address": "10.0.0.9"}]}, "vhid: must be an integer"),
        ({"vips": [{"vhid": 1, "address": "10.0.0.9", "advskw": {}}]}, "unknown key 'advskw'"),
        ({"vips": [{"vhid": 1, "address": "10.0.0.9", "advskew": {"zz": 1}}]}, "unknown node 'zz'"),
        (
            {"vips": [{"vhid": 1, "address": "10.0.0.9", "advskew": {"n2": 1}}]},
            "must include the home node",
        ),
        (
            {"vips": [{"vhid": 1, "address": "10.0.0.9", "shares": [3]}]},
            "shares[0]: must be a share name",
        ),
    ],
)
def test_unreadable_inventory_is_one_line(
    make_cluster: MakeCluster, data: dict[str, object], words: str
) -> None:
    with pytest.raises(InventoryError) as info:
        make_cluster(four_nodes(n1=data))
    message = str(info.value)
    assert words in message and "\n" not in message


def test_cluster_wide_key_must_agree(tmp_path: Path) -> None:
    hosts = four_nodes(n2={"carp_pass": "other"})
    path = write_inventory(tmp_path, {"nodes": hosts}, carp_pass="p")
    with pytest.raises(InventoryError, match="carp_pass: differs between hosts n1 and n2"):
        load(path)


def test_missing_pass(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="carp_pass: missing"):
        load(write_inventory(tmp_path, {"nodes": four_nodes()}))


def test_inventory_code_error_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "inventory.py"
    path.write_text("nodes = [('n1', {})]\nraise RuntimeError('boom')\n")
    with pytest.raises(InventoryError, match="cannot be read: RuntimeError: boom"):
        load(path)


def test_missing_inventory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="not found: pass -i PATH"):
        load(tmp_path / "nope.py")


def test_secrets_file(tmp_path: Path) -> None:
    path = write_inventory(tmp_path, {"nodes": four_nodes()}, secrets_file="secrets.toml")
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('carp_pass = "from-file"\n[smb_users]\nalice = "pw"\n')
    os.chmod(secrets, 0o640)
    with pytest.raises(InventoryError, match="readable by group or others: chmod 600"):
        load(path)
    os.chmod(secrets, 0o600)
    cluster = load(path)
    assert cluster.carp_pass == "from-file" and dict(cluster.smb_users) == {"alice": "pw"}
    secrets.write_text('carp_pas = "typo"\n')
    with pytest.raises(InventoryError, match="unknown key 'carp_pas'"):
        load(path)


def test_loading_an_inventory_does_not_monkey_patch(tmp_path: Path) -> None:
    """pyinfra's CLI package patches everything with gevent on import; hafs must not let it."""
    path = write_inventory(tmp_path, {"nodes": four_nodes()}, carp_pass="p")
    code = (
        "import sys; from hafs.cluster import load; load(sys.argv[1]); "
        "from gevent import monkey; "
        "print(monkey.is_module_patched('threading'), monkey.is_module_patched('subprocess'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "False"]
