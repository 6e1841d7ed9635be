"""`hafs agent` on a bridge: interop with stock ucarp, elections, floods, bow-out, the resync
hold (stall, lost link), split brain answered at once, the lab's supervisor.

Each test builds its own namespaces (see conftest's rules) and stops every process it started.
Timing margins: a backup takes over after 3*advbase + advskew/256 s; stock ucarp reacts on a
one-second tick, so waits involving ucarp allow it 2 s more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hafs.carp import control
from hafs.cluster import derive_layout
from hafs.lab.supervise import supervised_agent
from tests.lab.carp_bed import CarpBed, Peer, running_bed, sample, wait_for

VIP = "10.77.0.100"
TAKEOVER = 3 + 10 / 256  # master-down of a backup with advskew 10
UCARP_SLACK = 2.0


@pytest.fixture
def bed(require_lab: None, tmp_path: Path) -> Iterator[CarpBed]:
    with running_bed(tmp_path) as bed:
        yield bed


def test_ucarp_master_hafs_backup(bed: CarpBed) -> None:
    a, b = bed.node("a"), bed.node("b")
    bed.ucarp(a, 1, VIP, 0)
    bed.hafs(b, [(1, VIP, 10)])
    wait_for(lambda: bed.holders(VIP) == ["a"], 8, "ucarp to become master")
    wait_for(lambda: b.status()["vhids"][0]["master"] is not None, 3, "hafs to hear ucarp")
    assert b.vhid_state(1) == "BACKUP"
    assert b.status()["vhids"][0]["master"]["source"] == a.address

    a.stop(signal.SIGKILL)  # power loss of the ucarp node (its VIP stays configured there)
    wait_for(lambda: b.holds(VIP), TAKEOVER + 1, "hafs to take over from a dead ucarp")

    bed.ucarp(a, 1, VIP, 0)  # back with --preempt: ucarp takes its VIP back, hafs steps down
    wait_for(lambda: bed.holders(VIP) == ["a"], 8 + UCARP_SLACK, "ucarp to preempt")
    assert b.vhid_state(1) == "BACKUP"


def test_hafs_master_ucarp_backup(bed: CarpBed) -> None:
    a, b = bed.node("a"), bed.node("b")
    bed.hafs(a, [(1, VIP, 0)])
    bed.ucarp(b, 1, VIP, 10)
    wait_for(lambda: bed.holders(VIP) == ["a"], 5, "hafs to become master")
    time.sleep(2)
    assert bed.holders(VIP) == ["a"], "ucarp must stay backup behind a better hafs master"

    a.port.cut()  # cable cut: hafs goes INIT and drops its VIP, ucarp times out
    wait_for(lambda: bed.holders(VIP) == ["b"], TAKEOVER + 1 + UCARP_SLACK, "ucarp takeover")
    assert a.vhid_state(1) == "INIT"
    assert a.status()["demotion"]["links_down"] == ["eth0"]

    a.port.plug()  # preempt: hafs takes the VIP back and ucarp steps down
    wait_for(lambda: bed.holders(VIP) == ["a"], TAKEOVER + 1 + UCARP_SLACK, "hafs to preempt")
    assert a.status()["demotion"]["total"] == 0

    a.stop(signal.SIGKILL)
    wait_for(lambda: b.holds(VIP), TAKEOVER + 1 + UCARP_SLACK, "ucarp to take over from hafs")


def test_wrong_pass_is_rejected_by_both(bed: CarpBed) -> None:
    a, b = bed.node("a"), bed.node("b")
    bed.hafs(a, [(1, VIP, 10)], passphrase="wrong")
    bed.ucarp(b, 1, VIP, 0)
    wait_for(lambda: a.status()["vhids"][0]["drops"].get("bad digest", 0) >= 3, 10, "drops")
    wait_for(lambda: bed.holders(VIP) == ["a", "b"], 8, "both to claim the VIP")
    assert a.status()["vhids"][0]["adverts_received"] == 0
    assert "digest" in b.output().lower(), b.output()


def test_equal_advskew_with_ucarp_settles_on_one_master(bed: CarpBed) -> None:
    """FreeBSD semantics: a master steps down on an equal advert; ucarp breaks ties by address.

    The two rules combine into one master: whichever side keeps the VIP, never both for long.
    """
    a, b = bed.node("a"), bed.node("b")
    bed.hafs(a, [(1, VIP, 0)])
    bed.ucarp(b, 1, VIP, 0)
    time.sleep(8)
    holders = [h[VIP] for h in sample(bed, [VIP], 4, step=0.05)]
    assert all(len(h) == 1 for h in holders), holders
    assert len({tuple(h) for h in holders}) == 1, f"the master changed: {holders}"


def test_three_agents_four_vips_home_and_best_backup(bed: CarpBed) -> None:
    names = ["n1", "n2", "n3"]
    homes = ["n1", "n2", "n3", "n1"]
    vips = [f"10.77.0.{101 + i}" for i in range(4)]
    layout = derive_layout(names, homes)
    peers = [bed.node(n) for n in names]
    for peer in peers:
        entries = [(i + 1, vips[i], layout[i][peer.name]) for i in range(4)]
        bed.hafs(peer, entries)
    placed = dict(zip(vips, [[home] for home in homes], strict=True))
    wait_for(lambda: {vip: bed.holders(vip) for vip in vips} == placed, 8, "VIPs on their homes")

    dead = peers[0]
    dead.port.cut()
    dead.stop(signal.SIGKILL)  # power loss: link gone, agent gone
    expected = {}
    for i, vip in enumerate(vips):
        skews = {n: s for n, s in layout[i].items() if n != dead.name}
        expected[vip] = [min(skews, key=lambda n: skews[n])]
    start = time.monotonic()
    double: dict[str, float] = {}
    longest = 0.0
    for snapshot in sample(bed, vips, TAKEOVER + 2):
        now = time.monotonic() - start
        for vip, holders in snapshot.items():
            alive = [h for h in holders if h != dead.name]
            if len(alive) > 1:
                longest = max(longest, now - double.setdefault(vip, now))
            else:
                double.pop(vip, None)
    final = {vip: [h for h in bed.holders(vip) if h != dead.name] for vip in vips}
    assert final == expected
    # one advert interval in theory (printed); two on a loaded machine still tell a split
    # brain that resolves from one that lasts until a master-down timer (3 s) runs out
    print(f"\ntwo live masters for {longest:.2f}s at most (load {os.getloadavg()[0]:.1f})")
    assert longest < 2.0, f"two live masters for {longest:.2f}s (more than two advert intervals)"


def test_flood_of_bad_packets_changes_nothing_and_is_counted(bed: CarpBed) -> None:
    a, b, c = bed.node("a"), bed.node("b"), bed.node("c")
    bed.hafs(a, [(1, VIP, 0)])
    bed.hafs(b, [(1, VIP, 10)])
    wait_for(lambda: bed.holders(VIP) == ["a"] and b.vhid_state(1) == "BACKUP", 6, "election")
    before = {p.name: p.status()["vhids"][0] for p in (a, b)}
    # Linux drops packets claiming a local source before raw sockets see them; let them
    # through on b so that the agent's own "sent by us" check is what drops them
    for knob in ("all", "eth0"):
        sysctl = f"net.ipv4.conf.{knob}.accept_local=1"
        subprocess.run(["ip", "netns", "exec", b.node.name, "sysctl", "-qw", sysctl], check=True)
    count = 150
    flood = [sys.executable, "-m", "tests.lab.flood", c.address, b.address, VIP, str(count)]
    subprocess.run(["ip", "netns", "exec", c.node.name, *flood], check=True, timeout=120)
    time.sleep(0.5)
    after_b = b.status()
    vhid_b = after_b["vhids"][0]
    assert vhid_b["state"] == "BACKUP"
    assert vhid_b["since"] == pytest.approx(before["b"]["since"], abs=0.05)  # no transition
    assert vhid_b["master"]["source"] == a.address
    assert after_b["drops"] == {
        "bad ttl": count,
        "too short": count,
        "bad checksum": count,
        "bad version": count,
        "unknown vhid": count,
    }
    assert vhid_b["drops"] == {"bad digest": count, "sent by us": count}
    vhid_a = a.status()["vhids"][0]
    assert vhid_a["state"] == "MASTER"
    assert vhid_a["since"] == pytest.approx(before["a"]["since"], abs=0.05)
    assert vhid_a["drops"]["bad digest"] == count
    assert bed.holders(VIP) == ["a"]


def test_bow_out_hands_over_at_once(bed: CarpBed) -> None:
    a, b = bed.node("a"), bed.node("b")
    bed.hafs(a, [(1, VIP, 0)])
    bed.hafs(b, [(1, VIP, 10)], preempt=False)  # without preempt only the bow-out moves it
    wait_for(lambda: bed.holders(VIP) == ["a"] and b.vhid_state(1) == "BACKUP", 6, "election")
    a.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    took = wait_for(lambda: bed.holders(VIP) == ["b"], TAKEOVER, "the bow-out handover")
    assert a.proc.wait(5) == 0  # type: ignore[union-attr]
    assert b.status()["vhids"][0]["reason"] == "master will time out"  # the bow-out advert
    # at once in theory (printed); without the bow-out, b would wait its master-down (3 s)
    print(f"\nbow-out handover {took:.2f}s (load {os.getloadavg()[0]:.1f})")
    assert took < TAKEOVER - 1, f"bow-out took {took:.2f}s: as long as a master-down timeout"


SEED = Path(__file__).resolve().parents[1] / "data" / "seed" / "ha-file-server-4"


def test_hafs_ucarp_runs_the_seed_scripts(bed: CarpBed, tmp_path: Path) -> None:
    """A start-ucarp.sh line with `ucarp` replaced by `hafs ucarp`, with the seed's own scripts.

    The scripts add and remove the VIP as alias ``<ifname>:$UCARP_VHID`` with net-tools'
    ifconfig: stock ucarp never sets UCARP_VHID, hafs does.
    """
    a, b = bed.node("a"), bed.node("b")
    bed.hafs(b, [(4, VIP, 10)], preempt=False)
    passfile = tmp_path / "pass"
    passfile.write_text("testok\n")
    passfile.chmod(0o600)
    argv = [
        sys.executable,
        "-m",
        "hafs",
        "ucarp",
        "--interface",
        "eth0",
        "-s",
        a.address,
        "--vhid",
        "4",
        "--passfile",
        str(passfile),
        "--advskew",
        "0",
        "--addr",
        VIP,
        "--shutdown",
        "--upscript",
        str(SEED / "ucarp-vh-up.sh"),
        "--downscript",
        str(SEED / "ucarp-vh-down.sh"),
        "--preempt",
        "--socket",
        str(tmp_path / "ucarp-4.sock"),
    ]
    a.log = tmp_path / "a.log"
    with a.log.open("wb") as out:
        a.proc = bed.lab.popen(a.node, argv, stdout=out, stderr=subprocess.STDOUT)
    wait_for(lambda: bed.holders(VIP) == ["a"], 6, "hafs ucarp to become master")
    assert f"{VIP}/32" in a.node.ip("-4", "-o", "addr", "show", "label", "eth0:4")
    assert b.vhid_state(4) == "BACKUP"

    a.stop()  # --shutdown: bow out, then the down script removes the alias
    assert a.proc.returncode == 0, a.output()
    assert "eth0:4" not in a.node.ip("-4", "-o", "addr", "show")
    wait_for(lambda: bed.holders(VIP) == ["b"], 1, "b to take over after the bow-out")
    log = a.output()
    assert "ucarp-vh-up.sh eth0 10.77.0.100: exited 0" in log
    assert "ucarp-vh-down.sh eth0 10.77.0.100: exited 0" in log


def test_virtual_mac_mode(bed: CarpBed) -> None:
    """FreeBSD-style: the VIP lives on a macvlan with 00:00:5e:00:01:<vhid>, up only as master."""
    a, b = bed.node("a"), bed.node("b")
    bed.hafs(a, [(1, VIP, 0)], extra='link_mode = "vmac"')
    wait_for(lambda: a.vhid_state(1) == "MASTER", 6, "a to become master")
    assert f"{VIP}/32" in a.node.ip("-4", "-o", "addr", "show", "dev", "vhid1")
    ping = subprocess.run(
        ["ip", "netns", "exec", b.node.name, "ping", "-c1", "-W2", VIP],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout
    assert "00:00:5e:00:01:01" in b.node.ip("neigh", "show", VIP)
    a.stop()
    assert "vhid1" not in a.node.ip("-o", "link", "show")


def test_cleanup_after_sigkill_removes_the_vips(bed: CarpBed, tmp_path: Path) -> None:
    """SIGKILL leaves the VIP configured; systemd's ExecStopPost runs `hafs agent --cleanup`."""
    a = bed.node("a")
    bed.hafs(a, [(1, VIP, 0)])
    wait_for(lambda: a.holds(VIP), 6, "a to hold the VIP")
    a.stop(signal.SIGKILL)
    assert a.holds(VIP)
    cleanup = [
        sys.executable,
        "-m",
        "hafs",
        "agent",
        "--config",
        str(tmp_path / "a.toml"),
        "--cleanup",
    ]
    subprocess.run(["ip", "netns", "exec", a.node.name, *cleanup], check=True, timeout=30)
    assert not a.holds(VIP)


