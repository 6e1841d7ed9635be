"""What the fault tests (tests/lab/test_faults.py) and the fault suite (bench/faults.py) judge
by: the names the client sees in a VIP's share, and those kept aside on the nodes."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.lab.test_service import REPO, ServiceLab


def served(s: ServiceLab, vhid: int) -> set[str]:
    argv = s.probe("list", vhid, "/")
    return set(
        subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    )


def kept_aside(s: ServiceLab, vhid: int) -> set[str]:
    """File names in every kept-aside copy of the VIP, on every running node."""
    name, share = s.cluster.vip(vhid).name, s.cluster.vip(vhid).shares[0].name
    names: set[str] = set()
    for node in s.lab.state["nodes"]:
        listed = s.lab.run(
            node,
            [sys.executable, "-m", "hafs", "service", "diverged", "list", "--json"],
            check=False,
        )
        for copy in json.loads(listed or "[]"):
            if copy["vip"] == name:
                ls = s.lab.run(node, ["ls", f"{copy['mountpoint']}/shares/{share}"], check=False)
                names |= set(ls.split())
    return names
