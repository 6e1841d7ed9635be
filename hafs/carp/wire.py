"""The CARP advertisement on the wire, byte for byte as FreeBSD's kernel and stock ucarp speak it.

Sans-IO: bytes in, typed values out; no sockets, no clock, no logging. CARP-SPEC.md is the
authority (sections 1-3); the names follow FreeBSD's ``ip_carp.c``.

Rules:

1. Parsing never raises. ``decode`` and ``decode_ipv4`` return either a value or a ``Rejected``
   naming the ``Drop`` reason, so a hostile or broken packet can never stop a receive loop.
2. Parsing checks only what FreeBSD checks (spec section 3): not the type nibble, authlen,
   reserved byte or TOS. The vhid, "is it one of ours" and digest checks need configuration,
   so the agent makes them (``verify`` for the digest) and counts them with the same ``Drop``.
3. Encoding refuses impossible input with ``ValueError`` naming the argument: that is a bug
   in the caller, never something a peer can trigger.
4. The digest is HMAC-SHA1 keyed with ``make_key(pass)`` over ``02 01 <vhid>``, the vhid's
   IPv4 addresses (sorted as integers, each once), its IPv6 addresses (link-local scope bytes
   zeroed, sorted bytewise, each once), then the 64-bit counter. Like FreeBSD's selection sort,
   which starts above 0 and below all-ones, the all-zeros and all-ones addresses are skipped.
   Stock ucarp hashes its single IPv4 address, which is the same bytes when the vhid has exactly
   one IPv4 address and nothing else; ``ucarp_refusal`` says when that does not hold.
5. Unicast (FreeBSD's ``peer``, keepalived's ``unicast_peer``): an advert may go to a peer's
   own address instead of 224.0.0.18. It is sent with TTL 255 as always, but only an advert to
   the group must arrive with TTL 255 (FreeBSD's ``carp_input_c`` checks the TTL only in
   multicast mode; keepalived checks none in unicast mode). Whether a vhid takes an advert sent
   to this node depends on its peers, which only the agent knows (``Drop.PEER``,
   ``Drop.DESTINATION``). Neither the digest nor CARP's checksum covers the IP destination, so
   a CARP advert is the same bytes to every peer (VRRPv3's checksum does cover it).
6. Everything in the digest but the counter is fixed by the vhid's configuration: ``Hmac``
   (FreeBSD's ``carp_hmac_prepare``) keys and feeds it once, and then signs or checks an
   advert by hashing its counter alone. The agent signs and checks one advert per vhid every
   advbase; ``encode``, ``compute_digest`` and ``verify`` build an ``Hmac`` per call.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

CARP_PROTO = 112
CARP_GROUP_V4 = IPv4Address("224.0.0.18")
CARP_GROUP_V6 = IPv6Address("ff02::12")
HEADER_LEN = 36
TTL = 255
BOWOUT_ADVBASE = 255
BOWOUT_ADVSKEW = 255
MAX_SKEW = 240

CARP_VERSION = 2
CARP_ADVERTISEMENT = 1
AUTHLEN = 7
KEY_LEN = 20
PASS_MAX = KEY_LEN - 1
COUNTER_MAX = (1 << 64) - 1
SHA1_BLOCK = 64  # bytes: HMAC pads its key to SHA-1's block

IPV4_HEADER_LEN = 20
IP_DF = 0x4000

# version<<4|type, vhid, advskew, authlen, reserved, advbase, checksum, counter hi, counter lo, md
_HEADER = struct.Struct("!BBBBBBHII20s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_GROUP = CARP_GROUP_V4.packed
_V4_SKIP = (0, (1 << 32) - 1)
_V6_SKIP = (bytes(16), b"\xff" * 16)

Address = IPv4Address | IPv6Address


@dataclass(frozen=True)
class Advert:
    """A CARP advertisement whose header checksum and version were right."""

    vhid: int
    advskew: int
    advbase: int
    counter: int
    digest: bytes
    version: int = CARP_VERSION
    type: int = CARP_ADVERTISEMENT


class Drop(enum.Enum):
    """Why a received packet is dropped; the value is the reason as operators read it."""

    SHORT = "too short"
    TTL = "bad ttl"
    CHECKSUM = "bad checksum"
    VERSION = "bad version"
    TYPE = "bad type"
    INTERVAL = "bad interval"
    VHID = "unknown vhid"
    OURS = "sent by us"
    DIGEST = "bad digest"
    NOT_CARP = "not carp"
    BAD_IP = "bad ip header"
    PEER = "not a peer"
    DESTINATION = "not to the group"


@dataclass(frozen=True)
class Rejected:
    """A packet that must be dropped, with the reason and a detail for the log."""

    reason: Drop
    detail: str = ""


def pass_bytes(passphrase: str | bytes) -> bytes:
    """The passphrase as C tools see it: UTF-8, with argv's undecodable bytes restored."""
    if isinstance(passphrase, str):
        return passphrase.encode("utf-8", "surrogateescape")
    return bytes(passphrase)


