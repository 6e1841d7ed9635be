"""What the fault tests (tests/lab/test_faults.py) and the fault suite (bench/faults.py) judge
by: the names the client sees in a VIP's share, and those kept aside on the nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.lab.test_service import REPO, ServiceLab


def served(s: ServiceLab, vhid: int) -> set[str]:
    argv = s.probe("list", vhid, "/")
    return set(
        subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    )


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
