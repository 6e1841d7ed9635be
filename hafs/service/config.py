"""What a node needs to move services: ``/etc/hafs/cluster.json``, rendered from the model.

Nodes do not have the inventory; ``hafs render NODE cluster.json`` (and the deploys) give each
node this file: its name, the pool, every VIP it carries (dataset name, shares, carriers in
takeover order), the peers' fixed addresses (replication never uses a VIP), the SMB users with
their passwords and pinned uids, and how to reach peers (ssh key, the hafs command there);
for ``hafs move``, each VIP's advskew per carrier, the CARP interface and the protocol. It
holds secrets, so it is written 0600 and :func:`load` refuses anything readable by others.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from hafs.cluster import Cluster, Node
from hafs.errors import HafsError
from hafs.secretfile import check_private

DEFAULT_PATH = "/etc/hafs/cluster.json"
DEFAULT_HAFS = ("/usr/local/bin/hafs",)
DEFAULT_SSH_KEY = "/etc/hafs/replication_key"
DEFAULT_KNOWN_HOSTS = "/etc/hafs/known_hosts"
KEEP_SNAPSHOTS = 12


class ServiceConfigError(HafsError):
    """cluster.json is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class ShareConfig:
    name: str
    writable: bool
    users: tuple[str, ...]


@dataclass(frozen=True)
class VipService:
    vhid: int
    name: str
    address: IPv4Address
    home: str
    carriers: tuple[str, ...]  # takeover order, home first
    shares: tuple[ShareConfig, ...]
    advskew: dict[str, int] = field(default_factory=dict)  # per carrier (none: rendered before)


@dataclass(frozen=True)
class ServiceConfig:
    node: str
    pool: str
    replication_interval: float
    peers: dict[str, IPv4Address]  # every other node's fixed address
    vips: tuple[VipService, ...]
    users: dict[str, str]
    uids: dict[str, int] = field(default_factory=dict)  # pinned by the inventory's smb_uids
    hafs_command: tuple[str, ...] = DEFAULT_HAFS
    ssh_key: str = DEFAULT_SSH_KEY
    known_hosts: str = DEFAULT_KNOWN_HOSTS
    agent_socket: str | None = None  # Linux: the agent's control socket, for demotion holds
    keep_snapshots: int = KEEP_SNAPSHOTS
    witness: IPv4Address | None = None  # answers when the peers are down, not when we are cut off
    interface: str | None = None  # the CARP interface (FreeBSD's run-time ifconfig of a move)
    protocol: str = "carp"  # or "vrrp3"

    def vip(self, vhid: int) -> VipService:
        for vip in self.vips:
            if vip.vhid == vhid:
                return vip
        raise ServiceConfigError(f"vhid {vhid} is not served by node {self.node}")

    def vip_named(self, name: str) -> VipService:
        for vip in self.vips:
            if vip.name == name:
                return vip
        raise ServiceConfigError(f"VIP {name!r} is not served by node {self.node}")

    def dataset(self, vip: VipService) -> str:
        return f"{self.pool}/hafs/{vip.name}"


def render(
    cluster: Cluster,
    node: Node,
    *,
    hafs_command: tuple[str, ...] = DEFAULT_HAFS,
    agent_socket: str | None = None,
) -> str:
    """The cluster.json of ``node``."""
    peers = {
        n.name: str(cluster.source_address(n))
        for n in cluster.nodes
        if n.name != node.name and cluster.source_address(n) is not None
    }
    vips = [
        {
            "vhid": v.vhid,
            "name": v.name,
            "address": str(v.address),
            "home": v.home,
            "carriers": v.carriers,
            "advskew": dict(v.advskew),
            "shares": [
                {"name": s.name, "writable": s.writable, "users": list(s.users)} for s in v.shares
            ],
        }
        for v in cluster.vips_of(node.name)
    ]
    if agent_socket is None and node.os == "linux":
        from hafs.agentconf import DEFAULT_CONTROL_SOCKET

        agent_socket = DEFAULT_CONTROL_SOCKET
    data = {
        "node": node.name,
        "pool": cluster.zfs_pool,
        "replication_interval": cluster.replication_interval,
        "peers": peers,
        "vips": vips,
        "users": dict(cluster.smb_users),
        "uids": dict(cluster.smb_uids),
        "hafs_command": list(hafs_command),
        "agent_socket": agent_socket,
        "witness": None if (w := cluster.witness_of(node)) is None else str(w),
        "interface": node.interface,
        "protocol": cluster.protocol,
    }
    return json.dumps(data, indent=2) + "\n"


def path_of(path: str | os.PathLike[str] | None = None) -> Path:
    """The cluster config's path: ``path``, else $HAFS_CLUSTER_CONFIG, else the default."""
    return Path(path or os.environ.get("HAFS_CLUSTER_CONFIG", DEFAULT_PATH))


def load(path: str | os.PathLike[str] | None = None) -> ServiceConfig:
    path = path_of(path)
    check_private(path, "cluster config", ServiceConfigError)
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return ServiceConfig(
            node=data["node"],
            pool=data["pool"],
            replication_interval=float(data["replication_interval"]),
            peers={k: IPv4Address(v) for k, v in data["peers"].items()},
            vips=tuple(
                VipService(
                    vhid=v["vhid"],
                    name=v["name"],
                    address=IPv4Address(v["address"]),
                    home=v["home"],
                    carriers=tuple(v["carriers"]),
                    shares=tuple(
                        ShareConfig(s["name"], s["writable"], tuple(s["users"]))
                        for s in v["shares"]
                    ),
                    advskew={n: int(a) for n, a in v.get("advskew", {}).items()},
                )
                for v in data["vips"]
            ),
            users=dict(data["users"]),
            uids={user: int(uid) for user, uid in data.get("uids", {}).items()},
            hafs_command=tuple(data.get("hafs_command", DEFAULT_HAFS)),
            agent_socket=data.get("agent_socket"),
            witness=IPv4Address(data["witness"]) if data.get("witness") else None,
            interface=data.get("interface"),
            protocol=str(data.get("protocol", "carp")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ServiceConfigError(
            f"cluster config {path}: {type(exc).__name__}: {exc}: render it again with "
            "`hafs render NODE cluster.json`"
        ) from exc
