"""Configuration files of one node, rendered from the cluster model (`hafs render`).

FreeBSD: ``rc.conf`` (CARP lines in the seed's own syntax), ``loader.conf``,
``sysctl.conf`` and the ``devd.conf`` stanza that calls ``hafs event``.
Linux: ``agent.toml`` (see :mod:`hafs.agentconf`).
Either, in a VRRPv3 cluster: ``keepalived.conf``, for a node that runs keepalived in place of
its CARP daemon (the lab's ``--foreign keepalived``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from hafs import agentconf
from hafs.cluster import Cluster, Node, Vip
from hafs.errors import HafsError
from hafs.holds import HOLD_DEMOTION, RESYNC_HOLD
from hafs.service import config as service_config

HAFS_BIN = "/usr/local/bin/hafs"
LOADER_DEFAULTS = {"carp_load": "YES", "vfs.maxbcachebuf": "1048576"}


def _assign(key: str, value: str, quote_numbers: bool = True) -> str:
    if not quote_numbers and value.isdigit():
        return f"{key}={value}"
    return f'{key}="{value}"'


def carp_args(cluster: Cluster, node: Node, vip: Vip, prefixlen: int, up: bool = False) -> str:
    """ifconfig arguments of one CARP address, as FreeBSD's rc.conf takes them (VRRPv3:
    ``carpver 3`` with its priority and interval in centiseconds, FreeBSD 14.1+, no pass;
    unicast: ``peer`` and the other carrier's address, FreeBSD 14.0+, one peer per vhid)."""
    words = [f"vhid {vip.vhid}"]
    if cluster.protocol == "vrrp3":
        words.append(f"carpver 3 vrrpprio {vip.priority(node.name)}")
        words.append(f"vrrpinterval {round(cluster.vrrp_interval * 100)}")
    else:
        if vip.advbase != 1:
            words.append(f"advbase {vip.advbase}")
        if vip.advskew[node.name]:
            words.append(f"advskew {vip.advskew[node.name]}")
        words.append(f"pass {cluster.carp_pass}")
    if cluster.unicast:
        peers = cluster.peers(vip, node)
        if len(peers) != 1:
            raise HafsError(
                f"rc.conf: vhid {vip.vhid}: unicast to {len(peers)} peers, but FreeBSD's carp "
                "takes one: limit the VIP's carriers to two (an explicit advskew map), or set "
                "unicast = False"
            )
        words.append(f"peer {peers[0]}")
    words.append(f"{vip.address}/{prefixlen}")
    if up:
        words.append("up")
    return " ".join(words)


