"""The agent's reload without root: the hand-off, its freshness, the control clients that wait
for the new image, the CLI. (The re-exec itself runs in tests/lab/test_reload.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from hafs.agentconf import AgentConfig, VhidEntry
from hafs.carp import control
from hafs.carp.agent import HANDOFF_ENV, Agent, Demotion, Handoff, take_handoff
from hafs.carp.commands import reload_agent
from hafs.cli import main
from hafs.holds import RESYNC_HOLD

CONFIG = AgentConfig(
    node="n1",
    interface="eth0",
    srcip=IPv4Address("10.0.0.1"),
    passphrase="testok",
    vhids=(VhidEntry(1, (IPv4Address("10.0.0.100"),), advskew=10),),
    event_command=(),
    start_demoted=True,
)


def handoff(written: float, stand_in: int | None = None) -> Handoff:
    demotion = Demotion(operator=5)
    demotion.hold("drain", 240, "operator")
    vhids = {
        "1@eth0": {
            "state": "MASTER",
            "since": 12.5,
            "reason": "master timed out",
            "vip_ifname": "eth0",
            "addresses": ["10.0.0.100"],
        }
    }
    return Handoff(written, stand_in, demotion.as_dict(), vhids)


def test_a_handoff_survives_its_text_and_leaves_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = handoff(100.0, 4242)
    monkeypatch.setenv(HANDOFF_ENV, sent.dumps())
    assert take_handoff() == sent
    assert HANDOFF_ENV not in os.environ  # hooks and a later exec do not see it
    assert take_handoff() is None  # a start that is not a reload


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        '{"written": 1, "stand_in": "x", "demotion": {}, "vhids": {}}',
        handoff(1.0).dumps().replace('"MASTER"', '"LEADER"'),
        handoff(1.0).dumps().replace('"MASTER"', '"INIT"'),
        handoff(1.0).dumps().replace('"operator": 5', '"operator": "five"'),
    ],
)
def test_an_unreadable_handoff_is_ignored(
    text: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(HANDOFF_ENV, text)
    assert take_handoff() is None
    assert "the hand-off is unreadable" in caplog.text
    assert HANDOFF_ENV not in os.environ


def test_a_reloaded_agent_keeps_the_holds_and_raises_no_resync_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(HANDOFF_ENV, handoff(time.monotonic()).dumps())
    agent = Agent(CONFIG)
    assert agent.demotion.holds == {"drain": 240}
    assert agent.demotion.operator == 5
    assert agent.demotion.causes == {"drain": "operator"}  # and no resync hold


def test_a_start_that_is_not_a_reload_holds_as_before() -> None:
    assert RESYNC_HOLD in Agent(CONFIG).demotion.holds


def test_a_handoff_is_fresh_while_its_stand_in_runs_else_for_a_master_down() -> None:
    now = time.monotonic()
    assert handoff(now - 1).fresh(3.0)
    assert not handoff(now - 4).fresh(3.0)
    stand_in = subprocess.Popen(["sleep", "30"])
    try:
        assert handoff(now - 40, stand_in.pid).fresh(3.0)  # still advertising
    finally:
        stand_in.kill()
        stand_in.wait()
    assert not handoff(now - 40, stand_in.pid).fresh(3.0)  # gone (and reaped)


def serve_later(
    path: str, delay: float, reply: dict[str, object] | None = None
) -> threading.Thread:
    """Answer one request on ``path`` after ``delay`` seconds (the new image's socket)."""

    def run() -> None:
        time.sleep(delay)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(path)
            server.listen()
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                answer = reply or {"ok": True, "pid": 7}
                conn.sendall(json.dumps(answer).encode() + b"\n")

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_client_waits_for_the_agent_while_it_reloads(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")
    control.reload_marker(path).write_text("1\n")
    thread = serve_later(path, 0.3)
    began = time.monotonic()
    assert control.request(path, {"op": "status"}) == {"ok": True, "pid": 7}
    assert time.monotonic() - began >= 0.3
    thread.join()


def test_without_a_fresh_marker_a_silent_agent_is_an_error_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "agent.sock")
    with pytest.raises(control.ControlError, match="no agent socket at"):
        control.request(path, {"op": "status"})
    marker = control.reload_marker(path)
    marker.write_text("1\n")
    stale = time.time() - control.RELOAD_SECONDS - 1
    os.utime(marker, (stale, stale))  # a reload that never finished
    with pytest.raises(control.ControlError, match="no agent socket at"):
        control.request(path, {"op": "status"})


def test_reload_and_cleanup_together_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        'node = "n1"\ninterface = "eth0"\npass = "testok"\n'
        '[[vhid]]\nvhid = 1\naddresses = ["10.0.0.100"]\n'
    )
    config.chmod(0o600)
    assert main(["agent", "--config", str(config), "--reload", "--cleanup"]) == 2
    assert "--reload, --cleanup: give one of them" in capsys.readouterr().err


def test_a_stale_handoff_starts_as_at_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Older than a master-down and no stand-in: a backup may have taken over meanwhile."""
    monkeypatch.setenv(HANDOFF_ENV, handoff(time.monotonic() - 4).dumps())
    agent = Agent(CONFIG)  # master-down 3 + 10/256 s
    assert set(agent.demotion.holds) == {RESYNC_HOLD}  # the holds of a fresh start


def test_an_agent_that_predates_reloads_is_not_sent_sighup(tmp_path: Path) -> None:
    """An older agent has no SIGHUP handler: the signal would kill it (a failover)."""
    path = str(tmp_path / "agent.sock")
    old = {"ok": True, "pid": 999_999_999, "started": 1.0, "vhids": []}  # no "reloadable"
    thread = serve_later(path, 0.0, old)
    control.reload_marker(path).write_text("1\n")  # (so the client waits for the server)
    with pytest.raises(control.ControlError, match=r"predates reloads .* restart it once"):
        reload_agent(replace(CONFIG, control_socket=path))
    thread.join()