# --- the resync hold -----------------------------------------------------------------------

VIP2 = "10.77.0.101"


def release(peer: Peer) -> None:
    """What the node's service daemon does once it has re-synced."""
    assert peer.socket is not None
    control.request(peer.socket, {"op": "demote", "hold": "resync", "value": 0})


def resync_cause(peer: Peer) -> str:
    demotion = peer.status()["demotion"]
    return str(demotion["causes"].get("resync", "")) if "resync" in demotion["holds"] else ""


def homes(bed: CarpBed) -> tuple[Peer, Peer]:
    """a home of VIP (vhid 1), b of VIP2 (vhid 2), each the other's backup; both configured
    with a service daemon's resync hold (released here, as the daemons would)."""
    a, b = bed.node("a"), bed.node("b")
    bed.hafs(a, [(1, VIP, 0), (2, VIP2, 10)], extra="start_demoted = true")
    bed.hafs(b, [(1, VIP, 10), (2, VIP2, 0)], extra="start_demoted = true")
    for peer in (a, b):
        assert resync_cause(peer) == "agent started"
        release(peer)
    placed = {VIP: ["a"], VIP2: ["b"]}
    wait_for(lambda: {v: bed.holders(v) for v in placed} == placed, 8, "VIPs on their homes")
    return a, b


