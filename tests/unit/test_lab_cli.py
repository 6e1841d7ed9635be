"""`hafs lab status` as text: nodes, VIPs and the kept-aside copies of diverged data."""

from __future__ import annotations

from typing import Any

from hafs.lab.cli import format_status


def node(name: str, vips: list[str], diverged: list[str]) -> dict[str, Any]:
    return {
        "name": name, "os": "freebsd", "carp": "hafs", "interface": "em0",
        "address": "172.21.0.201", "link": "up", "daemons": {"anchor": True, "agent": True},
        "vips": vips, "diverged": diverged,
    }  # fmt: skip


def test_kept_aside_copies_are_named_with_their_node() -> None:
    status = {
        "name": "hafs", "inventory": "inventory.py", "client": {"address": "172.21.15.254"},
        "nodes": [node("n1", ["vip1"], []), node("n2", [], ["vip1-diverged-20261205T1815Z"])],
        "vips": [{"vhid": 1, "vip": "172.21.0.211", "name": "vip1", "home": "n1",
                  "holders": ["n1"]}],
    }  # fmt: skip

    text = format_status(status)

    assert text.splitlines()[-1] == (
        "KEPT ASIDE on n2: vip1-diverged-20261205T1815Z (diverged data found only there; "
        "`hafs service diverged show vip1-diverged-20261205T1815Z` on that node)"
    )
    assert "KEPT ASIDE on n1" not in text
