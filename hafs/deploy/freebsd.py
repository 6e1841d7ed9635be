"""A FreeBSD node: kernel CARP configured in rc files, the devd hook, Samba, ZFS, hafs.

Files, each rendered by :mod:`hafs.render` (what ``hafs render`` prints):

``/boot/loader.conf``
    ``carp_load="YES"`` and ``vfs.maxbcachebuf=1048576`` (a loader tunable: it takes
    effect at the next boot; the carp module is also loaded at once).
``/etc/rc.conf``
    hostname, defaultrouter, ``zfs_enable``, the node's extra settings, ``sshd_enable``
    (replication runs over ssh): everything of the rendered rc.conf but the interfaces.
``/etc/rc.conf.d/netif`` (mode 0600)
    the rendered ``ifconfig_*`` lines: the interface's address and its CARP addresses,
    which carry the CARP pass. rc.conf is world-readable; this file is not. rc.d/netif
    reads it: ``load_rc_config netif`` (libexec/rc/rc.subr) sources /etc/defaults/rc.conf and
    rc.conf, then ``/etc/rc.conf.d/netif``, and network.subr's ``ifconfig_up``/``ifalias``
    read ``ifconfig_<if>`` and ``ifconfig_<if>_alias<n>`` from those variables
    (``get_if_var``), so the lines here work exactly as in rc.conf; being sourced later they
    also override rc.conf. Interfaces that appear later (devd's ``/etc/pccard_ether``) are
    configured through ``rc.d/netif`` too. ``sysrc`` without ``-s netif`` does not show
    them (sysrc(8), LIMITATIONS). Copies in rc.conf of these keys (the seed kept them there,
    pass included) are removed.
``/etc/sysctl.conf``
    ``net.inet.carp.preempt=1`` when the node takes its VIP back (failback); also set live.
``/usr/local/etc/devd/hafs.conf``
    the stanza that runs ``hafs event <vhid>@<if> <STATE>`` on every CARP state change.
``/usr/local/etc/rc.d/hafs_service``, ``/usr/local/etc/rc.d/hafs_demote``
    the service daemon, and the boot script that holds the node demoted ("resync", before
    rc.d/netif) until that daemon has pulled what changed while the node was away.
``/etc/hafs/cluster.json`` (mode 0600), the replication key, ``PermitRootLogin``
    see :mod:`hafs.deploy.common` (FreeBSD's default ``PermitRootLogin no`` becomes
    ``forced-commands-only``: replication logs in as root with forced-command keys).

Rolling: ``service netif restart`` drops the node's CARP addresses (its VIPs fail over to
their backups), so it runs only when the node's interface lines changed, on one node at a
time (pyinfra's ``_serial``), and, where the node takes its VIPs back (preempt), not before
each VIP homed here is MASTER here again: the next node's restart never drops a VIP whose home
is still away.

Samba comes from pkg but no global ``samba_server`` is enabled: ``hafs event`` runs one smbd
per VIP. hafs's own dependencies with native code come from pkg too (PyPI has no FreeBSD
wheels), so the venv sees the system site-packages.
"""

from __future__ import annotations

import re
from io import StringIO

from pyinfra.api.deploy import deploy
from pyinfra.operations import files, server
from pyinfra.operations.freebsd import pkg
from pyinfra.operations.util import any_changed

from hafs import render
from hafs.cluster import Cluster, Node
from hafs.deploy import common, ops
from hafs.deploy.facts import parse_assignment

PYTHON = "python3.11"
# hafs's dependencies that need a compiler (or Rust) to build from PyPI's sources
NATIVE_PACKAGES = (
    "python311",
    "py311-gevent",
    "py311-cryptography",
    "py311-bcrypt",
    "py311-pynacl",
    "py311-pydantic2",
)
NETIF = "/etc/rc.conf.d/netif"
DEVD = "/usr/local/etc/devd/hafs.conf"
RC_SCRIPT = "/usr/local/etc/rc.d/hafs_service"
RC_SCRIPT_SOURCE = common.SOURCE / "hooks" / "hafs_service.rc"
DEMOTE_SCRIPT = "/usr/local/etc/rc.d/hafs_demote"
DEMOTE_SCRIPT_SOURCE = common.SOURCE / "hooks" / "hafs_demote.rc"
HOME_AGAIN_TIMEOUT = 180  # seconds a node's VIPs may take to come home after a netif restart
NETIF_HEADER = (
    "# hafs: the interfaces and CARP addresses of {node}, as `hafs render {node} rc.conf`\n"
    "# prints them. It holds the CARP pass: keep it 0600. rc.d/netif reads this file after\n"
    "# rc.conf (load_rc_config netif).\n"
)


