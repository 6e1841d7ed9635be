"""Tickle ACKs: the clients of the old holder reconnect at once instead of waiting on TCP.

The holder records its SMB clients in the dataset at every snapshot (so the list travels with
the data); the new holder sends each an ACK with sequence 0 from the VIP's port 445. A node
that steps down after losing the address (the loser of a split brain, whose clients the
winner never knew) tickles its own clients as it stops serving.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
from ipaddress import IPv4Address
from pathlib import Path

from hafs.service import host
from hafs.service.runtime import read_text

log = logging.getLogger("hafs.service")


def tickle_segment(src: IPv4Address, dst: IPv4Address, sport: int, dport: int) -> bytes:
    """A TCP ACK with sequence 0 from ``src:sport``: the client answers with an ACK, our
    kernel (which has no such connection) resets it, and the client reconnects at once."""
    header = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x10, 1234, 0, 0)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header))
    data = pseudo + header
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return header[:16] + struct.pack("!H", ~total & 0xFFFF) + header[18:]


def connections_file(mountpoint: Path) -> Path:
    return mountpoint / "samba" / "state" / "hafs-connections.json"


def record_connections(address: IPv4Address, mountpoint: Path) -> None:
    """Save the VIP's SMB clients (replicated with the data, read by the next holder). The
    same clients as saved: the file is not rewritten (a write, even of the same bytes, is a
    change to snapshot and send). A write that fails (the share full: EDQUOT) is logged and
    left: the snapshot and the sends that follow carry the clients' acknowledged files, and
    must not wait for room; the next holder tickles the clients recorded before."""
    clients = json.dumps([list(client) for client in host.smb_clients(address)])
    path = connections_file(mountpoint)
    if read_text(path) != clients:
        try:
            path.write_text(clients)
        except OSError as exc:
            log.warning("%s: its SMB clients not recorded: %s", address, exc)


def tickle(name: str, address: IPv4Address, mountpoint: Path) -> None:
    """Send tickle ACKs from ``address`` to the clients recorded in the dataset."""
    try:
        clients = json.loads(connections_file(mountpoint).read_text())
    except (OSError, ValueError):
        return
    if clients:
        send_tickles(address, [(client, int(port)) for client, port in clients])
        log.info("%s takeover: tickled %d client connection(s)", name, len(clients))


def send_tickles(address: IPv4Address, clients: list[tuple[str, int]]) -> None:
    """Tickle ACKs from ``address`` to ``clients``. The address need not be this node's any
    more (Linux: IP_FREEBIND): a node that lost a split brain tickles the clients it had, so
    they reach the winner now, not when they next send."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP) as sock:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        sock.bind((str(address), 0))
        for client, port in clients:
            segment = tickle_segment(address, IPv4Address(client), 445, port)
            for _ in range(2):
                with contextlib.suppress(OSError):
                    sock.sendto(segment, (client, 0))
