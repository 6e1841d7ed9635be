"""The one cluster model: nodes, virtual IPs, advskew layout and shares.

Everything in hafs (check, render, deploys, agent config, lab, verify) reads a
:class:`Cluster`; nothing else defines the cluster. It is built from a pyinfra
inventory, read by pyinfra's own loader so that hafs and ``pyinfra`` always agree:

``inventory.py``
    groups of ``(host, data)`` tuples. Host data keys read here:
    ``os`` (``freebsd`` | ``linux``), ``interface``, ``address`` (the node's fixed,
    non-CARP address with prefix, e.g. ``"172.21.0.201/20"``), ``gateway``,
    ``carp_preempt`` (default: the cluster's ``failback``), ``link_mode``
    (``garp`` | ``vmac``, Linux agent), ``rc_conf`` / ``loader_conf`` / ``sysctl``
    (extra FreeBSD settings), ``freebsd_version`` ("14.1"), ``metrics`` (a Linux agent's
    metrics address), and ``vips``: the VIPs this node is home of.
``group_data/*.py`` (beside the inventory)
    cluster-wide keys: ``carp_pass``, ``carp_advbase`` (1), ``failback`` (True),
    ``advskew_step`` (10), ``zfs_pool`` ("tank"), ``replication_interval`` (10 s),
    ``smb_users`` (name -> password), ``smb_uids`` (name -> uid: pins a user's Unix uid,
    else it is derived from the name, see :func:`uid_of`), ``check_user``, ``secrets_file``
    (a TOML file, mode 0600, that may hold ``carp_pass`` and ``[smb_users]``),
    ``quorum_witness`` (the address a node that hears no peer pings: default, each node's
    ``gateway``), ``protocol`` ("carp", or "vrrp3": VRRPv3, priority 254 - advskew, FreeBSD
    nodes need ``freebsd_version`` 14.1 or later), ``vrrp_interval`` (1 s, 0.01 steps) and
    ``unicast`` (False; True: each carrier sends a VIP's adverts to the VIP's other carriers'
    addresses instead of multicasting them, see :meth:`Cluster.peers`).

A VIP is a dict: ``vhid``, ``address`` (optionally with the subnet prefix, as the
seed's ``172.21.0.211/20``), ``name`` (default ``vip<vhid>``), ``advbase``,
``shares`` (names or dicts with ``name``, ``writable``, ``users``, ``comment``) and
``advskew``: an explicit ``{node: advskew}`` map naming exactly the nodes that carry
the VIP. Without it every node carries it with a derived layout (:func:`derive_layout`).

Problems that make the inventory unreadable or unusable on a node (a field of the wrong
type, an address that does not parse, an unknown OS, a name Samba, ZFS, a path or a shell
would choke on, two users with one uid) raise :class:`InventoryError` with one line naming
the field, the bad value and the fix; problems of a readable cluster (ties, ranges,
subnets) are reported by :mod:`hafs.check`.

Names are strict, the same on FreeBSD and Linux: share, VIP and pool names match
:data:`NAME` (letters, digits, ``_ . : -``, starting with a letter or digit: a share's name
is also a path, a VIP's a dataset; Samba would allow spaces, hafs does not), user names
:data:`USER_NAME` (POSIX portable, lower case), interface names :data:`INTERFACE` (at most
15 characters, Linux's IFNAMSIZ), and no secret holds a control character.
"""

from __future__ import annotations

import os
import re
import tomllib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address, ip_interface
from pathlib import Path
from typing import Any, Literal, cast

from hafs.errors import HafsError
from hafs.secretfile import check_private

OS = Literal["freebsd", "linux"]
LinkMode = Literal["garp", "vmac"]
Protocol = Literal["carp", "vrrp3"]
VRRP_TOP = 254  # the home's VRRPv3 priority (advskew 0); backups lower by their advskew

VIP_KEYS = {"vhid", "address", "name", "advbase", "advskew", "shares"}
SHARE_KEYS = {"name", "writable", "users", "comment"}
SECRETS_KEYS = {"carp_pass", "smb_users"}


@dataclass(frozen=True)
class Rule:
    """What a name or a secret may hold: ``pattern`` matches the whole value, ``fix`` says it."""

    pattern: re.Pattern[str]
    fix: str