def mac(peer: Peer) -> str:
    (link,) = json.loads(peer.node.ip("-j", "link", "show", "dev", "eth0"))
    return str(link["address"])


def test_a_resumed_master_steps_down_and_the_new_master_answers_it(bed: CarpBed) -> None:
    """SIGSTOP a master past master-down, SIGCONT it: it raises the resync hold before it
    acts, so it advertises only demoted and ends BACKUP; b, master meanwhile, never steps
    down and answers a's advert with its own and a gratuitous ARP, which a client hears."""
    a, b = homes(bed)
    c = bed.node("c")
    ping = ["ip", "netns", "exec", c.node.name, "ping", "-c1", "-W2", VIP]
    subprocess.run(ping, check=True, capture_output=True)  # c learns a's MAC for VIP
    agent = a.status()["pid"]
    os.kill(agent, signal.SIGSTOP)
    try:
        wait_for(lambda: b.vhid_state(1) == "MASTER", TAKEOVER + 2, "b to take VIP over")
        # b hears no peer: it holds itself too (its service daemon would find nobody)
        wait_for(lambda: resync_cause(b).startswith("no peer heard"), 3, "b's silence hold")
        since = b.status()["vhids"][0]["since"]
        # forget what b's takeover taught c: point VIP back at a, as a client that has not
        # heard b's announcement (a stale entry is not probed while nobody sends to it)
        c.node.ip("neigh", "replace", VIP, "lladdr", mac(a), "dev", "eth0", "nud", "stale")
        time.sleep(1.2)  # past the neighbour table's lock time
    finally:
        os.kill(agent, signal.SIGCONT)
    wait_for(lambda: mac(b) in c.node.ip("neigh", "show", VIP), 3, "b's gratuitous ARP at c")
    wait_for(lambda: a.vhid_state(1) == "BACKUP", 5, "a to step down")
    for _ in sample(bed, [VIP, VIP2], 3, step=0.1):  # b never steps down, a takes nothing
        vhids = b.status()["vhids"]
        assert [v["state"] for v in vhids] == ["MASTER", "MASTER"]
        assert vhids[0]["since"] == pytest.approx(since, abs=0.05)
        assert a.vhid_state(2) == "BACKUP"
    assert bed.holders(VIP) == ["b"] and bed.holders(VIP2) == ["b"]
    assert resync_cause(a).startswith("agent stalled ")
    assert b.status()["demotion"]["holds"] == {}  # b yielded to the demoted a
    log = a.output()
    assert "resync hold raised: agent stalled " in log, log