def make_key(passphrase: str | bytes) -> bytes:
    """The 20-byte HMAC key: the first 19 bytes of the (UTF-8) passphrase, zero padded."""
    return pass_bytes(passphrase)[:PASS_MAX].ljust(KEY_LEN, b"\0")


def ucarp_refusal(passphrase: str | bytes, addrs: Sequence[Address]) -> str | None:
    """Why stock ucarp 1.5.2 cannot take part in this vhid, or None if it can."""
    raw = pass_bytes(passphrase)
    if not raw:
        return "ucarp refuses an empty pass"
    if b"\0" in raw:
        return "ucarp cannot take a pass containing a NUL byte"
    if len(raw) > PASS_MAX:
        return f"ucarp refuses a pass of {PASS_MAX + 1} bytes or more (this one has {len(raw)})"
    if len(addrs) != 1 or not isinstance(addrs[0], IPv4Address):
        return f"ucarp hashes exactly one IPv4 address, this vhid has {_describe(addrs)}"
    if addrs[0] == IPv4Address(0):
        return "ucarp takes 0.0.0.0 as no address"
    return None


def _describe(addrs: Sequence[Address]) -> str:
    v4 = sum(isinstance(a, IPv4Address) for a in addrs)
    return f"{v4} IPv4 and {len(addrs) - v4} IPv6"


def check_range(name: str, value: int, low: int, high: int) -> None:
    """Raise ValueError naming ``name`` unless low <= value <= high."""
    if not low <= value <= high:
        raise ValueError(f"{name}: must be {low}..{high}, got {value}")


def _scope_zeroed(addr: IPv6Address) -> bytes:
    """FreeBSD's IN6_IS_SCOPE_EMBED addresses carry the zone in bytes 2-3: hash them zeroed."""
    raw = addr.packed
    link_local = raw[0] == 0xFE and raw[1] & 0xC0 == 0x80
    scoped_multicast = raw[0] == 0xFF and raw[1] & 0x0F in (0x01, 0x02)
    if link_local or scoped_multicast:
        return raw[:2] + b"\0\0" + raw[4:]
    return raw


def _auth_prefix(vhid: int, addrs: Sequence[Address]) -> bytes:
    v4 = sorted({int(a) for a in addrs if isinstance(a, IPv4Address)} - set(_V4_SKIP))
    v6 = sorted({_scope_zeroed(a) for a in addrs if isinstance(a, IPv6Address)} - set(_V6_SKIP))
    return (
        bytes((CARP_VERSION, CARP_ADVERTISEMENT, vhid))
        + b"".join(a.to_bytes(4, "big") for a in v4)
        + b"".join(v6)
    )


