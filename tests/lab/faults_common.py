"""What the fault tests (tests/lab/test_faults.py) and the fault suite (bench/faults.py) judge
by: the names the client sees in a VIP's share, and those kept aside on the nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from tests.lab.test_service import REPO, ServiceLab

LIST_TRIES, LIST_PAUSE = 4, 5.0  # a VIP that just moved home may not serve yet (loaded CI)


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
