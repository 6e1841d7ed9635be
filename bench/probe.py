"""Wire probes for the CARP benchmarks; run inside a lab namespace (``ip netns exec NS ...``).

``ping``: a client that sends an ICMP echo to each VIP every ``--interval`` s (raw socket, so
the kernel's ARP cache behaves like any client's) and watches the wire with an AF_PACKET
socket, which shows the source MAC of every reply:

- once every VIP has answered at least once and an advert from ``--watch`` passes, print
  ``advert <t>``: the moment the benchmark kills that master, right after its last advert;
- then print ``reply <vip> <t> <mac>`` for the first echo reply to each VIP from a MAC other
  than ``--ignore-mac`` (the dying master's), or ``timeout <vip>`` after ``--timeout`` s.

``<t>`` is ``time.monotonic()``: CLOCK_MONOTONIC is one clock for every namespace of a machine,
so the benchmark subtracts it from its own kill time.

``adverts``: capture every CARP advert for ``--seconds`` s with kernel receive timestamps and
print one JSON object: per-stream (source, vhid) intervals against ``advbase + advskew/256``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import socket
import struct
import sys
import time
from collections import defaultdict
from ipaddress import IPv4Address

from hafs.carp.wire import Rejected, decode_ipv4, internet_checksum

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SOL_RAW = 255
ICMP_FILTER = 1  # linux/icmp.h: a bit set for a type drops it from the raw socket
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
IPPROTO_CARP = 112
SO_TIMESTAMPNS = 35  # asm-generic/socket.h; the control message type is the same number
SO_RCVBUFFORCE = 33  # asm-generic/socket.h; not in the socket module
RCVBUF = 4 << 20  # one advert round of 255 vhids arrives as a burst
ADVERT_WAIT = 10.0  # seconds to see a reply from every VIP and an advert from --watch


def packet_socket(ifname: str) -> socket.socket:
    """Every IPv4 packet on ``ifname`` (both directions), without its Ethernet header."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    sock.bind((ifname, ETH_P_IP))
    sock.setblocking(False)
    return sock


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    payload = b"hafs-bench-probe"
    checksum = internet_checksum(header + payload)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum, ident, seq) + payload


def say(line: str) -> None:
    print(line, flush=True)


def ping(args: argparse.Namespace) -> int:
    vips = {IPv4Address(v) for v in args.vip}
    watch = IPv4Address(args.watch)
    ignore = bytes.fromhex(args.ignore_mac.replace(":", ""))
    ident = os.getpid() & 0xFFFF
    icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    icmp.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF))  # we read the tap
    icmp.setblocking(False)
    tap = packet_socket(args.interface)
    heard: set[IPv4Address] = set()
    answered: set[IPv4Address] = set()
    advert_at: float | None = None
    deadline = time.monotonic() + ADVERT_WAIT
    next_send = time.monotonic()
    seq = 0
    while time.monotonic() < deadline and answered != vips:
        now = time.monotonic()
        if now >= next_send:
            seq = (seq + 1) & 0xFFFF
            for vip in vips - answered:
                with contextlib.suppress(OSError):  # EHOSTUNREACH until ARP resolves
                    icmp.sendto(echo_request(ident, seq), (str(vip), 0))
            next_send = max(next_send + args.interval, now)
        select.select([tap], [], [], max(0.0, next_send - time.monotonic()))
        while True:
            try:
                packet, (_, _, pkttype, _, mac) = tap.recvfrom(2048)
            except BlockingIOError:
                break
            at = time.monotonic()
            if pkttype == PACKET_OUTGOING or len(packet) < 20:
                continue
            source, proto, ihl = IPv4Address(packet[12:16]), packet[9], (packet[0] & 0x0F) * 4
            if proto == socket.IPPROTO_ICMP and source in vips:
                kind, _, _, reply_ident = struct.unpack_from("!BBHH", packet, ihl)
                if kind != ICMP_ECHO_REPLY or reply_ident != ident:
                    continue
                heard.add(source)
                if advert_at is not None and mac != ignore and source not in answered:
                    answered.add(source)
                    say(f"reply {source} {at:.6f} {mac.hex(':')}")
            elif proto == IPPROTO_CARP and source == watch and advert_at is None and heard == vips:
                advert_at = at
                deadline = at + args.timeout
                say(f"advert {at:.6f}")
    if advert_at is None:
        say(f"error: no reply from {sorted(map(str, vips - heard))} or no advert from {watch}")
        return 1
    for vip in sorted(vips - answered):
        say(f"timeout {vip}")
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def kernel_time(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time of a packet (CLOCK_REALTIME: fine for intervals)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", data[:16])
            return float(sec + nsec / 1e9)
    return time.time()


def adverts(args: argparse.Namespace) -> int:
    tap = packet_socket(args.interface)
    tap.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    seen: defaultdict[tuple[IPv4Address, int], list[tuple[float, float]]] = defaultdict(list)
    end = time.monotonic() + args.seconds
    while (left := end - time.monotonic()) > 0:
        select.select([tap], [], [], left)
        while True:
            try:
                packet, ancillary, _, (_, _, pkttype, _, _) = tap.recvmsg(2048, 64)
            except BlockingIOError:
                break
            decoded = decode_ipv4(packet)
            if pkttype == PACKET_OUTGOING or isinstance(decoded, Rejected):
                continue
            source, _, advert = decoded
            period = advert.advbase + advert.advskew / 256
            seen[(source, advert.vhid)].append((kernel_time(ancillary), period))
    deviations: list[float] = []
    for stream in seen.values():
        for (before, period), (after, _) in itertools.pairwise(stream):
            deviations.append(abs(after - before - period))
    result: dict[str, object] = {
        "adverts": sum(len(s) for s in seen.values()),
        "streams": len(seen),
        "intervals": len(deviations),
    }
    if deviations:
        result |= {
            "dev_p50_ms": percentile(deviations, 0.5) * 1e3,
            "dev_p99_ms": percentile(deviations, 0.99) * 1e3,
            "dev_max_ms": max(deviations) * 1e3,
        }
    say(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--interface", default="eth0")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("ping", help="time the first reply to each VIP from a new holder")
    p.add_argument("--vip", action="append", required=True)
    p.add_argument("--watch", required=True, help="the master's address: sync on its advert")
    p.add_argument("--ignore-mac", required=True, help="the dying master's MAC")
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=ping)
    a = commands.add_parser("adverts", help="advert interval accuracy, as JSON")
    a.add_argument("--seconds", type=float, default=60.0)
    a.set_defaults(func=adverts)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
