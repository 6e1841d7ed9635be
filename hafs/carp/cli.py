"""`hafs carp encode|decode`: build and inspect CARP advertisements byte for byte.

Bad input is a one-line ``HafsError`` naming the flag (exit 2). ``decode`` gives a verdict for
any bytes at all: exit 0 when the advert is valid (or parses and no ``--pass`` was given to
check its digest), 1 when FreeBSD would drop it.
"""

from __future__ import annotations

import argparse
import json
import sys
from ipaddress import ip_address

from hafs.carp import wire
from hafs.errors import HafsError

U32_MAX = (1 << 32) - 1
DEMOTION_MAX = (1 << 31) - 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``carp`` command group with its ``encode`` and ``decode`` subcommands."""
    carp = subparsers.add_parser(
        "carp",
        help="encode and decode CARP advertisements (FreeBSD and ucarp compatible)",
        description="Build and inspect the 36-byte CARP header exactly as FreeBSD and ucarp do.",
    )
    commands = carp.add_subparsers(dest="carp_command", metavar="COMMAND")
    commands.required = True

    enc = commands.add_parser(
        "encode",
        help="print a CARP header as hex",
        description="Print the 36-byte CARP header (checksum and HMAC-SHA1 digest filled in) "
        "as lowercase hex.",
    )
    enc.add_argument("--vhid", required=True, metavar="N", help="virtual host id, 1..255")
    enc.add_argument("--advskew", default="0", metavar="K", help="advskew, 0..254 (default 0)")
    enc.add_argument("--advbase", default="1", metavar="B", help="seconds, 1..255 (default 1)")
    enc.add_argument(
        "--pass",
        dest="passphrase",
        required=True,
        metavar="P",
        help="passphrase (its first 19 bytes count)",
    )
    enc.add_argument(
        "--addr",
        action="append",
        required=True,
        metavar="A",
        help="an address of the vhid; repeat for each",
    )
    enc.add_argument(
        "--counter", required=True, metavar="HI:LO", help="the 64-bit counter as two 32-bit halves"
    )
    enc.add_argument(
        "--demotion",
        default="0",
        metavar="D",
        help="host demotion added to advskew, capped at 240 (default 0)",
    )
    enc.add_argument(
        "--ucarp", action="store_true", help="refuse what stock ucarp refuses (exit 2)"
    )
    enc.set_defaults(func=encode_command)

    dec = commands.add_parser(
        "decode",
        help="print a CARP header's fields and verdict",
        description="Print the fields of a CARP header and the verdict: valid, or why FreeBSD "
        "would drop it. Exit 0 if valid (or parsed, without --pass), 1 if dropped.",
    )
    dec.add_argument("hex", metavar="HEX", help="the CARP header in hex (spaces allowed)")
    dec.add_argument(
        "--pass", dest="passphrase", metavar="P", help="passphrase: check the digest (with --addr)"
    )
    dec.add_argument(
        "--addr", action="append", default=[], metavar="A", help="an address of the vhid"
    )
    dec.add_argument("--json", action="store_true", help="print one JSON object")
    dec.set_defaults(func=decode_command)


def _integer(flag: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise HafsError(f"{flag}: must be {low}..{high}, got {text!r}")
    return value


def _addresses(texts: list[str]) -> list[wire.Address]:
    try:
        return [ip_address(text) for text in texts]
    except ValueError as exc:
        raise HafsError(f"--addr: {exc}") from None


def _counter(text: str) -> int:
    hi, sep, lo = text.partition(":")
    if not sep:
        raise HafsError(f"--counter: must be HI:LO, two integers 0..{U32_MAX}, got {text!r}")
    return _integer("--counter", hi, 0, U32_MAX) << 32 | _integer("--counter", lo, 0, U32_MAX)


def encode_command(args: argparse.Namespace) -> int:
    """``hafs carp encode``: print the header as lowercase hex."""
    vhid = _integer("--vhid", args.vhid, 1, 255)
    advskew = _integer("--advskew", args.advskew, 0, 254)
    advbase = _integer("--advbase", args.advbase, 1, 255)
    demotion = _integer("--demotion", args.demotion, 0, DEMOTION_MAX)
    counter = _counter(args.counter)
    addrs = _addresses(args.addr)
    if args.ucarp and (refusal := wire.ucarp_refusal(args.passphrase, addrs)):
        raise HafsError(f"--ucarp: {refusal}")
    passlen = len(wire.pass_bytes(args.passphrase))
    if not args.ucarp and not passlen:
        print(
            "hafs: warning: --pass: empty, the key is all zeros; ucarp refuses it", file=sys.stderr
        )
    if not args.ucarp and passlen > wire.PASS_MAX:
        print(
            f"hafs: warning: --pass: only its first {wire.PASS_MAX} of {passlen} bytes count; "
            "ucarp refuses it",
            file=sys.stderr,
        )
    skew = min(advskew + demotion, wire.MAX_SKEW)
    key = wire.make_key(args.passphrase)
    print(wire.encode(vhid, skew, advbase, counter, key, addrs).hex())
    return 0


def _parse_hex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise HafsError(f"HEX: not pairs of hex digits: {shown!r}") from None


_FIELDS = (
    "version",
    "type",
    "vhid",
    "advskew",
    "advbase",
    "authlen",
    "checksum",
    "counter",
    "digest",
)


def _fields(data: bytes) -> dict[str, int | str | None]:
    """The header's fields as they are on the wire (all None if there are not 36 bytes)."""
    if len(data) < wire.HEADER_LEN:
        return dict.fromkeys(_FIELDS)
    hi, lo = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
    values: tuple[int | str, ...] = (data[0] >> 4, data[0] & 0x0F, data[1], data[2], data[5])
    values += (data[3], f"0x{data[6] << 8 | data[7]:04x}", f"{hi}:{lo}", data[16:36].hex())
    return dict(zip(_FIELDS, values, strict=True))


def _verdict(data: bytes, passphrase: str | None, addrs: list[wire.Address]) -> str | None:
    """None if valid or merely parsed, else the drop reason."""
    advert = wire.decode(data)
    if isinstance(advert, wire.Rejected):
        return advert.reason.value
    if passphrase is not None and not wire.verify(advert, wire.make_key(passphrase), addrs):
        return wire.Drop.DIGEST.value
    return None


def decode_command(args: argparse.Namespace) -> int:
    """``hafs carp decode``: print the fields and the verdict; exit 1 if dropped."""
    data = _parse_hex(args.hex)
    addrs = _addresses(args.addr)
    if (args.passphrase is None) != (not addrs):
        raise HafsError("--pass: give it together with --addr to check the digest, or neither")
    reason = _verdict(data, args.passphrase, addrs)
    if reason is not None:
        verdict = "dropped"
    elif args.passphrase is None:
        verdict = "parsed, digest not checked"
    else:
        verdict = "valid"
    fields = _fields(data)
    if args.json:
        print(json.dumps(fields | {"verdict": verdict, "reason": reason}))
    else:
        for name, value in fields.items():
            if value is not None:
                print(f"{name}: {value}")
        print(f"verdict: {verdict}" + (f" ({reason})" if reason else ""))
    return 1 if reason else 0
