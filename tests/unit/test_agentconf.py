"""agent.toml: what `hafs render` writes, `hafs agent` reads back; bad files are one line."""

from __future__ import annotations

import os
import re
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hafs import agentconf
from hafs.agentconf import AgentConfigError
from hafs.cluster import InventoryError
from tests.unit.conftest import MakeCluster, four_nodes

GOOD = """
node = "n4"
interface = "ens36"
srcip = "10.0.0.4"
pass = "secret"

[[vhid]]
vhid = 1
addresses = ["10.0.0.101"]
advskew = 20
"""


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_render_then_load_round_trip(make_cluster: MakeCluster, tmp_path: Path) -> None:
    cluster = make_cluster()
    config = agentconf.load(write(tmp_path, agentconf.render(cluster, cluster.node("n4"))))
    assert (config.node, config.interface, config.srcip) == ("n4", "ens36", IPv4Address("10.0.0.4"))
    assert config.passphrase == "secret" and config.preempt is True
    assert [(e.vhid, e.advskew) for e in config.vhids] == [(1, 20), (2, 30), (3, 10), (4, 0)]
    assert config.event_command == ("hafs", "event")


def test_the_inventory_sets_where_the_agent_serves_metrics(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """A deploy rewrites agent.toml: the metrics address lives in the inventory."""
    cluster = make_cluster(four_nodes(n4={"metrics": "10.0.0.4:9612"}))
    config = agentconf.load(write(tmp_path, agentconf.render(cluster, cluster.node("n4"))))
    assert config.metrics == "10.0.0.4:9612"
    assert agentconf.load(write(tmp_path, agentconf.render(make_cluster(), cluster.node("n3"))))


@pytest.mark.parametrize(
    ("node", "value", "words"),
    [
        ("n4", "9612", "'9612': write ADDRESS:PORT"),
        ("n4", "localhost:9612", "'localhost:9612': write ADDRESS:PORT"),
        ("n4", "10.0.0.4:99999", "port 1..65535"),
        ("n4", 9612, "9612: write ADDRESS:PORT"),
        ("n1", "10.0.0.1:9612", "only hafs agent (Linux) serves them"),
    ],
)
def test_a_bad_metrics_address_is_one_line(
    make_cluster: MakeCluster, node: str, value: object, words: str
) -> None:
    with pytest.raises(InventoryError, match=rf"^host {node}: metrics: .*{re.escape(words)}"):
        make_cluster(four_nodes(**{node: {"metrics": value}}))


def test_defaults(tmp_path: Path) -> None:
    config = agentconf.load(write(tmp_path, GOOD))
    entry = config.vhids[0]
    assert (entry.advbase, config.link_mode, config.interface_of(entry)) == (1, "garp", "ens36")
    assert config.hook_timeout == 30.0 and config.metrics is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_readable_config(tmp_path: Path, mode: int) -> None:
    with pytest.raises(AgentConfigError, match=r"readable by group or others.*chmod 600"):
        agentconf.load(write(tmp_path, GOOD, mode))


def test_pass_file(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("from-file\n")
    os.chmod(secret, 0o600)
    text = GOOD.replace('pass = "secret"', f'pass_file = "{secret}"')
    assert agentconf.load(write(tmp_path, text)).passphrase == "from-file"
    os.chmod(secret, 0o644)
    with pytest.raises(AgentConfigError, match=r"pass_file .* readable by group or others"):
        agentconf.load(write(tmp_path, text))


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('pass = "secret"', "", "pass: missing"),
        ('node = "n4"', 'nodes = "n4"', "unknown key 'nodes'"),
        ("vhid = 1", "vhid = 256", "vhid[0]: vhid: must be 1..255, got 256"),
        ("advskew = 20", "advskew = 300", "(vhid 1): advskew: must be 0..254, got 300"),
        ("advskew = 20", "advskew = true", "(vhid 1): advskew: must be an integer, got True"),
        ('["10.0.0.101"]', '["10.0.0.1011"]', "addresses: '10.0.0.1011' is not an IPv4 address"),
        ('["10.0.0.101"]', "[]", "addresses: must be a non-empty list"),
        ('srcip = "10.0.0.4"', 'srcip = "x"', "srcip: 'x' is not an IPv4 address"),
        ('interface = "ens36"', 'interface = "ens36"\nlink_mode = "mac"', "link_mode: must be"),
        (
            'interface = "ens36"',
            'interface = "ens36"\npreempt = 1',
            "preempt: must be true or false",
        ),
        ("advskew = 20", "advskew = 20\nadvskw = 1", "unknown key 'advskw'"),
        ("[[vhid]]", "[vhid]", "vhid: add at least one [[vhid]] table"),
        ('pass = "secret"', 'pass = "secret"\n[[', "not valid TOML"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, old: str, new: str, words: str) -> None:
    assert old in GOOD
    with pytest.raises(AgentConfigError) as info:
        agentconf.load(write(tmp_path, GOOD.replace(old, new, 1)))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_duplicate_vhid(tmp_path: Path) -> None:
    text = GOOD + '\n[[vhid]]\nvhid = 1\naddresses = ["10.0.0.102"]\n'
    with pytest.raises(AgentConfigError, match="vhid 1: configured twice"):
        agentconf.load(write(tmp_path, text))


VRRP = """
node = "n4"
interface = "ens36"
srcip = "10.0.0.4"
protocol = "vrrp3"

[[vhid]]
vhid = 1
addresses = ["10.0.0.101"]
priority = 200
interval = 0.1
"""


def test_vrrp3(tmp_path: Path) -> None:
    config = agentconf.load(write(tmp_path, VRRP))
    entry = config.vhids[0]
    assert (config.protocol, config.passphrase, config.preempt) == ("vrrp3", "", True)
    assert (entry.priority, entry.interval) == (200, 10)


def test_carp_is_the_default_and_vrrp_defaults_are_keepaliveds(tmp_path: Path) -> None:
    assert agentconf.load(write(tmp_path, GOOD)).protocol == "carp"
    text = VRRP.replace("priority = 200\ninterval = 0.1\n", "")
    entry = agentconf.load(write(tmp_path, text)).vhids[0]
    assert (entry.priority, entry.interval) == (100, 100)


@pytest.mark.parametrize(
    ("seconds", "centiseconds"), [("0.01", 1), ("1", 100), ("2.5", 250), ("40.95", 4095)]
)
def test_vrrp_interval_in_centiseconds(tmp_path: Path, seconds: str, centiseconds: int) -> None:
    text = VRRP.replace("interval = 0.1", f"interval = {seconds}")
    assert agentconf.load(write(tmp_path, text)).vhids[0].interval == centiseconds


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ('protocol = "vrrp3"', 'protocol = "vrrp2"', "protocol: must be 'carp' or 'vrrp3'"),
        ('srcip = "10.0.0.4"', 'pass = "x"', "pass: VRRPv3 has no authentication"),
        ('srcip = "10.0.0.4"', 'srcip = "10.0.0.4"\npass_file = "/x"', "pass_file: VRRPv3"),
        ('srcip = "10.0.0.4"\n', "", "srcip: VRRPv3 needs it"),
        ("priority = 200", "priority = 0", "(vhid 1): priority: must be 1..255, got 0"),
        ("priority = 200", "priority = 256", "priority: must be 1..255, got 256"),
        ("priority = 200", "priority = 2.5", "priority: must be an integer, got 2.5"),
        ("interval = 0.1", "interval = 0", "interval: must be seconds in 0.01 steps"),
        ("interval = 0.1", "interval = 0.015", "0.01..40.95, got 0.015"),
        ("interval = 0.1", "interval = 41", "interval: must be seconds in 0.01 steps"),
        ("interval = 0.1", "interval = nan", "interval: must be seconds in 0.01 steps"),
        ("interval = 0.1", 'interval = "1"', "interval: must be a number"),
        ("priority = 200", "advskew = 10", "advskew: not a vrrp3 setting: with protocol = "),
    ],
)
def test_bad_vrrp_config_is_one_line(tmp_path: Path, old: str, new: str, words: str) -> None:
    assert old in VRRP
    with pytest.raises(AgentConfigError) as info:
        agentconf.load(write(tmp_path, VRRP.replace(old, new, 1)))
    assert words in str(info.value) and "\n" not in str(info.value)


def test_carp_refuses_vrrp_settings(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match=r"priority: not a carp setting: .* advbase and"):
        agentconf.load(write(tmp_path, GOOD + "priority = 100\n"))