NAME = Rule(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}"),
    "1-64 letters, digits and _ . : - starting with a letter or digit (no spaces)",
)
SHARE_NAME = Rule(NAME.pattern, NAME.fix + ": a share's name is also a directory")
POOL = Rule(
    re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}"),
    "1-64 letters, digits and _ . : - starting with a letter (no spaces)",
)
HOST = Rule(
    re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"),
    "a host name: 1-63 letters, digits and _ . - starting with a letter or digit",
)
USER_NAME = Rule(
    re.compile(r"[a-z_][a-z0-9_-]{0,31}"),
    "a POSIX user name: 1-32 of a-z 0-9 _ - starting with a-z or _",
)
INTERFACE = Rule(
    re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,14}"),
    "1-15 letters, digits and _ . - starting with a letter, e.g. 'em0'",
)
CARP_PASS = Rule(
    re.compile(r"[^\x00-\x20\x7f\"'`$\\]*"),
    "no spaces, control characters, quotes, backslash or $ (it goes in rc.conf)",
)
NO_CONTROL = Rule(re.compile(r"[^\x00-\x1f\x7f]*"), "no newline, tab or other control character")
SAMBA_SECTIONS = {"global", "homes", "printers"}
UID_BASE, UID_SPAN = 60001, 5000
UID_RANGE = range(1000, 65534)
REPLICATION_INTERVAL = range(1, 3601)


def uid_of(user: str, pinned: Mapping[str, int]) -> int:
    """``user``'s Unix uid, the same on every node (files keep numeric ids across replication):
    the inventory's pin (``smb_uids``), else one derived from the name."""
    return pinned.get(user, UID_BASE + zlib.crc32(user.encode()) % UID_SPAN)


class InventoryError(HafsError):
    """The inventory cannot be read into a cluster (one line: where, what, how to fix)."""


@dataclass(frozen=True)
class Share:
    name: str
    writable: bool = True
    users: tuple[str, ...] = ()
    comment: str = ""


@dataclass(frozen=True)
class Node:
    name: str
    os: OS
    interface: str
    address: IPv4Interface | None
    gateway: IPv4Address | None = None
    preempt: bool = True
    link_mode: LinkMode = "garp"
    rc_conf: Mapping[str, str] = field(default_factory=dict)
    loader_conf: Mapping[str, str] = field(default_factory=dict)
    sysctl: Mapping[str, str] = field(default_factory=dict)
    drill_kill: str | None = None  # hafs verify --failover on a real cluster: how to kill
    drill_restore: str | None = None  # ... and how to bring the node back
    metrics: str | None = None  # a Linux node's agent serves Prometheus metrics here (ip:port)
    freebsd_version: tuple[int, int] | None = None  # (14, 1): VRRPv3 needs 14.1 or later


@dataclass(frozen=True)
class Vip:
    name: str
    vhid: int
    address: IPv4Address
    prefixlen: int | None
    home: str
    advbase: int
    advskew: Mapping[str, int]
    explicit: bool
    shares: tuple[Share, ...] = ()

    def priority(self, node: str) -> int:
        """``node``'s VRRPv3 priority: 254 - advskew, so the order is CARP's (the home 254,
        never 255: the address owner would take the VIP at every link-up)."""
        return VRRP_TOP - self.advskew[node]

    @property
    def carriers(self) -> list[str]:
        """Nodes carrying this VIP, best (lowest advskew) first; home first on ties."""
        return sorted(self.advskew, key=lambda n: (self.advskew[n], n != self.home))

    @property
    def backups(self) -> list[str]:
        """The carriers other than the home node, in takeover order."""
        return [n for n in self.carriers if n != self.home]


