"""What the daemons tell systemd: readiness, and the watchdog both feed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hafs import systemd


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """systemd's end of NOTIFY_SOCKET."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield server


def test_notify_sends_to_systemd(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    systemd.notify("READY=1")
    systemd.notify("WATCHDOG=1")
    assert notify_socket.recv(100) == b"READY=1"
    assert notify_socket.recv(100) == b"WATCHDOG=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    systemd.notify("READY=1")  # not under systemd: nothing, no error


@pytest.mark.parametrize(
    ("usec", "pid", "every"),
    [
        ("30000000", None, 15.0),  # half of WatchdogSec, as sd_watchdog_enabled(3) advises
        ("30000000", "own", 15.0),
        ("30000000", "1", None),  # systemd watches another process: inherited, not ours
        ("0", None, None),
        ("", None, None),
        ("30s", None, None),
        (None, None, None),
    ],
)
def test_the_watchdog_interval_is_half_of_what_systemd_gives_this_process(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, every: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "own" else value)
    assert systemd.watchdog_every() == every


def test_the_watchdog_is_fed_at_its_interval_for_as_long_as_the_process_runs(
    notify_socket: socket.socket,
) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise SystemExit  # stands for the process's end: nothing else ends the feeding

    with pytest.raises(SystemExit):
        systemd.feed_watchdog(15.0, sleep)
    assert slept == [15.0, 15.0, 15.0]
    assert [notify_socket.recv(100) for _ in range(3)] == [b"WATCHDOG=1"] * 3
