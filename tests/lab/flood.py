"""Send a flood of malformed and wrong CARP packets with scapy (run inside a lab namespace).

``python -m tests.lab.flood SRC OWN VIP COUNT``: COUNT rounds of seven frames on eth0, each
dropped by a receiver for a different reason. OWN is the receiver's own address.
"""

from __future__ import annotations

import sys
from ipaddress import IPv4Address
from typing import Any

from hafs.carp.wire import encode, internet_checksum, make_key

REASONS = (
    "bad ttl",
    "too short",
    "bad checksum",
    "bad version",
    "unknown vhid",
    "bad digest",
    "sent by us",
)


def frames(src: str, own: str, vip: IPv4Address) -> list[Any]:
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    key = make_key("testok")
    good = encode(1, 0, 1, 7, key, [vip])
    version3 = bytes([0x31]) + good[1:6] + bytes(2) + good[8:]
    bad_version = version3[:6] + internet_checksum(version3).to_bytes(2, "big") + version3[8:]
    bad_checksum = good[:6] + bytes([good[6] ^ 0xFF, good[7]]) + good[8:]
    worse = encode(1, 200, 1, 7, key, [vip])  # valid, never wins: only its source is wrong

    def carp(payload: bytes, ttl: int = 255, source: str = src) -> Any:
        ip = IP(src=source, dst="224.0.0.18", ttl=ttl, proto=112)
        return Ether(dst="01:00:5e:00:00:12") / ip / Raw(payload)

    return [
        carp(good, ttl=254),
        carp(good[:20]),
        carp(bad_checksum),
        carp(bad_version),
        carp(encode(9, 0, 1, 7, key, [vip])),
        carp(encode(1, 0, 1, 7, make_key("other"), [vip])),
        carp(worse, source=own),
    ]


def main() -> None:
    from scapy.sendrecv import sendp

    src, own, vip, count = sys.argv[1], sys.argv[2], IPv4Address(sys.argv[3]), int(sys.argv[4])
    sendp(frames(src, own, vip) * count, iface="eth0", verbose=False, inter=0.0005)


if __name__ == "__main__":
    main()
