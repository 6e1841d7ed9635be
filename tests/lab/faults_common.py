"""What the fault tests (tests/lab/test_faults.py), the move test (tests/lab/test_move.py) and
the fault suite (bench/faults.py) judge by: a client writing to a VIP and what its server
acknowledged, the names the client sees in a VIP's share, and those kept aside on the nodes;
and when a node's service daemon is in the middle of a round (to hang its pool then)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.lab.test_service import REPO, ServiceLab

LIST_TRIES, LIST_PAUSE = 4, 5.0  # a VIP that just moved home may not serve yet (loaded CI)
WRITER_SECONDS = 3600  # the writer runs until it is stopped


def runs_zfs(pid: int) -> bool:
    """Whether the process (any of its threads) has a ``zfs`` command running: a service
    daemon's round, past its pool probe (``zpool``)."""
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{child}/comm").read_text().strip() == "zfs":
                            return True
    return False


def served(s: ServiceLab, vhid: int) -> set[str]:
    """The names in the VIP's share, over SMB; retried while it does not answer yet."""
    argv = s.probe("list", vhid, "/")
    for attempt in range(1, LIST_TRIES + 1):
        listed = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
        if listed.returncode == 0:
            return set(listed.stdout.split())
        if attempt < LIST_TRIES:
            time.sleep(LIST_PAUSE)
    raise AssertionError(f"vip{vhid}'s share not listed: {listed.stderr.strip()[-300:]}")


def copies(s: ServiceLab) -> dict[str, list[dict[str, Any]]]:
    """Every node's kept-aside copies (``hafs service diverged list --json``)."""
    found = {}
    for node in s.lab.state["nodes"]:
        listed = s.lab.run(
            node,
            [sys.executable, "-m", "hafs", "service", "diverged", "list", "--json"],
            check=False,
        )
        found[node] = json.loads(listed or "[]")
    return found


def kept_aside(s: ServiceLab, vhid: int) -> set[str]:
    """File names in every kept-aside copy of the VIP, on every running node."""
    name, share = s.cluster.vip(vhid).name, s.cluster.vip(vhid).shares[0].name
    names: set[str] = set()
    for node, kept in copies(s).items():
        for copy in kept:
            if copy["vip"] == name:
                ls = s.lab.run(node, ["ls", f"{copy['mountpoint']}/shares/{share}"], check=False)
                names |= set(ls.split())
    return names


@dataclass
class Writes:
    """What the writer's server acknowledged: {n: monotonic time}, when each of those writes
    began (its connect), and when the writer ran."""

    acked: dict[int, float]
    began: dict[int, float]
    started: float
    stopped: float = 0.0
    last: float = 0.0  # the newest acknowledgement


@contextmanager
def writer(s: ServiceLab, vhid: int, name: str, period: float = 0.2) -> Iterator[Writes]:
    """Write ``name.<n>`` to the VIP every ``period`` s until the block ends, recording each
    acknowledgement."""
    proc = subprocess.Popen(
        s.probe("writer", vhid, name, str(WRITER_SECONDS), str(period)),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    writes = Writes({}, {}, time.monotonic())

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            n, began, at = line.split()
            writes.began[int(n)] = float(began)
            writes.acked[int(n)] = writes.last = float(at)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        yield writes
    finally:
        proc.terminate()  # its pid is the writer's own: `ip netns exec` execs it
        proc.wait()
        reader.join()
        writes.stopped = time.monotonic()
