"""The cluster as Vagrant VMs: the machine list for the ``Vagrantfile``, the pyinfra inventory.

``python3 -m hafs.deploy.vagrant [-i inventory.py]`` prints the machines as JSON (name, OS,
box, fixed address and netmask, the VM's interface on the private network per provider, the
file that backs the lab's ZFS pool); the ``Vagrantfile`` reads it, so the VMs get the inventory's
addresses and nothing defines the cluster twice.

``pyinfra hafs.deploy.vagrant.inventory deploys/cluster.py`` deploys them: :func:`inventory`
is the inventory (``HAFS_INVENTORY``, default ``inventory.py``) with each host's connection
taken from ``vagrant ssh-config`` (pyinfra's ``@vagrant`` connector does the asking) and the
lab's differences from real hardware: the VM's interface name (by ``HAFS_VAGRANT_PROVIDER``,
which the Vagrantfile sets: VirtualBox or libvirt), no gateway (Vagrant's NAT
interface has the default route), a file as the pool's device, and Debian's ``zfs-fuse``
(main) instead of ``zfsutils-linux`` (contrib + DKMS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hafs.cluster import Cluster, load, read_pyinfra_inventory
from hafs.errors import HafsError


@dataclass(frozen=True)
class Box:
    name: str
    # the private network's NIC in the VM (the second NIC), by Vagrant provider: VirtualBox
    # gives an Intel NIC (FreeBSD: em1), libvirt a virtio one (FreeBSD: vtnet1); Debian's box
    # keeps the old names (eth1) on both
    interfaces: dict[str, str]

    def interface(self, provider: str) -> str:
        try:
            return self.interfaces[provider]
        except KeyError:
            raise HafsError(
                f"{PROVIDER_ENV}={provider}: no NIC name known for {self.name}: "
                f"use {' or '.join(sorted(self.interfaces))}"
            ) from None


PROVIDER_ENV = "HAFS_VAGRANT_PROVIDER"  # set by the Vagrantfile's provisioning trigger
BOXES = {
    "freebsd": Box("freebsd/FreeBSD-14.1-RELEASE", {"virtualbox": "em1", "libvirt": "vtnet1"}),
    "linux": Box("debian/bookworm64", {"virtualbox": "eth1", "libvirt": "eth1"}),
}
ZFS_FILE = "/var/hafs-tank.img"
ZFS_FILE_SIZE = "2G"
LAB_ZFS_PACKAGE = "zfs-fuse"


def machines(cluster: Cluster) -> list[dict[str, Any]]:
    """One VM per node, with the node's fixed address on the private network."""
    result = []
    for node in cluster.nodes:
        if node.address is None:
            raise HafsError(
                f"host {node.name}: address: a VM needs the node's fixed address: set 'address'"
            )
        result.append(
            {
                "name": node.name,
                "os": node.os,
                "box": BOXES[node.os].name,
                "address": str(node.address.ip),
                "netmask": str(node.address.netmask),
                "interfaces": BOXES[node.os].interfaces,
                "zfs_file": ZFS_FILE,
                "zfs_file_size": ZFS_FILE_SIZE,
            }
        )
    return result


def lab_data(os_name: str, provider: str) -> dict[str, Any]:
    """Host data the VMs differ by from the inventory's hardware.

    No gateway: the VMs reach the outside (pkg, apt, PyPI) through Vagrant's NAT interface,
    whose default route a defaultrouter on the private network would replace.
    """
    data: dict[str, Any] = {
        "interface": BOXES[os_name].interface(provider),
        "gateway": None,
        "zfs_devices": [ZFS_FILE],
    }
    if os_name == "linux":
        data["zfs_package"] = LAB_ZFS_PACKAGE
    return data


def inventory() -> dict[str, tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]]:
    """pyinfra inventory function: the running VMs, as the inventory's hosts (see module)."""
    from pyinfra.connectors.vagrant import VagrantInventoryConnector

    path = Path(os.environ.get("HAFS_INVENTORY", "inventory.py")).resolve()
    provider = os.environ.get(PROVIDER_ENV, "virtualbox")
    hosts = read_pyinfra_inventory(path)
    vms = VagrantInventoryConnector.make_names_data()  # type: ignore[no-untyped-call]
    ssh = {name: data for name, data, _ in vms}
    result = []
    for host in hosts:
        data: dict[str, Any] = host.data.dict()
        vm = ssh.get(f"@vagrant/{host.name}")
        if vm is None:
            raise HafsError(f"host {host.name}: no running VM of that name: vagrant up first")
        result.append(
            (
                host.name,
                {**data, **vm, **lab_data(data["os"], provider), "hafs_inventory": str(path)},
            )
        )
    return {"hafs": (result, {})}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m hafs.deploy.vagrant",
        description="Print the cluster's Vagrant machines as JSON (read by the Vagrantfile).",
    )
    parser.add_argument("-i", "--inventory", default="inventory.py", metavar="INVENTORY")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(machines(load(args.inventory)), indent=2))
    except HafsError as exc:
        print(f"hafs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
