"""The CARP codec against FreeBSD's byte-exact vectors, its own rules, and arbitrary bytes."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hafs.carp import wire
from hafs.carp.wire import Advert, Drop, Rejected

REPO = Path(__file__).resolve().parents[2]
VECTORS_PATH = REPO / "tests" / "data" / "carp-vectors.json"
SHARED_VECTORS_PATH = REPO.parent / "shared" / "carp-vectors.json"

VIP = IPv4Address("172.21.0.211")
SRC = IPv4Address("172.21.0.1")
KEY = wire.make_key("testok")


@dataclass(frozen=True)
class Vector:
    """One entry of carp-vectors.json."""

    impl: str
    vhid: int
    advskew: int
    advbase: int
    passphrase: str
    addrs: tuple[wire.Address, ...]
    hi: int
    lo: int
    demotion: int
    header: bytes
    md: bytes

    @property
    def counter(self) -> int:
        return self.hi << 32 | self.lo

    @property
    def wire_skew(self) -> int:
        return min(self.advskew + self.demotion, wire.MAX_SKEW)


def load_vectors(path: Path = VECTORS_PATH) -> list[Vector]:
    entries = json.loads(path.read_text())
    return [
        Vector(
            impl=e["impl"],
            vhid=e["vhid"],
            advskew=e["advskew"],
            advbase=e["advbase"],
            passphrase=e["pass"],
            addrs=tuple(ip_address(a) for a in e["addrs"]),
            hi=e["counter"][0],
            lo=e["counter"][1],
            demotion=e.get("demotion", 0),
            header=bytes.fromhex(e["header_hex"]),
            md=bytes.fromhex(e["md_hex"]),
        )
        for e in entries
    ]


VECTORS = load_vectors()
VECTOR_IDS = [f"{i}-{v.impl}-vhid{v.vhid}-skew{v.wire_skew}" for i, v in enumerate(VECTORS)]


def with_checksum(header: bytes) -> bytes:
    """``header`` with its checksum field recomputed, for crafting odd but intact headers."""
    zeroed = header[:6] + b"\0\0" + header[8:]
    return zeroed[:6] + struct.pack("!H", wire.internet_checksum(zeroed)) + zeroed[8:]


def test_all_nineteen_vectors_are_loaded() -> None:
    assert len(VECTORS) == 19
    assert {v.impl for v in VECTORS} == {"freebsd", "ucarp"}


def test_vector_copy_matches_the_shared_file() -> None:
    if not SHARED_VECTORS_PATH.exists():
        pytest.skip(f"{SHARED_VECTORS_PATH} is not beside this clone")
    assert load_vectors(SHARED_VECTORS_PATH) == VECTORS


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_encode_reproduces_vector(v: Vector) -> None:
    key = wire.make_key(v.passphrase)
    assert wire.encode(v.vhid, v.wire_skew, v.advbase, v.counter, key, v.addrs) == v.header


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_digest_reproduces_vector(v: Vector) -> None:
    key = wire.make_key(v.passphrase)
    assert wire.compute_digest(key, v.vhid, v.addrs, v.counter) == v.md


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_decode_and_verify_vector(v: Vector) -> None:
    advert = wire.decode(v.header)
    assert advert == Advert(v.vhid, v.wire_skew, v.advbase, v.counter, v.md, 2, 1)
    assert wire.verify(advert, wire.make_key(v.passphrase), v.addrs)
    assert not wire.verify(advert, wire.make_key("x" + v.passphrase), v.addrs)


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_a_prepared_hmac_signs_and_checks_the_vector(v: Vector) -> None:
    """wire.Hmac, which the agent keeps per vhid, gives the same bytes as FreeBSD."""
    prepared = wire.Hmac(wire.make_key(v.passphrase), v.vhid, v.addrs)
    assert prepared.digest(v.counter) == v.md
    assert prepared.header(v.wire_skew, v.advbase, v.counter) == v.header
    advert = wire.decode(v.header)
    assert isinstance(advert, Advert) and prepared.verify(advert)
    assert prepared.digest(v.counter ^ 1) != v.md  # the counter is hashed every time
    other_vhid = wire.Hmac(wire.make_key(v.passphrase), v.vhid % 255 + 1, v.addrs)
    assert not other_vhid.verify(advert)


@pytest.mark.parametrize("v", VECTORS, ids=VECTOR_IDS)
def test_vectors_are_ones_stock_ucarp_accepts(v: Vector) -> None:
    assert wire.ucarp_refusal(v.passphrase, v.addrs) is None


def test_digest_is_hmac_sha1_over_vhid_sorted_addresses_and_counter() -> None:
    addrs: list[wire.Address] = [
        IPv6Address("2001:db8::2"),
        IPv4Address("10.0.0.2"),
        IPv6Address("fe80:1234::1"),
        IPv4Address("9.255.255.255"),
        IPv4Address("10.0.0.2"),
    ]
    message = (
        bytes([2, 1, 7])
        + IPv4Address("9.255.255.255").packed  # integer order, not text order
        + IPv4Address("10.0.0.2").packed  # once, though listed twice
        + IPv6Address("2001:db8::2").packed  # 0x20 sorts before 0xfe
        + IPv6Address("fe80::1").packed  # link-local: scope bytes 2-3 zeroed
        + (5 << 32 | 6).to_bytes(8, "big")
    )
    expected = hmac.new(KEY, message, hashlib.sha1).digest()
    assert wire.compute_digest(KEY, 7, addrs, 5 << 32 | 6) == expected


@pytest.mark.parametrize("length", [0, 1, 20, 63, 64, 65, 200])
@given(seed=st.binary(min_size=1), vhid=st.integers(1, 255), counter=st.integers(0, 2**64 - 1))
def test_the_prepared_sha1_states_give_rfc_2104s_hmac_for_any_key(
    length: int, seed: bytes, vhid: int, counter: int
) -> None:
    """wire.Hmac keeps HMAC's inner and outer SHA-1 states itself: the same digest as
    Python's hmac for keys shorter than, as long as and longer than SHA-1's 64-byte block."""
    key = (seed * length)[:length]
    message = bytes([2, 1, vhid]) + VIP.packed + counter.to_bytes(8, "big")
    expected = hmac.new(key, message, hashlib.sha1).digest()
    assert wire.Hmac(key, vhid, [VIP]).digest(counter) == expected


def test_digest_ignores_address_order() -> None:
    a, b = IPv4Address("10.0.0.1"), IPv6Address("2001:db8::1")
    assert wire.compute_digest(KEY, 1, [a, b], 9) == wire.compute_digest(KEY, 1, [b, a], 9)


def test_only_link_local_scope_bytes_are_zeroed() -> None:
    def digest(text: str) -> bytes:
        return wire.compute_digest(KEY, 1, [IPv6Address(text)], 0)

    assert digest("fe80:1234::1") == digest("fe80::1")
    assert digest("ff02:0005::1") == digest("ff02::1")  # link-local multicast is scoped too
    assert digest("2001:db8::1") != digest("2001::1")


def test_all_zero_and_all_one_addresses_are_skipped_like_freebsd() -> None:
    plain = wire.compute_digest(KEY, 1, [VIP], 0)
    odd: list[wire.Address] = [
        VIP,
        IPv4Address("0.0.0.0"),
        IPv4Address("255.255.255.255"),
        IPv6Address("::"),
    ]
    assert wire.compute_digest(KEY, 1, odd, 0) == plain


def test_digest_covers_vhid_addresses_and_counter() -> None:
    advert = wire.decode(wire.encode(1, 0, 1, 10, KEY, [VIP]))
    assert isinstance(advert, Advert)
    assert wire.verify(advert, KEY, [VIP])
    assert not wire.verify(advert, KEY, [IPv4Address("172.21.0.212")])
    assert not wire.verify(advert, KEY, [VIP, IPv4Address("172.21.0.212")])
    assert not wire.verify(Advert(2, 0, 1, 10, advert.digest), KEY, [VIP])
    assert not wire.verify(Advert(1, 0, 1, 11, advert.digest), KEY, [VIP])
    # advskew and advbase are not authenticated, exactly as in FreeBSD
    assert wire.verify(Advert(1, 200, 9, 10, advert.digest), KEY, [VIP])


def test_make_key_keeps_19_bytes_and_pads_to_20() -> None:
    assert wire.make_key("testok") == b"testok" + bytes(14)
    assert wire.make_key("") == bytes(20)
    assert wire.make_key("abcdefghijklmnopqrstuvwxyz") == b"abcdefghijklmnopqrs\0"
    assert wire.make_key(b"\xffraw") == b"\xffraw" + bytes(16)
    assert wire.make_key("é") == "é".encode() + bytes(18)


def test_make_key_restores_undecodable_argv_bytes() -> None:
    from_argv = b"pa\xffss".decode("utf-8", "surrogateescape")
    assert wire.make_key(from_argv) == b"pa\xffss" + bytes(15)


def test_a_twenty_byte_pass_signs_like_its_first_nineteen_bytes() -> None:
    long_key = wire.make_key("abcdefghijklmnopqrsTAIL")
    assert long_key == wire.make_key("abcdefghijklmnopqrs")


@pytest.mark.parametrize(
    ("passphrase", "addrs", "expected"),
    [
        ("testok", [VIP], None),
        ("a" * 19, [VIP], None),
        (b"testok", [VIP], None),
        ("", [VIP], "ucarp refuses an empty pass"),
        ("a" * 20, [VIP], "ucarp refuses a pass of 20 bytes or more (this one has 20)"),
        ("é" * 10, [VIP], "ucarp refuses a pass of 20 bytes or more (this one has 20)"),
        ("te\0st", [VIP], "ucarp cannot take a pass containing a NUL byte"),
        ("testok", [], "ucarp hashes exactly one IPv4 address, this vhid has 0 IPv4 and 0 IPv6"),
        (
            "testok",
            [VIP, IPv4Address("10.0.0.1")],
            "ucarp hashes exactly one IPv4 address, this vhid has 2 IPv4 and 0 IPv6",
        ),
        (
            "testok",
            [IPv6Address("2001:db8::1")],
            "ucarp hashes exactly one IPv4 address, this vhid has 0 IPv4 and 1 IPv6",
        ),
        ("testok", [IPv4Address("0.0.0.0")], "ucarp takes 0.0.0.0 as no address"),
    ],
)
def test_ucarp_refusal(
    passphrase: str | bytes, addrs: list[wire.Address], expected: str | None
) -> None:
    assert wire.ucarp_refusal(passphrase, addrs) == expected


def test_header_layout() -> None:
    header = wire.encode(9, 100, 3, 0x0102030405060708, KEY, [VIP])
    assert len(header) == wire.HEADER_LEN == 36
    assert header[:6] == bytes([0x21, 9, 100, 7, 0, 3])
    assert header[8:16] == bytes(range(1, 9))
    assert wire.internet_checksum(header) == 0


def test_bowout_advert_round_trips() -> None:
    header = wire.encode(1, wire.BOWOUT_ADVSKEW, wire.BOWOUT_ADVBASE, 1, KEY, [VIP])
    assert wire.decode(header) == Advert(1, 255, 255, 1, header[16:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vhid": 0}, "vhid: must be 1..255, got 0"),
        ({"vhid": 256}, "vhid: must be 1..255, got 256"),
        ({"advskew": 256}, "advskew: must be 0..255, got 256"),
        ({"advbase": -1}, "advbase: must be 0..255, got -1"),
        ({"counter": 1 << 64}, f"counter: must be 0..{(1 << 64) - 1}, got {1 << 64}"),
        ({"key": b"testok"}, "key: must be 20 bytes from make_key(), got 6"),
    ],
)
def test_encode_refuses_impossible_input(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {
        "vhid": 1,
        "advskew": 0,
        "advbase": 1,
        "counter": 0,
        "key": KEY,
        "addrs": [VIP],
    } | kwargs
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        wire.encode(**args)  # type: ignore[arg-type]


GOOD = wire.encode(1, 0, 1, 0, KEY, [VIP])


def test_decode_rejects_short_input() -> None:
    assert wire.decode(GOOD[:35]) == Rejected(Drop.SHORT, "35 bytes, a CARP header needs 36")
    assert wire.decode(b"") == Rejected(Drop.SHORT, "0 bytes, a CARP header needs 36")


def words_checksum(data: bytes) -> int:
    """RFC 1071 as the RFC writes it: sum the 16-bit words, fold the carries, complement."""
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@pytest.mark.parametrize(
    "data", [bytes(36), b"\xff" * 36, b"\xff\xfe\x00\x01", b"\x00\x01" * 18, GOOD, GOOD[:20]]
)
def test_the_checksum_is_rfc_1071s(data: bytes) -> None:
    """All zeros, all ones (a nonzero sum that is a multiple of 0xFFFF), a valid header
    (checksum 0): the same as the word-by-word sum."""
    assert wire.internet_checksum(data) == words_checksum(data)


@given(st.binary(max_size=64).map(lambda data: data[: len(data) // 2 * 2]))
def test_the_checksum_of_any_even_buffer_is_rfc_1071s(data: bytes) -> None:
    assert wire.internet_checksum(data) == words_checksum(data)


@pytest.mark.parametrize("position", range(36))
def test_any_changed_byte_fails_the_checksum(position: int) -> None:
    damaged = bytearray(GOOD)
    damaged[position] ^= 0x5A
    result = wire.decode(bytes(damaged))
    assert isinstance(result, Rejected)
    assert result.reason is Drop.CHECKSUM


def test_decode_rejects_other_versions() -> None:
    assert wire.decode(with_checksum(b"\x31" + GOOD[1:])) == Rejected(Drop.VERSION, "version 3")


def test_decode_does_not_check_type_authlen_or_reserved() -> None:
    odd = with_checksum(bytes([0x22, 1, 0, 0, 9, 1]) + GOOD[6:])
    assert wire.decode(odd) == Advert(1, 0, 1, 0, GOOD[16:], version=2, type=2)


def test_decode_reads_only_the_first_36_bytes() -> None:
    assert wire.decode(GOOD + b"trailer") == wire.decode(GOOD)


def test_drop_reasons_are_distinct_lowercase_words() -> None:
    values = [d.value for d in Drop]
    assert len(set(values)) == len(values)
    assert all(v == v.lower() and 0 < len(v) <= 20 for v in values)
    assert Drop.CHECKSUM.value == "bad checksum"


# IPv4 framing.

PACKET = wire.encode_ipv4(SRC, GOOD)


def test_encode_ipv4_builds_the_freebsd_header() -> None:
    assert len(PACKET) == 56
    assert PACKET[:10] == bytes.fromhex("4510003800004000ff70")  # TOS, len, DF, TTL, 112
    assert PACKET[12:16] == SRC.packed
    assert PACKET[16:20] == bytes([224, 0, 0, 18])
    assert wire.internet_checksum(PACKET[:20]) == 0
    assert PACKET[20:] == GOOD
    assert wire.encode_ipv4(SRC, GOOD, tos=0xE0)[1] == 0xE0


def test_decode_ipv4_round_trip() -> None:
    assert wire.decode_ipv4(PACKET) == (SRC, wire.CARP_GROUP_V4, wire.decode(GOOD))


PEER = IPv4Address("172.21.0.2")


def test_unicast_packet_goes_to_the_peer_with_ttl_255_and_the_same_carp_bytes() -> None:
    packet = wire.encode_ipv4(SRC, GOOD, dst=PEER)
    assert (packet[8], packet[12:16], packet[16:20]) == (255, SRC.packed, PEER.packed)
    assert wire.internet_checksum(packet[:20]) == 0
    assert packet[20:] == GOOD == PACKET[20:]  # neither digest nor checksum covers the dst
    assert wire.decode_ipv4(packet) == (SRC, PEER, wire.decode(GOOD))


def test_only_an_advert_to_the_group_must_keep_ttl_255() -> None:
    """FreeBSD checks the TTL in multicast mode only: a unicast advert may have been routed;
    whose it is (a peer of a unicast vhid) the agent decides."""
    routed = patched(8, b"\x40", wire.encode_ipv4(SRC, GOOD, dst=PEER))
    routed = patched(
        10, wire.internet_checksum(patched(10, b"\0\0", routed)[:20]).to_bytes(2, "big"), routed
    )
    assert wire.decode_ipv4(routed) == (SRC, PEER, wire.decode(GOOD))
    assert wire.decode_ipv4(patched(8, b"\x40")) == Rejected(Drop.TTL, "ttl 64")


def test_each_source_and_length_gets_its_own_ip_header() -> None:
    """The IPv4 header is built once per source and length: never another one's."""
    other = IPv4Address("172.21.0.2")
    longer = GOOD + bytes(8)
    for src, payload in ((SRC, GOOD), (other, GOOD), (SRC, longer), (other, longer)):
        packet = wire.encode_ipv4(src, payload)
        assert packet[12:16] == src.packed and packet[20:] == payload
        assert struct.unpack("!H", packet[2:4]) == (20 + len(payload),)
        assert wire.internet_checksum(packet[:20]) == 0


