"""`hafs check`: every problem of a cluster as one line naming the node or VIP and the fix.

Each rule is a small generator of :class:`Problem`; :func:`check` runs them all.
Errors make ``hafs check`` exit 1, warnings alone exit 0.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from hafs.carp.wire import MAX_SKEW
from hafs.cluster import Cluster, Vip

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    level: Level
    subject: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.level}: {self.subject}: {self.message}; fix: {self.fix}"


def _vip(vip: Vip) -> str:
    return f"vhid {vip.vhid} ({vip.address})"


def duplicate_vhids(cluster: Cluster) -> Iterator[Problem]:
    counts = Counter(v.vhid for v in cluster.vips)
    for vhid, count in sorted(counts.items()):
        if count > 1:
            homes = ", ".join(v.home for v in cluster.vips if v.vhid == vhid)
            yield Problem(
                "error",
                f"vhid {vhid}",
                f"used by {count} VIPs (homes {homes})",
                "give every VIP its own vhid",
            )


def duplicate_addresses(cluster: Cluster) -> Iterator[Problem]:
    owners: dict[str, list[str]] = defaultdict(list)
    for vip in cluster.vips:
        owners[str(vip.address)].append(f"vhid {vip.vhid}")
    for node in cluster.nodes:
        if node.address is not None:
            owners[str(node.address.ip)].append(f"node {node.name}")
    for address, users in sorted(owners.items()):
        vips = [u for u in users if u.startswith("vhid")]
        nodes = [u for u in users if u.startswith("node")]
        # a node sharing its address with a VIP is reported by no_fixed_address
        if len(vips) > 1 or len(nodes) > 1:
            yield Problem(
                "error",
                f"address {address}",
                f"used by {' and '.join(users)}",
                "give every VIP and every node its own address",
            )


def duplicate_names(cluster: Cluster) -> Iterator[Problem]:
    counts = Counter(v.name for v in cluster.vips)
    for name, count in sorted(counts.items()):
        if count > 1:
            yield Problem(
                "error",
                f"VIP name {name!r}",
                f"used by {count} VIPs; it names the VIP's dataset and Samba instance",
                "give each VIP a distinct 'name'",
            )


def vhid_range(cluster: Cluster) -> Iterator[Problem]:
    for vip in cluster.vips:
        if not 1 <= vip.vhid <= 255:
            yield Problem("error", _vip(vip), f"vhid {vip.vhid} is outside 1..255", "use 1..255")
        if not 1 <= vip.advbase <= 254:
            yield Problem(
                "error",
                _vip(vip),
                f"advbase {vip.advbase} is outside 1..254 (255 is the bow-out signal)",
                "use 1..254 seconds (1 is usual)",
            )


def advskew_range(cluster: Cluster) -> Iterator[Problem]:
    for vip in cluster.vips:
        for node, skew in sorted(vip.advskew.items()):
            if not 0 <= skew <= 254:
                yield Problem(
                    "error",
                    _vip(vip),
                    f"node {node} has advskew {skew}, outside 0..254",
                    "use 0..240",
                )
            elif skew > MAX_SKEW:
                yield Problem(
                    "warning",
                    _vip(vip),
                    f"node {node} has advskew {skew}: it is advertised as {MAX_SKEW}",
                    f"use at most {MAX_SKEW}",
                )


def advskew_ties(cluster: Cluster) -> Iterator[Problem]:
    for vip in cluster.vips:
        by_skew: dict[int, list[str]] = defaultdict(list)
        for node, skew in vip.advskew.items():
            by_skew[skew].append(node)
        for skew, nodes in sorted(by_skew.items()):
            if len(nodes) > 1:
                names = " and ".join(sorted(nodes))
                yield Problem(
                    "error",
                    _vip(vip),
                    f"nodes {names} both have advskew {skew}: FreeBSD CARP has no tie-break, "
                    "so both claim the VIP at the same moment",
                    "give each node a distinct advskew (or drop 'advskew' to derive a layout)",
                )


def carp_pass(cluster: Cluster) -> Iterator[Problem]:
    size = len(cluster.carp_pass.encode())
    if size == 0:
        yield Problem(
            "warning",
            "carp_pass",
            "is empty: adverts are authenticated with a key of zeros and stock ucarp refuses it",
            "set a pass of 1..19 bytes",
        )
    elif size >= 20:
        yield Problem(
            "warning",
            "carp_pass",
            f"is {size} bytes: FreeBSD uses only the first 19 and stock ucarp refuses it",
            "use a pass of 1..19 bytes",
        )


def vip_subnets(cluster: Cluster) -> Iterator[Problem]:
    for vip in cluster.vips:
        for name in vip.carriers:
            subnet = cluster.subnet(cluster.node(name))
            if subnet is not None and vip.address not in subnet:
                yield Problem(
                    "error",
                    _vip(vip),
                    f"is outside node {name}'s subnet {subnet}",
                    "use an address in the node's subnet, or drop the node from this VIP's advskew",
                )


def no_fixed_address(cluster: Cluster) -> Iterator[Problem]:
    vip_addresses = {vip.address: vip for vip in cluster.vips}
    for node in cluster.nodes:
        if node.address is None:
            message = "has no fixed (non-CARP) address"
        elif node.address.ip in vip_addresses:
            vhid = vip_addresses[node.address.ip].vhid
            message = f"its address {node.address.ip} is also vhid {vhid}'s VIP"
        else:
            continue
        yield Problem(
            "error",
            f"node {node.name}",
            message + ": while backup for its own VIP it cannot reach its peers to re-sync data",
            "set 'address' to a fixed address of its own in the VIPs' subnet",
        )


def failback_preempt(cluster: Cluster) -> Iterator[Problem]:
    if not cluster.failback:
        return
    for node in cluster.nodes:
        if not node.preempt:
            setting = "net.inet.carp.preempt=1" if node.os == "freebsd" else "preempt in agent.toml"
            yield Problem(
                "error",
                f"node {node.name}",
                f"failback is wanted but preempt is off ({setting} not set): "
                "after a reboot it stays backup for its own VIP",
                "drop carp_preempt=False for this node (or set failback=False cluster-wide)",
            )


def lone_vips(cluster: Cluster) -> Iterator[Problem]:
    for vip in cluster.vips:
        if len(vip.advskew) < 2:
            yield Problem(
                "warning",
                _vip(vip),
                "has no backup node: nobody takes it over",
                "add backup nodes to its advskew (or drop 'advskew' so every node backs it up)",
            )


def smb_users(cluster: Cluster) -> Iterator[Problem]:
    if cluster.check_user is not None and cluster.check_user not in cluster.smb_users:
        yield Problem(
            "error",
            "check_user",
            f"{cluster.check_user!r} is not in smb_users",
            "add it to smb_users (with its password in secrets_file)",
        )
    for vip in cluster.vips:
        for share in vip.shares:
            for user in share.users:
                if user not in cluster.smb_users:
                    yield Problem(
                        "error",
                        f"{_vip(vip)} share {share.name!r}",
                        f"user {user!r} is not in smb_users",
                        "add the user to smb_users or remove it from the share",
                    )


def _freebsd_before(cluster: Cluster, version: tuple[int, int]) -> Iterator[tuple[str, str]]:
    """The FreeBSD nodes older than ``version``, or of unknown version: name, version said."""
    for node in cluster.nodes:
        if node.os == "freebsd" and (node.freebsd_version or (0, 0)) < version:
            said = ".".join(map(str, node.freebsd_version)) if node.freebsd_version else "unknown"
            yield node.name, said


def vrrp3_support(cluster: Cluster) -> Iterator[Problem]:
    """VRRPv3: FreeBSD's carp speaks it from 14.1 (``carpver 3``); every priority is 1..254."""
    if cluster.protocol != "vrrp3":
        return
    for name, said in _freebsd_before(cluster, (14, 1)):
        yield Problem(
            "error",
            f"node {name}",
            f"VRRPv3 needs FreeBSD 14.1 or later (freebsd_version: {said})",
            "upgrade it and set freebsd_version = '14.1', or use protocol = 'carp'",
        )
    for vip in cluster.vips:
        for name, skew in sorted(vip.advskew.items()):
            if not 1 <= vip.priority(name) <= 254:
                yield Problem(
                    "error",
                    _vip(vip),
                    f"advskew {skew} of {name} gives VRRPv3 priority {vip.priority(name)}",
                    "use advskews 0..253 with protocol = 'vrrp3'",
                )


