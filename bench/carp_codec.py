"""What CARP costs the agent: codec throughput and one advert round of 255 vhids.

Run ``python bench/carp_codec.py`` with hafs installed (``pip install -e .``). Every figure
is the best of several repeats, the one least disturbed by the rest of the machine.
"""

from __future__ import annotations

import platform
import random
import timeit
from collections.abc import Callable
from ipaddress import IPv4Address

from hafs.carp import wire
from hafs.carp.machine import AdvertReceived, LinkUp, Timeout, VhidConfig, VhidMachine

REPEATS = 5
VHIDS = 255
BUDGET = 1.0  # seconds: one advert round per vhid at advbase 1
KEY = wire.make_key("testok")
VIP = [IPv4Address("172.21.0.211")]
HEADER = wire.encode(1, 0, 1, 42, KEY, VIP)


def best(func: Callable[[], object], number: int) -> float:
    """Seconds per call, best of REPEATS runs of ``number`` calls."""
    return min(timeit.repeat(func, number=number, repeat=REPEATS)) / number


def encode_one() -> bytes:
    return wire.encode(1, 0, 1, 42, KEY, VIP)


def decode_verify_one() -> bool:
    advert = wire.decode(HEADER)
    return isinstance(advert, wire.Advert) and wire.verify(advert, KEY, VIP)


def round_trip_one() -> bool:
    advert = wire.decode(encode_one())
    return isinstance(advert, wire.Advert) and wire.verify(advert, KEY, VIP)


def vhid_set() -> list[tuple[int, list[IPv4Address], int]]:
    rng = random.Random(255)
    return [(v, [IPv4Address(f"10.1.0.{v}")], rng.getrandbits(64)) for v in range(1, VHIDS + 1)]


VHID_SET = vhid_set()
HEADERS = [wire.encode(v, 0, 1, c, KEY, addrs) for v, addrs, c in VHID_SET]


def encode_round() -> list[bytes]:
    return [wire.encode(v, 0, 1, c, KEY, addrs) for v, addrs, c in VHID_SET]


def decode_verify_round() -> int:
    valid = 0
    for (_, addrs, _), header in zip(VHID_SET, HEADERS, strict=True):
        advert = wire.decode(header)
        valid += isinstance(advert, wire.Advert) and wire.verify(advert, KEY, addrs)
    assert valid == VHIDS
    return valid


def machines(state: str) -> list[VhidMachine]:
    """255 machines, one per vhid, all BACKUP or all MASTER with their next advert due."""
    rng = random.Random(1)
    result = []
    for v, addrs, _ in VHID_SET:
        config = VhidConfig(v, addresses=tuple(addrs), passphrase="testok")
        m = VhidMachine(config, lambda: rng.getrandbits(64))
        m.handle(0.0, LinkUp())
        if state == "MASTER":
            m.handle(config.master_down, Timeout())
        result.append(m)
    return result


MASTERS = machines("MASTER")
BACKUPS = machines("BACKUP")
SOURCE = IPv4Address("10.1.0.254")


def master_round() -> None:
    """Every master's advert timer fires: the machine builds and signs its advert."""
    for m in MASTERS:
        due = m.deadline
        assert due is not None
        m.handle(due, Timeout())


def backup_round() -> None:
    """Every backup receives its master's advert: decode, verify, and the machine's reaction."""
    for m, header in zip(BACKUPS, HEADERS, strict=True):
        advert = wire.decode(header)
        assert isinstance(advert, wire.Advert) and isinstance(m.config, VhidConfig)
        assert wire.verify(advert, m.config.key, m.config.addresses)
        m.handle(1.0, AdvertReceived(advert, SOURCE))


def row(label: str, seconds: float, extra: str) -> str:
    return f"{label:<44}{seconds * 1e6:>12,.1f} µs  {extra}"


def main() -> None:
    print(f"CARP codec, Python {platform.python_version()} on {platform.machine()}")
    print(f"best of {REPEATS} runs; 1 s = the advert budget of a vhid at advbase 1\n")
    print(f"{'operation (one advert)':<44}{'time':>15}  per second")
    for label, func in [
        ("encode", encode_one),
        ("decode + verify", decode_verify_one),
        ("encode + decode + verify", round_trip_one),
    ]:
        seconds = best(func, 20_000)
        print(row(label, seconds, f"{1 / seconds:>10,.0f}"))

    print(f"\n{'one advert round, ' + str(VHIDS) + ' vhids':<44}{'time':>15}  % of one core")
    master_s = best(master_round, 20)
    backup_s = best(backup_round, 20)
    total = master_s + backup_s
    for label, seconds in [
        ("codec: encode all", best(encode_round, 20)),
        ("codec: decode + verify all", best(decode_verify_round, 20)),
        ("masters: timer fires, machine sends advert", master_s),
        ("backups: decode + verify + machine reacts", backup_s),
        ("both sides: send all + hear all", total),
    ]:
        print(row(label, seconds, f"{seconds / BUDGET * 100:>10.3f} %"))
    print(
        f"\n{VHIDS} vhids cost {total * 1e3:.2f} ms of each {BUDGET * 1e3:.0f} ms advert interval "
        f"({total / VHIDS * 1e6:.1f} µs per vhid): {BUDGET / total:,.0f}x headroom."
    )


if __name__ == "__main__":
    main()