class Hmac:
    """The HMAC-SHA1 of one vhid with everything before the counter hashed in (rule 6).

    Built from what a vhid's configuration fixes (key, vhid, addresses); a configuration
    that changes is a new ``Hmac``, so one can never sign with stale addresses or key.
    As FreeBSD's ``carp_hmac_prepare`` and ``carp_hmac_generate`` do, it keeps HMAC's two
    SHA-1 states (RFC 2104): the inner one fed the key's ipad and the fixed prefix, the outer
    one the key's opad. A digest copies both, feeds the inner one the counter and the outer
    one the inner digest: C calls only (0.6 us per advert here), where ``hmac``'s copy,
    update and digest are Python methods around them (1.0 us).
    """

    __slots__ = ("_inner", "_outer", "vhid")

    def __init__(self, key: bytes, vhid: int, addrs: Sequence[Address]) -> None:
        if len(key) > SHA1_BLOCK:  # make_key's keys are 20 bytes; a longer one is hashed
            key = hashlib.sha1(key).digest()
        block = key.ljust(SHA1_BLOCK, b"\0")
        self.vhid = vhid
        self._inner = hashlib.sha1(bytes(b ^ 0x36 for b in block) + _auth_prefix(vhid, addrs))
        self._outer = hashlib.sha1(bytes(b ^ 0x5C for b in block))

    def digest(self, counter: int) -> bytes:
        """The 20-byte digest of an advert of this vhid carrying ``counter``."""
        inner = self._inner.copy()
        inner.update(counter.to_bytes(8, "big"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def header(self, advskew: int, advbase: int, counter: int) -> bytes:
        """The 36-byte CARP header of this vhid (``encode`` without its argument checks: the
        caller's values come from a checked configuration)."""
        fields = (CARP_VERSION << 4 | CARP_ADVERTISEMENT, self.vhid, advskew, AUTHLEN, 0, advbase)
        hi, lo, digest = counter >> 32, counter & 0xFFFFFFFF, self.digest(counter)
        header = _HEADER.pack(*fields, 0, hi, lo, digest)
        return _HEADER.pack(*fields, internet_checksum(header), hi, lo, digest)

    def verify(self, advert: Advert) -> bool:
        """Whether ``advert`` is of this vhid and its digest matches (constant-time compare)."""
        return advert.vhid == self.vhid and hmac.compare_digest(
            self.digest(advert.counter), advert.digest
        )


def compute_digest(key: bytes, vhid: int, addrs: Sequence[Address], counter: int) -> bytes:
    """The 20-byte HMAC-SHA1 that authenticates an advert (rule 4)."""
    return Hmac(key, vhid, addrs).digest(counter)


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement checksum of an even-length buffer.

    The one's-complement sum of the 16-bit words is the buffer read as one big number
    modulo 0xFFFF (2**16 is 1 modulo 0xFFFF: each word counts as itself, and the end-around
    carry is the modulo), with 0xFFFF, not 0, for a nonzero multiple: one C-level operation
    for what a loop over the words does (an advert sent and one heard each need it)."""
    total = int.from_bytes(data, "big")
    folded = total % 0xFFFF or (0xFFFF if total else 0)
    return ~folded & 0xFFFF


def encode(
    vhid: int,
    advskew: int,
    advbase: int,
    counter: int,
    key: bytes,
    addrs: Sequence[Address],
) -> bytes:
    """The 36-byte CARP header with digest and checksum filled in.

    ``advskew`` is the skew to put on the wire (already demoted and capped by the caller);
    ``key`` comes from ``make_key``.
    """
    check_range("vhid", vhid, 1, 255)
    check_range("advskew", advskew, 0, 255)
    check_range("advbase", advbase, 0, 255)
    check_range("counter", counter, 0, COUNTER_MAX)
    if len(key) != KEY_LEN:
        raise ValueError(f"key: must be {KEY_LEN} bytes from make_key(), got {len(key)}")
    return Hmac(key, vhid, addrs).header(advskew, advbase, counter)


def decode(data: bytes) -> Advert | Rejected:
    """Parse the CARP header at the start of ``data``: length, checksum and version only."""
    if len(data) < HEADER_LEN:
        return Rejected(Drop.SHORT, f"{len(data)} bytes, a CARP header needs {HEADER_LEN}")
    header = bytes(data[:HEADER_LEN])
    if internet_checksum(header) != 0:
        return Rejected(Drop.CHECKSUM, f"checksum field 0x{header[6] << 8 | header[7]:04x}")
    vt, vhid, advskew, _authlen, _reserved, advbase, _sum, hi, lo, md = _HEADER.unpack(header)
    if vt >> 4 != CARP_VERSION:
        return Rejected(Drop.VERSION, f"version {vt >> 4}")
    return Advert(vhid, advskew, advbase, hi << 32 | lo, md, vt >> 4, vt & 0x0F)


def verify(advert: Advert, key: bytes, addrs: Sequence[Address]) -> bool:
    """Whether the advert's digest matches this key and address set (constant-time compare)."""
    return Hmac(key, advert.vhid, addrs).verify(advert)


def ipv4_payload(
    packet: bytes, header_len: int
) -> tuple[IPv4Address, IPv4Address, bytes] | Rejected:
    """Source, destination and payload of an IPv4 packet of protocol 112, with TTL 255 if it
    was sent to the group (rule 5); the destination is :data:`CARP_GROUP_V4` itself then.

    ``header_len`` is the shortest payload the protocol accepts (CARP's header, VRRP's); IP
    options are skipped and link-layer padding past the total length is cut off.
    """
    if len(packet) < IPV4_HEADER_LEN:
        return Rejected(Drop.SHORT, f"{len(packet)} bytes, an IPv4 header needs 20")
    vihl, _tos, total, _id, _frag, ttl, proto, _sum, src, dst = _IPV4.unpack_from(packet)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < IPV4_HEADER_LEN:
        return Rejected(Drop.BAD_IP, f"version {vihl >> 4}, header length {ihl}")
    if proto != CARP_PROTO:
        return Rejected(Drop.NOT_CARP, f"protocol {proto}")
    to_group = dst == _GROUP
    if ttl != TTL and to_group:
        return Rejected(Drop.TTL, f"ttl {ttl}")
    if total < ihl + header_len:
        return Rejected(Drop.SHORT, f"total length {total}, needs {ihl + header_len}")
    if len(packet) < total:
        return Rejected(Drop.SHORT, f"{len(packet)} bytes, total length says {total}")
    destination = CARP_GROUP_V4 if to_group else _address(dst)
    return _address(src), destination, bytes(packet[ihl:total])


@functools.lru_cache(maxsize=1024)
def _address(packed: bytes) -> IPv4Address:
    """The address of 4 bytes; the few sources and groups a link carries are made once."""
    return IPv4Address(packed)


def decode_ipv4(packet: bytes) -> tuple[IPv4Address, IPv4Address, Advert] | Rejected:
    """Parse a whole IPv4 packet as a raw socket returns it: source, destination (the
    group is :data:`CARP_GROUP_V4` itself) and advert."""
    parts = ipv4_payload(packet, HEADER_LEN)
    if isinstance(parts, Rejected):
        return parts
    src, dst, payload = parts
    advert = decode(payload)
    if isinstance(advert, Rejected):
        return advert
    return src, dst, advert


def vhid_of(packet: bytes) -> int:
    """The vhid of an IPv4 packet carrying CARP (VRRP: its VRID, in the same place), or 0 (no
    vhid's) if too short; unchecked: to find a vhid's state, never to accept a packet."""
    at = (packet[0] & 0x0F) * 4 + 1 if packet else 0
    return packet[at] if 0 < at < len(packet) else 0


def encode_ipv4(
    src: IPv4Address, carp: bytes, tos: int = 0x10, dst: IPv4Address | None = None
) -> bytes:
    """A whole IPv4 packet carrying ``carp`` to 224.0.0.18, or to the unicast peer ``dst``:
    TTL 255 either way (rule 5), DF, id 0, checksum set."""
    return ipv4_header(src, len(carp), tos, dst) + carp


@functools.lru_cache(maxsize=1024)
def ipv4_header(
    src: IPv4Address, length: int, tos: int = 0x10, dst: IPv4Address | None = None
) -> bytes:
    """The IPv4 header of :func:`encode_ipv4`: the same for every advert of a vhid to one
    destination (its source and length do not change), so it is built once."""
    check_range("tos", tos, 0, 255)
    total = IPV4_HEADER_LEN + length
    fields = (0x45, tos, total, 0, IP_DF, TTL, CARP_PROTO)
    to = (dst or CARP_GROUP_V4).packed
    header = _IPV4.pack(*fields, 0, src.packed, to)
    return _IPV4.pack(*fields, internet_checksum(header), src.packed, to)
