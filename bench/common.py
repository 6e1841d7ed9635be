"""What the benchmarks share: the labs' prefix, stock ucarp per vhid, lab queries, statistics,
the table.

The CARP benchmarks build their labs with :class:`tests.lab.carp_bed.CarpBed`; run them from
the repository root as modules (``python -m bench.failover``), as root. Every benchmark that
makes namespaces names them with ``--prefix`` (default: a fresh one per run, a base and 4
random hex digits, as :func:`hafs.lab.netns.new_prefix` makes), so two runs can coexist; its
labs, one after another, all use it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hafs.cli import Parser
from hafs.errors import HafsError
from hafs.lab.netns import Netns, check_prefix, new_prefix
from tests.lab.carp_bed import DOWN_SCRIPT, UP_SCRIPT, CarpBed, Peer

PROBE = Path(__file__).with_name("probe.py")
PASSPHRASE = "testok"


def bench_parser(description: str, prefix_base: str, **options: Any) -> argparse.ArgumentParser:
    """A benchmark's argument parser (errors in one line, as hafs's), with ``--prefix``."""
    made = Parser(description=description, **options)
    made.add_argument(
        "--prefix",
        type=lab_prefix,
        default=new_prefix(prefix_base),
        help=f"prefix of this run's namespaces (default: {prefix_base} and 4 random hex digits)",
    )
    return made


def lab_prefix(text: str) -> str:
    """``text`` if it is a valid lab prefix (the lab's own name check)."""
    try:
        check_prefix(text)
    except HafsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def start_ucarp(
    bed: CarpBed, peer: Peer, vhid: int, vip: str, advskew: int
) -> subprocess.Popen[bytes]:
    """One stock ucarp for one vhid, started like ``CarpBed.ucarp`` (preempt, ``-z``).

    ``CarpBed.ucarp`` keeps one process and one log per peer; a node running several vhids
    needs one ucarp each, all appending to the peer's ``<name>-ucarp.log``.
    """
    up, down = bed.tmp / "ucarp-up.sh", bed.tmp / "ucarp-down.sh"
    for path, text in ((up, UP_SCRIPT), (down, DOWN_SCRIPT)):
        if not path.exists():
            path.write_text(text)
            path.chmod(0o700)
    argv = [
        "ucarp",
        *("-i", "eth0", "-s", peer.address, "-v", str(vhid), "-p", PASSPHRASE, "-a", vip),
        *("-k", str(advskew), "-u", str(up), "-d", str(down), "-x", str(vhid), "-z", "-P"),
    ]
    with (bed.tmp / f"{peer.name}-ucarp.log").open("ab") as out:
        return bed.lab.popen(peer.node, argv, stdout=out, stderr=subprocess.STDOUT)


def probe_argv(*args: str) -> list[str]:
    """The command line of :mod:`bench.probe` (run by path: the child needs only ``hafs``)."""
    return [sys.executable, str(PROBE), *args]


def held_vips(node: Netns) -> set[str]:
    """The /32 addresses configured in ``node`` (what CARP installs), from one ``ip`` call."""
    held = set()
    for line in node.ip("-4", "-o", "addr", "show").splitlines():
        cidr = line.split()[3]
        if cidr.endswith("/32"):
            held.add(cidr.removesuffix("/32"))
    return held


def mac_of(node: Netns, ifname: str = "eth0") -> str:
    address: str = json.loads(node.ip("-j", "link", "show", ifname))[0]["address"]
    return address


def load_average() -> float:
    """The machine's 1-minute load average: how busy the other work on it was."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table, columns padded to their widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
