"""`hafs lab` as a user runs it: up, status, kill, start, partition, heal, isolate, rejoin,
stop, down.

Each test makes its own lab (a per-run name) from the example inventory, asserts where every
VIP is after each step, and that `down` leaves no namespace, mount, file or process behind.
"""

from __future__ import annotations

import json
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hafs.cluster import load
from hafs.lab.cli import NODE_ACTIONS
from hafs.lab.netns import Netns, list_namespaces, new_prefix
from hafs.lab.state import LAB_ROOT
from hafs.lab.supervise import pids_in_netns
from tests.lab.carp_bed import wait_for
from tests.lab.conftest import Pair, skip_or_fail, vrrp3_inventory

REPO = Path(__file__).resolve().parents[2]
INVENTORY = str(REPO / "inventory.py")
CLUSTER = load(INVENTORY)
HOMES = {str(v.address): [v.home] for v in CLUSTER.vips}
TAKEOVER = 3 + 40 / 256 + 1  # slowest backup's master-down, plus a second
FAILBACK = 120  # a node back from the dead stays demoted until its replicas are in sync


def moved(vhid: int, skip: int = 0) -> dict[str, list[str]]:
    """Every VIP home, but vhid's on its best backup (or the one after ``skip`` others)."""
    vip = CLUSTER.vip(vhid)
    return {**HOMES, str(vip.address): [vip.backups[skip]]}


def hafs(*args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "hafs", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, f"hafs {' '.join(args)}: {proc.stderr}"
    return proc


@pytest.fixture
def require_daemons(require_lab: None) -> None:
    missing = [t for t in ("zfs-fuse", "ucarp", "nsenter", "unshare") if not shutil.which(t)]
    if missing:
        reason = f"the lab needs {', '.join(missing)}"
        skip_or_fail(reason)


@pytest.fixture
def name(require_daemons: None) -> Iterator[str]:
    lab = new_prefix("hafs-l")
    yield lab
    hafs("lab", "down", "--name", lab, check=False)
    assert_gone(lab)


def assert_gone(lab: str) -> None:
    assert list_namespaces(lab) == []
    assert not (LAB_ROOT / lab).exists()
    mounts = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET,SOURCE"], capture_output=True, text=True, check=True
    ).stdout
    assert lab not in mounts