def test_vhid_of_finds_the_vhid_byte_or_none() -> None:
    assert wire.vhid_of(PACKET) == 1
    with_options = bytearray(PACKET[:20] + b"\x01\x01\x01\x01" + GOOD)
    with_options[0] = 0x46
    assert wire.vhid_of(bytes(with_options)) == 1
    assert [wire.vhid_of(PACKET[:n]) for n in (0, 1, 21)] == [0, 0, 0]


def test_decode_ipv4_skips_ip_options_and_link_padding() -> None:
    with_options = bytearray(PACKET[:20] + b"\x01\x01\x01\x01" + GOOD)
    with_options[0] = 0x46
    with_options[2:4] = struct.pack("!H", 60)
    expected = (SRC, wire.CARP_GROUP_V4, wire.decode(GOOD))
    assert wire.decode_ipv4(bytes(with_options) + bytes(6)) == expected


def patched(offset: int, value: bytes, packet: bytes = PACKET) -> bytes:
    return packet[:offset] + value + packet[offset + len(value) :]


@pytest.mark.parametrize(
    ("packet", "expected"),
    [
        (PACKET[:19], Rejected(Drop.SHORT, "19 bytes, an IPv4 header needs 20")),
        (patched(0, b"\x65"), Rejected(Drop.BAD_IP, "version 6, header length 20")),
        (patched(0, b"\x44"), Rejected(Drop.BAD_IP, "version 4, header length 16")),
        (patched(9, b"\x11"), Rejected(Drop.NOT_CARP, "protocol 17")),
        (patched(8, b"\x40"), Rejected(Drop.TTL, "ttl 64")),
        (patched(2, b"\x00\x37"), Rejected(Drop.SHORT, "total length 55, needs 56")),
        (PACKET[:55], Rejected(Drop.SHORT, "55 bytes, total length says 56")),
        (patched(0, b"\x4f"), Rejected(Drop.SHORT, "total length 56, needs 96")),
        (patched(30, b"\xff"), Rejected(Drop.CHECKSUM, "checksum field 0xf0ba")),
    ],
    ids=[
        "short",
        "ipv6",
        "ihl4",
        "udp",
        "ttl",
        "total-too-small",
        "truncated",
        "ihl15",
        "carp-checksum",
    ],
)
def test_decode_ipv4_rejects(packet: bytes, expected: Rejected) -> None:
    assert wire.decode_ipv4(packet) == expected


