"""What this node's kernel says: is a VIP held here, which processes run, who talks to :445.

Linux answers from ``/proc`` and ``ip``. FreeBSD has no ``/proc`` by default and keeps a CARP
address configured on master and backups alike, so there ``ifconfig`` (the vhid's CARP state),
``ps`` and ``sockstat`` answer. The parsers are pure functions of a command's output, tested
with captured output of both systems; the callers run the commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

FREEBSD = sys.platform.startswith("freebsd")
SMB_PORT = 445
IP_ADDR_ARGV = ["ip", "-4", "-o", "addr", "show"]
IFCONFIG_ARGV = ["ifconfig", "-a"]
PS_ARGV = ["ps", "-axww", "-o", "pid=", "-o", "args="]  # -ww: never cut the arguments
_CARP_LINE = re.compile(r"\s*carp: (?P<state>\w+) vhid (?P<vhid>\d+)\b")
_INET_LINE = re.compile(r"\s*inet (?P<address>[\d.]+) .*\bvhid (?P<vhid>\d+)\b")


def _output(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=False).stdout


# --- the VIP -----------------------------------------------------------------------------------


def ip_addr_holds(output: str, address: IPv4Address) -> bool:
    """Linux, ``ip -4 -o addr show``: the agent adds the VIP to the master alone."""
    return any(word.split("/")[0] == str(address) for word in output.split())


def ifconfig_holds(output: str, address: IPv4Address, vhid: int) -> bool:
    """FreeBSD, ``ifconfig -a``: the address is configured with ``vhid`` on an interface where
    that vhid is MASTER (backups have the same address, in state BACKUP)."""
    for block in re.split(r"\n(?=\S)", output):  # one block per interface
        lines = block.splitlines()
        has_address = any(
            (m := _INET_LINE.match(line))
            and m["address"] == str(address)
            and int(m["vhid"]) == vhid
            for line in lines
        )
        master = any(
            (m := _CARP_LINE.match(line)) and m["state"] == "MASTER" and int(m["vhid"]) == vhid
            for line in lines
        )
        if has_address and master:
            return True
    return False


def holds(address: IPv4Address, vhid: int) -> bool:
    """Is this node the VIP's CARP master, with the address in place?"""
    return bool(holding([(address, vhid)]))


def holding(vips: Sequence[tuple[IPv4Address, int]]) -> list[tuple[IPv4Address, int]]:
    """The VIPs (address, vhid) of ``vips`` this node is the CARP master of, with the address
    in place: one ``ip`` (``ifconfig``) for all of them."""
    if FREEBSD:
        output = _output(IFCONFIG_ARGV)
        return [(address, vhid) for address, vhid in vips if ifconfig_holds(output, address, vhid)]
    output = _output(IP_ADDR_ARGV)
    return [(address, vhid) for address, vhid in vips if ip_addr_holds(output, address)]


# --- processes ---------------------------------------------------------------------------------


def parse_ps(output: str) -> dict[int, list[str]]:
    """``ps -axww -o pid= -o args=``: pid -> arguments (split at blanks: no path here has one)."""
    table = {}
    for line in output.splitlines():
        pid, _, args = line.strip().partition(" ")
        if pid.isdigit() and args.strip():
            table[int(pid)] = args.split()
    return table


def processes() -> dict[int, list[str]]:
    """Every process of this node: pid -> argv.

    Linux: "of this node" means in this mount namespace. Lab nodes share one pid namespace
    and the same paths, so without that a node would see, and stop, the other nodes' instances.
    The namespace is looked at first (one stat): the service daemon asks every round, and a
    lab node's machine runs many more processes than the node.
    """
    if FREEBSD:
        return parse_ps(_output(PS_ARGV))
    here = os.stat("/proc/self/ns/mnt").st_ino
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/mnt").st_ino != here:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0]:  # kernel threads and zombies have no command line
            table[int(entry)] = [a.decode(errors="replace") for a in argv if a]
    return table


# --- SMB sockets -------------------------------------------------------------------------------


def _proc_net_tcp_end(address: IPv4Address, port: int) -> str:
    """address:port as ``/proc/net/tcp`` writes it: the address's bytes in host (little
    endian) order, then the port, both in hex."""
    return f"{int.from_bytes(address.packed, 'little'):08X}:{port:04X}"


def proc_net_tcp_listens(table: str, address: IPv4Address, port: int = SMB_PORT) -> bool:
    """Linux, ``/proc/net/tcp``: a socket listens on address:port (state 0A)."""
    wanted = _proc_net_tcp_end(address, port)
    return any(
        len(fields) > 3 and fields[1] == wanted and fields[3] == "0A"
        for fields in (line.split() for line in table.splitlines())
    )


def proc_net_tcp_clients(
    table: str, address: IPv4Address, port: int = SMB_PORT
) -> list[tuple[str, int]]:
    """Linux, ``/proc/net/tcp``: the far ends of the connections established (state 01) to
    address:port, each host and port."""
    wanted = _proc_net_tcp_end(address, port)
    clients = []
    for fields in (line.split() for line in table.splitlines()):
        if len(fields) > 3 and fields[1] == wanted and fields[3] == "01":
            host, _, far_port = fields[2].partition(":")
            far = IPv4Address(int(host, 16).to_bytes(4, "big")[::-1])
            clients.append((str(far), int(far_port, 16)))
    return clients


def sockstat_sockets(output: str, address: IPv4Address, port: int = SMB_PORT) -> list[str]:
    """FreeBSD, ``sockstat -4 -p 445``: the foreign ends of TCP sockets bound to address:port
    (``*:*`` for a listening one). Columns: USER COMMAND PID FD PROTO LOCAL FOREIGN [...]."""
    local = f"{address}:{port}"
    return [
        fields[6]
        for fields in (line.split() for line in output.splitlines())
        if len(fields) >= 7 and fields[4].startswith("tcp") and fields[5] == local
    ]


def listens(address: IPv4Address, port: int = SMB_PORT) -> bool:
    """Does a local socket listen on address:port? (Connecting would reach whoever holds it.)"""
    if FREEBSD:
        return "*:*" in sockstat_sockets(
            _output(["sockstat", "-4", "-l", "-p", str(port)]), address
        )
    try:
        return proc_net_tcp_listens(Path("/proc/net/tcp").read_text(), address, port)
    except OSError:
        return False


def smb_clients(address: IPv4Address) -> list[tuple[str, int]]:
    """The established SMB connections to ``address``: each client's host and port (read
    every round: Linux answers from ``/proc/net/tcp``, with no ``ss`` process)."""
    if FREEBSD:
        ends = sockstat_sockets(_output(["sockstat", "-4", "-c", "-p", str(SMB_PORT)]), address)
        clients = [end.rpartition(":") for end in ends]
        return [(host, int(port)) for host, _, port in clients if port.isdigit()]
    try:
        return proc_net_tcp_clients(Path("/proc/net/tcp").read_text(), address)
    except OSError:
        return []