def status(lab: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(hafs("lab", "status", "--name", lab, "--json").stdout)
    return result


def holders(lab: str) -> dict[str, list[str]]:
    return {v["vip"]: v["holders"] for v in status(lab)["vips"]}


def node(lab: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(n for n in status(lab)["nodes"] if n["name"] == name)
    return found


def test_lab_life_cycle(name: str) -> None:
    began = time.monotonic()
    up = hafs("lab", "up", "--name", name, "-i", INVENTORY)
    took_up = time.monotonic() - began
    assert "node ha-file-server-4: up (hafs, pool tank)" in up.stderr  # progress on stderr
    assert took_up < 30, f"up took {took_up:.1f}s"
    assert holders(name) == HOMES
    # what holds or derives from a secret (keys, cluster.json, pools with the users' NT
    # hashes) is root's alone: the lab's directory, and each pool image
    assert stat.S_IMODE((LAB_ROOT / name).stat().st_mode) == 0o700
    pools = list((LAB_ROOT / name).glob("*/pool.img"))
    assert len(pools) == 4 and {stat.S_IMODE(p.stat().st_mode) for p in pools} == {0o600}
    n1 = node(name, "ha-file-server-1")
    assert (n1["os"], n1["interface"], n1["address"], n1["link"]) == (
        "freebsd",
        "em0",
        "172.21.0.201",
        "up",
    )
    assert n1["daemons"] == {
        "anchor": True,
        "zfs-fuse": True,
        "sshd": True,
        "agent": True,
        "service": True,
    }

    # a node is a small host of its own: hostname, its pool, its agent
    assert hafs("lab", "exec", "--name", name, "ha-file-server-2", "--", "hostname").stdout == (
        "ha-file-server-2\n"
    )
    zfs = hafs(
        "lab", "exec", "--name", name, "ha-file-server-2", "--", "zfs", "list", "-H", "-o", "name"
    ).stdout.split()
    assert zfs[:2] == ["tank", "tank/hafs"] and "tank/hafs/vip2" in zfs  # its VIP's data
    agent = hafs(
        "lab",
        "exec",
        "--name",
        name,
        "ha-file-server-4",
        "--",
        sys.executable,
        "-m",
        "hafs",
        "status",
        "--json",
    ).stdout
    assert [v["state"] for v in json.loads(agent)["vhids"]] == [
        "BACKUP",
        "BACKUP",
        "BACKUP",
        "MASTER",
    ]
    ping = hafs("lab", "exec", "--name", name, "client", "--", "ping", "-c1", "-W2", "172.21.0.213")
    assert "1 received" in ping.stdout

    # power loss of node 1: its VIP moves to its best backup
    hafs("lab", "kill", "--name", name, "ha-file-server-1")
    wait_for(lambda: holders(name) == moved(1), TAKEOVER, "vip1 on its best backup")
    n1 = node(name, "ha-file-server-1")
    assert n1["link"] == "cut" and not any(n1["daemons"].values())

    # power back on: its pool is imported again; once re-synced, preempt returns the VIP home
    hafs("lab", "start", "--name", name, "ha-file-server-1")
    wait_for(lambda: holders(name) == HOMES, FAILBACK, "vip1 back on node 1", step=0.5)
    assert (
        "tank/hafs"
        in hafs(
            "lab",
            "exec",
            "--name",
            name,
            "ha-file-server-1",
            "--",
            "zfs",
            "list",
            "-H",
            "-o",
            "name",
        ).stdout
    )

    # partition node 3: nothing dies, its VIP moves, heal brings it back
    hafs("lab", "partition", "--name", name, "ha-file-server-3")
    wait_for(lambda: holders(name) == moved(3), TAKEOVER, "vip3 away from the partitioned node")
    n3 = node(name, "ha-file-server-3")
    assert n3["link"] == "cut" and all(n3["daemons"].values())
    hafs("lab", "heal", "--name", name, "ha-file-server-3")
    # back on the wire with an old copy: home again only after its resync (no preempt at link up)
    wait_for(lambda: holders(name) == HOMES, FAILBACK, "vip3 home after heal", step=0.5)

    # graceful stop of node 4: its VIP moves at once (bow-out) to its best backup
    hafs("lab", "stop", "--name", name, "ha-file-server-4")
    assert holders(name) == moved(4)
    hafs("lab", "start", "--name", name, "ha-file-server-4")
    wait_for(lambda: holders(name) == HOMES, FAILBACK, "vip4 home after start", step=0.5)

    began = time.monotonic()
    down = hafs("lab", "down", "--name", name)
    took_down = time.monotonic() - began
    assert "removed 7 namespace(s)" in down.stderr  # switch, 4 nodes, client, gateway
    assert took_down < 30, f"down took {took_down:.1f}s: something hung"
    assert_gone(name)
    print(f"\nhafs lab up {took_up:.1f}s, down {took_down:.1f}s")


def test_foreign_ucarp_on_freebsd_nodes(name: str) -> None:
    hafs("lab", "up", "--name", name, "-i", INVENTORY, "--foreign", "ucarp")
    nodes = {n["name"]: n for n in status(name)["nodes"]}
    assert [nodes[f"ha-file-server-{i}"]["carp"] for i in range(1, 5)] == [
        "ucarp",
        "ucarp",
        "ucarp",
        "hafs",
    ]
    assert sorted(nodes["ha-file-server-1"]["daemons"]) == [
        "anchor",
        "service",
        "sshd",
        "ucarp-1",
        "ucarp-2",
        "ucarp-3",
        "ucarp-4",
        "zfs-fuse",
    ]
    assert holders(name) == HOMES
    # the hafs node dies: a ucarp node takes its VIP (ucarp reacts up to a second late and
    # runs its scripts, hafs event included, before it goes on)
    hafs("lab", "kill", "--name", name, "ha-file-server-4")
    took = wait_for(lambda: holders(name) == moved(4), TAKEOVER + 4, "ucarp to take vip4")
    print(f"\nvip4 on one ucarp node alone {took:.2f}s after the kill")
    hafs("lab", "start", "--name", name, "ha-file-server-4")
    wait_for(lambda: holders(name) == HOMES, FAILBACK, "vip4 back on the hafs node", step=0.5)
    # a ucarp node dies: the hafs node is vip3's best backup and takes it from dead ucarp
    assert CLUSTER.vip(3).backups[0] == "ha-file-server-4"
    hafs("lab", "kill", "--name", name, "ha-file-server-3")
    wait_for(lambda: holders(name) == moved(3), TAKEOVER, "hafs to take vip3 from dead ucarp")


def test_foreign_keepalived_on_freebsd_nodes(name: str, tmp_path: Path) -> None:
    """keepalived on the FreeBSD-role nodes of a VRRPv3 cluster, from the config `hafs render`
    gives, beside one hafs agent: each takes the other's VIP with its data. At 1 s: 0.1 s
    flaps on a machine at load 20 (adverts late by more than the 0.35 s master-down)."""
    refused = hafs("lab", "up", "--name", name, "-i", INVENTORY, "--foreign", "keepalived",
                   check=False)  # fmt: skip
    assert refused.returncode == 2
    assert 'keepalived speaks VRRP only; set protocol = "vrrp3"' in refused.stderr
    assert refused.stderr.count("\n") == 1
    v3 = vrrp3_inventory(tmp_path, interval=1)
    hafs("lab", "up", "--name", name, "-i", v3, "--foreign", "keepalived")
    nodes = {n["name"]: n for n in status(name)["nodes"]}
    assert [nodes[f"ha-file-server-{i}"]["carp"] for i in range(1, 5)] == [
        "keepalived",
        "keepalived",
        "keepalived",
        "hafs",
    ]
    assert "keepalived" in nodes["ha-file-server-1"]["daemons"]
    wait_for(lambda: holders(name) == HOMES, 10, "every VIP on its home")
    # the hafs node dies: a keepalived node takes its VIP and serves it (hafs event)
    hafs("lab", "kill", "--name", name, "ha-file-server-4")
    took = wait_for(lambda: holders(name) == moved(4), 8, "keepalived to take vip4")
    print(f"\nvip4 on one keepalived node alone {took:.2f}s after the kill")
    hafs("lab", "start", "--name", name, "ha-file-server-4")
    wait_for(lambda: holders(name) == HOMES, FAILBACK, "vip4 back on the hafs node", step=0.5)
    # a keepalived node dies: the hafs node is vip3's best backup and takes it
    assert CLUSTER.vip(3).backups[0] == "ha-file-server-4"
    hafs("lab", "kill", "--name", name, "ha-file-server-3")
    took = wait_for(lambda: holders(name) == moved(3), 8, "hafs to take vip3 from keepalived")
    print(f"vip3 on the hafs node {took:.2f}s after keepalived's node died")


def test_down_cleans_up_after_up_was_killed(name: str) -> None:
    up = subprocess.Popen(
        [sys.executable, "-m", "hafs", "lab", "up", "--name", name, "-i", INVENTORY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = LAB_ROOT / name / "state.json"

    def booted_two() -> bool:
        try:
            nodes = json.loads(state.read_text())["nodes"].values()
        except (OSError, ValueError, KeyError):
            return False
        return sum("agent" in n.get("procs", {}) for n in nodes) >= 2

    wait_for(booted_two, 30, "two nodes booted")
    up.send_signal(signal.SIGKILL)  # the lab command dies in the middle of up
    up.wait()
    namespaces = list_namespaces(name)
    assert namespaces and any(pids_in_netns(ns) for ns in namespaces)
    down = hafs("lab", "down", "--name", name)
    assert f"removed {len(namespaces)} namespace(s)" in down.stderr
    assert_gone(name)


def pings(ns: Netns, address: str) -> bool:
    argv = ["ip", "netns", "exec", ns.name, "ping", "-c1", "-W1", address]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def test_an_isolated_port_keeps_carrier_and_forwards_nothing(pair: Pair) -> None:
    assert pair.port_a.state() == "up" and pings(pair.a, "10.77.0.2")
    pair.port_a.isolate()
    assert pair.port_a.state() == "isolated"
    link = pair.a.ip("-o", "link", "show", "eth0")
    assert "LOWER_UP" in link and "NO-CARRIER" not in link  # the node still sees its link
    assert not pings(pair.a, "10.77.0.2") and not pings(pair.b, "10.77.0.1")
    pair.port_a.rejoin()
    assert pair.port_a.state() == "up"
    assert pings(pair.a, "10.77.0.2") and pings(pair.b, "10.77.0.1")
    pair.port_a.cut()
    assert pair.port_a.state() == "cut"


def ping_from(lab: str, node_name: str, address: str) -> bool:
    argv = ("lab", "exec", "--name", lab, node_name, "--", "ping", "-c1", "-W1", address)
    return hafs(*argv, check=False).returncode == 0


def adverts_heard(lab: str, node_name: str) -> int:
    """How many CARP adverts the node's agent has received, over all its vhids."""
    argv = ("lab", "exec", "--name", lab, node_name, "--", sys.executable, "-m", "hafs", "status")
    return sum(v["adverts_received"] for v in json.loads(hafs(*argv, "--json").stdout)["vhids"])


def test_isolate_rejoin_and_the_gateway(name: str) -> None:
    """The lab's gateway answers every node; an isolated node keeps its link up and reaches
    nobody, neither the gateway nor its peers, until it rejoins."""
    hafs("lab", "up", "--name", name, "-i", INVENTORY)
    lab = status(name)
    gateway = str(CLUSTER.nodes[0].gateway)
    assert lab["gateway"] == {"ns": f"{name}-gw", "addresses": [gateway]}
    assert f"; gateway {gateway}" in hafs("lab", "status", "--name", name).stdout
    for ns in list_namespaces(name):  # the gateway routes nowhere: no default route anywhere
        assert Netns(ns).ip("-4", "route", "show", "default") == ""
    assert all(ping_from(name, n.name, gateway) for n in CLUSTER.nodes)

    isolated, peer = "ha-file-server-3", "ha-file-server-1"
    hafs("lab", "isolate", "--name", name, isolated)
    assert node(name, isolated)["link"] == "isolated"
    table = hafs("lab", "status", "--name", name).stdout.splitlines()
    assert " isolated " in next(line for line in table if line.startswith(isolated))
    carrier = hafs("lab", "exec", "--name", name, isolated, "--", "ip", "-o", "link", "show", "em0")
    assert "LOWER_UP" in carrier.stdout, carrier.stdout
    assert not ping_from(name, isolated, gateway)
    assert not ping_from(name, isolated, node(name, peer)["address"])
    assert not ping_from(name, peer, node(name, isolated)["address"])
    vip3 = str(CLUSTER.vip(3).address)  # its backups hear no adverts: one of them takes vip3
    wait_for(lambda: CLUSTER.vip(3).backups[0] in holders(name)[vip3], TAKEOVER, "vip3 taken")
    heard = adverts_heard(name, isolated)
    time.sleep(2)  # two advert intervals: the isolated node hears no peer
    assert adverts_heard(name, isolated) == heard

    hafs("lab", "rejoin", "--name", name, isolated)
    assert node(name, isolated)["link"] == "up"
    assert ping_from(name, isolated, gateway)
    assert ping_from(name, peer, node(name, isolated)["address"])
    wait_for(lambda: adverts_heard(name, isolated) > heard, TAKEOVER, "adverts heard again")

    for command in ("isolate", "rejoin"):
        assert NODE_ACTIONS[command] in " ".join(hafs("lab", command, "--help").stdout.split())
        bad = hafs("lab", command, "--name", name, "no-such-node", check=False)
        assert bad.returncode == 2
        assert bad.stderr.count("\n") == 1 and "no-such-node" in bad.stderr, bad.stderr
    hafs("lab", "partition", "--name", name, isolated)
    refused = hafs("lab", "isolate", "--name", name, isolated, check=False)
    assert refused.returncode == 1 and f"hafs lab heal {isolated}" in refused.stderr