def test_after_a_lost_link_the_node_preempts_only_once_released(bed: CarpBed) -> None:
    a, b = homes(bed)
    a.port.cut()
    wait_for(lambda: bed.holders(VIP) == ["b"], TAKEOVER + 1, "b to take VIP over")
    assert resync_cause(a) == "link eth0 lost"
    wait_for(lambda: resync_cause(b).startswith("no peer heard"), 3, "b's silence hold")
    a.port.plug()
    wait_for(lambda: a.vhid_state(1) == "BACKUP", 3, "a's link back")
    assert a.status()["demotion"]["links_down"] == []
    assert resync_cause(a) == "link eth0 back after a loss"
    release(b)  # b's service daemon found nobody while a was cut off
    for holders in sample(bed, [VIP, VIP2], TAKEOVER + 1, step=0.1):
        assert holders == {VIP: ["b"], VIP2: ["b"]}, "a preempted with the hold up"
    release(a)  # a's service daemon has pulled what b wrote: now the preempt hands VIP back
    wait_for(lambda: bed.holders(VIP) == ["a"], 3, "a to preempt once released")
    assert bed.holders(VIP2) == ["b"]


# --- the lab's supervisor ------------------------------------------------------------------


def test_the_lab_supervisor_cleans_up_after_a_killed_agent(bed: CarpBed, tmp_path: Path) -> None:
    """SIGKILL the agent: the supervisor removes the VIP and runs the event hook with BACKUP
    (ExecStopPost), then starts the agent again, demoted (Restart=always). SIGTERM to the
    supervisor is a graceful stop: the agent bows out, no cleanup, no restart."""
    a = bed.node("a")
    events = tmp_path / "events"
    a.socket = str(tmp_path / "a.sock")
    configs = []
    for name, demoted in (("a.toml", "false"), ("a-restart.toml", "true")):
        config = tmp_path / name
        config.write_text(
            "\n".join([
                'node = "a"', 'interface = "eth0"', f'srcip = "{a.address}"', 'pass = "testok"',
                f'event_command = ["sh", "-c", "echo $0 $1 >> {events}"]',
                f'control_socket = "{a.socket}"', f"start_demoted = {demoted}",
                "[[vhid]]", "vhid = 1", f'addresses = ["{VIP}"]',
            ]) + "\n"
        )  # fmt: skip
        config.chmod(0o600)
        configs.append(config)
    a.log = tmp_path / "a.log"
    with a.log.open("wb") as out:
        a.proc = bed.lab.popen(a.node, supervised_agent(*configs), stdout=out, stderr=out)
    wait_for(lambda: a.holds(VIP), 8, "a to hold the VIP")
    agent = a.status()["pid"]
    assert agent != a.proc.pid  # the agent runs under the supervisor

    os.kill(agent, signal.SIGKILL)
    wait_for(lambda: not a.holds(VIP), 10, "the cleanup to remove the VIP")
    wait_for(lambda: events.read_text().count("BACKUP") == 2, 10, "the cleanup's BACKUP event")

    def restarted() -> bool:
        try:
            return bool(a.status()["pid"] != agent)
        except control.ControlError:
            return False

    wait_for(restarted, 15, "the agent to start again")
    assert resync_cause(a) == "agent started"  # the restart config: demoted
    wait_for(lambda: a.holds(VIP), 8, "a alone to take the VIP again")

    a.stop()
    assert a.proc.returncode == 0, a.output()
    assert not a.holds(VIP)
    time.sleep(3)
    assert [line.split()[1] for line in events.read_text().splitlines()] == [
        "BACKUP", "MASTER",  # the first agent
        "BACKUP",  # the cleanup after its SIGKILL
        "BACKUP", "MASTER", "INIT",  # the restarted agent, stopped: no cleanup after it
    ]  # fmt: skip
    assert not Path(a.socket).exists()  # not started again
