"""`hafs verify` against real smbd instances, one per VIP, in namespaces this test makes.

A mini cluster without CARP or ZFS, the shape the service layer gives a healthy cluster: nodes
``file-a`` and ``file-b``, each a network + mount + UTS namespace (hostname = node name) holding
its VIP as a /32 and running one smbd for it, rendered by :mod:`hafs.service.samba` and bound
to the VIP only; a client namespace runs ``hafs verify`` (``ip netns exec``), so no packet
leaves the namespaces. The inventory (in ``tmp_path``) describes exactly this.

Every process is started under ``setpriv --pdeathsig KILL`` and stopped by pid; teardown then
kills any process left in the run's namespaces (samba-dcerpcd, connection children) and checks
that no namespace, mount or process of the run remains.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from hafs.lab.netns import Lab, Netns, inside, list_namespaces, new_prefix
from hafs.lab.supervise import pids_in_netns
from hafs.service.samba import (
    SambaDirs,
    SambaInstance,
    SambaShare,
    add_user_argv,
    render_smb_conf,
    start_argv,
    stop_argvs,
)
from tests.lab.conftest import skip_or_fail
from tests.unit.conftest import write_inventory

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
ANCHOR = r"""
set -e
umount -R -l /run/netns 2>/dev/null || true
mount -t tmpfs -o mode=755,size=16m "$1-run" /run
mkdir -p /run/lock
cp /etc/passwd /etc/group /run/
echo "$2:x:$3:$3::/nonexistent:/usr/sbin/nologin" >> /run/passwd
echo "$2:x:$3:" >> /run/group
mount --bind /run/passwd /etc/passwd
mount --bind /run/group /etc/group
hostname "$4"
echo ready
exec sleep infinity
"""
CHECK_USER, CHECK_UID, CHECK_PASSWORD = "hafs-check", "64124", "Ch3ck-verify"
DIE_WITH_US = ["setpriv", "--pdeathsig", "KILL", "--"]
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
SUBNET = "10.78.0"
CLIENT = f"{SUBNET}.250"
GOAL = 3.0  # seconds for a healthy cluster, the goal for 4 VIPs: printed, not asserted
HUNG = 20.0  # a verify that waited on a timeout (a share hanging) takes this long or more


@dataclass(frozen=True)
class ServedShare:
    name: str
    writable: bool = True
    valid_users: tuple[str, ...] = ()


@dataclass(frozen=True)
class VipSpec:
    name: str
    vhid: int
    address: str
    shares: tuple[ServedShare, ...]


# what the servers serve; the inventory of the healthy case says the same
VIPA = VipSpec(
    "vipa", 11, f"{SUBNET}.11", (ServedShare("projects"), ServedShare("docs", writable=False))
)
VIPB = VipSpec(
    "vipb", 12, f"{SUBNET}.12", (ServedShare("home"), ServedShare("private", True, ("alice",)))
)


def model_shares(spec: VipSpec) -> list[Any]:
    """The shares of ``spec`` as the inventory writes them, users as the server enforces."""
    shares: list[Any] = []
    for s in spec.shares:
        entry: dict[str, Any] = {"name": s.name, "writable": s.writable}
        if s.valid_users:
            entry["users"] = list(s.valid_users)
        shares.append(entry)
    return shares


def inventory(directory: Path, password: str = CHECK_PASSWORD, **vip_shares: Any) -> Path:
    """An inventory of file-a (home of vipa) and file-b (home of vipb); ``vip_shares`` (by VIP
    name) overrides the model's shares of a VIP."""
    hosts = []
    for index, (node, spec) in enumerate((("file-a", VIPA), ("file-b", VIPB)), start=1):
        vip = {
            "vhid": spec.vhid,
            "name": spec.name,
            "address": spec.address,
            "shares": vip_shares.get(spec.name, model_shares(spec)),
        }
        data = {"os": "linux", "interface": "eth0", "address": f"{SUBNET}.{index}/24"}
        hosts.append((node, {**data, "vips": [vip]}))
    return write_inventory(
        directory,
        {"nodes": hosts},
        carp_pass="unused",
        smb_users={CHECK_USER: password, "alice": "alice-pw"},
        check_user=CHECK_USER,
    )


