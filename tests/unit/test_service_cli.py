"""`hafs service ssh-command`: what a peer's forced command lets through."""

from __future__ import annotations

import pytest

from hafs.cli import main


@pytest.mark.parametrize(
    "requested",
    [
        "",
        "sh -c 'rm -rf /'",
        "/usr/local/bin/hafs agent --cleanup",
        "hafs service run",
        "hafs service ssh-command --peer x",
        "hafs lab down",
    ],
)
def test_refuses_everything_but_peer_operations(
    requested: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", requested)
    assert main(["service", "ssh-command", "--peer", "n2"]) == 2
    assert "peer n2: refused" in capsys.readouterr().err


def test_passes_a_peer_operation_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "/usr/local/bin/hafs service snapshots vip1")
    monkeypatch.setenv("HAFS_CLUSTER_CONFIG", "/nonexistent/cluster.json")
    # dispatched to `hafs service snapshots vip1`, which reports the missing config in one line
    assert main(["service", "ssh-command", "--peer", "n2"]) == 2
    assert "cluster config /nonexistent/cluster.json" in capsys.readouterr().err
