"""`hafs verify` and the failover drill against the real lab: 4 nodes, 4 VIPs, the service layer.

One lab for the module, built by ``hafs lab up`` from the example inventory with a shorter
replication interval (5 s, so the drill settles 10 s before each kill; every interval each
holder starts a receiver on each of the 3 other nodes, so a shorter one loads 2 cores).
Every SMB packet comes from the lab's client namespace (``hafs verify --lab`` runs the client
there); the drill's kills are power losses and its restores power-ons of lab nodes. Teardown
is ``hafs lab down`` and a check that no namespace, mount or file of the lab is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hafs.cluster import load
from hafs.lab.netns import list_namespaces, new_prefix
from hafs.lab.state import LAB_ROOT
from tests.lab.conftest import skip_or_fail, vrrp3_inventory

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
REPLICATION_INTERVAL = 5
VERIFY_GOAL = 3.0  # seconds for `hafs verify` on a healthy 4-VIP lab: printed beside the time
# a verify that waits for a timeout (a VIP not answering, a share hanging) takes this long or
# more; the goal itself is a timing claim, compared in the output, not asserted on a loaded CI
VERIFY_HUNG = 20.0


def hafs(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hafs", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def lab_inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example inventory, replicating every 5 s."""
    directory = tmp_path_factory.mktemp("drill")
    shutil.copy(REPO / "inventory.py", directory / "inventory.py")
    shutil.copytree(REPO / "group_data", directory / "group_data")
    settings = directory / "group_data" / "all.py"
    text = settings.read_text()
    assert "replication_interval = 10" in text
    settings.write_text(
        text.replace("replication_interval = 10", f"replication_interval = {REPLICATION_INTERVAL}")
    )
    return directory / "inventory.py"


@pytest.fixture(scope="module")
def lab(require_lab: None, lab_inventory: Path) -> Iterator[str]:
    missing = [t for t in ("zfs-fuse", "smbd", "sshd", "nsenter") if shutil.which(t) is None]
    if missing:
        reason = f"the drill needs {', '.join(missing)}"
        skip_or_fail(reason)
    name = new_prefix("hafs-d")
    try:
        up = hafs("lab", "up", "--name", name, "-i", str(lab_inventory))
        assert up.returncode == 0, up.stderr
        yield name
    finally:
        down = hafs("lab", "down", "--name", name)
        assert down.returncode == 0, down.stderr
    assert list_namespaces(name) == []
    assert not (LAB_ROOT / name).exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert name not in mounts


def test_verify_passes_on_the_healthy_lab_without_waiting_for_a_timeout(
    lab: str, lab_inventory: Path
) -> None:
    cluster = load(lab_inventory)
    took = []
    # the first share listing of a fresh smbd starts its samba-dcerpcd (about a second); the
    # goal is for a cluster in service, so the second run is the one timed
    for _ in range(2):
        began = time.monotonic()
        proc = hafs("verify", "--lab", "--name", lab, "--json")
        took.append(time.monotonic() - began)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    result = json.loads(proc.stdout)
    assert [v["name"] for v in result["vips"]] == ["vip1", "vip2", "vip3", "vip4"]
    for vip, checked in zip(cluster.vips, result["vips"], strict=True):
        assert checked["ok"], checked["problems"]
        assert checked["holder"] == vip.home
        assert checked["shares_found"] == [s.name for s in vip.shares]
        assert [s["ok"] for s in checked["shares"]] == [True] * len(vip.shares)
    print(
        f"\nhafs verify --lab on 4 VIPs: {took[0]:.2f}s, then {took[1]:.2f}s "
        f"(goal {VERIFY_GOAL:.1f}s; load {os.getloadavg()[0]:.1f})"
    )
    assert took[1] < VERIFY_HUNG, f"hafs verify --lab took {took[1]:.2f}s: it waited on something"


def test_verify_refuses_the_lab_inventory_outside_the_lab(lab: str, lab_inventory: Path) -> None:
    proc = hafs("verify", "-i", str(lab_inventory))  # from the root namespace: never connects

    assert (proc.returncode, proc.stdout) == (2, "")
    assert f"run hafs verify --lab --name {lab}" in proc.stderr


