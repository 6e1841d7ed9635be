"""A Linux (Debian) node: the hafs CARP agent as a systemd service, Samba, ZFS, hafs.

- packages: Samba, the ZFS tools (``zfs_package``: ``zfsutils-linux`` needs Debian's
  contrib and DKMS; ``zfs-fuse`` is in main), python3-venv, openssh-server (replication);
- hafs in ``/opt/hafs`` (a venv of its own: pip fetches the dependencies' wheels);
- ``/etc/hafs/cluster.json`` and the replication keys (see :mod:`hafs.deploy.common`);
- ``/etc/hafs/agent.toml``, mode 0600 (it holds the CARP pass), as
  :func:`hafs.agentconf.render` (``hafs render <node> agent.toml``) prints it;
- ``hafs-agent.service`` from the checkout's ``hooks/``, enabled; *reloaded* (never
  restarted) when its config, its unit or hafs changed: ``hafs agent --reload`` re-executes
  it in place, so its VIPs stay and no backup takes over (a restart would bow out: every VIP
  here would fail over and back);
- ``/etc/tmpfiles.d/hafs.conf``: ``/run/hafs`` belongs to no unit (the agent's socket, the
  service daemon's locks and markers, each smbd's volatile dirs), so no unit's stop wipes it;
  each VIP's smbd runs in a scope of its own (``hafs-smbd.slice``), so stopping the unit that
  started it never kills it;
- ``hafs-service.service``, enabled; reloaded (it re-executes itself, quiescing nothing)
  when its unit or hafs changed;
- the distribution's global smbd/nmbd disabled: ``hafs event`` runs one smbd per VIP, bound
  to that VIP (a global smbd on all addresses would take the port first).

The seed's ucarp start script and up/down scripts are not needed: the agent replaces them.
"""

from __future__ import annotations

from io import StringIO

from pyinfra.api.deploy import deploy
from pyinfra.context import host
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from hafs import agentconf
from hafs.deploy import common, ops
from hafs.errors import HafsError

UNIT = "hafs-agent.service"
UNIT_SOURCE = common.SOURCE / "hooks" / UNIT
SERVICE_UNIT = "hafs-service.service"
SERVICE_UNIT_SOURCE = common.SOURCE / "hooks" / SERVICE_UNIT
TMPFILES = "/etc/tmpfiles.d/hafs.conf"
TMPFILES_SOURCE = common.SOURCE / "hooks" / "hafs-tmpfiles.conf"
AGENT_CONFIG = "/etc/hafs/agent.toml"
DISTRO_SAMBA = ("smbd.service", "nmbd.service")


@deploy("hafs Linux node")
def linux_node(target: common.Target) -> None:
    cluster, node, settings = target.cluster, target.node, target.settings
    if not UNIT_SOURCE.is_file():
        raise HafsError(f"{UNIT_SOURCE}: missing from the checkout: the agent's systemd unit")
    packages = [settings.samba_package, settings.zfs_package, "python3-venv", "openssh-server"]
    present = host.get_fact(DebPackages)
    if any(package not in present for package in packages):
        apt.update(name="apt update (packages to install)")
    apt.packages(name="packages", packages=packages, no_recommends=True)
    for distro_unit in DISTRO_SAMBA:
        ops.unit_enabled(name=f"{distro_unit} disabled", unit=distro_unit, enabled=False)

    hafs_install = common.install_hafs(python="python3", site_packages=False)
    common.service_configuration(cluster=cluster, node=node)
    config = files.put(
        name=AGENT_CONFIG,
        src=StringIO(agentconf.render(cluster, node)),
        dest=AGENT_CONFIG,
        user="root",
        group="root",
        mode="600",
        create_remote_dir=False,
    )
    unit = files.put(
        name=f"/etc/systemd/system/{UNIT}",
        src=str(UNIT_SOURCE),
        dest=f"/etc/systemd/system/{UNIT}",
        mode="644",
    )
    ops.unit_enabled(name=f"{UNIT} enabled", unit=UNIT)
    service_unit = files.put(
        name=f"/etc/systemd/system/{SERVICE_UNIT}",
        src=str(SERVICE_UNIT_SOURCE),
        dest=f"/etc/systemd/system/{SERVICE_UNIT}",
        mode="644",
    )
    ops.unit_enabled(name=f"{SERVICE_UNIT} enabled", unit=SERVICE_UNIT)
    runtime = files.put(name=TMPFILES, src=str(TMPFILES_SOURCE), dest=TMPFILES, mode="644")
    sshd = common.replication_keys(cluster=cluster, node=node)

    if not settings.start_services:
        return
    systemd.service(name="sshd reloaded", service="ssh.service", reloaded=True, _if=sshd.did_change)
    for distro_unit in DISTRO_SAMBA:
        systemd.service(name=f"{distro_unit} stopped", service=distro_unit, running=False)
    common.zfs_layout(cluster=cluster, node=node, settings=settings)
    server.shell(
        name="/run/hafs created",
        commands=[f"systemd-tmpfiles --create {TMPFILES}"],
        _if=runtime.did_change,
    )
    systemd.daemon_reload(name="systemd reloaded", _if=any_changed(unit, service_unit))
    systemd.service(  # only if it runs (else the next operation starts it): see the module
        name=f"{UNIT} reloaded",
        service=UNIT,
        running=None,
        reloaded=True,
        _if=any_changed(config, unit, hafs_install),
    )
    systemd.service(name=f"{UNIT} running", service=UNIT, running=True)
    systemd.service(
        name=f"{SERVICE_UNIT} reloaded",
        service=SERVICE_UNIT,
        running=None,
        reloaded=True,
        _if=any_changed(service_unit, hafs_install),
    )
    systemd.service(name=f"{SERVICE_UNIT} running", service=SERVICE_UNIT, running=True)
