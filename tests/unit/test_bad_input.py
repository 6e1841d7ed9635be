"""Bad input, as a hostile user would give it: every case is refused with exit 1 or 2 and one
line on stderr naming the field, never a traceback, and nothing is written first."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

from hafs.cli import main
from hafs.cluster import uid_of
from hafs.lab import cli as lab_cli
from hafs.lab.cluster import ClusterLab
from hafs.service import daemon
from tests.unit.conftest import four_nodes, write_inventory

SETTINGS: dict[str, Any] = {"carp_pass": "secret", "smb_users": {"u": "pw", "v": "pw"}}


def vip(**fields: Any) -> dict[str, Any]:
    """n1's VIP with ``fields`` changed."""
    return {"n1": {"vips": [{"vhid": 1, "address": "10.0.0.101", "shares": ["data"], **fields}]}}


def share(value: Any) -> dict[str, Any]:
    return vip(shares=[value])


def node(**fields: Any) -> dict[str, Any]:
    return {"n1": fields}


# (host overrides of four_nodes, group_data overrides, words naming the field in the refusal)
INVENTORIES: list[Any] = [
    pytest.param(share("my share"), {}, "shares[0]: name: 'my share'", id="share-space"),
    pytest.param(share("a/b"), {}, "shares[0]: name: 'a/b'", id="share-slash"),
    pytest.param(share("../../etc"), {}, "shares[0]: name", id="share-dotdot"),
    pytest.param(share("x]\n[global]"), {}, "shares[0]: name", id="share-section"),
    pytest.param(share("[x"), {}, "shares[0]: name", id="share-bracket"),
    pytest.param(share(" lead"), {}, "shares[0]: name", id="share-leading-space"),
    pytest.param(share("trail "), {}, "shares[0]: name", id="share-trailing-space"),
    pytest.param(share(""), {}, "shares[0]: name", id="share-empty"),
    pytest.param(share("tab\tname"), {}, "shares[0]: name", id="share-tab"),
    pytest.param(share("global"), {}, "'global' is a Samba section", id="share-global"),
    pytest.param(share("HOMES"), {}, "'HOMES' is a Samba section", id="share-homes"),
    pytest.param(share("a" * 65), {}, "shares[0]: name", id="share-long"),
    pytest.param(share(".hidden"), {}, "shares[0]: name", id="share-dot"),
    pytest.param(share("semi;colon"), {}, "shares[0]: name", id="share-semicolon"),
    pytest.param(share("dollar$"), {}, "shares[0]: name", id="share-dollar"),
    pytest.param(share({"name": "d", "comment": "x\n[g]"}), {}, "comment", id="share-comment"),
    pytest.param(share({"name": "d", "writable": "no"}), {}, "writable", id="share-writable"),
    pytest.param(share({"name": "d", "users": "u"}), {}, "users: must be a list", id="share-users"),
    pytest.param(share({"name": "d", "guest": True}), {}, "unknown key 'guest'", id="share-key"),
    pytest.param(vip(shares="data"), {}, "shares: must be a list", id="shares-string"),
    pytest.param({}, {"smb_users": {"ali ce;rm -rf /": "pw"}}, "smb_users: user", id="user-shell"),
    pytest.param({}, {"smb_users": {"Alice": "pw"}}, "smb_users: user: 'Alice'", id="user-upper"),
    pytest.param({}, {"smb_users": {"1alice": "pw"}}, "smb_users: user", id="user-digit"),
    pytest.param({}, {"smb_users": {"a" * 33: "pw"}}, "smb_users: user", id="user-long"),
    pytest.param({}, {"smb_users": {"": "pw"}}, "smb_users: user: ''", id="user-empty"),
    pytest.param({}, {"smb_users": {"al/ice": "pw"}}, "smb_users: user", id="user-slash"),
    pytest.param({}, {"smb_users": {"al:ice": "pw"}}, "smb_users: user", id="user-colon"),
    pytest.param({}, {"smb_users": {"-alice": "pw"}}, "smb_users: user", id="user-dash"),
    pytest.param({}, {"smb_users": {"u": "pw\nx"}}, "smb_users: u: the password", id="pw-newline"),
    pytest.param({}, {"smb_users": {"u": "pw\x00"}}, "smb_users: u: the password", id="pw-nul"),
    pytest.param({}, {"smb_users": {"u": "pw\t"}}, "smb_users: u: the password", id="pw-tab"),
    pytest.param({}, {"smb_users": {"u": "\x7f"}}, "smb_users: u: the password", id="pw-del"),
    pytest.param({}, {"smb_users": {"u": 5}}, "smb_users: must map", id="pw-int"),
    pytest.param(
        {}, {"smb_users": {"user24": "a", "user45": "b"}}, "user24 and user45", id="uid-collision"
    ),
    pytest.param(
        {}, {"smb_uids": {"u": uid_of("v", {})}}, "u and v both get uid", id="uid-pin-collision"
    ),
    pytest.param({}, {"smb_uids": {"u": "1000"}}, "smb_uids: must map", id="uid-string"),
    pytest.param({}, {"smb_uids": {"x": 61000}}, "smb_uids: 'x' is not in", id="uid-unknown"),
    pytest.param({}, {"smb_uids": {"u": 0}}, "smb_uids: u: uid 0", id="uid-root"),
    pytest.param({}, {"smb_uids": {"u": 70000}}, "smb_uids: u: uid 70000", id="uid-high"),
    pytest.param({}, {"smb_uids": [1000]}, "smb_uids: must map", id="uid-list"),
    pytest.param(vip(name="../vip1 x"), {}, "name: '../vip1 x'", id="vip-dotdot"),
    pytest.param(vip(name="vip 1"), {}, "vip 1: name", id="vip-space"),
    pytest.param(vip(name="vip/1"), {}, "vip 1: name", id="vip-slash"),
    pytest.param(vip(name=""), {}, "vip 1: name", id="vip-empty"),
    pytest.param(vip(name=5), {}, "vip 1: name: 5", id="vip-int"),
    pytest.param(vip(name="v" * 65), {}, "vip 1: name", id="vip-long"),
    pytest.param({}, {"zfs_pool": "my tank"}, "zfs_pool: 'my tank'", id="pool-space"),
    pytest.param({}, {"zfs_pool": "tank/sub"}, "zfs_pool", id="pool-slash"),
    pytest.param({}, {"zfs_pool": "1tank"}, "zfs_pool", id="pool-digit"),
    pytest.param({}, {"zfs_pool": ""}, "zfs_pool", id="pool-empty"),
    pytest.param({}, {"zfs_pool": "../tank"}, "zfs_pool", id="pool-dotdot"),
    pytest.param({}, {"zfs_pool": 7}, "zfs_pool: 7", id="pool-int"),
    pytest.param({}, {"failback": "no"}, "failback: must be True or False", id="failback-no"),
    pytest.param({}, {"failback": 1}, "failback: must be True or False", id="failback-int"),
    pytest.param(node(carp_preempt=0), {}, "carp_preempt", id="preempt-int"),
    pytest.param({}, {"replication_interval": 0}, "replication_interval: 0", id="interval-0"),
    pytest.param({}, {"replication_interval": -5}, "replication_interval: -5", id="interval-neg"),
    pytest.param({}, {"replication_interval": 3601}, "replication_interval", id="interval-high"),
    pytest.param({}, {"replication_interval": "10"}, "replication_interval", id="interval-str"),
    pytest.param({}, {"replication_interval": 2.5}, "replication_interval", id="interval-float"),
    pytest.param({}, {"replication_interval": True}, "replication_interval", id="interval-bool"),
    pytest.param(node(interface="nonexistent-if01"), {}, "interface", id="if-16-chars"),
    pytest.param(node(interface="em 0"), {}, "interface: 'em 0'", id="if-space"),
    pytest.param(node(interface="em0/1"), {}, "interface", id="if-slash"),
    pytest.param(node(interface="eth0:1"), {}, "interface", id="if-colon"),
    pytest.param(node(interface="em0;reboot"), {}, "interface", id="if-shell"),
    pytest.param(node(interface=5), {}, "interface: 5", id="if-int"),
    pytest.param({}, {"carp_pass": "pass word"}, "carp_pass", id="carp-space"),
    pytest.param({}, {"carp_pass": 'a"b'}, "carp_pass", id="carp-quote"),
    pytest.param({}, {"carp_pass": "$(reboot)"}, "carp_pass", id="carp-dollar"),
    pytest.param({}, {"carp_pass": 5}, "carp_pass: must be a string", id="carp-int"),
    pytest.param({}, {"check_user": 5}, "check_user", id="check-user-int"),
    pytest.param({}, {"quorum_witness": "router"}, "quorum_witness", id="witness"),
    pytest.param(vip(advbase="1"), {}, "advbase", id="advbase-str"),
]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of ``hafs argv`` (argparse's exits included)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, words: str, codes: tuple[int, ...] = (2,)) -> None:
    assert code in codes, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert words in err


@pytest.mark.parametrize("command", ["check", "render"])
@pytest.mark.parametrize(("hosts", "group_data", "words"), INVENTORIES)
def test_broken_inventory_is_refused_in_one_line(
    command: str,
    hosts: dict[str, Any],
    group_data: dict[str, Any],
    words: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    inventory = write_inventory(
        tmp_path, {"nodes": four_nodes(**hosts)}, **{**SETTINGS, **group_data}
    )
    argv = ["-i", str(inventory)] + (["n2", "rc.conf"] if command == "render" else [])
    assert_refused(*run([command, *argv], capsys), words)


def test_pinned_uid_settles_a_collision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users = {"user24": "a", "user45": "b"}
    inventory = write_inventory(
        tmp_path,
        {"nodes": four_nodes()},
        **{**SETTINGS, "smb_users": users, "smb_uids": {"user45": 61000}},
    )
    assert main(["render", "-i", str(inventory), "n1", "cluster.json"]) == 0
    assert json.loads(capsys.readouterr().out)["uids"] == {"user45": 61000}


COMMAND_LINES: list[Any] = [
    pytest.param([], "required: COMMAND", id="nothing"),
    pytest.param(["nosuch"], "invalid choice: 'nosuch'", id="unknown-command"),
    pytest.param(["check", "-i", "/nonexistent/inv.py"], "inventory '/nonexistent", id="no-inv"),
    pytest.param(["check", "--bogus"], "unrecognized arguments: --bogus", id="check-option"),
    pytest.param(["render"], "required: NODE, FILE", id="render-nothing"),
    pytest.param(["render", "-i", "inventory.py", "nonode", "rc.conf"], "unknown node", id="node"),
    pytest.param(
        ["render", "-i", "inventory.py", "ha-file-server-1", "passwd"], "FILE", id="render-file"
    ),
    pytest.param(["lab", "up", "--name", "../../x"], "lab name '../../x'", id="lab-dotdot"),
    pytest.param(["lab", "up", "--name", ""], "lab name ''", id="lab-empty"),
    pytest.param(["lab", "down", "--name", "a/b"], "lab name 'a/b'", id="lab-down-slash"),
    pytest.param(["lab", "kill", "--name", "UPPER", "n1"], "lab name 'UPPER'", id="lab-upper"),
    pytest.param(["lab", "status", "--name", "x" * 11], "lab name", id="lab-long"),
    pytest.param(
        ["lab", "exec", "--name", "a b", "client", "--", "true"], "lab name 'a b'", id="lab-space"
    ),
    pytest.param(["lab", "kill"], "required: NODE", id="lab-kill-nothing"),
    pytest.param(["lab", "frobnicate"], "invalid choice: 'frobnicate'", id="lab-unknown"),
    pytest.param(["service", "fence"], "required: VIP", id="fence-nothing"),
    pytest.param(["service", "hold", "x", "-1"], "argument value: '-1'", id="hold-negative"),
    pytest.param(["service", "hold", "x", "999"], "argument value: '999'", id="hold-high"),
    pytest.param(["event", "bad", "MASTER"], "SUBSYSTEM 'bad'", id="event-subsystem"),
    pytest.param(["event", "1@em0", "WRONG"], "argument state", id="event-state"),
    pytest.param(["service", "held"], "cluster config /nonexistent", id="held-no-config"),
    pytest.param(["event", "1@em0", "MASTER"], "cluster config", id="event-config"),
    pytest.param(["service", "diverged", "frob"], "invalid choice: 'frob'", id="diverged"),
    pytest.param(["service", "snapshots"], "required: VIP", id="snapshots-nothing"),
    pytest.param(["service", "sync", "vip1"], "required", id="sync-no-peer"),
    pytest.param(["service", "ssh-command"], "--peer", id="ssh-command-no-peer"),
    pytest.param(["carp", "decode", "zz"], "HEX: not pairs", id="carp-decode-hex"),
    pytest.param(["carp", "encode", "--vhid", "1"], "required: --pass", id="carp-encode"),
    pytest.param(["demote", "--set", "x"], "--set", id="demote-set"),
    pytest.param(["ucarp", "-i", "em0"], "required", id="ucarp-required"),
    pytest.param(["agent", "--log-level", "loud"], "--log-level", id="agent-log-level"),
    pytest.param(["status", "--bogus"], "unrecognized arguments", id="status-option"),
]


@pytest.mark.parametrize(("argv", "words"), COMMAND_LINES)
def test_bad_command_line_is_refused_in_one_line(
    argv: list[str],
    words: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the example inventory.py
    monkeypatch.setenv("HAFS_CLUSTER_CONFIG", "/nonexistent/cluster.json")
    monkeypatch.setattr(lab_cli, "ClusterLab", functools.partial(ClusterLab, root=tmp_path / "l"))
    assert_refused(*run(argv, capsys), words)
    assert list(tmp_path.iterdir()) == []  # a refused lab name wrote nothing


def test_forced_command_refuses_malformed_quoting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", 'hafs service fence "')
    code, err = run(["service", "ssh-command", "--peer", "n2"], capsys)
    assert_refused(code, err, "peer n2: refused: 'hafs service fence \"': No closing quotation")


# --- one exit-code convention: 1 the checked thing is not healthy, 2 bad usage or input ---


def test_service_status_without_the_daemon_is_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(daemon, "STATUS_FILE", tmp_path / "replication.json")
    assert_refused(*run(["service", "status"], capsys), "is `hafs service run` running?", (1,))


def test_agent_status_without_the_agent_is_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["status", "--socket", str(tmp_path / "agent.sock")], capsys)
    assert_refused(code, err, "agent.sock", (1,))


def test_lab_unknown_node_is_bad_usage(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "state.json").write_text(json.dumps({"name": "t", "nodes": {"n1": {}}}))
    monkeypatch.setattr(lab_cli, "ClusterLab", functools.partial(ClusterLab, root=tmp_path))
    monkeypatch.setattr("os.geteuid", lambda: 0)
    code, err = run(["lab", "kill", "--name", "t", "NONODE"], capsys)
    assert_refused(code, err, "lab t: no node 'NONODE': choose one of n1, client")
