"""The VRRPv3 codec against hand-derived RFC 5798 vectors, its rules, and arbitrary bytes."""

from __future__ import annotations

import re
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hafs.carp import vrrp, wire
from hafs.carp.vrrp import VrrpAdvert
from hafs.carp.wire import Drop, Rejected

GROUP = IPv4Address("224.0.0.18")

# Each vector was summed by hand, 16-bit words of the pseudo-header (source, 224.0.0.18,
# 0x0070 = zero and protocol 112, VRRP length) and of the message with the checksum zero,
# carries folded in, then complemented:
# 1. 10.0.0.1, VRID 1, priority 100 (keepalived's default), 1 s = 100 cs, 10.0.0.100:
#    3101+6401+0064+0a00+0064 + 0a00+0001+e000+0012+0070+000c = 0x18a59 -> 0x8a5a -> ~ 0x75a5
# 2. a keepalived-style bow-out: 192.168.200.1, VRID 51, priority 0, 0.1 s = 10 cs,
#    192.168.200.16 and .17 (keepalived's sample config), length 16 -> 0x5abeb -> ~ 0x540f
VECTORS = [
    (
        IPv4Address("10.0.0.1"),
        VrrpAdvert(1, 100, 100, (IPv4Address("10.0.0.100"),)),
        "31 01 64 01 0064 75a5 0a000064",
    ),
    (
        IPv4Address("192.168.200.1"),
        VrrpAdvert(51, 0, 10, (IPv4Address("192.168.200.16"), IPv4Address("192.168.200.17"))),
        "31 33 00 02 000a 540f c0a8c810 c0a8c811",
    ),
]


@pytest.mark.parametrize(("src", "advert", "message"), VECTORS)
def test_encode_reproduces_vector(src: IPv4Address, advert: VrrpAdvert, message: str) -> None:
    packed = vrrp.encode(advert.vhid, advert.priority, advert.interval, advert.addresses, src)
    assert packed == bytes.fromhex(message)


@pytest.mark.parametrize(("src", "advert", "message"), VECTORS)
def test_decode_reproduces_vector(src: IPv4Address, advert: VrrpAdvert, message: str) -> None:
    assert vrrp.decode(bytes.fromhex(message), src, GROUP) == advert


def test_ipv4_packet_is_protocol_112_ttl_255_to_the_group() -> None:
    src, advert, message = VECTORS[0]
    packet = wire.encode_ipv4(src, bytes.fromhex(message))
    assert (packet[8], packet[9], packet[16:20]) == (255, 112, GROUP.packed)
    assert vrrp.decode_ipv4(packet) == (src, GROUP, advert)


SRC = IPv4Address("10.0.0.1")
VIP = IPv4Address("10.0.0.100")
GOOD = vrrp.encode(1, 100, 100, [VIP], SRC)


def test_checksum_covers_the_pseudo_header() -> None:
    """The same message from another source, or to another destination, does not check."""
    assert vrrp.decode(GOOD, IPv4Address("10.0.0.2"), GROUP) == Rejected(
        Drop.CHECKSUM, "checksum field 0x75a5"
    )
    assert isinstance(vrrp.decode(GOOD, SRC, IPv4Address("224.0.0.19")), Rejected)


def test_readdress_gives_each_unicast_peer_its_own_checksum() -> None:
    """keepalived's unicast_peer: the pseudo-header's destination is the peer, so the same
    advert has another checksum per peer; the group's message does not check at a peer."""
    peer, other = IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")
    to_peer = vrrp.readdress(GOOD, SRC, peer)
    assert to_peer == vrrp.encode(1, 100, 100, [VIP], SRC, dst=peer) != GOOD
    assert to_peer[:6] + to_peer[8:] == GOOD[:6] + GOOD[8:]  # only the checksum differs
    assert vrrp.readdress(GOOD, SRC, other) != to_peer
    assert vrrp.readdress(to_peer, SRC, GROUP) == GOOD
    advert = VrrpAdvert(1, 100, 100, (VIP,))
    assert vrrp.decode(to_peer, SRC, peer) == advert
    assert isinstance(vrrp.decode(GOOD, SRC, peer), Rejected)
    assert isinstance(vrrp.decode(to_peer, SRC, other), Rejected)
    packet = wire.encode_ipv4(SRC, to_peer, dst=peer)
    assert vrrp.decode_ipv4(packet) == (SRC, peer, advert)


# keepalived 2.2.7 with unicast_peer, captured by tcpdump in the lab (10.77.0.1 -> 10.77.0.2,
# VRID 1, priority 200, 0.2 s, 10.77.0.100): TTL 255, and a checksum over the peer's address
KEEPALIVED_UNICAST = bytes.fromhex(
    "45c000200001 0000ff70a6100a4d00010a4d0002 3101c8010014e71e0a4d0064"
)