@dataclass(frozen=True)
class Cluster:
    source: Path
    nodes: tuple[Node, ...]
    vips: tuple[Vip, ...]
    carp_pass: str
    failback: bool = True
    zfs_pool: str = "tank"
    replication_interval: float = 10.0
    smb_users: Mapping[str, str] = field(default_factory=dict)
    smb_uids: Mapping[str, int] = field(default_factory=dict)  # the pinned uids only
    check_user: str | None = None
    quorum_witness: IPv4Address | None = None
    protocol: Protocol = "carp"  # "vrrp3": VRRPv3 (RFC 5798), priorities from the advskews
    vrrp_interval: float = 1.0  # VRRPv3's advertisement interval, seconds (0.01 steps)
    unicast: bool = False  # adverts to the other carriers' addresses, not to 224.0.0.18

    def witness_of(self, node: Node) -> IPv4Address | None:
        """What ``node`` pings when it hears no peer: the inventory's witness, or its gateway."""
        return self.quorum_witness or node.gateway

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise HafsError(f"unknown node {name!r}: the inventory has {known}")

    def vips_of(self, node: str) -> list[Vip]:
        """The VIPs that ``node`` carries (as home or backup), by vhid."""
        return sorted((v for v in self.vips if node in v.advskew), key=lambda v: v.vhid)

    def vip(self, vhid: int) -> Vip:
        for vip in self.vips:
            if vip.vhid == vhid:
                return vip
        raise HafsError(f"unknown vhid {vhid}: the inventory has {[v.vhid for v in self.vips]}")

    def subnet(self, node: Node) -> IPv4Network | None:
        """The node's subnet: from its fixed address, else from its home VIP's prefix."""
        if node.address is not None:
            return node.address.network
        for vip in self.vips:
            if vip.home == node.name and vip.prefixlen is not None:
                return IPv4Interface(f"{vip.address}/{vip.prefixlen}").network
        return None

    def peers(self, vip: Vip, node: Node) -> list[IPv4Address]:
        """Where ``node`` sends ``vip``'s adverts with ``unicast``: the source addresses of the
        VIP's other carriers, in takeover order (a carrier without one is reported by
        ``hafs check``)."""
        others = (self.node(name) for name in vip.carriers if name != node.name)
        return [a for a in map(self.source_address, others) if a is not None]

    def source_address(self, node: Node) -> IPv4Address | None:
        """The address the node sends adverts from: its fixed address, else its home VIP."""
        if node.address is not None:
            return node.address.ip
        homes = [v for v in self.vips if v.home == node.name]
        return homes[0].address if homes else None


def derive_layout(
    nodes: Sequence[str], homes: Sequence[str], step: int = 10
) -> list[dict[str, int]]:
    """Advskews for VIPs homed at ``homes[i]`` (one map per VIP), every node carrying each.

    The home gets 0. The backups of the VIP homed at node index h are ranked
    h+1, h-1, h+2, h-2, ... around the inventory's node order, so that when two
    nodes die their VIPs land on different survivors (with 4 or more nodes), and
    the j-th VIP of one home rotates that order by j so one node's VIPs spread over
    different backups. Ranks are distinct, so no vhid ever has a tie.
    """
    count = len(nodes)
    seen_per_home: dict[str, int] = {}
    layout: list[dict[str, int]] = []
    for home in homes:
        h = nodes.index(home)
        order: list[str] = []
        for distance in range(1, count):
            for candidate in (nodes[(h + distance) % count], nodes[(h - distance) % count]):
                if candidate != home and candidate not in order:
                    order.append(candidate)
        j = seen_per_home.get(home, 0)
        seen_per_home[home] = j + 1
        if order:
            shift = j % len(order)
            order = order[shift:] + order[:shift]
        skews = {home: 0}
        skews.update({name: step * (rank + 1) for rank, name in enumerate(order)})
        layout.append(skews)
    return layout


# --- reading the inventory -------------------------------------------------------------


def load(inventory: str | os.PathLike[str]) -> Cluster:
    """Load ``inventory`` (and ``group_data/`` beside it) into a :class:`Cluster`."""
    path = Path(inventory)
    if not path.is_file():
        raise InventoryError(f"inventory {str(path)!r} not found: pass -i PATH to an inventory.py")
    return from_pyinfra(read_pyinfra_inventory(path), path)


def _import_pyinfra_loader() -> Any:
    """pyinfra's own inventory loader, without the gevent monkey-patching of its CLI package.

    ``pyinfra_cli/__init__.py`` calls ``gevent.monkey.patch_all()``, which would turn every
    thread and subprocess of the importing process (the lab, the tests) into gevent ones;
    loading an inventory needs none of it. Inside a pyinfra run the CLI has patched already.
    """
    from gevent import monkey

    patch_all = monkey.patch_all
    monkey.patch_all = lambda *args, **kwargs: None
    try:
        from pyinfra_cli.inventory import make_inventory_from_files
    finally:
        monkey.patch_all = patch_all
    return make_inventory_from_files


