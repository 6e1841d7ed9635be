"""The agent's moves (`hafs move`): one vhid re-ranked at run time over the control socket,
said at once on the wire, shown by `hafs status`, and kept across a restart."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from hafs.carp import control
from hafs.carp.agent import Agent
from hafs.carp.commands import format_status
from hafs.carp.machine import VhidConfig, VrrpConfig
from tests.unit.test_agent_holds import make_bed


def skew(config: VhidConfig | VrrpConfig) -> int:
    assert isinstance(config, VhidConfig)
    return config.advskew


MOVE = {"op": "move", "vhid": 1, "to": "n2", "value": 30, "cause": "moved; `hafs move` back"}


def test_a_move_is_advertised_at_once_shown_and_kept_across_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "lib" / "agent-state.json"
    bed = make_bed(start_demoted=False, state_file=str(state))
    bed.become_master()
    assert bed.sent[-1] == 10
    assert control.answer(bed.agent, MOVE) == {
        "ok": True, "moved": {"to": "n2", "value": 30, "cause": "moved; `hafs move` back"},
    }  # fmt: skip
    assert bed.sent[-1] == 30  # the master re-advertises its new rank at once
    status = bed.agent.status()
    assert status["vhids"][0]["advskew"] == 30
    assert status["vhids"][0]["moved"]["configured"] == 10
    assert "vhid 1: moved to n2 (advskew 30, configured 10): moved; `hafs move` back" in (
        format_status({**status, "pid": 1})
    )
    bed.agent.loop.close()

    again = Agent(bed.agent.config)  # a restart: the move is read back before any advert
    assert skew(again.vhids[("eth0", 1)].machine.config) == 30
    assert again.moves[1]["to"] == "n2"

    bed = make_bed(start_demoted=False, state_file=str(state))
    bed.become_master()
    assert control.answer(bed.agent, {"op": "move", "vhid": 1}) == {"ok": True, "moved": None}
    assert bed.sent[-1] == 10  # back at its configured rank
    assert json.loads(state.read_text()) == {"moved": {}}
    bed.agent.loop.close()


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({**MOVE, "vhid": 9}, "vhid 9: not configured here"),
        ({**MOVE, "vhid": "1"}, "vhid: must be an integer, got '1'"),
        ({**MOVE, "value": 300}, "advskew: must be 0..254, got 300"),
        ({**MOVE, "value": None}, "value: must be an integer, got None"),
        ({**MOVE, "to": ""}, "to: must be a node's name, got ''"),
    ],
)
def test_a_bad_move_is_refused_and_changes_nothing(request_: dict[str, object], error: str) -> None:
    bed = make_bed(start_demoted=False)
    assert control.answer(bed.agent, request_) == {"ok": False, "error": error}
    assert skew(bed.vhid.machine.config) == 10 and bed.agent.moves == {}
    bed.agent.loop.close()


def test_a_move_that_cannot_be_kept_is_not_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    bed = make_bed(start_demoted=False, state_file=str(tmp_path / "file" / "state.json"))
    answer = control.answer(bed.agent, MOVE)
    assert answer["ok"] is False and answer["error"].startswith("not kept (")
    assert skew(bed.vhid.machine.config) == 10 and bed.agent.moves == {}
    bed.agent.loop.close()


def test_an_unreadable_state_starts_at_the_configured_ranks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "agent-state.json"
    for text in ("not json", json.dumps({"moved": {"1": {"to": "n2", "value": 999}}})):
        state.write_text(text)
        with caplog.at_level(logging.ERROR):
            bed = make_bed(start_demoted=False, state_file=str(state))
        assert skew(bed.vhid.machine.config) == 10 and bed.agent.moves == {}
        bed.agent.loop.close()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2
