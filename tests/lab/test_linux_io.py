"""hafs.carp.linux against a real kernel: two node namespaces on one bridge (see conftest.py).

Each test opens its sockets inside a node with ``inside()`` and waits for them the way the agent
does, through ``loop.add_reader``. ``test_garp_frame_is_ucarps`` needs no root.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface

import pytest

from hafs.carp import wire
from hafs.carp.linux import (
    ETH_P_ARP,
    Address,
    CarpSocket,
    GarpSender,
    LinkMonitor,
    LinkState,
    Vip,
    add_vip,
    create_vmac,
    delete_vmac,
    garp_frame,
    ipv4_addresses,
    link_state,
    list_vips,
    remove_vip,
    set_link_up,
    vip_label,
    vmac_address,
)
from hafs.errors import HafsError
from hafs.lab.netns import Netns, inside
from tests.lab.conftest import Pair

A = IPv4Address("10.77.0.1")
B = IPv4Address("10.77.0.2")
VIP = IPv4Address("10.77.0.100")
KEY = wire.make_key("testok")
ETH_P_IP = 0x0800
TIMEOUT = 2.0


def advert(src: IPv4Address) -> bytes:
    return wire.encode_ipv4(src, wire.encode(1, 0, 1, 7, KEY, [VIP]))


async def _readable(fileno: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fileno, on_readable)
    try:
        await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(fileno)


def receive(sock: CarpSocket) -> bytes:
    asyncio.run(_readable(sock.fileno(), TIMEOUT))
    got = sock.recv()
    assert got is not None
    return got


def next_link_state(monitor: LinkMonitor, wanted: Callable[[LinkState], bool]) -> LinkState:
    async def wait() -> LinkState:
        while True:
            await _readable(monitor.fileno(), TIMEOUT)
            for state in monitor.read():
                if wanted(state):
                    return state

    return asyncio.run(wait())


def frames(sniffer: socket.socket, keep: Callable[[bytes], bool], count: int) -> list[bytes]:
    """The first ``count`` frames ``keep`` accepts, within TIMEOUT."""
    found: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    while len(found) < count:
        sniffer.settimeout(max(deadline - time.monotonic(), 0.01))
        frame = sniffer.recv(65535)
        if keep(frame):
            found.append(frame)
    return found


def sniffer_in(node: Netns, ethertype: int) -> socket.socket:
    with inside(node):
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ethertype))
        sniffer.bind(("eth0", ethertype))
    return sniffer


def ping(node: Netns, address: IPv4Address, timeout: float = 1.0) -> bool:
    """One ICMP echo from ``node`` to ``address``: whether the reply came back."""
    with inside(node):
        icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with icmp:
        echo = struct.pack("!BBHHH", 8, 0, 0, 0x4846, 1) + b"hafs"
        echo = echo[:2] + struct.pack("!H", wire.internet_checksum(echo)) + echo[4:]
        icmp.sendto(echo, (str(address), 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            icmp.settimeout(left)
            try:
                data, (source, _) = icmp.recvfrom(1500)
            except TimeoutError:
                return False
            if source == str(address) and data[20] == 0:
                return True
        return False


def mac_of(node: Netns, ifname: str) -> bytes:
    link = json.loads(node.ip("-j", "link", "show", ifname))[0]
    return bytes.fromhex(link["address"].replace(":", ""))


@pytest.mark.lab
def test_advert_crosses_the_bridge_whole_and_is_not_looped_back(pair: Pair) -> None:
    with inside(pair.a):
        sender = CarpSocket("eth0")
    with inside(pair.b):
        receiver = CarpSocket("eth0")
    with sender, receiver:
        sender.send(advert(A))
        got = receive(receiver)
        tos, frag, ttl = got[1], got[6] << 8 | got[7], got[8]
        assert (tos, frag, ttl) == (0x10, 0x4000, 255)
        decoded = wire.decode_ipv4(got)
        assert not isinstance(decoded, wire.Rejected)
        source, _, adv = decoded
        assert source == A
        assert (adv.vhid, adv.advskew, adv.advbase, adv.counter) == (1, 0, 1, 7)
        assert wire.verify(adv, KEY, [VIP])
        assert receiver.recv() is None
        assert sender.recv() is None


@pytest.mark.lab
def test_vip_add_remove_is_idempotent_labelled_and_answers_ping(pair: Pair) -> None:
    with inside(pair.a):
        assert ipv4_addresses("eth0") == [Address(IPv4Interface(f"{A}/24"), "eth0")]
        assert add_vip("eth0", VIP, 1) is True
        assert add_vip("eth0", VIP, 1) is False
        assert list_vips("eth0") == [Vip(VIP, 1, "eth0:1")]
    assert f"inet {VIP}/32 scope global eth0:1" in pair.a.ip("-4", "address", "show", "dev", "eth0")
    assert ping(pair.b, VIP)
    with inside(pair.a):
        assert remove_vip("eth0", VIP) is True
        assert remove_vip("eth0", VIP) is False
        assert list_vips("eth0") == []
    assert str(VIP) not in pair.a.ip("-4", "address", "show")
    assert not ping(pair.b, VIP, timeout=0.5)


@pytest.mark.lab
def test_vip_label_falls_back_to_a_long_interface_name(pair: Pair) -> None:
    long_name = "enx001122334455"
    pair.lab.connect(pair.a, long_name, "10.78.0.1/24")
    with inside(pair.a):
        assert add_vip(long_name, VIP, 255) is True
        assert list_vips(long_name) == [Vip(VIP, None, long_name)]
        with pytest.raises(HafsError, match="'nope0': not found"):
            add_vip("nope0", VIP, 1)
        with pytest.raises(HafsError, match="'nope0': not found"):
            CarpSocket("nope0")
    assert vip_label("abcdefghijk", 255) == "abcdefghijk:255"
    assert vip_label("abcdefghijkl", 1) == "abcdefghijkl:1"
    assert vip_label("abcdefghijklm", 10) == "abcdefghijklm"
    with pytest.raises(HafsError, match="vhid 0"):
        vip_label("eth0", 0)


def test_garp_frame_is_ucarps() -> None:
    # ucarp 1.5.2 becoming MASTER for 10.99.0.100, captured in the lab (42 bytes on a veth).
    captured = bytes.fromhex(
        "ffffffffffffdafbd186f92e08060001080006040001dafbd186f92e0a630064dafbd186f92e0a630064"
    )
    frame = garp_frame(bytes.fromhex("dafbd186f92e"), IPv4Address("10.99.0.100"))
    assert frame == captured.ljust(60, b"\0")
    reply = garp_frame(bytes.fromhex("dafbd186f92e"), IPv4Address("10.99.0.100"), reply=True)
    assert reply[21] == 2
    assert reply[:21] + reply[22:] == frame[:21] + frame[22:]


@pytest.mark.lab
def test_garp_leaves_with_the_real_mac(pair: Pair) -> None:
    mac = mac_of(pair.a, "eth0")
    with inside(pair.a):
        sender = GarpSender("eth0")
    with sender, sniffer_in(pair.b, ETH_P_ARP) as sniffer:
        assert sender.mac == mac
        sender.send(VIP)
        sender.send(VIP, reply=True)
        request, reply = frames(sniffer, lambda f: f[28:32] == VIP.packed, 2)
    assert request == garp_frame(mac, VIP)
    assert reply == garp_frame(mac, VIP, reply=True)


@pytest.mark.lab
def test_cable_cut_is_a_carrier_event(pair: Pair) -> None:
    with inside(pair.a):
        monitor = LinkMonitor()
        assert link_state("eth0").running
    with monitor:
        pair.port_a.cut()
        lost = next_link_state(monitor, lambda s: s.ifname == "eth0" and not s.lower_up)
        assert (lost.up, lost.operstate, lost.running) == (True, "DOWN", False)
        with inside(pair.a):
            assert link_state("eth0") == lost
        pair.port_a.plug()
        back = next_link_state(monitor, lambda s: s.ifname == "eth0" and s.lower_up)
        assert (back.up, back.operstate, back.running) == (True, "UP", True)
        pair.lab.connect(pair.a, "eth1")
        pair.a.ip("link", "delete", "eth1")
        gone = next_link_state(monitor, lambda s: s.ifname == "eth1" and s.deleted)
        assert not gone.running


@pytest.mark.lab
def test_virtual_mac_sources_adverts_and_answers_arp(pair: Pair) -> None:
    with inside(pair.a):
        name = create_vmac("eth0", 1)
        assert create_vmac("eth0", 1) == name
        assert not link_state(name).up
        set_link_up(name, True)
        assert add_vip(name, VIP, 1)
        sender = CarpSocket(name, join=False)
    with inside(pair.b):
        receiver = CarpSocket("eth0")
    with sender, receiver, sniffer_in(pair.b, ETH_P_IP) as sniffer:
        sender.send(advert(A))
        got = wire.decode_ipv4(receive(receiver))
        assert not isinstance(got, wire.Rejected)
        assert got[0] == A
        (frame,) = frames(sniffer, lambda f: f[23] == wire.CARP_PROTO, 1)
    assert frame[6:12].hex(":") == vmac_address(1)
    assert ping(pair.b, VIP)
    assert f"lladdr {vmac_address(1)}" in pair.b.ip("neigh", "show", str(VIP))
    pair.lab.connect(pair.a, "eth1")
    with inside(pair.a):
        with pytest.raises(HafsError, match="vhid 1: interface 'vhid1' exists"):
            create_vmac("eth1", 1)
        assert delete_vmac(1) is True
        assert delete_vmac(1) is False
