"""The VRRPv3 advertisement for IPv4 (RFC 5798), byte for byte as keepalived and FreeBSD 14.1+'s
carp (``carpver 3``) speak it.

Sans-IO like :mod:`hafs.carp.wire`, whose IP layer, checksum and ``Rejected``/``Drop`` it
shares: VRRPv3 rides the same IP protocol (112), TTL (255) and group (224.0.0.18) as CARP, so
one raw socket carries either, and the agent drops a packet of the wrong kind as "bad version".

Rules:

1. Parsing never raises: ``decode`` and ``decode_ipv4`` return a value or a ``Rejected``.
2. Parsing checks what RFC 5798 section 7.1 says a receiver MUST check and what needs no
   configuration: version 3, type 1 (section 5.2.2: unknown types are discarded), the whole
   address list present, the checksum. A zero interval is refused too: a backup that learned
   it would declare the master dead at once. The VRID ("vhid", as FreeBSD names both) and
   "sent by us" need configuration, so the agent checks them, as it does for CARP.
3. The checksum covers an IPv4 pseudo-header (source, destination, zero, protocol 112, VRRP
   length) before the VRRP message, section 5.2.8; keepalived sums the same ``ipv4_phdr``.
   Unlike CARP's, it therefore depends on the source address: ``encode`` takes it. And on the
   destination: an advert sent by unicast to each peer (keepalived's ``unicast_peer``,
   FreeBSD's ``peer``) has a checksum of its own per peer (``readdress``).
4. There is no authentication (RFC 5798 removed it), hence no key, pass or counter.
5. The interval is carried in centiseconds, 12 bits (1..4095, 0.01..40.95 s); the 4 bits above
   it are reserved, sent as zero and ignored on receipt.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from hafs.carp.wire import (
    CARP_GROUP_V4,
    CARP_PROTO,
    Drop,
    Rejected,
    check_range,
    internet_checksum,
    ipv4_payload,
)

VRRP_VERSION = 3
VRRP_ADVERTISEMENT = 1
HEADER_LEN = 8  # without the addresses
PRIORITY_OWNER = 255  # the address owner: master at once, never preempted
PRIORITY_BOWOUT = 0  # a master that stops: backups take over after their skew time
MAX_INTERVAL = 0x0FFF  # centiseconds
MAX_ADDRESSES = 255

# version<<4|type, vrid, priority, count, reserved<<12|interval, checksum
_HEADER = struct.Struct("!BBBBHH")
_PSEUDO = struct.Struct("!4s4sBBH")


@dataclass(frozen=True)
class VrrpAdvert:
    """A VRRPv3 advertisement whose version, type, length and checksum were right."""

    vhid: int  # the VRID
    priority: int
    interval: int  # Max Advertise Interval, centiseconds
    addresses: tuple[IPv4Address, ...]


def _checksum(src: IPv4Address, dst: IPv4Address, message: bytes) -> int:
    pseudo = _PSEUDO.pack(src.packed, dst.packed, 0, CARP_PROTO, len(message))
    return internet_checksum(pseudo + message)


def encode(
    vhid: int,
    priority: int,
    interval: int,
    addresses: Sequence[IPv4Address],
    src: IPv4Address,
    dst: IPv4Address = CARP_GROUP_V4,
) -> bytes:
    """The VRRPv3 message (header and addresses) with its checksum for ``src`` -> ``dst``.

    ``interval`` is in centiseconds; ``priority`` is what goes on the wire (0 bows out).
    """
    check_range("vhid", vhid, 1, 255)
    check_range("priority", priority, 0, 255)
    check_range("interval", interval, 1, MAX_INTERVAL)
    check_range("addresses", len(addresses), 1, MAX_ADDRESSES)
    for address in addresses:
        if not isinstance(address, IPv4Address):
            raise TypeError(f"addresses: {address!r} is not an IPv4Address")
    fields = (VRRP_VERSION << 4 | VRRP_ADVERTISEMENT, vhid, priority, len(addresses), interval)
    body = b"".join(a.packed for a in addresses)
    message = _HEADER.pack(*fields, 0) + body
    return _HEADER.pack(*fields, _checksum(src, dst, message)) + body


def readdress(message: bytes, src: IPv4Address, dst: IPv4Address) -> bytes:
    """``message`` (from :func:`encode`) with its checksum for ``src`` -> ``dst``: the same
    advert, sent to a unicast peer instead of the group (rule 3)."""
    body = message[:6] + b"\0\0" + message[HEADER_LEN:]
    return message[:6] + _checksum(src, dst, body).to_bytes(2, "big") + message[HEADER_LEN:]


def decode(message: bytes, src: IPv4Address, dst: IPv4Address) -> VrrpAdvert | Rejected:
    """Parse the VRRP message that ``src`` sent to ``dst`` (rule 2)."""
    if len(message) < HEADER_LEN:
        return Rejected(Drop.SHORT, f"{len(message)} bytes, a VRRP header needs {HEADER_LEN}")
    vt, vhid, priority, count, interval, _sum = _HEADER.unpack_from(message)
    if vt >> 4 != VRRP_VERSION:
        return Rejected(Drop.VERSION, f"version {vt >> 4}")
    if vt & 0x0F != VRRP_ADVERTISEMENT:
        return Rejected(Drop.TYPE, f"type {vt & 0x0F}")
    length = HEADER_LEN + 4 * count
    if len(message) < length:
        return Rejected(Drop.SHORT, f"{len(message)} bytes, {count} address(es) need {length}")
    message = bytes(message[:length])
    if _checksum(src, dst, message) != 0:
        return Rejected(Drop.CHECKSUM, f"checksum field 0x{_sum:04x}")
    if interval & MAX_INTERVAL == 0:
        return Rejected(Drop.INTERVAL, "max advertise interval 0")
    addresses = tuple(IPv4Address(message[at : at + 4]) for at in range(HEADER_LEN, length, 4))
    return VrrpAdvert(vhid, priority, interval & MAX_INTERVAL, addresses)


def decode_ipv4(packet: bytes) -> tuple[IPv4Address, IPv4Address, VrrpAdvert] | Rejected:
    """Parse a whole IPv4 packet as a raw socket returns it: source, destination (the group
    is ``CARP_GROUP_V4`` itself) and advert."""
    parts = ipv4_payload(packet, HEADER_LEN)
    if isinstance(parts, Rejected):
        return parts
    src, dst, message = parts
    advert = decode(message, src, dst)
    if isinstance(advert, Rejected):
        return advert
    return src, dst, advert