def read_pyinfra_inventory(path: Path) -> Any:
    try:  # a node's install has no pyinfra: it reads cluster.json and agent.toml, never this
        from pyinfra.api.state import State
        from pyinfra.context import ctx_state

        make_inventory_from_files = _import_pyinfra_loader()
    except ImportError as exc:
        raise InventoryError(
            f"{path}: reading an inventory needs pyinfra ({exc}): "
            "python3 -m pip install 'hafs[deploy]'"
        ) from None

    try:
        with ctx_state.use(State()):
            # group_data/ is read beside the inventory (pyinfra also reads the one of the
            # directory it runs in: run pyinfra from the inventory's directory).
            return make_inventory_from_files(str(path), cwd=str(path.parent.resolve()))
    except Exception as exc:  # user code in the inventory: report, never a traceback
        cause = getattr(exc, "exception", exc)  # pyinfra wraps errors of user code
        raise InventoryError(f"{path}: cannot be read: {type(cause).__name__}: {cause}") from exc


def from_pyinfra(inventory: Any, source: Path) -> Cluster:
    """Build the cluster from a pyinfra ``Inventory`` (also used inside deploys)."""
    hosts: list[tuple[str, dict[str, Any]]] = [(h.name, h.data.dict()) for h in inventory]
    if not hosts:
        raise InventoryError(f"{source}: no hosts: define groups of (host, data) tuples")
    cluster_data = _cluster_data(hosts)
    secrets = _read_secrets(source, cluster_data)

    failback = _bool(cluster_data, "failback", "group_data", default=True)
    nodes = tuple(_node(name, data, failback) for name, data in hosts)
    names = [n.name for n in nodes]
    advbase = _int(cluster_data, "carp_advbase", "group_data", default=1)
    step = _int(cluster_data, "advskew_step", "group_data", default=10)

    raw_vips: list[tuple[str, dict[str, Any]]] = []
    for name, data in hosts:
        vips = data.get("vips", [])
        if not isinstance(vips, list):
            raise InventoryError(
                f"host {name}: vips: must be a list like [{{'vhid': 1, 'address': '10.0.0.10'}}]"
            )
        for index, raw in enumerate(vips):
            where = f"host {name}: vips[{index}]"
            if not isinstance(raw, dict):
                raise InventoryError(f"{where}: must be a dict with vhid and address")
            unknown = sorted(set(raw) - VIP_KEYS)
            if unknown:
                raise InventoryError(f"{where}: unknown key {unknown[0]!r}: use {sorted(VIP_KEYS)}")
            raw_vips.append((name, raw))

    derived = derive_layout(names, [home for home, _ in raw_vips], step)
    vips = tuple(
        _vip(home, raw, names, advbase, derived[i], secrets["smb_users"])
        for i, (home, raw) in enumerate(raw_vips)
    )
    check_user = cluster_data.get("check_user")
    if check_user is not None and not isinstance(check_user, str):
        raise InventoryError("group_data: check_user: must be a user name from smb_users")
    interval = _int(cluster_data, "replication_interval", "group_data", default=10)
    if interval not in REPLICATION_INTERVAL:
        raise InventoryError(
            f"group_data: replication_interval: {interval} is out of range: use 1..3600 seconds"
        )
    protocol = cluster_data.get("protocol", "carp")
    if protocol not in ("carp", "vrrp3"):
        raise InventoryError(
            f"group_data: protocol: {protocol!r}: use 'carp' (CARP v2) or 'vrrp3' (VRRPv3)"
        )
    return Cluster(
        protocol=cast(Protocol, protocol),
        vrrp_interval=_vrrp_interval(cluster_data.get("vrrp_interval", 1.0)),
        unicast=_bool(cluster_data, "unicast", "group_data", default=False),
        source=source,
        nodes=nodes,
        vips=vips,
        carp_pass=secrets["carp_pass"],
        failback=failback,
        zfs_pool=_match(cluster_data.get("zfs_pool", "tank"), "group_data: zfs_pool", POOL),
        replication_interval=float(interval),
        smb_users=secrets["smb_users"],
        smb_uids=_uids(cluster_data.get("smb_uids", {}), secrets["smb_users"]),
        check_user=check_user,
        quorum_witness=(
            None
            if cluster_data.get("quorum_witness") is None
            else _ipv4(cluster_data["quorum_witness"], "group_data: quorum_witness")
        ),
    )