def test_readdress_reproduces_keepalived_unicast() -> None:
    src, peer = IPv4Address("10.77.0.1"), IPv4Address("10.77.0.2")
    group = vrrp.encode(1, 200, 20, [IPv4Address("10.77.0.100")], src)
    assert vrrp.readdress(group, src, peer) == KEEPALIVED_UNICAST[20:]
    decoded = vrrp.decode_ipv4(KEEPALIVED_UNICAST)
    assert decoded == (src, peer, VrrpAdvert(1, 200, 20, (IPv4Address("10.77.0.100"),)))


@pytest.mark.parametrize("position", range(12))
def test_any_changed_byte_fails_the_checksum(position: int) -> None:
    damaged = bytearray(GOOD)
    damaged[position] ^= 0x5A
    result = vrrp.decode(bytes(damaged), SRC, GROUP)
    assert isinstance(result, Rejected)
    assert result.reason in (Drop.CHECKSUM, Drop.VERSION, Drop.TYPE, Drop.SHORT)


def with_checksum(message: bytes, src: IPv4Address = SRC) -> bytes:
    zeroed = message[:6] + b"\0\0" + message[8:]
    pseudo = struct.pack("!4s4sBBH", src.packed, GROUP.packed, 0, 112, len(message))
    return zeroed[:6] + struct.pack("!H", wire.internet_checksum(pseudo + zeroed)) + zeroed[8:]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (GOOD[:7], Rejected(Drop.SHORT, "7 bytes, a VRRP header needs 8")),
        (with_checksum(b"\x21" + GOOD[1:]), Rejected(Drop.VERSION, "version 2")),
        (with_checksum(b"\x32" + GOOD[1:]), Rejected(Drop.TYPE, "type 2")),
        (
            with_checksum(GOOD[:3] + b"\x02" + GOOD[4:]),
            Rejected(Drop.SHORT, "12 bytes, 2 address(es) need 16"),
        ),
        (
            with_checksum(GOOD[:4] + b"\xf0\x00" + GOOD[6:]),
            Rejected(Drop.INTERVAL, "max advertise interval 0"),
        ),
    ],
    ids=["short", "vrrpv2", "type", "addresses-missing", "interval-zero"],
)
def test_decode_rejects(message: bytes, expected: Rejected) -> None:
    assert vrrp.decode(message, SRC, GROUP) == expected


def test_reserved_bits_and_trailing_bytes_are_ignored() -> None:
    reserved = with_checksum(GOOD[:4] + b"\xa0\x64" + GOOD[6:])
    assert vrrp.decode(reserved + b"pad", SRC, GROUP) == VrrpAdvert(1, 100, 100, (VIP,))


def test_a_carp_advert_is_a_bad_version() -> None:
    carp = wire.encode_ipv4(SRC, wire.encode(1, 0, 1, 0, wire.make_key("x"), [VIP]))
    assert vrrp.decode_ipv4(carp) == Rejected(Drop.VERSION, "version 2")


def test_ip_layer_checks_are_carps() -> None:
    packet = bytearray(wire.encode_ipv4(SRC, GOOD))
    packet[8] = 64
    assert vrrp.decode_ipv4(bytes(packet)) == Rejected(Drop.TTL, "ttl 64")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vhid": 0}, "vhid: must be 1..255, got 0"),
        ({"priority": 256}, "priority: must be 0..255, got 256"),
        ({"interval": 0}, "interval: must be 1..4095, got 0"),
        ({"interval": 4096}, "interval: must be 1..4095, got 4096"),
        ({"addresses": []}, "addresses: must be 1..255, got 0"),
    ],
)
def test_encode_refuses_impossible_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "vhid": 1,
        "priority": 100,
        "interval": 100,
        "addresses": [VIP],
        "src": SRC,
    } | kwargs
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        vrrp.encode(**args)  # type: ignore[arg-type]


ipv4s = st.builds(IPv4Address, st.integers(0, (1 << 32) - 1))


@given(
    vhid=st.integers(1, 255),
    priority=st.integers(0, 255),
    interval=st.integers(1, vrrp.MAX_INTERVAL),
    addresses=st.lists(ipv4s, min_size=1, max_size=8),
    src=ipv4s,
)
def test_round_trip(
    vhid: int, priority: int, interval: int, addresses: list[IPv4Address], src: IPv4Address
) -> None:
    packet = wire.encode_ipv4(src, vrrp.encode(vhid, priority, interval, addresses, src))
    advert = VrrpAdvert(vhid, priority, interval, tuple(addresses))
    assert vrrp.decode_ipv4(packet) == (src, GROUP, advert)


@given(st.binary(max_size=80), ipv4s)
def test_decode_never_raises(data: bytes, src: IPv4Address) -> None:
    assert isinstance(vrrp.decode(data, src, GROUP), VrrpAdvert | Rejected)


@given(st.binary(max_size=120))
def test_decode_ipv4_never_raises(data: bytes) -> None:
    assert isinstance(vrrp.decode_ipv4(data), tuple | Rejected)