@pytest.mark.timeout(900)
def test_drill_over_four_nodes_reports_an_rto_for_every_vip(
    lab: str, lab_inventory: Path, tmp_path: Path
) -> None:
    cluster = load(lab_inventory)
    picture = tmp_path / "drill.png"

    proc = hafs(
        "verify", "--lab", "--name", lab, "--failover", "--json", "--plot", str(picture),
        timeout=880,
    )  # fmt: skip

    assert proc.stdout, proc.stderr
    print("\n" + proc.stderr)  # the drill's progress and verdict, for the record
    report: dict[str, Any] = json.loads(proc.stdout)
    rounds = report["rounds"]
    assert [r["node"] for r in rounds] == [n.name for n in cluster.nodes]
    for round_, vip in zip(rounds, cluster.vips, strict=True):  # node i is home of vip i only
        [outcome] = round_["vips"]
        assert outcome["name"] == vip.name
        assert outcome["rto"] is not None, outcome["problems"]  # an RTO for every VIP
        goal = 3 * vip.advbase + vip.advskew[vip.backups[0]] / 256 + 1
        assert outcome["goal"] == pytest.approx(goal)
        assert outcome["new_holder"] == vip.backups[0]
        # the RTO split by the new holder's record of its takeover (a timing claim: printed)
        split = [outcome[key] for key in ("detect", "hook", "smb")]
        assert None not in split and outcome["slowest"], outcome
        print(f"{vip.name}: detect, takeover, SMB: {split} s; slowest: {outcome['slowest']}")
    problems = [p for r in rounds for p in r["problems"]]
    problems += [p for r in rounds for v in r["vips"] for p in v["problems"]]
    # an RTO over its goal is a timing claim, judged by the drill and printed here with the
    # load (a loaded CI machine may miss it by a fraction of a second); anything else is not
    late = [p for p in problems if " over the goal " in p]
    print(f"RTO over the goal: {late or 'none'} (load {os.getloadavg()[0]:.1f})")
    assert [p for p in problems if p not in late] == [], proc.stderr  # data intact, failed back
    assert (proc.returncode, report["ok"]) == ((1, False) if late else (0, True))
    for round_ in rounds:
        [outcome] = round_["vips"]
        assert outcome["data"] == outcome["failback_data"] == "intact"
        assert outcome["failback"] is not None
    assert [(e["kind"], e["node"]) for e in report["events"]] == [
        (kind, n.name) for n in cluster.nodes for kind in ("kill", "restore")
    ]
    assert set(report["timeline"]) == {v.name for v in cluster.vips}
    assert "hafs verify: kill ha-file-server-1" in proc.stderr  # progress while it runs
    verdict = "FAIL" if late else "PASS"
    assert proc.stderr.rstrip().splitlines()[-1].startswith(f"hafs verify: verdict: {verdict}: ")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    after = hafs("verify", "--lab", "--name", lab, "--json")  # every VIP home, serving
    assert after.returncode == 0, after.stdout + after.stderr


@pytest.mark.timeout(600)
def test_a_vrrp3_lab_passes_a_drill_round(require_lab: None, tmp_path: Path) -> None:
    """The example cluster with `protocol = "vrrp3"` at 0.1 s (the FreeBSD nodes said to be
    14.1): every agent speaks VRRPv3, verify passes, and a power loss of a home node is taken
    over by its best backup with the data, and handed back. The RTO is printed beside CARP's."""
    name = new_prefix("hafs-v")
    try:
        up = hafs("lab", "up", "--name", name, "-i", vrrp3_inventory(tmp_path))
        assert up.returncode == 0, up.stderr
        proc = hafs(
            "verify", "--lab", "--name", name, "--failover", "--json",
            "--node", "ha-file-server-1", "--settle", "12", timeout=580,
        )  # fmt: skip
        print("\n" + proc.stderr)
        report: dict[str, Any] = json.loads(proc.stdout)
        [outcome] = report["rounds"][0]["vips"]
        assert outcome["new_holder"] == "ha-file-server-2", outcome
        assert outcome["data"] == outcome["failback_data"] == "intact", outcome
        late = [p for p in outcome["problems"] if " over the goal " in p]
        assert [p for p in outcome["problems"] if p not in late] == []
        print(f"VRRPv3 at 0.1 s: RTO {outcome['rto']} s, goal {outcome['goal']:.2f} s")
    finally:
        down = hafs("lab", "down", "--name", name)
        assert down.returncode == 0, down.stderr
    assert list_namespaces(name) == []