def _vrrp_interval(value: Any) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    centiseconds = round(value * 100) if number else 0
    if not 1 <= centiseconds <= 4095 or abs(centiseconds - value * 100) > 1e-6:
        raise InventoryError(
            f"group_data: vrrp_interval: {value!r}: seconds in 0.01 steps, 0.01..40.95"
        )
    return centiseconds / 100


CLUSTER_KEYS = (
    "protocol",
    "vrrp_interval",
    "unicast",
    "carp_pass",
    "carp_advbase",
    "failback",
    "advskew_step",
    "zfs_pool",
    "replication_interval",
    "smb_users",
    "smb_uids",
    "check_user",
    "secrets_file",
    "quorum_witness",
)


def _cluster_data(hosts: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Cluster-wide keys must have one value across hosts (set them in group_data/all.py)."""
    result: dict[str, Any] = {}
    first = hosts[0][0]
    for key in CLUSTER_KEYS:
        values = {name: data[key] for name, data in hosts if key in data}
        if not values:
            continue
        distinct = {repr(v) for v in values.values()}
        if len(distinct) > 1 or len(values) != len(hosts):
            other = next(n for n, _ in hosts if repr(values.get(n)) != repr(values.get(first)))
            raise InventoryError(
                f"{key}: differs between hosts {first} and {other}: "
                "it is cluster-wide, set it once in group_data/all.py"
            )
        result[key] = next(iter(values.values()))
    return result


def _read_secrets(source: Path, data: dict[str, Any]) -> dict[str, Any]:
    secrets: dict[str, Any] = {
        "carp_pass": data.get("carp_pass"),
        "smb_users": data.get("smb_users", {}),
    }
    file_name = data.get("secrets_file")
    if file_name is not None:
        path = source.parent / str(file_name)
        check_private(path, "secrets_file:", InventoryError)
        try:
            loaded = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise InventoryError(f"secrets_file: {path}: not valid TOML: {exc}") from exc
        unknown = sorted(set(loaded) - SECRETS_KEYS)
        if unknown:
            raise InventoryError(
                f"secrets_file: {path}: unknown key {unknown[0]!r}: use {sorted(SECRETS_KEYS)}"
            )
        secrets.update(loaded)
    if secrets["carp_pass"] is None:
        raise InventoryError("carp_pass: missing: set it in group_data/all.py or in secrets_file")
    if not isinstance(secrets["carp_pass"], str):
        raise InventoryError("carp_pass: must be a string")
    if not CARP_PASS.pattern.fullmatch(secrets["carp_pass"]):  # a secret: never printed
        raise InventoryError(f"carp_pass: has a character it cannot carry: use {CARP_PASS.fix}")
    users = secrets["smb_users"]
    if not isinstance(users, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in users.items()
    ):
        raise InventoryError("smb_users: must map user names to password strings")
    for user, password in users.items():
        _match(user, "smb_users: user", USER_NAME)
        if not NO_CONTROL.pattern.fullmatch(password):  # the value is a secret: never print it
            raise InventoryError(
                f"smb_users: {user}: the password has a control character: use {NO_CONTROL.fix}"
            )
    return secrets


def _uids(pinned: Any, users: Mapping[str, str]) -> dict[str, int]:
    """The pinned uids, after refusing what ``useradd`` would: an unknown user, a uid out of
    range, and two users (pinned or derived) with one uid."""
    if not isinstance(pinned, dict) or not all(isinstance(u, int) for u in pinned.values()):
        raise InventoryError(
            "group_data: smb_uids: must map user names to integers, e.g. {'alice': 61000}"
        )
    for user, uid in pinned.items():
        if user not in users:
            raise InventoryError(
                f"group_data: smb_uids: {user!r} is not in smb_users: pin uids of smb_users only"
            )
        if uid not in UID_RANGE:
            raise InventoryError(
                f"group_data: smb_uids: {user}: uid {uid} is out of range: use 1000..65533"
            )
    owner: dict[int, str] = {}
    for user in sorted(users):
        uid = uid_of(user, pinned)
        if uid in owner:
            raise InventoryError(
                f"smb_users: {owner[uid]} and {user} both get uid {uid}: "
                f"pin another one with smb_uids = {{{user!r}: UID}} in group_data"
            )
        owner[uid] = user
    return dict(pinned)


def _node(name: str, data: dict[str, Any], failback: bool) -> Node:
    where = f"host {name}"
    _match(name, "host", HOST)
    os_name = data.get("os")
    if os_name not in ("freebsd", "linux"):
        raise InventoryError(f"{where}: os: must be 'freebsd' or 'linux', got {os_name!r}")
    interface = data.get("interface")
    if not interface:
        raise InventoryError(f"{where}: interface: missing: name the network interface, e.g. 'em0'")
    _match(interface, f"{where}: interface", INTERFACE)
    address = None
    if data.get("address") is not None:
        address = _interface(data["address"], f"{where}: address")
    gateway = None
    if data.get("gateway") is not None:
        gateway = _ipv4(data["gateway"], f"{where}: gateway")
    link_mode = data.get("link_mode", "garp")
    if link_mode not in ("garp", "vmac"):
        raise InventoryError(f"{where}: link_mode: must be 'garp' or 'vmac', got {link_mode!r}")
    return Node(
        name=name,
        os=cast(OS, os_name),
        interface=interface,
        address=address,
        gateway=gateway,
        preempt=_bool(data, "carp_preempt", where, default=failback),
        link_mode=cast(LinkMode, link_mode),
        rc_conf=_str_map(data, "rc_conf", where),
        loader_conf=_str_map(data, "loader_conf", where),
        sysctl=_str_map(data, "sysctl", where),
        drill_kill=_optional_str(data, "drill_kill", where),
        drill_restore=_optional_str(data, "drill_restore", where),
        metrics=_metrics(data, os_name, where),
        freebsd_version=_version(data, where),
    )


def _version(data: Mapping[str, Any], where: str) -> tuple[int, int] | None:
    value = data.get("freebsd_version")
    if value is None:
        return None
    major, _, minor = str(value).partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise InventoryError(f"{where}: freebsd_version: {value!r}: write it as '14.1'")
    return int(major), int(minor)


def _metrics(data: Mapping[str, Any], os_name: str, where: str) -> str | None:
    """Where the node's hafs agent serves its metrics: ``ADDRESS:PORT`` (rendered into
    agent.toml, which a deploy rewrites: set here, it survives the next deploy)."""
    value = data.get("metrics")
    if value is None:
        return None
    fix = "write ADDRESS:PORT, e.g. '127.0.0.1:9612'"
    if not isinstance(value, str):
        raise InventoryError(f"{where}: metrics: {value!r}: {fix}")
    host, _, port = value.rpartition(":")
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        raise InventoryError(f"{where}: metrics: {value!r}: {fix}") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise InventoryError(f"{where}: metrics: {value!r}: port 1..65535; {fix}")
    if os_name != "linux":
        raise InventoryError(
            f"{where}: metrics: only hafs agent (Linux) serves them; a FreeBSD node's service "
            "metrics are in /var/run/hafs/hafs_service.prom for node_exporter: remove it"
        )
    return value


def _vip(
    home: str,
    raw: dict[str, Any],
    names: list[str],
    advbase: int,
    derived: dict[str, int],
    users: Mapping[str, str],
) -> Vip:
    where = f"host {home}: vip {raw.get('vhid', raw.get('address', '?'))}"
    if "vhid" not in raw or "address" not in raw:
        raise InventoryError(f"{where}: needs both 'vhid' and 'address'")
    vhid = _int(raw, "vhid", where)
    address = _interface(raw["address"], f"{where}: address")
    has_prefix = "/" in str(raw["address"])
    explicit = "advskew" in raw
    if explicit:
        skews = raw["advskew"]
        if not isinstance(skews, dict) or not all(isinstance(v, int) for v in skews.values()):
            raise InventoryError(f"{where}: advskew: must map node names to integers")
        for node in skews:
            if node not in names:
                raise InventoryError(f"{where}: advskew: unknown node {node!r}: use one of {names}")
        if home not in skews:
            raise InventoryError(
                f"{where}: advskew: must include the home node {home!r} (usually 0)"
            )
        advskew = dict(skews)
    else:
        advskew = derived
    raw_shares = raw.get("shares", [])
    if not isinstance(raw_shares, list):
        raise InventoryError(
            f"{where}: shares: must be a list like ['projects'], got {raw_shares!r}"
        )
    shares = tuple(_share(s, f"{where}: shares[{i}]", users) for i, s in enumerate(raw_shares))
    return Vip(
        name=_match(raw.get("name", f"vip{vhid}"), f"{where}: name", NAME),
        vhid=vhid,
        address=address.ip,
        prefixlen=address.network.prefixlen if has_prefix else None,
        home=home,
        advbase=_int(raw, "advbase", where, default=advbase),
        advskew=advskew,
        explicit=explicit,
        shares=shares,
    )


def _share(raw: Any, where: str, users: Mapping[str, str]) -> Share:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise InventoryError(f"{where}: must be a share name or a dict with 'name'")
    unknown = sorted(set(raw) - SHARE_KEYS)
    if unknown:
        raise InventoryError(f"{where}: unknown key {unknown[0]!r}: use {sorted(SHARE_KEYS)}")
    name = _match(raw["name"], f"{where}: name", SHARE_NAME)
    if name.lower() in SAMBA_SECTIONS:
        raise InventoryError(f"{where}: name: {name!r} is a Samba section: choose another name")
    share_users = raw.get("users", sorted(users))
    if not isinstance(share_users, list) or not all(isinstance(u, str) for u in share_users):
        raise InventoryError(f"{where}: users: must be a list of user names")
    return Share(
        name=name,
        writable=_bool(raw, "writable", where, default=True),
        users=tuple(share_users),
        comment=_match(raw.get("comment", ""), f"{where}: comment", NO_CONTROL),
    )


def _match(value: Any, where: str, rule: Rule) -> str:
    """``value`` if it is a string ``rule`` allows, else one line: where, what, the fix."""
    if not isinstance(value, str) or not rule.pattern.fullmatch(value):
        raise InventoryError(f"{where}: {value!r} is not allowed: use {rule.fix}")
    return value


def _interface(value: Any, where: str) -> IPv4Interface:
    try:
        parsed = ip_interface(str(value))
    except ValueError:
        raise InventoryError(
            f"{where}: {value!r} is not an IPv4 address like '10.0.0.10/24'"
        ) from None
    if not isinstance(parsed, IPv4Interface):
        raise InventoryError(f"{where}: {value!r}: only IPv4 addresses are supported")
    return parsed


def _ipv4(value: Any, where: str) -> IPv4Address:
    try:
        parsed = ip_address(str(value))
    except ValueError:
        raise InventoryError(f"{where}: {value!r} is not an IPv4 address") from None
    if not isinstance(parsed, IPv4Address):
        raise InventoryError(f"{where}: {value!r}: only IPv4 addresses are supported")
    return parsed


def _int(data: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InventoryError(f"{where}: {key}: must be an integer, got {value!r}")
    return value


def _bool(data: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise InventoryError(f"{where}: {key}: must be True or False, got {value!r}")
    return value


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise InventoryError(f"{where}: {key}: must be a shell command string, got {value!r}")
    return value


def _str_map(data: Mapping[str, Any], key: str, where: str) -> dict[str, str]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InventoryError(f"{where}: {key}: must be a dict of name -> value")
    return {str(k): str(v) for k, v in value.items()}


def iter_carriers(cluster: Cluster) -> Iterator[tuple[Vip, Node, int]]:
    """Every (VIP, node, advskew) the cluster configures, by vhid then takeover order."""
    for vip in sorted(cluster.vips, key=lambda v: v.vhid):
        for name in vip.carriers:
            yield vip, cluster.node(name), vip.advskew[name]