# Properties.

addresses = st.one_of(
    st.builds(IPv4Address, st.integers(1, (1 << 32) - 2)),
    st.builds(IPv6Address, st.integers(1, (1 << 128) - 2)),
)


@given(
    vhid=st.integers(1, 255),
    advskew=st.integers(0, 255),
    advbase=st.integers(0, 255),
    counter=st.integers(0, (1 << 64) - 1),
    passphrase=st.text(max_size=30),
    addrs=st.lists(addresses, max_size=5),
)
def test_round_trip(
    vhid: int,
    advskew: int,
    advbase: int,
    counter: int,
    passphrase: str,
    addrs: list[wire.Address],
) -> None:
    key = wire.make_key(passphrase)
    header = wire.encode(vhid, advskew, advbase, counter, key, addrs)
    advert = wire.decode(header)
    assert isinstance(advert, Advert)
    assert (advert.vhid, advert.advskew, advert.advbase, advert.counter) == (
        vhid,
        advskew,
        advbase,
        counter,
    )
    assert wire.verify(advert, key, list(reversed(addrs)))
    assert wire.decode_ipv4(wire.encode_ipv4(SRC, header)) == (SRC, wire.CARP_GROUP_V4, advert)


@given(st.binary(max_size=80))
def test_decode_never_raises(data: bytes) -> None:
    assert isinstance(wire.decode(data), Advert | Rejected)


@given(st.binary(max_size=120))
def test_decode_ipv4_never_raises(data: bytes) -> None:
    assert isinstance(wire.decode_ipv4(data), tuple | Rejected)


@given(
    ihl=st.integers(0, 15),
    total=st.integers(0, 0xFFFF),
    body=st.binary(max_size=100),
)
def test_decode_ipv4_never_raises_past_the_protocol_check(
    ihl: int, total: int, body: bytes
) -> None:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 0, 0, 255, 112, 0, SRC.packed, b"")
    result = wire.decode_ipv4(header + body)
    assert isinstance(result, tuple | Rejected)
    if isinstance(result, tuple):
        assert result[0] == SRC
