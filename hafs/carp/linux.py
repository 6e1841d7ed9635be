"""The CARP agent's Linux layer: sockets, VIPs, gratuitous ARP, link state, virtual MAC.

No protocol logic lives here: the agent decides, this module does. Everything acts on the
calling thread's network namespace (the agent runs inside its node's namespace).

Measured on Linux 6.x with iproute2 6.1, pyroute2 0.9.7 and stock ucarp 1.5.2 (``tests/lab``):

- Sending uses IP_HDRINCL: the packet from ``wire.encode_ipv4`` goes out as built (TTL 255,
  TOS 0x10, DF, id 0); the kernel fills in the IP checksum (and the source if it is 0.0.0.0).
  Without IP_HDRINCL the kernel picks a random IP id; ucarp accepts both, and TOS 0 too.
  SO_BINDTODEVICE alone routes 224.0.0.18 out of the interface, with no route and without
  IP_MULTICAST_IF; IP_MULTICAST_TTL and IP_TOS are moot with IP_HDRINCL.
- Sending on an interface without carrier succeeds silently (the frame is dropped); on an
  administratively down interface it raises ENETUNREACH.
- With IP_MULTICAST_LOOP off, no socket of this namespace sees our own adverts, but a peer's
  advert with our source address (a duplicate address) still arrives: drop by source address.
- Receiving needs the IP_ADD_MEMBERSHIP on the interface: without any member there, the kernel
  drops 224.0.0.18 before raw sockets see it. Raw sockets get the whole IPv4 packet, and also
  every protocol-112 packet sent to one of the node's own addresses (unicast peers' adverts).
- pyroute2 0.9's synchronous ``IPRoute`` runs its own asyncio loop and raises RuntimeError when
  called from a running loop: the agent calls the netlink functions here through
  ``asyncio.to_thread``. The link monitor uses a plain netlink socket (pyroute2 only parses), so
  its descriptor goes straight to ``loop.add_reader``.
- The kernel takes any address label up to 15 characters (longer: ERANGE). net-tools
  ``ifconfig`` lists one address per label: ``eth0:1`` as an alias, while a second address
  labelled ``eth0`` (or ``foo:2``) is invisible to it; ``ip address`` shows them all.
- Virtual-MAC mode works on a macvlan (mode bridge) with MAC 00:00:5e:00:01:<vhid> holding the
  VIP: adverts sent on it carry the virtual source MAC (and do not loop back to the parent's
  socket); stock ucarp accepts adverts from either source MAC. The parent must not answer ARP
  for the VIP itself (arp_ignore=1), nor announce the VIP from its real MAC when resolving
  neighbours (arp_announce=2), else peers learn the real MAC. The macvlan stays down while not
  MASTER, so the backup neither answers for nor sources frames from the virtual MAC.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_NEWLINK, RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from hafs.carp.wire import CARP_GROUP_V4, CARP_PROTO
from hafs.errors import HafsError

IFNAMSIZ_MAX = 15
IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
ETH_P_ARP = 0x0806
ETH_ZLEN = 60
VMAC_MODE = "bridge"
_BROADCAST_MAC = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_ARP_REQUEST = 1
_ARP_REPLY = 2
_RECV_SIZE = 65535
_NETLINK_RECV_SIZE = 65536
GROUP = str(CARP_GROUP_V4)
_LABEL_RE = re.compile(r"(?P<ifname>.+):(?P<vhid>[0-9]{1,3})")


def _check_vhid(vhid: int) -> None:
    if not 1 <= vhid <= 255:
        raise HafsError(f"vhid {vhid}: must be 1..255")


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise HafsError(
            f"interface {ifname!r}: not found in this network namespace; check the interface name"
        ) from None


class CarpSocket:
    """A raw IPv4 protocol-112 socket on one interface; non-blocking, for ``loop.add_reader``.

    ``join`` (the default) makes it a member of 224.0.0.18 on the interface so adverts arrive;
    a send-only socket (the virtual-MAC interface) does not join and receives nothing.
    The socket stays bound to the interface's index: reopen it if the interface is recreated.
    """

    def __init__(self, ifname: str, *, join: bool = True) -> None:
        index = _ifindex(ifname)
        self.ifname = ifname
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, CARP_PROTO)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
            if join:
                mreqn = struct.pack("4s4si", CARP_GROUP_V4.packed, bytes(4), index)
                self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def send(self, packet: bytes, dst: str = GROUP) -> None:
        """Send one whole IPv4 packet (``wire.encode_ipv4``) to 224.0.0.18 on the interface,
        or to the unicast peer ``dst`` that its header names (the kernel routes by ``dst``;
        the peer must be on the interface's subnet: SO_BINDTODEVICE keeps it there).

        Raises OSError when the kernel refuses (interface down: ENETUNREACH; send buffer full:
        BlockingIOError): the agent counts these as send failures.
        """
        self._sock.sendto(packet, (dst, 0))

    def recv(self) -> bytes | None:
        """The next whole IPv4 packet (header included), or None when none is waiting."""
        try:
            return self._sock.recv(_RECV_SIZE)
        except BlockingIOError:
            return None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> CarpSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- addresses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """One IPv4 address on an interface, with its kernel label."""

    interface: IPv4Interface
    label: str


@dataclass(frozen=True)
class Vip:
    """A /32 address on an interface; ``vhid`` is what its label ``<ifname>:<vhid>`` says."""

    address: IPv4Address
    vhid: int | None
    label: str


def vip_label(ifname: str, vhid: int) -> str:
    """``<ifname>:<vhid>``, or just ``ifname`` when that would pass the kernel's 15 characters.

    Interface names of 12 or more characters (``enx001122334455``) leave no room for the vhid;
    the VIP then carries the plain interface name as label, as an unlabelled address does.
    """
    _check_vhid(vhid)
    label = f"{ifname}:{vhid}"
    return label if len(label) <= IFNAMSIZ_MAX else ifname


def ipv4_addresses(ifname: str) -> list[Address]:
    """The IPv4 addresses on ``ifname`` in kernel order (each prefix's primary address first)."""
    index = _ifindex(ifname)
    with IPRoute() as ipr:
        return [
            Address(
                IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}"), str(msg.get("label"))
            )
            for msg in ipr.get_addr(family=socket.AF_INET, index=index)
        ]


def list_vips(ifname: str) -> list[Vip]:
    """The /32 addresses on ``ifname``; ``vhid`` is None when the label does not carry one."""
    vips = []
    for entry in ipv4_addresses(ifname):
        if entry.interface.network.prefixlen != 32:
            continue
        match = _LABEL_RE.fullmatch(entry.label)
        vhid = int(match["vhid"]) if match and match["ifname"] == ifname else None
        vips.append(Vip(entry.interface.ip, vhid, entry.label))
    return vips


def add_vip(ifname: str, address: IPv4Address, vhid: int) -> bool:
    """Add ``address/32`` labelled :func:`vip_label` to ``ifname``; False if already there."""
    label = vip_label(ifname, vhid)
    index = _ifindex(ifname)
    with IPRoute() as ipr:
        try:
            ipr.addr("add", index=index, address=str(address), prefixlen=32, label=label)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise
    return True


def remove_vip(ifname: str, address: IPv4Address) -> bool:
    """Remove ``address/32`` from ``ifname``; False if it was not there."""
    index = _ifindex(ifname)
    with IPRoute() as ipr:
        try:
            ipr.addr("del", index=index, address=str(address), prefixlen=32)
        except NetlinkError as exc:
            if exc.code == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


# --- gratuitous ARP ---------------------------------------------------------------------------


def garp_frame(mac: bytes, vip: IPv4Address, *, reply: bool = False) -> bytes:
    """An Ethernet broadcast announcing ``vip`` at ``mac``, laid out as ucarp's.

    Sender and target are both (``mac``, ``vip``); ARP request by default (what ucarp sends, the
    form every stack honours), reply with ``reply``. Zero-padded to the 60-byte Ethernet minimum.
    """
    if len(mac) != 6:
        raise HafsError(f"mac: must be 6 bytes, got {len(mac)}")
    op = _ARP_REPLY if reply else _ARP_REQUEST
    arp = _ARP.pack(1, 0x0800, 6, 4, op, mac, vip.packed, mac, vip.packed)
    frame = _BROADCAST_MAC + mac + ETH_P_ARP.to_bytes(2, "big") + arp
    return frame.ljust(ETH_ZLEN, b"\0")


class GarpSender:
    """Gratuitous ARP from one interface's own MAC, over a long-lived AF_PACKET socket (no scapy).

    Open one per interface at start and keep it: closing a packet socket blocks the caller for
    13-40 ms (the kernel waits for an RCU grace period), too long for the protocol loop. ``mac``
    is read once; reopen if the interface's MAC changes. Protocol 0: nothing is queued to it.
    """

    def __init__(self, ifname: str) -> None:
        _ifindex(ifname)
        self.ifname = ifname
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.bind((ifname, 0))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self.mac: bytes = self._sock.getsockname()[4]

    def send(self, vip: IPv4Address, *, reply: bool = False) -> None:
        """Announce ``vip`` at ``mac`` (:func:`garp_frame`); OSError if the kernel refuses."""
        self._sock.send(garp_frame(self.mac, vip, reply=reply))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> GarpSender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- link state -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinkState:
    """An interface's state: ``up`` is IFF_UP (admin), ``lower_up`` is IFF_LOWER_UP (carrier)."""

    ifname: str
    index: int
    up: bool
    lower_up: bool
    operstate: str
    deleted: bool = False

    @property
    def running(self) -> bool:
        """Up with carrier: what CARP needs to leave INIT."""
        return self.up and self.lower_up and not self.deleted


def _link_state(msg: Any) -> LinkState:
    flags = int(msg["flags"])
    return LinkState(
        ifname=str(msg.get("ifname")),
        index=int(msg["index"]),
        up=bool(flags & IFF_UP),
        lower_up=bool(flags & IFF_LOWER_UP),
        operstate=str(msg.get("operstate")),
        deleted=msg["header"]["type"] == RTM_DELLINK,
    )


def link_state(ifname: str) -> LinkState:
    """The current state of ``ifname``."""
    index = _ifindex(ifname)
    with IPRoute() as ipr:
        return _link_state(ipr.link("get", index=index)[0])


def set_link_up(ifname: str, up: bool) -> None:
    """Set IFF_UP on ``ifname`` (the virtual-MAC interface goes up on MASTER, down otherwise)."""
    index = _ifindex(ifname)
    with IPRoute() as ipr:
        ipr.link("set", index=index, state="up" if up else "down")


class LinkMonitor:
    """Link events (RTMGRP_LINK) of every interface; non-blocking, for ``loop.add_reader``.

    ``read()`` returns the states reported since the last call, oldest first. OSError ENOBUFS
    from ``read()`` means the kernel dropped events: resync with :func:`link_state`.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, RTMGRP_LINK))
            self._sock.setblocking(False)
        except BaseException:
            self._sock.close()
            raise
        self._marshal = MarshalRtnl()

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self) -> list[LinkState]:
        states: list[LinkState] = []
        while True:
            try:
                data = self._sock.recv(_NETLINK_RECV_SIZE)
            except BlockingIOError:
                return states
            states.extend(
                _link_state(msg)
                for msg in self._marshal.parse(data)
                if msg["header"]["type"] in (RTM_NEWLINK, RTM_DELLINK)
            )

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> LinkMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- virtual MAC (FreeBSD style) ----------------------------------------------------------------


def vmac_address(vhid: int) -> str:
    """FreeBSD's CARP virtual MAC for ``vhid``: 00:00:5e:00:01:<vhid>."""
    _check_vhid(vhid)
    return f"00:00:5e:00:01:{vhid:02x}"


def vmac_ifname(vhid: int) -> str:
    """The macvlan interface name for ``vhid``: ``vhid<N>`` (one per vhid on a host)."""
    _check_vhid(vhid)
    return f"vhid{vhid}"


def _write_sysctl(path: str, value: str) -> None:
    with open(os.path.join("/proc/sys/net", path), "w") as f:
        f.write(value)


def create_vmac(parent: str, vhid: int) -> str:
    """Create the macvlan :func:`vmac_ifname` on ``parent`` with :func:`vmac_address`, down.

    Idempotent. Also sets ``parent``'s arp_ignore=1 and arp_announce=2 so that only the
    macvlan answers ARP for the VIP and peers never learn the VIP at the parent's real MAC.
    Returns the interface name; put the VIP on it and bring it up with :func:`set_link_up`.
    """
    name = vmac_ifname(vhid)
    mac = vmac_address(vhid)
    parent_index = _ifindex(parent)
    with IPRoute() as ipr:
        existing = ipr.link_lookup(ifname=name)
        if existing:
            link = ipr.link("get", index=existing[0])[0]
            if link.get("link") != parent_index or link.get("address") != mac:
                raise HafsError(
                    f"vhid {vhid}: interface {name!r} exists but is not {mac} on {parent!r};"
                    " use a vhid once per host in virtual-MAC mode, or delete that interface"
                )
        else:
            ipr.link(
                "add",
                ifname=name,
                kind="macvlan",
                link=parent_index,
                macvlan_mode=VMAC_MODE,
                address=mac,
            )
    _write_sysctl(f"ipv4/conf/{parent}/arp_ignore", "1")
    _write_sysctl(f"ipv4/conf/{parent}/arp_announce", "2")
    return name


def delete_vmac(vhid: int) -> bool:
    """Delete the macvlan of ``vhid`` (its VIPs go with it); False if there was none."""
    name = vmac_ifname(vhid)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        ipr.link("del", index=found[0])
    return True