@dataclass
class Node:
    """A node: its namespaces (anchored by a sleeping process) and its smbd per VIP."""

    hostname: str
    ns: Netns
    anchor: subprocess.Popen[bytes]
    smbd: dict[str, tuple[SambaInstance, subprocess.Popen[bytes]]] = field(default_factory=dict)

    @property
    def enter(self) -> list[str]:
        return ["nsenter", f"--target={self.anchor.pid}", "--mount", "--net", "--uts", "--"]

    def run(self, *argv: str, stdin: str | None = None) -> str:
        proc = subprocess.run(
            [*self.enter, *argv], input=stdin, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"{self.hostname}: {' '.join(argv)}: {proc.stderr}"
        return proc.stdout

    def serve(self, spec: VipSpec) -> SambaInstance:
        """Start one smbd for ``spec``, rendered by the service layer, bound to its VIP; its
        ``server string = %h`` makes IPC$'s comment name this node."""
        instance = SambaInstance(
            name=spec.name,
            vip=IPv4Address(spec.address),
            shares=tuple(
                SambaShare(s.name, self.share_dir(spec, s.name), s.writable, s.valid_users)
                for s in spec.shares
            ),
            dirs=SambaDirs.for_vip(f"/run/hafs/{spec.name}", f"/run/hafs-rt/{spec.name}"),
            config_file=f"/run/hafs-rt/{spec.name}/smb.conf",
        )
        dirs = instance.dirs
        paths = [s.path for s in instance.shares]
        self.run(
            "sh",
            "-c",
            f"mkdir -p {' '.join(paths)} {dirs.private} {dirs.state} {dirs.lock} {dirs.cache} "
            f"{dirs.pid} {dirs.ncalrpc} {os.path.dirname(dirs.log_file)} && "
            f"chown {CHECK_USER} {' '.join(paths)}",
        )
        self.run("sh", "-c", f"cat > {instance.config_file}", stdin=render_smb_conf(instance))
        self.run(*add_user_argv(instance, CHECK_USER), stdin=f"{CHECK_PASSWORD}\n" * 2)
        # a plain child: smbd --foreground calls setsid() itself
        smbd = subprocess.Popen([*DIE_WITH_US, *self.enter, *start_argv(instance, foreground=True)])
        self.smbd[spec.name] = (instance, smbd)
        return instance

    @staticmethod
    def share_dir(spec: VipSpec, share: str) -> str:
        return f"/run/hafs/{spec.name}/shares/{share}"

    def stop(self, vip: str) -> None:
        """Stop a VIP's smbd and its samba-dcerpcd the way step-down does: smbcontrol."""
        instance, smbd = self.smbd.pop(vip)
        for argv in stop_argvs(instance):
            subprocess.run([*self.enter, *argv], capture_output=True, check=False)
        try:
            smbd.wait(STOP_TIMEOUT)
        finally:
            if smbd.poll() is None:
                smbd.kill()
                smbd.wait()


def start_node(prefix: str, hostname: str, ns: Netns) -> Node:
    anchor = subprocess.Popen(
        [*DIE_WITH_US, "nsenter", f"--net=/run/netns/{ns.name}", "--",
         "unshare", "--mount", "--uts", "--propagation", "private", "--",
         "sh", "-c", ANCHOR, "anchor", f"{prefix}-{hostname}", CHECK_USER, CHECK_UID, hostname],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    assert anchor.stdout is not None and anchor.stderr is not None
    if anchor.stdout.readline() != b"ready\n":
        anchor.kill()
        pytest.fail(f"namespace anchor failed: {anchor.communicate()[1].decode().strip()}")
    return Node(hostname, ns, anchor)


def wait_listening(client: Netns, address: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        with inside(client), socket.socket() as probe:
            probe.settimeout(1)
            if probe.connect_ex((address, 445)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on {address}:445"
        time.sleep(0.02)


@dataclass
class Mini:
    prefix: str
    lab: Lab
    client: Netns
    nodes: dict[str, Node]
    inventory: Path

    def verify(self, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``hafs verify`` inside the client namespace."""
        inv = str(inventory or self.inventory)
        return subprocess.run(
            ["ip", "netns", "exec", self.client.name, sys.executable, "-m", "hafs.verify_cli",
             "verify", "-i", inv, *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=REPO,
        )  # fmt: skip

    def verify_json(self, inventory: Path | None = None) -> tuple[int, dict[str, Any]]:
        proc = self.verify("--json", inventory=inventory)
        assert proc.stdout, proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return proc.returncode, result


def _teardown(prefix: str, lab: Lab, nodes: list[Node]) -> None:
    for node in nodes:
        for vip in list(node.smbd):
            node.stop(vip)
        node.anchor.kill()
        node.anchor.communicate()
    # whatever the run's daemons left in its namespaces (samba-dcerpcd exits 60 s after idling)
    for ns in list_namespaces(prefix):
        for _ in range(50):
            pids = pids_in_netns(ns)
            if not pids:
                break
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        assert pids_in_netns(ns) == [], f"processes survive in {ns}"
    lab.close()


@pytest.fixture
def mini(require_lab: None, tmp_path: Path) -> Iterator[Mini]:
    missing = [t for t in ("smbd", "smbcontrol", "smbpasswd", "nsenter", "unshare", "setpriv")]
    missing = [t for t in missing if shutil.which(t) is None]
    if missing:
        reason = f"verify lab test needs {', '.join(missing)}"
        skip_or_fail(reason)
    prefix = new_prefix("hafs-v")
    lab = Lab(prefix)
    nodes: list[Node] = []
    try:
        client = lab.add_node("client")
        lab.connect(client, "eth0", f"{CLIENT}/24")
        for index, (hostname, spec) in enumerate((("file-a", VIPA), ("file-b", VIPB)), start=1):
            ns = lab.add_node(hostname.replace("file-", "n"))
            lab.connect(ns, "eth0", f"{SUBNET}.{index}/24")
            ns.add_address("eth0", f"{spec.address}/32")
            node = start_node(prefix, hostname, ns)
            nodes.append(node)
            node.serve(spec)
        for spec in (VIPA, VIPB):
            wait_listening(client, spec.address)
        yield Mini(prefix, lab, client, {n.hostname: n for n in nodes}, inventory(tmp_path / "inv"))
    finally:
        _teardown(prefix, lab, nodes)
    assert list_namespaces(prefix) == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert prefix not in mounts


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in result["vips"]}


def test_healthy_cluster_passes_with_holders_timings_and_no_canary_left(mini: Mini) -> None:
    began = time.monotonic()
    code, result = mini.verify_json()
    took = time.monotonic() - began

    assert code == 0, result
    assert result["ok"] is True
    vips = by_name(result)
    assert (vips["vipa"]["holder"], vips["vipb"]["holder"]) == ("file-a", "file-b")
    assert vips["vipa"]["shares_found"] == ["docs", "projects"]
    assert vips["vipb"]["shares_found"] == ["home", "private"]
    shares = {s["name"]: s for v in result["vips"] for s in v["shares"]}
    assert set(shares["projects"]["timings"]) == {"write", "read", "delete"}
    assert set(shares["docs"]["timings"]) == {"list"}  # read-only: listed, never written
    assert shares["private"]["skipped"] == "listed; hafs-check is not one of its users"
    assert all(s["ok"] for s in shares.values())
    for vip in result["vips"]:
        assert set(vip["timings"]) == {"connect", "list", "total"}
        assert vip["problems"] == [] and vip["error"] is None
    print(f"\nhafs verify on 2 VIPs: {took:.2f}s (goal {GOAL:.1f}s; load {os.getloadavg()[0]:.1f})")
    assert took < HUNG, f"hafs verify took {took:.2f}s: it waited on something"
    a, b = mini.nodes["file-a"], mini.nodes["file-b"]
    assert a.run("ls", "-A", Node.share_dir(VIPA, "projects")) == ""
    assert b.run("ls", "-A", Node.share_dir(VIPB, "home")) == ""

    table = mini.verify()
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "VHID", "VIP", "ADDRESS", "HOLDER", "SHARES", "OK", "CONNECT", "TOTAL", "RESULT"
    ]  # fmt: skip
    assert lines[1].split()[:5] == ["11", "vipa", VIPA.address, "file-a", "2/2"]
    assert lines[2].split()[:5] == ["12", "vipb", VIPB.address, "file-b", "2/2"]
    assert len(lines) == 3 and lines[1].endswith("ok") and lines[2].endswith("ok")
    assert "verdict: PASS: 2 VIP(s) serve their shares" in table.stderr


def test_a_stopped_smbd_fails_naming_the_vip_and_its_shares(mini: Mini) -> None:
    mini.nodes["file-b"].stop("vipb")

    proc = mini.verify()

    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        f"vipb {VIPB.address}: cannot connect: Connection refused "
        "(shares not checked: home, private)"
    ) in proc.stdout.splitlines()
    rows = {line.split()[1]: line for line in proc.stdout.splitlines()[1:3]}
    assert rows["vipa"].endswith("ok") and rows["vipb"].endswith("FAIL")
    assert "verdict: FAIL: 1 of 2 VIP(s) failed: vipb" in proc.stderr


def test_shares_differing_from_the_model_fail_each_named(mini: Mini, tmp_path: Path) -> None:
    drifted = inventory(
        tmp_path / "drifted",
        vipa=["projects", "reports"],  # the server has docs, not reports
        vipb=["home", "private"],  # alice's share, but the model lets every user in
    )

    code, result = mini.verify_json(drifted)

    assert code == 1
    vips = by_name(result)
    assert vips["vipa"]["missing"] == ["reports"] and vips["vipa"]["extra"] == ["docs"]
    assert vips["vipa"]["problems"] == [
        f"vipa {VIPA.address}: share reports: missing from the share list",
        f"vipa {VIPA.address}: share docs: listed but not in the model",
    ]
    [denied] = vips["vipb"]["problems"]
    assert denied.startswith(f"vipb {VIPB.address}: share private: write: ")
    assert "STATUS_ACCESS_DENIED" in denied
    assert [s["ok"] for s in vips["vipb"]["shares"]] == [True, False]


def test_a_wrong_password_fails_every_vip_at_logon(mini: Mini, tmp_path: Path) -> None:
    code, result = mini.verify_json(inventory(tmp_path / "badpw", password="wrong"))

    assert code == 1
    for vip in result["vips"]:
        assert vip["error"] == "cannot connect: logon as 'hafs-check' refused: " + (
            "check smb_users and check_user"
        )
        assert vip["holder"] is None and vip["shares"] == []