def unicast_support(cluster: Cluster) -> Iterator[Problem]:
    """Unicast: FreeBSD's carp takes one ``peer`` per vhid, from 14.0 on."""
    if not cluster.unicast:
        return
    for name, said in _freebsd_before(cluster, (14, 0)):
        yield Problem(
            "error",
            f"node {name}",
            f"unicast needs FreeBSD 14.0 or later (its carp's 'peer'; freebsd_version: {said})",
            "upgrade it and set freebsd_version = '14.0', or set unicast = False",
        )
    freebsd = {n.name for n in cluster.nodes if n.os == "freebsd"}
    for vip in cluster.vips:
        on_freebsd = sorted(freebsd.intersection(vip.carriers))
        if len(vip.carriers) > 2 and on_freebsd:
            yield Problem(
                "error",
                _vip(vip),
                f"unicast with {len(vip.carriers)} carriers, but FreeBSD's carp sends to one "
                f"peer only (on {', '.join(on_freebsd)})",
                "limit the VIP's carriers to two with an explicit advskew map, or set "
                "unicast = False (multicast)",
            )


RULES: tuple[Callable[[Cluster], Iterator[Problem]], ...] = (
    duplicate_vhids,
    duplicate_addresses,
    duplicate_names,
    vhid_range,
    advskew_range,
    advskew_ties,
    carp_pass,
    vip_subnets,
    no_fixed_address,
    failback_preempt,
    lone_vips,
    smb_users,
    vrrp3_support,
    unicast_support,
)


def check(cluster: Cluster) -> list[Problem]:
    """All problems of ``cluster``, errors first."""
    problems = [p for rule in RULES for p in rule(cluster)]
    return sorted(problems, key=lambda p: p.level != "error")