def assignments(text: str) -> list[tuple[str, str, str]]:
    """``(line, key, value)`` of every assignment of a rendered file, lines verbatim."""
    result: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        parsed = parse_assignment(line)
        if parsed is not None:
            result.append((line, *parsed))
    return result


def home_again(cluster: Cluster, node: Node) -> list[str]:
    """Commands that wait until every VIP homed at ``node`` is MASTER here again (ifconfig(8)
    prints ``carp: MASTER vhid N advbase B advskew S``); none when the node does not preempt
    (it never takes its VIPs back by itself)."""
    if not node.preempt:
        return []
    return [
        f"timeout {HOME_AGAIN_TIMEOUT} sh -c 'until ifconfig {node.interface} | "
        f'grep -q "carp: MASTER vhid {vip.vhid} "; do sleep 1; done\''
        for vip in cluster.vips
        if vip.home == node.name
    ]


@deploy("hafs FreeBSD node")
def freebsd_node(target: common.Target) -> None:
    cluster, node, settings = target.cluster, target.node, target.settings
    for package in (settings.samba_package, *NATIVE_PACKAGES):
        pkg.install(name=f"pkg {package}", package=package)

    loader = assignments(render.loader_conf(cluster, node))
    ops.conf_lines(name="/boot/loader.conf", path="/boot/loader.conf", lines=[a[0] for a in loader])
    sysctls = assignments(render.sysctl_conf(cluster, node))
    ops.conf_lines(name="/etc/sysctl.conf", path="/etc/sysctl.conf", lines=[a[0] for a in sysctls])

    rc_conf = assignments(render.rc_conf(cluster, node))
    interfaces = [a for a in rc_conf if a[1].startswith("ifconfig_")]
    rc_settings = {key: value for _, key, value in rc_conf if not key.startswith("ifconfig_")}
    ops.sysrc_settings(
        name="/etc/rc.conf",
        settings={
            **rc_settings,
            "sshd_enable": "YES",
            "hafs_demote_enable": "YES",
            "hafs_service_enable": "YES",
        },
    )
    alias = rf"ifconfig_{re.escape(node.interface)}_alias[0-9]+"
    ops.sysrc_removed(
        name="no interface lines (and CARP pass) in /etc/rc.conf",
        pattern="|".join([*(re.escape(key) for _, key, _ in interfaces), alias]),
    )
    netif_text = NETIF_HEADER.format(node=node.name) + "".join(f"{a[0]}\n" for a in interfaces)
    netif = files.put(
        name=NETIF,
        src=StringIO(netif_text),
        dest=NETIF,
        user="root",
        group="wheel",
        mode="600",
    )
    devd = files.put(
        name=DEVD,
        src=StringIO(render.devd_conf(cluster, node)),
        dest=DEVD,
        mode="644",
    )

    rc_script = files.put(
        name=RC_SCRIPT, src=StringIO(RC_SCRIPT_SOURCE.read_text()), dest=RC_SCRIPT, mode="755"
    )
    files.put(  # boot only: never started by the deploy (it would demote a serving node)
        name=DEMOTE_SCRIPT,
        src=StringIO(DEMOTE_SCRIPT_SOURCE.read_text()),
        dest=DEMOTE_SCRIPT,
        mode="755",
    )

    hafs_install = common.install_hafs(python=PYTHON, site_packages=True)
    common.service_configuration(cluster=cluster, node=node)
    sshd = common.replication_keys(cluster=cluster, node=node)

    if not settings.start_services:
        return
    server.shell(name="sshd reloaded", commands=["service sshd reload"], _if=sshd.did_change)
    ops.kernel_module(name="carp loaded", module="carp")
    for _, key, value in sysctls:
        ops.sysctl_value(name=f"sysctl {key}", key=key, value=value)
    server.shell(name="devd restarted", commands=["service devd restart"], _if=devd.did_change)
    common.zfs_layout(cluster=cluster, node=node, settings=settings)
    server.shell(  # it quiesces the VIPs held here for a moment: one node at a time
        name="hafs service daemon (re)started, one node at a time",
        commands=["service hafs_service restart"],
        _if=any_changed(rc_script, hafs_install),
        _serial=True,
    )
    # Last, as it may briefly cut this very connection. Routes too: netif's own
    # `routing static any <if>` re-adds only routes tagged :<if>, not the default route.
    # One node at a time, each waiting for its VIPs to come home (see the module).
    server.shell(
        name=f"{node.interface} and routes reconfigured, one node at a time",
        commands=[
            f"service netif restart {node.interface}",
            "service routing restart",
            *home_again(cluster, node),
        ],
        _if=netif.did_change,
        _serial=True,
    )