def rc_conf(cluster: Cluster, node: Node) -> str:
    """rc.conf: hostname, the interface with its CARP addresses, router, services.

    A node with a fixed address gets it as the interface's address and every VIP as
    a /32 alias. A node without one (the seed's layout) gets its home VIP, with the
    subnet prefix, as the interface's address, as FreeBSD allows.
    """
    ifname = node.interface
    lines = [_assign("hostname", node.name)]
    vips = cluster.vips_of(node.name)
    aliases = list(vips)
    if node.address is not None:
        lines.append(_assign(f"ifconfig_{ifname}", f"inet {node.address.with_prefixlen}"))
    else:
        home = next((v for v in vips if v.home == node.name and v.prefixlen is not None), None)
        if home is None or home.prefixlen is None:
            raise HafsError(
                f"rc.conf: node {node.name}: no address: set 'address' (e.g. '10.0.0.5/24') "
                "or give its home VIP a prefix"
            )
        lines.append(
            _assign(f"ifconfig_{ifname}", carp_args(cluster, node, home, home.prefixlen, up=True))
        )
        aliases.remove(home)
    for index, vip in enumerate(aliases):
        lines.append(_assign(f"ifconfig_{ifname}_alias{index}", carp_args(cluster, node, vip, 32)))
    if node.gateway is not None:
        lines.append(_assign("defaultrouter", str(node.gateway)))
    settings = {"zfs_enable": "YES", **node.rc_conf}
    lines += [_assign(key, value) for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def loader_conf(cluster: Cluster, node: Node) -> str:
    """loader.conf: the CARP module and the buffer-cache tunable (both need a reboot)."""
    settings: Mapping[str, str] = {**LOADER_DEFAULTS, **node.loader_conf}
    return "".join(_assign(k, v, quote_numbers=False) + "\n" for k, v in settings.items())


def sysctl_conf(cluster: Cluster, node: Node) -> str:
    """sysctl.conf: preempt (so the node takes its own VIP back) plus the node's extras."""
    settings: dict[str, str] = {}
    if node.preempt:
        settings["net.inet.carp.preempt"] = "1"
    settings.update(node.sysctl)
    return "".join(f"{k}={v}\n" for k, v in settings.items())


def devd_conf(cluster: Cluster, node: Node) -> str:
    """The devd stanzas: every CARP state change runs ``hafs event <vhid>@<if> <STATE>``;
    the CARP interface losing carrier raises the "resync" demotion hold, so when the link
    comes back (and the kernel drops its own link-down demotion) the node does not preempt
    with stale data: its service daemon pulls what changed meanwhile, then releases it."""
    return (
        "# hafs: move the VIP's service with the VIP on every CARP state change\n"
        "notify 0 {\n"
        '\tmatch "system" "CARP";\n'
        '\tmatch "subsystem" "[0-9]+@[0-9a-zA-Z._]+";\n'
        '\tmatch "type" "(MASTER|BACKUP|INIT)";\n'
        f'\taction "{HAFS_BIN} event $subsystem $type";\n'
        "};\n"
        "# hafs: a node whose link went down may have missed writes: resync before preempting\n"
        "notify 0 {\n"
        '\tmatch "system" "IFNET";\n'
        f'\tmatch "subsystem" "{node.interface}";\n'
        '\tmatch "type" "LINK_DOWN";\n'
        f'\taction "{HAFS_BIN} service hold {RESYNC_HOLD} {HOLD_DEMOTION}";\n'
        "};\n"
    )


def keepalived_conf(cluster: Cluster, node: Node, hafs_command: str = HAFS_BIN) -> str:
    """keepalived's VRRP instances for the VIPs ``node`` carries, as the hafs agent would run
    them (VRRPv3, same priorities, interval and preemption): keepalived moves the address and
    calls ``hafs event <vhid>@<if> <STATE>`` on each change, as devd does on FreeBSD. It
    takes no demotion holds: a node that comes back preempts without its resync (as ucarp).
    With ``unicast``: ``unicast_src_ip`` (the node's source address) and ``unicast_peer`` (the
    VIP's other carriers), and ``check_unicast_src``, as the hafs agent hears only its peers."""
    if cluster.protocol != "vrrp3":
        raise HafsError(
            'keepalived.conf: keepalived speaks VRRP, not CARP: set protocol = "vrrp3" in '
            "group_data (FreeBSD nodes: 14.1 or later)"
        )
    ifname = node.interface
    lines = [
        f"# hafs: keepalived for {node.name} (VRRPv3), rendered from the inventory",
        "global_defs {",
        f"    router_id {node.name}",
        "    vrrp_version 3",
        "    script_user root",
        "    enable_script_security",
        "}",
    ]
    src = cluster.source_address(node)
    for vip in cluster.vips_of(node.name):
        event = f"{hafs_command} event {vip.vhid}@{ifname}"
        unicast = []
        if cluster.unicast:
            unicast = [
                *([] if src is None else [f"    unicast_src_ip {src}"]),
                "    check_unicast_src",
                "    unicast_peer {",
                *(f"        {peer}" for peer in cluster.peers(vip, node)),
                "    }",
            ]
        lines += [
            f"vrrp_instance hafs_{vip.name} {{",
            "    state BACKUP",
            f"    interface {ifname}",
            f"    virtual_router_id {vip.vhid}",
            f"    priority {vip.priority(node.name)}",
            f"    advert_int {cluster.vrrp_interval:g}",
            *([] if node.preempt else ["    nopreempt"]),
            *unicast,
            "    virtual_ipaddress {",
            f"        {vip.address}/32 dev {ifname}",
            "    }",
            f'    notify_master "{event} MASTER"',
            f'    notify_backup "{event} BACKUP"',
            f'    notify_fault "{event} INIT"',
            f'    notify_stop "{event} INIT"',
            "}",
        ]
    return "\n".join(lines) + "\n"


# file name -> (the OS it is for, renderer)
RENDERERS: dict[str, tuple[str, Callable[[Cluster, Node], str]]] = {
    "rc.conf": ("freebsd", rc_conf),
    "loader.conf": ("freebsd", loader_conf),
    "sysctl.conf": ("freebsd", sysctl_conf),
    "devd.conf": ("freebsd", devd_conf),
    "agent.toml": ("linux", agentconf.render),
    "cluster.json": ("any", service_config.render),
    "keepalived.conf": ("any", keepalived_conf),
}


def render(cluster: Cluster, node_name: str, file: str) -> str:
    node = cluster.node(node_name)
    if file not in RENDERERS:
        raise HafsError(f"unknown file {file!r}: choose one of {', '.join(RENDERERS)}")
    os_name, renderer = RENDERERS[file]
    if os_name not in ("any", node.os):
        others = ", ".join(f for f, (o, _) in RENDERERS.items() if o == node.os)
        raise HafsError(
            f"{file} is for {os_name} nodes; node {node.name} runs {node.os}: render {others}"
        )
    return renderer(cluster, node)
